"""CallSession: one phone call's turn-taking and barge-in, as a sans-I/O state machine.

The session knows nothing of sockets, threads or clocks. The layer above (`voicebot.call_runner`) feeds it
events — caller audio with its media time, DTMF digits, echoed marks, hang-up, and the results of the work it
asked for — and carries out the actions it returns: play audio, send a mark, clear, transfer, hang up, and
start or cancel jobs (transcribe, respond). Every event carries `now` (seconds, any monotonic clock) so stage
latencies are measured on the runner's clock while audio arithmetic stays on media time.

Turn-taking, in short:
- VAD `SpeechPause` (≈200 ms of silence) starts a speculative transcription; `SpeechResume` drops it;
  `SpeechEnd` (≈450 ms) ends the turn, usually with the transcript already there. A transcript that ends in
  a question mark ends the turn sooner, after `question_end_ms` of silence: the caller has asked.
- While the bot speaks, caller speech that began after the protection window pauses it at once: no new audio
  is sent, so the caller hears at most what the phone has buffered. Whisper then looks at the speech so far
  (a "peek" every `barge_in_ms` of it): real words interrupt (barge-in); a backchannel ("mm-hm", "right,
  right"), a cough or a noise resumes the reply where it paused once the sound is over, with no `clear`.
  Speech that goes on past `backchannel_max_ms` interrupts whatever the peeks said. Barge-in sends `clear`,
  cancels the reply's work and records the reply cut to the sentences whose marks came back before it.
- A farewell's hang-up or a hand-off's transfer happens only once the reply's last mark has come back.

Never stranding the caller: a job that fails (`JobFailed`) or misses its deadline (`stt_deadline_ms`,
`reply_deadline_ms`, `reply_stall_ms`, checked on the media clock) gives way to a `Line` played from memory —
an apology and a request to say it again — and the turn is recorded as `repeat` with the failed stage. An
answer slow to start is bridged by "One moment." once (cut when the answer is ready); a silent caller is asked
if they are still there, then the call ends; so does a call that reaches `max_call_ms`. A transfer that fails
(`TransferDone`) keeps the caller: they hear that nobody can be reached, and are offered a ticket.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from voicebot.audio import Resampler, pcm16_to_float
from voicebot.kb import Company
from voicebot.prompts import line_texts
from voicebot.routes import CallAction, HandoffReason, Line, ReplyKind, Route, Stage
from voicebot.stt import Transcript
from voicebot.turn_end import Ending, ending
from voicebot.vad import SpeechEnd, SpeechPause, SpeechResume, SpeechStart, VadStream

PHONE_RATE = 8000
STT_RATE = 16000
BACKCHANNEL_WORDS = frozenset(
    {
        "mm",
        "mmm",
        "mmhm",
        "mmhmm",
        "mhm",
        "hm",
        "hmm",
        "uhhuh",
        "uh",
        "huh",
        "um",
        "ah",
        "oh",
        "ok",
        "okay",
        "yeah",
        "yep",
        "yes",
        "right",
        "sure",
        "alright",
        "see",
        "i",
        "got",
        "it",
        "all",
    }
)


STOP_WORDS = frozenset({"stop", "wait", "hold", "no", "hello", "sorry", "pardon", "what", "excuse"})


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower().replace("-", ""))


def is_backchannel(text: str) -> bool:
    """True for listener noises ("mm-hm", "okay", "I see", "right, right, right") that acknowledge the
    speaker, not take the turn."""
    words = _words(text)
    return 0 < len(words) <= 5 and all(w in BACKCHANNEL_WORDS for w in words)


def says_something(text: str) -> bool:
    """Two words or more that are not listener noises ("I would like", "wait, how"). Whisper's reading of
    speech still going on often ends in an invented or cut word ("Right, right, right, stop."), so one such
    word is not enough to cut the bot off."""
    return sum(w not in BACKCHANNEL_WORDS for w in _words(text)) >= 2


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


# ---------------------------------------------------------------- events in


@dataclass(frozen=True)
class CallStarted:
    now: float
    after_no_answer: bool = False  # the call is back from a hand-off nobody answered: say so, not hello


@dataclass(frozen=True)
class AudioIn:
    pcm: np.ndarray  # int16, 8 kHz mono, as decoded from the phone
    now: float


@dataclass(frozen=True)
class DtmfIn:
    digit: str
    now: float


@dataclass(frozen=True)
class MarkEchoed:
    name: str
    now: float


@dataclass(frozen=True)
class CallerHungUp:
    now: float


@dataclass(frozen=True)
class Transcribed:
    job: int
    transcript: Transcript
    compute_ms: float
    now: float


@dataclass(frozen=True)
class SentenceReady:
    job: int
    text: str
    pcm: np.ndarray  # int16, 8 kHz mono, ready for the phone
    tts_ms: float  # synthesis time of this sentence (0 when it came from the cache)
    now: float


@dataclass(frozen=True)
class ReplyFinished:
    """The reply's work is done: every sentence has been delivered by `SentenceReady`."""

    job: int
    route: Route
    action: CallAction | None
    reason: HandoffReason | None
    route_ms: float | None
    llm_first_token_ms: float | None
    now: float


@dataclass(frozen=True)
class JobFailed:
    """A job raised: `stage` is where (the runner logged the error)."""

    job: int
    stage: Stage
    now: float


@dataclass(frozen=True)
class TransferDone:
    """The hand-off the session asked for (`Transfer`) was `accepted` by the telephony side, or failed."""

    accepted: bool
    now: float


Event = (
    CallStarted
    | AudioIn
    | DtmfIn
    | MarkEchoed
    | CallerHungUp
    | Transcribed
    | SentenceReady
    | ReplyFinished
    | JobFailed
    | TransferDone
)


