"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/Caddyfile, deploy/env.example) kept in step with
the code: no container runs here, so this reads them the way Docker Compose and Caddy would and checks that what
they set is what voicebot reads, and that every worker's calls are routed back to it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from telephony.security import PublicUrls
from voicebot.config import load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value or f"filled-in-{name.lower()}"  # the operator fills the blanks
    return values


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, from the filled-in env file."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "-":
            return rest
        raise AssertionError(f"compose needs {name}, which env.example does not set ({rest})")

    return VARIABLE.sub(one, str(value))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _workers(compose: dict) -> dict[str, dict]:
    services = compose["services"].items()
    return {name: s for name, s in services if name.startswith("worker") and s.get("command") is None}


def test_every_worker_setting_is_one_voicebot_reads_and_the_call_comes_back_through_the_proxy(compose):
    env = _env_example()
    caddy = (DEPLOY / "Caddyfile").read_text()
    workers = _workers(compose)
    assert len(workers) >= 2
    prefixes = set()
    for name, service in workers.items():
        worker_env = {key: _interpolate(value, env) for key, value in service["environment"].items()}
        settings = load_settings(env=worker_env)  # an unknown VOICEBOT_ name would be a ConfigError
        assert settings.store.url.startswith("postgresql://") and settings.models.llm_url == "http://llm:8000/v1"
        urls = PublicUrls.from_settings(settings.server)
        prefix = settings.server.worker_url.removeprefix(settings.server.public_url)
        prefixes.add(prefix)
        assert urls.stream_url == f"wss://{env['VOICEBOT_DOMAIN']}{prefix}/media"
        # The proxy strips the worker's prefix and sends media to its WebSocket port, webhooks to its HTTP port.
        block = caddy[caddy.index(f"handle_path {prefix}/*") :]
        block = block[: block.index("\n\t}")]
        assert f"reverse_proxy {name}:{settings.server.media_port}" in block
        assert f"reverse_proxy {name}:{settings.server.port}" in block and "/stream-status /dial-result" in block
        assert f"{name}:{settings.server.port}" in caddy[caddy.index("handle /twiml") :]  # the number's webhook
        assert any(v.endswith(":/etc/voicebot/kb.json:ro") for v in service["volumes"])
        assert settings.dialog.kb_path == Path("/etc/voicebot/kb.json")
    assert len(prefixes) == len(workers), "each worker needs its own server.worker_url"
    llm = compose["services"]["llm"]
    assert llm["command"][:2] == ["voicebot", "llm-serve"] and llm["command"][-1] == "8000"


def test_the_image_builds_what_the_makefile_builds_and_ships_every_package():
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert re.search(rf"^COPY {package}\b", dockerfile, re.M), f"the image misses package {package}"
    torch = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, re.M).group(1)
    llama = re.search(r"^LLAMA_SPEC \?= llama-cpp-python==(\S+)", makefile, re.M).group(1)
    assert f"ARG TORCH_SPEC={torch}" in dockerfile
    assert f'"llama-cpp-python[server]=={llama}"' in dockerfile
    flags = re.search(r"^LLAMA_CMAKE_ARGS \?= (.+)$", makefile, re.M).group(1).replace("$(AVX512)", "OFF")
    assert f'ARG LLAMA_CMAKE_ARGS="{flags}"' in dockerfile
    assert "pip install /src" in dockerfile and "pip install -e" not in dockerfile  # a regular install
