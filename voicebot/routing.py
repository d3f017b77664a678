"""One routing decision per caller turn: a pure function of the words, the conversation and the KB's matches.

`decide` weighs everything at once instead of letting the first keyword win:

1. a request for a person named as such ("can I speak to the dentist", "put me through to billing") transfers,
   unless negated; repeated frustration transfers too, and so does a third turn in a row that nothing answers
   or that was not understood (the second is offered a ticket or a colleague);
2. a confident knowledge-base match (at or above the KB's calibrated `faq` threshold, and clear of the second
   entry by `margin`) is answered as written: no word inside it ("broken", "not working", "connect me", "see
   you") can turn it into a ticket, a transfer or a hang-up;
3. an intent whose example utterances are closer to the caller's words than any KB entry, above its own
   threshold, acts: a ticket for a problem stated (never for a question), a hang-up for a farewell (never for a
   question, never for a long sentence that merely contains "bye"), a transfer for a request for a person;
   An offer the bot just made ("Shall I open a ticket?") is taken up by a plain "yes please" / "sure" / "go
   ahead", after explicit requests and before anything else;
4. a short follow-up ("how much is it?", "and on Saturdays?") is resolved against the entry the conversation
   is about;
5. otherwise the LLM answers from the closest entries (at or above `grounded`), and below that may only
   decline and offer a ticket or a colleague. A statement (not a question) goes to the LLM classifier first
   (`Decision.needs_label`): "the crown you fitted hurts and nobody called back" is close to the KB's entry
   about emergencies, but the caller is reporting a problem, not asking what to do. The classifier's "person"
   label never transfers on its own: the 0.5B model hears one in "I'd rather grab it in person".

It calls no model and touches no database, so tests drive it with hand-made hits and scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from voicebot.intents import Cues, IntentMatch, Kind
from voicebot.retrieval import Hit, Thresholds
from voicebot.routes import DialogState, HandoffReason, Offer, Route


@dataclass(frozen=True)
class Context:
    """What the routing needs to know of the conversation so far."""

    topic: str | None = None  # the KB entry the last answer was about
    failed_turns: int = 0  # turns in a row nothing answered
    frustration: int = 0  # frustrated turns so far, this one not counted
    misheard_turns: int = 0  # turns in a row the bot asked to hear again
    offer: Offer | None = None  # what the bot's last words offered to do ("Shall I open a ticket?")


@dataclass(frozen=True)
class Decision:
    route: Route
    state: DialogState
    entry_id: str | None = None  # FAQ: the entry read out; LLM: the entry its reply is mainly grounded on
    facts: tuple[Hit, ...] = ()  # LLM: the entries it may answer from, best first
    category: str | None = None  # TICKET
    reason: HandoffReason | None = None  # HANDOFF
    needs_label: bool = False  # ask the LLM classifier, then call `decide` again with its label
    low_confidence: bool = False  # nothing in the KB and no intent: counts towards a hand-off
    frustrated: bool = False  # this turn counts towards the frustration hand-off
    misheard: bool = False  # REPEAT: the words were doubtful, so the bot asks again instead of acting
    which_offer: bool = False  # REPEAT: a plain yes to "a ticket or a colleague": the bot asks which
    why: str = ""  # one line for logs, `kb eval` and tests


@dataclass(frozen=True)
class Turn:
    """Everything `decide` looks at for one caller turn."""

    text: str
    cues: Cues
    hits: Sequence[Hit]  # retrieval for the caller's words, best first
    intents: Mapping[Kind, IntentMatch]
    thresholds: Thresholds
    intent_thresholds: Mapping[Kind, float]
    context: Context = field(default_factory=Context)
    topic_hits: Sequence[Hit] = ()  # retrieval for the topic's question plus these words (follow-ups only)
    category: str = "complaint"  # the ticket category the words are closest to
    facts_margin: float = 0.08
    misheard: bool = False  # STT was unsure of these words (`Transcript.doubtful`)


FRUSTRATION_HANDOFF = 2  # frustrated turns before a colleague takes over
# Turns in a row that nothing answers: the first is declined by the LLM, the second gets the fixed offer of a
# ticket or a colleague, the third goes to a colleague (or is offered a ticket where none can take calls).
FAILED_HANDOFF = 3
MISHEARD_HANDOFF = 3  # likewise for turns not understood: asked again, asked again with a way out, handed off
BYE_MAX_WORDS = 12  # a longer sentence with "bye" in it is saying something else
# A problem is told in a few words at least; a word or two ("Amen.", Whisper's reading of a hum) is no ticket's
# summary, whatever the classifier says. An explicit request ("a ticket, please") needs no description.
TICKET_MIN_WORDS = 3


ACTIONS = frozenset({Route.TICKET, Route.HANDOFF, Route.HANGUP})


def decide(turn: Turn, label: Kind | None = None) -> Decision:
    """The route for `turn`. `label` is the LLM classifier's answer (OTHER for a question) when a first call
    returned `needs_label`; None until it was asked.

    Words the STT was unsure of (`turn.misheard`) are answered when the KB or its facts answer them, but never
    acted on: a ticket, a transfer or a hang-up, or a line that matches nothing, becomes "say that again".
    """
    if turn.misheard and turn.context.misheard_turns >= MISHEARD_HANDOFF - 1:
        return _handoff(HandoffReason.FAILED_TURNS, "a third turn in a row not understood", frustrated=False)
    decision = _decide(turn, label)
    if turn.misheard and (decision.needs_label or decision.route in ACTIONS or decision.low_confidence):
        return Decision(
            Route.REPEAT, decision.state, misheard=True, why=f"doubtful words, ask again (else: {decision.why})"
        )
    return decision


def _decide(turn: Turn, label: Kind | None) -> Decision:
    cues, ctx, limits = turn.cues, turn.context, turn.thresholds
    state = DialogState.TRANSACTION if cues.transaction else DialogState.CONSULTING
    if not turn.text.strip():
        return Decision(Route.REPEAT, state, why="nothing heard")
    frustrated = cues.frustrated or _fires(turn, Kind.FRUSTRATION, 0.0)
    if frustrated and ctx.frustration + 1 >= FRUSTRATION_HANDOFF:
        return _handoff(HandoffReason.FRUSTRATION, "frustrated again", frustrated=True)
    if cues.staff_request:
        return _handoff(HandoffReason.REQUESTED, "asks for a person by name or role", frustrated=frustrated)

    hits = list(turn.hits)
    kb = hits[0].score if hits else 0.0
    second = hits[1].score if len(hits) > 1 else 0.0
    if cues.ticket_request:
        return _ticket(turn, "asks for a ticket", frustrated)
    if ctx.offer is not None and cues.accepts:
        match ctx.offer:
            case Offer.TICKET:
                return _ticket(turn, "accepts the ticket offered", frustrated)
            case Offer.HANDOFF:
                return _handoff(HandoffReason.REQUESTED, "accepts the colleague offered", frustrated=frustrated)
            case Offer.EITHER:
                return Decision(Route.REPEAT, state, which_offer=True, why="yes to a ticket or a colleague: which?")
    if not cues.asks and cues.words <= BYE_MAX_WORDS and (cues.goodbye or _fires(turn, Kind.BYE, kb)):
        return Decision(Route.HANGUP, DialogState.CLOSING, frustrated=frustrated, why="says goodbye")
    if not cues.asks and not cues.negated and _fires(turn, Kind.HUMAN, kb):
        return _handoff(HandoffReason.REQUESTED, "sounds like a request for a person", frustrated=frustrated)

    follow = _follow_up(turn)
    if follow is not None:
        return follow
    if hits and kb >= limits.faq and kb - second >= limits.margin:
        # A confident match is answered, unless the caller says the business let them down over it ("you
        # charged me the fee although I had the money"): then the LLM classifier decides, ticket or answer.
        if not cues.asks and cues.grievance:
            if label is None:
                return Decision(
                    Route.LLM, state, needs_label=True, frustrated=frustrated, why="a problem the KB is about"
                )
            if label is Kind.TICKET:
                return _ticket(turn, "the LLM heard a problem the KB is about", frustrated)
        return Decision(Route.FAQ, state, hits[0].entry.id, frustrated=frustrated, why=f"KB match {kb:.2f}")

    describes = cues.words >= TICKET_MIN_WORDS
    if not cues.asks and describes and _fires(turn, Kind.TICKET, kb):
        return _ticket(turn, "states a problem", frustrated)
    if label is None and not cues.asks and not cues.small_talk:
        return Decision(Route.LLM, state, needs_label=True, frustrated=frustrated, why="a statement: ask the LLM")
    if label is Kind.TICKET and not cues.asks and describes and (cues.grievance or kb < limits.grounded):
        # A need the KB answers ("I lost my card", "it won't let me log in") gets the answer; a grievance, or a
        # problem the KB knows nothing about, gets a ticket.
        return _ticket(turn, "the LLM heard a problem", frustrated)
    if label is Kind.BYE and not cues.asks and cues.words <= BYE_MAX_WORDS:
        return Decision(Route.HANGUP, DialogState.CLOSING, frustrated=frustrated, why="the LLM heard a goodbye")

    floor = max(limits.grounded, kb - turn.facts_margin)
    grounded = tuple(hit for hit in hits if hit.score >= floor)
    low = not grounded and not cues.small_talk
    if low and ctx.failed_turns >= FAILED_HANDOFF - 1:
        return _handoff(HandoffReason.FAILED_TURNS, "a third turn nothing answers", frustrated=frustrated)
    if low and ctx.failed_turns == FAILED_HANDOFF - 2:
        return Decision(
            Route.FALLBACK, state, low_confidence=True, frustrated=frustrated, why="a second turn nothing answers"
        )
    return Decision(
        Route.LLM,
        state,
        grounded[0].entry.id if grounded else None,
        facts=grounded,
        low_confidence=low,
        frustrated=frustrated,
        why=f"KB {kb:.2f}: {len(grounded)} entries as facts" if grounded else f"KB {kb:.2f}: nothing to answer from",
    )


def _fires(turn: Turn, kind: Kind, kb_score: float) -> bool:
    """The intent's nearest example is its own best match among all intents, above its threshold, and closer to
    the caller's words than the knowledge base's best entry."""
    match = turn.intents.get(kind)
    if match is None or match.score < turn.intent_thresholds.get(kind, 1.0):
        return False
    rivals = [m.score for k, m in turn.intents.items() if k is not kind and k is not Kind.FRUSTRATION]
    return match.score > kb_score and all(match.score >= score for score in rivals)


def _follow_up(turn: Turn) -> Decision | None:
    """A short line leaning on the topic ("how much is it?"): answered from the topic's entry when the words
    with the topic point back at it, while the words alone find nothing better."""
    topic = turn.context.topic
    if not (turn.cues.follow_up and topic and turn.topic_hits):
        return None
    alone = turn.hits[0] if turn.hits else None
    together = turn.topic_hits[0]
    named = alone is not None and alone.entry.id != topic and alone.score >= turn.thresholds.faq
    if named and not (turn.cues.refers_back and together.entry.id == topic):
        return None  # a new topic, clearly named ("and when are you open?", not "what's the rate on those?")
    if together.entry.id != topic and (alone is None or together.entry.id == alone.entry.id):
        return None  # the words with the topic and alone agree on another entry
    facts = [hit for hit in turn.topic_hits if hit.entry.id == topic]
    facts += [hit for hit in turn.topic_hits if hit.entry.id != topic][:1]
    state = DialogState.TRANSACTION if turn.cues.transaction else DialogState.CONSULTING
    return Decision(Route.LLM, state, topic, facts=tuple(facts), why=f"follow-up on {topic}")


def _ticket(turn: Turn, why: str, frustrated: bool) -> Decision:
    return Decision(Route.TICKET, DialogState.COMPLAINT, category=turn.category, frustrated=frustrated, why=why)


def _handoff(reason: HandoffReason, why: str, *, frustrated: bool) -> Decision:
    return Decision(Route.HANDOFF, DialogState.HANDOFF, reason=reason, frustrated=frustrated, why=why)
