"""What the caller wants beyond a question — a person, a ticket, to hang up — read from their words.

Three layers, cheapest first, none of them shaped after one company's trade:

- `read_cues` (microseconds): the grammar of the sentence. Is it a question? Does it name a person to speak to
  ("talk to the dentist", "put me through to billing")? Ask for a ticket outright? Say a plain "goodbye"?
  Negate what it mentions ("I don't need a human")? These are facts about English, not about a product range.
- `IntentMatcher` (one dot product over the caller's embedding, which retrieval computes anyway): the caller's
  words against example utterances per intent, kept as data in `voicebot/data/intents.json` and extendable by a
  deployment (`dialog.intents_path`). The router (`voicebot.routing`) weighs these scores against the knowledge
  base's best match, so a KB entry that happens to contain "not working" or "connect" is never hijacked.
- `IntentClassifier`: a one-word label from the LLM for statements in the ambiguous band, where neither the
  examples nor the knowledge base are sure ("two payments came out of my account for one order").
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from voicebot.jsonfile import read_json
from voicebot.llm import ChatModel, Message
from voicebot.prompts import INTENT_LABELS, classifier_prefix
from voicebot.retrieval import TextEncoder

INTENTS_FILE = Path(__file__).resolve().parent / "data" / "intents.json"
DEFAULT_THRESHOLD = 0.6


class Kind(StrEnum):
    """What a caller turn asks the bot to do, besides answering a question."""

    TICKET = "ticket"
    HUMAN = "human"
    BYE = "bye"
    FRUSTRATION = "frustration"
    OTHER = "other"  # questions and statements that ask for none of the above: the negatives


class IntentError(ValueError):
    """An intents file is unusable; the message names the file and the key at fault."""


# ---------------------------------------------------------------- the grammar of a sentence


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# People a caller may ask for, in any trade. "speak/talk to X" needs no list (one only speaks to people); the
# list is for verbs that also take things: "connect me to the wifi" is not a request for a person.
STAFF = (
    r"(?:someone|somebody|anyone|anybody|person|human|people|agent|representative|rep|operator|manager|supervisor|"
    r"colleague|staff|team|advisor|adviser|receptionist|reception|front desk|doctor|dentist|nurse|pharmacist|vet|"
    r"technician|engineer|specialist|consultant|officer|banker|accountant|lawyer|clerk|concierge|desk|department|"
    r"office|sales|billing|support|customer service|service desk|helpdesk|help desk)"
)
STAFF_REQUEST = _words(
    r"\b(?:speak|talk|chat) (?:to|with) (?!you\b|yourself\b|about\b|me\b)\w+",
    # "is there a manager I can talk to", "is Doctor Patel free to speak" (not "do your staff speak Spanish")
    rf"\b{STAFF}\b[^.?!]{{0,30}}\b(?:talk|speak)(?= to\b| with\b|\W*$)",
    rf"\b(?:transfer|connect|put) me (?:through )?(?:to|with) (?:a |an |the |your |some |one of your )?"
    rf"(?:\w+ )?{STAFF}\b",
    r"\bput me through\b",
    r"\b(?:want|need|get|give|have|see) (?:me )?(?:a |an |the |your |to )?(?:real |live |actual )?"
    r"(?:human|person|agent|representative|operator|manager|supervisor|someone real)\b",
    r"\b(?:real|live|actual) (?:person|human|agent|people)\b",
    rf"^\W*(?!and\b|or\b|also\b|but\b|what\b|how\b)(?:an? |the |your )?(?:\w+ ){{0,2}}{STAFF}(?:,? please)?\W*$",
    r"\b(?:isn'?t|is not|not) an? (?:machine|robot|bot|computer|recording)\b",
)
TICKET_REQUEST = _words(
    r"\b(?:open|file|raise|log|make|create|submit|start|lodge|report) (?:a |an |me a |up a )?"
    r"(?:\w+ )?(?:ticket|case|complaint|claim)\b",
    r"^\W*(?:(?:yes|yeah|yep|ok(?:ay)?|sure|please)\W+)*(?:a |the )?ticket\b",
    r"\bticket,? please\b",
)
GOODBYE = _words(
    r"\b(?:good ?bye|bye(?: bye)?)\b", r"\bhave a (?:nice|good|great|lovely) (?:day|one|evening|weekend)\b"
)
FRUSTRATION = _words(
    r"\b(?:this is|that is|it is|this'?s|that'?s|it'?s|you are|you'?re) (?:so |just |completely |totally )?"
    r"(?:useless|pointless|ridiculous|hopeless|a joke)\b",
    r"\byou'?re (?:not|no) help(?:ing|ful)?\b",
    r"\bwaste of (?:my )?time\b",
    r"\b(?:fed up|sick of this|so frustrat\w*|this is frustrat\w*)\b",
    r"\b(?:damn|damned|crap|shit\w*|fuck\w*|bloody)\b",
)
# The business let the caller down, in words any trade uses: "you charged me", "still hasn't arrived", "nobody
# called back", "keeps dropping", "sent the wrong one". A problem the KB covers becomes a ticket only with these.
GRIEVANCE = _words(
    r"\byou (?:guys )?(?:charged|billed|took|sent|gave|told|said|promised|cancelled|lost|broke|damaged|forgot)\b",
    r"\b(?:got|was|were|been|being|get) (?:double[- ]?)?(?:charged|billed|overcharged)\b",
    r"\bstill (?:not|no|hasn'?t|haven'?t|isn'?t|aren'?t|can'?t|won'?t|doesn'?t|don'?t|didn'?t|waiting|broken)\b",
    r"\b(?:nobody|no one|no-one|never) (?:called|came|came back|showed|turned up|arrived|answered|got back|replied)\b",
    r"\bnobody\b",
    r"\bkeeps? (?:\w+ing|breaking|failing|dropping|crashing)\b",
    r"\b(?:that'?s|that is|this is|it'?s|it is|was) (?:just )?(?:wrong|not right|not fair|unacceptable)\b",
    r"\bthe wrong \w+",
    r"\b(?:twice|double|overcharged|again and again|every (?:single )?time)\b",
    r"\b(?:complain\w*|refund|money back|compensat\w+)\b",
    r"\b(?:rude|unhelpful|unprofessional|ignored (?:me|us)|hung up on (?:me|us))\b",
    r"\b(?:\w+ )?(?:days?|weeks?|months?|hours?) late\b",
    r"\b(?:never|still hasn'?t|hasn'?t|didn'?t|has not|did not) (?:arrived?|come|came|shown up|turned up)\b",
)
# A request to do something with the caller's own booking, account, order or plan: the state is "transaction".
TRANSACTION = _words(
    r"\b(?:change|cancel|update|modify|track|return|exchange|swap|book|rebook|reschedule|move|upgrade|downgrade|"
    r"renew|extend|close|pause|transfer|add|remove) (?:my|our|the|an?|this|that) \w+",
)
ANSWERING_NO = re.compile(r"^\W*(?:no|nope|nah)(?: thanks?| thank you)?\s*[,.!;]", re.IGNORECASE)
NEGATION = re.compile(r"\b(?:no|not|never|without|(?:do|does|did|is|was|are|were)n'?t|no need)\b|n't\b", re.I)
FILLER = re.compile(r"^(?:\W*\b(?:hi|hello|hey|yeah|yes|so|um+|uh+|er+|ok(?:ay)?|well|and|but|oh|sorry)\b)+\W*", re.I)
QUESTION_START = re.compile(
    r"^(?:how|what(?:'s)?|when|where|which|who|why|do|does|did|is|are|was|were|has|have|can|could|will|would|may|"
    r"should|shall|am)\b",
    re.IGNORECASE,
)
# A question inside a statement: "the boiler broke, is that covered", "... can I bring it in".
EMBEDDED_QUESTION = _words(
    r"\?",
    r"\b(?:can|could|will|would|may|do|should) (?:i|you|we)\b",
    r"\bhow (?:do|does|can|long|much|many|soon|often|early|late)\b",
    r"\b(?:what|where|when|which) (?:do|does|can|should|is|are|will|time|day)\b",
    r"\b(?:is|are|was|were) (?:that|it|this|they|these|those|there) (?:still )?"
    r"(?:covered|possible|ok|okay|allowed|included|free|available|a)\b",
    r"\bi (?:want|need|would like|'d like) to know\b",
    r"\b(?:tell|show) me (?:how|what|when|where|if|whether|about)\b",
)
SMALL_TALK = re.compile(
    r"^\W*(?:(?:ok(?:ay)?|great|cool|perfect|alright|right|good|nice|fine|yes|yeah|no|hi|hello|hey|thanks?|thank you"
    r"(?: (?:so|very) much)?|cheers|sorry|wait|hold on|one moment)\W*)+$",
    re.IGNORECASE,
)
# The answer to an offer ("Shall I open a ticket?"): a short line that starts by accepting or declining it.
ANSWER_MAX_WORDS = 8
ACCEPT = re.compile(
    r"^\W*(?:(?:oh|um+|uh+|well|ok(?:ay)?|alright)\W+)?(?:yes|yeah|yep|yup|sure|please|go ahead|do it|do that|"
    r"that would be (?:great|good|nice|helpful)|that'd be (?:great|good)|sounds good|absolutely|definitely|"
    r"of course|ok(?:ay)?|alright|why not|let's do (?:it|that)|i'd like that|i would like that)\b(?!\W*(?:but|not)\b)",
    re.IGNORECASE,
)
DECLINE = re.compile(
    r"^\W*(?:(?:oh|um+|uh+|well)\W+)?(?:no|nope|nah|not now|not (?:really|yet|today)|no thanks?|no thank you|"
    r"i(?:'?m| am) (?:fine|good|okay|ok)|that'?s (?:fine|ok(?:ay)?|all right|alright)|don'?t bother|never mind)\b",
    re.IGNORECASE,
)
# A short line that only makes sense with the topic before it: "how much is it?", "and on Saturdays?",
# "what about the deluxe room?".
CONTINUATION = _words(r"^\W*(?:and|also|so|then|plus|but)\b", r"^\W*(?:what|how) about\b")
# "that" and "this" point back only at the end ("how much is that?"), not in "erase that my password".
ANAPHORA = re.compile(r"\b(?:it|they|them|those|these|there|one|ones)\b|\b(?:that|this)\W*$", re.IGNORECASE)
FOLLOW_UP_MAX_WORDS = 8


@dataclass(frozen=True)
class Cues:
    """What the sentence's grammar says, independent of any knowledge base."""

    asks: bool  # a question, or a statement with one inside
    staff_request: bool  # names a person to be put through to, not negated
    ticket_request: bool  # asks for a ticket or complaint outright
    goodbye: bool  # a plain farewell word, not inside a question
    negated: bool  # a negation anywhere ("I don't need a human")
    small_talk: bool  # thanks, greetings, acknowledgements
    frustrated: bool
    follow_up: bool  # short and leaning on the previous topic
    refers_back: bool  # ... through a pronoun ("those", "it", "there"), not only "and ..."
    transaction: bool  # asks to change, cancel, book ... something of the caller's
    grievance: bool  # says the business let them down ("you charged me twice", "still hasn't come")
    accepts: bool  # a plain yes to what the bot offered ("yes please", "sure", "go ahead", "yeah do that")
    declines: bool  # a plain no to it ("no thanks", "not now", "I'm fine")
    words: int


