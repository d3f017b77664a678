"""Routing, replies and tickets for any company's FAQ: six businesses' knowledge bases, each with its own caller
lines, through `kb check` (per-KB thresholds) and the real dialog, as `voicebot kb eval` runs them.

The KBs and lines in tests/data/kbs/ were written without looking at the routing code; three of the KBs have no
alternative questions at all. Nothing here is tuned to one KB: the thresholds come from each KB's own calibration.
Run with `-s` to see each KB's confusion table and misses.

The suite evaluates two of the six (1-2 minutes each: most lines go through the LLM): a KB with alternative
questions (a bank) and one without (a software company, the hardest so far). `make eval` evaluates all six.

The product target is 90% on every KB; measured now 76-91% (most misses: the 0.5B model's reply for an
in-scope question is refused by the grounding check and becomes the decline line). `FLOOR` guards what is
reached so far, so a change that loses ground fails here; a hang-up or transfer on a question always fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.calibration import calibrate_thresholds, load_out_of_scope
from voicebot.dialog import DialogEngine
from voicebot.evaluation import CasesError, evaluate, load_cases
from voicebot.intents import IntentClassifier
from voicebot.kb import load_knowledge_base
from voicebot.retrieval import FaqIndex
from voicebot.store import open_store

KBS = Path(__file__).parent / "data" / "kbs"
IN_SUITE = {"bank", "software"}


def _business(cases_file: Path) -> object:
    """One business's cases, left to `make eval` / `make test-full` unless it is in IN_SUITE."""
    name = cases_file.name.split(".")[0]
    return pytest.param(cases_file, id=name, marks=() if name in IN_SUITE else pytest.mark.full)


CASES = [_business(path) for path in sorted(KBS.glob("*.cases.json"))]
REPO = Path(__file__).resolve().parent.parent
FLOOR = 0.7


@pytest.fixture(scope="module")
def classifier(llm, settings) -> IntentClassifier:
    classifier = IntentClassifier.beside(llm)
    classifier.warm_up()
    return classifier


@pytest.mark.parametrize("cases_file", CASES)
def test_every_business_is_routed_right_and_never_hung_up_on_a_question(
    cases_file: Path, settings, embedder, llm, classifier, tmp_path: Path
) -> None:
    kb_path, cases = load_cases(cases_file)
    kb = load_knowledge_base(kb_path)
    index = FaqIndex.build_or_load(kb_path, embedder, fallback_dir=tmp_path / "index")
    index.store_thresholds(calibrate_thresholds(index, load_out_of_scope()))
    with open_store(str(tmp_path / "calls.db")) as store:
        engine = DialogEngine(settings, embedder, index, llm, classifier, store, company=kb.company)
        result = evaluate(engine, kb_path, cases)
    print(f"\n{result.format()}")
    assert not result.actions_on_questions(), "a question was hung up on or transferred"
    assert result.accuracy >= FLOOR


def test_cases_files_are_validated_with_their_place_named(tmp_path: Path) -> None:
    (tmp_path / "kb.json").write_text(json.dumps([{"id": "a", "question": "q?", "answer": "a."}]), encoding="utf-8")
    bad = tmp_path / "bad.cases.json"
    bad.write_text(json.dumps({"kb": "kb.json", "cases": [{"say": "hi", "expect": "answer"}]}), encoding="utf-8")
    with pytest.raises(CasesError, match=r"bad.cases.json: case 1: outcome 'answer' is not one of answer:<faq_id>"):
        load_cases(bad)
    bad.write_text(json.dumps({"kb": "kb.json", "cases": [{"say": [], "expect": "ticket"}]}), encoding="utf-8")
    with pytest.raises(CasesError, match=r"case 1: \"say\" must be a caller line or a list of them"):
        load_cases(bad)
    bad.write_text(json.dumps({"kb": "kb.json", "cases": [{"say": "hi", "expect": "answer:nope"}]}), encoding="utf-8")
    with pytest.raises(CasesError, match=r"outcome 'answer:nope' names no entry of the knowledge base"):
        load_cases(bad)


@pytest.mark.models  # loads models outside the shared fixtures
def test_kb_eval_command_exits_non_zero_under_the_minimum(tmp_path: Path) -> None:
    kb = tmp_path / "kb.json"
    kb.write_text(
        json.dumps(
            [
                {"id": "hours", "question": "When are you open?", "answer": "We are open 9 to 5, Monday to Friday."},
                {"id": "parking", "question": "Is there parking?", "answer": "Yes, free parking behind the building."},
            ]
        ),
        encoding="utf-8",
    )
    cases = tmp_path / "kb.cases.json"
    cases.write_text(
        json.dumps(
            {
                "kb": "kb.json",
                "cases": [
                    {"say": "what time do you open", "expect": "answer:hours"},
                    {"say": "can I talk to a real person", "expect": "handoff"},
                    {"say": "can I talk to a real person", "expect": "hangup", "note": "wrong on purpose"},
                ],
            }
        ),
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "voicebot", "kb", "eval", "--cases", str(cases), "--json"]
    done = subprocess.run([*command, "--min-accuracy", "0.9"], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["cases"], report["correct"]) == (3, 2)
    assert report["confusion"]["hangup"] == {"handoff": 1}
    assert "under --min-accuracy 90%" in done.stderr
