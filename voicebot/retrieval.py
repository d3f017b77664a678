"""FAQ retrieval: each knowledge-base entry's questions and answer as unit vectors in a FAISS inner-product index.

Rows: every question and alternative question of an entry (`Match.QUESTION`), and its answer, whole and sentence
by sentence (`Match.ANSWER`), so "do you take Delta Dental" finds the entry whose answer names the plan even
when its question only says "Which insurance plans do you accept?". A caller's words are embedded the same way;
the inner product is their cosine similarity. An answer row's cosine is multiplied by `ANSWER_WEIGHT` (0.9)
before rows compete, so a caller who says an entry's question gets that entry, whatever answer shares their
words. `search` keeps each entry's best row, so `Hit.score` is "how close is the caller to anything this entry
answers" and `Hit.match` says whether a question or the answer was closest.

Measured with all-MiniLM-L6-v2 on 219 single caller questions over six businesses' KBs (tests/data/kbs/: a
shop, a dental clinic, a bank, an internet provider, a hotel, a SaaS company; each with and without its
alternative questions): the right entry first for 90.0% (197/219) with answers indexed, 80.8% (177/219)
with questions only; weights 0.8 to 1.0 are within one question of each other, and blends of the question and
answer scores did no better. Of 33 lines that need a fact found only in an answer, 28 find their entry with
answer sentences indexed, 26 with whole answers only. Sentences under `MIN_SENTENCE_WORDS` words ("Yes.")
would match any short reply, so they stay part of the whole answer only.

Routing reads `FaqIndex.thresholds`: at or above `faq`, and at least `margin` above the second entry, the answer
is read as written; from `grounded` the LLM answers from the closest entries. `voicebot kb check` calibrates
them for one knowledge base (see `voicebot.calibration`) and stores them beside the index; a KB never checked
gets the defaults from the settings (`ThresholdSource.DEFAULT`).

The index is persisted so a restart costs a file read, not an embedding pass over the whole knowledge base.
It lives in `<kb folder>/.voicebot-index/<kb file name>.<key>.faiss` with a `.json` sidecar (and the calibrated
`.thresholds.json`), where `key` is the first 12 hex digits of the sha256 of the file's bytes, the embedder's
identity (a fingerprint of the vector it gives a fixed probe sentence, so a different or changed model never
reuses stale vectors) and `INDEX_FORMAT`. Editing the file changes the key, so the next `build_or_load` rebuilds,
drops the thresholds calibrated for the old text and removes the stale files. When the KB's folder is not
writable (a read-only mount, a shared folder), the index goes under `<data folder>/kb-index/` instead, named with
a hash of the KB's path so two knowledge bases with the same file name don't clash. Files are written to a
temporary name and renamed, the sidecar last, so a killed build never leaves a pair that loads.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
from tqdm import tqdm

from voicebot.config import DialogSettings
from voicebot.data_dir import data_dir
from voicebot.kb import KbEntry, parse_kb, read_kb_bytes

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: answers are indexed too
THRESHOLDS_FORMAT = 1
CACHE_FOLDER = ".voicebot-index"
BATCH_SIZE = 64
PROBE = "Where is my order? I would like to return it."
ANSWER_WEIGHT = 0.9
MIN_SENTENCE_WORDS = 4  # shorter answer sentences ("Yes.", "It's free.") are not indexed on their own
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class TextEncoder(Protocol):
    """What the index needs of an embedder (`voicebot.embedder.Embedder`): unit vectors of a fixed size."""

    dimension: int

    def encode(self, texts: Sequence[str], *, batch_size: int = ..., progress: bool = ...) -> np.ndarray: ...


class Match(enum.Enum):
    """Which side of an entry the caller's words were closest to."""

    QUESTION = "question"  # the question or one of its alternative phrasings
    ANSWER = "answer"  # the answer, whole or one of its sentences


@dataclass(frozen=True)
class Hit:
    """One entry a search found, with the text of it that was closest to the caller's words."""

    entry: KbEntry
    score: float  # cosine similarity of the caller's words to `matched` (times ANSWER_WEIGHT for an answer)
    matched: str  # the question, alternative question, answer or answer sentence closest to the caller's words
    match: Match


@dataclass(frozen=True)
class Row:
    """One indexed text: which entry it belongs to (position in `FaqIndex.entries`) and what it is."""

    entry: int
    match: Match
    text: str


class ThresholdSource(enum.Enum):
    CALIBRATED = "calibrated"  # by `voicebot kb check` for this knowledge base and embedder
    DEFAULT = "default"  # the settings' values: the KB was never checked (or changed since)


class Band(enum.Enum):
    """What a search result allows, at a set of thresholds."""

    DIRECT = "direct"  # read the best entry's answer as written
    GROUNDED = "grounded"  # let the LLM answer from the closest entries
    NONE = "none"  # nothing in the KB is close enough to answer from


