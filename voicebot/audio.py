"""Audio plumbing: G.711 mu-law, streaming resampling, sample-format conversion and WAV files.

Twilio carries 8 kHz mu-law, Whisper and the VAD want 16 kHz float, Piper speaks at its voice's rate
(22,050 Hz for the embedded one). Everything here is NumPy so it runs on Python 3.13+, where `audioop` is gone,
and the codec is checked bit-exact against `audioop` where that still exists.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- G.711 mu-law

_BIAS = 0x84
_CLIP = 8159  # in the 14-bit domain audioop works in


def _build_ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables for every int16 input and every mu-law byte, following the reference G.711 code audioop uses."""
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # audioop encodes the top 14 bits
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    ulaw = np.where(seg < 8, (seg << 4) | ((mag >> (seg + 1)) & 0xF), 0x7F) ^ mask
    encode = np.empty(65536, dtype=np.uint8)
    encode[np.arange(-32768, 32768).astype(np.uint16)] = ulaw  # index by the int16's bit pattern

    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    decode = np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)
    return encode, decode


_ULAW_ENCODE, _ULAW_DECODE = _build_ulaw_tables()


def ulaw_encode(pcm16: np.ndarray) -> bytes:
    """int16 samples to G.711 mu-law bytes (what Twilio plays)."""
    samples = np.asarray(pcm16)
    if samples.dtype != np.int16:
        raise TypeError(f"ulaw_encode needs int16 samples, got {samples.dtype}")
    return _ULAW_ENCODE[samples.view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes (what Twilio sends) to int16 samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


# ---------------------------------------------------------------- sample formats


def pcm16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 to float32 in [-1, 1), the scale Whisper and the VAD expect."""
    return np.asarray(x, dtype=np.float32) / np.float32(32768.0)


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] to int16, rounded and clipped (exact inverse of `pcm16_to_float`)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------- resampling


class Resampler:
    """Streaming polyphase resampler: a Kaiser-windowed sinc low-pass with its history kept across chunks.

    Chunked output equals one-shot output, so there is no crackle at chunk edges. The filter's delay is
    compensated: output sample n sits at input time n * src_rate / dst_rate. int16 in gives int16 out;
    anything else gives float32 out, in the input's scale.
    """

    # Cut-off at 0.95 of the lower Nyquist, 24 zero crossings a side, beta 7 (~70 dB stop band): for 8 kHz
    # output the pass band is flat to ~3.4 kHz and anything above ~4.15 kHz is gone.
    ROLLOFF = 0.95
    ZERO_CROSSINGS = 24
    KAISER_BETA = 7.0

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        self.src_rate, self.dst_rate = src_rate, dst_rate
        g = math.gcd(src_rate, dst_rate)
        self._up, self._down = dst_rate // g, src_rate // g
        up = self._up
        fc = self.ROLLOFF * 0.5 / max(self._up, self._down)  # cycles per sample at the up-sampled rate
        half = math.ceil(self.ZERO_CROSSINGS / (2 * fc))
        n = np.arange(-half, half + 1)
        h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(2 * half + 1, self.KAISER_BETA)
        self._taps = -(-(2 * half + 1) // up)  # taps per phase
        h = np.concatenate([h * (up / h.sum()), np.zeros(self._taps * up - h.size)])
        # phase p, tap k multiplies x[t - k]; stored reversed so it lines up with an ascending window of x
        self._phases = h.reshape(self._taps, up).T[:, ::-1].copy()
        self._delay = half  # in up-sampled samples
        self._int16 = False  # output type follows the last chunk's
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next chunk starts a new signal."""
        self._hist = np.zeros(self._taps - 1)  # x[-(taps-1)] .. x[-1]
        self._hist_start = -(self._taps - 1)  # absolute input index of _hist[0]
        self._n_in = 0
        self._n_out = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next chunk of a stream; returns every output sample whose input has arrived."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"Resampler takes mono 1-D chunks, got shape {chunk.shape}")
        self._int16 = chunk.dtype == np.int16
        if self._up == self._down:
            return chunk.copy() if self._int16 else chunk.astype(np.float32)
        self._hist = np.concatenate([self._hist, chunk.astype(np.float64)])
        self._n_in += chunk.size
        # output n needs input up to index (n * down + delay) // up
        return self._emit(max(0, (self._n_in * self._up - 1 - self._delay) // self._down + 1))

    def flush(self) -> np.ndarray:
        """End the stream: the output still held back by the filter's delay; then the resampler starts afresh."""
        total = -(-self._n_in * self._up // self._down)
        if self._up == self._down or total <= self._n_out:
            self.reset()
            return np.zeros(0, dtype=np.int16 if self._int16 else np.float32)
        last_t = ((total - 1) * self._down + self._delay) // self._up
        self._hist = np.concatenate([self._hist, np.zeros(max(0, last_t + 1 - self._n_in))])
        out = self._emit(total)
        self.reset()
        return out

    def _emit(self, until: int) -> np.ndarray:
        """Output samples _n_out .. until-1, computed in blocks to bound memory on long inputs."""
        if until <= self._n_out:
            return np.zeros(0, dtype=np.int16 if self._int16 else np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(self._hist, self._taps)
        parts = []
        for first in range(self._n_out, until, 4096):
            u = np.arange(first, min(first + 4096, until), dtype=np.int64) * self._down + self._delay
            rows = windows[u // self._up - (self._taps - 1) - self._hist_start]
            parts.append(np.einsum("nk,nk->n", self._phases[u % self._up], rows))
        y = np.concatenate(parts)
        self._n_out = until
        first_needed = (self._n_out * self._down + self._delay) // self._up - (self._taps - 1)
        drop = min(first_needed - self._hist_start, self._hist.size - (self._taps - 1))
        if drop > 0:
            self._hist = self._hist[drop:]
            self._hist_start += drop
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16) if self._int16 else y.astype(np.float32)


# ---------------------------------------------------------------- WAV files

_PCM, _ULAW, _EXTENSIBLE = 1, 7, 0xFFFE


class WavError(ValueError):
    """A WAV file is malformed or in a format voicebot does not read; the message names the file."""


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a WAV as (int16 mono samples, sample rate): 8/16-bit PCM or mu-law, channels averaged.

    Parses the RIFF chunks itself because the `wave` module refuses mu-law (format 7), which is how recorded
    Twilio calls are stored.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WavError(f"cannot read WAV file {path}: {exc}") from exc
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"{path} is not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(data) and payload is None:
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]  # a truncated last chunk (an unfinished recording) is read as is
        if cid == b"fmt ":
            if len(body) < 16:
                raise WavError(f"{path}: fmt chunk is {len(body)} bytes, expected at least 16")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise WavError(f"{path}: no {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise WavError(f"{path}: invalid header ({channels} channels, {rate} Hz)")
    if tag == _ULAW and bits == 8:
        samples = ulaw_decode(payload)
    elif tag == _PCM and bits == 16:
        samples = np.frombuffer(payload[: len(payload) // 2 * 2], dtype="<i2").astype(np.int16)
    elif tag == _PCM and bits == 8:
        samples = ((np.frombuffer(payload, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    else:
        raise WavError(
            f"{path}: unsupported WAV encoding (format tag {tag}, {bits} bits); "
            "voicebot reads 8/16-bit PCM and 8-bit mu-law"
        )
    samples = samples[: samples.size // channels * channels]
    if channels > 1:
        samples = np.rint(samples.reshape(-1, channels).mean(axis=1)).astype(np.int16)
    return samples, rate


def _write_wav(path: Path | str, tag: int, rate: int, bits: int, payload: bytes, frames: int) -> None:
    width = bits // 8
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * width, width, bits)
    chunks = [b"fmt ", struct.pack("<I", len(fmt)), fmt]
    if tag != _PCM:  # non-PCM formats carry cbSize and a fact chunk with the frame count
        chunks[1:] = [struct.pack("<I", len(fmt) + 2), fmt, b"\0\0", b"fact", struct.pack("<II", 4, frames)]
    chunks += [b"data", struct.pack("<I", len(payload)), payload, b"\0" * (len(payload) & 1)]
    body = b"WAVE" + b"".join(chunks)
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def write_wav_ulaw(path: Path | str, pcm16_8k: np.ndarray) -> None:
    """Write 8 kHz int16 samples as a mono mu-law WAV, the way a Twilio call recording is stored."""
    payload = ulaw_encode(np.asarray(pcm16_8k))
    _write_wav(path, _ULAW, 8000, 8, payload, len(payload))


def write_wav_pcm16(path: Path | str, samples: np.ndarray, rate: int) -> None:
    """Write mono samples as a 16-bit PCM WAV; float input is taken as [-1, 1]."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"write_wav_pcm16 writes mono; got shape {samples.shape} for {path}")
    pcm = samples if samples.dtype == np.int16 else float_to_pcm16(samples)
    _write_wav(path, _PCM, rate, 16, pcm.astype("<i2").tobytes(), pcm.size)
