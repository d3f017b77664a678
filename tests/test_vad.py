"""Silero VAD streaming and turn events, on real speech from the embedded Piper voice."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from voicebot.audio import Resampler, pcm16_to_float
from voicebot.config import load_settings
from voicebot.model_paths import model_path
from voicebot.vad import (
    SAMPLE_RATE,
    WINDOW,
    WINDOW_MS,
    SileroVad,
    SpeechEnd,
    SpeechPause,
    SpeechResume,
    SpeechStart,
    VadOptions,
    VadStream,
)

OPTIONS = VadOptions(threshold=0.5, min_speech_ms=150, pause_ms=200, end_ms=450)
TOLERANCE_MS = 150


@pytest.fixture(scope="module")
def utterances(synthesizer) -> list[np.ndarray]:
    """Two spoken phrases without inner commas, at 16 kHz float, trimmed to where the voice is audible."""
    out = []
    for text in ("I need help with my order.", "It has not arrived yet."):
        resampler = Resampler(synthesizer.sample_rate, SAMPLE_RATE)
        audio = synthesizer.synthesize(text)
        speech = pcm16_to_float(np.concatenate([resampler.process(audio), resampler.flush()]))
        first, last = _audible(speech)
        out.append(speech[first:last])
    return out


def _audible(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the 10 ms frames louder than -40 dBFS."""
    frames = x[: x.size // 160 * 160].reshape(-1, 160)
    loud = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 0.01)[0]
    return int(loud[0] * 160), int((loud[-1] + 1) * 160)


def _ms(samples: int) -> float:
    return samples * 1000 / SAMPLE_RATE


def _scene(*parts: np.ndarray | float, noise: float = 0.002, seed: int = 0) -> tuple[np.ndarray, list[tuple]]:
    """Speech and silences (given in seconds) one after another, under faint white noise; with speech spans in ms."""
    pieces, spans, at = [], [], 0
    for part in parts:
        piece = np.zeros(int(part * SAMPLE_RATE), np.float32) if isinstance(part, float) else part
        if not isinstance(part, float):
            spans.append((_ms(at), _ms(at + piece.size)))
        pieces.append(piece)
        at += piece.size
    signal = np.concatenate(pieces)
    signal += np.random.default_rng(seed).standard_normal(signal.size).astype(np.float32) * noise
    return signal, spans


def _feed(stream: VadStream, signal: np.ndarray, chunk: int) -> list:
    events = []
    for i in range(0, signal.size, chunk):
        events.extend(stream.feed(signal[i : i + chunk]))
    return events


def test_one_utterance_starts_near_onset_and_ends_end_ms_after_it(vad, utterances) -> None:
    signal, [(onset, end)] = _scene(1.0, utterances[0], 1.5)
    events = vad.stream(OPTIONS).feed(signal)
    start, finish = events[0], events[-1]
    assert isinstance(start, SpeechStart) and isinstance(finish, SpeechEnd)
    assert [type(e) for e in events].count(SpeechStart) == 1 and isinstance(events[-2], SpeechPause)
    assert abs(start.onset_ms - onset) <= TOLERANCE_MS
    assert OPTIONS.min_speech_ms <= start.t_ms - start.onset_ms < OPTIONS.min_speech_ms + WINDOW_MS
    assert abs(finish.speech_end_ms - end) <= TOLERANCE_MS
    assert OPTIONS.end_ms <= finish.t_ms - finish.speech_end_ms < OPTIONS.end_ms + WINDOW_MS
    assert OPTIONS.pause_ms <= events[-2].t_ms - events[-2].speech_end_ms < OPTIONS.pause_ms + WINDOW_MS


@pytest.mark.parametrize("noise", [0.0, 0.003, 0.01])
def test_no_events_on_silence_or_low_noise(vad, noise: float) -> None:
    signal, _ = _scene(10.0, noise=noise, seed=7)
    assert _feed(vad.stream(OPTIONS), signal, 320) == []


def test_two_utterances_a_second_apart_make_two_turns(vad, utterances) -> None:
    signal, spans = _scene(0.5, utterances[0], 1.0, utterances[1], 1.0)
    events = vad.stream(OPTIONS).feed(signal)
    starts = [e for e in events if isinstance(e, SpeechStart)]
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert len(starts) == len(ends) == 2
    assert starts[0].t_ms < ends[0].t_ms < starts[1].t_ms < ends[1].t_ms
    for (onset, end), start, finish in zip(spans, starts, ends, strict=True):
        assert abs(start.onset_ms - onset) <= TOLERANCE_MS
        assert abs(finish.speech_end_ms - end) <= TOLERANCE_MS


