"""Per-KB calibration: the thresholds `voicebot kb check` chooses for one knowledge base, and what it reports.

How the thresholds are calibrated
---------------------------------
A cosine score means different things in different knowledge bases (a KB whose entries all talk about orders
scores a caller's question high against several of them), so the thresholds are chosen per KB, from two sets
of lines scored against that KB's own index:

- labelled questions, from the KB itself (`LabelSource`). Each entry's alternative questions, one at a time,
  searched with that entry's alternatives hidden, so each can match only the other entries (every text) and its
  own main question and answer, as a caller's new wording would. A KB without alternative questions (most
  companies' FAQs) uses its answers instead: the whole answer and each of its sentences, searched with the
  entry's answer hidden, must find the entry by its question. That asks more than a caller does (an answer
  rarely words its question), so its scores run lower and the thresholds come out on the safe side.
- negatives: `voicebot/data/out_of_scope.json`, caller lines no support FAQ answers (general requests and
  chit-chat) and questions only a business of another trade answers (a clinic, a bank, an internet provider,
  a hotel, software, a shop, a restaurant, a garage, an airline, a government office, a few more), grouped by
  trade. A trade group that as a whole scores `OWN_TRADE_LIFT` above the median group is the KB's own trade
  ("what's the overdraft fee" is a fair question to a bank) and sits out; `CheckReport.own_trades` names it.

A question is answered as written (the direct band) when its best entry scores at least `faq` and beats the
second by at least `margin`. For each margin in `MARGINS`, `faq` starts `NEGATIVE_CLEARANCE` above the highest
negative that clears the margin (never below `FAQ_FLOOR`) and rises until the labelled questions in the band
are the right entry at least `TARGET_PRECISION` of the time; the pair that answers the most labelled questions
directly wins (ties: the lower margin, then the lower `faq`). The expected precision is that share of right
answers in the band, which holds no negative. If no pair reaches the target, `faq` is `NEVER`: nothing is read
as written and the LLM answers what it can ground. `grounded` lets the LLM answer from the closest entries; it
sits where `GROUNDED_NEGATIVES` of the negatives score above it (the LLM must decline those from its facts),
but low enough that 95% of the labelled questions whose entry is in the top `K` reach it, and between
`GROUNDED_FLOOR` and `faq`.

Measured with all-MiniLM-L6-v2 on the six businesses of tests/data/kbs/ (a shop, a dental clinic, a bank, an
internet provider, a hotel, a SaaS company), each calibrated by itself, the three with alternative questions
also without them (nine KBs), against their cases files' 219 single caller questions and 45 out-of-scope ones,
all written apart from the KBs: `faq` came out 0.60-0.68 with margins 0-0.12, `grounded` 0.26-0.35. 88 caller
questions reached the direct band and 85 were read the right answer (96.6%; the others: "can I buy bitcoin
through my checking account" 0.62 to the bank's account-opening entry, and "can you connect me to the internet,
I just moved in" to the ISP's moving entry rather than its setup entry); at the former fixed 0.77 / 0.31, 21
did. 3 of the 219 fell below `grounded`; 29 of the 45 out-of-scope ones reached it, left to the LLM to
decline. Without alternative questions the right entry comes first as often (bank 24 of 25 vs 25, ISP 21 vs
22, shop 20 of 23 vs 21) but the direct band is about half as large (25 vs 40 on those three KBs): the
callers' words score lower against one phrasing per entry. `FAQ_FLOOR` = 0.6: at 0.5 the band reads 94 right
answers of 98 but takes "can I buy an iPhone from you" (0.51, the ISP's roaming entry) too; at 0.65 it reads
72 of 72, losing 13 right answers with the 3 wrong ones. Questions that name another company score like the
KB's own question ("what is Amazon's return policy" 0.75 against the shop's "What is your return policy?", "how
do I cancel my Netflix subscription" 0.82 against a SaaS's "How do I cancel my subscription?"): no threshold on
a cosine tells them apart, so the shipped negatives name no company, and such a line is read the KB's answer.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voicebot.config import Settings
from voicebot.retrieval import BATCH_SIZE, Band, FaqIndex, Hit, Match, TextEncoder, Thresholds, ThresholdSource

log = logging.getLogger(__name__)

OUT_OF_SCOPE = Path(__file__).resolve().parent / "data" / "out_of_scope.json"
K = 3  # how many entries each calibration line is searched for
TARGET_PRECISION = 0.97
FAQ_FLOOR = 0.6
NEVER = 1.01  # a faq threshold no cosine reaches
NEGATIVE_CLEARANCE = 0.02  # above the highest negative in the direct band, for near-misses the set lacks
MARGINS = tuple(round(0.02 * step, 2) for step in range(11))
GROUNDED_NEGATIVES = 0.25
GROUNDED_LABELLED = 0.95
GROUNDED_FLOOR = 0.25
OWN_TRADE_LIFT = 0.15


class LabelSource(enum.Enum):
    """Where the labelled questions of a calibration came from."""

    ALT_QUESTIONS = "alt_questions"  # each entry's alternative questions, held out
    ANSWERS = "answers"  # the KB has none: each entry's answer and its sentences, held out
    GIVEN = "given"  # a labelled set passed to `calibrate`


@dataclass(frozen=True)
class Negative:
    """A line of the out-of-scope set; `trade` is the business it belongs to, None for one no FAQ answers."""

    text: str
    trade: str | None = None


def load_out_of_scope(path: Path = OUT_OF_SCOPE) -> list[Negative]:
    """The negatives: general lines, chit-chat and other trades' questions (see voicebot/data/out_of_scope.json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        lines = [Negative(text) for text in (*data["general"], *data["chit_chat"])]
        lines += [Negative(text, trade) for trade, texts in data["other_businesses"].items() for text in texts]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: cannot read the out-of-scope lines ({exc!r}); it must be a JSON object with lists "
            '"general" and "chit_chat" and an object "other_businesses" of trade name -> list of lines'
        ) from exc
    if not all(isinstance(line.text, str) and line.text.strip() for line in lines):
        raise ValueError(f"{path}: every out-of-scope line must be a non-empty string")
    return lines