def _negated_at(text: str, start: int, window: int = 3) -> bool:
    """A negation among the `window` words before position `start`. A "no" that opens the line answers the bot
    ("no, put me through to a person"): it does not negate what follows."""
    before = ANSWERING_NO.sub("", text[:start])
    return bool(NEGATION.search(" ".join(before.split()[-window:])))


def _found(pattern: re.Pattern[str], text: str) -> bool:
    """`pattern` occurs in `text` somewhere not negated just before it."""
    return any(not _negated_at(text, m.start()) for m in pattern.finditer(text))


def asks_something(text: str) -> bool:
    """The caller asks a question ("how do refunds work", "it broke, is that covered") rather than only
    stating a problem: such words get an answer when the knowledge base has one, not a ticket."""
    return bool(QUESTION_START.match(FILLER.sub("", text.strip())) or EMBEDDED_QUESTION.search(text))


def _asks_back(text: str) -> bool:
    """A question after the yes ("yes, but how long does it take?"): "yeah, do that" is none."""
    return "?" in text or EMBEDDED_QUESTION.search(text) is not None


def read_cues(text: str) -> Cues:
    """The grammatical cues of one caller turn (pure, ~50 µs)."""
    text = " ".join(text.split())
    asks = asks_something(text)
    words = len(re.findall(r"[\w']+", text))
    return Cues(
        asks=asks,
        staff_request=_found(STAFF_REQUEST, text),
        ticket_request=not asks and _found(TICKET_REQUEST, text),
        goodbye=not asks and GOODBYE.search(text) is not None,
        negated=NEGATION.search(text) is not None,
        small_talk=bool(SMALL_TALK.match(text)),
        frustrated=_found(FRUSTRATION, text),
        follow_up=0 < words <= FOLLOW_UP_MAX_WORDS and bool(CONTINUATION.search(text) or ANAPHORA.search(text)),
        refers_back=0 < words <= FOLLOW_UP_MAX_WORDS and ANAPHORA.search(text) is not None,
        transaction=_found(TRANSACTION, text),
        grievance=_found(GRIEVANCE, text),
        accepts=words <= ANSWER_MAX_WORDS and ACCEPT.match(text) is not None and not _asks_back(text),
        declines=not asks and words <= ANSWER_MAX_WORDS and DECLINE.match(text) is not None,
        words=words,
    )