# ---------------------------------------------------------------- actions out


@dataclass(frozen=True)
class PlayAudio:
    pcm: np.ndarray  # int16, 8 kHz mono


@dataclass(frozen=True)
class SendMark:
    name: str


@dataclass(frozen=True)
class PlayLine:
    """Play a `Line` synthesized at start-up, then send `mark`: no job, no TTS, so it cannot fail."""

    line: Line
    mark: str


@dataclass(frozen=True)
class ClearAudio:
    pass


@dataclass(frozen=True)
class PauseAudio:
    """Stop sending the bot's audio and keep the rest queued: the caller may only be saying "mm-hm"."""


@dataclass(frozen=True)
class ResumeAudio:
    """Send the queued audio again from where it paused: the caller's sound was no turn."""


@dataclass(frozen=True)
class Transcribe:
    job: int
    audio: np.ndarray  # float32, 16 kHz mono


@dataclass(frozen=True)
class Respond:
    """Produce the bot's reply: for a greeting, a caller turn (`text` is what they said), a key (`text` is its
    meaning from the DTMF map, e.g. "human") or a prompt (`text` is the line to say)."""

    job: int
    kind: ReplyKind
    text: str
    misheard: bool = False  # Whisper was unsure of the words (`Transcript.doubtful`): never act on them


@dataclass(frozen=True)
class Cancel:
    job: int


@dataclass(frozen=True)
class Withdraw:
    """Cancel the reply of `job` and undo what it did (a ticket it opened): the caller had not finished, and
    their whole turn is answered instead. Nothing of it is recorded."""

    job: int


@dataclass(frozen=True)
class CommitTurn:
    """Record the reply of `job` as actually played: `spoken_text` is cut at a barge-in."""

    job: int
    kind: ReplyKind
    spoken_text: str
    interrupted: bool
    latency_ms: dict[str, float | None]


@dataclass(frozen=True)
class CommitProgress:
    """Record the reply of `job` as heard so far (`spoken_text`, the sentences whose marks came back): a crash
    then loses at most the sentence in flight. The turn's `CommitTurn` replaces it."""

    job: int
    spoken_text: str


@dataclass(frozen=True)
class RecordTurn:
    """Record a turn the session answered itself with a `Line`: a failure (`failed_stage`: the stage, or None for
    the one the reply's job was in when it ran out of time) or a call ended for no input. `job`, if any, is the
    reply that failed: a ticket it opened whose id is not in `spoken_text` is withdrawn."""

    route: Route
    caller_text: str
    spoken_text: str
    job: int | None = None
    failed_stage: Stage | None = None


@dataclass(frozen=True)
class Transfer:
    reason: HandoffReason


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class CallEnded:
    """The session is over (caller left, or the bot hung up or transferred): close the stream."""

    reason: str


Action = (
    PlayAudio
    | PlayLine
    | SendMark
    | ClearAudio
    | PauseAudio
    | ResumeAudio
    | Transcribe
    | Respond
    | Cancel
    | Withdraw
    | CommitTurn
    | CommitProgress
    | RecordTurn
    | Transfer
    | Hangup
    | CallEnded
)


# ---------------------------------------------------------------- options and state


@dataclass(frozen=True)
class SessionOptions:
    hold_ms: int = 96  # sound over the bot this long (as the VAD hears it) holds its audio: it may be speech
    barge_in_ms: int = 250  # caller speech (as the VAD hears it) before Whisper first looks at its words
    backchannel_max_ms: int = 1500  # speech over the bot this long interrupts it, whatever its words
    barge_in_guard_ms: int = 300  # speech starting this soon after the bot starts talking never interrupts
    preroll_ms: int = 300  # audio kept before the VAD's speech onset so the first syllable is transcribed
    max_turn_ms: int = 30_000  # a turn longer than this is cut and answered
    question_end_ms: int = 300  # a pause this long ends a turn whose transcript ends in "?" (0: never early)
    end_ms: int = 450  # a pause this long ends a turn whose words sound finished
    unfinished_end_ms: int = 1000  # words that sound unfinished ("... and", "the", a comma) wait this long
    continuation_ms: int = 1000  # speech this soon after the reply starts playing continues the caller's turn
    unread_turn_ms: int = 600  # speech this long that Whisper cannot read (a whisper) is asked again, not ignored
    dtmf_map: dict[str, str] = field(default_factory=lambda: {"0": "human"})
    sorry_prompt: str = "Sorry, go ahead."
    filler_after_ms: int = 1200  # no answer audio this long after the caller stopped: "One moment." (0: never)
    stt_deadline_ms: int = 2500  # a turn's transcript not there this long after the turn ended: ask again
    reply_deadline_ms: int = 3500  # no answer audio this long after the caller stopped: apologise, ask again
    reply_stall_ms: int = 1700  # an answer that played all it had and brings no more for this long: apologise
    no_input_ms: int = 8000  # the caller silent this long after the bot finished: "Are you still there?", then bye
    max_call_ms: int = 1_800_000  # a call this long ends, politely, at the next moment nobody is talking

    def __post_init__(self) -> None:
        deadlines = (self.stt_deadline_ms, self.reply_deadline_ms, self.reply_stall_ms, self.no_input_ms)
        if min(deadlines) <= 0 or self.max_call_ms <= 0 or not 0 <= self.filler_after_ms < self.reply_deadline_ms:
            raise ValueError(
                "deadlines must be positive and voice.filler_after_ms below voice.reply_deadline_ms; got "
                f"stt {self.stt_deadline_ms}, reply {self.reply_deadline_ms}, stall {self.reply_stall_ms}, "
                f"no input {self.no_input_ms}, call {self.max_call_ms}, filler {self.filler_after_ms} ms"
            )
        if self.barge_in_ms <= 0 or self.backchannel_max_ms < self.barge_in_ms:
            raise ValueError(
                "barge-in needs 0 < voice.barge_in_ms <= voice.backchannel_max_ms; "
                f"got {self.barge_in_ms} and {self.backchannel_max_ms}"
            )
        if not 0 < self.end_ms <= self.unfinished_end_ms or self.continuation_ms < 0:
            raise ValueError(
                "turn ends need 0 < voice.vad_end_ms <= voice.vad_unfinished_end_ms and voice.continuation_ms >= 0; "
                f"got {self.end_ms}, {self.unfinished_end_ms} and {self.continuation_ms}"
            )


