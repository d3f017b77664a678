"""The model manifest: which artifact fills which role in which profile, and how to get it.

`manifest.toml` beside this file is the single source of truth; this module only parses and checks it so a
typo in the manifest fails at load time with the artifact and field named, not halfway through a download.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

MANIFEST_PATH = Path(__file__).with_name("manifest.toml")
ROLES = ("stt", "llm", "tts", "embedder", "vad")
PROFILES = ("embedded", "production")
SOURCES = ("pypi", "https", "bundled")


class ManifestError(ValueError):
    """The manifest file is malformed: the message names the artifact and field at fault."""


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact, as it lies on disk once fetched."""

    name: str
    sha256: str
    size: int
    parts: tuple[str, ...] = ()
    url: str | None = None


@dataclass(frozen=True)
class Artifact:
    """A model artifact: a folder of files that together serve one role."""

    name: str
    role: str
    profile: str
    source: str
    licence: str
    description: str
    files: tuple[ArtifactFile, ...]
    packages: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Manifest:
    artifacts: tuple[Artifact, ...]

    def select(self, profile: str | None = None, role: str | None = None) -> list[Artifact]:
        return [
            a for a in self.artifacts if (profile is None or a.profile == profile) and (role is None or a.role == role)
        ]

    def for_role(self, role: str, profile: str) -> Artifact:
        """The artifact serving `role` in `profile`; the embedded one fills roles production leaves open."""
        for candidate in (profile, "embedded"):
            found = self.select(candidate, role)
            if found:
                return found[0]
        raise ManifestError(f"{MANIFEST_PATH}: no artifact for role {role!r} in profile {profile!r}")


def _require(table: dict, key: str, where: str, kind: type = str):
    value = table.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise ManifestError(f"{where}: field {key!r} must be a non-empty {kind.__name__}, got {value!r}")
    return value


def _parse_file(raw: dict, where: str, source: str) -> ArtifactFile:
    name = _require(raw, "name", where)
    where = f"{where} file {name!r}"
    sha = _require(raw, "sha256", where).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"{where}: sha256 must be 64 hex digits, got {sha!r}")
    size = _require(raw, "size", where, int)
    parts = tuple(raw.get("parts", ()))
    url = raw.get("url")
    if source == "https" and not (isinstance(url, str) and url.startswith("https://")):
        raise ManifestError(f"{where}: an https artifact needs an https:// url, got {url!r}")
    if source in ("pypi", "bundled") and not parts:
        raise ManifestError(f"{where}: a {source} artifact needs a non-empty 'parts' list")
    return ArtifactFile(name=name, sha256=sha, size=size, parts=parts, url=url)


def _parse_artifact(raw: dict, index: int, path: Path) -> Artifact:
    name = _require(raw, "name", f"{path}: artifact #{index + 1}")
    where = f"{path}: artifact {name!r}"
    role, profile, source = (_require(raw, k, where) for k in ("role", "profile", "source"))
    for value, allowed, key in ((role, ROLES, "role"), (profile, PROFILES, "profile"), (source, SOURCES, "source")):
        if value not in allowed:
            raise ManifestError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(f"{where}: needs at least one [[artifact.files]] entry")
    packages = tuple(raw.get("packages", ()))
    if source == "pypi" and not all("==" in p for p in packages):
        raise ManifestError(f"{where}: pypi packages must be pinned as NAME==VERSION, got {list(packages)}")
    return Artifact(
        name=name,
        role=role,
        profile=profile,
        source=source,
        licence=_require(raw, "licence", where),
        description=raw.get("description", ""),
        files=tuple(_parse_file(f, where, source) for f in files),
        packages=packages,
    )


def load_manifest(path: Path = MANIFEST_PATH) -> Manifest:
    """Parse and validate the manifest at `path`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the model manifest: {exc}") from exc
    artifacts = tuple(_parse_artifact(raw, i, path) for i, raw in enumerate(data.get("artifact", [])))
    names = [a.name for a in artifacts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"{path}: artifact names must be unique, repeated: {', '.join(duplicates)}")
    return Manifest(artifacts)
