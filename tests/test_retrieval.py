"""FAQ retrieval with the real MiniLM embedder: questions and answers searchable, the persisted index and the
thresholds stored beside it."""

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
from voicebot.retrieval import (
    CACHE_FOLDER,
    Band,
    FaqIndex,
    Hit,
    Match,
    Thresholds,
    ThresholdSource,
    answer_texts,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample_index(embedder, tmp_path_factory) -> FaqIndex:
    folder = tmp_path_factory.mktemp("sample-kb")
    return FaqIndex.build_or_load(shutil.copy(SAMPLE_KB, folder / "kb.json"), embedder)


DENTAL = [
    {
        "id": "insurance",
        "question": "Which insurance plans do you accept?",
        "answer": "We're in network with Delta Dental, Cigna, Aetna and MetLife. Please bring your insurance card "
        "to your first visit.",
    },
    {
        "id": "whitening",
        "question": "Do you offer teeth whitening?",
        "answer": "Yes. In-office whitening takes about an hour and costs 350 dollars.",
    },
    {
        "id": "payment",
        "question": "What payment options do you have?",
        "answer": "We take cash, all major credit and debit cards, and CareCredit.",
    },
    {
        "id": "hours",
        "question": "When are you open?",
        "answer": "Monday to Friday from 8 am to 6 pm, and Saturday mornings.",
    },
]


def test_search_returns_one_hit_per_entry_best_first(sample_index):
    hits = sample_index.search("what is your return policy", k=5)
    assert hits[0].entry.id == "returns" and hits[0].match is Match.QUESTION
    assert hits[0].matched == "What is your return policy?" and hits[0].score > 0.95
    assert len(hits) == 5 == len({hit.entry.id for hit in hits})
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    for hit in hits:
        texts = hit.entry.questions if hit.match is Match.QUESTION else answer_texts(hit.entry.answer)
        assert hit.matched in texts
    assert len(sample_index.search("hello", k=100)) == len(sample_index.entries)
    assert sample_index.search("   ") == []


def test_a_fact_only_in_an_answer_finds_its_entry(embedder, tmp_path):
    kb = tmp_path / "dental.json"
    kb.write_text(json.dumps(DENTAL), encoding="utf-8")
    index = FaqIndex.build_or_load(kb, embedder)
    hit = index.search("do you take Delta Dental")[0]
    assert hit.entry.id == "insurance" and hit.match is Match.ANSWER and "Delta Dental" in hit.matched
    assert index.search("can I pay with CareCredit")[0].entry.id == "payment"


def test_an_entry_s_own_question_always_wins_over_answers(sample_index):
    """An answer row counts for less than a question row, so saying an entry's question finds that entry."""
    for entry in sample_index.entries:
        for question in entry.questions:
            hit = sample_index.search(question, k=1)[0]
            assert (hit.entry.id, hit.match) == (entry.id, Match.QUESTION), question


def test_answers_are_indexed_whole_and_by_sentence():
    assert answer_texts("Yes. In-office whitening takes about an hour and costs 350 dollars.") == (
        "Yes. In-office whitening takes about an hour and costs 350 dollars.",
    )
    two = "Standard delivery takes two to four days. Express arrives the next working day."
    assert answer_texts(two) == (
        two,
        "Standard delivery takes two to four days.",
        "Express arrives the next working day.",
    )


def hit(entry_id: str, score: float) -> Hit:
    from voicebot.kb import KbEntry

    return Hit(KbEntry(entry_id, "q", "a"), score, "q", Match.QUESTION)


def test_bands_need_the_score_and_the_lead_over_the_second_entry():
    thresholds = Thresholds(faq=0.6, grounded=0.3, margin=0.05, source=ThresholdSource.CALIBRATED)
    assert thresholds.band([hit("a", 0.7), hit("b", 0.6)]) is Band.DIRECT
    assert thresholds.band([hit("a", 0.7), hit("b", 0.68)]) is Band.GROUNDED  # too close to the second
    assert thresholds.band([hit("a", 0.55)]) is Band.GROUNDED
    assert thresholds.band([hit("a", 0.2)]) is Band.NONE
    assert thresholds.band([]) is Band.NONE


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
    assert first.built and len(first.entries) == 3
    assert first.vectors == len(first.rows) == 4 + 3  # four questions, three one-sentence answers
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


def test_thresholds_are_the_defaults_until_stored_and_belong_to_one_version_of_the_file(embedder, tmp_path):
    kb = write_kb(tmp_path / "kb.json")
    settings = DialogSettings(faq_threshold=0.8, grounded_threshold=0.4, faq_margin=0.05)
    index = FaqIndex.build_or_load(kb, embedder, default_thresholds=Thresholds.from_settings(settings))
    assert index.thresholds == Thresholds(0.8, 0.4, 0.05, ThresholdSource.DEFAULT)
    assert FaqIndex.build_or_load(kb, embedder).thresholds == Thresholds.from_settings(DialogSettings())

    calibrated = Thresholds(0.62, 0.33, 0.04, ThresholdSource.CALIBRATED, expected_precision=0.98)
    stored = index.store_thresholds(calibrated)
    assert stored == index.thresholds_path and stored.exists() and index.thresholds == calibrated
    assert FaqIndex.build_or_load(kb, embedder).thresholds == calibrated
    assert FaqIndex.build_or_load(kb, embedder, rebuild=True).thresholds == calibrated  # same file, same model

    write_kb(kb, answer="Returns are accepted within 30 days.")
    edited = FaqIndex.build_or_load(kb, embedder)
    assert edited.thresholds.source is ThresholdSource.DEFAULT  # calibrated for text that is gone
    assert not stored.exists()

    edited.thresholds_path.write_text("{not json", encoding="utf-8")
    assert FaqIndex.build_or_load(kb, embedder).thresholds.source is ThresholdSource.DEFAULT


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
    assert first.store_thresholds(Thresholds(0.7, 0.3, 0.0, ThresholdSource.CALIBRATED)).parent == fallback
    again = FaqIndex.build_or_load(kb, embedder, fallback_dir=fallback)
    assert not again.built and again.thresholds.source is ThresholdSource.CALIBRATED


def test_csv_knowledge_base_is_searchable(embedder, tmp_path):
    kb = tmp_path / "faq.csv"
    kb.write_text(
        'id,question,answer\npickup,Can I collect my order in a store?,"Yes, it is ready in two hours."\n'
        "hours,When are you open?,Monday to Saturday.\n",
        encoding="utf-8",
    )
    index = FaqIndex.build_or_load(kb, embedder)
    assert index.search("can I pick it up myself from the shop")[0].entry.id == "pickup"


@pytest.mark.models  # loads models outside the shared fixtures
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
    assert "entries: 3" in done.stdout and "vectors: 7" in done.stdout
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