@dataclass
class _BotUtterance:
    job: int
    kind: ReplyKind
    turn: int
    sentences: list[tuple[str, str]] = field(default_factory=list)  # (text, mark name)
    echoed: set[str] = field(default_factory=set)
    started_now: float | None = None  # first audio out
    started_media_ms: int | None = None
    finished: ReplyFinished | None = None
    latency: dict[str, float | None] = field(default_factory=dict)
    line: Line | None = None  # said from memory: no job behind it
    waiting_since_ms: int = 0  # media time the caller stopped (or the reply was asked for): deadlines count
    filler_mark: str | None = None  # "One moment." was played while this reply was slow to start
    drained_ms: int | None = None  # media time all it had sent was heard, with more still to come

    @property
    def all_played(self) -> bool:
        return self.finished is not None and all(mark in self.echoed for _, mark in self.sentences)

    @property
    def audible(self) -> bool:
        """Some of its audio (the answer's, or the filler) has gone out."""
        return self.started_now is not None or self.filler_mark is not None

    def unheard_marks(self) -> set[str]:
        """Marks sent that have not come back: a clear returns them, and they are not news then."""
        marks = {mark for _, mark in self.sentences}
        if self.filler_mark is not None:
            marks.add(self.filler_mark)
        return marks - self.echoed

    def played_text(self) -> str:
        return " ".join(text for text, mark in self.sentences if mark in self.echoed)

    def full_text(self) -> str:
        return " ".join(text for text, _ in self.sentences)


@dataclass
class _CallerTurn:
    onset_ms: int
    speech_end_ms: int | None = None
    ended_now: float | None = None
    ended_ms: int | None = None  # media time the session ended the turn
    endpoint_ms: float | None = None
    stt_job: int | None = None
    stt_started_now: float | None = None
    transcript: Transcript | None = None
    stt_compute_ms: float | None = None
    stt_ready_now: float | None = None
    during_bot: bool = False  # began while the bot was talking: a backchannel here is not a turn
    barged_in: bool = False  # this speech already interrupted the bot
    continues: str | None = None  # the words of the turn this speech goes on with (their reply withdrawn)
    peek_job: int | None = None  # Whisper looking at the speech so far, while the bot is paused over it
    peeked_ms: int = 0  # the VAD's speech_ms when the last peek started


