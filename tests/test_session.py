"""CallSession turn-taking, driven event by event with real speech through the real Silero VAD.

The session is sans-I/O: these tests play the runner's part, answering its Transcribe / Respond jobs with
results they construct, so each rule (speculative transcription, barge-in gate, backchannels, marks, hang-up
after the last mark) is checked in isolation. The full pipeline with real STT/LLM/TTS is tested by replay.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from session_driver import FRAME, Driver, greet, of, take_turn

from voicebot.routes import CallAction, ReplyKind
from voicebot.session import (
    CallEnded,
    CallerHungUp,
    Cancel,
    ClearAudio,
    CommitProgress,
    CommitTurn,
    DtmfIn,
    Hangup,
    MarkEchoed,
    PauseAudio,
    Respond,
    ResumeAudio,
    SentenceReady,
    SessionOptions,
    Transcribe,
    Transcribed,
    Transfer,
    TransferDone,
    Withdraw,
    is_backchannel,
)
from voicebot.stt import Transcript
from voicebot.tts_cache import PhoneSpeech


@pytest.fixture(scope="module")
def speech(synthesizer):
    return PhoneSpeech(synthesizer)


@pytest.fixture(scope="module")
def utterance(speech):
    pcm, _ = speech.sentence("I would like to change my delivery address, please.")
    voiced = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[voiced[0] : voiced[-1] + 1]  # no leading or trailing silence: the tests place their own


def test_greeting_is_committed_in_full_once_its_marks_return(vad):
    d = Driver(vad)
    job = greet(d)
    marks = d.speak(job, ["Hi, thanks for calling.", "How can I help?"])
    assert d.session.bot_speaking
    assert not of(CommitTurn, d.send(MarkEchoed(marks[0], d.t)))
    (commit,) = d.send(MarkEchoed(marks[1], d.t))
    assert commit == CommitTurn(
        job, ReplyKind.GREETING, "Hi, thanks for calling. How can I help?", False, commit.latency_ms
    )
    assert not d.session.bot_speaking


def test_turn_is_transcribed_speculatively_at_the_pause_and_answered_at_the_end(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance)
    out += d.silence(250)  # the pause (200 ms) has passed, the end (450 ms) not yet
    assert of(Transcribe, out) and not of(Respond, out)
    audio = of(Transcribe, out)[-1].audio
    assert audio.size / 16000 == pytest.approx(utterance.size / 8000, abs=0.6)
    assert not of(Respond, d.answer_transcribe(out, "I would like to change my delivery address."))
    out = d.silence(400)
    (respond,) = of(Respond, out)
    assert respond.kind is ReplyKind.TURN and respond.text == "I would like to change my delivery address."


def test_a_question_ends_the_turn_after_the_shorter_question_pause(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance) + d.silence(280)  # the VAD paused ~260 ms in: transcribing
    assert not of(Respond, d.answer_transcribe(out, "Can I change my delivery address?"))  # too soon still
    out = d.silence(80)  # 360 ms of silence: past question_end_ms, well short of end_ms
    (respond,) = of(Respond, out)
    assert respond.text == "Can I change my delivery address?"
    assert not of(Respond, d.silence(600)), "the VAD's own end of this turn must not answer it twice"
    (mark,) = d.speak(respond.job, ["Yes, in My Orders."])
    (commit,) = of(CommitTurn, d.send(MarkEchoed(mark, d.t)))
    assert 300 <= commit.latency_ms["endpoint"] < 450


def test_a_late_question_transcript_ends_the_turn_when_it_arrives(vad, utterance):
    d = Driver(vad, SessionOptions(question_end_ms=250))
    out = d.audio(utterance) + d.silence(360)
    (respond,) = of(Respond, d.answer_transcribe(out, "Can I change my delivery address?"))
    assert respond.text == "Can I change my delivery address?"


def test_speech_resuming_after_a_pause_drops_the_speculative_transcript(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance[:8000]) + d.silence(300)
    spec = of(Transcribe, out)[-1]
    out = d.audio(utterance[8000:])
    assert Cancel(spec.job) in out
    late = d.send(Transcribed(spec.job, Transcript("I would like", 0.0, -0.1), 100.0, d.t))
    assert late == [], "a stale transcript is ignored"
    out = d.silence(300)
    out += d.answer_transcribe(out, "I would like to change my delivery address.")
    out += d.silence(300)
    assert of(Respond, out)[0].text == "I would like to change my delivery address."


def test_barge_in_clears_cancels_and_keeps_only_what_was_heard(vad, utterance):
    d = Driver(vad)
    job = greet(d)
    marks = d.speak(job, ["Hi, thanks for calling Northwind Shop.", "How can I help you today?"], finish=False)
    d.silence(600)
    d.send(MarkEchoed(marks[0], d.t))
    out, _ = d.until_peek(utterance)  # the caller talks over the second sentence
    assert of(PauseAudio, out) and not of(ClearAudio, out), "the bot holds its audio before words are known"
    out = d.answer_transcribe(out, "I would like")
    assert of(ClearAudio, out) and Cancel(job) in out
    (commit,) = of(CommitTurn, out)
    assert commit.interrupted and commit.spoken_text == "Hi, thanks for calling Northwind Shop."
    assert 90 <= commit.latency_ms["pause"] < 150 < commit.latency_ms["barge_in"] <= 350
    assert d.session.greeting_interrupted
    # Twilio returns the cleared mark: it must not count as heard.
    assert d.send(MarkEchoed(marks[1], d.t)) == []


def test_a_short_backchannel_neither_interrupts_nor_takes_a_turn(vad, utterance):
    d = Driver(vad)
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."])
    d.silence(800)
    out = d.audio(utterance[: 8 * 220])  # ~220 ms of sound: "mm-hm"
    out += d.silence(300)
    assert of(PauseAudio, out) and not of(ClearAudio, out)
    out += d.answer_transcribe(out, "Mm-hmm.")
    out += d.silence(300)
    assert not of(ClearAudio, out) and not of(Respond, out)
    assert out[-1] == ResumeAudio() and d.session.bot_speaking, "the reply goes on where it paused"


def test_speech_right_as_the_bot_starts_is_inside_the_guard_window(vad, utterance):
    d = Driver(vad, SessionOptions(barge_in_guard_ms=2000))
    job = greet(d)
    d.speak(job, ["Hi, thanks for calling.", "How can I help?"])
    out = d.audio(utterance[: 8 * 600])
    assert not of(ClearAudio, out)


def test_hang_up_waits_for_the_farewells_last_mark(vad):
    d = Driver(vad)
    job = greet(d)
    marks = d.speak(job, ["Thanks for calling.", "Goodbye!"], action=CallAction.HANGUP)
    assert not of(Hangup, d.send(MarkEchoed(marks[0], d.t)))
    out = d.send(MarkEchoed(marks[1], d.t))
    assert of(Hangup, out) and of(CommitTurn, out) and d.session.ended


def test_dtmf_zero_asks_for_a_human_and_transfers_after_the_reply(vad):
    d = Driver(vad)
    job = greet(d)
    marks = d.speak(job, ["Hi there."])
    d.send(MarkEchoed(marks[0], d.t))
    (respond,) = of(Respond, d.send(DtmfIn("0", d.t)))
    assert respond.kind is ReplyKind.DTMF and respond.text == "human"
    assert d.send(DtmfIn("7", d.t)) == [], "unmapped digits are ignored"
    marks = d.speak(respond.job, ["Connecting you to a colleague now."], action=CallAction.TRANSFER)
    out = d.send(MarkEchoed(marks[0], d.t))
    assert of(Transfer, out) and not d.session.ended, "the call ends when the transfer is accepted"
    assert d.send(TransferDone(True, d.t)) == [CallEnded("transferred to a human")] and d.session.ended


def test_caller_hanging_up_cancels_work_and_ends(vad, utterance):
    d = Driver(vad)
    job = greet(d)
    out = d.send(CallerHungUp(d.t))
    assert Cancel(job) in out and d.session.ended
    assert d.send(MarkEchoed("t1-s1", d.t)) == []


def test_silence_and_line_noise_start_no_turn(vad):
    d = Driver(vad)
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(8000 * 5) * 60).astype(np.int16)
    out = d.audio(noise) + d.silence(1000)
    assert not of(Transcribe, out) and not of(Respond, out)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mm-hmm.", True),
        ("Okay.", True),
        ("Yeah, right.", True),
        ("I see.", True),
        ("Right, right, right, right.", True),
        ("Okay, but how long?", False),
        ("Yes, I want a refund for it", False),
        ("", False),
    ],
)
def test_backchannel_words(text, expected):
    assert is_backchannel(text) is expected


def test_job_ids_are_unique_per_session(vad):
    d = Driver(vad)
    ids = itertools.chain([greet(d)], (a.job for a in d.send(DtmfIn("0", d.t)) if isinstance(a, Respond)))
    ids = list(ids)
    assert len(ids) == len(set(ids)) == 2


def test_words_that_stop_mid_sentence_wait_longer_and_going_on_keeps_one_turn(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance) + d.silence(250)
    out += d.answer_transcribe(out, "You charged me twice on my last bill and")
    out += d.silence(450)  # ~700 ms of silence: finished words would have ended the turn at 450
    assert not of(Respond, out)
    out = d.audio(utterance)  # the caller goes on
    assert of(Cancel, out), "the transcript of the first half is stale"
    out = d.silence(250)
    out += d.answer_transcribe(out, "You charged me twice on my last bill and I want a refund.")
    out += d.silence(300)
    (respond,) = of(Respond, out)
    assert respond.text == "You charged me twice on my last bill and I want a refund."


def test_words_that_stop_mid_sentence_end_the_turn_after_the_longer_wait(vad, utterance):
    d = Driver(vad, SessionOptions(unfinished_end_ms=900))
    out = d.audio(utterance) + d.silence(250)
    out += d.answer_transcribe(out, "I wanted to ask about the")
    out += d.silence(560)
    assert not of(Respond, out)
    (respond,) = of(Respond, d.silence(160))  # 900 ms after the words stopped
    assert respond.text == "I wanted to ask about the"


def test_speech_before_the_reply_plays_continues_the_turn_and_withdraws_the_reply(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    first = take_turn(d, utterance, "My SIM card is cracked.")
    out = d.audio(utterance)  # the second sentence, before any of the reply was heard
    assert Withdraw(first.job) in out and not of(ClearAudio, out)
    out = d.silence(250)
    out += d.answer_transcribe(out, "How do I get a new one?")
    out += d.silence(300)
    (respond,) = of(Respond, out)
    assert respond.text == "My SIM card is cracked. How do I get a new one?"
    late = SentenceReady(first.job, "I'm sorry about your SIM card.", np.zeros(800, np.int16), 5.0, d.t)
    assert d.send(late) == [], "the withdrawn reply's audio never plays"
    assert not of(CommitTurn, d.actions), "nothing of the withdrawn reply is recorded"


def test_speech_in_the_first_second_of_the_reply_continues_the_turn(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    first = take_turn(d, utterance, "You charged me twice on my last bill.")
    marks = d.speak(first.job, ["I'm sorry about the billing problem."], action=CallAction.TRANSFER, finish=True)
    out = d.audio(utterance)  # starts right as the reply does: inside the barge-in guard, still the same turn
    assert of(ClearAudio, out) and Withdraw(first.job) in out and not of(CommitTurn, out)
    assert d.send(MarkEchoed(marks[0], d.t)) == [], "the mark the clear returned was never heard"
    out = d.silence(250)
    out += d.answer_transcribe(out, "And I want a refund.")
    out += d.silence(300)
    (respond,) = of(Respond, out)
    assert respond.text == "You charged me twice on my last bill. And I want a refund."
    assert not of(Transfer, d.actions) and not d.session.ended, "the withdrawn reply's hand-off never happens"


def test_a_reply_is_recorded_as_it_is_heard_once_it_can_no_longer_be_taken_back(vad, utterance):
    """A crash must lose at most the sentence in flight: each sentence heard is recorded, but not while speech
    starting then would still continue the caller's turn (the reply would be withdrawn, and nothing of it kept)."""
    d = Driver(vad)
    d.silence(200)
    turn = take_turn(d, utterance, "I want to make a complaint.")
    marks = d.speak(turn.job, ["I'm sorry.", "I have opened ticket A C D.", "Someone will call you."], finish=False)
    assert not of(CommitProgress, d.send(MarkEchoed(marks[0], d.t))), "inside the continuation window"
    d.silence(1500)
    assert of(CommitProgress, d.send(MarkEchoed(marks[1], d.t))) == [
        CommitProgress(turn.job, "I'm sorry. I have opened ticket A C D.")
    ]
    d.speak(turn.job, [], finish=True)
    out = d.send(MarkEchoed(marks[2], d.t))
    assert not of(CommitProgress, out) and of(CommitTurn, out)[0].spoken_text.endswith("Someone will call you.")


