"""FAQ retrieval: the knowledge base's questions as unit vectors in a FAISS inner-product index.

Every question and alternative question of every entry is one vector; a caller's words are embedded the same
way and the inner product is their cosine similarity. `search` keeps each entry's best-matching question, so
`Hit.score` is "how close is the caller to anything this entry answers".

The index is persisted so a restart costs a file read, not an embedding pass over the whole knowledge base.
It lives in `<kb folder>/.voicebot-index/<kb file name>.<key>.faiss` with a `.json` sidecar, where `key` is
the first 12 hex digits of the sha256 of the file's bytes plus the embedder's identity (a fingerprint of the
vector it gives a fixed probe sentence, so a different or changed model never reuses stale vectors). Editing
the file changes the key, so the next `build_or_load` rebuilds and removes the stale files. When the KB's folder
is not writable (a read-only mount, a shared folder), the index goes under `<models dir>/kb-index/` instead,
named with a hash of the KB's path so two knowledge bases with the same file name don't clash. Files are
written to a temporary name and renamed, the sidecar last, so a killed build never leaves a pair that loads.

How the thresholds were calibrated
----------------------------------
`calibrate` runs a labelled set of caller questions and a set of out-of-scope questions through the index and
reports top-1 accuracy, top-1 score distributions and how many of each land in each band. The data:
`tests/data/paraphrases.json`, 69 spoken-style caller questions over the 22 entries of `samples/kb.json` (the
last 18 written after the KB's alternative questions were last edited, as a held-out check) and 25 out-of-scope
questions, off-topic (weather, flights, stock price, medical, the CEO's salary) and near-misses that sound like
store questions (Amazon's return policy, paying with bitcoin, car tyres, a student discount, a wifi router).
With all-MiniLM-L6-v2: top-1 accuracy 94.2% (65/69; 17/18 held out), expected entry in the top 3 for 97.1%.

    top-1 score        min    p10    p25    median  p75    max
    correct (65)      0.313  0.453  0.524  0.612   0.705  0.875
    wrong (4)         0.381  0.390  0.402  0.427   0.508  0.698
    out-of-scope (25) 0.133  0.176  0.255  0.350   0.476  0.747

The near-misses score like real paraphrases: "what is Amazon's return policy" 0.747 (to "What is your return
policy?"), "can I pay with bitcoin" 0.666, "do you do a student discount" 0.568; the worst mis-ranked paraphrase,
"has my order been sent out yet" (delivery times instead of tracking), 0.698. A KB answer read as written to any
of them would be wrong, so `faq_threshold` = 0.77: the highest of those, plus a 0.02 margin for near-misses not
in the set, rounded up. Only 3 of the 69 paraphrases clear it (at 0.70 it would be 18, with the Amazon question
among them; at 0.60, 34 plus one wrong answer and two near-misses): a cosine score cannot tell "your" policy
from a competitor's. `grounded_threshold` = 0.31, the lowest top-1 score of a paraphrase whose entry is in the
top 3, so every answerable question reaches the LLM with its entry in the prompt (62 correct, 4 mis-ranked); 16
of the 25 out-of-scope questions land there too, which is safe as long as the grounded prompt tells the LLM to
answer only from the entries it is given; 9 fall below. Run
`pytest -s tests/test_retrieval.py::test_calibration` to print the report again after changing the KB, the
paraphrases or the embedder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
from tqdm import tqdm

from models.fetch import default_models_dir
from voicebot.kb import KbEntry, parse_kb, read_kb_bytes

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
CACHE_FOLDER = ".voicebot-index"
BATCH_SIZE = 64
PROBE = "Where is my order? I would like to return it."


class TextEncoder(Protocol):
    """What the index needs of an embedder (`voicebot.embedder.Embedder`): unit vectors of a fixed size."""

    dimension: int

    def encode(self, texts: Sequence[str], *, batch_size: int = ..., progress: bool = ...) -> np.ndarray: ...


@dataclass(frozen=True)
class Hit:
    entry: KbEntry
    score: float  # cosine similarity of the caller's words to `matched`
    matched: str  # the entry's question (or alternative question) closest to the caller's words


def embedder_identity(embedder: TextEncoder) -> str:
    """A short fingerprint of the model: its dimension and the vector it gives a fixed sentence.

    Rounded to 4 decimals so thread-count noise in the last bits doesn't force a rebuild, while any other model
    or changed weights give a different identity.
    """
    vector = np.round(embedder.encode([PROBE])[0].astype(np.float64), 4)
    digest = hashlib.sha256(vector.tobytes()).hexdigest()[:16]
    return f"{type(embedder).__name__}-{embedder.dimension}-{digest}"


class FaqIndex:
    """Entries of one knowledge base and the index of their questions, ready to `search`."""

    def __init__(
        self, entries: list[KbEntry], index: faiss.Index, embedder: TextEncoder, *, path: Path | None, built: bool
    ) -> None:
        self.entries = entries
        self.path = path  # the persisted .faiss file, or None when no folder could be written
        self.built = built  # True when this call embedded the questions, False when it loaded them
        self._index = index
        self._embedder = embedder
        self._rows = [number for number, entry in enumerate(entries) for _ in entry.questions]
        self._texts = [question for entry in entries for question in entry.questions]
        self._most_per_entry = max(len(entry.questions) for entry in entries)

    @property
    def vectors(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def build_or_load(
        cls,
        kb_path: Path,
        embedder: TextEncoder,
        *,
        progress: bool = False,
        rebuild: bool = False,
        fallback_dir: Path | None = None,
    ) -> FaqIndex:
        """Load the persisted index for `kb_path` if it matches the file and embedder, else build and persist it.

        `fallback_dir` is where the index goes when the KB's own folder is read-only (default
        `<models dir>/kb-index`); `rebuild` ignores any persisted index.
        """
        kb_path = Path(kb_path)
        data = read_kb_bytes(kb_path)
        entries = parse_kb(data, kb_path)
        identity = embedder_identity(embedder)
        key = hashlib.sha256(data + f"\0{identity}\0{INDEX_FORMAT}".encode()).hexdigest()
        folders = [
            (kb_path.parent / CACHE_FOLDER, kb_path.name),
            (fallback_dir or default_models_dir() / "kb-index", _fallback_prefix(kb_path)),
        ]
        expected = sum(len(entry.questions) for entry in entries)
        if not rebuild:
            for folder, prefix in folders:
                index = _load(folder / f"{prefix}.{key[:12]}", key, expected, embedder.dimension)
                if index is not None:
                    return cls(entries, index, embedder, path=folder / f"{prefix}.{key[:12]}.faiss", built=False)
        started = time.monotonic()
        index = _build(entries, embedder, progress=progress)
        meta = {
            "format": INDEX_FORMAT,
            "key": key,
            "kb": str(kb_path.resolve()),
            "kb_sha256": hashlib.sha256(data).hexdigest(),
            "embedder": identity,
            "entries": len(entries),
            "vectors": int(index.ntotal),
            "dimension": embedder.dimension,
            "build_seconds": round(time.monotonic() - started, 3),
        }
        path = None
        for folder, prefix in folders:
            try:
                path = _save(folder, prefix, key, index, meta)
                break
            except OSError as exc:
                log.warning("cannot write the FAQ index to %s (%s); trying the next folder", folder, exc)
        else:
            log.warning("the FAQ index for %s is kept in memory only: no cache folder is writable", kb_path)
        return cls(entries, index, embedder, path=path, built=True)

    def search(self, text: str, k: int = 3) -> list[Hit]:
        """The `k` entries whose questions are closest to `text`, best first, one hit per entry."""
        if k < 1 or not text.strip():
            return []
        query = self._embedder.encode([text])
        scores, rows = self._index.search(query, min(self.vectors, k * self._most_per_entry))
        hits: dict[int, Hit] = {}
        for score, row in zip(scores[0], rows[0], strict=True):
            if row < 0:  # FAISS pads with -1 when it has fewer vectors than asked for
                break
            number = self._rows[row]
            if number not in hits:  # rows come best first, so an entry's first row is its best match
                hits[number] = Hit(self.entries[number], float(score), self._texts[row])
                if len(hits) == k:
                    break
        return list(hits.values())


def _fallback_prefix(kb_path: Path) -> str:
    where = hashlib.sha256(str(kb_path.resolve()).encode()).hexdigest()[:8]
    return f"{kb_path.name}-{where}"


def _build(entries: list[KbEntry], embedder: TextEncoder, *, progress: bool) -> faiss.Index:
    texts = [question for entry in entries for question in entry.questions]
    index = faiss.IndexFlatIP(embedder.dimension)
    with tqdm(total=len(texts), desc="embedding questions", unit="q", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), BATCH_SIZE):
            batch = texts[start : start + BATCH_SIZE]
            index.add(embedder.encode(batch, batch_size=BATCH_SIZE))
            bar.update(len(batch))
    return index


def _load(stem: Path, key: str, expected_vectors: int, dimension: int) -> faiss.Index | None:
    """The persisted index at `stem`.faiss if its sidecar says it was built from exactly this KB and model."""
    try:
        meta = json.loads(stem.with_name(stem.name + ".json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("format") != INDEX_FORMAT:
            return None
        index = faiss.read_index(str(stem.with_name(stem.name + ".faiss")))
    except (OSError, ValueError, RuntimeError) as exc:  # faiss raises RuntimeError on a truncated file
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring the unreadable FAQ index %s (%s); rebuilding it", stem, exc)
        return None
    if index.ntotal != expected_vectors or index.d != dimension:
        log.warning("ignoring the FAQ index %s: it does not match the knowledge base; rebuilding it", stem)
        return None
    return index


def _save(folder: Path, prefix: str, key: str, index: faiss.Index, meta: dict) -> Path:
    """Write `<prefix>.<key12>.faiss` then its `.json` sidecar atomically; remove stale builds of the same KB."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}.{key[:12]}"
    _write_atomic(folder / f"{stem}.faiss", faiss.serialize_index(index).tobytes())
    _write_atomic(folder / f"{stem}.json", (json.dumps(meta, indent=2) + "\n").encode())
    for old in folder.glob(f"{prefix}.*"):
        suffix = old.name[len(prefix) + 1 :]
        stale_key, _, ext = suffix.partition(".")
        if len(stale_key) == 12 and stale_key != key[:12] and ext in ("faiss", "json"):
            old.unlink(missing_ok=True)
    return folder / f"{stem}.faiss"


