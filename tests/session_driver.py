"""A test driver for CallSession: plays the runner's part on a fake clock that moves with media time."""

from __future__ import annotations

import numpy as np

from voicebot.routes import CallAction, HandoffReason, ReplyKind, Route
from voicebot.session import (
    AudioIn,
    CallSession,
    CallStarted,
    PlayAudio,
    ReplyFinished,
    Respond,
    SendMark,
    SentenceReady,
    SessionOptions,
    Transcribe,
    Transcribed,
)
from voicebot.stt import Transcript
from voicebot.vad import VadOptions

FRAME = 160


class Driver:
    """Feeds a session 20 ms frames on a fake clock that moves with media time."""

    def __init__(self, vad, options: SessionOptions | None = None) -> None:
        self.session = CallSession(vad.stream(VadOptions()), options)
        self.t = 0.0
        self.actions: list = []

    def send(self, event) -> list:
        out = self.session.handle(event)
        self.actions += out
        return out

    def audio(self, pcm: np.ndarray) -> list:
        out = []
        for start in range(0, pcm.size, FRAME):
            frame = np.pad(pcm[start : start + FRAME], (0, max(0, FRAME - pcm[start : start + FRAME].size)))
            self.t += 0.02
            out += self.send(AudioIn(frame, self.t))
        return out

    def silence(self, ms: int) -> list:
        return self.audio(np.zeros(ms * 8, dtype=np.int16))

    def answer_transcribe(self, out: list, text: str) -> list:
        jobs = [a for a in out if isinstance(a, Transcribe)]
        assert jobs, f"expected a Transcribe action in {out}"
        return self.send(Transcribed(jobs[-1].job, Transcript(text, 0.01, -0.2), 300.0, self.t))

    def until_peek(self, pcm: np.ndarray) -> tuple[list, np.ndarray]:
        """Feed `pcm` until Whisper is asked to look at the speech over the bot; returns the actions and the
        audio not yet fed."""
        out: list = []
        for start in range(0, pcm.size, FRAME):
            out += self.audio(pcm[start : start + FRAME])
            if of(Transcribe, out):
                return out, pcm[start + FRAME :]
        raise AssertionError(f"no peek while feeding {pcm.size / 8} ms: {out}")

    def speak(
        self, job: int, sentences: list[str], *, action: CallAction | None = None, finish: bool = True
    ) -> list[str]:
        marks = []
        for text in sentences:
            out = self.send(SentenceReady(job, text, np.zeros(800, np.int16), 50.0, self.t))
            assert isinstance(out[0], PlayAudio) and isinstance(out[1], SendMark)
            marks.append(out[1].name)
        if finish:
            self.send(
                ReplyFinished(job, Route.FAQ, action, HandoffReason.REQUESTED if action else None, 5.0, None, self.t)
            )
        return marks


def of(kind, actions):
    return [a for a in actions if isinstance(a, kind)]


def take_turn(d: Driver, pcm: np.ndarray, text: str) -> Respond:
    """The caller says `pcm`, heard as `text`, and stops: the turn is answered."""
    out = d.audio(pcm) + d.silence(250)
    out += d.answer_transcribe(out, text)
    out += d.silence(300)
    (respond,) = of(Respond, out)
    return respond


def greet(d: Driver) -> int:
    (respond,) = d.send(CallStarted(0.0))
    assert isinstance(respond, Respond) and respond.kind is ReplyKind.GREETING
    return respond.job
