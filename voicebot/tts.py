"""Text to speech: a Piper voice, one sentence at a time so the first sentence plays while the rest is made.

The output rate is the voice's own (`audio.sample_rate` in its `.onnx.json`: 22,050 Hz for the embedded
voice); callers resample for the phone.

Piper's VITS graph samples random noise on every run (the voice's `noise_scale` for the sound, `noise_w` for
phoneme durations), so by default the same sentence comes out a little different each time, lengths included.
The synthesizer turns that noise off unless asked for `variation`: a sentence then always sounds the same, in
every process, so cached lines are the one rendering of their text, and replays and tests that time speech
against the bot's audio give the same result on every run. Without the noise each phoneme gets its expected
duration and sound; with a once-per-process cache of every fixed line, sampled variety was never heard across
calls anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.config import ModelSettings
from voicebot.model_paths import model_path

# A sentence ends at . ! or ? (after any closing quote or bracket) followed by more text.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end, punctuation kept: the unit the bot speaks, caches and marks.

    Joining the pieces with single spaces gives `text` back (whitespace normalised)."""
    return [piece for piece in _SENTENCE_END.split(text.strip()) if piece]


@dataclass(frozen=True)
class SpokenSentence:
    text: str
    audio: np.ndarray  # int16 mono at the voice's sample rate


class PiperSynthesizer:
    def __init__(self, onnx: Path, config: Path, *, threads: int = 2, variation: bool = False) -> None:
        """Load the voice; `variation` keeps the voice's random noise (each rendering differs), else none."""
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        try:
            config_dict = json.loads(config.read_text(encoding="utf-8"))
            self.sample_rate = int(config_dict["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"Piper voice config {config} is unreadable or has no audio.sample_rate: {exc}") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.voice_id = f"{onnx.stem}:{self.sample_rate}" + (":varied" if variation else "")
        # None: the voice's own noise_scale / noise_w from its config; zero noise: the same audio every time.
        self._syn_config = None if variation else SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(config_dict),
            session=onnxruntime.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"]),
        )

    def synthesize(self, text: str) -> np.ndarray:
        """The whole text as one int16 array (sentences joined)."""
        parts = [s.audio for s in self.stream(text)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def stream(self, text: str) -> Iterator[SpokenSentence]:
        """Yield each sentence's audio as soon as it is synthesized."""
        for sentence in split_sentences(text):
            chunks = [c.audio_int16_array for c in self._voice.synthesize(sentence, syn_config=self._syn_config)]
            if chunks:
                yield SpokenSentence(sentence, np.concatenate(chunks).astype(np.int16, copy=False))


def load_synthesizer(models: ModelSettings, *, variation: bool = False) -> PiperSynthesizer:
    """The configured Piper voice; deterministic unless `variation` (see the module docstring)."""
    path = model_path(models, "tts")
    if path.is_file():  # an override pointing at the .onnx itself
        onnx, config = path, path.with_name(path.name + ".json")
    else:
        onnx, config = path / "voice.onnx", path / "voice.onnx.json"
    return PiperSynthesizer(onnx, config, threads=models.threads, variation=variation)
