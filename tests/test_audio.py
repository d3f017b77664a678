"""G.711 bit-exactness against audioop, streaming resampling, WAV reading and writing."""

from __future__ import annotations

import math
import struct
import time
import warnings
import wave

import numpy as np
import pytest

from voicebot.audio import (
    Resampler,
    WavError,
    float_to_pcm16,
    pcm16_to_float,
    read_wav,
    ulaw_decode,
    ulaw_encode,
    write_wav_pcm16,
    write_wav_ulaw,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # gone in Python 3.13; the reference while it exists

RATES = [(8000, 16000), (22050, 8000), (16000, 8000), (44100, 8000), (11025, 8000), (48000, 16000)]


def test_ulaw_encode_is_bit_exact_for_every_int16() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)


def test_ulaw_decode_is_bit_exact_for_every_byte() -> None:
    data = bytes(range(256))
    decoded = ulaw_decode(data)
    assert decoded.dtype == np.int16
    assert decoded.tobytes() == audioop.ulaw2lin(data, 2)
    assert ulaw_encode(decoded) == audioop.lin2ulaw(decoded.tobytes(), 2)


def test_ulaw_encode_rejects_other_sample_types() -> None:
    with pytest.raises(TypeError, match="float64"):
        ulaw_encode(np.zeros(4))


def test_pcm16_float_round_trip_and_clipping() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    as_float = pcm16_to_float(pcm)
    assert as_float.dtype == np.float32 and as_float.min() == -1.0 and as_float.max() < 1.0
    assert np.array_equal(float_to_pcm16(as_float), pcm)
    assert float_to_pcm16(np.array([-2.0, 2.0])).tolist() == [-32768, 32767]


def _chunked(resampler: Resampler, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    parts, i = [], 0
    while i < signal.size:
        n = int(rng.integers(0, 700))  # zero-length chunks included
        parts.append(resampler.process(signal[i : i + n]))
        i += n
    parts.append(resampler.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize(("src", "dst"), RATES)
def test_resampler_chunked_equals_one_shot(src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    signal = (rng.standard_normal(src * 2) * 0.3).astype(np.float32)
    whole = Resampler(src, dst)
    one_shot = np.concatenate([whole.process(signal), whole.flush()])
    chunked = _chunked(Resampler(src, dst), signal, rng)
    assert one_shot.size == chunked.size == math.ceil(signal.size * dst / src)
    np.testing.assert_allclose(chunked, one_shot, atol=1e-6)


@pytest.mark.parametrize(("src", "dst"), RATES)
@pytest.mark.parametrize("freq", [440.0, 3000.0])
def test_resampler_keeps_a_sines_frequency_amplitude_and_timing(src: int, dst: int, freq: float) -> None:
    t = np.arange(src) / src
    out = _chunked(Resampler(src, dst), 0.5 * np.sin(2 * np.pi * freq * t), np.random.default_rng(1))
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(out.size) / dst)
    middle = slice(dst // 20, -dst // 20)  # away from the signal's own start and end
    assert np.abs(out[middle] - expected[middle]).max() < 0.5 * 1e-3  # same amplitude and phase: delay is compensated
    spectrum = np.abs(np.fft.rfft(out[middle] * np.hanning(out[middle].size)))
    assert abs(np.argmax(spectrum) * dst / out[middle].size - freq) < 2.0


@pytest.mark.parametrize(("src", "dst", "freq"), [(16000, 8000, 5000.0), (22050, 8000, 6000.0), (48000, 16000, 9000.0)])
def test_resampler_removes_tones_above_the_new_nyquist(src: int, dst: int, freq: float) -> None:
    tone = np.sin(2 * np.pi * freq * np.arange(src) / src)
    out = Resampler(src, dst).process(tone)
    level = np.sqrt(np.mean(out[dst // 10 :] ** 2)) / np.sqrt(0.5)
    assert 20 * np.log10(level) < -60


def test_upsampling_leaves_no_image_above_the_old_nyquist() -> None:
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(8000) / 8000)
    out = Resampler(8000, 16000).process(tone)[1600:]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size))) ** 2
    freqs = np.fft.rfftfreq(out.size, 1 / 16000)
    assert 10 * np.log10(spectrum[freqs > 4200].sum() / spectrum.sum()) < -60


def test_resampler_types_and_restart() -> None:
    pcm = (np.sin(np.arange(800) / 5) * 20000).astype(np.int16)
    r = Resampler(8000, 16000)
    first = np.concatenate([r.process(pcm), r.flush()])
    assert first.dtype == np.int16 and first.size == 1600
    again = np.concatenate([r.process(pcm), r.flush()])  # flush starts a new stream
    assert np.array_equal(first, again)
    same = Resampler(8000, 8000)
    assert np.array_equal(same.process(pcm), pcm) and same.flush().size == 0
    with pytest.raises(ValueError, match="-8000"):
        Resampler(-8000, 16000)


def test_resampler_cost_per_20ms_frame() -> None:
    rng = np.random.default_rng(0)
    for src, dst in [(8000, 16000), (22050, 8000)]:
        r = Resampler(src, dst)
        frame = (rng.standard_normal(src // 50) * 3000).astype(np.int16)
        start = time.perf_counter()
        for _ in range(200):
            r.process(frame)
        ms = (time.perf_counter() - start) / 200 * 1000
        print(f"Resampler {src} -> {dst}: {ms:.3f} ms per 20 ms frame")
        assert ms < 5


def test_ulaw_wav_round_trip(tmp_path) -> None:
    pcm = (np.sin(np.arange(8000) / 7) * 12000).astype(np.int16)
    path = tmp_path / "call.wav"
    write_wav_ulaw(path, pcm)
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and struct.unpack_from("<HHI", raw, 20) == (7, 1, 8000) and b"fact" in raw
    samples, rate = read_wav(path)
    assert rate == 8000 and np.array_equal(samples, ulaw_decode(ulaw_encode(pcm)))


def test_pcm16_wav_is_readable_by_the_wave_module(tmp_path) -> None:
    pcm = np.arange(-1000, 1001, dtype=np.int16)
    path = tmp_path / "voice.wav"
    write_wav_pcm16(path, pcm, 22050)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm)
    assert np.array_equal(read_wav(path)[0], pcm)
    write_wav_pcm16(path, np.array([0.5, -0.5]), 8000)
    assert read_wav(path)[0].tolist() == [16384, -16384]


def _wave_file(path, channels: int, width: int, frames: bytes, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)


def test_read_wav_downmixes_stereo_and_reads_8_bit(tmp_path) -> None:
    stereo = tmp_path / "stereo.wav"
    _wave_file(stereo, 2, 2, np.array([100, 300, -100, -300], dtype="<i2").tobytes(), rate=44100)
    assert read_wav(stereo)[0].tolist() == [200, -200] and read_wav(stereo)[1] == 44100
    eight = tmp_path / "eight.wav"
    _wave_file(eight, 1, 1, bytes([0, 128, 255]))
    assert read_wav(eight)[0].tolist() == [-32768, 0, 32512]


def test_read_wav_errors_name_the_file(tmp_path) -> None:
    wide = tmp_path / "wide.wav"
    _wave_file(wide, 1, 3, b"\0" * 30)
    with pytest.raises(WavError, match=r"wide\.wav.*24 bits"):
        read_wav(wide)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav at all")
    with pytest.raises(WavError, match=r"junk\.wav"):
        read_wav(junk)
    with pytest.raises(WavError, match=r"missing\.wav"):
        read_wav(tmp_path / "missing.wav")
