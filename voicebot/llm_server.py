"""The shared LLM server: llama-cpp-python's OpenAI-compatible server on the profile's model.

Several `voicebot serve` workers point models.llm_url at one of these (`voicebot llm-serve`) instead of each
loading the model. It runs the same GGUF file with the same batch size as the in-process backend, and keeps a
RAM cache of prompt states, so the reply prompt's and the intent classifier's prefixes both stay warm although
they take turns on the server's one context.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from voicebot.config import DialogSettings, ModelSettings
from voicebot.llm import N_BATCH
from voicebot.model_paths import model_path

PROMPT_CACHE_BYTES = 512 << 20  # prompt states kept for reuse (the reply and classifier prefixes, and recent turns)


@dataclass(frozen=True)
class LlmServerCommand:
    """How to start the server: its command line and environment (the API key travels in the environment, where
    `ps` does not show it)."""

    argv: list[str]
    env: dict[str, str]
    url: str  # what the workers set as models.llm_url


def llm_server_command(
    models: ModelSettings, dialog: DialogSettings, *, host: str, port: int, model_name: str = "voicebot"
) -> LlmServerCommand:
    """The command that serves the profile's LLM (or models.llm_path) at http://host:port/v1 as `model_name`;
    `MissingArtifact` says how to fetch the model if it is not there."""
    path = model_path(models, "llm")
    gguf = path if path.is_file() else path / "model.gguf"
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", model_name,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(dialog.llm_context),
        "--n_batch", str(N_BATCH),
        "--n_threads", str(models.threads),
        "--n_threads_batch", str(models.threads),
        "--cache", "true",
        "--cache_size", str(PROMPT_CACHE_BYTES),
        "--verbose", "false",
        "--interrupt_requests", "false",  # true would cut one worker's reply off when another's request comes
    ]  # fmt: skip
    env = dict(os.environ)
    if models.llm_api_key:
        env["API_KEY"] = models.llm_api_key  # llama-cpp-python's server reads its settings from the environment
    return LlmServerCommand(argv, env, f"http://{host}:{port}/v1")
