"""The recorded sample calls and the outcomes their sidecars promise, checked against a call record."""

from __future__ import annotations

import json
from pathlib import Path

CALLS_DIR = Path(__file__).resolve().parent.parent / "samples" / "calls"
SAMPLE_CALLS = sorted(CALLS_DIR.glob("*.wav"))


def expectations(wav: Path) -> dict:
    return json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))["expect"]


def check_record(record: dict, expect: dict) -> list[str]:
    """Every way `record` (as `calls show --json` prints it) falls short of `expect`; empty when it matches."""
    problems: list[str] = []
    turns = record.get("turns", [])
    said = [(t["route"], t.get("faq_id"), t["caller_text"]) for t in turns]
    if expect.get("no_turns") and turns:
        problems.append(f"expected no turns on a call without speech, got {said}")
    wanted = expect.get("turns", [])
    if len(turns) != len(wanted):
        problems.append(f"expected {len(wanted)} turns, got {len(turns)}: {said}")
    for i, (want, turn) in enumerate(zip(wanted, turns, strict=False)):
        routes = want.get("route_in") or [want["route"]]
        if turn["route"] not in routes:
            problems.append(f"turn {i} ({turn['caller_text']!r}): route {turn['route']}, expected {routes}")
        if "faq_id" in want and turn.get("faq_id") != want["faq_id"]:
            problems.append(
                f"turn {i} ({turn['caller_text']!r}): faq_id {turn.get('faq_id')}, expected {want['faq_id']}"
            )
    if len(record.get("tickets", [])) != expect.get("tickets", 0):
        problems.append(f"expected {expect.get('tickets', 0)} tickets, got {record.get('tickets')}")
    if record.get("handoff") != expect.get("handoff"):
        problems.append(f"hand-off {record.get('handoff')!r}, expected {expect.get('handoff')!r}")
    greeting = record.get("greeting") or {}
    if bool(greeting.get("interrupted")) != bool(expect.get("greeting_interrupted")):
        problems.append(
            f"greeting interrupted: {greeting.get('interrupted')}, expected {expect.get('greeting_interrupted')}"
        )
    interrupted = [t["index"] for t in turns if t.get("interrupted")]
    if interrupted != expect.get("interrupted_turns", []):
        problems.append(f"interrupted turns {interrupted}, expected {expect.get('interrupted_turns', [])}")
    return problems