@dataclass(frozen=True)
class Scored:
    """One calibration line and where retrieval put it."""

    text: str
    expected: str | None  # the KB id it should match; None for an out-of-scope line
    hits: tuple[Hit, ...]
    trade: str | None = None  # an out-of-scope line's trade group

    @property
    def score(self) -> float:
        return self.hits[0].score if self.hits else 0.0

    @property
    def gap(self) -> float:
        """How far the best entry is ahead of the second."""
        return self.score - (self.hits[1].score if len(self.hits) > 1 else 0.0)

    @property
    def top_id(self) -> str | None:
        return self.hits[0].entry.id if self.hits else None

    @property
    def correct(self) -> bool:
        return self.expected is not None and self.top_id == self.expected

    @property
    def in_top_k(self) -> bool:
        return any(hit.entry.id == self.expected for hit in self.hits)


@dataclass(frozen=True)
class CalibrationReport:
    """Labelled and out-of-scope lines scored against one KB, and what thresholds make of them."""

    labelled: tuple[Scored, ...]
    out_of_scope: tuple[Scored, ...]  # the negatives the thresholds were chosen against (own trade left out)
    source: LabelSource
    thresholds: Thresholds  # the thresholds the band counts use
    suggested: Thresholds  # what `choose_thresholds` makes of this data

    @property
    def accuracy(self) -> float:
        return sum(s.correct for s in self.labelled) / len(self.labelled) if self.labelled else 0.0

    @property
    def recall_at_k(self) -> float:
        return sum(s.in_top_k for s in self.labelled) / len(self.labelled) if self.labelled else 0.0

    def band_counts(self) -> dict[str, dict[Band, int]]:
        """How many lines of each kind land in each routing band at the report's thresholds."""
        groups = {
            "correct top-1": [s for s in self.labelled if s.correct],
            "wrong top-1": [s for s in self.labelled if not s.correct],
            "out-of-scope": list(self.out_of_scope),
        }
        return {
            name: {band: sum(self.thresholds.band(s.hits) is band for s in group) for band in Band}
            for name, group in groups.items()
        }

    def format(self) -> str:
        """A plain-text report: accuracy, score distributions, band counts, misses and the risky negatives."""
        n, right = len(self.labelled), sum(s.correct for s in self.labelled)
        lines = [
            f"labelled questions ({self.source.value}): {n}, top-1 accuracy {self.accuracy:.1%} ({right}/{n}), "
            f"expected entry in top {K}: {self.recall_at_k:.1%}",
            f"out-of-scope lines: {len(self.out_of_scope)}",
            "top-1 scores          min    p10    p25    med    p75    max",
        ]
        for name, group in (
            ("correct top-1", [s.score for s in self.labelled if s.correct]),
            ("wrong top-1", [s.score for s in self.labelled if not s.correct]),
            ("out-of-scope", [s.score for s in self.out_of_scope]),
        ):
            lines.append(f"  {name:<17}" + "".join(f"{v:7.3f}" for v in _quantiles(group)))
        lines.append(f"suggested: {describe(self.suggested)}")
        lines.append(
            f"bands at faq {self.thresholds.faq:.2f} / margin {self.thresholds.margin:.2f} / grounded "
            f"{self.thresholds.grounded:.2f}:  direct  grounded  none"
        )
        for name, counts in self.band_counts().items():
            lines.append(f"  {name:<17}{counts[Band.DIRECT]:>33}{counts[Band.GROUNDED]:>10}{counts[Band.NONE]:>6}")
        lines.append("misses (top-1 not the expected entry):")
        lines += [
            f"  {s.score:.3f} {s.top_id} (expected {s.expected}, in top {K}: {s.in_top_k}): {s.text}"
            for s in self.labelled
            if not s.correct
        ]
        lines.append("highest out-of-scope scores:")
        lines += [
            f"  {s.score:.3f} (ahead by {s.gap:.3f}) {s.top_id}: {s.text}"
            for s in sorted(self.out_of_scope, key=lambda s: s.score, reverse=True)[:5]
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class NearDuplicate:
    """Two entries a caller could be read the wrong one of: `text` of `first` scores `score` against `second`."""

    first: str  # entry ids
    second: str
    text: str  # the question of `first` ...
    matched: str  # ... and the text of `second` it is that close to
    score: float


@dataclass(frozen=True)
class CheckReport:
    """What `voicebot kb check` found in one knowledge base."""

    entries: int
    without_alternatives: tuple[str, ...]  # ids of entries that have no alternative questions
    near_duplicates: tuple[NearDuplicate, ...]
    own_trades: tuple[str, ...]  # out-of-scope trade groups left out as the KB's own trade
    calibration: CalibrationReport

    @property
    def thresholds(self) -> Thresholds:
        return self.calibration.suggested

    def to_dict(self) -> dict:
        t = self.thresholds
        report = self.calibration
        return {
            "entries": self.entries,
            "without_alternatives": list(self.without_alternatives),
            "near_duplicates": [
                {"first": d.first, "second": d.second, "text": d.text, "matched": d.matched, "score": round(d.score, 3)}
                for d in self.near_duplicates
            ],
            "thresholds": {
                "faq": t.faq,
                "margin": t.margin,
                "grounded": t.grounded,
                "source": t.source.value,
                "expected_precision": t.expected_precision,
            },
            "calibration": {
                "labelled_from": report.source.value,
                "labelled": len(report.labelled),
                "top1_accuracy": round(report.accuracy, 4),
                "out_of_scope": len(report.out_of_scope),
                "own_trades_left_out": list(self.own_trades),
                "bands": {
                    name: {band.value: count for band, count in counts.items()}
                    for name, counts in report.band_counts().items()
                },
            },
        }

    def format(self) -> str:
        """The report as `kb check` prints it."""
        t, report = self.thresholds, self.calibration
        counts = report.band_counts()
        right, wrong = counts["correct top-1"][Band.DIRECT], counts["wrong top-1"][Band.DIRECT]
        lines = [f"entries: {self.entries}"]
        if self.without_alternatives:
            lines.append(
                f"entries without alternative questions: {len(self.without_alternatives)} of {self.entries}: "
                + ", ".join(self.without_alternatives)
            )
        else:
            lines.append("entries without alternative questions: none")
        pairs = self.near_duplicates
        if pairs:
            lines.append(
                f"near-duplicate entries (a question of one scores {t.faq:.2f} or more against the other, so a "
                "caller between them may be read the wrong answer: make each question say what sets it apart, "
                "or merge the two):"
            )
            lines += [f"  {d.first} ~ {d.second} ({d.score:.2f}): {d.text!r} ~ {d.matched!r}" for d in pairs]
        else:
            lines.append("near-duplicate entries: none")
        labelled_from = {
            LabelSource.ALT_QUESTIONS: "alternative questions",
            LabelSource.ANSWERS: "answers and answer sentences (the KB has no alternative questions)",
            LabelSource.GIVEN: "given questions",
        }[report.source]
        own = f"; left out as this KB's own trade: {', '.join(self.own_trades)}" if self.own_trades else ""
        lines.append(
            f"calibrated on {len(report.labelled)} held-out {labelled_from}, top-1 accuracy {report.accuracy:.1%}, "
            f"and {len(report.out_of_scope)} out-of-scope lines{own}"
        )
        lines.append(f"thresholds: {describe(t)}")
        if t.expected_precision is None:
            lines.append(
                "expected precision of the direct band: no band is read as written, since no threshold keeps "
                f"the held-out lines {TARGET_PRECISION:.0%} right; the LLM answers from the closest entries"
            )
        else:
            lines.append(
                f"expected precision of the direct band: {t.expected_precision:.1%} ({right} of {right + wrong} "
                f"held-out lines in it are the right entry; {right + wrong} of {len(report.labelled)} reach it, "
                "no out-of-scope line does)"
            )
        if report.source is LabelSource.ALT_QUESTIONS and len(report.labelled) < 10:
            lines.append(
                f"note: only {len(report.labelled)} alternative questions; add some where callers word things "
                "differently and run kb check again for a firmer estimate"
            )
        return "\n".join(lines)


def describe(thresholds: Thresholds) -> str:
    """One line: the three thresholds, where they came from and the expected precision of the direct band."""
    precision = (
        "" if thresholds.expected_precision is None else f", expected precision {thresholds.expected_precision:.1%}"
    )
    faq = "never (nothing read as written)" if thresholds.faq > 1 else f"{thresholds.faq:.2f}"
    return (
        f"faq {faq} and ahead of the second entry by {thresholds.margin:.2f}, grounded {thresholds.grounded:.2f} "
        f"({thresholds.source.value}{precision})"
    )


def score_lines(
    index: FaqIndex,
    lines: Sequence[str],
    expected: Sequence[str | None] | None = None,
    trades: Sequence[str | None] | None = None,
    *,
    progress: bool = False,
) -> list[Scored]:
    """Search each line in `index`; `expected` gives each line's right entry id (None: out of scope)."""
    labels = list(expected) if expected is not None else [None] * len(lines)
    groups = list(trades) if trades is not None else [None] * len(lines)
    scored: list[Scored] = []
    with tqdm(total=len(lines), desc="scoring lines", unit="line", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(lines), BATCH_SIZE):
            batch = list(lines[start : start + BATCH_SIZE])
            for offset, hits in enumerate(index.rank(index.encode(batch), K)):
                number = start + offset
                scored.append(Scored(batch[offset], labels[number], tuple(hits), groups[number]))
            bar.update(len(batch))
    return scored


def held_out(index: FaqIndex) -> tuple[list[Scored], LabelSource]:
    """The KB's own labelled lines, each searched with its entry's other phrasings hidden (see above)."""
    rows = index.rows
    mains = {row.entry: number for number, row in reversed(list(enumerate(rows)))}  # an entry's first row
    queries = [n for n, row in enumerate(rows) if row.match is Match.QUESTION and mains[row.entry] != n]
    source = LabelSource.ALT_QUESTIONS
    if not queries:
        source = LabelSource.ANSWERS
        queries = [n for n, row in enumerate(rows) if row.match is Match.ANSWER]
    hide = [[m for m in queries if rows[m].entry == rows[n].entry] for n in queries]
    ranked = index.rank(index.row_vectors()[queries], K, hide)
    scored = [
        Scored(rows[n].text, index.entries[rows[n].entry].id, tuple(hits))
        for n, hits in zip(queries, ranked, strict=True)
    ]
    return scored, source


def own_trades(negatives: Sequence[Scored]) -> tuple[str, ...]:
    """The trade groups that score as a whole `OWN_TRADE_LIFT` above the median group: the KB's own trade."""
    groups: dict[str, list[float]] = {}
    for scored in negatives:
        if scored.trade is not None:
            groups.setdefault(scored.trade, []).append(scored.score)
    if len(groups) < 3:  # too few groups to tell one apart
        return ()
    means = {trade: statistics.fmean(scores) for trade, scores in groups.items()}
    middle = statistics.median(means.values())
    return tuple(sorted(trade for trade, mean in means.items() if mean >= middle + OWN_TRADE_LIFT))


def choose_thresholds(labelled: Sequence[Scored], negatives: Sequence[Scored]) -> Thresholds:
    """The thresholds for this data (see the module docstring): the largest direct band that stays right."""
    if not labelled or not negatives:
        raise ValueError("calibration needs at least one labelled and one out-of-scope line")
    best: tuple[int, float, float] | None = None  # (right answers, -margin, -faq)
    precision = None
    top = max(s.score for s in labelled)
    for margin in MARGINS:
        risky = max((s.score for s in negatives if s.gap >= margin), default=0.0)
        for faq in _hundredths(max(FAQ_FLOOR, _ceil2(risky + NEGATIVE_CLEARANCE)), top):
            band = [s for s in labelled if s.score >= faq and s.gap >= margin]
            right = sum(s.correct for s in band)
            if right < TARGET_PRECISION * len(band) or not band:
                continue
            if best is None or (right, -margin, -faq) > best:
                best, precision = (right, -margin, -faq), right / len(band)
            break  # a higher faq at this margin answers no more
    faq, margin = (NEVER, 0.0) if best is None else (-best[2], -best[1])
    answerable = [s.score for s in labelled if s.in_top_k] or [s.score for s in labelled]
    grounded = min(
        float(np.quantile([s.score for s in negatives], 1 - GROUNDED_NEGATIVES)),
        float(np.quantile(answerable, 1 - GROUNDED_LABELLED, method="lower")),
    )
    grounded = min(faq, max(GROUNDED_FLOOR, _floor2(grounded)))
    return Thresholds(faq, grounded, margin, ThresholdSource.CALIBRATED, precision)


def near_duplicates(index: FaqIndex, faq: float) -> list[NearDuplicate]:
    """Pairs of entries where a question of one, with its own entry hidden, scores `faq` or more on the other."""
    rows = index.rows
    questions = [n for n, row in enumerate(rows) if row.match is Match.QUESTION]
    hide = [[m for m, other in enumerate(rows) if other.entry == rows[n].entry] for n in questions]
    found: dict[frozenset[str], NearDuplicate] = {}
    for n, hits in zip(questions, index.rank(index.row_vectors()[questions], 1, hide), strict=True):
        if not hits or hits[0].score < faq:
            continue
        first, hit = index.entries[rows[n].entry].id, hits[0]
        pair = frozenset((first, hit.entry.id))
        if pair not in found or hit.score > found[pair].score:
            found[pair] = NearDuplicate(first, hit.entry.id, rows[n].text, hit.matched, hit.score)
    return sorted(found.values(), key=lambda d: d.score, reverse=True)


def check_kb(index: FaqIndex, out_of_scope: Sequence[Negative], *, progress: bool = False) -> CheckReport:
    """Everything `kb check` reports about `index`'s KB, the calibrated thresholds included."""
    labelled, source = held_out(index)
    scored = score_lines(
        index, [n.text for n in out_of_scope], trades=[n.trade for n in out_of_scope], progress=progress
    )
    own = own_trades(scored)
    negatives = tuple(s for s in scored if s.trade not in own)
    thresholds = choose_thresholds(labelled, negatives)
    return CheckReport(
        entries=len(index.entries),
        without_alternatives=tuple(entry.id for entry in index.entries if not entry.alt_questions),
        near_duplicates=tuple(near_duplicates(index, thresholds.faq)),
        own_trades=own,
        calibration=CalibrationReport(tuple(labelled), negatives, source, thresholds, thresholds),
    )


def load_calibrated_index(
    settings: Settings, kb_path: Path, embedder: TextEncoder, *, progress: bool = False
) -> FaqIndex:
    """The KB's index with thresholds calibrated for it: stored ones, else calibrated now (a few seconds, once
    per KB version) rather than routing by defaults measured on another KB. `voicebot kb check` does the same
    and reports what it found."""
    index = FaqIndex.build_or_load(
        kb_path,
        embedder,
        progress=progress,
        default_thresholds=Thresholds.from_settings(settings.dialog),
    )
    if index.thresholds.source is ThresholdSource.DEFAULT:
        thresholds = calibrate_thresholds(index, load_out_of_scope())
        index.store_thresholds(thresholds)
        log.info("calibrated the thresholds of %s: %s", kb_path, describe(thresholds))
    return index


def calibrate_thresholds(index: FaqIndex, out_of_scope: Sequence[Negative]) -> Thresholds:
    """The thresholds for `index`'s KB, from its held-out questions and the out-of-scope lines."""
    return check_kb(index, out_of_scope).thresholds


def calibrate(
    index: FaqIndex,
    labelled: Sequence[tuple[str, str]],
    out_of_scope: Sequence[Negative],
    *,
    thresholds: Thresholds | None = None,
) -> CalibrationReport:
    """Score `(caller line, expected id)` pairs written apart from the KB against it, with the negatives.

    A check on the KB's own calibration with callers' real wording (tests/data/paraphrases.json): band counts
    at `thresholds` (else at what this data suggests).
    """
    if not labelled or not out_of_scope:
        raise ValueError("calibration needs at least one labelled and one out-of-scope line")
    unknown = sorted({expected for _, expected in labelled} - {entry.id for entry in index.entries})
    if unknown:
        raise ValueError(f"labelled questions expect ids that are not in the knowledge base: {', '.join(unknown)}")
    scored = score_lines(index, [text for text, _ in labelled], [expected for _, expected in labelled])
    negatives = score_lines(index, [n.text for n in out_of_scope], trades=[n.trade for n in out_of_scope])
    own = own_trades(negatives)
    negatives = [s for s in negatives if s.trade not in own]
    suggested = choose_thresholds(scored, negatives)
    return CalibrationReport(tuple(scored), tuple(negatives), LabelSource.GIVEN, thresholds or suggested, suggested)


def _hundredths(start: float, stop: float) -> list[float]:
    """Hundredths from `start` up to `stop`, both rounded to hundredths."""
    return [value / 100 for value in range(round(start * 100), math.ceil(round(stop * 100, 6)) + 1)]


def _ceil2(value: float) -> float:
    return math.ceil(round(value * 100, 6)) / 100


def _floor2(value: float) -> float:
    return math.floor(round(value * 100, 6)) / 100


def _quantiles(values: list[float]) -> list[float]:
    if not values:
        return []
    if len(values) == 1:
        return [values[0]] * 6
    cuts = statistics.quantiles(values, n=20, method="inclusive")  # cuts[i] is the (i+1)*5th percentile
    return [min(values), cuts[1], cuts[4], statistics.median(values), cuts[14], max(values)]
