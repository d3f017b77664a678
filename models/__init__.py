"""Model artifacts: the manifest of what voicebot loads, and the code that fetches and verifies it."""

from models.fetch import (
    ChecksumMismatch,
    FetchError,
    MissingArtifact,
    State,
    check,
    default_models_dir,
    fetch,
    require,
)
from models.manifest import Artifact, ArtifactFile, Manifest, ManifestError, load_manifest

__all__ = [
    "Artifact",
    "ArtifactFile",
    "ChecksumMismatch",
    "FetchError",
    "Manifest",
    "ManifestError",
    "MissingArtifact",
    "State",
    "check",
    "default_models_dir",
    "fetch",
    "load_manifest",
    "require",
]