def _write_atomic(path: Path, data: bytes) -> None:
    # A unique name per writer, so two processes building the same index at once never share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Scored:
    """One calibration question and where retrieval put it."""

    text: str
    expected: str | None  # the KB id it should match; None for an out-of-scope question
    hits: tuple[Hit, ...]

    @property
    def score(self) -> float:
        return self.hits[0].score

    @property
    def top_id(self) -> str:
        return self.hits[0].entry.id

    @property
    def correct(self) -> bool:
        return self.top_id == self.expected

    @property
    def in_top_k(self) -> bool:
        return any(hit.entry.id == self.expected for hit in self.hits)


@dataclass(frozen=True)
class CalibrationReport:
    labelled: tuple[Scored, ...]
    out_of_scope: tuple[Scored, ...]
    k: int
    faq_threshold: float  # the thresholds the band counts use
    grounded_threshold: float
    suggested_faq_threshold: float  # just above every out-of-scope or mis-ranked top-1 score, plus the margin
    suggested_grounded_threshold: float  # at the lowest top-1 score of a question whose entry is in the top k

    @property
    def accuracy(self) -> float:
        return sum(s.correct for s in self.labelled) / len(self.labelled)

    @property
    def recall_at_k(self) -> float:
        return sum(s.in_top_k for s in self.labelled) / len(self.labelled)

    def band(self, score: float) -> str:
        if score >= self.faq_threshold:
            return "faq"
        return "grounded" if score >= self.grounded_threshold else "below"

    def band_counts(self) -> dict[str, dict[str, int]]:
        """How many questions of each kind land in each routing band at the report's thresholds."""
        groups = {
            "correct top-1": [s for s in self.labelled if s.correct],
            "wrong top-1": [s for s in self.labelled if not s.correct],
            "out-of-scope": list(self.out_of_scope),
        }
        return {
            name: {band: sum(self.band(s.score) == band for s in group) for band in ("faq", "grounded", "below")}
            for name, group in groups.items()
        }

    def format(self) -> str:
        """A plain-text report: accuracy, score distributions, band counts, misses and the risky negatives."""
        n, right = len(self.labelled), sum(s.correct for s in self.labelled)
        lines = [
            f"labelled questions: {n}, top-1 accuracy {self.accuracy:.1%} ({right}/{n}), "
            f"expected entry in top {self.k}: {self.recall_at_k:.1%}",
            f"out-of-scope questions: {len(self.out_of_scope)}",
            "top-1 scores          min    p10    p25    med    p75    max",
        ]
        for name, group in (
            ("correct top-1", [s.score for s in self.labelled if s.correct]),
            ("wrong top-1", [s.score for s in self.labelled if not s.correct]),
            ("out-of-scope", [s.score for s in self.out_of_scope]),
        ):
            lines.append(f"  {name:<17}" + "".join(f"{v:7.3f}" for v in _quantiles(group)))
        lines += [
            f"suggested thresholds: faq {self.suggested_faq_threshold:.2f}, "
            f"grounded {self.suggested_grounded_threshold:.2f}",
            f"bands at faq {self.faq_threshold:.2f} / grounded {self.grounded_threshold:.2f}:"
            "        faq  grounded  below",
        ]
        for name, counts in self.band_counts().items():
            lines.append(f"  {name:<17}{counts['faq']:>25}{counts['grounded']:>10}{counts['below']:>7}")
        lines.append("misses (top-1 not the expected entry):")
        lines += [
            f"  {s.score:.3f} {s.top_id} (expected {s.expected}, in top {self.k}: {s.in_top_k}): {s.text}"
            for s in self.labelled
            if not s.correct
        ]
        lines.append("highest out-of-scope scores:")
        lines += [
            f"  {s.score:.3f} {s.top_id}: {s.text}"
            for s in sorted(self.out_of_scope, key=lambda s: s.score, reverse=True)[:5]
        ]
        return "\n".join(lines)


