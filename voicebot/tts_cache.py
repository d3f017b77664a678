"""Phone-ready speech for sentences the bot says again and again: the greeting, prompts, KB answers.

Synthesis plus resampling to 8 kHz costs ~50-300 ms a sentence on this CPU; a cached sentence costs nothing,
which is most of why a knowledge-base answer can start playing within the latency budget. Keyed by voice and
text, bounded (least recently used goes first), thread-safe because every call's reply thread uses it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from voicebot.audio import Resampler
from voicebot.tts import PiperSynthesizer, split_sentences

PHONE_RATE = 8000


class PhoneSpeech:
    """Text to 8 kHz int16 speech, a sentence at a time, with a cache in front of the synthesizer."""

    def __init__(self, synthesizer: PiperSynthesizer, *, max_entries: int = 2000) -> None:
        self.synthesizer = synthesizer
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def sentence(self, text: str, *, store: bool = True) -> tuple[np.ndarray, float]:
        """The sentence as phone audio and the milliseconds spent making it (0 on a cache hit).

        `store=False` for text that will hardly come again (the LLM's): it is looked up but not kept, so it
        never pushes a knowledge-base answer out of the cache.
        """
        key = (self.synthesizer.voice_id, text)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached, 0.0
        start = time.perf_counter()
        audio = self.synthesizer.synthesize(text)
        resampler = Resampler(self.synthesizer.sample_rate, PHONE_RATE)
        pcm = np.concatenate([resampler.process(audio), resampler.flush()])  # int16 in, int16 out
        elapsed = (time.perf_counter() - start) * 1000
        with self._lock:
            self.misses += 1
            if not store:
                return pcm, elapsed
            self._cache[key] = pcm
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return pcm, elapsed

    def prepare(self, texts: Iterable[str]) -> int:
        """Synthesize every sentence of `texts` ahead of time; returns how many sentences were made."""
        made = 0
        for text in texts:
            for sentence in split_sentences(text):
                _, ms = self.sentence(sentence)
                made += ms > 0
        return made
