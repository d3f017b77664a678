"""The language model: Qwen GGUF on llama.cpp, streamed token by token.

One `Llama` serves every call of the process, but it is not thread-safe, so generations are serialised by a
lock and run off the event loop. llama.cpp keeps the KV cache of the previous prompt and re-evaluates only
what follows the longest shared prefix, so a static system prompt placed first is computed once per process,
not once per turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from voicebot.config import DialogSettings, ModelSettings
from voicebot.model_paths import model_path


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


# Sampling still picks among the likeliest tokens (temperature, top_p), but from a fixed seed: the same prompt
# gets the same reply, so a call replayed, a `kb eval` run or a test gives the same result every time.
SAMPLING_SEED = 7


class LlamaChat:
    """Chat completion over a GGUF model with its own chat template."""

    def __init__(self, gguf: Path, *, context: int = 2048, threads: int = 2) -> None:
        from llama_cpp import Llama

        self.path = gguf
        self._llama = Llama(
            model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=256, verbose=False
        )
        self._lock = threading.Lock()

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 80, temperature: float = 0.2, stop: Sequence[str] = ()
    ) -> Iterator[str]:
        """Yield the reply's text pieces as they are generated; closing the iterator stops generation.

        The model stays locked from the first piece until the iterator is exhausted or closed, so callers must
        close it (`contextlib.closing`, or `close()` in a `finally`) when they stop early.
        """
        with self._lock:
            chunks = self._llama.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=0.9,
                seed=SAMPLING_SEED,
                stop=list(stop) or None,
                stream=True,
            )
            try:
                for chunk in chunks:
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        yield piece
            finally:
                chunks.close()

    def complete(self, messages: Sequence[Message], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs)).strip()

    def token_count(self, text: str) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def load_llm(models: ModelSettings, dialog: DialogSettings) -> LlamaChat:
    """Load the profile's LLM; `MissingArtifact` says how to fetch it if it is not there."""
    path = model_path(models, "llm")
    gguf = path if path.is_file() else path / "model.gguf"
    return LlamaChat(gguf, context=dialog.llm_context, threads=models.threads)
