"""What the bot says and what it asks the LLM, written for a phone line.

Everything here is text for the ear: one or two short sentences, no markdown, lists, emoji or links, ids read
out character by character. The LLM prompts are laid out for llama.cpp's prefix cache: the static part (system
prompt and worked examples, fixed per process) comes first and is byte-identical on every call, so its KV state
is computed once at warm-up; history, knowledge-base facts and the caller's words come after it. The embedded
model (Qwen2.5-Coder-0.5B) is small: it follows worked examples far better than instructions, and every token
after the cached prefix costs about 5 ms of prompt evaluation on 2 cores, so the per-turn parts are terse.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from voicebot.config import DialogSettings
from voicebot.llm import Message
from voicebot.tts import split_sentences

# ---------------------------------------------------------------- the reply LLM

CALLER = "Caller: "
FACTS = "Facts: "


def system_prompt(dialog: DialogSettings) -> str:
    """The static instructions: who the bot is, how it talks, and that it never invents facts."""
    return (
        f"You are the phone agent of {dialog.company_name}, an online shop. Be {dialog.tone}.\n"
        "You speak out loud: one or two short sentences, plain words, no lists, markdown, emoji or links.\n"
        "You know only the Facts given with a message. Never invent policies, prices, times or facts. "
        "When the Facts don't answer the caller, say you don't have that information and offer to open a "
        "ticket or to transfer the call to a colleague."
    )


# Worked examples: part of the cached prefix, so they cost nothing per turn. They show the message layout
# (Facts, then the caller's words) and the two behaviours that matter: answer from the Facts only, and decline.
REPLY_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        f"{FACTS}Gift cards from 10 to 100 dollars are sold online.\n{CALLER}can I buy a voucher for my sister",
        "Yes, we sell gift cards from 10 to 100 dollars online.",
    ),
    (
        f"{CALLER}do you deliver to Norway",
        "I'm sorry, I don't have that information. I can open a ticket or put you through to a colleague.",
    ),
    (f"{CALLER}hello, is this the shop", "Yes, you're through to the shop. How can I help?"),
)


def reply_prefix(dialog: DialogSettings) -> list[Message]:
    """The static start of every reply prompt: cached once per process, never recomputed."""
    messages = [Message("system", system_prompt(dialog))]
    for user, assistant in REPLY_EXAMPLES:
        messages += [Message("user", user), Message("assistant", assistant)]
    return messages


def caller_message(text: str, facts: Iterable[str] = ()) -> str:
    """The user message of one turn: the knowledge-base facts (if any), then the caller's words."""
    lines = " ".join(fact.strip() for fact in facts)
    return f"{FACTS}{lines}\n{CALLER}{text}" if lines else f"{CALLER}{text}"


# ---------------------------------------------------------------- the intent classifier

INTENT_LABELS = ("PROBLEM", "PERSON", "GOODBYE", "QUESTION")

CLASSIFIER_SYSTEM = (
    "Classify the caller's words. Answer one word: PROBLEM (complaint, refund, fault, billing error), "
    "PERSON (wants a human), GOODBYE, or QUESTION."
)

# Few-shot turns: the 0.5B model labels far better from examples than from the instruction alone (measured on
# tests/test_intents.py's held-out set). None of these sentences is in the tests.
CLASSIFIER_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("my order arrived broken", "PROBLEM"),
    ("let me talk to a real person", "PERSON"),
    ("do you deliver on weekends", "QUESTION"),
    ("that's everything, thanks, goodbye", "GOODBYE"),
    ("you took the money from my card two times", "PROBLEM"),
    ("how do I reset my password", "QUESTION"),
    ("get me someone from your team", "PERSON"),
    ("the item I got is not what I ordered", "PROBLEM"),
    ("ok I'm all set, have a nice day", "GOODBYE"),
    ("what's the price of the red lamp", "QUESTION"),
    ("is a manager available", "PERSON"),
    ("this jacket fell apart after one wash", "PROBLEM"),
    ("no that's it, cheers", "GOODBYE"),
    ("can I pick up my order in person", "QUESTION"),
    ("I'm still waiting for the money you owe me", "PROBLEM"),
    ("I'd rather speak with somebody", "PERSON"),
    ("I want to buy a present for my dad", "QUESTION"),
    ("how long does it take to get my money back", "QUESTION"),
    ("I want to cancel the order I placed this morning", "QUESTION"),
    ("I forgot my password", "QUESTION"),
    ("I need to change the delivery address", "QUESTION"),
)