def calibrate(
    index: FaqIndex,
    labelled: Sequence[tuple[str, str]],
    out_of_scope: Sequence[str],
    *,
    k: int = 3,
    margin: float = 0.02,
    faq_threshold: float | None = None,
    grounded_threshold: float | None = None,
) -> CalibrationReport:
    """Score `(question, expected id)` pairs and out-of-scope questions, and suggest routing thresholds.

    The straight-KB threshold must keep every out-of-scope and every mis-ranked question out of the band where
    a KB answer is read as written, so it sits `margin` above the highest of those scores. The grounded
    threshold is the lowest top-1 score of a question whose entry is in the top `k`, so every answerable
    question reaches the LLM with its entry. Band counts use the given thresholds, else the suggested ones.
    """
    if not labelled or not out_of_scope:
        raise ValueError("calibration needs at least one labelled and one out-of-scope question")
    known = {entry.id for entry in index.entries}
    unknown = sorted({expected for _, expected in labelled} - known)
    if unknown:
        raise ValueError(f"labelled questions expect ids that are not in the knowledge base: {', '.join(unknown)}")
    scored = tuple(Scored(text, expected, tuple(index.search(text, k))) for text, expected in labelled)
    negatives = tuple(Scored(text, None, tuple(index.search(text, k))) for text in out_of_scope)
    risky = max(s.score for s in (*negatives, *(s for s in scored if not s.correct)))
    suggested_faq = math.ceil(round((risky + margin) * 100, 6)) / 100
    answerable = [s.score for s in scored if s.in_top_k] or [s.score for s in scored]
    suggested_grounded = min(math.floor(round(min(answerable) * 100, 6)) / 100, suggested_faq)
    return CalibrationReport(
        labelled=scored,
        out_of_scope=negatives,
        k=k,
        faq_threshold=suggested_faq if faq_threshold is None else faq_threshold,
        grounded_threshold=suggested_grounded if grounded_threshold is None else grounded_threshold,
        suggested_faq_threshold=suggested_faq,
        suggested_grounded_threshold=suggested_grounded,
    )


def _quantiles(values: list[float]) -> list[float]:
    if not values:
        return []
    if len(values) == 1:
        return [values[0]] * 6
    cuts = statistics.quantiles(values, n=20, method="inclusive")  # cuts[i] is the (i+1)*5th percentile
    return [min(values), cuts[1], cuts[4], statistics.median(values), cuts[14], max(values)]