@dataclass(frozen=True)
class Thresholds:
    """Where retrieval scores switch routes, for one knowledge base."""

    faq: float  # the best entry's answer is read as written when its score is at least this ...
    grounded: float  # the LLM answers from the closest entries when the best score is at least this
    margin: float  # ... and it is ahead of the second entry by at least this
    source: ThresholdSource
    expected_precision: float | None = None  # share of right answers in the direct band on the calibration data

    @classmethod
    def from_settings(cls, dialog: DialogSettings) -> Thresholds:
        """The defaults for a knowledge base `kb check` never calibrated."""
        return cls(dialog.faq_threshold, dialog.grounded_threshold, dialog.faq_margin, ThresholdSource.DEFAULT)

    def band(self, hits: Sequence[Hit]) -> Band:
        """The band of a search result (best first; pass at least two hits so the margin can be checked)."""
        if not hits:
            return Band.NONE
        top = hits[0].score
        second = hits[1].score if len(hits) > 1 else 0.0
        if top >= self.faq and top - second >= self.margin:
            return Band.DIRECT
        return Band.GROUNDED if top >= self.grounded else Band.NONE


def answer_texts(answer: str) -> tuple[str, ...]:
    """The answer's indexed texts: the whole answer, then each sentence long enough to stand for it."""
    sentences = [s for s in SENTENCE_END.split(answer.strip()) if len(s.split()) >= MIN_SENTENCE_WORDS]
    return (answer, *sentences) if len(sentences) > 1 else (answer,)


def index_rows(entries: Sequence[KbEntry]) -> tuple[Row, ...]:
    """Every text the index holds, entry by entry (an entry's rows are contiguous, questions first)."""
    rows: list[Row] = []
    for number, entry in enumerate(entries):
        rows += [Row(number, Match.QUESTION, question) for question in entry.questions]
        rows += [Row(number, Match.ANSWER, text) for text in dict.fromkeys(answer_texts(entry.answer))]
    return tuple(rows)


def embedder_identity(embedder: TextEncoder) -> str:
    """A short fingerprint of the model: its dimension and the vector it gives a fixed sentence.

    Rounded to 4 decimals so thread-count noise in the last bits doesn't force a rebuild, while any other model
    or changed weights give a different identity.
    """
    vector = np.round(embedder.encode([PROBE])[0].astype(np.float64), 4)
    digest = hashlib.sha256(vector.tobytes()).hexdigest()[:16]
    return f"{type(embedder).__name__}-{embedder.dimension}-{digest}"


