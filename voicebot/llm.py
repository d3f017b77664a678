"""The language model: Qwen GGUF on llama.cpp, streamed token by token.

Two backends speak the same `ChatModel` interface: `LlamaChat`, the model in this process, and
`voicebot.llm_endpoint.EndpointChat`, an OpenAI-compatible chat endpoint that several workers share (setting
models.llm_url). The dialog, the grounding checks and the intent classifier do not know which one they use.

In-process, one `Llama` serves every call of the process, but it is not thread-safe, so generations are
serialised by a lock and run off the event loop. llama.cpp keeps the KV cache of the previous prompt and
re-evaluates only what follows the longest shared prefix, so a static system prompt placed first is computed once
per process, not once per turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from voicebot.config import DialogSettings, ModelSettings
from voicebot.model_paths import model_path


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


# Sampling still picks among the likeliest tokens (temperature, top_p), but from a fixed seed: the same prompt
# gets the same reply, so a call replayed, a `kb eval` run or a test gives the same result every time.
SAMPLING_SEED = 7
TOP_P = 0.9
N_BATCH = 256  # prompt tokens evaluated per llama.cpp batch (the shared LLM server uses the same)


class LlmError(RuntimeError):
    """The model could not answer (an endpoint down, refusing or too slow); the message says where and why."""


class ChatModel(Protocol):
    """What the dialog needs from a language model, whichever backend serves it."""

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 80, temperature: float = 0.2, stop: Sequence[str] = ()
    ) -> Iterator[str]:
        """The reply's text pieces as they are generated; closing the iterator stops generation."""
        ...

    def complete(self, messages: Sequence[Message], **kwargs) -> str: ...

    def token_count(self, text: str) -> int:
        """How many prompt tokens `text` takes (at least), to keep prompts inside the context."""
        ...

    def sibling(self, context: int) -> ChatModel:
        """A model for a second, independent prompt (the intent classifier's), with `context` tokens."""
        ...


class LlamaChat:
    """Chat completion over a GGUF model with its own chat template."""

    def __init__(self, gguf: Path, *, context: int = 2048, threads: int = 2) -> None:
        from llama_cpp import Llama

        self.path = gguf
        self.threads = threads
        self._llama = Llama(
            model_path=str(gguf),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=N_BATCH,
            verbose=False,
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
                top_p=TOP_P,
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

    def sibling(self, context: int) -> LlamaChat:
        """A second llama.cpp context over the same GGUF file. The weights are memory-mapped, so it costs its KV
        cache and buffers (tens of MB), not another copy of the model; its prompt prefix stays cached apart."""
        return LlamaChat(self.path, context=context, threads=self.threads)


def load_llm(models: ModelSettings, dialog: DialogSettings) -> ChatModel:
    """The configured LLM: the OpenAI-compatible endpoint at models.llm_url when it is set, else the profile's
    model in this process (`MissingArtifact` says how to fetch it if it is not there)."""
    if models.llm_url:
        from voicebot.llm_endpoint import EndpointChat

        return EndpointChat.connect(models)
    path = model_path(models, "llm")
    gguf = path if path.is_file() else path / "model.gguf"
    return LlamaChat(gguf, context=dialog.llm_context, threads=models.threads)
