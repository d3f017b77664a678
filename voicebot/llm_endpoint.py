"""An OpenAI-compatible chat endpoint as the language model: one LLM server shared by several workers.

llama.cpp's server, llama-cpp-python's server and vLLM all speak `POST {url}/chat/completions` with
`"stream": true` (server-sent events, one `data:` line per piece, `data: [DONE]` at the end). `EndpointChat`
streams from there with the same sampling as the in-process model (temperature, top_p, the fixed seed), so the
reply writer, its grounding checks and the intent classifier work on it unchanged.

Plain `http.client` on the worker threads the replies already run on: no event loop to share, no dependency.
Connections are kept alive and reused, so a turn pays no TCP (or TLS) set-up; a reply stopped early (barge-in,
a refused sentence) closes its connection, which is how these servers learn to stop generating.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from voicebot.config import ConfigError, ModelSettings
from voicebot.llm import SAMPLING_SEED, TOP_P, LlmError, Message
from voicebot.store import mask_url

SETTING = "setting models.llm_url (VOICEBOT_MODELS_LLM_URL)"  # quoted in errors
ERROR_BODY_CHARS = 300  # of a refusal's body, quoted in the error: enough for the server's own message


class EndpointUnreachable(LlmError):
    """Nothing answered at the endpoint (refused, reset, timed out): a server still starting, or down."""


class EndpointChat:
    """Chat completion streamed from an OpenAI-compatible endpoint; thread-safe (one connection per request)."""

    def __init__(self, url: str, model: str, *, api_key: str = "", timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{SETTING} is {mask_url(url)!r}: give the http:// or https:// address of an OpenAI-compatible "
                "API, e.g. http://127.0.0.1:8000/v1"
            )
        self.url = url.rstrip("/")
        self.model = model
        self._shown = mask_url(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, models: ModelSettings) -> EndpointChat:
        """The endpoint the settings name, once it answers: waits up to models.llm_timeout_s for a server that is
        still starting (workers and their LLM server often start together), then fails naming the URL. With no
        models.llm_model, the first model the server lists is the one asked for."""
        chat = cls(models.llm_url, models.llm_model, api_key=models.llm_api_key, timeout_s=models.llm_timeout_s)
        deadline = time.monotonic() + models.llm_timeout_s
        while True:
            try:
                listed = chat._get_json("/models")
                break
            except EndpointUnreachable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        if not chat.model:
            names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
            if not names or not isinstance(names[0], str):
                raise LlmError(f"LLM endpoint {chat._shown} lists no model at /models: set models.llm_model")
            chat.model = names[0]
        return chat

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 80, temperature: float = 0.2, stop: Sequence[str] = ()
    ) -> Iterator[str]:
        """Yield the reply's text pieces as the server sends them; closing the iterator stops generation."""
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": TOP_P,
            "seed": SAMPLING_SEED,
            "stream": True,
        }
        if stop:
            body["stop"] = list(stop)
        conn, response = self._post("/chat/completions", body)
        finished = False
        try:
            yield from self._pieces(response)
            response.read()  # the rest of the chunked body, so the connection can carry the next request
            finished = not response.will_close
        except (OSError, http.client.HTTPException) as exc:
            raise LlmError(f"LLM endpoint {self._shown} broke off a reply: {exc}") from exc
        finally:
            if finished:
                self._release(conn)
            else:
                conn.close()  # stopped early or broken: the server sees the socket close and stops generating

    def complete(self, messages: Sequence[Message], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs)).strip()

    def token_count(self, text: str) -> int:
        """An upper estimate of `text`'s tokens, with no round trip to the server: every digit one token (Qwen
        and Llama 3 tokenize digits singly), every other 3 bytes one (English text runs 4 or more to a token).
        It keeps prompts inside models' contexts; a little history is dropped earlier than strictly needed."""
        digits = sum(c.isdigit() for c in text)
        return digits + math.ceil((len(text.encode("utf-8")) - digits) / 3)

    def sibling(self, context: int) -> EndpointChat:
        """The same endpoint: the server keeps each prompt's prefix cached itself (per slot, or by prefix)."""
        return self

    # ------------------------------------------------------------------ HTTP

    def _pieces(self, response: http.client.HTTPResponse) -> Iterator[str]:
        """The content pieces of a server-sent-event stream of chat completion chunks, up to its `[DONE]`."""
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise LlmError(f"LLM endpoint {self._shown} sent a line that is not JSON: {data[:80]!r}") from exc
            if not isinstance(chunk, dict):
                raise LlmError(f"LLM endpoint {self._shown} sent {data[:80]!r} where a completion chunk belongs")
            if "error" in chunk:
                raise LlmError(f"LLM endpoint {self._shown} failed mid-reply: {str(chunk['error'])[:ERROR_BODY_CHARS]}")
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                if piece:
                    yield piece
        # http.client ends a line-by-line read quietly where a chunked body was cut off: without its [DONE] the
        # reply is broken, not finished (the server died or dropped us), and the caller must hear so.
        raise LlmError(f"LLM endpoint {self._shown} broke off a reply: the stream ended before its [DONE]")

    def _post(self, path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request on a kept-alive connection (a fresh one if the kept one turns out closed)."""
        payload = json.dumps(body).encode("utf-8")
        for attempt in (1, 2):
            conn, reused = self._acquire()
            try:
                conn.request("POST", self._path + path, payload, self._headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle connection: try once on a new one
                raise self._unreachable(exc) from exc
            if response.status != 200:
                text = response.read(ERROR_BODY_CHARS).decode("utf-8", "replace")
                conn.close()
                raise self._refused(path, response.status, text)
            return conn, response
        raise AssertionError("unreachable")

    def _get_json(self, path: str) -> dict:
        conn, _ = self._acquire()
        try:
            conn.request("GET", self._path + path, headers=self._headers)
            response = conn.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        finally:
            conn.close()
        if response.status != 200:
            raise self._refused(path, response.status, text[:ERROR_BODY_CHARS].decode("utf-8", "replace"))
        try:
            listed = json.loads(text)
        except ValueError as exc:
            raise LlmError(f"LLM endpoint {self._shown}{path} did not answer JSON: is {SETTING} an API's URL?") from exc
        return listed if isinstance(listed, dict) else {}

    def _unreachable(self, exc: Exception) -> EndpointUnreachable:
        return EndpointUnreachable(
            f"LLM endpoint {self._shown} did not answer: {exc}. Is the LLM server up, and {SETTING} right?"
        )

    def _refused(self, path: str, status: int, body: str) -> LlmError:
        hint = " (check models.llm_api_key, VOICEBOT_MODELS_LLM_API_KEY)" if status in (401, 403) else ""
        return LlmError(f"LLM endpoint {self._shown}{path} refused the request: HTTP {status} {body}{hint}")

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self._timeout_s), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)
