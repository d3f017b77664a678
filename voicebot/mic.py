"""Talk to the bot through the local microphone and speaker, with the same CallSession as a phone call.

The sound card and the session meet in `DuplexBridge.block`: the audio callback hands it each block of
microphone samples and gets back the block to play. Inside, microphone audio is resampled to the phone's
8 kHz and pushed to the call as `AudioIn`, and the bot's audio is drawn from a Twilio-like playback buffer
whose marks are echoed as the speaker reaches them. `voicebot mic` drives the bridge from PortAudio (via
sounddevice); the tests drive the very same bridge from a WAV file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np

from voicebot.agent import VoiceAgent
from voicebot.audio import Resampler
from voicebot.call_runner import CallRunner
from voicebot.playback import PlaybackBuffer
from voicebot.session import AudioIn, CallStarted, MarkEchoed
from voicebot.store import new_call_id

PHONE_RATE = 8000


class AudioDeviceError(RuntimeError):
    """No usable sound device: the message says what is missing and how to get it."""


class DuplexBridge:
    """Sound-card blocks in and out at `device_rate`; the call's events and transport on the other side.

    `block` runs on the audio thread and must never wait: it only resamples, copies and posts events.
    The bridge is also the call's transport (play, mark, clear, transfer, hangup).
    """

    def __init__(self, device_rate: int) -> None:
        self.device_rate = device_rate
        self._to_phone = Resampler(device_rate, PHONE_RATE)
        self._to_device = Resampler(PHONE_RATE, device_rate)
        self._playback = PlaybackBuffer()
        self._lock = threading.Lock()
        self._out_pending = np.zeros(0, dtype=np.int16)
        self._runner: CallRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transferred: str | None = None
        self.hung_up = False

    def attach(self, runner: CallRunner, loop: asyncio.AbstractEventLoop) -> None:
        self._runner, self._loop = runner, loop

    def block(self, mic: np.ndarray) -> np.ndarray:
        """One audio-callback block: microphone samples (int16, device rate) in, speaker samples out."""
        mic = np.asarray(mic, dtype=np.int16).reshape(-1)
        now = time.monotonic()
        events: list = []
        phone_in = self._to_phone.process(mic)
        if phone_in.size:
            events.append(AudioIn(phone_in, now))
        need = mic.size
        with self._lock:
            while self._out_pending.size < need:
                pcm, marks = self._playback.play(PHONE_RATE * 20 // 1000)
                events += [MarkEchoed(name, now) for name in marks]
                self._out_pending = np.concatenate([self._out_pending, self._to_device.process(pcm)])
            out, self._out_pending = self._out_pending[:need], self._out_pending[need:]
        if self._loop is not None and self._runner is not None:
            for event in events:
                self._loop.call_soon_threadsafe(self._runner.push, event)
        return out

    # ------------------------------------------------------------ transport

    async def play(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._playback.add_audio(pcm)

    async def mark(self, name: str) -> None:
        with self._lock:
            self._playback.add_mark(name)

    async def clear(self) -> None:
        with self._lock:
            marks = self._playback.clear()
            self._out_pending = self._out_pending[:0]
        if self._runner is not None:
            for name in marks:
                self._runner.push(MarkEchoed(name, time.monotonic()))

    async def pause(self) -> None:
        with self._lock:
            self._playback.hold(0)  # the local speaker has nothing in flight beyond this block: stop now

    async def resume(self) -> None:
        with self._lock:
            self._playback.release()

    async def transfer(self, reason: str) -> bool:
        self.transferred = reason
        return True

    async def hangup(self) -> None:
        self.hung_up = True


def open_sound_device(block_ms: int = 20):
    """The default input/output device's sample rate and a factory for its duplex stream, or a clear error."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice loads the PortAudio shared library at import
        raise AudioDeviceError(
            f"cannot use the sound card: {exc}. Install PortAudio (Debian: apt-get install libportaudio2)"
        ) from exc
    try:
        devices = sounddevice.query_devices()
        inputs = [d for d in devices if d["max_input_channels"] > 0]
        outputs = [d for d in devices if d["max_output_channels"] > 0]
    except Exception as exc:  # PortAudio reports a missing audio system in many ways
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from exc
    if not inputs or not outputs:
        missing = " and ".join(n for n, ds in (("microphone", inputs), ("speaker", outputs)) if not ds)
        raise AudioDeviceError(
            f"no {missing} found on this machine (PortAudio sees {len(devices)} device(s)); "
            "plug one in, or try `voicebot replay CALL.wav` to talk to the bot from a recording"
        )
    rate = int(sounddevice.query_devices(kind="input")["default_samplerate"])

    def stream(callback):
        return sounddevice.Stream(
            samplerate=rate, blocksize=rate * block_ms // 1000, channels=1, dtype="int16", callback=callback
        )

    return rate, stream


async def talk(agent: VoiceAgent, device: tuple[int, Callable]) -> dict:
    """One call through the sound card from `open_sound_device`, until the bot hangs up or transfers, or Ctrl-C."""
    rate, make_stream = device
    bridge = DuplexBridge(rate)
    runner = open_local_call(agent, bridge)

    def callback(indata, outdata, frames, time_info, status) -> None:  # PortAudio's audio thread
        outdata[:, 0] = bridge.block(indata[:, 0])

    with make_stream(callback):
        await runner.run()  # Ctrl-C cancels it; the call is still closed and recorded
    return agent.store.get_call(runner.conversation.call_id) or {}


def open_local_call(agent: VoiceAgent, bridge: DuplexBridge) -> CallRunner:
    """A new call whose audio goes through `bridge`, greeting queued; `await runner.run()` to hold it."""
    session, conversation = agent.open_call(new_call_id("mic"), None, "mic")
    runner = CallRunner(agent, session, conversation, bridge)
    bridge.attach(runner, asyncio.get_running_loop())
    runner.push(CallStarted(time.monotonic()))
    return runner
