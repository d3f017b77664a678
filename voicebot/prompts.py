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
from dataclasses import replace

from voicebot.config import DialogSettings
from voicebot.kb import Company
from voicebot.llm import Message
from voicebot.routes import Line, Offer
from voicebot.tts import split_sentences

# ---------------------------------------------------------------- who answers


def company_profile(kb_company: Company, dialog: DialogSettings) -> Company:
    """The company the bot speaks for: the KB file's, with `dialog.company_name` replacing its name when set
    (a CSV knowledge base names no company, and one KB may serve several brands)."""
    name = " ".join(dialog.company_name.split())
    return replace(kb_company, name=name) if name else kb_company


def _who(company: Company) -> str:
    """ "Bright Smile Dental, a dental clinic in Leeds", either part alone, or "" when the KB names neither."""
    description = company.description.strip().rstrip(".")
    if description.split(" ", 1)[0] in ("A", "An", "The"):  # "A dental clinic" completes a sentence in lower case
        description = description[0].lower() + description[1:]
    return ", ".join(part for part in (company.name, description) if part)


# ---------------------------------------------------------------- the reply LLM

CALLER = "Caller: "
FACTS = "Facts: "


def system_prompt(company: Company, tone: str) -> str:
    """The static instructions: who the bot is, how it talks, and that it never invents facts."""
    who = _who(company)
    intro = f"You are the phone agent of {who}." if who else "You are a company's phone support agent."
    return (
        f"{intro} Be {tone}.\n"
        "You speak out loud: one or two short sentences, plain words, no lists, markdown, emoji or links.\n"
        "You know only the Facts given with a message. Never invent policies, prices, times or facts. "
        "When the Facts don't answer the caller, say you don't have that information and offer to open a "
        "ticket or to transfer the call to a colleague."
    )


# Worked examples: part of the cached prefix, so they cost nothing per turn (but every token is evaluated at
# warm-up). They show the message layout (Facts, then the caller's words) and the behaviours that matter: answer
# from the Facts only, also when the answer is "no"; decline when there are none; greet back. Any trade's caller
# could ask them.
REPLY_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        f"{FACTS}We are open Monday to Friday, 8 am to 6 pm.\n{CALLER}can I come in on Saturday",
        "No, we're open Monday to Friday, from 8 am to 6 pm.",
    ),
    (
        f"{FACTS}Changing a booking is free up to 24 hours before; after that it costs 15 dollars.\n"
        f"{CALLER}is there a charge to move my booking",
        "It's free up to 24 hours before, and 15 dollars after that.",
    ),
    (
        f"{CALLER}do you have a lost and found desk",
        "I'm sorry, I don't have that information. I can open a ticket or put you through to a colleague.",
    ),
    (f"{CALLER}hello, good morning", "Good morning! How can I help?"),
)


def reply_prefix(company: Company, tone: str) -> list[Message]:
    """The static start of every reply prompt: cached once per process, never recomputed."""
    messages = [Message("system", system_prompt(company, tone))]
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
    "Classify a caller's words to a company's phone line. Answer one word: PROBLEM (something went wrong: a "
    "fault, an outage, a wrong charge, a complaint), PERSON (wants a human or a member of staff), GOODBYE, or "
    "QUESTION (asks for information or to get something done)."
)

# Few-shot turns: the 0.5B model labels far better from examples than from the instruction alone. Several
# trades (clinic, bank, internet provider, hotel, software), so no business's words look like the only kind of
# problem. None of these sentences is in the tests.
CLASSIFIER_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("my phone line has been dead for two days", "PROBLEM"),
    ("I'd like a word with the nurse", "PERSON"),
    ("can I get a flu jab with you", "QUESTION"),
    ("okay, I'm sorted, bye for now", "GOODBYE"),
    ("someone took money out of my account", "PROBLEM"),
    ("how do I reset my password", "QUESTION"),
    ("let me speak to one of your advisors", "PERSON"),
    ("the room next to ours was noisy all night", "PROBLEM"),
    ("lovely, thank you, take care", "GOODBYE"),
    ("do you have rooms with a sea view", "QUESTION"),
    ("get me someone from the accounts team", "PERSON"),
    ("you said you would ring me back and never did", "PROBLEM"),
    ("no, nothing else, cheers", "GOODBYE"),
    ("how do I top up my prepaid phone", "QUESTION"),
    ("my bill is far higher than it should be", "PROBLEM"),
    ("please transfer me to somebody who can help", "PERSON"),
    ("I need to move my appointment to next week", "QUESTION"),
    ("how long does a refund take", "QUESTION"),
    ("I'd like to close my savings account", "QUESTION"),
    ("I've lost my card", "QUESTION"),
    ("does the software run on a Mac", "QUESTION"),
)


def classifier_prefix() -> list[Message]:
    """The classifier's static prompt (its own cached prefix, on its own llama.cpp context)."""
    messages = [Message("system", CLASSIFIER_SYSTEM)]
    for user, label in CLASSIFIER_EXAMPLES:
        messages += [Message("user", user), Message("assistant", label)]
    return messages


# ---------------------------------------------------------------- fixed lines


NAMELESS_GREETING = "Hi, thanks for calling. How can I help?"


def greeting(company: Company) -> str:
    """The KB's own greeting when it gives one, else a built-in line with the company's name, if there is one."""
    if company.greeting:
        return company.greeting
    return f"Hi, thanks for calling {company.name}. How can I help?" if company.name else NAMELESS_GREETING