def classifier_prefix() -> list[Message]:
    """The classifier's static prompt (its own cached prefix, on its own llama.cpp context)."""
    messages = [Message("system", CLASSIFIER_SYSTEM)]
    for user, label in CLASSIFIER_EXAMPLES:
        messages += [Message("user", user), Message("assistant", label)]
    return messages


# ---------------------------------------------------------------- fixed lines


def greeting(dialog: DialogSettings) -> str:
    return f"Hi, thanks for calling {dialog.company_name}. How can I help?"


def farewell(dialog: DialogSettings) -> str:
    return f"Thanks for calling {dialog.company_name}. Goodbye!"


HANDOFF_LINES = {
    "requested": "Of course. I'll put you through to a colleague now.",
    "failed_turns": "Sorry I couldn't help with that. I'll put you through to a colleague now.",
    "frustration": "I'm sorry this has been frustrating. I'll put you through to a colleague now.",
    "dtmf": "Sure. I'll put you through to a colleague now.",
}
FALLBACK_LINE = (
    "I'm sorry, I don't have that information. I can open a ticket for you or put you through to a colleague."
)
NOT_HEARD_LINE = "Sorry, I didn't catch that. Could you say it again?"
TICKET_SORRY = {
    "complaint": "I'm sorry to hear that.",
    "refund": "I'm sorry about that.",
    "repair": "I'm sorry it's not working.",
    "damaged_item": "I'm sorry it arrived like that.",
    "billing": "I'm sorry about the billing problem.",
    "other": "Thanks for telling me.",
}


def ticket_opened(category: str, spoken_id: str) -> str:
    """Confirms a new ticket; `spoken_id` is the id read character by character."""
    return (
        f"{TICKET_SORRY.get(category, TICKET_SORRY['other'])} I've opened ticket {spoken_id} for you, "
        "and a colleague will get back to you. Is there anything else I can help with?"
    )


def ticket_exists(spoken_id: str) -> str:
    """The caller raises an issue that already has a ticket in this call: repeat its id, open no other."""
    return (
        f"I've already opened ticket {spoken_id} for this, and a colleague will get back to you about it. "
        "Is there anything else?"
    )


def fixed_lines(dialog: DialogSettings) -> list[str]:
    """Every sentence the bot says word for word, so the voice can synthesize them ahead of the first call."""
    lines = [greeting(dialog), farewell(dialog), FALLBACK_LINE, NOT_HEARD_LINE, *HANDOFF_LINES.values()]
    return [sentence for line in lines for sentence in split_sentences(line)]


# ---------------------------------------------------------------- LLM output, made speakable

_MARKDOWN = re.compile(r"[*_`#>|~]+|\[(?P<link>[^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_BULLET = re.compile(r"(?m)^\s*(?:[-•+]|\d+[.)])\s+")
_SPOKEN_SYMBOLS = (
    (re.compile(r"\$\s?(\d+(?:\.\d+)?)"), r"\1 dollars"),
    (re.compile(r"€\s?(\d+(?:\.\d+)?)"), r"\1 euros"),
    (re.compile(r"£\s?(\d+(?:\.\d+)?)"), r"\1 pounds"),
    (re.compile(r"(\d)\s?%"), r"\1 percent"),
    (re.compile(r"\s&\s"), " and "),
    (re.compile(r"\be\.g\.", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.e\.", re.IGNORECASE), "that is"),
)


def speakable(text: str) -> str:
    """Text the voice can read: no markdown, bullets, URLs or emoji; symbols as words; one line."""
    text = _BULLET.sub("", text)
    text = _MARKDOWN.sub(lambda m: m.group("link") or "", text)
    text = _URL.sub("", text)
    for pattern, spoken in _SPOKEN_SYMBOLS:
        text = pattern.sub(spoken, text)
    text = "".join(ch for ch in text if not _is_pictograph(ch))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.!?;:])", r"\1", text)


