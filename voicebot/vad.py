"""Voice activity: Silero VAD v6 streamed window by window, turned into turn-taking events.

One `SileroVad` (the loaded ONNX session, thread-safe) serves every call; each call direction gets a
`VadStream` holding the LSTM state, the 64-sample context and the partial window. Sans-I/O: the stream is fed
16 kHz audio and every time it reports is media time counted from the samples fed, never a clock.

Events, in the order a turn produces them:
- `SpeechStart`: speech has lasted `min_speech_ms` (so a click does not start a turn).
- `SpeechPause`: silence has lasted `pause_ms`: transcribe what was said so far, speculatively.
- `SpeechResume`: the caller went on talking after a pause: the speculative transcript is stale.
- `SpeechEnd`: silence has lasted `end_ms`: the caller's turn is over (or `end_turn()` ended it sooner).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import pcm16_to_float
from voicebot.config import ModelSettings, VoiceSettings
from voicebot.model_paths import model_path

SAMPLE_RATE = 16000
WINDOW = 512  # samples the model judges at a time (32 ms)
CONTEXT = 64  # samples of the previous window the model sees in front of each window
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE
STATE_SHAPE = (1, 1, 128)
ONNX_IN_PACKAGE = "faster_whisper/assets/silero_vad_v6.onnx"


@dataclass(frozen=True)
class VadOptions:
    """Turn-taking thresholds; `VoiceSettings.vad_*` in the config."""

    threshold: float = 0.5
    neg_threshold: float | None = None  # None: threshold - 0.15 (hysteresis, as Silero's own segmenter does)
    min_speech_ms: int = 150
    pause_ms: int = 200
    end_ms: int = 450

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.lower <= self.threshold:
            raise ValueError(f"VAD neg_threshold must be in [0, threshold={self.threshold}], got {self.lower}")
        if self.min_speech_ms < 0 or self.pause_ms <= 0 or self.end_ms < self.pause_ms:
            raise ValueError(
                f"VAD timings need min_speech_ms >= 0 and 0 < pause_ms <= end_ms; got min_speech_ms="
                f"{self.min_speech_ms}, pause_ms={self.pause_ms}, end_ms={self.end_ms}"
            )

    @property
    def lower(self) -> float:
        """The probability below which speech counts as stopped."""
        return max(0.0, self.threshold - 0.15) if self.neg_threshold is None else self.neg_threshold

    @classmethod
    def from_voice(cls, voice: VoiceSettings) -> VadOptions:
        """The options the config's [voice] vad_* settings ask for."""
        return cls(
            voice.vad_threshold, voice.vad_neg_threshold, voice.vad_min_speech_ms, voice.vad_pause_ms, voice.vad_end_ms
        )


@dataclass(frozen=True)
class SpeechStart:
    t_ms: int  # when it became known (end of the window that confirmed it)
    onset_ms: int  # where the speech began


@dataclass(frozen=True)
class SpeechPause:
    t_ms: int
    speech_end_ms: int  # where the speech stopped


@dataclass(frozen=True)
class SpeechResume:
    t_ms: int
    onset_ms: int


@dataclass(frozen=True)
class SpeechEnd:
    t_ms: int
    speech_end_ms: int


VadEvent = SpeechStart | SpeechPause | SpeechResume | SpeechEnd


