"""Never stranding a caller, at the session's level: failed and late jobs, slow answers, silence, long calls.

The session decides on the media clock, so these tests feed it frames of real speech and silence through the
real VAD and answer (or fail, or never answer) its jobs on cue. What the caller hears is what the session asks
to play: `PlayAudio` for a reply's sentences, `PlayLine` for the lines kept in memory for when all else fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from session_driver import Driver, greet, of, take_turn

from voicebot.kb import Company
from voicebot.prompts import line_texts
from voicebot.routes import CallAction, Line, Route, Stage
from voicebot.session import (
    CallStarted,
    Cancel,
    ClearAudio,
    CommitTurn,
    DtmfIn,
    Hangup,
    JobFailed,
    MarkEchoed,
    PauseAudio,
    PlayAudio,
    PlayLine,
    RecordTurn,
    ReplyFinished,
    Respond,
    SendMark,
    SentenceReady,
    SessionOptions,
    Transcribe,
    Transcribed,
    Transfer,
    TransferDone,
    Withdraw,
)
from voicebot.stt import Transcript
from voicebot.tts_cache import PhoneSpeech

LINES = line_texts(Company())


@pytest.fixture(scope="module")
def utterance(synthesizer):
    pcm, _ = PhoneSpeech(synthesizer).sentence("I would like to change my delivery address, please.")
    voiced = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[voiced[0] : voiced[-1] + 1]


def greeted(vad, options: SessionOptions | None = None) -> Driver:
    """A call whose greeting has been played and heard."""
    d = Driver(vad, options)
    job = greet(d)
    (mark,) = d.speak(job, ["Hi, how can I help?"])
    d.send(MarkEchoed(mark, d.t))
    return d


def line_played(out: list, line: Line) -> PlayLine:
    (play,) = [a for a in of(PlayLine, out) if a.line is line]
    return play


def hear(d: Driver, play: PlayLine) -> list:
    """The phone plays the line and its mark comes back."""
    return d.send(MarkEchoed(play.mark, d.t))


def test_a_transcription_that_fails_at_the_turns_end_is_asked_again_and_recorded(vad, utterance):
    d = greeted(vad)
    out = d.audio(utterance) + d.silence(250)
    stt = of(Transcribe, out)[-1]  # the last look: the utterance has a pause at its comma
    out = d.silence(900)  # with no words to judge by, the turn ends at the VAD's longest wait (1 s)
    out += d.send(JobFailed(stt.job, Stage.STT, d.t))
    play = line_played(out, Line.NOT_HEARD)
    (record,) = of(RecordTurn, out)
    assert record == RecordTurn(Route.REPEAT, "", LINES[Line.NOT_HEARD], failed_stage=Stage.STT)
    assert not of(Respond, out)
    hear(d, play)
    assert not d.session.bot_speaking
    respond = take_turn(d, utterance, "I would like to change my delivery address.")
    assert respond.text == "I would like to change my delivery address.", "the next turn is served normally"


def test_a_speculative_transcription_that_fails_is_made_again_at_the_turns_end(vad, utterance):
    d = greeted(vad)
    out = d.audio(utterance) + d.silence(250)
    stt = of(Transcribe, out)[-1]  # the last look: the utterance has a pause at its comma
    assert d.send(JobFailed(stt.job, Stage.STT, d.t)) == [], "the caller may still be talking"
    out = d.silence(900)  # no words to judge the pause by: the VAD's longest wait ends the turn
    (again,) = of(Transcribe, out)
    out = d.send(Transcribed(again.job, Transcript("Can I change my address?", 0.01, -0.2), 300.0, d.t))
    (respond,) = of(Respond, out)
    assert respond.text == "Can I change my address?"


def test_a_transcript_later_than_its_deadline_is_given_up_on(vad, utterance):
    d = greeted(vad, SessionOptions(stt_deadline_ms=2000))
    out = d.audio(utterance) + d.silence(250)
    stt = of(Transcribe, out)[-1]  # the last look: the utterance has a pause at its comma
    out = d.silence(2400)  # the turn ended after 1 s of silence; the deadline counts from there
    assert [a.line for a in of(PlayLine, out)] == [Line.ONE_MOMENT], "the wait is bridged meanwhile"
    out = d.silence(500)
    assert Cancel(stt.job) in out
    line_played(out, Line.NOT_HEARD)
    assert of(RecordTurn, out)[0].failed_stage is Stage.STT
    assert d.send(Transcribed(stt.job, Transcript("late words", 0.01, -0.2), 3000.0, d.t)) == []


@pytest.mark.parametrize("stage", [Stage.ROUTE, Stage.LLM, Stage.TTS, Stage.STORE])
def test_a_reply_that_fails_is_an_apology_and_the_turn_is_recorded_with_its_stage(vad, utterance, stage):
    d = greeted(vad)
    respond = take_turn(d, utterance, "Where is my order?")
    out = d.send(JobFailed(respond.job, stage, d.t))
    play = line_played(out, Line.SORRY)
    (record,) = of(RecordTurn, out)
    assert record == RecordTurn(Route.REPEAT, "Where is my order?", LINES[Line.SORRY], respond.job, stage)
    assert d.session.bot_speaking
    hear(d, play)
    assert not d.session.bot_speaking and not d.session.ended
    assert take_turn(d, utterance, "Where is my parcel?").text == "Where is my parcel?"


def test_a_reply_that_fails_after_its_first_sentence_lets_it_play_then_apologises(vad, utterance):
    d = greeted(vad)
    respond = take_turn(d, utterance, "How do I return something?")
    (mark,) = d.speak(respond.job, ["Returns are free."], finish=False)
    out = d.send(JobFailed(respond.job, Stage.TTS, d.t))
    assert not of(ClearAudio, out), "what was sent plays on"
    (record,) = of(RecordTurn, out)
    assert record.spoken_text == f"Returns are free. {LINES[Line.SORRY]}"
    play = line_played(out, Line.SORRY)
    assert d.send(MarkEchoed(mark, d.t)) == []
    hear(d, play)
    assert not d.session.bot_speaking


def test_a_greeting_that_fails_is_said_from_memory(vad):
    d = Driver(vad)
    job = greet(d)
    out = d.send(JobFailed(job, Stage.TTS, d.t))
    assert line_played(out, Line.HELLO) and not of(RecordTurn, out)


def test_a_slow_answer_is_bridged_once_and_the_filler_is_cut_when_it_arrives(vad, utterance):
    d = greeted(vad, SessionOptions(filler_after_ms=1200))
    respond = take_turn(d, utterance, "Do you ship to Canada?")
    out = d.silence(400)  # 550 ms of silence so far: the turn ended, the answer is being worked out
    assert not of(PlayLine, out)
    out = d.silence(800)
    filler = line_played(out, Line.ONE_MOMENT)
    assert d.session.bot_speaking
    assert not of(PlayLine, d.silence(300)), "once per turn"
    out = d.send(SentenceReady(respond.job, "Yes, we ship to Canada.", np.zeros(800, np.int16), 50.0, d.t))
    assert [type(a) for a in out] == [ClearAudio, PlayAudio, SendMark], "the filler stops, the answer starts"
    d.send(ReplyFinished(respond.job, Route.LLM, None, None, 5.0, None, d.t))
    assert d.send(MarkEchoed(filler.mark, d.t)) == [], "the cleared filler's mark is no news"
    (commit,) = of(CommitTurn, d.send(MarkEchoed(out[-1].name, d.t)))
    assert commit.spoken_text == "Yes, we ship to Canada." and not commit.interrupted
    assert 1150 <= commit.latency_ms["filler"] <= 1300


def test_an_answer_after_the_filler_has_played_needs_no_clear(vad, utterance):
    d = greeted(vad, SessionOptions(filler_after_ms=1200))
    respond = take_turn(d, utterance, "Do you ship to Canada?")
    filler = line_played(d.silence(1300), Line.ONE_MOMENT)
    d.send(MarkEchoed(filler.mark, d.t))
    out = d.send(SentenceReady(respond.job, "Yes, we ship to Canada.", np.zeros(800, np.int16), 50.0, d.t))
    assert [type(a) for a in out] == [PlayAudio, SendMark]


def test_a_slow_transcription_is_bridged_and_its_answer_follows_the_filler(vad, utterance):
    d = greeted(vad, SessionOptions(filler_after_ms=1200))
    out = d.audio(utterance) + d.silence(1300)  # the turn ended at the VAD's 1 s; no words yet
    filler = line_played(out, Line.ONE_MOMENT)
    stt = of(Transcribe, out)[-1]
    out = d.send(Transcribed(stt.job, Transcript("Can I change my address?", 0.01, -0.2), 1500.0, d.t))
    (respond,) = of(Respond, out)
    assert not of(PlayLine, d.silence(600)), "one filler per turn"
    d.send(MarkEchoed(filler.mark, d.t))
    (mark,) = d.speak(respond.job, ["Yes, in My Orders."])
    assert not of(ClearAudio, d.actions[-3:]), "the filler was over: nothing to cut"
    (commit,) = of(CommitTurn, d.send(MarkEchoed(mark, d.t)))
    assert 1150 <= commit.latency_ms["filler"] <= 1300


def test_no_filler_for_an_answer_that_starts_in_time(vad, utterance):
    d = greeted(vad)
    respond = take_turn(d, utterance, "Do you ship to Canada?")
    d.speak(respond.job, ["Yes, we ship to Canada."])
    assert not of(PlayLine, d.silence(2000))


def test_the_caller_can_talk_over_the_filler(vad, utterance):
    d = greeted(vad)
    respond = take_turn(d, utterance, "Do you ship to Canada?")
    out = d.silence(1300)
    line_played(out, Line.ONE_MOMENT)
    out, _ = d.until_peek(utterance)
    assert of(PauseAudio, out), "speech over the filler holds it like any reply"
    out = d.answer_transcribe(out, "And to Mexico")
    assert of(ClearAudio, out) and Withdraw(respond.job) in out, "they went on: the whole turn is answered"


def test_an_answer_that_never_starts_is_given_up_on_at_its_deadline(vad, utterance):
    d = greeted(vad, SessionOptions(filler_after_ms=1200, reply_deadline_ms=4000))
    respond = take_turn(d, utterance, "Do you ship to Canada?")
    out = d.silence(5000)
    assert Cancel(respond.job) in out
    (record,) = of(RecordTurn, out)
    assert record.failed_stage is None and record.job == respond.job, "the runner knows where the job was"
    play = line_played(out, Line.SORRY)
    assert d.send(SentenceReady(respond.job, "Too late.", np.zeros(800, np.int16), 50.0, d.t)) == []
    hear(d, play)
    assert not d.session.bot_speaking


def test_an_answer_that_stalls_between_sentences_is_given_up_on(vad, utterance):
    d = greeted(vad, SessionOptions(reply_stall_ms=2000))
    respond = take_turn(d, utterance, "Tell me about delivery.")
    (mark,) = d.speak(respond.job, ["Delivery takes two days."], finish=False)
    d.silence(1000)
    d.send(MarkEchoed(mark, d.t))  # the caller has heard it all; the next sentence is late
    assert not of(PlayLine, d.silence(1500))
    out = d.silence(700)
    assert Cancel(respond.job) in out
    assert of(RecordTurn, out)[0].spoken_text == f"Delivery takes two days. {LINES[Line.SORRY]}"
    line_played(out, Line.SORRY)


def test_a_silent_caller_is_asked_once_then_the_call_ends_as_no_input(vad):
    d = greeted(vad, SessionOptions(no_input_ms=5000))
    assert not of(PlayLine, d.silence(4800))
    out = d.silence(400)
    play = line_played(out, Line.STILL_THERE)
    assert not of(RecordTurn, out)
    hear(d, play)
    assert not of(PlayLine, d.silence(4800))
    out = d.silence(400)
    bye = line_played(out, Line.NO_INPUT_BYE)
    assert RecordTurn(Route.NO_INPUT, "", LINES[Line.NO_INPUT_BYE]) in out
    assert not d.session.ended, "it hangs up once the goodbye has been heard"
    out = hear(d, bye)
    assert of(Hangup, out) and d.session.ended


def test_a_caller_who_answers_the_re_prompt_goes_on_normally(vad, utterance):
    d = greeted(vad, SessionOptions(no_input_ms=3000))
    out = d.silence(3200)
    hear(d, line_played(out, Line.STILL_THERE))
    respond = take_turn(d, utterance, "Yes, I'm here. Where is my order?")
    (mark,) = d.speak(respond.job, ["It is on its way."])
    d.send(MarkEchoed(mark, d.t))
    out = d.silence(3200)
    assert line_played(out, Line.STILL_THERE), "a new silence is asked about again, not hung up on"


def test_a_call_at_its_time_limit_ends_politely_when_nobody_is_talking(vad, utterance):
    d = greeted(vad, SessionOptions(max_call_ms=6000))
    respond = take_turn(d, utterance, "Where is my order?")
    marks = d.speak(respond.job, ["It is on its way."])
    assert not of(PlayLine, d.silence(3000)), "the answer is still playing"
    out = d.send(MarkEchoed(marks[0], d.t)) + d.silence(40)
    bye = line_played(out, Line.TIME_LIMIT_BYE)
    assert not of(PauseAudio, d.audio(utterance[: 8 * 600])), "the goodbye is not interrupted"
    assert of(Hangup, hear(d, bye)) and d.session.ended


def test_deadlines_are_checked_for_sense():
    with pytest.raises(ValueError, match="filler_after_ms"):
        SessionOptions(filler_after_ms=5000, reply_deadline_ms=4000)
    with pytest.raises(ValueError, match="deadlines must be positive"):
        SessionOptions(no_input_ms=0)


def test_a_failure_report_for_a_job_no_longer_awaited_changes_nothing(vad, utterance):
    d = greeted(vad)
    respond = take_turn(d, utterance, "Where is my order?")
    (mark,) = d.speak(respond.job, ["It is on its way."])
    d.send(MarkEchoed(mark, d.t))
    assert d.send(JobFailed(respond.job, Stage.LLM, d.t)) == []


def test_a_failed_transfer_never_drops_the_caller(vad):
    d = greeted(vad)
    (respond,) = of(Respond, d.send(DtmfIn("0", d.t)))
    (mark,) = d.speak(respond.job, ["Sure. I'll put you through to a colleague now."], action=CallAction.TRANSFER)
    assert of(Transfer, d.send(MarkEchoed(mark, d.t)))
    out = d.send(TransferDone(False, d.t))
    assert not d.session.ended
    assert RecordTurn(Route.FALLBACK, "", LINES[Line.NO_COLLEAGUE], failed_stage=Stage.TRANSFER) in out
    hear(d, line_played(out, Line.NO_COLLEAGUE))
    assert not d.session.ended and not d.session.bot_speaking


def test_a_call_back_from_an_unanswered_hand_off_opens_with_the_apology(vad):
    d = Driver(vad)
    out = d.send(CallStarted(0.0, after_no_answer=True))
    assert not of(Respond, out), "no greeting: the caller has heard it"
    assert RecordTurn(Route.FALLBACK, "", LINES[Line.NO_COLLEAGUE], failed_stage=Stage.TRANSFER) in out
    hear(d, line_played(out, Line.NO_COLLEAGUE))
    assert d.session.greeting_played == LINES[Line.NO_COLLEAGUE]