def test_speech_after_the_first_second_of_the_reply_is_a_barge_in(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    first = take_turn(d, utterance, "What are your opening hours?")
    d.speak(first.job, ["We are open nine to five.", "On Saturdays ten to two."], finish=False)
    d.silence(1200)
    out, _ = d.until_peek(utterance)
    out += d.answer_transcribe(out, "I would like")
    assert of(ClearAudio, out) and Cancel(first.job) in out and not of(Withdraw, out)
    (commit,) = of(CommitTurn, out)
    assert commit.interrupted


def test_a_noise_that_withdrew_the_reply_gets_the_turn_answered_after_all(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    first = take_turn(d, utterance, "Do you ship to Canada?")
    out = d.audio(utterance[: 8 * 400])  # before any of the reply plays: nothing to pause, the reply is taken back
    assert Withdraw(first.job) in out
    out = d.silence(250)
    out += d.answer_transcribe(out, "Okay.")
    out += d.silence(300)
    (respond,) = of(Respond, out)
    assert respond.kind is ReplyKind.TURN and respond.text == "Do you ship to Canada?"


def test_doubtful_words_are_passed_on_as_such_and_over_the_bot_are_noise(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance) + d.silence(250)
    jobs = of(Transcribe, out)
    out += d.send(Transcribed(jobs[-1].job, Transcript("My ink card impressed.", 0.1, -1.2, doubtful=True), 9, d.t))
    out += d.silence(300)
    (respond,) = of(Respond, out)
    assert respond.misheard and respond.text == "My ink card impressed."
    d.speak(respond.job, ["Sorry, I didn't catch that.", "Could you say it again?"], finish=False)
    d.silence(1500)
    out = d.audio(utterance[: 8 * 240])  # short: under the barge-in gate
    out += d.silence(250)
    jobs = of(Transcribe, out)
    out += d.send(Transcribed(jobs[-1].job, Transcript("Go for it.", 0.2, -1.85, doubtful=True), 9, d.t))
    out += d.silence(300)
    assert not of(Respond, out) and not of(ClearAudio, out) and d.session.bot_speaking


def test_a_noise_in_the_first_second_of_the_reply_pauses_it_and_lets_it_go_on(vad, utterance):
    d = Driver(vad)
    d.silence(200)
    first = take_turn(d, utterance, "Do you ship to Canada?")
    d.speak(first.job, ["Yes, we ship to Canada."], finish=False)
    out, rest = d.until_peek(utterance[: 8 * 400])
    assert of(PauseAudio, out) and not of(Withdraw, out)
    out = d.answer_transcribe(out, "Okay.") + d.audio(rest) + d.silence(250)
    out += d.answer_transcribe(out, "Okay.")
    out += d.silence(300)
    assert out[-1] == ResumeAudio() and not of(Withdraw, out) and not of(Respond, out)


def backchannel(d: Driver, pcm: np.ndarray, heard: str) -> list:
    """The caller makes `pcm`'s sound over the bot; every look Whisper takes hears `heard`."""
    out: list = []
    for step in [d.audio(pcm[start : start + FRAME]) for start in range(0, pcm.size, FRAME)] + [d.silence(400)]:
        out += step
        for job in of(Transcribe, step):
            out += d.send(Transcribed(job.job, Transcript(heard, 0.05, -0.3), 150.0, d.t))
    return out + d.silence(300)


@pytest.mark.parametrize(
    ("ms", "heard"), [(300, "Mm."), (700, "Uh-huh."), (1100, "Right, right."), (1400, "Uh-huh, yeah.")]
)
def test_backchannels_up_to_a_second_and_a_half_pause_the_reply_and_resume_it(vad, utterance, ms, heard):
    d = Driver(vad)
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."])
    d.silence(800)
    out = backchannel(d, utterance[: 8 * ms], heard)
    assert of(PauseAudio, out) and of(ResumeAudio, out) and not of(ClearAudio, out) and not of(Respond, out)
    assert d.session.bot_speaking and not of(CommitTurn, out)
    assert len(of(Transcribe, out)) > (2 if ms > 500 else 1), "Whisper looked at the words as the sound went on"


def test_speech_over_the_bot_past_the_backchannel_limit_interrupts_whatever_its_words(vad, utterance):
    d = Driver(vad, SessionOptions(backchannel_max_ms=1200))
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."], finish=False)
    d.silence(800)
    out: list = []
    for start in range(0, 8 * 1800, FRAME):
        step = d.audio(utterance[start : start + FRAME])
        out += step
        for peek in of(Transcribe, step):
            out += d.send(Transcribed(peek.job, Transcript("Mm-hmm.", 0.05, -0.3), 150.0, d.t))
        if of(ClearAudio, out):
            break
    assert of(ClearAudio, out) and Cancel(job) in out
    (commit,) = of(CommitTurn, out)
    assert 1200 <= commit.latency_ms["barge_in"] <= 1400


def test_a_look_with_fewer_than_two_real_words_waits_for_more(vad, utterance):
    d = Driver(vad)
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."], finish=False)
    d.silence(800)
    out, rest = d.until_peek(utterance)
    assert not of(ClearAudio, d.answer_transcribe(out, "Amen."))
    out, rest = d.until_peek(rest)
    assert not of(ClearAudio, d.answer_transcribe(out, "Right, right, right, stop."))
    out, rest = d.until_peek(rest)
    assert not of(ClearAudio, d.answer_transcribe(out, "It's right, okay."))
    out, _ = d.until_peek(rest)
    out += d.answer_transcribe(out, "Wait")
    assert of(ClearAudio, out) and Cancel(job) in out, "a call to stop is enough"


@pytest.mark.parametrize(("heard", "is_turn"), [("Wait.", True), ("Amen.", False), ("It's right, okay.", False)])
def test_a_short_sound_over_the_bot_is_a_turn_only_if_it_says_something(vad, utterance, heard, is_turn):
    d = Driver(vad)
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."])
    d.silence(800)
    out = backchannel(d, utterance[: 8 * 400], heard)
    assert bool(of(ClearAudio, out)) is is_turn and bool(of(ResumeAudio, out)) is not is_turn
    assert [r.text for r in of(Respond, out)] == ([heard] if is_turn else [])


@pytest.mark.parametrize(("ms", "asked_again"), [(300, False), (900, True)])
def test_speech_whisper_cannot_read_is_asked_again_when_it_is_long_enough(vad, utterance, ms, asked_again):
    d = Driver(vad)
    d.silence(200)
    out = d.audio(utterance[: 8 * ms]) + d.silence(300)
    jobs = of(Transcribe, out)
    unread = Transcript("on dust delivery", 0.9, -1.8, rejected="probably not speech")
    out += d.send(Transcribed(jobs[-1].job, unread, 90.0, d.t))
    out += d.silence(500)
    assert [(r.kind, r.text) for r in of(Respond, out)] == ([(ReplyKind.TURN, "")] if asked_again else [])


def test_a_sound_that_dies_away_short_of_speech_holds_the_bot_only_while_it_lasts(vad, utterance):
    d = Driver(vad)
    job = greet(d)
    d.speak(job, ["Returns are free within seven days.", "Items must be unopened."])
    d.silence(800)
    out = d.audio(utterance[: 8 * 130])  # a breath or a bump: over 96 ms of sound, short of 150 ms of speech
    assert of(PauseAudio, out)
    out = d.silence(100)
    assert out == [ResumeAudio()] and d.session.bot_speaking
    assert not of(Transcribe, d.silence(500)), "no turn was started"