class CallSession:
    """Turn-taking for one call. Feed events with `handle`; carry out the returned actions in order."""

    def __init__(
        self, vad: VadStream, options: SessionOptions | None = None, lines: Mapping[Line, str] | None = None
    ) -> None:
        """`lines` are the words of each `Line` (the runner plays their audio), `prompts.line_texts` by default."""
        self.options = options or SessionOptions()
        self.lines = dict(lines or line_texts(Company()))
        self.vad = vad
        if vad.options.end_ms < self.options.unfinished_end_ms:
            # The session decides when finished-sounding words end the turn (`end_ms`); the VAD's own end is
            # the longest wait, for words that sound unfinished.
            vad.options = replace(vad.options, end_ms=self.options.unfinished_end_ms)
        self._resampler = Resampler(PHONE_RATE, STT_RATE)
        self._jobs = itertools.count(1)
        self._turns = itertools.count(1)
        self._audio: list[np.ndarray] = []  # 16 kHz float chunks, from `_audio_start_ms`
        self._audio_start_ms = 0
        self._media_ms = 0  # 16 kHz samples fed, as ms
        self._caller: _CallerTurn | None = None
        self._bot: _BotUtterance | None = None
        self._answering: tuple[int, str] | None = None  # job and caller text of the reply to the latest turn
        self._cleared_marks: set[str] = set()
        self._pending_action: tuple[CallAction, HandoffReason | None] | None = None
        self._paused = False  # the bot's audio is held while the caller makes a sound over it
        self._heard_ms = 0  # media time the caller or the bot last made a sound
        self._bridged: tuple[int | None, str, int] = (None, "", 0)  # "One moment.": (turn's stop, mark, said at)
        self._filler_playing: str | None = None  # the mark of "One moment." while the phone still plays it
        self._reprompted = False  # "Are you still there?" was said, and nothing heard since
        self._transferring = False  # a transfer was asked for and has not been answered yet
        self.ended = False
        self.greeting_played: str | None = None
        self.greeting_interrupted = False

    # ------------------------------------------------------------ entry point

    def handle(self, event: Event) -> list[Action]:
        if self.ended:
            return []
        match event:
            case CallStarted() if event.after_no_answer:
                return self._say_line(
                    Line.NO_COLLEAGUE, event.now, kind=ReplyKind.GREETING, recorded=(Route.FALLBACK, Stage.TRANSFER)
                )
            case CallStarted():
                return self._respond(ReplyKind.GREETING, "", event.now)
            case AudioIn():
                return self._on_audio(event)
            case DtmfIn():
                return self._on_dtmf(event)
            case MarkEchoed():
                return self._on_mark(event)
            case Transcribed():
                return self._on_transcribed(event)
            case SentenceReady():
                return self._on_sentence(event)
            case ReplyFinished():
                return self._on_reply_finished(event)
            case JobFailed():
                return self._on_job_failed(event)
            case TransferDone():
                return self._on_transfer_done(event)
            case CallerHungUp():
                return self._end("caller hung up")
        raise TypeError(f"CallSession cannot handle {event!r}")

    @property
    def bot_speaking(self) -> bool:
        """Audio of the current reply has gone out and not all of it has been heard yet."""
        return self._bot is not None and self._bot.audible and not self._bot.all_played

    # ------------------------------------------------------------ caller audio

    def _on_audio(self, event: AudioIn) -> list[Action]:
        audio = self._resampler.process(pcm16_to_float(np.asarray(event.pcm, dtype=np.int16)))
        self._audio.append(audio)
        self._media_ms += audio.size * 1000 // STT_RATE
        actions: list[Action] = []
        for vad_event in self.vad.feed(audio):
            match vad_event:
                case SpeechStart():
                    self._reprompted = False
                    self._caller = _CallerTurn(
                        onset_ms=vad_event.onset_ms,
                        during_bot=self.bot_speaking,
                        continues=self._continuable(vad_event.onset_ms),
                    )
                case SpeechPause():
                    actions += self._start_transcription(vad_event.speech_end_ms, event.now)
                case SpeechResume():
                    actions += self._drop_transcription()
                case SpeechEnd():
                    actions += self._on_turn_end(vad_event, event.now)
        actions += self._end_if_done(event.now)
        actions += self._check_barge_in() if self._caller is not None else self._check_sound_over_bot()
        if self._caller is None:
            self._trim_audio()
        elif self.vad.in_speech and self._media_ms - self._caller.onset_ms > self.options.max_turn_ms:
            actions += self._start_transcription(self._media_ms, event.now)
            actions += self._on_turn_end(SpeechEnd(self._media_ms, self._media_ms), event.now)
            self.vad.reset()
        return actions + self._check_clock(event.now)

    def _trim_audio(self) -> None:
        """Between turns keep only the pre-roll, so a turn's audio starts just before its onset."""
        keep = (self.options.preroll_ms + 500) * STT_RATE // 1000  # the VAD confirms speech ~150 ms late
        joined = np.concatenate(self._audio) if len(self._audio) > 1 else (self._audio[0] if self._audio else None)
        if joined is None:
            return
        if joined.size > keep:
            joined = joined[-keep:]
        self._audio = [joined]
        self._audio_start_ms = self._media_ms - joined.size * 1000 // STT_RATE

    def _turn_audio(self, until_ms: int) -> np.ndarray:
        assert self._caller is not None
        joined = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        start_ms = max(self._caller.onset_ms - self.options.preroll_ms, self._audio_start_ms)
        first = (start_ms - self._audio_start_ms) * STT_RATE // 1000
        last = (until_ms - self._audio_start_ms + 100) * STT_RATE // 1000  # a little tail for the last phoneme
        return joined[first:last]

    def _start_transcription(self, until_ms: int, now: float) -> list[Action]:
        if self._caller is None:
            return []
        actions = self._drop_transcription()
        job = next(self._jobs)
        self._caller.stt_job, self._caller.stt_started_now = job, now
        self._caller.speech_end_ms = until_ms
        return [*actions, Transcribe(job, self._turn_audio(until_ms))]

    def _drop_transcription(self) -> list[Action]:
        caller = self._caller
        if caller is None or caller.stt_job is None:
            return []
        job, caller.stt_job, caller.transcript = caller.stt_job, None, None
        return [Cancel(job)]

    def _on_turn_end(self, event: SpeechEnd, now: float) -> list[Action]:
        caller = self._caller
        if caller is None:
            return []
        caller.ended_now, caller.ended_ms = now, self._media_ms
        caller.endpoint_ms = float(event.t_ms - event.speech_end_ms)
        if caller.stt_job is None:  # no pause was seen (cannot normally happen): transcribe now
            return self._start_transcription(event.speech_end_ms, now)
        if caller.transcript is not None:
            return self._take_turn(now)
        return []

    def _on_transcribed(self, event: Transcribed) -> list[Action]:
        caller = self._caller
        if caller is not None and caller.peek_job == event.job:
            return self._on_peek(caller, event)
        if caller is None or caller.stt_job != event.job:
            return []  # stale: the caller went on talking after the pause
        caller.transcript, caller.stt_compute_ms, caller.stt_ready_now = event.transcript, event.compute_ms, event.now
        return self._take_turn(event.now) if caller.ended_now is not None else self._end_if_done(event.now)

    def _end_if_done(self, now: float) -> list[Action]:
        """End the turn before the VAD's own end once the pause is as long as the words so far call for.

        Whisper punctuates what it hears (`voicebot.turn_end`): a question ends after `question_end_ms` of
        silence, a finished sentence after `end_ms`; words that stop on "and", "the" or a comma get the VAD's
        full end (`unfinished_end_ms`), as a caller drawing breath mid-sentence goes on within it.
        """
        caller = self._caller
        if caller is None or caller.ended_now is not None or caller.transcript is None:
            return []
        paused = self.vad.paused_ms
        if not paused or paused < self._end_wait(caller.transcript):
            return []
        return self._on_turn_end(self.vad.end_turn(), now)

    def _end_wait(self, transcript: Transcript) -> int:
        """The silence after these words that ends the turn."""
        if not transcript.usable:
            return self.options.end_ms
        match ending(transcript.text):
            case Ending.QUESTION:
                return min(self.options.question_end_ms or self.options.end_ms, self.options.end_ms)
            case Ending.FINISHED:
                return self.options.end_ms
            case _:
                return self.options.unfinished_end_ms

    def _take_turn(self, now: float) -> list[Action]:
        """The caller's turn is over and transcribed: answer it, ignore it, or treat it as a barge-in."""
        caller = self._caller
        assert caller is not None and caller.transcript is not None
        self._caller = None
        if caller.peek_job is not None:
            return [Cancel(caller.peek_job), *self._answer(caller, now)]
        return self._answer(caller, now)

    def _answer(self, caller: _CallerTurn, now: float) -> list[Action]:
        assert caller.transcript is not None
        transcript = caller.transcript
        continued = self._still_continuable(caller)
        over_bot = caller.during_bot or continued
        if not transcript.usable or (over_bot and self._is_noise(caller, transcript)):
            # Nothing to answer. If this sound already cut the bot off, answer or invite the caller to go on.
            if continued and caller.barged_in:  # the reply was withdrawn for a noise: answer the turn after all
                return self._respond(ReplyKind.TURN, caller.continues or "", now)
            if caller.barged_in and self._bot is None:
                return self._respond(ReplyKind.PROMPT, self.options.sorry_prompt, now)
            heard_ms = (caller.speech_end_ms or caller.onset_ms) - caller.onset_ms
            if not over_bot and self._bot is None and heard_ms >= self.options.unread_turn_ms:
                return self._respond(ReplyKind.TURN, "", now)  # a voice Whisper cannot read: ask again
            return self._resume()
        actions: list[Action] = []
        text = transcript.text
        if continued:  # the caller went on with the turn just answered: answer the whole of it once
            if not caller.barged_in:
                actions += self._withdraw()
            text = f"{caller.continues} {text}"
        elif self.bot_speaking:  # short speech that did not pass the gate but says something real
            actions += self._barge_in(caller)
        stt_wait = max(0.0, (caller.stt_ready_now or now) - (caller.ended_now or now)) * 1000
        latency = {"endpoint": caller.endpoint_ms, "stt": round(stt_wait, 1), "stt_compute": caller.stt_compute_ms}
        actions += self._respond(
            ReplyKind.TURN,
            text,
            now,
            latency,
            caller_ended_now=caller.ended_now,
            misheard=transcript.doubtful,
            since_ms=caller.speech_end_ms,
        )
        return actions

    def _is_noise(self, caller: _CallerTurn, transcript: Transcript) -> bool:
        """Speech over the bot that is no turn: a backchannel ("mm-hm"), words Whisper was unsure of, or, where
        no look at it found words, fewer than two real words and no call to stop (a hum heard as "Amen.",
        "right, right, okay" heard as "it's right, okay"; but "Wait!" is a turn)."""
        if is_backchannel(transcript.text) or transcript.doubtful:
            return True
        if caller.barged_in or says_something(transcript.text):
            return False
        return not STOP_WORDS.intersection(_words(transcript.text))

    # ------------------------------------------------------------ continuations

    def _continuable(self, onset_ms: int) -> str | None:
        """The caller's words of the turn that speech starting at `onset_ms` goes on with: the reply to it is
        still being worked out or has played for less than `continuation_ms`. None when it is a new turn."""
        bot, answering = self._bot, self._answering
        if bot is None or answering is None or bot.job != answering[0]:
            return None
        if bot.started_media_ms is not None and onset_ms - bot.started_media_ms >= self.options.continuation_ms:
            return None
        return answering[1]

    def _still_continuable(self, caller: _CallerTurn) -> bool:
        """`caller` continues a turn whose reply is withdrawn, or could still be (not yet played in full)."""
        if caller.continues is None:
            return False
        return caller.barged_in or (self._answering is not None and self._bot is not None)

    def _withdraw(self) -> list[Action]:
        """Take back the reply to the turn the caller is going on with: stop its audio, cancel its work, undo
        what it did, record nothing of it, and forget any hang-up or transfer it was leading to."""
        bot = self._bot
        assert bot is not None
        actions: list[Action] = []
        if bot.audible:
            actions.append(ClearAudio())
            self._paused = False
            self._cleared_marks.update(bot.unheard_marks())
        actions.append(Withdraw(bot.job))
        self._bot, self._answering, self._pending_action = None, None, None
        return actions

    # ------------------------------------------------------------ barge-in

    def _check_barge_in(self) -> list[Action]:
        caller = self._caller
        if caller is None or caller.barged_in or not self.vad.in_speech or self._saying_goodbye:
            return []
        continuing = self._still_continuable(caller)
        if not self.bot_speaking:
            if continuing and self.vad.speech_ms >= self.options.barge_in_ms:
                return self._interrupt(caller)  # nothing of the reply plays yet: take it back
            return []
        if self._in_guard(caller.onset_ms) and not continuing:
            return []
        actions = self._hold(caller.onset_ms)
        if self.vad.speech_ms >= self.options.backchannel_max_ms:
            return actions + self._interrupt(caller)
        if caller.peek_job is None and self.vad.speech_ms >= caller.peeked_ms + self.options.barge_in_ms:
            caller.peek_job, caller.peeked_ms = next(self._jobs), self.vad.speech_ms
            actions.append(Transcribe(caller.peek_job, self._turn_audio(self._media_ms)))
        return actions

    def _check_sound_over_bot(self) -> list[Action]:
        """Before the VAD is sure of speech: hold the bot's audio once a sound over it has lasted `hold_ms`, and
        let it go on if the sound dies away short of speech (a click, a breath)."""
        onset = self.vad.candidate_onset_ms
        if onset is None:
            return self._resume()
        if self._paused or not self.bot_speaking or self.vad.speech_ms < self.options.hold_ms or self._saying_goodbye:
            return []
        if self._in_guard(onset) and self._continuable(onset) is None:
            return []
        return self._hold(onset)

    @property
    def _saying_goodbye(self) -> bool:
        """The bot is ending the call on its own (no input, time limit): that line is not interrupted."""
        return self._bot is not None and self._bot.line in (Line.NO_INPUT_BYE, Line.TIME_LIMIT_BYE)

    def _in_guard(self, onset_ms: int) -> bool:
        """Sound that began right as the bot started talking: line echo or a false start, not an interruption."""
        bot = self._bot
        assert bot is not None and bot.started_media_ms is not None
        return bot.started_media_ms <= onset_ms < bot.started_media_ms + self.options.barge_in_guard_ms

    def _hold(self, onset_ms: int) -> list[Action]:
        """Stop sending the reply's audio: the caller hears at most what their phone holds."""
        bot = self._bot
        if self._paused or bot is None:
            return []
        self._paused = True
        bot.latency["pause"] = float(self._media_ms - onset_ms)
        bot.latency["pause_at_media_ms"] = float(self._media_ms)
        return [PauseAudio()]

    def _on_peek(self, caller: _CallerTurn, event: Transcribed) -> list[Action]:
        """Whisper's look at speech over the paused bot: real words interrupt; anything else waits to see."""
        caller.peek_job = None
        transcript = event.transcript
        if caller.barged_in or not self._paused or not transcript.usable or transcript.doubtful:
            return []  # the caller hears silence meanwhile: a later look or the turn's end decides
        words = _words(transcript.text)
        if says_something(transcript.text) or (words and words[0] in STOP_WORDS):
            return self._interrupt(caller)  # "I would like", "Wait", "Sorry": real words
        return []  # a backchannel, or a hum heard as "Amen"

    def _interrupt(self, caller: _CallerTurn) -> list[Action]:
        """The caller is taking the turn: take back the reply they are going on with, or barge in on it."""
        continuing = self._still_continuable(caller)
        caller.barged_in = True
        return self._withdraw() if continuing else self._barge_in(caller)

    def _resume(self) -> list[Action]:
        """The sound over the bot was no turn: let the reply go on where it paused."""
        if not self._paused:
            return []
        self._paused = False
        return [ResumeAudio()]

    def _barge_in(self, caller: _CallerTurn | None = None) -> list[Action]:
        """Stop talking: clear the phone's buffer, cancel the reply's work, record what was heard."""
        bot = self._bot
        actions: list[Action] = [ClearAudio()]
        self._paused = False  # the clear dropped what was held
        if bot is None:
            return actions
        if caller is not None:  # media time from the caller's first sound (as the VAD heard it) to our clear
            bot.latency["barge_in"] = float(self._media_ms - caller.onset_ms)
            bot.latency["clear_at_media_ms"] = float(self._media_ms)
        self._cleared_marks.update(bot.unheard_marks())
        if bot.finished is None:
            actions.append(Cancel(bot.job))
        if bot.finished is not None and bot.finished.action is CallAction.TRANSFER:
            self._pending_action = (CallAction.TRANSFER, bot.finished.reason)  # they asked for a human: go now
        actions += self._commit(bot, interrupted=True)
        self._bot, self._answering = None, None
        if self._pending_action is not None:
            actions += self._do_pending_action()
        return actions

    # ------------------------------------------------------------ never strand the caller

    def _check_clock(self, now: float) -> list[Action]:
        """What the media clock decides: give up on a late transcript or answer, bridge a slow one, ask a
        silent caller whether they are still there (then say goodbye), end a call that is too long."""
        caller, bot, options, media_ms = self._caller, self._bot, self.options, self._media_ms
        if caller is not None or bot is not None or self.vad.candidate_onset_ms is not None:
            self._heard_ms = media_ms
        if (
            caller is not None
            and caller.ended_ms is not None
            and caller.transcript is None
            and media_ms - caller.ended_ms >= options.stt_deadline_ms
        ):
            return self._fail_transcription(caller, Stage.STT, now)
        if bot is not None and bot.line is None and not self._paused:
            if bot.started_now is None and media_ms - bot.waiting_since_ms >= options.reply_deadline_ms:
                return self._fail_reply(bot, None, now)
            if bot.drained_ms is not None and media_ms - bot.drained_ms >= options.reply_stall_ms:
                return self._fail_reply(bot, None, now)
        since = self._unanswered_since()
        if since is not None and since != self._bridged[0] and 0 < options.filler_after_ms <= media_ms - since:
            return self._bridge(since)
        if caller is not None or bot is not None or self._transferring:
            return []
        if media_ms >= options.max_call_ms:
            return self._say_line(Line.TIME_LIMIT_BYE, now, CallAction.HANGUP)
        if media_ms - self._heard_ms < options.no_input_ms:
            return []
        if not self._reprompted:
            self._reprompted = True
            return self._say_line(Line.STILL_THERE, now)
        return self._say_line(Line.NO_INPUT_BYE, now, CallAction.HANGUP, recorded=(Route.NO_INPUT, None))

    def _on_transfer_done(self, event: TransferDone) -> list[Action]:
        """A transfer that went through ends the call here; one that failed never drops the caller: they hear
        that nobody can be reached and are offered a ticket, and the call goes on."""
        self._transferring = False
        if event.accepted:
            self.ended = True
            return [CallEnded("transferred to a human")]
        return self._say_line(Line.NO_COLLEAGUE, event.now, recorded=(Route.FALLBACK, Stage.TRANSFER))

    def _on_job_failed(self, event: JobFailed) -> list[Action]:
        caller, bot = self._caller, self._bot
        if caller is not None and event.job == caller.peek_job:
            caller.peek_job = None  # the turn's own transcription will read the words
            return []
        if caller is not None and event.job == caller.stt_job:
            if caller.ended_now is None:  # a speculative look: the turn's end transcribes again
                caller.stt_job = None
                return []
            return self._fail_transcription(caller, event.stage, event.now)
        if bot is not None and event.job == bot.job and bot.line is None:
            return self._fail_reply(bot, event.stage, event.now)
        return []

    def _fail_transcription(self, caller: _CallerTurn, stage: Stage, now: float) -> list[Action]:
        """The turn's words cannot be had: ask again (or let the reply go on, if it was over the bot)."""
        self._caller = None
        actions: list[Action] = [Cancel(caller.stt_job)] if caller.stt_job is not None else []
        if caller.peek_job is not None:
            actions.append(Cancel(caller.peek_job))
        if self._bot is not None:
            return actions + self._resume()
        return actions + self._say_line(Line.NOT_HEARD, now, recorded=(Route.REPEAT, stage))

    def _fail_reply(self, bot: _BotUtterance, stage: Stage | None, now: float) -> list[Action]:
        """The reply raised or ran out of time: what it sent plays on, then an apology from memory. `stage`
        None: the deadline passed, and the runner knows where the job was."""
        actions: list[Action] = [] if bot.finished is not None else [Cancel(bot.job)]
        self._bot = None
        if bot.kind is ReplyKind.GREETING:
            return actions + self._say_line(Line.HELLO, now, kind=ReplyKind.GREETING)
        caller_text = self._answering[1] if self._answering and self._answering[0] == bot.job else ""
        self._answering = None
        if bot.kind is not ReplyKind.PROMPT:
            spoken = f"{bot.full_text()} {self.lines[Line.SORRY]}".strip()
            actions.append(RecordTurn(Route.REPEAT, caller_text, spoken, job=bot.job, failed_stage=stage))
        return actions + self._say_line(Line.SORRY, now)

    def _unanswered_since(self) -> int | None:
        """Media time the caller stopped, while their finished turn has no answer audio yet (its words are still
        being read, or the answer worked out) and nobody is making a sound; else None."""
        caller, bot = self._caller, self._bot
        if self._paused or self.vad.in_speech or self.vad.candidate_onset_ms is not None:
            return None
        if bot is not None:
            waiting = bot.kind is ReplyKind.TURN and bot.line is None and bot.started_now is None
            return bot.waiting_since_ms if waiting else None
        if caller is not None and caller.ended_ms is not None and caller.transcript is None:
            return caller.speech_end_ms
        return None

    def _bridge(self, since_ms: int) -> list[Action]:
        """The answer is slow to start: say "One moment." while it comes (it is cut when the answer is ready).
        Once per turn: `since_ms` (when the caller stopped) names the turn."""
        mark = f"wait-{since_ms}"
        self._bridged, self._filler_playing = (since_ms, mark, self._media_ms), mark
        if self._bot is not None:
            self._bridge_reply(self._bot)
        return [PlayLine(Line.ONE_MOMENT, mark)]

    def _bridge_reply(self, bot: _BotUtterance) -> None:
        """The reply to a turn bridged by "One moment." starts from it: talking over it is talking over the bot."""
        since_ms, mark, said_ms = self._bridged
        if bot.waiting_since_ms != since_ms or bot.kind is not ReplyKind.TURN:
            return
        bot.filler_mark = mark
        if bot.started_media_ms is None:
            bot.started_media_ms = said_ms
        bot.latency["filler"] = float(said_ms - since_ms)

    def _say_line(
        self,
        line: Line,
        now: float,
        action: CallAction | None = None,
        *,
        kind: ReplyKind = ReplyKind.PROMPT,
        recorded: tuple[Route, Stage | None] | None = None,
    ) -> list[Action]:
        """Say a `Line` from memory, as a reply that is already complete; `action` follows once it is heard.
        `recorded`: the line answers the caller's turn, recorded with this route (and failed stage)."""
        bot = _BotUtterance(job=next(self._jobs), kind=kind, turn=next(self._turns), line=line)
        mark = f"t{bot.turn}-s1"
        bot.sentences.append((self.lines[line], mark))
        bot.started_now, bot.started_media_ms = now, self._media_ms
        bot.finished = ReplyFinished(bot.job, Route.PROMPT, action, None, None, None, now)
        self._bot, self._answering = bot, None
        if action is not None:
            self._pending_action = (action, None)
        record = [] if recorded is None else [RecordTurn(recorded[0], "", self.lines[line], failed_stage=recorded[1])]
        return [*record, PlayLine(line, mark)]

    # ------------------------------------------------------------ DTMF

    def _on_dtmf(self, event: DtmfIn) -> list[Action]:
        meaning = self.options.dtmf_map.get(event.digit)
        if meaning is None:
            return []
        actions: list[Action] = []
        if self.bot_speaking or self._bot is not None:
            actions += self._barge_in()
        return actions + self._respond(ReplyKind.DTMF, meaning, event.now)

    # ------------------------------------------------------------ the bot's replies

    def _respond(
        self,
        kind: ReplyKind,
        text: str,
        now: float,
        latency: dict[str, float | None] | None = None,
        caller_ended_now: float | None = None,
        misheard: bool = False,
        since_ms: int | None = None,
    ) -> list[Action]:
        """Ask for a reply; `since_ms`: media time the caller stopped talking, where its deadlines count from."""
        job = next(self._jobs)
        bot = _BotUtterance(job=job, kind=kind, turn=next(self._turns))
        bot.latency = dict(latency or {})
        bot.latency["_t0"] = caller_ended_now if caller_ended_now is not None else now
        bot.waiting_since_ms = self._media_ms if since_ms is None else since_ms
        self._bridge_reply(bot)
        self._bot = bot
        self._answering = (job, text) if kind is ReplyKind.TURN else None
        return [Respond(job, kind, text, misheard)]

    def _on_sentence(self, event: SentenceReady) -> list[Action]:
        bot = self._bot
        if bot is None or bot.job != event.job:
            return []
        mark = f"t{bot.turn}-s{len(bot.sentences) + 1}"
        bot.sentences.append((event.text, mark))
        bot.drained_ms = None
        actions: list[Action] = []
        if bot.started_now is None and bot.filler_mark is not None and bot.filler_mark == self._filler_playing:
            actions += self._cut_filler(bot)
        if bot.started_now is None:
            bot.started_now = event.now
            if bot.started_media_ms is None:  # else "One moment." started it: guard and continuations count from there
                bot.started_media_ms = self._media_ms
            bot.latency["tts_first_audio"] = round(event.tts_ms, 1)
            t0 = bot.latency.pop("_t0")
            waited = (event.now - t0) * 1000 if t0 is not None else 0.0
            bot.latency["first_audio_out"] = round((bot.latency.get("endpoint") or 0.0) + waited, 1)
        return [*actions, PlayAudio(event.pcm), SendMark(mark)]

    def _cut_filler(self, bot: _BotUtterance) -> list[Action]:
        """The answer is here while "One moment." still plays: clear it, so the answer starts at once."""
        assert bot.filler_mark is not None
        self._filler_playing, self._paused = None, False
        bot.echoed.add(bot.filler_mark)  # done with: a later clear must not expect it back again
        self._cleared_marks.add(bot.filler_mark)
        return [ClearAudio()]

    def _on_reply_finished(self, event: ReplyFinished) -> list[Action]:
        bot = self._bot
        if bot is None or bot.job != event.job:
            return []
        bot.finished = event
        bot.latency["route"] = None if event.route_ms is None else round(event.route_ms, 1)
        bot.latency["llm_first_token"] = (
            None if event.llm_first_token_ms is None else round(event.llm_first_token_ms, 1)
        )
        bot.latency.pop("_t0", None)
        if event.action is not None:
            self._pending_action = (event.action, event.reason)
        return self._complete_if_played()

    def _on_mark(self, event: MarkEchoed) -> list[Action]:
        if event.name in self._cleared_marks:
            self._cleared_marks.discard(event.name)  # returned by the clear: it was never heard
            return []
        bot = self._bot
        if event.name == self._filler_playing:
            self._filler_playing = None
            if bot is not None and event.name == bot.filler_mark:
                bot.echoed.add(event.name)
            return []
        if bot is None or all(event.name != mark for _, mark in bot.sentences):
            return []
        bot.echoed.add(event.name)
        if bot.finished is None and all(mark in bot.echoed for _, mark in bot.sentences):
            bot.drained_ms = self._media_ms  # the caller has heard all there is: the rest is late from here on
        return self._complete_if_played() or self._progress(bot)

    def _progress(self, bot: _BotUtterance) -> list[Action]:
        """Record a turn's reply as far as it has been heard, once it can no longer be taken back (speech
        starting now would be a new turn, and any that started in the continuation window has been noticed)."""
        if bot.kind is not ReplyKind.TURN or bot.started_media_ms is None:
            return []
        if self._caller is not None and self._caller.continues is not None:
            return []
        heard_ms = self._media_ms - bot.started_media_ms
        if heard_ms < self.options.continuation_ms + self.options.barge_in_ms:
            return []
        return [CommitProgress(bot.job, bot.played_text())]

    def _complete_if_played(self) -> list[Action]:
        bot = self._bot
        if bot is None or not bot.all_played:
            return []
        self._bot = None
        actions = self._resume() + self._commit(bot, interrupted=False)  # all it had sent was heard
        if self._pending_action is not None:
            actions += self._do_pending_action()
        return actions

    def _commit(self, bot: _BotUtterance, *, interrupted: bool) -> list[Action]:
        if self._answering is not None and self._answering[0] == bot.job:
            self._answering = None  # heard (in part or in full): no longer a reply to take back
        spoken = bot.played_text() if interrupted else bot.full_text()
        latency = {k: v for k, v in bot.latency.items() if not k.startswith("_")}
        if bot.kind is ReplyKind.GREETING:
            self.greeting_played, self.greeting_interrupted = spoken, interrupted
        return [CommitTurn(bot.job, bot.kind, spoken, interrupted, latency)]

    def _do_pending_action(self) -> list[Action]:
        assert self._pending_action is not None
        action, reason = self._pending_action
        self._pending_action = None
        if action is CallAction.TRANSFER:
            self._transferring = True  # the call ends when the transfer is accepted (`TransferDone`)
            return [Transfer(reason or HandoffReason.REQUESTED)]
        if action is CallAction.HANGUP:
            self.ended = True
            return [Hangup(), CallEnded("the bot ended the call")]
        raise ValueError(f"unknown reply action {action!r}")

    def _end(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        if self._caller is not None and self._caller.stt_job is not None:
            actions.append(Cancel(self._caller.stt_job))
        bot = self._bot
        if bot is not None:
            if bot.finished is None:
                actions.append(Cancel(bot.job))
            if bot.sentences:
                actions += self._commit(bot, interrupted=not bot.all_played)
        self._bot = self._caller = None
        self.ended = True
        return [*actions, CallEnded(reason)]