def farewell(company: Company) -> str:
    """The KB's own farewell when it gives one, else a built-in line, named like the greeting."""
    if company.farewell:
        return company.farewell
    return f"Thanks for calling {company.name}. Goodbye!" if company.name else "Thanks for calling. Goodbye!"


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
# A reply the grounding check refused, the first time in a row: ask the caller to put it another way (the
# second time, FALLBACK_LINE offers a ticket or a colleague; the third, a colleague takes over).
REPHRASE_LINE = "I'm sorry, I'm not sure I have the right answer for that. Could you put it another way?"
# The second time in a row: a way forward that works on any line (a staff request is always understood).
NOT_HEARD_AGAIN_LINE = (
    "Sorry, I didn't catch that again. I can put you through to a colleague if you say: a colleague, please."
)
ANYTHING_ELSE = "Is there anything else I can help with?"
# The first sentence of a new ticket's line, by category. A company names its own categories (the KB's
# `ticket_categories`), so any name works: the generic ones below get their own words ("Billing", "billing"
# alike); any other category is a problem the caller reported, and gets the plain apology.
TICKET_SORRY = {
    "complaint": "I'm sorry to hear that.",
    "repair": "I'm sorry it's not working.",
    "fault": "I'm sorry it's not working.",
    "billing": "I'm sorry about the billing problem.",
    "other": "Thanks for telling me.",  # a ticket the caller asked for without naming a problem
}
TICKET_SORRY_DEFAULT = "I'm sorry about that."


def ticket_sorry(category: str) -> str:
    """The line that acknowledges the caller's issue before the ticket id, for any category name."""
    return TICKET_SORRY.get("_".join(category.lower().split()), TICKET_SORRY_DEFAULT)


def ticket_opened(category: str, spoken_id: str) -> str:
    """Confirms a new ticket; `spoken_id` is the id read character by character."""
    return (
        f"{ticket_sorry(category)} I've opened ticket {spoken_id} for you, and a colleague will get back to you. "
        f"{ANYTHING_ELSE}"
    )


def ticket_exists(spoken_id: str) -> str:
    """The caller raises an issue that already has a ticket in this call: repeat its id, open no other."""
    return (
        f"I've already opened ticket {spoken_id} for this, and a colleague will get back to you about it. "
        "Is there anything else?"
    )


NO_COLLEAGUE_LINE = (
    "I'm sorry, I can't reach a colleague right now. Shall I open a ticket, so that someone gets back to you?"
)
WHICH_OFFER_LINE = "Would you like a ticket, or shall I put you through to a colleague?"
# An offer is a sentence that proposes to do something ("I can open a ticket", "shall I put you through?"),
# not one that reports it done ("I've opened ticket K7M for you, and a colleague will get back to you").
_OFFERING = re.compile(
    r"\b(?:i can|i could|shall i|should i|can i|would you like|do you want|want me to|happy to|i'd be glad to)\b",
    re.IGNORECASE,
)
_OFFERS_TICKET = re.compile(
    r"\b(?:open|raise|create|log|file) (?:a |an )?(?:support )?(?:ticket|complaint)\b|"
    r"\ba ticket\b",
    re.IGNORECASE,
)
_OFFERS_PERSON = re.compile(
    r"\b(?:put you through|transfer you|connect you|(?:to|with) a colleague|speak (?:to|with) (?:a|someone))\b", re.I
)


def offer_in(text: str) -> Offer | None:
    """What the bot's words offer to do, if any: the last sentence with an offer in it counts."""
    offer = None
    for sentence in split_sentences(text):
        if not _OFFERING.search(sentence):
            continue
        ticket, person = bool(_OFFERS_TICKET.search(sentence)), bool(_OFFERS_PERSON.search(sentence))
        if ticket or person:
            offer = Offer.EITHER if ticket and person else Offer.TICKET if ticket else Offer.HANDOFF
    return offer


def line_texts(company: Company) -> dict[Line, str]:
    """What the bot says when everything else fails (`voicebot.routes.Line`), in this company's words."""
    return {
        Line.HELLO: greeting(company),
        Line.SORRY: "I'm sorry, something went wrong on my side. Could you say that again?",
        Line.NOT_HEARD: NOT_HEARD_LINE,
        Line.ONE_MOMENT: "One moment.",
        Line.STILL_THERE: "Are you still there?",
        Line.NO_INPUT_BYE: f"I can't hear anything, so I'll end the call now. {farewell(company)}",
        Line.TIME_LIMIT_BYE: f"I'm sorry, this call has reached its time limit. {farewell(company)}",
        Line.NO_COLLEAGUE: NO_COLLEAGUE_LINE,
    }


def fixed_lines(company: Company) -> list[str]:
    """Every sentence the bot says word for word, so the voice can synthesize them ahead of the first call."""
    lines = [
        greeting(company),
        farewell(company),
        FALLBACK_LINE,
        REPHRASE_LINE,
        NOT_HEARD_LINE,
        NOT_HEARD_AGAIN_LINE,
        *HANDOFF_LINES.values(),
        *TICKET_SORRY.values(),
        TICKET_SORRY_DEFAULT,
        ANYTHING_ELSE,
        NO_COLLEAGUE_LINE,
        WHICH_OFFER_LINE,
    ]
    return list(dict.fromkeys(sentence for line in lines for sentence in split_sentences(line)))


# ---------------------------------------------------------------- LLM output, made speakable

_MARKDOWN = re.compile(r"[*_`#>|~]+|\[(?P<link>[^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_BULLET = re.compile(r"(?m)^\s*(?:[-•+]|\d+[.)])\s+")
_AMOUNT = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"  # "1,000" whole, not "1" then ",000"
_SPOKEN_SYMBOLS = (
    (re.compile(r"\$\s?" + _AMOUNT), r"\1 dollars"),
    (re.compile(r"€\s?" + _AMOUNT), r"\1 euros"),
    (re.compile(r"£\s?" + _AMOUNT), r"\1 pounds"),
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
