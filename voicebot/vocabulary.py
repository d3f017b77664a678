"""A knowledge base's own words, for speech recognition: the names a caller may say that Whisper may not know.

Whisper spells ordinary English well; what it gets wrong on a phone line are the names of this business's world:
the company ("Maple Street Dental"), its products and plans ("Mesh Extender", "Everyday Checking"), the brands it
works with ("Delta Dental", "CareCredit", "Zelle", "Okta"), the labels in its app ("My Orders") and acronyms
("APY", "SIM"). Those are the words an FAQ writes with capitals in mid-sentence, in mixed case, or in
upper case, and seldom in lower case. Ordinary words capitalised only because they start a sentence or name a
button ("Open", "Choose Cancel") are told apart by the KB itself: they also appear in lower case somewhere in
it; the few words no KB is guaranteed to write in lower case (days, months, pronouns, titles) are listed here.

Terms are ranked by how often the KB uses them (a business's names recur), the company name first, and cut to
a character budget: every token of the prompt is decoded again on every turn.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from voicebot.kb import KbEntry

DEFAULT_MAX_CHARS = 200

# Words written with a capital in any KB that are no names of its own (function words, the verbs an FAQ gives
# its instructions with, days, months, titles): Whisper knows them, a prompt wastes tokens on them.
_ORDINARY = frozenset(
    """
    i i'm i'd i've i'll a an the we we're we'll we've our us you you're you'll you've your it it's its they
    they're their he she his her this that these those there there's here what when where which who whom why how
    yes no not ok okay please hi hello thanks thank sorry if then than and or but so also just only all any each
    every both either neither some most more less many much one two three four five six seven eight nine ten
    in on at by for from to of with without within into onto over under after before during until up down off
    out about as is are was were be been being do does did done have has had can could will would shall should
    may might must let lets get got new old first last next same other another own free open closed
    use call tap click press choose select pick enter type send email text sign log go visit see find check ask
    tell give bring make take keep put add remove change cancel return replace reset forgot enable turn set try
    pay book order apply contact dial join link lock plug note
    monday tuesday wednesday thursday friday saturday sunday weekday weekend
    mondays tuesdays wednesdays thursdays fridays saturdays sundays weekdays weekends
    january february march april june july august september october november december
    mr mrs ms dr am pm
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

# Web and mail addresses, written or spelled out ("planly dot com"): callers say them their own way, and the name
# in one is in lower case although it is a name.
_URL = re.compile(r"\S+(?:\.[a-z]{2,}|@)\S*|\S+/\S+|\w+(?: dot \w+)+")
# A sentence ends at . ! ? : or ; before a space, except after a title ("Dr. Patel").
_SENTENCE_END = re.compile(r"(?<!\bDr)(?<!\bMr)(?<!\bMs)(?<!\bMrs)(?<!\bSt)[.!?:;]+[\"')]*\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:['’\-&][A-Za-z0-9]+)*")


def kb_vocabulary(entries: Iterable[KbEntry], company_name: str = "", *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The text Whisper reads as said before each caller turn (`SttOptions.vocabulary`): the opening of a call
    to this company naming its distinctive terms, most used first, at most `max_chars` characters; empty when
    the KB names nothing and there is no company name.

    The framing matters as much as the words (measured on six businesses' caller lines, see `voicebot.stt`):
    a bare list of names makes Whisper write callers' words in Title Case and hear the names in ordinary
    words, while the same names inside a call's opening lines leave ordinary speech as it was."""
    company = " ".join(company_name.split())
    terms: list[str] = []
    for term in _ranked_terms(entries):
        if company and term.lower() in company.lower():
            continue
        longer = _opening(company, [*terms, term])
        if len(longer) > max_chars:
            break
        terms.append(term)
    return _opening(company, terms) if company or terms else ""


def _opening(company: str, terms: list[str]) -> str:
    greeting = f"Thanks for calling {company}" if company else "Thanks for calling"
    named = f": {', '.join(terms)}" if terms else ""
    return f"{greeting}{named}. How can I help you today?"


def _ranked_terms(entries: Iterable[KbEntry]) -> list[str]:
    """The KB's names, the most used first (ties in the KB's order), each once whatever its case or number."""
    sentences = [
        sentence
        for entry in entries
        for text in (*entry.questions, entry.answer)
        for sentence in _SENTENCE_END.split(_URL.sub(" ", text))
    ]
    words = [_WORD.findall(sentence) for sentence in sentences]
    lower = {word.lower() for sentence in words for word in sentence if word.islower()}
    named = {word for sentence in words for word in sentence[1:] if word[0].isupper()}  # capitalised mid-sentence
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(_names(sentence, lower, named))
    unique: dict[str, str] = {}
    for term, _count in counts.most_common():
        unique.setdefault(term.lower().removesuffix("s"), term)  # "ATMs" and "ATM" are one term
    return list(unique.values())


def _names(sentence: str, lower: set[str], named: set[str]) -> list[str]:
    """The names in one sentence: runs of capitalised words with only spaces between them."""
    runs: list[list[str]] = []
    end = None
    for match in _WORD.finditer(sentence):
        word = match.group()
        joined = end is not None and not sentence[end : match.start()].strip()  # a comma or a number ends a name
        end = match.end()
        capital = len(word) > 1 and (word[0].isupper() or _mixed_case(word))
        if capital and joined and runs and runs[-1]:
            runs[-1].append(word)
        elif capital:
            runs.append([word])
        elif not runs or runs[-1]:
            runs.append([])
    if runs and runs[0] and not _name_at_start(runs[0], lower, named):
        runs[0] = runs[0][1:]  # "Open My Orders": the sentence's first word is capitalised for the sentence
    return [" ".join(run) for run in runs if run and _distinctive(run, lower)]


def _mixed_case(word: str) -> bool:
    """ "PayPal", "eSIM", "APY": capitals where ordinary words have none, a name wherever it stands."""
    return word[1:] != word[1:].lower()


def _name_at_start(run: list[str], lower: set[str], named: set[str]) -> bool:
    """Whether the first word of a sentence's first run is part of the name, not capitalised for the sentence."""
    first = run[0]
    if _mixed_case(first) or first in named:
        return True
    return len(run) > 1 and first.lower() not in lower and first.lower() not in _ORDINARY


def _distinctive(run: list[str], lower: set[str]) -> bool:
    """Several capitalised words make a name ("My Orders") unless all are ordinary ("Monday to Friday" breaks
    anyway); a single word is one when it is mixed case or the KB never writes it in lower case."""
    if all(word.lower() in _ORDINARY for word in run):
        return False
    if len(run) > 1:
        return True
    word = run[0]
    return _mixed_case(word) or (word.lower() not in lower and word.lower() not in _ORDINARY)