def _is_pictograph(ch: str) -> bool:
    """Emoji and other symbols a voice would spell out or skip awkwardly (variation selectors included)."""
    return unicodedata.category(ch) in ("So", "Sk", "Cs", "Co") or 0xFE00 <= ord(ch) <= 0xFE0F or ch == "\u200d"


class SentenceCutter:
    """Turns a stream of LLM text pieces into speakable sentences (or long clauses) as soon as each is complete.

    A sentence ends at . ! or ? followed by more text; a clause ends at , ; or : once it holds `clause_words`
    words, so the voice can start on a long first sentence early. What the caller hears is the concatenation.
    """

    def __init__(self, clause_words: int = 8) -> None:
        self.clause_words = clause_words
        self._buffer = ""

    def feed(self, piece: str) -> Iterator[str]:
        """Add a piece of generated text; yields every chunk it completes."""
        self._buffer += piece
        while True:
            cut = self._cut_point()
            if cut is None:
                return
            chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
            spoken = speakable(chunk)
            if spoken:
                yield spoken

    def flush(self) -> Iterator[str]:
        """The rest, once generation has ended."""
        spoken, self._buffer = speakable(self._buffer), ""
        if spoken:
            yield spoken

    def _cut_point(self) -> int | None:
        sentence = re.search(r"[.!?][\"')\]]*\s+\S", self._buffer)
        if sentence and not _is_abbreviation(self._buffer[: sentence.start() + 1]):
            return sentence.end() - 1
        clause = re.search(r"[,;:]\s+\S", self._buffer)
        if clause and len(self._buffer[: clause.start()].split()) >= self.clause_words:
            return clause.end() - 1
        return None


def _is_abbreviation(text: str) -> bool:
    """A title ("Mr.") or "e.g." at the end of `text` does not end a sentence."""
    return bool(re.search(r"\b(?:Mr|Mrs|Ms|Dr|St|vs|etc|e\.g|i\.e)\.$", text, re.IGNORECASE))


# ---------------------------------------------------------------- guards against invented facts
# The 0.5B model ignores "never invent" often enough (measured: "Yes, we ship to Canada.", "Shipping to Spain
# is 10 euros." with no facts given) that its sentences are checked before the caller hears them.

# "one" is left out: it is far more often a pronoun ("a smaller one") than a number.
_SMALL_NUMBERS = (
    "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty"
)
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_SMALL_NUMBERS.split(), start=2)} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "hundred": "100",
    "thousand": "1000",
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_DECLINE_OR_OFFER = re.compile(
    r"\b(?:sorry|don'?t (?:have|know)|do not (?:have|know)|not sure|unable|can'?t (?:help|answer|say)|"
    r"ticket|colleague|transfer|put you through|welcome|glad|happy to help|thank|hello|hi|good (?:morning|afternoon|"
    r"evening)|goodbye|bye)\b",
    re.IGNORECASE,
)


def numbers_in(text: str) -> set[str]:
    """The numbers `text` mentions, digits or words ("two" and "2" are the same number)."""
    return {_NUMBER_WORDS.get(match.lower(), match.replace(",", ".")) for match in _NUMBER.findall(text)}


def grounded_sentence_ok(sentence: str, sources: str) -> bool:
    """A sentence answered from facts may only mention numbers (prices, days, hours) the facts or caller said."""
    return numbers_in(sentence) <= numbers_in(sources)


def ungrounded_sentence_ok(sentence: str) -> bool:
    """Without facts the bot may decline, offer a ticket or a colleague, greet, thank or ask back, nothing else."""
    if numbers_in(sentence):
        return False
    return sentence.rstrip().endswith("?") or bool(_DECLINE_OR_OFFER.search(sentence))