class SileroVad:
    """The Silero VAD v6 model, loaded once; `stream()` gives each audio stream its own state."""

    def __init__(self, onnx: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a 32 ms window costs well under a millisecond; threads only add overhead
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(onnx), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ValueError(f"Silero VAD model {onnx} cannot be loaded: {exc}") from exc
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        want = {"input": ["seq_len", WINDOW + CONTEXT], "h": list(STATE_SHAPE), "c": list(STATE_SHAPE)}
        if inputs != want or outputs != ["speech_probs", "hn", "cn"]:
            raise ValueError(
                f"{onnx} is not the Silero VAD v6 model voicebot expects: inputs {inputs}, outputs {outputs}"
            )

    def run(self, frames: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Speech probabilities of consecutive [n, 576] context+window frames, carrying the LSTM state (h, c)."""
        probs, h, c = self._session.run(None, {"input": frames, "h": h, "c": c})
        return probs, h, c

    def stream(self, options: VadOptions | None = None) -> VadStream:
        return VadStream(self, options or VadOptions())


def load_vad(models: ModelSettings) -> SileroVad:
    """The VAD of the configured profile (bundled with faster-whisper)."""
    path = model_path(models, "vad")
    return SileroVad(path if path.is_file() else path / ONNX_IN_PACKAGE)


class _Phase(enum.Enum):
    SILENCE = enum.auto()
    CANDIDATE = enum.auto()  # voiced, but not yet for min_speech_ms
    SPEECH = enum.auto()
    PAUSED = enum.auto()


class VadStream:
    """One audio stream's VAD state: feed 16 kHz audio in chunks of any length, get events with media times."""

    def __init__(self, vad: SileroVad, options: VadOptions) -> None:
        self.vad, self.options = vad, options
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows_done = 0
        self.reset()

    def reset(self) -> None:
        """Start a new turn: forget the model state and any speech in progress; media time runs on."""
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._phase = _Phase.SILENCE
        self._voiced = False
        self._onset_ms = 0
        self._speech_end_ms = 0
        self._speech_ms = 0
        self.probability = 0.0  # of the latest window

    @property
    def t_ms(self) -> int:
        """Media time up to which audio has been judged (whole windows only)."""
        return self._windows_done * WINDOW_MS

    @property
    def speech_ms(self) -> int:
        """Speech heard in the current utterance so far (0 in silence): what a barge-in gate asks."""
        return self._speech_ms

    @property
    def paused_ms(self) -> int:
        """Silence since the caller's words stopped, while the turn is paused (0 otherwise)."""
        return self.t_ms - self._speech_end_ms if self._phase is _Phase.PAUSED else 0

    def end_turn(self) -> SpeechEnd:
        """End the paused turn now, before `end_ms`: the layer above has heard that the caller is done."""
        if self._phase is not _Phase.PAUSED:
            raise RuntimeError(f"end_turn needs a paused turn; the stream is in {self._phase.name.lower()}")
        self._phase, self._speech_ms = _Phase.SILENCE, 0
        return SpeechEnd(self.t_ms, self._speech_end_ms)

    @property
    def in_speech(self) -> bool:
        """Between SpeechStart and SpeechEnd (pauses included)."""
        return self._phase in (_Phase.SPEECH, _Phase.PAUSED)

    def feed(self, audio: np.ndarray) -> list[VadEvent]:
        """Judge the complete windows that `audio` (16 kHz, float in [-1, 1] or int16) completes."""
        audio = np.asarray(audio)
        samples = pcm16_to_float(audio) if audio.dtype == np.int16 else audio.astype(np.float32, copy=False)
        if samples.ndim != 1:
            raise ValueError(f"VadStream.feed takes mono 1-D audio, got shape {samples.shape}")
        buffered = np.concatenate([self._pending, samples])
        n = buffered.size // WINDOW
        self._pending = buffered[n * WINDOW :]
        if n == 0:
            return []
        windows = buffered[: n * WINDOW].reshape(n, WINDOW)
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._h, self._c = self.vad.run(np.concatenate([contexts, windows], axis=1), self._h, self._c)
        events: list[VadEvent] = []
        for prob in probs.reshape(-1):
            self._windows_done += 1
            self.probability = float(prob)
            events.extend(self._step(self.probability))
        return events

    def _step(self, prob: float) -> list[VadEvent]:
        """Advance the turn state machine by one window."""
        end, start = self.t_ms, self.t_ms - WINDOW_MS
        opts = self.options
        self._voiced = prob >= opts.threshold or (self._voiced and prob >= opts.lower)
        events: list[VadEvent] = []
        if self._voiced:
            self._speech_ms += WINDOW_MS
            if self._phase is _Phase.SILENCE:
                self._phase, self._onset_ms = _Phase.CANDIDATE, start
            elif self._phase is _Phase.PAUSED:
                self._phase = _Phase.SPEECH
                events.append(SpeechResume(end, start))
            if self._phase is _Phase.CANDIDATE and self._speech_ms >= opts.min_speech_ms:
                self._phase = _Phase.SPEECH
                events.append(SpeechStart(end, self._onset_ms))
            self._speech_end_ms = end
        elif self._phase is _Phase.CANDIDATE:
            self._phase, self._speech_ms = _Phase.SILENCE, 0
        elif self.in_speech:
            silence = end - self._speech_end_ms
            if self._phase is _Phase.SPEECH and silence >= opts.pause_ms:
                self._phase = _Phase.PAUSED
                events.append(SpeechPause(end, self._speech_end_ms))
            if self._phase is _Phase.PAUSED and silence >= opts.end_ms:
                self._phase, self._speech_ms = _Phase.SILENCE, 0
                events.append(SpeechEnd(end, self._speech_end_ms))
        return events
