"""Generate the sample phone calls in this folder: caller audio as Twilio delivers it, plus expected outcomes.

Each call is a timeline of caller speech, synthesized with Debian's espeak-ng and flite voices (never the bot's
Piper voice, so recognition is tested on speech the bot did not produce), made to sound like a phone line:
band-limited to 300-3400 Hz, resampled to 8 kHz, with low pink line noise all through the call, and stored as an
8 kHz mono G.711 mu-law WAV (format tag 7), the caller's inbound track exactly as Twilio streams it. Next to each
`<name>.wav` a `<name>.json` sidecar gives the script (where each utterance really starts and ends, DTMF digits)
and what the bot must do with the call (see README.md).

    apt-get install -y espeak-ng flite
    .venv/bin/python samples/calls/generate.py            # write every call
    .venv/bin/python samples/calls/generate.py --check    # also transcribe every utterance with Whisper

The output is deterministic: the synthesizers are, and every random source has a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import signal

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KB_PATH = REPO / "samples" / "kb.json"
RATE = 8000

NOISE_DBFS = -45.0  # line noise, all through every call
SPEECH_DBFS = -20.0  # active speech level of a typical caller (varied per voice)
TRIM_DB = 35.0  # a 10 ms frame this far below the clip's loudest frame counts as silence when trimming

# Timing model of the bot (see the brief in README.md): the greeting lasts about 3.5 s, so callers start at 4.5 s;
# the bot starts answering up to ~2 s after the caller stops (500 ms endpoint + processing); Piper speaks about
# 14 characters a second. The next utterance waits until the answer is over plus a margin.
CALLER_START_MS = 4500
ANSWER_START_MS = 2000
CHARS_PER_S = 14.0
MIN_GAP_MS = 10000
REPLY_GAP_MS = 14000  # after a turn whose reply is not a fixed KB answer (ticket, LLM, hand-off)


# ---------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng" or "flite"
    name: str
    speed: int = 0  # espeak-ng words per minute
    pitch: int = 50  # espeak-ng 0-99
    stretch: float = 1.0  # flite duration_stretch (> 1 is slower)
    level_dbfs: float = SPEECH_DBFS

    def describe(self) -> str:
        if self.engine == "espeak-ng":
            return f"espeak-ng {self.name} speed {self.speed} pitch {self.pitch}"
        return f"flite {self.name}" + (f" duration_stretch {self.stretch:g}" if self.stretch != 1.0 else "")

    def command(self, text: str, out: Path) -> list[str]:
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.name, "-s", str(self.speed), "-p", str(self.pitch), "-w", str(out), text]
        return ["flite", "-voice", self.name, "--setf", f"duration_stretch={self.stretch}", "-t", text, "-o", str(out)]


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Run the synthesizer; float64 samples in [-1, 1] and their rate."""
    if shutil.which(voice.engine) is None:
        sys.exit(f"generate.py: {voice.engine} is not installed (apt-get install -y espeak-ng flite)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.wav"
        subprocess.run(voice.command(text, out), check=True, capture_output=True)
        with wave.open(str(out), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                sys.exit(f"generate.py: {voice.engine} wrote an unexpected WAV ({w.getparams()})")
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0, rate


# ---------------------------------------------------------------- telephone line

_BAND = signal.butter(4, [300, 3400], btype="bandpass", fs=RATE, output="sos")


def to_phone(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample to 8 kHz and band-limit to 300-3400 Hz (zero phase, so the timing stays put)."""
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = signal.resample_poly(x, RATE // g, rate // g)
    return signal.sosfiltfilt(_BAND, x)


def frame_rms(x: np.ndarray, frame: int = RATE // 100) -> np.ndarray:
    n = x.size // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)


def trim(x: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence, to the 10 ms frame."""
    rms = frame_rms(x)
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-TRIM_DB / 20))
    frame = RATE // 100
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def active_level(x: np.ndarray) -> float:
    """RMS over the frames that hold speech (within 25 dB of the loudest), like an active speech level meter."""
    rms = frame_rms(x)
    return float(np.sqrt(np.mean(rms[rms > rms.max() * 10 ** (-25 / 20)] ** 2)))


def longest_pause_ms(x: np.ndarray) -> int:
    """Longest run of silent frames inside a trimmed clip (a pause the bot's endpointer could take as the end)."""
    rms = frame_rms(x)
    quiet = rms <= rms.max() * 10 ** (-TRIM_DB / 20)
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best * 10


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f) noise, band-limited like the line, scaled to NOISE_DBFS RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    noise = signal.sosfilt(_BAND, np.fft.irfft(spectrum, n))
    return noise * (10 ** (NOISE_DBFS / 20) / np.sqrt(np.mean(noise**2)))


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode())


