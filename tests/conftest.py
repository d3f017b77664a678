"""Shared fixtures: the real embedded models, loaded once per test session.

A test that uses one of them (directly or through another fixture) is marked `models`: `pytest -m "not models"`
runs the rest, which need no model files, in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from server_harness import AC, AUTH

from telephony.fake_twilio import FakeTwilio
from telephony.local_postgres import PostgresServer, server_programs
from voicebot.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment (models from models/cache or VOICEBOT_MODELS_DIR)."""
    return load_settings(env={k: v for k, v in os.environ.items() if k == "VOICEBOT_MODELS_DIR"})


@pytest.fixture(scope="session")
def embedder(settings):
    from voicebot.embedder import load_embedder

    return load_embedder(settings.models)


@pytest.fixture(scope="session")
def llm(settings):
    from voicebot.llm import load_llm

    return load_llm(settings.models, settings.dialog)


@pytest.fixture(scope="session")
def transcriber(settings):
    from voicebot.stt import load_transcriber

    return load_transcriber(settings.models, settings.voice)


@pytest.fixture(scope="session")
def vad(settings):
    from voicebot.vad import load_vad

    return load_vad(settings.models)


@pytest.fixture(scope="session")
def synthesizer(settings):
    """The Piper voice without its random noise: tests that time or cut its speech get the same audio every run."""
    from voicebot.tts import load_synthesizer

    return load_synthesizer(settings.models, variation=False)


@pytest.fixture(scope="session")
def loaded_agent(settings, tmp_path_factory):
    """The whole voice agent on the sample KB, warmed, with its own store: loaded once for the whole session."""
    from voicebot.agent import build_agent

    agent = build_agent(settings, store_url=str(tmp_path_factory.mktemp("voice") / "calls.db"), spool=True)
    yield agent
    agent.close()


@pytest.fixture(scope="session")
def agent(loaded_agent):
    """The voice agent: replays and CallRunner tests share it (server tests use `patient_agent` under this name)."""
    return loaded_agent


@pytest.fixture(scope="session")
def patient_agent(settings, loaded_agent):
    """The session's agent with deadlines no slow machine misses, for calls in real time that assert their routes
    (a slow CI machine must not turn an LLM answer into an apology). The deadlines themselves are tested on the
    media clock (test_session_failures) and with engines that hang (test_call_runner)."""
    from voicebot.agent import VoiceAgent

    late = 20_000
    voice = dataclasses.replace(settings.voice, stt_deadline_ms=late, reply_deadline_ms=late, reply_stall_ms=late)
    return VoiceAgent.sharing(loaded_agent, dataclasses.replace(settings, voice=voice))


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of the session's own (telephony/local_postgres.py); skipped where none is installed."""
    programs = server_programs()
    if programs is None:
        pytest.skip("PostgreSQL's server programs are not installed (`make postgres` installs Debian's postgresql)")
    # Not under pytest's own temporary folder: that is private to this user, and the server may run as another.
    folder = Path(tempfile.mkdtemp(prefix="voicebot-postgres-"))
    server = PostgresServer(folder, programs)
    try:
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store of each kind: a SQLite file, and a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/calls.db"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def fake_twilio():
    """A local fake of Twilio's Calls API, which the real twilio client talks to."""
    with FakeTwilio(AC, AUTH) as fake:
        yield fake


MODEL_FIXTURES = frozenset({"embedder", "llm", "transcriber", "synthesizer", "vad", "loaded_agent"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="also run the cases the suite leaves out to stay short (make test-full): the other knowledge bases' "
        "evaluations and the other sample calls through the real server",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    full = config.getoption("--full")
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)
        if not full and item.get_closest_marker("full"):
            item.add_marker(pytest.mark.skip(reason="left to `make test-full` (pytest --full)"))
