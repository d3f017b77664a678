"""Where each role's model files are: the manifest's artifact for the profile, or a local override path.

Every engine loader goes through `model_path`, so a missing or corrupt model fails the same way everywhere:
a `MissingArtifact` naming the artifact and the `voicebot models fetch` command that gets it.
"""

from __future__ import annotations

from pathlib import Path

from models import MissingArtifact, load_manifest, require
from voicebot.config import ModelSettings


def model_path(settings: ModelSettings, role: str) -> Path:
    """The folder holding `role`'s model files for the configured profile (or the override path)."""
    override: Path | None = getattr(settings, f"{role}_path", None)
    if override is not None:
        if not override.exists():
            raise MissingArtifact(
                f"models.{role}_path points at {override}, which does not exist: fix the path in your config "
                f"(or VOICEBOT_MODELS_{role.upper()}_PATH), or unset it to use the {settings.profile} profile"
            )
        return override
    artifact = load_manifest().for_role(role, settings.profile)
    return require(artifact, settings.dir)