def is_small_talk(text: str) -> bool:
    """Thanks, greetings and acknowledgements: no knowledge-base match, but not a failed turn either."""
    return bool(SMALL_TALK.match(text))


# ---------------------------------------------------------------- examples as data


@dataclass(frozen=True)
class IntentExamples:
    """Example utterances per intent and per ticket category, with each intent's firing threshold (cosine)."""

    examples: Mapping[Kind, tuple[str, ...]]
    thresholds: Mapping[Kind, float]
    categories: Mapping[str, tuple[str, ...]]


def load_intent_examples(extra: Path | None = None) -> IntentExamples:
    """The shipped examples, plus those of `extra` (a deployment's own file of the same shape) when given."""
    examples: dict[Kind, list[str]] = {kind: [] for kind in Kind}
    thresholds: dict[Kind, float] = {}
    categories: dict[str, list[str]] = {}
    for path in filter(None, (INTENTS_FILE, extra)):
        data = _read_intents(path)
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key == "ticket_categories":
                for name, texts in _mapping(value, path, key).items():
                    categories.setdefault(name, []).extend(_strings(texts, path, f"{key}.{name}"))
                continue
            try:
                kind = Kind(key)
            except ValueError:
                known = ", ".join([*Kind, "ticket_categories"])
                raise IntentError(f"{path}: unknown intent {key!r}; known: {known}") from None
            block = _mapping(value, path, key)
            examples[kind].extend(_strings(block.get("examples", []), path, f"{key}.examples"))
            if "threshold" in block:
                threshold = block["threshold"]
                if not isinstance(threshold, int | float) or not 0 < threshold < 1:
                    raise IntentError(f"{path}: {key}.threshold must be a number between 0 and 1, not {threshold!r}")
                thresholds[kind] = float(threshold)
    return IntentExamples(
        {kind: tuple(texts) for kind, texts in examples.items()},
        {kind: thresholds.get(kind, DEFAULT_THRESHOLD) for kind in Kind},
        {name: tuple(texts) for name, texts in categories.items()},
    )


