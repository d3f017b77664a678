"""The shared LLM server as the reply model: `voicebot llm-serve` (llama-cpp-python's own OpenAI-compatible
server on the embedded model) and `EndpointChat`, through which the dialog, its grounding checks and the intent
classifier work unchanged."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from telephony.demo import free_port
from voicebot.config import ConfigError, ModelSettings, Settings
from voicebot.kb import SAMPLE_KB, KbEntry, load_knowledge_base
from voicebot.llm import LlmError, Message, load_llm
from voicebot.llm_endpoint import EndpointChat
from voicebot.reply_writer import ReplyWriter, Written
from voicebot.retrieval import Hit, Match

pytestmark = pytest.mark.models  # the embedded LLM, served

KEY = "test-only-key-7Qx2"
STARTUP_S = 120.0  # a busy CI machine loads the model slowly; connect() returns as soon as it answers


class LlmServer:
    """`voicebot llm-serve` in a child process, as an operator starts it."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}/v1"
        env = {**os.environ, "VOICEBOT_MODELS_DIR": str(settings.models.dir), "VOICEBOT_MODELS_LLM_API_KEY": KEY}
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "voicebot", "llm-serve", "--port", self.url.rsplit(":", 1)[1].split("/")[0]],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def models(self, **overrides) -> ModelSettings:
        return ModelSettings(llm_url=self.url, llm_api_key=KEY, llm_timeout_s=STARTUP_S, **overrides)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def llm_server(settings, tmp_path_factory):
    server = LlmServer(settings, tmp_path_factory.mktemp("llm-server") / "server.log")
    try:
        EndpointChat.connect(server.models())  # waits until it answers
    except LlmError:
        pytest.fail(f"voicebot llm-serve did not come up:\n{server.log.read_text(errors='replace')[-3000:]}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def endpoint(llm_server) -> EndpointChat:
    return EndpointChat.connect(llm_server.models())


def test_the_endpoint_streams_the_reply_in_pieces_and_names_the_model_it_serves(endpoint: EndpointChat, llm):
    assert endpoint.model == "voicebot"  # taken from the server's /models
    pieces = list(endpoint.stream([Message("user", "What is the capital of France? Answer briefly.")], max_tokens=20))
    assert len(pieces) > 2 and "Paris" in "".join(pieces)
    # The token estimate that keeps prompts inside the context never undercounts the model's own tokenizer.
    for entry in load_knowledge_base(SAMPLE_KB).entries:
        for text in (entry.question, entry.answer):
            assert endpoint.token_count(text) >= llm.token_count(text), text


def test_a_reply_stopped_early_leaves_the_endpoint_ready_for_the_next(endpoint: EndpointChat):
    pieces = endpoint.stream([Message("user", "Count from one to two hundred, in words.")], max_tokens=400)
    first = [next(pieces), next(pieces)]
    pieces.close()  # a barge-in: the connection is closed, so the server stops generating
    assert all(first)
    assert "Paris" in endpoint.complete([Message("user", "What is the capital of France? One word.")], max_tokens=5)
    # A reply read to its end hands its connection back for the next one.
    assert endpoint.complete([Message("user", "Say yes.")], max_tokens=3)
    assert endpoint.complete([Message("user", "Say no.")], max_tokens=3)
    assert len(endpoint._idle) == 1


@pytest.mark.parametrize("backend", ["in-process", "endpoint"])
def test_an_invented_number_is_refused_whichever_backend_wrote_it(backend, llm, endpoint, settings):
    model = llm if backend == "in-process" else endpoint
    writer = ReplyWriter(model, settings.dialog, "Acme")
    entry = KbEntry("shipping", "How much is shipping?", "Standard shipping is free on every order.")
    messages = [
        Message("system", "You repeat the user's sentence word for word and say nothing else."),
        Message("user", "Shipping costs 42 dollars."),
    ]
    written = Written()
    said = list(
        writer.write(
            messages,
            [Hit(entry, 0.9, entry.question, Match.QUESTION)],
            "how much is shipping",
            read_threshold=settings.dialog.faq_threshold,
            written=written,
            cancelled=lambda: False,
        )
    )
    assert written.first_token_ms is not None  # the model wrote, and was refused:
    assert [sentence for sentence, _ in written.refused] == ["Shipping costs 42 dollars."]
    assert said == [entry.answer] and written.fell_back_to == "shipping"


def test_a_wrong_key_and_a_dead_endpoint_fail_naming_what_to_fix(llm_server: LlmServer, settings):
    with pytest.raises(LlmError, match=r"HTTP 401.*models\.llm_api_key"):
        EndpointChat.connect(dataclasses.replace(llm_server.models(), llm_api_key="wrong"))
    dead = ModelSettings(llm_url=f"http://127.0.0.1:{free_port()}/v1", llm_timeout_s=0.5)
    with pytest.raises(LlmError, match=r"did not answer.*models\.llm_url"):
        load_llm(dead, settings.dialog)
    with pytest.raises(ConfigError, match=r"models\.llm_url.*http://"):
        load_llm(ModelSettings(llm_url="127.0.0.1:8000"), settings.dialog)


def test_the_server_going_away_mid_call_is_an_llm_error_not_a_hang(settings, tmp_path):
    """The call runner turns any failing reply into an apology (test_server); here the failure is real."""
    server = LlmServer(settings, tmp_path / "server.log")
    try:
        chat = EndpointChat.connect(dataclasses.replace(server.models(), llm_timeout_s=STARTUP_S))
        pieces = chat.stream([Message("user", "Count from one to two hundred, in words.")], max_tokens=400)
        assert next(pieces)
        server.process.kill()
        server.process.wait(timeout=30)
        with pytest.raises(LlmError, match="broke off a reply"):
            list(pieces)
        with pytest.raises(LlmError, match="did not answer"):
            chat.complete([Message("user", "Say yes.")], max_tokens=3)
    finally:
        if server.process.poll() is None:
            server.stop()