def test_a_gap_shorter_than_end_ms_pauses_and_resumes(vad, utterances) -> None:
    signal, spans = _scene(0.5, utterances[0], 0.3, utterances[1], 1.0)
    events = vad.stream(OPTIONS).feed(signal)
    kinds = [type(e) for e in events]
    assert kinds.count(SpeechStart) == 1 and kinds.count(SpeechEnd) == 1 and kinds[-1] is SpeechEnd
    resumes = [e for e in events if isinstance(e, SpeechResume)]
    second_onset = spans[1][0]
    resume = min(resumes, key=lambda e: abs(e.onset_ms - second_onset))
    assert abs(resume.onset_ms - second_onset) <= TOLERANCE_MS
    assert isinstance(events[events.index(resume) - 1], SpeechPause)


def test_20ms_chunks_give_the_same_events_as_one_chunk(vad, utterances) -> None:
    signal, _ = _scene(0.5, utterances[0], 0.3, utterances[1], 1.0, utterances[0], 0.7)
    whole = vad.stream(OPTIONS).feed(signal)
    assert len(whole) >= 6
    assert _feed(vad.stream(OPTIONS), signal, 320) == whole
    assert _feed(vad.stream(OPTIONS), (signal * 32767).astype(np.int16), 333) == _feed(
        vad.stream(OPTIONS), pcm16_to_float((signal * 32767).astype(np.int16)), 4096
    )


def test_speech_duration_for_barge_in_and_reset(vad, utterances) -> None:
    stream = vad.stream(OPTIONS)
    signal, [(onset, _)] = _scene(0.5, utterances[0], 1.0)
    head = int((onset + 400) * SAMPLE_RATE / 1000)
    events = stream.feed(signal[:head])
    assert [type(e) for e in events] == [SpeechStart]
    assert stream.in_speech and 300 <= stream.speech_ms <= 400 + WINDOW_MS
    clock = stream.t_ms
    stream.reset()  # e.g. the session discards this turn
    assert not stream.in_speech and stream.speech_ms == 0 and stream.t_ms == clock
    rest = stream.feed(signal[head:])  # the rest of the words are a new turn, not the end of the reset one
    assert isinstance(rest[0], SpeechStart) and rest[0].onset_ms >= clock and isinstance(rest[-1], SpeechEnd)
    assert stream.t_ms == signal.size // WINDOW * WINDOW_MS
    assert stream.speech_ms == 0 and not stream.in_speech