class FaqIndex:
    """Entries of one knowledge base, the index of their texts and the thresholds to route by, ready to `search`."""

    def __init__(
        self,
        entries: list[KbEntry],
        index: faiss.Index,
        embedder: TextEncoder,
        *,
        path: Path | None,
        built: bool,
        thresholds: Thresholds,
        key: str,
    ) -> None:
        self.entries = entries
        self.path = path  # the persisted .faiss file, or None when no folder could be written
        self.built = built  # True when this call embedded the texts, False when it loaded them
        self.thresholds = thresholds  # calibrated for this KB by `kb check`, else the settings' defaults
        self.key = key  # what the index and its thresholds were built from: KB bytes, embedder, format
        self.rows = index_rows(entries)
        self._index = index
        self._embedder = embedder
        kinds = np.array([row.match is Match.ANSWER for row in self.rows])
        self._weights = np.where(kinds, ANSWER_WEIGHT, 1.0).astype(np.float32)
        self._starts = np.flatnonzero(np.diff([-1, *(row.entry for row in self.rows)]))  # first row of each entry

    @property
    def vectors(self) -> int:
        return int(self._index.ntotal)

    @property
    def thresholds_path(self) -> Path | None:
        """Where `store_thresholds` writes: beside the index, named after the same key."""
        return None if self.path is None else self.path.with_name(self.path.stem + ".thresholds.json")

    @classmethod
    def build_or_load(
        cls,
        kb_path: Path,
        embedder: TextEncoder,
        *,
        progress: bool = False,
        rebuild: bool = False,
        fallback_dir: Path | None = None,
        default_thresholds: Thresholds | None = None,
    ) -> FaqIndex:
        """Load the persisted index for `kb_path` if it matches the file and embedder, else build and persist it.

        `fallback_dir` is where the index goes when the KB's own folder is read-only (default
        `<data folder>/kb-index`, voicebot.data_dir); `rebuild` ignores any persisted index (calibrated thresholds
        stay: they depend only on the key). `default_thresholds` (else `DialogSettings()`'s) apply when `kb check`
        never calibrated this KB.
        """
        kb_path = Path(kb_path)
        data = read_kb_bytes(kb_path)
        entries = parse_kb(data, kb_path)
        identity = embedder_identity(embedder)
        key = hashlib.sha256(data + f"\0{identity}\0{INDEX_FORMAT}".encode()).hexdigest()
        folders = [
            (kb_path.parent / CACHE_FOLDER, kb_path.name),
            (fallback_dir or data_dir() / "kb-index", _fallback_prefix(kb_path)),
        ]
        rows = index_rows(entries)

        def ready(index: faiss.Index, path: Path | None, built: bool) -> FaqIndex:
            found = _load_thresholds(path, key) if path is not None else None
            thresholds = found or default_thresholds or Thresholds.from_settings(DialogSettings())
            return cls(entries, index, embedder, path=path, built=built, thresholds=thresholds, key=key)

        if not rebuild:
            for folder, prefix in folders:
                index = _load(folder / f"{prefix}.{key[:12]}", key, len(rows), embedder.dimension)
                if index is not None:
                    return ready(index, folder / f"{prefix}.{key[:12]}.faiss", built=False)
        started = time.monotonic()
        index = _build([row.text for row in rows], embedder, progress=progress)
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
        return ready(index, path, built=True)

    def store_thresholds(self, thresholds: Thresholds) -> Path | None:
        """Use `thresholds` from now on and save them beside the index; None when the index has no folder."""
        self.thresholds = thresholds
        target = self.thresholds_path
        if target is None:
            return None
        record = {
            "format": THRESHOLDS_FORMAT,
            "key": self.key,
            "faq": thresholds.faq,
            "grounded": thresholds.grounded,
            "margin": thresholds.margin,
            "expected_precision": thresholds.expected_precision,
        }
        try:
            _write_atomic(target, (json.dumps(record, indent=2) + "\n").encode())
        except OSError as exc:  # an index found in a folder this process may read but not write
            log.warning("cannot store the thresholds in %s (%s); they hold for this process only", target, exc)
            return None
        return target

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The embedder's unit vectors for `texts`, as `rank` takes them."""
        return self._embedder.encode(texts, batch_size=BATCH_SIZE)

    def row_vectors(self) -> np.ndarray:
        """The stored vector of every row, in `rows` order (the calibration's held-out questions come from here)."""
        return self._index.reconstruct_n(0, self.vectors)

    def search(self, text: str, k: int = 3) -> list[Hit]:
        """The `k` entries whose questions or answers are closest to `text`, best first, one hit per entry."""
        if k < 1 or not text.strip():
            return []
        return self.rank(self.encode([text]), k)[0]

    def rank(self, queries: np.ndarray, k: int, hidden: Sequence[Collection[int]] = ()) -> list[list[Hit]]:
        """The `k` best entries for each query vector; `hidden[i]` are rows query i may not match (held out)."""
        count = self.vectors  # every row: the answer rows' weight reorders them (~1 ms for 3,000 rows)
        scores, found = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), count)
        cosine = np.empty_like(scores)
        np.put_along_axis(cosine, found, scores, axis=1)
        adjusted = cosine * self._weights
        for number, rows in enumerate(hidden):
            adjusted[number, list(rows)] = -np.inf
        best = np.maximum.reduceat(adjusted, self._starts, axis=1)  # (queries, entries)
        ends = [*self._starts[1:], count]
        results = []
        for number in range(len(queries)):
            order = np.argsort(-best[number], kind="stable")[:k]
            hits = []
            for entry in order:
                if not np.isfinite(best[number, entry]):
                    break
                row = self._starts[entry] + int(np.argmax(adjusted[number, self._starts[entry] : ends[entry]]))
                hits.append(
                    Hit(self.entries[entry], float(best[number, entry]), self.rows[row].text, self.rows[row].match)
                )
            results.append(hits)
        return results


def _fallback_prefix(kb_path: Path) -> str:
    where = hashlib.sha256(str(kb_path.resolve()).encode()).hexdigest()[:8]
    return f"{kb_path.name}-{where}"


def _build(texts: list[str], embedder: TextEncoder, *, progress: bool) -> faiss.Index:
    index = faiss.IndexFlatIP(embedder.dimension)
    with tqdm(total=len(texts), desc="embedding the KB", unit="text", disable=not progress, file=sys.stderr) as bar:
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


def _load_thresholds(index_path: Path, key: str) -> Thresholds | None:
    """The thresholds `kb check` stored beside `index_path` for exactly this key, else None."""
    path = index_path.with_name(index_path.stem + ".thresholds.json")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("key") != key or record.get("format") != THRESHOLDS_FORMAT:
            return None
        precision = record["expected_precision"]
        return Thresholds(
            faq=float(record["faq"]),
            grounded=float(record["grounded"]),
            margin=float(record["margin"]),
            source=ThresholdSource.CALIBRATED,
            expected_precision=None if precision is None else float(precision),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the unreadable thresholds %s (%s); run voicebot kb check again", path, exc)
        return None


def _save(folder: Path, prefix: str, key: str, index: faiss.Index, meta: dict) -> Path:
    """Write `<prefix>.<key12>.faiss` then its `.json` sidecar atomically; remove stale builds of the same KB."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}.{key[:12]}"
    _write_atomic(folder / f"{stem}.faiss", faiss.serialize_index(index).tobytes())
    _write_atomic(folder / f"{stem}.json", (json.dumps(meta, indent=2) + "\n").encode())
    for old in folder.glob(f"{prefix}.*"):
        suffix = old.name[len(prefix) + 1 :]
        stale_key, _, ext = suffix.partition(".")
        if len(stale_key) == 12 and stale_key != key[:12] and ext in ("faiss", "json", "thresholds.json"):
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