# ---------------------------------------------------------------- mu-law WAV

try:  # the project's NumPy codec (bit-exact to audioop) and WAV writer
    from voicebot.audio import write_wav_ulaw as _write_wav_ulaw
except ImportError:  # pragma: no cover - only when the generator runs without the project installed
    _write_wav_ulaw = None


def write_ulaw_wav(path: Path, pcm16: np.ndarray) -> None:
    """8 kHz mono G.711 mu-law WAV: RIFF/WAVE, fmt (tag 7, cbSize 0), fact, data."""
    if _write_wav_ulaw is not None:
        _write_wav_ulaw(path, pcm16)
        return
    import audioop  # Python < 3.13 only; the project's codec is used when it can be imported

    payload = audioop.lin2ulaw(pcm16.astype("<i2").tobytes(), 2)
    fmt = struct.pack("<HHIIHHH", 7, 1, RATE, RATE, 1, 8, 0)
    size = struct.pack("<I", len(payload))
    chunks = [b"WAVE", b"fmt ", struct.pack("<I", len(fmt)), fmt, b"fact", struct.pack("<I", 4), size, b"data", size]
    body = b"".join([*chunks, payload, b"\0" * (len(payload) & 1)])
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def read_ulaw_wav(path: Path) -> tuple[dict[str, int], np.ndarray]:
    """Parse the header and decode the samples (for --check); raises if the file is not what Twilio sends."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"{path}: not RIFF/WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8, f"{path}: RIFF size wrong"
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunks[cid] = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", chunks[b"fmt "])
    header = {"tag": tag, "channels": channels, "rate": rate, "byte_rate": byte_rate, "align": align, "bits": bits}
    assert (tag, channels, rate, byte_rate, align, bits) == (7, 1, RATE, RATE, 1, 8), f"{path}: header {header}"
    assert b"fact" in chunks and struct.unpack("<I", chunks[b"fact"])[0] == len(chunks[b"data"]), f"{path}: fact"
    u = ~np.frombuffer(chunks[b"data"], dtype=np.uint8).astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return header, np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


# ---------------------------------------------------------------- calls


@dataclass(frozen=True)
class Say:
    text: str
    at_ms: int | None = None  # absolute start; None: `after_ms` after the previous event ends
    after_ms: int = MIN_GAP_MS
    voice: Voice | None = None  # defaults to the call's voice
    max_ms: int | None = None  # the trimmed clip may be no longer (a backchannel)
    continues: bool = False  # goes on with the utterance before: one turn with it, not a turn of its own
    backchannel: bool = False  # a listener's noise over the bot ("mm-hm"): no turn, no interruption
    exact: bool = True  # Whisper must get every word (not so for a backchannel or a mumbled line)


@dataclass(frozen=True)
class Dtmf:
    digit: str
    after_ms: int = MIN_GAP_MS


@dataclass
class Call:
    name: str
    description: str
    voice: Voice | None
    script: list[Say | Dtmf]
    expect: dict[str, object]
    tail_ms: int = 10000  # after the last event, for the bot's last reply
    duration_ms: int | None = None  # fixed length (the noise-only call)
    extras: list[str] = field(default_factory=list)  # "clicks", "hum"


def load_kb() -> dict[str, str]:
    from voicebot.kb import load_kb as read_entries

    return {entry.id: entry.answer for entry in read_entries(KB_PATH)}


def answer_gap_ms(kb: dict[str, str], faq_id: str) -> int:
    """Silence to leave after a question answered from the KB: the answer's start, its length, a margin."""
    speech_ms = len(kb[faq_id]) / CHARS_PER_S * 1000
    return max(MIN_GAP_MS, round((ANSWER_START_MS + speech_ms + 2000) / 500) * 500)