class _ScriptedModel:
    """Stands in for SileroVad with given probabilities, to pin down the state machine exactly."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = iter(probs)

    def run(self, frames, h, c):
        return np.array([next(self.probs) for _ in frames], np.float32), h, c


def _scripted(probs: list[float], options: VadOptions = OPTIONS) -> list:
    return VadStream(_ScriptedModel(probs), options).feed(np.zeros(len(probs) * WINDOW, np.float32))


def test_state_machine_timing_and_hysteresis() -> None:
    # 4 windows (128 ms) of speech is shorter than min_speech_ms: no turn
    assert _scripted([0.0, 0.9, 0.9, 0.9, 0.9, 0.1] + [0.0] * 20) == []
    # speech from window 2; 0.4 stays speech (above neg_threshold 0.35); 0.3 ends it
    probs = [0.0, 0.0, 0.9, 0.9, 0.4, 0.4, 0.4, 0.3, *[0.0] * 6, 0.9, *[0.0] * 20]
    assert _scripted(probs) == [
        SpeechStart(t_ms=7 * 32, onset_ms=2 * 32),
        SpeechPause(t_ms=14 * 32, speech_end_ms=7 * 32),
        SpeechResume(t_ms=15 * 32, onset_ms=14 * 32),
        SpeechPause(t_ms=22 * 32, speech_end_ms=15 * 32),
        SpeechEnd(t_ms=30 * 32, speech_end_ms=15 * 32),
    ]
    equal = VadOptions(min_speech_ms=0, pause_ms=64, end_ms=64)
    assert _scripted([0.9, 0.0, 0.0], equal) == [
        SpeechStart(t_ms=32, onset_ms=0),
        SpeechPause(t_ms=96, speech_end_ms=32),
        SpeechEnd(t_ms=96, speech_end_ms=32),
    ]


def test_end_turn_ends_a_paused_turn_early_and_only_a_paused_one() -> None:
    stream = VadStream(_ScriptedModel([0.9] * 8 + [0.0] * 10 + [0.9] * 8), OPTIONS)
    assert stream.paused_ms == 0
    assert isinstance(stream.feed(np.zeros(8 * WINDOW, np.float32))[-1], SpeechStart)
    with pytest.raises(RuntimeError, match="needs a paused turn; the stream is in speech"):
        stream.end_turn()
    (pause,) = stream.feed(np.zeros(10 * WINDOW, np.float32))
    assert isinstance(pause, SpeechPause) and stream.paused_ms == 10 * 32
    assert stream.end_turn() == SpeechEnd(t_ms=18 * 32, speech_end_ms=8 * 32)
    assert not stream.in_speech and stream.paused_ms == 0 and stream.speech_ms == 0
    # What follows is a new turn with its own onset, not the resumption of the ended one.
    assert isinstance(stream.feed(np.zeros(8 * WINDOW, np.float32))[0], SpeechStart)


def _level(db: float, windows: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(windows * WINDOW) * 10 ** (db / 20)).astype(np.float32)


def test_a_low_score_well_over_the_noise_floor_is_speech_and_line_noise_never_is() -> None:
    """The second look for whispered and quiet voices: Silero's 0.02-0.3 counts where the window is 10 dB over
    the line's own floor (and stays speech at half of both); the same scores at the floor's level never do."""
    rng = np.random.default_rng(3)
    scores = [0.01] * 40 + [0.2, 0.05, 0.03, 0.08, 0.04, 0.06, 0.1, 0.05] + [0.01] * 20
    loud = np.concatenate([_level(-45, 40, rng), _level(-30, 8, rng), _level(-45, 20, rng)])
    events = VadStream(_ScriptedModel(scores), OPTIONS).feed(loud)
    assert events[0] == SpeechStart(t_ms=45 * 32, onset_ms=40 * 32) and isinstance(events[-1], SpeechEnd)
    assert VadStream(_ScriptedModel(scores), replace(OPTIONS, quiet_threshold=0)).feed(loud) == [], "off"
    flat = _level(-45, len(scores), rng)
    assert VadStream(_ScriptedModel([0.3] * len(scores)), OPTIONS).feed(flat) == [], "noise at its own level"
    silent = np.concatenate([np.zeros(40 * WINDOW, np.float32), _level(-60, 28, rng)])
    quiet_line = VadStream(_ScriptedModel([0.01] * 40 + [0.05] * 28), OPTIONS).feed(silent)
    assert quiet_line == [], "digital silence sets no floor: the line noise after it is no speech"


def test_options_from_settings_and_validation() -> None:
    voice = load_settings(env={"VOICEBOT_VOICE_VAD_END_MS": "600", "VOICEBOT_VOICE_VAD_THRESHOLD": "0.6"}).voice
    options = VadOptions.from_voice(voice)
    assert (options.end_ms, options.threshold, options.lower) == (600, 0.6, pytest.approx(0.45))
    with pytest.raises(ValueError, match="end_ms=100"):
        VadOptions(pause_ms=200, end_ms=100)
    with pytest.raises(ValueError, match=r"got 0\.7"):
        VadOptions(threshold=0.5, neg_threshold=0.7)


@pytest.mark.models  # loads models outside the shared fixtures
def test_a_wrong_model_file_is_named(settings, tmp_path) -> None:
    voice_dir = model_path(settings.models, "tts")
    with pytest.raises(ValueError, match=r"voice\.onnx is not the Silero VAD v6 model"):
        SileroVad(voice_dir / "voice.onnx")
    junk = tmp_path / "vad.onnx"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"vad\.onnx cannot be loaded"):
        SileroVad(junk)


def test_cost_per_window(vad, utterances) -> None:
    signal, _ = _scene(0.5, utterances[0], 0.5, utterances[1], 0.5)
    stream = vad.stream(OPTIONS)
    start = time.perf_counter()
    _feed(stream, signal, 320)
    ms = (time.perf_counter() - start) * 1000 / (signal.size // WINDOW)
    start = time.perf_counter()
    vad.stream(OPTIONS).feed(signal)
    batched = (time.perf_counter() - start) * 1000 / (signal.size // WINDOW)
    print(f"Silero VAD: {ms:.3f} ms per 32 ms window fed in 20 ms chunks, {batched:.3f} ms batched")
    assert ms < 3