def _read_intents(path: Path) -> dict:
    data = read_json(path, "intents file", IntentError, "; fix dialog.intents_path")
    return _mapping(data, path, "the top level")


def _mapping(value: object, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise IntentError(f"{path}: {where} must be an object, found {type(value).__name__}")
    return value


def _strings(value: object, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise IntentError(f"{path}: {where} must be a list of non-empty strings")
    return [v.strip() for v in value]


@dataclass(frozen=True)
class IntentMatch:
    score: float  # cosine of the caller's words to the closest example of this intent
    example: str


class IntentMatcher:
    """The caller's embedding against every example, once per turn: a (n_examples,) dot product, ~0.1 ms."""

    def __init__(
        self, embedder: TextEncoder, examples: IntentExamples, categories: Sequence[str] | None = None
    ) -> None:
        self.thresholds = dict(examples.thresholds)
        self._kinds = [kind for kind, texts in examples.examples.items() for _ in texts]
        self._texts = [text for texts in examples.examples.values() for text in texts]
        self._vectors = embedder.encode(self._texts)
        # A company's own ticket categories (names, as written in its KB file) are matched by their names, plus
        # the shipped examples of a generic category of the same name; without them, the generic categories.
        named = {
            name: (name.replace("_", " "), *examples.categories.get(name.lower(), ())) for name in categories or ()
        }
        chosen = named or dict(examples.categories)
        self.categories = list(chosen)
        self._category_of = [n for n, texts in enumerate(chosen.values()) for _ in texts]
        self._category_vectors = embedder.encode([t for texts in chosen.values() for t in texts])

    def match(self, vector: np.ndarray) -> dict[Kind, IntentMatch]:
        """The best example of each intent for the caller's (unit) embedding."""
        scores = self._vectors @ vector
        best: dict[Kind, IntentMatch] = {}
        for row in np.argsort(-scores):
            kind = self._kinds[row]
            if kind not in best:
                best[kind] = IntentMatch(float(scores[row]), self._texts[row])
        return best

    def category(self, vector: np.ndarray) -> str:
        """The ticket category closest to the caller's words."""
        if not self.categories:
            return "complaint"
        return self.categories[self._category_of[int(np.argmax(self._category_vectors @ vector))]]


# ---------------------------------------------------------------- the LLM classifier

LABEL_KINDS: dict[str, Kind] = {
    "PROBLEM": Kind.TICKET,
    "PERSON": Kind.HUMAN,
    "GOODBYE": Kind.BYE,
    "QUESTION": Kind.OTHER,
}


@dataclass(frozen=True)
class Classification:
    kind: Kind  # OTHER: a question (or an answer the model could not be held to)
    label: str  # what the model said
    ms: float


class IntentClassifier:
    """One-word intent labels from the LLM, on its own llama.cpp context.

    The classifier's prompt is a system message plus worked examples. On the reply model's context it would
    evict the reply prompt's cached prefix and history every turn; on a context of its own both prefixes stay
    cached and a label costs only the caller's words (~15 tokens) plus one generated token.
    """

    def __init__(self, llm: ChatModel) -> None:
        self.llm = llm
        self._prefix = classifier_prefix()

    @classmethod
    def beside(cls, llm: ChatModel, context: int = 1024) -> IntentClassifier:
        """A classifier on a context of its own beside `llm`'s (`ChatModel.sibling`)."""
        return cls(llm.sibling(context))

    def warm_up(self) -> None:
        """Evaluate the static prompt once so the first caller doesn't pay for it."""
        self.classify("hello")

    def classify(self, text: str) -> Classification:
        start = time.perf_counter()
        answer = self.llm.complete([*self._prefix, Message("user", text)], max_tokens=3, temperature=0.0)
        label = next((name for name in INTENT_LABELS if answer.upper().startswith(name[:4])), "QUESTION")
        return Classification(LABEL_KINDS[label], label, (time.perf_counter() - start) * 1000)
