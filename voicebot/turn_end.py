"""What the caller's words say about whether their turn is over.

The VAD hears silence; it cannot tell a caller who has finished from one who is drawing breath mid-sentence
("You charged me twice on my last bill and ... I want a refund"). Whisper's transcript of the words so far can:
a sentence that stops on "and", "the", "because", a comma or a cut word is not finished. Missing closing
punctuation is no sign: Whisper leaves it out of short lines ("Okay, thank you very much. Goodbye"). The
session waits `SessionOptions.end_ms` of silence after finished-sounding words and `unfinished_end_ms` after
these.
"""

from __future__ import annotations

import enum
import re

# Words a finished English sentence almost never ends on: conjunctions, prepositions that need an object,
# articles, possessives and fillers. Words that often do end one ("thank you", "that's it", "I think so",
# "see you then", "a ticket please", "I called her") are not here. Not trade words: any caller's.
OPEN_ENDINGS = frozenset(
    [
        "and",
        "or",
        "but",
        "because",
        "although",
        "though",
        "if",
        "unless",
        "whereas",
        "plus",
        "to",
        "of",
        "for",
        "with",
        "from",
        "at",
        "by",
        "into",
        "onto",
        "than",
        "via",
        "between",
        "within",
        "without",
        "the",
        "a",
        "an",
        "my",
        "your",
        "our",
        "their",
        "um",
        "uh",
        "er",
        "erm",
    ]
)
_WORD = re.compile(r"[a-z']+")


class Ending(enum.StrEnum):
    """How the words so far end."""

    QUESTION = "question"  # a question mark: the caller has asked
    FINISHED = "finished"  # words that can end a sentence (Whisper often leaves the last full stop out)
    UNFINISHED = "unfinished"  # a trailing comma, a cut word or an open ending word ("and", "the")


def ending(text: str) -> Ending:
    """Classify the end of a transcript (Whisper's punctuation, as it hears the words so far)."""
    stripped = text.strip().rstrip("\"')]")
    if not stripped:
        return Ending.UNFINISHED
    if stripped.endswith("?"):
        return Ending.QUESTION
    if stripped.endswith(("...", "…", "-", "—", ",", ";", ":")):
        return Ending.UNFINISHED
    words = _WORD.findall(stripped.lower())
    if words and words[-1] in OPEN_ENDINGS:
        return Ending.UNFINISHED
    return Ending.FINISHED
