"""What the caller wants beyond a question: a ticket, a human, or to hang up.

Two layers. The deterministic one (`detect`) is word-boundary regular expressions over the transcript: it costs
microseconds, catches the clear cases and knows a little grammar — "I don't need a human" is not a request for
one, "what is your refund policy" is a question, not a complaint. The LLM one (`IntentClassifier`) catches the
paraphrases keywords miss ("two payments came out of my account for one order"); it costs a short generation, so
the dialog calls it only when the keywords found nothing and the knowledge base has no confident answer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import StrEnum

from voicebot.config import ModelSettings
from voicebot.llm import LlamaChat, Message
from voicebot.prompts import INTENT_LABELS, classifier_prefix


class Kind(StrEnum):
    TICKET = "ticket"
    HUMAN = "human"
    BYE = "bye"


@dataclass(frozen=True)
class Intent:
    kind: Kind
    category: str | None = None  # for tickets: complaint | refund | repair | damaged_item | billing | other
    cue: str = ""  # the words that triggered it, for logs and tests


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


TICKET_REQUEST = _words(r"\b(?:open|file|raise|log|make|create) (?:a |an )?(?:ticket|case)\b")
# Order matters within TICKET_CUES: the first category that matches names the ticket.
TICKET_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "billing",
        _words(
            r"\bcharged (?:me )?(?:twice|two times|double|again|too much)\b",
            r"\bdouble[- ]?(?:charged|billed|charge)\b",
            r"\bover ?charged\b",
            r"\bwrong amount\b",
        ),
    ),
    ("refund", _words(r"\brefund(?:s|ed)?\b", r"\bmoney back\b", r"\breimburs\w*")),
    ("repair", _words(r"\brepair(?:s|ed)?\b", r"\bfix (?:it|this|them)\b")),
    (
        "damaged_item",
        _words(
            r"\b(?:broken|broke|damaged|defective|faulty|cracked|chipped|smashed|shattered|dented|torn|leaking|leaks)\b",
            r"\b(?:doesn'?t|does not|isn'?t|is not|won'?t|stopped|not) (?:work|working|turn on|switch on)\b",
        ),
    ),
    ("complaint", _words(r"\bcomplain(?:t|ts|ing|ed)?\b")),
    ("other", TICKET_REQUEST),
)

HUMAN_CUES = _words(
    r"\b(?:real|live|actual) (?:person|human|agent|people)\b",
    r"\b(?:speak|talk|chat) (?:to|with) (?:a |an |the |your |some )?"
    r"(?:someone|somebody|person|human|agent|representative|operator|manager|supervisor|colleague|staff|people)\b",
    r"\b(?:transfer|connect) me\b",
    r"\bput me through\b",
    r"\b(?:want|need|get|give) (?:me )?(?:a |an |the |your )?"
    r"(?:human|agent|representative|operator|person|manager|supervisor|colleague)\b",
    r"^\W*(?:an? )?(?:agent|human|representative|operator|manager|colleague)(?: please)?\W*$",
    r"\b(?:someone|somebody|anyone|anybody)\b[^.?!]{0,30}\b(?:talk|speak)\b",
    r"\b(?:isn'?t|is not|not) an? (?:machine|robot|bot|computer|recording)\b",
)

BYE_CUES = _words(
    r"\b(?:good ?bye|bye(?: bye)?|see you|talk to you later)\b",
    r"\bi'?m (?:all )?(?:done|set|good)(?: here)?\W*(?:thanks?|thank you|cheers)?\W*$",
    r"\bthat'?s (?:all|everything|it)(?: for (?:now|today))?\W*(?:thanks?|thank you|cheers)?\W*$",
    r"^\W*(?:no|nope|nah)\W*(?:thanks?|thank you|that'?s (?:all|it|everything))\W*$",
    r"\bnothing else\b",
    r"\bthat will be all\b",
    r"\bhave a (?:nice|good|great|lovely) (?:day|one|evening|weekend)\b",
)

FRUSTRATION_CUES = _words(
    r"\b(?:this is|that is|it is|this'?s|that'?s|it'?s|you are|you'?re) (?:so |just |completely |totally )?"
    r"(?:useless|pointless|ridiculous|hopeless|a joke)\b",
    r"\byou'?re (?:not|no) help(?:ing|ful)?\b",
    r"\b(?:you are|you're) not (?:helping|listening)\b",
    r"\bnot (?:helpful|listening)\b",
    r"\b(?:useless|stupid|dumb) (?:bot|robot|machine|system)\b",
    r"\bwaste of (?:my )?time\b",
    r"\b(?:fed up|sick of this|so frustrat\w*|this is frustrat\w*)\b",
    r"\b(?:damn|damned|crap|shit\w*|fuck\w*|bloody|hell)\b",
)

# An order action rather than a question: the dialog state becomes "transaction".
TRANSACTION_CUES = _words(
    r"\b(?:change|cancel|update|modify|track|return|exchange|swap) (?:my|the|an?|this) "
    r"(?:\w+ )?(?:order|address|parcel|package|delivery|item|size)\b",
    r"\binvoice\b",
)

NEGATION = re.compile(r"\b(?:no|not|never|without|(?:do|does|did|is|was|are|were)n'?t|no need)\b|n't\b", re.IGNORECASE)
# Fillers a transcript often starts with, skipped before looking at the first real word.
FILLER = re.compile(r"^(?:\W*\b(?:hi|hello|hey|yeah|yes|so|um+|uh+|er+|ok(?:ay)?|well|and|but|oh)\b)+\W*", re.I)
QUESTION_START = re.compile(
    r"^(?:how|what(?:'s)?|when|where|which|who|do|does|did|is|are|was|has|have|can|could|will|would|may|should)\b",
    re.IGNORECASE,
)
# A question inside a statement: "the jeans are too small, can I swap them", "... is that covered".
EMBEDDED_QUESTION = _words(
    r"\?",
    r"\b(?:can|could|will|would|may|do|should) (?:i|you|we)\b",
    r"\bhow (?:do|does|can|long|much|many|soon)\b",
    r"\b(?:what|where|when) (?:do|does|can|should|is|are|will)\b",
    r"\b(?:is|are|was|were) (?:that|it|this|they|these|those) (?:still )?"
    r"(?:covered|possible|ok|okay|allowed|under|in|on|included|free|available)\b",
)
SMALL_TALK = re.compile(
    r"^\W*(?:(?:ok(?:ay)?|great|cool|perfect|alright|right|good|nice|fine|yes|yeah|no|hi|hello|hey|thanks?|thank you"
    r"(?: (?:so|very) much)?|cheers|sorry|wait|hold on|one moment)\W*)+$",
    re.IGNORECASE,
)


def _negated(text: str, start: int, window: int = 3) -> bool:
    """A negation among the `window` words before position `start` ("I don't need a human")."""
    before = text[:start].split()[-window:]
    return bool(NEGATION.search(" ".join(before)))


def _first(pattern: re.Pattern[str], text: str, *, negatable: bool = True) -> re.Match[str] | None:
    """The first match of `pattern` in `text` that is not negated."""
    return next((m for m in pattern.finditer(text) if not (negatable and _negated(text, m.start()))), None)


def detect(text: str) -> Intent | None:
    """The keyword layer: a hand-off request wins over a ticket, a ticket over a goodbye."""
    text = " ".join(text.split())
    if match := _first(HUMAN_CUES, text):
        return Intent(Kind.HUMAN, cue=match.group(0))
    for category, pattern in TICKET_CUES:
        if match := _first(pattern, text):
            return Intent(Kind.TICKET, category, match.group(0))
    if match := _first(BYE_CUES, text, negatable=False):  # "no, that's all" is a goodbye
        return Intent(Kind.BYE, cue=match.group(0))
    return None


def ticket_category(text: str) -> str:
    """The ticket category the caller's words suggest; "complaint" when nothing more specific is said."""
    return next((category for category, pattern in TICKET_CUES if _first(pattern, text)), "complaint")


