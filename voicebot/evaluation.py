"""`voicebot kb eval`: a company's own caller lines, with what should happen, through the real dialog.

A cases file (JSON) names its knowledge base and lists caller lines with their expected outcome:

    {"kb": "clinic.json",
     "cases": [{"say": "do you take delta dental", "expect": "answer:insurance"},
               {"say": ["how much is whitening", "how long does it take?"], "expect": "answer:whitening"},
               {"say": "can I speak to the dentist", "expect": "handoff"},
               {"say": "the filling fell out again", "expect": ["ticket", "answer:emergency"]}]}

`"kb"` is relative to the cases file. With a list in `"say"` the earlier lines are said first, heard in full, and
only the last is judged. An outcome is `answer:<faq_id>` (that entry answers, read as written or by the LLM
grounded on it), `decline` (no entry answers: no KB answer and no action, the bot says it doesn't know and
offers help), `ticket`, `handoff`, `hangup` or `repeat`; a list means any of them is right.

Each case runs in a call of its own against the real models: the embedder, the LLM classifier and the LLM
writer with its grounding checks, so a reply the checks refuse counts as the decline it became.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from voicebot import grounding
from voicebot.dialog import Conversation, DialogEngine, Reply
from voicebot.jsonfile import read_json
from voicebot.kb import load_kb
from voicebot.routes import Route

OUTCOMES = ("answer", "decline", "ticket", "handoff", "hangup", "repeat")


class CasesError(ValueError):
    """A cases file is unusable; the message names the file, the case and the field at fault."""


@dataclass(frozen=True)
class Case:
    say: tuple[str, ...]  # the judged line last
    expect: tuple[str, ...]  # acceptable outcomes
    note: str = ""


@dataclass(frozen=True)
class CaseResult:
    case: Case
    outcome: str
    route: Route
    reply: str
    why: str

    @property
    def correct(self) -> bool:
        return self.outcome in self.case.expect

    @property
    def expected_kind(self) -> str:
        return _kind(self.case.expect[0])


@dataclass(frozen=True)
class Evaluation:
    kb: Path
    results: tuple[CaseResult, ...]

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.results) / len(self.results) if self.results else 0.0

    def confusion(self) -> dict[str, dict[str, int]]:
        """Expected outcome kind → how often each outcome kind happened."""
        table: dict[str, Counter[str]] = {}
        for result in self.results:
            got = "answer (wrong entry)" if _kind(result.outcome) == "answer" and not result.correct else None
            table.setdefault(result.expected_kind, Counter())[got or _kind(result.outcome)] += 1
        return {expected: dict(counts) for expected, counts in sorted(table.items())}

    def actions_on_questions(self) -> list[CaseResult]:
        """Hang-ups and transfers on lines that expected an answer or a decline: the worst mistakes."""
        return [
            r
            for r in self.results
            if r.expected_kind in ("answer", "decline") and _kind(r.outcome) in ("handoff", "hangup")
        ]

    def to_json(self) -> dict:
        return {
            "kb": str(self.kb),
            "cases": len(self.results),
            "correct": sum(r.correct for r in self.results),
            "accuracy": round(self.accuracy, 4),
            "confusion": self.confusion(),
            "actions_on_questions": len(self.actions_on_questions()),
            "results": [
                {
                    "say": list(r.case.say),
                    "expect": list(r.case.expect),
                    "outcome": r.outcome,
                    "correct": r.correct,
                    "route": str(r.route),
                    "reply": r.reply,
                    "why": r.why,
                }
                for r in self.results
            ],
        }

    def format(self) -> str:
        """A plain-text report: accuracy, the confusion table, every miss."""
        right = sum(r.correct for r in self.results)
        lines = [f"{self.kb}: {right}/{len(self.results)} right ({self.accuracy:.1%})"]
        kinds = sorted({k for row in self.confusion().values() for k in row})
        lines.append("expected \\ got".ljust(16) + "".join(k[:20].rjust(22) for k in kinds))
        for expected, row in self.confusion().items():
            lines.append(expected.ljust(16) + "".join(str(row.get(k, 0)).rjust(22) for k in kinds))
        misses = [r for r in self.results if not r.correct]
        if misses:
            lines.append("misses:")
            for r in misses:
                lines.append(f"  {' / '.join(r.case.say)!r}: expected {'|'.join(r.case.expect)}, got {r.outcome}")
                lines.append(f"      route {r.route} ({r.why}): {r.reply[:100]!r}")
        if self.actions_on_questions():
            lines.append(f"hang-ups or transfers on questions: {len(self.actions_on_questions())}")
        return "\n".join(lines)


def _kind(outcome: str) -> str:
    return outcome.split(":", 1)[0]


def load_cases(path: Path, kb: Path | None = None) -> tuple[Path, list[Case]]:
    """The knowledge base (`kb`, else the one the cases file names, relative to its folder) and the cases,
    validated against it: every `answer:<faq_id>` must name one of its entries."""
    path = Path(path)
    data = read_json(path, "cases file", CasesError)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CasesError(f'{path}: expected an object {{"kb": "KB file", "cases": [...]}}')
    if kb is None:
        if not isinstance(data.get("kb"), str) or not data["kb"].strip():
            raise CasesError(
                f'{path}: "kb" must name the knowledge base file (relative to {path.parent}), or pass --kb'
            )
        kb = path.parent / data["kb"]
    entry_ids = {entry.id for entry in load_kb(kb)}
    cases = []
    for number, item in enumerate(data["cases"], start=1):
        where = f"{path}: case {number}"
        if not isinstance(item, dict):
            raise CasesError(f'{where} must be an object with "say" and "expect"')
        say = item.get("say")
        say = [say] if isinstance(say, str) else say
        if not isinstance(say, list) or not say or not all(isinstance(s, str) and s.strip() for s in say):
            raise CasesError(f'{where}: "say" must be a caller line or a list of them')
        expect = item.get("expect")
        expect = [expect] if isinstance(expect, str) else expect
        if not isinstance(expect, list) or not expect:
            raise CasesError(f'{where}: "expect" must be an outcome or a list of them ({", ".join(OUTCOMES)})')
        for outcome in expect:
            kind, _, faq_id = str(outcome).partition(":")
            if kind not in OUTCOMES or (kind == "answer") != bool(faq_id):
                raise CasesError(
                    f"{where}: outcome {outcome!r} is not one of answer:<faq_id>, {', '.join(OUTCOMES[1:])}"
                )
            if faq_id and faq_id not in entry_ids:
                raise CasesError(f"{where}: outcome {outcome!r} names no entry of the knowledge base {kb}")
        cases.append(Case(tuple(s.strip() for s in say), tuple(expect), str(item.get("note", ""))))
    return kb, cases


def outcome_of(reply: Reply, spoken: str) -> str:
    """What the caller got, in the cases' terms."""
    match reply.route:
        case Route.FAQ:
            return f"answer:{reply.faq_id}"
        case Route.LLM if reply.faq_id is not None and not grounding.is_decline(spoken):
            return f"answer:{reply.faq_id}"
        case Route.LLM | Route.FALLBACK:
            return "decline"
        case Route.TICKET:
            return "ticket"
        case Route.HANDOFF | Route.DTMF:
            return "handoff"
        case Route.HANGUP:
            return "hangup"
        case _:
            return "repeat"


def run_case(conversation: Conversation, case: Case) -> CaseResult:
    """Say the case's lines in one call; judge the last."""
    for line in case.say[:-1]:
        reply = conversation.respond(line)
        conversation.commit(reply, " ".join(reply.sentences), interrupted=False)
    reply = conversation.respond(case.say[-1])
    spoken = " ".join(reply.sentences)
    conversation.commit(reply, spoken, interrupted=False)
    why = reply.decision.why if reply.decision is not None else ""
    if reply.written is not None and reply.written.refused:
        why += f"; refused {reply.written.refused}"
    return CaseResult(case, outcome_of(reply, spoken), reply.route, spoken, why)


def evaluate(
    engine: DialogEngine, kb: Path, cases: Sequence[Case], *, progress: Callable[[int], None] | None = None
) -> Evaluation:
    """Every case in a fresh call of `engine` (loaded on the knowledge base `kb`)."""
    results = []
    for number, case in enumerate(cases):
        conversation = engine.conversation(f"EVAL{number:05d}", None, "chat")
        results.append(run_case(conversation, case))
        conversation.end()
        if progress is not None:
            progress(1)
    return Evaluation(Path(kb), tuple(results))