def expect(turns: list[dict[str, object]], **overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "turns": turns,
        "tickets": 0,
        "handoff": None,
        "hangup": False,
        "greeting_interrupted": False,
        "interrupted_turns": [],
        "no_turns": False,
    }
    result.update(overrides)
    return result


def faq(faq_id: str) -> dict[str, object]:
    return {"route": "faq", "faq_id": faq_id}


def define_calls(kb: dict[str, str]) -> list[Call]:
    longest = max(kb, key=lambda k: len(kb[k]))
    m3 = Voice("espeak-ng", "en-us+m3", speed=150, pitch=45)
    f2 = Voice("espeak-ng", "en-us+f2", speed=155, pitch=60, level_dbfs=-22)
    m7 = Voice("espeak-ng", "en+m7", speed=140, pitch=40, level_dbfs=-18)
    f4 = Voice("espeak-ng", "en-us+f4", speed=140, pitch=55, level_dbfs=-23)
    slt = Voice("flite", "slt", level_dbfs=-21)
    rms = Voice("flite", "rms", level_dbfs=-19)
    awb = Voice("flite", "awb", level_dbfs=-20)
    f5 = Voice("espeak-ng", "en-us+f5", speed=150, pitch=60, level_dbfs=-21)
    m3_quick = Voice("espeak-ng", "en-us+m3", speed=185, pitch=45)  # backchannels come quicker than questions
    backchannel_question = {
        "international_shipping": "hi, do you ship internationally?",
    }.get(longest)
    if backchannel_question is None:
        sys.exit(f"generate.py: the longest KB answer is now {longest!r}; write a caller question for it here")

    return [
        Call(
            "faq_returns",
            "A knowledge-base question in a caller's words, close enough to the KB's questions for retrieval "
            "to clear the KB's calibrated answer threshold: the bot reads the returns answer straight from the KB.",
            m3,
            [Say("I'd like to return an item, how do I do that?", at_ms=CALLER_START_MS)],
            expect([faq("returns")]),
            tail_ms=answer_gap_ms(kb, "returns"),
        ),
        Call(
            "complaint_ticket",
            "A complaint about a double charge: the bot must open exactly one ticket and read its id out.",
            slt,
            [Say("I want to make a complaint, I got charged two times for my order.", at_ms=CALLER_START_MS)],
            expect([{"route": "ticket"}], tickets=1),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "human_request",
            "The caller asks for a person: the bot hands the call off with reason 'requested'.",
            f2,
            [Say("can I talk to a real person, please?", at_ms=CALLER_START_MS)],
            expect([{"route": "handoff"}], handoff="requested"),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "barge_in_greeting",
            "The caller starts talking at 1.2 s, over the bot's greeting, with a real question lasting well over "
            "the barge-in gate: the greeting is cut (clear sent) and the question is answered from the KB.",
            rms,
            [Say("sorry, I need to change the delivery address on my order.", at_ms=1200)],
            expect([faq("change_address")], greeting_interrupted=True),
            tail_ms=answer_gap_ms(kb, "change_address"),
        ),
        Call(
            "backchannel",
            f"The caller asks a question with the KB's longest answer ({longest}), then hums a short 'mm' (about "
            "250 ms) 4 s after the question ends, about 2 s into the bot's answer: a backchannel, which must "
            "neither interrupt the answer nor become a turn.",
            m7,
            [
                Say(backchannel_question, at_ms=CALLER_START_MS),
                Say(
                    "mm",
                    after_ms=ANSWER_START_MS + 2000,
                    voice=Voice("espeak-ng", "en+m7", speed=260, pitch=40, level_dbfs=-20),
                    max_ms=300,
                    backchannel=True,
                    exact=False,
                ),
            ],
            expect([faq(longest)]),
            tail_ms=answer_gap_ms(kb, longest),
        ),
        Call(
            "barge_in_answer",
            "The caller asks about store pickup (a two-sentence KB answer) and talks over the answer's second "
            "sentence with a new question: the answer is cut (clear sent) and recorded as only its first "
            "sentence, and the new question is answered from the KB.",
            slt,
            [
                Say("can I pick up my order in the store?", at_ms=CALLER_START_MS),
                Say("wait, how do I reset my password?", after_ms=ANSWER_START_MS + 3000),
            ],
            expect([faq("store_pickup"), faq("password_reset")], interrupted_turns=[0]),
            tail_ms=answer_gap_ms(kb, "password_reset"),
        ),
        Call(
            "dtmf_zero",
            "The caller asks a short KB question, then presses 0 after the answer (the digit is in this sidecar, "
            "not in the audio): the bot hands off with reason 'dtmf'.",
            awb,
            [
                Say("hi, do you sell gift cards?", at_ms=CALLER_START_MS),
                Dtmf("0", after_ms=answer_gap_ms(kb, "gift_cards")),
            ],
            expect([faq("gift_cards"), {"route": "dtmf"}], handoff="dtmf"),
            tail_ms=8000,
        ),
        Call(
            "silence_noise",
            "15 s of line noise with a low mains hum and two clicks, and no speech: the bot greets, then no turn "
            "may be invented (no Whisper hallucination, no reply).",
            None,
            [],
            expect([], no_turns=True),
            duration_ms=15000,
            extras=["hum", "clicks"],
        ),
        Call(
            "multi_turn",
            "Three turns in one call: an invoice question, a delivery-time question, then a goodbye; the bot "
            "answers both from the KB and ends the call after its farewell.",
            f5,
            [
                Say("hello, how can I get an invoice for my order?", at_ms=CALLER_START_MS),
                Say("and how long does delivery usually take?", after_ms=answer_gap_ms(kb, "invoice")),
                Say("okay, thank you very much, goodbye!", after_ms=answer_gap_ms(kb, "delivery_time")),
            ],
            expect([faq("invoice"), faq("delivery_time"), {"route": "hangup"}], hangup=True),
            tail_ms=7000,
        ),
        Call(
            "out_of_scope",
            "A question the knowledge base does not cover: it must not be answered from the KB (route llm or "
            "fallback), and no ticket or hand-off is made.",
            f4,
            [Say("can you order me a taxi to the airport?", at_ms=CALLER_START_MS)],
            expect([{"route_in": ["llm", "fallback"]}]),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "two_sentences",
            "Two sentences in one breath, with a 520 ms pause between them (longer than the 450 ms end of a "
            "finished sentence): the bot may start on the first, but the second continues the same turn, so "
            "the whole is answered once. One turn, no ticket, no hand-off.",
            rms,
            [
                Say("the shoes I ordered last week are too small.", at_ms=CALLER_START_MS),
                Say("can I exchange them for a different size?", after_ms=520, continues=True),
            ],
            expect([faq("exchange_size")]),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "pause_mid_sentence",
            "A complaint with a 480 ms breath before its last words ('... my last order [pause] and I want my "
            "money back'): one turn and exactly one ticket, never one for the first half.",
            slt,
            [
                Say("you charged me twice for my last order", at_ms=CALLER_START_MS),
                Say("and I want my money back.", after_ms=480, continues=True),
            ],
            expect([{"route": "ticket"}], tickets=1),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "continuation",
            "The caller adds to a question 1.1 s after finishing it, just as the bot starts its answer ('do you "
            "ship internationally? ... to Canada, I mean'): the answer is withdrawn and the whole question "
            "answered once.",
            slt,
            [
                Say("do you ship internationally?", at_ms=CALLER_START_MS),
                Say("to Canada, I mean.", after_ms=1100, continues=True),
            ],
            expect([{"route_in": ["faq", "llm"]}]),
            tail_ms=answer_gap_ms(kb, "international_shipping"),
        ),
        Call(
            "backchannels",
            f"The caller asks a question with the KB's longest answer ({longest}) and, while the bot answers, "
            "says 'mm-hm', 'uh-huh, yeah' and 'right, right, okay' (0.3-1.5 s each): the bot holds its audio "
            "while each sounds and goes on where it paused. One turn, never interrupted, no clear.",
            m3,
            [
                Say(backchannel_question, at_ms=CALLER_START_MS),
                *(
                    Say(text, after_ms=after, voice=m3_quick, backchannel=True, exact=False, max_ms=1500)
                    for text, after in (
                        ("mm-hm", ANSWER_START_MS + 1500),
                        ("uh-huh, yeah", 1500),
                        ("right, right, okay", 1500),
                    )
                ),
            ],
            expect([faq(longest)]),
            tail_ms=answer_gap_ms(kb, longest),
        ),
        Call(
            "mumbled",
            "A line mumbled past recognition: whatever Whisper makes of it, it must not open a ticket, transfer "
            "or hang up; the bot asks again (or at most says what it cannot answer).",
            Voice("espeak-ng", "en-us+m3", speed=260, pitch=30, level_dbfs=-26),
            [Say("mrm the thm wmbl nrr my mm grnf wth th", at_ms=CALLER_START_MS, exact=False)],
            expect([{"route_in": ["repeat", "llm", "fallback"]}]),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "quiet_voice",
            "A quiet, robotic voice (flite kal16 at -30 dBFS, 10 dB under a typical caller) asks a KB question: "
            "it must be heard, never met with silence. Whisper reads it right at most frame alignments (the KB "
            "answer) and mishears it at some ('powder every said my password'): then it asks again.",
            Voice("flite", "kal16", level_dbfs=-30),
            [Say("how do I reset my password?", at_ms=CALLER_START_MS)],
            expect([{"route_in": ["faq", "repeat"]}]),
            tail_ms=answer_gap_ms(kb, "password_reset"),
        ),
        Call(
            "whispered",
            "A whispered question (espeak-ng's whisper voice at -30 dBFS), which Silero alone scores under 0.5 in "
            "almost every window: the VAD's second look at windows well over the line's noise floor hears it, so "
            "the caller gets an answer or is asked again, never silence.",
            Voice("espeak-ng", "en+whisperf", speed=150, pitch=50, level_dbfs=-30),
            [Say("how long does delivery take?", at_ms=CALLER_START_MS, exact=False)],
            expect([{"route_in": ["faq", "llm", "fallback", "repeat"]}]),
            tail_ms=REPLY_GAP_MS,
        ),
        Call(
            "llm_grounded",
            "A question the KB covers only in part, in the caller's own words. With the KB's calibrated thresholds "
            "it may reach the read-as-written band (route faq); at stricter ones the LLM answers from the closest "
            "entries (route llm), which measures the LLM answer's latency.",
            slt,
            [Say("what happens if my parcel gets lost in the post?", at_ms=CALLER_START_MS)],
            expect([{"route_in": ["llm", "faq"]}]),
            tail_ms=REPLY_GAP_MS,
        ),
    ]