def asks_something(text: str) -> bool:
    """The caller asks a question ("how do refunds work", "it broke, is that covered") rather than only
    stating a problem: such words get an answer when the knowledge base has one, not a ticket."""
    return bool(QUESTION_START.match(FILLER.sub("", text.strip())) or EMBEDDED_QUESTION.search(text))


def is_small_talk(text: str) -> bool:
    """Thanks, greetings and acknowledgements: no knowledge-base match, but not a failed turn either."""
    return bool(SMALL_TALK.match(text))


def is_ticket_request(text: str) -> bool:
    """ "Yes, open a ticket": the issue itself was said in an earlier turn."""
    return TICKET_REQUEST.search(text) is not None


def is_frustrated(text: str) -> bool:
    return _first(FRUSTRATION_CUES, text) is not None


def is_transaction(text: str) -> bool:
    return _first(TRANSACTION_CUES, text) is not None


LABEL_KINDS: dict[str, Kind | None] = {
    "PROBLEM": Kind.TICKET,
    "PERSON": Kind.HUMAN,
    "GOODBYE": Kind.BYE,
    "QUESTION": None,
}


@dataclass(frozen=True)
class Classification:
    kind: Kind | None  # None: a question (or an answer the model could not be held to)
    label: str  # what the model said
    ms: float


class IntentClassifier:
    """One-word intent labels from the LLM, on its own llama.cpp context.

    The classifier's prompt is a system message plus worked examples. On the reply model's context it would
    evict the reply prompt's cached prefix and history every turn; on a context of its own both prefixes stay
    cached and a label costs only the caller's words (~15 tokens) plus one generated token.
    """

    def __init__(self, llm: LlamaChat) -> None:
        self.llm = llm
        self._prefix = classifier_prefix()

    @classmethod
    def beside(cls, llm: LlamaChat, models: ModelSettings, context: int = 1024) -> IntentClassifier:
        """A classifier on a second llama.cpp context over `llm`'s GGUF file. The weights are memory-mapped,
        so the second context costs its KV cache and buffers (tens of MB), not another copy of the model."""
        return cls(LlamaChat(llm.path, context=context, threads=models.threads))

    def warm_up(self) -> None:
        """Evaluate the static prompt once so the first caller doesn't pay for it."""
        self.classify("hello")

    def classify(self, text: str) -> Classification:
        start = time.perf_counter()
        answer = self.llm.complete([*self._prefix, Message("user", text)], max_tokens=3, temperature=0.0)
        label = next((name for name in INTENT_LABELS if answer.upper().startswith(name[:4])), "QUESTION")
        return Classification(LABEL_KINDS[label], label, (time.perf_counter() - start) * 1000)
