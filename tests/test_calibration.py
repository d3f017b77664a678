"""Per-KB calibration with the real MiniLM embedder: what `voicebot kb check` chooses and reports.

The tests assert what the thresholds do (no out-of-scope line is read an answer, the answers read as written are
right), never the numbers one KB happens to calibrate to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.calibration import (
    FAQ_FLOOR,
    GROUNDED_FLOOR,
    NEVER,
    TARGET_PRECISION,
    CheckReport,
    LabelSource,
    Negative,
    Scored,
    calibrate,
    check_kb,
    choose_thresholds,
    load_out_of_scope,
)
from voicebot.kb import SAMPLE_KB, KbEntry, load_kb
from voicebot.retrieval import Band, FaqIndex, Hit, Match, ThresholdSource

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def write(path: Path, entries: list[KbEntry], *, alternatives: bool = True) -> Path:
    rows = [
        {"id": e.id, "question": e.question, "answer": e.answer, "alt_questions": list(e.alt_questions)}
        if alternatives
        else {"id": e.id, "question": e.question, "answer": e.answer}
        for e in entries
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sample_check(embedder, tmp_path_factory) -> tuple[FaqIndex, CheckReport]:
    kb = write(tmp_path_factory.mktemp("with-alts") / "kb.json", load_kb(SAMPLE_KB))
    index = FaqIndex.build_or_load(kb, embedder)
    return index, check_kb(index, load_out_of_scope())


@pytest.fixture(scope="module")
def plain_check(embedder, tmp_path_factory) -> tuple[FaqIndex, CheckReport]:
    """The sample KB as most companies write one: one question per entry."""
    kb = write(tmp_path_factory.mktemp("no-alts") / "kb.json", load_kb(SAMPLE_KB), alternatives=False)
    index = FaqIndex.build_or_load(kb, embedder)
    return index, check_kb(index, load_out_of_scope())


def test_the_out_of_scope_set_covers_many_trades_and_copies_no_test_line():
    lines = load_out_of_scope()
    trades = {line.trade for line in lines if line.trade is not None}
    assert len(lines) >= 80 and len(trades) >= 10
    assert sum(line.trade is None for line in lines) >= 30  # general requests and chit-chat
    assert all(sum(line.trade == trade for line in lines) >= 5 for trade in trades)
    texts = [line.text.lower() for line in lines]
    assert len(set(texts)) == len(texts)
    written = set()
    for cases in (DATA / "kbs").glob("*.cases.json"):
        for case in json.loads(cases.read_text(encoding="utf-8"))["cases"]:
            said = case["say"] if isinstance(case["say"], list) else [case["say"]]
            written |= {line.lower() for line in said}
    for kb in [SAMPLE_KB, *(DATA / "kbs").glob("*.json"), *(DATA / "kbs").glob("*.csv")]:
        if not kb.name.endswith(".cases.json"):
            written |= {q.lower() for entry in load_kb(kb) for q in entry.questions}
    written |= {line.lower() for line in json.loads((DATA / "paraphrases.json").read_text())["out_of_scope"]}
    assert not set(texts) & written


@pytest.mark.models  # loads models outside the shared fixtures
@pytest.mark.parametrize("which", ["sample_check", "plain_check"])
def test_no_out_of_scope_line_is_read_an_answer_and_the_direct_band_is_right(which, request):
    _, report = request.getfixturevalue(which)
    t = report.thresholds
    assert t.source is ThresholdSource.CALIBRATED
    assert FAQ_FLOOR <= t.faq <= 1 and GROUNDED_FLOOR <= t.grounded <= t.faq and t.margin >= 0
    calibration = report.calibration
    assert all(t.band(s.hits) is not Band.DIRECT for s in calibration.out_of_scope)
    direct = [s for s in calibration.labelled if t.band(s.hits) is Band.DIRECT]
    assert direct, "a KB whose questions are found must get a fast path"
    assert sum(s.correct for s in direct) / len(direct) == t.expected_precision >= TARGET_PRECISION
    answerable = [s for s in calibration.labelled if s.in_top_k]
    assert sum(t.band(s.hits) is not Band.NONE for s in answerable) >= 0.9 * len(answerable)
    assert "shop" in report.own_trades  # a shop's own trade questions are not out of scope for it


def test_labelled_lines_come_from_alternatives_else_from_answers(sample_check, plain_check):
    _, with_alts = sample_check
    assert with_alts.calibration.source is LabelSource.ALT_QUESTIONS
    assert len(with_alts.calibration.labelled) == sum(len(e.alt_questions) for e in load_kb(SAMPLE_KB))
    index, plain = plain_check
    assert plain.calibration.source is LabelSource.ANSWERS
    assert {s.expected for s in plain.calibration.labelled} == {e.id for e in index.entries}
    assert plain.without_alternatives == tuple(e.id for e in index.entries)
    assert "entries without alternative questions: 22 of 22" in plain.format()


def test_held_out_lines_never_match_their_own_hidden_text(sample_check, plain_check):
    for _, report in (sample_check, plain_check):
        for scored in report.calibration.labelled:
            for hit in scored.hits:
                assert hit.matched != scored.text


def test_paraphrases_written_apart_from_the_kb_at_its_calibrated_thresholds(sample_check):
    """Callers' own wording (tests/data/paraphrases.json) against the KB's own calibration; -s prints it."""
    index, report = sample_check
    data = json.loads((DATA / "paraphrases.json").read_text(encoding="utf-8"))
    labelled = [(item["text"], item["id"]) for item in data["in_scope"]]
    check = calibrate(index, labelled, [Negative(text) for text in data["out_of_scope"]], thresholds=report.thresholds)
    print("\n" + check.format())
    assert check.accuracy >= 0.9 and check.recall_at_k >= 0.95
    counts = check.band_counts()
    assert counts["correct top-1"][Band.DIRECT] >= 0.9 * (
        counts["correct top-1"][Band.DIRECT] + counts["wrong top-1"][Band.DIRECT]
    )
    assert counts["correct top-1"][Band.NONE] <= 2


def test_a_trade_s_own_questions_are_not_counted_against_its_kb(embedder, tmp_path):
    kb = tmp_path / "bank.json"
    kb.write_bytes((DATA / "kbs" / "bank.json").read_bytes())
    report = check_kb(FaqIndex.build_or_load(kb, embedder), load_out_of_scope())
    assert "bank" in report.own_trades and "restaurant" not in report.own_trades
    assert all(s.trade != "bank" for s in report.calibration.out_of_scope)


def test_near_duplicate_entries_are_reported(embedder, tmp_path):
    entries = [
        KbEntry("hours", "What are your opening hours?", "Monday to Friday, 9 to 5."),
        KbEntry("open_times", "When are you open?", "We are open on weekdays from nine to five."),
        KbEntry("parking", "Is there parking?", "Yes, free parking behind the building."),
        KbEntry("wifi", "Do you have wifi for guests?", "Yes, the network is Guest and needs no password."),
    ]
    index = FaqIndex.build_or_load(write(tmp_path / "kb.json", entries), embedder)
    report = check_kb(index, load_out_of_scope())
    pairs = {frozenset((d.first, d.second)) for d in report.near_duplicates}
    assert frozenset(("hours", "open_times")) in pairs
    assert all("parking" not in pair and "wifi" not in pair for pair in pairs)


def scored(expected: str | None, top: str, score: float, second: float) -> Scored:
    def hit(entry_id: str, value: float) -> Hit:
        return Hit(KbEntry(entry_id, "q", "a"), value, "q", Match.QUESTION)

    other = "zz" if top != "zz" else "yy"
    return Scored("line", expected, (hit(top, score), hit(other, second)))


def test_thresholds_clear_the_negatives_and_keep_the_direct_band_right():
    labelled = [scored("a", "a", 0.6 + i / 100, 0.3) for i in range(30)]  # right, from 0.60 to 0.89
    labelled += [scored("b", "c", 0.70, 0.66)]  # wrong, and close to its second entry
    negatives = [scored(None, "a", 0.75, 0.2), scored(None, "b", 0.4, 0.38)]
    t = choose_thresholds(labelled, negatives)
    assert t.faq >= 0.77  # above the far-ahead negative at 0.75, with room for near-misses not in the set
    assert t.expected_precision == 1.0
    assert GROUNDED_FLOOR <= t.grounded <= t.faq

    # The same data with the negative close to its second entry: a margin keeps it out, and the band grows.
    t2 = choose_thresholds(labelled, [scored(None, "a", 0.75, 0.74), negatives[1]])
    assert t2.faq < t.faq and t2.margin > 0
    assert all(t2.band(s.hits) is not Band.DIRECT for s in [scored(None, "a", 0.75, 0.74), negatives[1]])


def test_no_direct_band_when_nothing_keeps_it_right():
    labelled = [scored("a", "b", 0.9, 0.3), scored("a", "a", 0.5, 0.3)]
    t = choose_thresholds(labelled, [scored(None, "a", 0.3, 0.2)])
    assert t.faq == NEVER and t.expected_precision is None and t.grounded <= 0.5


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_kb_check_command_stores_the_thresholds_the_dialog_then_uses(embedder, tmp_path):
    kb = write(tmp_path / "kb.json", load_kb(SAMPLE_KB))
    done = run_cli("kb", "check", "--kb", str(kb), "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["entries"] == 22 and report["calibration"]["labelled_from"] == "alt_questions"
    assert report["thresholds"]["source"] == "calibrated" and report["thresholds"]["expected_precision"] >= 0.97
    assert Path(report["thresholds_file"]).exists()
    stored = FaqIndex.build_or_load(kb, embedder).thresholds
    assert stored.source is ThresholdSource.CALIBRATED
    assert (stored.faq, stored.margin, stored.grounded) == tuple(
        report["thresholds"][k] for k in ("faq", "margin", "grounded")
    )

    text = run_cli("kb", "check", "--kb", str(kb), "--quiet")
    assert text.returncode == 0, text.stderr
    assert "expected precision of the direct band:" in text.stdout and "thresholds file:" in text.stdout

    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "question": "Why?"}]', encoding="utf-8")
    failed = run_cli("kb", "check", "--kb", str(bad))
    assert failed.returncode == 2 and str(bad) in failed.stderr and '"answer"' in failed.stderr

    helped = run_cli("kb", "check", "--help")
    words = " ".join(helped.stdout.split())
    assert helped.returncode == 0 and "duplicate entries" in words and "expected precision is printed" in words
