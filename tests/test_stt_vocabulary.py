"""The KB's words bias Whisper: which words `kb_vocabulary` picks, and what the bias does to the sample calls.

`pytest -s` prints the sample calls' word error rate and STT time per turn with and without the vocabulary.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sample_calls import SAMPLE_CALLS

from voicebot.audio import Resampler, pcm16_to_float
from voicebot.kb import SAMPLE_KB, KbEntry, load_knowledge_base
from voicebot.model_paths import model_path
from voicebot.replay import phone_audio
from voicebot.stt import SttOptions, WhisperTranscriber
from voicebot.vocabulary import kb_vocabulary

KBS = Path(__file__).parent / "data" / "kbs"
PREROLL_MS, TAIL_MS = 300, 100  # what the session sends Whisper around a turn (`SessionOptions.preroll_ms`)


def entry(entry_id: str, question: str, answer: str) -> KbEntry:
    return KbEntry(entry_id, question, answer)


def test_vocabulary_opens_a_call_to_the_company_and_names_its_brands():
    kb = load_knowledge_base(KBS / "clinic.json")
    vocabulary = kb_vocabulary(kb.entries, kb.company.name)
    assert vocabulary.startswith("Thanks for calling Maple Street Dental: ")
    assert vocabulary.endswith(". How can I help you today?")
    for name in ("Delta Dental", "Cigna", "Aetna", "MetLife", "CareCredit", "Invisalign", "Patel"):
        assert name in vocabulary
    for ordinary in ("We're", "Please", "Yes", "Monday", "Call"):
        assert ordinary not in vocabulary


def test_vocabulary_finds_names_in_a_csv_kb_without_a_company():
    kb = load_knowledge_base(KBS / "isp.csv")
    vocabulary = kb_vocabulary(kb.entries, kb.company.name)
    assert vocabulary.startswith("Thanks for calling: Skyline, ")
    assert "eSIM" in vocabulary and "Mesh Extender" in vocabulary


def test_a_name_spelled_out_in_an_address_still_counts():
    entries = [
        entry("contact", "How do I reach you?", "Email help at brightgym dot com or visit brightgym.com/help."),
        entry("app", "Is there an app?", "Yes, the BrightGym app books classes. BrightGym members book free."),
    ]
    assert kb_vocabulary(entries) == "Thanks for calling: BrightGym. How can I help you today?"


def test_words_capitalised_for_a_sentence_or_a_button_are_no_names():
    entries = [
        entry("cancel", "How do I cancel my membership?", "Open Settings and choose Cancel. Cancel before the 1st."),
        entry("freeze", "Can I pause my membership?", "Choose Freeze in the app, then pick the weeks."),
        entry("classes", "Which classes do you run?", "We run Spin, Pilates and Body Pump on Monday. Spin is free."),
    ]
    vocabulary = kb_vocabulary(entries, "Bright Gym")
    assert vocabulary == (
        "Thanks for calling Bright Gym: Spin, Settings, Freeze, Pilates, Body Pump. How can I help you today?"
    )


def test_vocabulary_ranks_recurring_names_first_and_keeps_to_its_budget():
    names = [f"Plan{chr(ord('A') + i)}x" for i in range(40)]
    entries = [entry(f"e{i}", f"What is {name}?", f"{name} is a plan.") for i, name in enumerate(names)]
    entries.append(
        entry("top", "Which plan is best?", "Most people pick PlanZz: PlanZz is cheap and PlanZz has no contract.")
    )
    vocabulary = kb_vocabulary(entries, "Acme Mobile", max_chars=120)
    assert len(vocabulary) <= 120
    assert vocabulary.startswith("Thanks for calling Acme Mobile: PlanZz, PlanAx, PlanBx")
    assert vocabulary.endswith(". How can I help you today?")


def test_no_names_and_no_company_give_no_vocabulary():
    assert kb_vocabulary([entry("hours", "When are you open?", "We are open every day from 9 to 5.")]) == ""


@pytest.fixture(scope="module")
def sample_vocabulary() -> str:
    kb = load_knowledge_base(SAMPLE_KB)
    return kb_vocabulary(kb.entries, kb.company.name)


@pytest.fixture(scope="module")
def biased(settings, sample_vocabulary) -> WhisperTranscriber:
    options = SttOptions(language=settings.voice.language, vocabulary=sample_vocabulary)
    return WhisperTranscriber(model_path(settings.models, "stt"), threads=settings.models.threads, options=options)


@pytest.mark.models  # loads models outside the shared fixtures
def test_a_vocabulary_too_long_for_whisper_is_refused(settings):
    with pytest.raises(ValueError, match=r"STT vocabulary is \d+ tokens, Whisper takes at most 223"):
        WhisperTranscriber(model_path(settings.models, "stt"), options=SttOptions(vocabulary="Zelle " * 300))


@pytest.mark.models  # loads models outside the shared fixtures
def test_the_vocabulary_invents_nothing_on_silence_or_hiss(biased):
    hiss = (np.random.default_rng(0).standard_normal(16_000 * 2) * 0.001).astype(np.float32)
    assert not biased.transcribe(np.zeros(16_000 * 2, np.float32)).usable
    assert not biased.transcribe(hiss).usable


def _turns() -> list[tuple[str, np.ndarray]]:
    """Every caller utterance of the sample calls (not the "mm"), cut as the session cuts a turn, at 16 kHz."""
    turns = []
    for wav in SAMPLE_CALLS:
        pcm = phone_audio(wav)
        resampler = Resampler(8000, 16000)
        audio = pcm16_to_float(np.concatenate([resampler.process(pcm), resampler.flush()]))
        for line in json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))["script"]:
            if "say" in line and line["end_ms"] - line["at_ms"] > 300:
                turns.append((line["say"], audio[(line["at_ms"] - PREROLL_MS) * 16 : (line["end_ms"] + TAIL_MS) * 16]))
    return turns


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def _word_errors(said: str, heard: str) -> int:
    a, b = _words(said), _words(heard)
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def test_the_kb_vocabulary_does_not_hurt_the_sample_calls(transcriber, biased, sample_vocabulary):
    turns = _turns()
    words = sum(len(_words(said)) for said, _ in turns)
    errors = {"plain": 0, "vocabulary": 0}
    times: dict[str, list[float]] = {"plain": [], "vocabulary": []}
    for said, audio in turns:
        for name, model in (("plain", transcriber), ("vocabulary", biased)):
            start = time.perf_counter()
            heard = model.transcribe(audio)
            times[name].append((time.perf_counter() - start) * 1000)
            errors[name] += _word_errors(said, heard.text if heard.usable else "")
    print(f"\nvocabulary: {sample_vocabulary!r}")
    for name in errors:
        print(
            f"{name:>10}: WER {errors[name] / words:.3f} ({errors[name]}/{words} words, {len(turns)} turns), "
            f"STT {np.median(times[name]):.0f} ms per turn (median)"
        )
    assert errors["vocabulary"] <= errors["plain"] + 2, "the KB's vocabulary made the sample calls worse"