# ---------------------------------------------------------------- rendering


def describe_voices(call: Call) -> str:
    if call.voice is None:
        return "none: line noise, hum and clicks only"
    others = [f"{e.text!r}: {e.voice.describe()}" for e in call.script if isinstance(e, Say) and e.voice]
    return "; ".join([call.voice.describe(), *others])


def render(call: Call) -> tuple[np.ndarray, dict[str, object]]:
    """The call's 8 kHz int16 audio and its sidecar."""
    placed: list[tuple[int, np.ndarray]] = []
    script: list[dict[str, object]] = []
    cursor = 0  # where the previous event ended, ms
    for event in call.script:
        if isinstance(event, Dtmf):
            cursor += event.after_ms
            script.append({"at_ms": cursor, "dtmf": event.digit})
            continue
        voice = event.voice or call.voice
        assert voice is not None
        x, rate = synthesize(voice, event.text)
        clip = trim(to_phone(x, rate))
        clip *= 10 ** (voice.level_dbfs / 20) / active_level(clip)
        if event.max_ms is not None and clip.size * 1000 // RATE > event.max_ms:
            sys.exit(f"generate.py: {call.name}: {event.text!r} lasts {clip.size // 8} ms, over {event.max_ms} ms")
        pause = longest_pause_ms(clip)
        if pause >= 400:
            sys.exit(f"generate.py: {call.name}: a {pause} ms pause inside {event.text!r} would end the turn early")
        at = event.at_ms if event.at_ms is not None else cursor + event.after_ms
        end = at + round(clip.size * 1000 / RATE)
        placed.append((at, clip))
        flags = {name: True for name in ("continues", "backchannel") if getattr(event, name)}
        script.append({"at_ms": at, "end_ms": end, "say": event.text, **flags})
        cursor = end
    duration_ms = call.duration_ms or cursor + call.tail_ms
    n = duration_ms * RATE // 1000

    rng = np.random.default_rng(seed_for(call.name))
    audio = pink_noise(n, rng)
    t = np.arange(n) / RATE
    if "hum" in call.extras:  # mains hum as it leaks into a line: 60 Hz harmonics, what the band lets through
        hum = sum(np.sin(2 * np.pi * 60 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (5, 7, 9))
        audio += 10 ** (-52 / 20) * hum / np.sqrt(np.mean(hum**2))
    if "clicks" in call.extras:  # two short line clicks: 3 ms decaying bursts
        burst = np.exp(-np.arange(24) / 5.0) * rng.standard_normal(24)
        for at_s in (5.3, 11.7):
            i = int(at_s * RATE)
            audio[i : i + burst.size] += 0.05 * burst / np.abs(burst).max()
    for at, clip in placed:
        i = at * RATE // 1000
        audio[i : i + clip.size] += clip
    peak = np.abs(audio).max()
    if peak >= 0.99:
        sys.exit(f"generate.py: {call.name} would clip (peak {peak:.2f})")
    pcm16 = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)

    sidecar = {
        "description": call.description,
        "voice": describe_voices(call),
        "duration_ms": duration_ms,
        "script": script,
        "expect": call.expect,
    }
    return pcm16, sidecar


