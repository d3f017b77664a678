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
FLOOR_MIN_DB = -70.0  # quieter than any phone line's noise: digital silence, which sets no floor
FLOOR_RISE_DB = 0.03  # per window (~1 dB/s): the floor follows a line getting noisier, not the caller's speech


@dataclass(frozen=True)
class VadOptions:
    """Turn-taking thresholds; `VoiceSettings.vad_*` in the config."""

    threshold: float = 0.5
    neg_threshold: float | None = None  # None: threshold - 0.15 (hysteresis, as Silero's own segmenter does)
    min_speech_ms: int = 150
    pause_ms: int = 200
    end_ms: int = 450
    # A second look for voices Silero scores low (whispered, quiet, robotic): a window at least this likely to
    # be speech is speech when it is also `quiet_snr_db` louder than the line's own noise floor (and stays so at
    # half of both). Whispered questions scored 0.02-0.3 at 10-20 dB over the floor; line noise, hum and clicks
    # scored at most 0.031, within 2.1 dB of it. 0 turns the second look off.
    quiet_threshold: float = 0.04
    quiet_snr_db: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.quiet_threshold <= self.threshold or self.quiet_snr_db < 0:
            raise ValueError(
                f"VAD quiet_threshold must be in [0, threshold={self.threshold}] and quiet_snr_db >= 0; got "
                f"{self.quiet_threshold} and {self.quiet_snr_db}"
            )
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
            voice.vad_threshold,
            voice.vad_neg_threshold,
            voice.vad_min_speech_ms,
            voice.vad_pause_ms,
            voice.vad_end_ms,
            voice.vad_quiet_threshold,
            voice.vad_quiet_snr_db,
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
        self._floor_db: float | None = None  # the line's noise level, for the second look at quiet voices
        self.reset()

    def reset(self) -> None:
        """Start a new turn: forget the model state and any speech in progress; media time runs on."""
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._phase = _Phase.SILENCE
        self._voiced = False
        self._heard_by_model = False  # Silero itself scored speech in this utterance: the second look is off
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
    def candidate_onset_ms(self) -> int | None:
        """Where voiced sound began that is not yet long enough to be speech (None when there is none)."""
        return self._onset_ms if self._phase is _Phase.CANDIDATE else None

    @property
    def paused_ms(self) -> int:
        """Silence since the caller's words stopped, while the turn is paused (0 otherwise)."""
        return self.t_ms - self._speech_end_ms if self._phase is _Phase.PAUSED else 0

    def end_turn(self) -> SpeechEnd:
        """End the paused turn now, before `end_ms`: the layer above has heard that the caller is done."""
        if self._phase is not _Phase.PAUSED:
            raise RuntimeError(f"end_turn needs a paused turn; the stream is in {self._phase.name.lower()}")
        self._to_silence()
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
        levels = 10 * np.log10(np.mean(np.square(windows, dtype=np.float64), axis=1) + 1e-12)
        events: list[VadEvent] = []
        for prob, level_db in zip(probs.reshape(-1), levels, strict=True):
            self._windows_done += 1
            self.probability = float(prob)
            events.extend(self._step(self.probability, self._over_floor(float(level_db))))
        return events

    def _to_silence(self) -> None:
        """The utterance is over (or was never speech): the next sound starts a new one."""
        self._phase, self._speech_ms, self._heard_by_model = _Phase.SILENCE, 0, False

    def _over_floor(self, level_db: float) -> float:
        """How far this window is above the line's noise floor (dB), then let the floor follow the line: down at
        once, up slowly, never onto digital silence."""
        if level_db < FLOOR_MIN_DB:
            return 0.0
        floor = level_db if self._floor_db is None else self._floor_db
        self._floor_db = min(level_db, floor + FLOOR_RISE_DB)
        return level_db - floor

    def _step(self, prob: float, over_floor_db: float) -> list[VadEvent]:
        """Advance the turn state machine by one window."""
        end, start = self.t_ms, self.t_ms - WINDOW_MS
        opts = self.options
        heard = prob >= opts.threshold
        if heard and not self._heard_by_model:
            # Silero hears this utterance itself: from here on it alone decides, and a candidate the second look
            # began starts over here, so voices Silero hears get the very onsets and ends it gives them.
            self._heard_by_model = True
            if self._phase is _Phase.CANDIDATE:
                self._phase, self._speech_ms = _Phase.SILENCE, 0
        if self._heard_by_model:
            self._voiced = heard or (self._voiced and prob >= opts.lower)
        else:  # the second look, with hysteresis too: a whisper's energy and score dip between syllables
            hold = 2 if self._voiced else 1
            quiet = opts.quiet_threshold > 0 and prob >= opts.quiet_threshold / hold
            self._voiced = quiet and over_floor_db >= opts.quiet_snr_db / hold
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
            self._to_silence()
        elif self.in_speech:
            silence = end - self._speech_end_ms
            if self._phase is _Phase.SPEECH and silence >= opts.pause_ms:
                self._phase = _Phase.PAUSED
                events.append(SpeechPause(end, self._speech_end_ms))
            if self._phase is _Phase.PAUSED and silence >= opts.end_ms:
                self._to_silence()
                events.append(SpeechEnd(end, self._speech_end_ms))
        return events
