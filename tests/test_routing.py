"""`routing.decide` as a pure function: hand-made retrieval hits and intent scores, no model, no database.

Each case is one of the ways a caller's words and a company's KB pull against each other; the scores are the
shape of what MiniLM gives, not any KB's calibrated numbers.
"""

from __future__ import annotations

import pytest

from voicebot.intents import IntentMatch, Kind, read_cues
from voicebot.kb import KbEntry
from voicebot.retrieval import Hit, Match, Thresholds, ThresholdSource
from voicebot.routes import DialogState, HandoffReason, Offer, Route
from voicebot.routing import Context, Turn, decide

LIMITS = Thresholds(faq=0.75, grounded=0.35, margin=0.03, source=ThresholdSource.DEFAULT, expected_precision=None)
INTENT_LIMITS = {Kind.HUMAN: 0.6, Kind.BYE: 0.65, Kind.TICKET: 0.55, Kind.FRUSTRATION: 0.6, Kind.OTHER: 1.0}
EMERGENCY = KbEntry("emergency", "What should I do if I have a broken tooth?", "Call us at once: we keep slots free.")
HOURS = KbEntry("hours", "When are you open?", "We are open 8 to 6 on weekdays and 9 to 1 on Saturdays.")
WHITENING = KbEntry("whitening", "Do you offer teeth whitening?", "Yes, in-office whitening costs 350 dollars.")
WIFI = KbEntry("wifi", "How do I connect to the wifi?", "The network is Harbor-Guest; the code is on your key card.")


def hit(entry: KbEntry, score: float) -> Hit:
    return Hit(entry, score, entry.question, Match.QUESTION)


def turn(
    text: str, hits=(), context: Context | None = None, topic_hits=(), misheard: bool = False, **intents: float
) -> Turn:
    scores = {Kind.OTHER: 0.3, **{Kind[name.upper()]: score for name, score in intents.items()}}
    return Turn(
        text=text,
        cues=read_cues(text),
        hits=list(hits),
        intents={kind: IntentMatch(score, "example") for kind, score in scores.items()},
        thresholds=LIMITS,
        intent_thresholds=INTENT_LIMITS,
        context=context or Context(),
        topic_hits=list(topic_hits),
        category="fault",
        misheard=misheard,
    )


def test_a_confident_kb_match_is_never_hijacked_by_a_word_in_it() -> None:
    decision = decide(turn("I have a broken tooth and it really hurts", [hit(EMERGENCY, 0.78)], ticket=0.25))
    assert (decision.route, decision.entry_id) == (Route.FAQ, "emergency")
    # Words that sound like a complaint about what the entry covers: the LLM classifier arbitrates.
    grievance = turn("it still won't load, I cleared the cache and nothing", [hit(EMERGENCY, 0.78)], ticket=0.62)
    assert decide(grievance).needs_label
    assert decide(grievance, Kind.OTHER).route is Route.FAQ
    assert decide(grievance, Kind.TICKET).route is Route.TICKET
    decision = decide(turn("can you connect me to the wifi", [hit(WIFI, 0.8)], human=0.64))
    assert (decision.route, decision.entry_id) == (Route.FAQ, "wifi")


def test_the_kb_and_an_intent_are_weighed_together_below_the_direct_band() -> None:
    # Closer to a problem than to any entry: a ticket. Closer to the entry: the LLM answers from it.
    assert decide(turn("I tried everything, nothing else works", [hit(WIFI, 0.4)], ticket=0.7)).route is Route.TICKET
    # A statement near an entry: the LLM classifier tells a report of a problem from a need the KB covers.
    words = turn("my tooth broke, it hurts a lot", [hit(EMERGENCY, 0.7)], ticket=0.6)
    assert decide(words).needs_label
    decision = decide(words, Kind.OTHER)
    assert (decision.route, decision.entry_id) == (Route.LLM, "emergency")
    # Labelled a problem, it is still a need the KB answers; a grievance about it is a ticket.
    assert decide(words, Kind.TICKET).route is Route.LLM
    grievance = turn("the crown still hurts and nobody called me back", [hit(EMERGENCY, 0.6)], ticket=0.4)
    assert decide(grievance, Kind.TICKET).route is Route.TICKET


@pytest.mark.parametrize("text", ["when will I see you next", "can I say goodbye to my old plan?"])
def test_a_question_never_hangs_up(text: str) -> None:
    assert decide(turn(text, [hit(HOURS, 0.5)], bye=0.8)).route is Route.LLM


def test_a_question_about_a_person_is_not_a_transfer_unless_it_asks_for_one() -> None:
    assert decide(turn("do your staff speak Spanish?", [hit(HOURS, 0.3)], human=0.7)).route is not Route.HANDOFF
    decision = decide(turn("can I speak to the dentist", [hit(WHITENING, 0.45)]))
    assert (decision.route, decision.reason, decision.state) == (Route.HANDOFF, HandoffReason.REQUESTED, "handoff")


def test_goodbye_only_when_it_is_a_goodbye() -> None:
    assert decide(turn("ok that's all, thanks, bye", [hit(HOURS, 0.2)])).route is Route.HANGUP
    long = "bye the way I wanted to ask whether the appointment I booked for next week includes the x-ray"
    assert decide(turn(long, [hit(HOURS, 0.3)])).route is not Route.HANGUP


