"""FAQ retrieval with the real MiniLM embedder: routing accuracy on spoken paraphrases, and the persisted index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.config import DialogSettings
from voicebot.kb import SAMPLE_KB
from voicebot.retrieval import CACHE_FOLDER, FaqIndex, calibrate

PARAPHRASES = Path(__file__).parent / "data" / "paraphrases.json"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample_index(embedder, tmp_path_factory) -> FaqIndex:
    folder = tmp_path_factory.mktemp("sample-kb")
    return FaqIndex.build_or_load(shutil.copy(SAMPLE_KB, folder / "kb.json"), embedder)


@pytest.fixture(scope="module")
def report(sample_index):
    data = json.loads(PARAPHRASES.read_text(encoding="utf-8"))
    labelled = [(item["text"], item["id"]) for item in data["in_scope"]]
    return calibrate(sample_index, labelled, data["out_of_scope"])


def test_calibration(report):
    """The report behind the thresholds in config.py; run with -s to see it."""
    print("\n" + report.format())
    assert len(report.labelled) >= 40 and len(report.out_of_scope) >= 15
    assert report.accuracy >= 0.90, f"paraphrase top-1 accuracy {report.accuracy:.1%}"
    assert report.recall_at_k >= 0.95


def test_out_of_scope_never_reaches_the_straight_kb_band(report):
    settings = DialogSettings()
    for scored in report.out_of_scope:
        assert scored.score < settings.faq_threshold, f"{scored.text!r} scored {scored.score:.3f} to {scored.top_id}"
    # The configured band must not be looser than the data allows, and the bands must nest.
    assert settings.faq_threshold >= report.suggested_faq_threshold
    assert settings.grounded_threshold <= report.suggested_grounded_threshold < settings.faq_threshold


def test_straight_kb_band_reads_only_the_right_answer(report):
    in_band = [s for s in report.labelled if s.score >= DialogSettings().faq_threshold]
    assert in_band, "no paraphrase reaches the straight-KB band"
    assert all(s.correct for s in in_band)


def test_search_returns_one_hit_per_entry_best_first(sample_index):
    hits = sample_index.search("what is your return policy", k=5)
    assert hits[0].entry.id == "returns"
    assert hits[0].matched == "What is your return policy?" and hits[0].score > 0.95
    assert len(hits) == 5 == len({hit.entry.id for hit in hits})
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    for hit in hits:
        assert hit.matched in hit.entry.questions
    assert len(sample_index.search("hello", k=100)) == len(sample_index.entries)
    assert sample_index.search("   ") == []


def write_kb(path: Path, answer: str = "You can return unopened items within 7 days.") -> Path:
    entries = [
        {"id": "returns", "question": "How do I return an item?", "answer": answer},
        {
            "id": "hours",
            "question": "When are you open?",
            "answer": "Monday to Saturday, from 9 to 7.",
            "alt_questions": ["What time do you close?"],
        },
        {"id": "gift_cards", "question": "Do you sell gift cards?", "answer": "Yes, from 10 to 200 dollars."},
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_index_is_persisted_reused_and_rebuilt_when_the_file_changes(embedder, tmp_path):
    kb = write_kb(tmp_path / "kb.json")
    first = FaqIndex.build_or_load(kb, embedder)
    assert first.built and first.vectors == 4 and len(first.entries) == 3
    assert first.path is not None and first.path.parent == tmp_path / CACHE_FOLDER and first.path.exists()
    assert first.path.with_suffix(".json").exists()

    second = FaqIndex.build_or_load(kb, embedder)
    assert not second.built and second.path == first.path
    assert second.search("what time do you shut")[0].matched == "What time do you close?"

    write_kb(kb, answer="Returns are accepted within 30 days.")
    third = FaqIndex.build_or_load(kb, embedder)
    assert third.built and third.path != first.path
    assert third.search("can I send this back")[0].entry.answer == "Returns are accepted within 30 days."
    assert sorted(p.name for p in (tmp_path / CACHE_FOLDER).iterdir()) == [third.path.name, third.path.stem + ".json"]

    assert FaqIndex.build_or_load(kb, embedder, rebuild=True).built


def test_corrupt_index_is_rebuilt(embedder, tmp_path):
    kb = write_kb(tmp_path / "kb.json")
    path = FaqIndex.build_or_load(kb, embedder).path
    path.write_bytes(path.read_bytes()[:100])
    again = FaqIndex.build_or_load(kb, embedder)
    assert again.built and again.search("gift card")[0].entry.id == "gift_cards"
    assert not FaqIndex.build_or_load(kb, embedder).built


def test_index_goes_to_the_fallback_folder_when_the_kb_folder_is_not_writable(embedder, tmp_path):
    kb = write_kb(tmp_path / "kb.json")
    (tmp_path / CACHE_FOLDER).write_text("a file where the cache folder should be")
    fallback = tmp_path / "models" / "kb-index"
    first = FaqIndex.build_or_load(kb, embedder, fallback_dir=fallback)
    assert first.built and first.path.parent == fallback and first.path.name.startswith("kb.json-")
    assert not FaqIndex.build_or_load(kb, embedder, fallback_dir=fallback).built


def test_csv_knowledge_base_is_searchable(embedder, tmp_path):
    kb = tmp_path / "faq.csv"
    kb.write_text(
        'id,question,answer\npickup,Can I collect my order in a store?,"Yes, it is ready in two hours."\n'
        "hours,When are you open?,Monday to Saturday.\n",
        encoding="utf-8",
    )
    index = FaqIndex.build_or_load(kb, embedder)
    assert index.search("can I pick it up myself from the shop")[0].entry.id == "pickup"


def test_calibrate_rejects_labels_not_in_the_kb(sample_index):
    with pytest.raises(ValueError, match="not in the knowledge base: no_such_id"):
        calibrate(sample_index, [("where is my parcel", "no_such_id")], ["tell me a joke"])


def test_kb_build_command(tmp_path):
    kb = write_kb(tmp_path / "kb.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", "kb", "build", "--kb", str(kb), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "entries: 3" in done.stdout and "vectors: 4" in done.stdout
    assert f"index: {tmp_path / CACHE_FOLDER}" in done.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,answer\nreturns,How?,\n", encoding="utf-8")
    failed = subprocess.run(
        [sys.executable, "-m", "voicebot", "kb", "build", "--kb", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert failed.returncode == 2
    assert f"{bad}: line 2 (id 'returns'): field \"answer\" is empty" in failed.stderr