def vad_segments(vad_stream, audio_16k: np.ndarray) -> list[tuple[int, int, int]]:
    """(onset_ms, end_ms, speech_ms) of every utterance the bot's VAD finds, fed 20 ms at a time as on a call."""
    from voicebot.vad import SpeechEnd, SpeechStart

    segments: list[tuple[int, int, int]] = []
    onset, speech_ms = None, 0
    for i in range(0, audio_16k.size, 320):
        for event in vad_stream.feed(audio_16k[i : i + 320]):
            if isinstance(event, SpeechStart):
                onset = event.onset_ms
            elif isinstance(event, SpeechEnd) and onset is not None:
                segments.append((onset, event.speech_end_ms, speech_ms))
                onset = None
        speech_ms = max(speech_ms, vad_stream.speech_ms) if vad_stream.in_speech else vad_stream.speech_ms
    if onset is not None:
        segments.append((onset, audio_16k.size // 16, speech_ms))
    return segments


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def word_errors(said: str, heard: str) -> int:
    """Word-level edit distance."""
    a, b = words(said), words(heard)
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


class Retriever:
    """The bot's own FAQ index of the sample KB, with the thresholds calibrated for it."""

    def __init__(self, settings) -> None:
        from voicebot.calibration import load_calibrated_index
        from voicebot.embedder import load_embedder

        self.embedder = load_embedder(settings.models)
        self.index = load_calibrated_index(settings, KB_PATH, self.embedder)

    def top(self, text: str) -> tuple[str, float]:
        best = self.index.rank(self.embedder.encode([text]), 1)[0][0]
        return best.entry.id, best.score


def check(calls: list[Call], sidecars: dict[str, dict[str, object]]) -> int:
    """Check the calls as the bot will hear them; returns the number of problems found.

    Each WAV's header and length; the bot's VAD over the whole call (each utterance one segment that starts and
    ends where the sidecar says, a backchannel under the 300 ms barge-in gate, nothing heard elsewhere); the
    project's Whisper model on every utterance (every word right); and the FAQ retrieval score of each
    transcript (a turn expected to route `faq` must reach the KB's calibrated answer threshold with a margin,
    an out-of-scope one must not).
    """
    from voicebot.config import load_settings
    from voicebot.stt import load_transcriber
    from voicebot.vad import VadOptions, load_vad

    settings = load_settings()
    transcriber = load_transcriber(settings.models, settings.voice)
    vad = load_vad(settings.models)
    retriever = Retriever(settings)
    faq_threshold = retriever.index.thresholds.faq
    problems = 0

    def problem(message: str) -> None:
        nonlocal problems
        problems += 1
        print(f"  PROBLEM: {message}")

    for call in calls:
        path = HERE / f"{call.name}.wav"
        sidecar = sidecars[call.name]
        _header, pcm = read_ulaw_wav(path)
        assert pcm.size == int(sidecar["duration_ms"]) * RATE // 1000, f"{path}: length"
        print(f"{call.name}: {pcm.size / RATE:.1f} s, {path.stat().st_size} bytes, {sidecar['voice']}")
        x16 = signal.resample_poly(pcm.astype(np.float32) / 32768.0, 2, 1).astype(np.float32)
        segments = vad_segments(vad.stream(VadOptions.from_voice(settings.voice)), x16)
        print("  VAD:", ", ".join(f"{a}-{b} ms ({n} ms speech)" for a, b, n in segments) or "no speech")
        turns = list(sidecar["expect"]["turns"])  # type: ignore[index]
        used: set[int] = set()
        script = list(sidecar["script"])  # type: ignore[arg-type]
        says = call.script  # the same events in the same order
        said_so_far = ""  # the turn's words, continuations included
        for number, event in enumerate(script):
            if "dtmf" in event:
                turn = turns.pop(0) if turns else {}
                print(f"  {event['at_ms']:>6}        DTMF {event['dtmf']}  -> expect {turn}")
                if turn.get("route") != "dtmf":
                    problem(f"DTMF at {event['at_ms']} ms does not match the expected turn {turn}")
                continue
            at, end, text = event["at_ms"], event["end_ms"], event["say"]
            backchannel = bool(event.get("backchannel"))
            hits = [k for k, (a, b, _n) in enumerate(segments) if a < end + 100 and b > at - 100]
            used.update(hits)
            if len(hits) != 1:
                problem(f"{text!r} is {len(hits)} VAD segments, not 1")
            elif not backchannel and (segments[hits[0]][0] > at + 300 or segments[hits[0]][1] < end - 300):
                problem(f"the VAD hears only {segments[hits[0]][:2]} of {text!r} at {at}-{end} ms")
            heard = transcriber.transcribe(x16[max(0, (at - 200) * 16) : (end + 300) * 16])
            errors = word_errors(text, heard.text)
            verdict = f"  [rejected: {heard.rejected}]" if heard.rejected else ""
            print(f"  {at:>6}-{end:<6} said:  {text!r}\n{'':16}heard: {heard.text!r}  ({errors} word errors){verdict}")
            if backchannel:
                continue
            if errors and says[number].exact:
                problem("Whisper did not get every word")
            said_so_far = f"{said_so_far} {heard.text}" if event.get("continues") else heard.text
            if number + 1 < len(script) and script[number + 1].get("continues"):
                continue  # the turn goes on: judge it whole
            turn = turns.pop(0) if turns else {}
            top_id, score = retriever.top(said_so_far)
            print(f"{'':16}KB top-1: {top_id} {score:.3f}  -> expect {turn}")
            if turn.get("route") == "faq" and (top_id != turn["faq_id"] or score < faq_threshold + 0.03):
                problem(f"expected a straight KB answer {turn['faq_id']} (score >= {faq_threshold + 0.03:.2f})")
            if "route_in" in turn and "faq" not in turn["route_in"] and score >= faq_threshold - 0.05:
                problem(f"an out-of-scope question scores {score:.3f}, near the straight-answer threshold")
        if turns:
            problem(f"expected turns without a script event: {turns}")
        for k, (a, b, _n) in enumerate(segments):
            if k not in used:
                problem(f"VAD hears speech at {a}-{b} ms where the script has none")
        if not sidecar["script"]:
            heard = transcriber.transcribe(x16)
            print(f"  whole call heard: {heard.text!r}  [{heard.rejected or 'NOT rejected'}]")
            if heard.usable:
                problem("Whisper invents text on the noise")
    print(f"{problems} problem(s)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files and transcribe them with Whisper")
    parser.add_argument("names", nargs="*", help="only these calls (default: all)")
    args = parser.parse_args(argv)
    kb = load_kb()
    calls = [c for c in define_calls(kb) if not args.names or c.name in args.names]
    sidecars: dict[str, dict[str, object]] = {}
    for call in calls:
        for turn in call.expect["turns"]:  # type: ignore[union-attr]
            if "faq_id" in turn and turn["faq_id"] not in kb:
                sys.exit(f"generate.py: {call.name} expects faq_id {turn['faq_id']!r}, which {KB_PATH} lacks")
        pcm16, sidecar = render(call)
        write_ulaw_wav(HERE / f"{call.name}.wav", pcm16)
        (HERE / f"{call.name}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        sidecars[call.name] = sidecar
        print(f"wrote {call.name}.wav ({sidecar['duration_ms'] / 1000:.1f} s) and {call.name}.json")
    if args.check:
        return 1 if check(calls, sidecars) else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