def test_a_follow_up_is_answered_from_the_topic() -> None:
    context = Context(topic="whitening")
    decision = decide(
        turn("how much is it?", [hit(HOURS, 0.3)], context, topic_hits=[hit(WHITENING, 0.6), hit(HOURS, 0.3)])
    )
    assert (decision.route, decision.entry_id) == (Route.LLM, "whitening")
    assert decision.facts[0].entry.id == "whitening"
    # A pronoun points back even when the words alone match another entry well ("the rate on those").
    words = turn("and how much is that?", [hit(HOURS, 0.8)], context, topic_hits=[hit(WHITENING, 0.7)])
    assert (decide(words).route, decide(words).entry_id) == (Route.LLM, "whitening")
    # A new topic, clearly named, is not a follow-up.
    decision = decide(turn("and when are you open?", [hit(HOURS, 0.9)], context, topic_hits=[hit(HOURS, 0.8)]))
    assert (decision.route, decision.entry_id) == (Route.FAQ, "hours")


def test_ambiguous_statements_ask_the_classifier_and_its_label_is_gated() -> None:
    words = turn("two payments came out of my account for one visit", [hit(HOURS, 0.33)])
    first = decide(words)
    assert first.needs_label
    assert decide(words, Kind.TICKET).route is Route.TICKET
    question = turn("is there anyone who can look at my bill?", [hit(HOURS, 0.33)])
    assert not decide(question).needs_label and decide(question, Kind.HUMAN).route is not Route.HANDOFF


def test_failed_turns_and_frustration_hand_off() -> None:
    assert decide(turn("what's the capital of Australia", [hit(HOURS, 0.1)])).low_confidence
    second = decide(turn("who won the football", [hit(HOURS, 0.1)], Context(failed_turns=1)))
    assert second.route is Route.FALLBACK and second.low_confidence, "the second: a ticket or a colleague offered"
    third = decide(turn("what's the weather", [hit(HOURS, 0.1)], Context(failed_turns=2)))
    assert (third.route, third.reason) == (Route.HANDOFF, HandoffReason.FAILED_TURNS)
    not_understood = decide(turn("whirr grr the", [hit(HOURS, 0.1)], Context(misheard_turns=2), misheard=True))
    assert (not_understood.route, not_understood.reason) == (Route.HANDOFF, HandoffReason.FAILED_TURNS)
    first = decide(turn("this is useless", [hit(HOURS, 0.2)]))
    assert first.frustrated and first.route is not Route.HANDOFF
    again = decide(turn("you're not helping at all", [hit(HOURS, 0.2)], Context(frustration=1)))
    assert (again.route, again.reason) == (Route.HANDOFF, HandoffReason.FRUSTRATION)


def test_nothing_heard_asks_again_and_state_follows_the_words() -> None:
    assert decide(turn("", [])).route is Route.REPEAT
    assert decide(turn("I need to reschedule my appointment", [hit(HOURS, 0.5)])).state is DialogState.TRANSACTION


def test_doubtful_words_are_answered_from_the_kb_but_never_acted_on() -> None:
    # "If I switch to you from another carrier ..." heard as nonsense: no transfer, no ticket, no hang-up.
    for words in (
        turn("if I'd witch come you from a hunter carrier", [hit(HOURS, 0.2)], Context(failed_turns=1), misheard=True),
        turn("can I speak to the dentist", [hit(WHITENING, 0.45)], misheard=True),
        turn("I tried everything, nothing else works", [hit(WIFI, 0.4)], misheard=True, ticket=0.7),
        turn("ok that's all, thanks, bye", [hit(HOURS, 0.2)], misheard=True),
        turn("two payments came out of my account for one visit", [hit(HOURS, 0.33)], misheard=True),
    ):
        decision = decide(words)
        assert (decision.route, decision.misheard, decision.needs_label) == (Route.REPEAT, True, False), words.text
    # What the KB answers is answered, doubtful or not.
    decision = decide(turn("I have a broken tooth", [hit(EMERGENCY, 0.8)], misheard=True))
    assert (decision.route, decision.entry_id) == (Route.FAQ, "emergency")
    decision = decide(turn("when are you opened on saturday", [hit(HOURS, 0.5)], misheard=True))
    assert (decision.route, decision.entry_id) == (Route.LLM, "hours")


@pytest.mark.parametrize("text", ["yes please", "sure", "go ahead", "yeah do that", "okay, that would be great"])
def test_a_plain_yes_takes_up_the_offer_just_made(text: str) -> None:
    hits = [hit(HOURS, 0.2)]
    ticket = decide(turn(text, hits, context=Context(offer=Offer.TICKET)))
    assert ticket.route is Route.TICKET, ticket.why
    colleague = decide(turn(text, hits, context=Context(offer=Offer.HANDOFF)))
    assert (colleague.route, colleague.reason) == (Route.HANDOFF, HandoffReason.REQUESTED)
    either = decide(turn(text, hits, context=Context(offer=Offer.EITHER)))
    assert either.route is Route.REPEAT and either.which_offer, "a yes to 'a ticket or a colleague' is asked which"
    assert decide(turn(text, hits)).route not in (Route.TICKET, Route.HANDOFF), "no offer, nothing to take up"


@pytest.mark.parametrize("text", ["no thanks", "no", "not now", "I'm fine", "yes, but how long does it take?"])
def test_a_no_or_a_question_does_not_take_up_the_offer(text: str) -> None:
    for offer in Offer:
        decision = decide(turn(text, [hit(HOURS, 0.2)], context=Context(offer=offer)))
        assert decision.route not in (Route.TICKET, Route.HANDOFF) and not decision.which_offer, (offer, decision)


def test_an_explicit_request_wins_over_the_offer() -> None:
    offered = Context(offer=Offer.TICKET)
    assert decide(turn("no, put me through to a person", [hit(HOURS, 0.2)], context=offered)).route is Route.HANDOFF
    decision = decide(turn("yes, open a ticket please", [hit(HOURS, 0.2)], context=Context(offer=Offer.EITHER)))
    assert decision.route is Route.TICKET
