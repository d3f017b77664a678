"""Replay a recorded call through the full voice pipeline, offline, hearing the bot as the caller would.

The recording (any WAV rate) is turned into what the phone network delivers — 8 kHz G.711 mu-law in 20 ms
frames — and fed to a real CallSession with the real models, in simulated real time (`speed` 1.0), faster
(`speed` N), or lock-step (`speed` 0: each frame waits for the work it started, so outcomes do not depend on
how busy the machine is). A virtual phone plays the bot's audio at real rate, echoes marks when playback
reaches them and returns pending marks on clear, exactly as Twilio does. DTMF presses come from the call's
sidecar JSON (`script[].dtmf`), since they are not in the audio.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voicebot.agent import VoiceAgent
from voicebot.audio import Resampler, read_wav, ulaw_decode, ulaw_encode
from voicebot.call_runner import CallRunner
from voicebot.playback import SENT_AHEAD_MS, PlaybackBuffer
from voicebot.session import AudioIn, CallerHungUp, CallStarted, DtmfIn, MarkEchoed
from voicebot.store import new_call_id

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
FRAME_MS = 20


def phone_audio(path: Path) -> np.ndarray:
    """The recording as the phone delivers it: 8 kHz mono, quantised through G.711 mu-law."""
    pcm, rate = read_wav(path)
    if rate != RATE:
        resampler = Resampler(rate, RATE)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    return ulaw_decode(ulaw_encode(pcm))


def sidecar_dtmf(path: Path) -> list[tuple[int, str]]:
    """`(at_ms, digit)` presses from `CALL.json` beside `CALL.wav`, if there is one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return []
    try:
        script = json.loads(sidecar.read_text(encoding="utf-8")).get("script", [])
        return sorted((int(step["at_ms"]), str(step["dtmf"])) for step in script if "dtmf" in step)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{sidecar}: script entries need at_ms and dtmf: {exc}") from exc


class VirtualPhone:
    """The caller's handset: a Twilio-like playback buffer, plus what the bot asked the network to do."""

    def __init__(self) -> None:
        self.buffer = PlaybackBuffer()
        self.cleared_marks: list[str] = []
        self.transferred: str | None = None
        self.hung_up = False

    async def play(self, pcm: np.ndarray) -> None:
        self.buffer.add_audio(pcm)

    async def mark(self, name: str) -> None:
        self.buffer.add_mark(name)

    async def clear(self) -> None:
        self.cleared_marks += self.buffer.clear()

    async def pause(self) -> None:
        self.buffer.hold(SENT_AHEAD_MS * RATE // 1000)  # what the server would already have sent still plays

    async def resume(self) -> None:
        self.buffer.release()

    async def transfer(self, reason: str) -> bool:
        self.transferred = reason
        return True

    async def hangup(self) -> None:
        self.hung_up = True


@dataclass
class ReplayResult:
    call_id: str
    heard: np.ndarray  # what the caller heard, 8 kHz int16, one sample per sample of the call
    end_reason: str
    transferred: str | None
    hung_up: bool
    wall_s: float
    media_s: float
    record: dict = field(default_factory=dict)


async def replay_call(
    agent: VoiceAgent,
    wav: Path,
    *,
    speed: float = 1.0,
    caller: str | None = None,
    call_id: str | None = None,
    tail_ms: int = 20_000,
    shift_ms: int = 0,
) -> ReplayResult:
    """Run the recording `wav` through a fresh call; returns what was heard and the stored call record.

    `shift_ms` starts the recording that much later (its first `shift_ms` repeated in front, line noise on a
    recorded call), so a test can replay it at every alignment to the 20 ms frames and the VAD's 32 ms windows.
    """
    audio = phone_audio(wav)
    audio = np.concatenate([audio[: shift_ms * RATE // 1000], audio])
    presses = [(at + shift_ms, digit) for at, digit in sidecar_dtmf(wav)]
    call_id = call_id or new_call_id("replay")
    session, conversation = agent.open_call(call_id, caller, "replay")
    phone = VirtualPhone()
    runner = CallRunner(agent, session, conversation, phone)
    started = time.monotonic()
    running = asyncio.create_task(runner.run())
    runner.push(CallStarted(time.monotonic()))
    heard: list[np.ndarray] = []
    frames = -(-audio.size // FRAME)
    quiet_frames = 0
    i = 0
    while not session.ended:
        media_ms = i * FRAME_MS
        if speed > 0:
            delay = started + media_ms / 1000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await runner.idle()
        if session.ended:
            break
        played, marks = phone.buffer.play(FRAME)
        heard.append(played)
        now = time.monotonic()
        for mark in phone.cleared_marks + marks:  # Twilio returns the marks a clear dropped, too
            runner.push(MarkEchoed(mark, now))
        phone.cleared_marks.clear()
        frame = audio[i * FRAME : (i + 1) * FRAME] if i < frames else np.zeros(0, np.int16)
        runner.push(AudioIn(np.pad(frame, (0, FRAME - frame.size)), now))
        while presses and presses[0][0] <= media_ms:
            runner.push(DtmfIn(presses.pop(0)[1], now))
        i += 1
        if i >= frames:  # the recording is over: wait for the bot to finish, then hang up
            busy = phone.buffer.pending_samples > 0 or session.bot_speaking or runner.working
            quiet_frames = 0 if busy else quiet_frames + 1
            if quiet_frames * FRAME_MS >= 1000 or (i - frames) * FRAME_MS >= tail_ms:
                break
        await asyncio.sleep(0)
    if not session.ended:
        if speed <= 0:
            await runner.idle()
        runner.push(CallerHungUp(time.monotonic()))
    end_reason = await running
    heard_audio = np.concatenate(heard) if heard else np.zeros(0, np.int16)
    record = agent.store.get_call(call_id) or {}
    return ReplayResult(
        call_id,
        heard_audio,
        end_reason,
        phone.transferred,
        phone.hung_up,
        time.monotonic() - started,
        heard_audio.size / RATE,
        record,
    )
