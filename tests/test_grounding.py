"""The LLM's sentences may say only what their facts or the caller's words hold (voicebot.grounding).

The table `data/grounding_cases.json` holds (facts, caller's words, reply, verdict) across businesses, the embedded
model's real failures among them: every invented fact must be refused, and at least nine in ten faithful replies
accepted. The number tests pin the normaliser: one value in any of its spoken or written forms.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import pytest

from voicebot import prompts
from voicebot.grounding import ACCEPTED, Grounds, Reason, Verdict, check_sentence, check_ungrounded, is_decline
from voicebot.kb import Company
from voicebot.tts import split_sentences

TABLE = json.loads((Path(__file__).parent / "data" / "grounding_cases.json").read_text(encoding="utf-8"))["cases"]
INVENTED = [case for case in TABLE if case["verdict"] == "refuse"]
FAITHFUL = [case for case in TABLE if case["verdict"] == "ok"]
REAL = [case for case in TABLE if case["why"].startswith("real model output")]  # the embedded model's own sentences
MODEL_FAILURES = {
    "Yes, we ship to Canada.",
    "Shipping to Spain is 10 euros.",
    "Yes, we accept Bitcoin.",
    "Yes, we offer Delta Dental as our in-office whitening service.",
    "Yes, we deliver on Sundays.",
    "Yes, we sell car tyres.",
}


def judge(case: dict) -> tuple[Verdict, str]:
    """The verdict on the first refused sentence of the case's reply (and that sentence), or ACCEPTED."""
    grounds = Grounds(case["facts"], case["question"]) if case["facts"] else None
    for sentence in split_sentences(case["reply"]):
        verdict = grounds.check(sentence) if grounds else check_ungrounded(sentence)
        if not verdict.ok:
            return verdict, sentence
    return ACCEPTED, ""


def describe(case: dict, verdict: Verdict, sentence: str) -> str:
    said = f" ({verdict.reason}: {verdict.detail}, in {sentence!r})" if not verdict.ok else ""
    return f"  {case['reply']!r} to {case['question']!r}: {case['why']}{said}"


def test_the_table_spans_businesses_and_holds_the_models_real_failures() -> None:
    assert len(TABLE) >= 80
    assert len(INVENTED) >= 40 and len(FAITHFUL) >= 40
    assert {case["reply"] for case in INVENTED} >= MODEL_FAILURES
    assert {case["verdict"] for case in TABLE} == {"ok", "refuse"}
    assert all(case["why"] and case["question"] and case["reply"] for case in TABLE)
    assert sum(not case["facts"] for case in TABLE) >= 10  # replies written with no facts
    assert len(REAL) >= 30 and {case["verdict"] for case in REAL} == {"ok", "refuse"}


def test_every_invented_fact_is_refused() -> None:
    missed = [(case, *judge(case)) for case in INVENTED]
    missed = [(case, verdict, sentence) for case, verdict, sentence in missed if verdict.ok]
    rate = 1 - len(missed) / len(INVENTED)
    print(f"invented facts refused: {len(INVENTED) - len(missed)}/{len(INVENTED)} ({rate:.1%})")
    for case, verdict, sentence in missed:
        print("MISSED" + describe(case, verdict, sentence))
    assert rate == 1.0, "invented facts let through:\n" + "\n".join(describe(*m) for m in missed)


def test_at_least_nine_in_ten_faithful_replies_are_accepted() -> None:
    judged = [(case, *judge(case)) for case in FAITHFUL]
    refused = [(case, verdict, sentence) for case, verdict, sentence in judged if not verdict.ok]
    rate = 1 - len(refused) / len(FAITHFUL)
    print(f"faithful replies accepted: {len(FAITHFUL) - len(refused)}/{len(FAITHFUL)} ({rate:.1%})")
    for case, verdict, sentence in refused:
        print("REFUSED" + describe(case, verdict, sentence))
    assert rate >= 0.9, "faithful replies refused:\n" + "\n".join(describe(*r) for r in refused)


def test_grounds_built_once_judge_like_check_sentence() -> None:
    for case in TABLE[:120]:
        if case["facts"]:
            grounds = Grounds(case["facts"], case["question"])
            for sentence in split_sentences(case["reply"]):
                assert grounds.check(sentence) == check_sentence(sentence, case["facts"], case["question"])


def test_a_sentence_takes_well_under_a_millisecond_once_its_facts_are_read() -> None:
    cases = [case for case in TABLE if case["facts"]]
    spent = []
    for case in cases:
        grounds = Grounds(case["facts"], case["question"])
        for sentence in split_sentences(case["reply"]):
            start = time.thread_time()
            grounds.check(sentence)
            spent.append((time.thread_time() - start) * 1000)
    # CPU time, not wall time: other work on a busy machine does not count. Measured ~0.4 ms median on 2 cores.
    assert statistics.median(spent) < 3.0


# ---------------------------------------------------------------- the number normaliser

SAME_NUMBER = [  # (as the facts write it, as the reply says it)
    ("4 dollars 99", "$4.99"),
    ("4 dollars and 99 cents", "4.99 dollars"),  # "4.99 dollars" is how prompts.speakable says "$4.99"
    ("twenty-four hours", "24 hours"),
    ("one hundred and fifty dollars", "$150"),
    ("two million dollars", "$2,000,000"),
    ("1,500 dollars", "one thousand five hundred dollars"),
    ("five euros", "€5"),
    ("99 cents", "$0.99"),
    ("10%", "ten percent"),
    ("10 per cent", "10 percent"),
    ("9:00", "9 am"),
    ("nine o'clock", "9:00"),
    ("noon", "12 pm"),
    ("17:00", "5 pm"),
    ("5 in the evening", "5 pm"),
    ("9.30", "half past nine"),
    ("from 9 to 5", "from 9 am to 5 pm"),
    ("the 15th", "the fifteenth"),
    ("March 3rd", "March third"),
    ("30 minutes", "half an hour"),
    ("3 to 5 working days", "3 to 5 days"),
    ("from 10 to 200 dollars", "from $10 to $200"),
    ("twice a year", "two times a year"),
    ("1 800 555 0199", "1-800-555-0199"),
    ("0 2 1 0 0 0 0 8 9", "021000089"),
]
OTHER_NUMBER = [
    ("4 dollars 99", "$5.99"),
    ("9 am", "9 pm"),
    ("5 euros", "5 dollars"),
    ("24 hours", "24 days"),
    ("10 dollars a day", "10 dollars a week"),
    ("1,500 dollars", "1,000 dollars"),
    ("twenty-four", "forty-two"),
    ("10%", "twenty percent"),
    ("the 15th", "the 1st"),
    ("Fiber 2 Gig", "2 years"),  # a plain number in the facts is not a duration
    ("twice", "three times"),
    ("555 0142", "555 0199"),
]


@pytest.mark.parametrize(("held", "said"), SAME_NUMBER)
def test_a_number_in_another_form_is_the_same_number(held: str, said: str) -> None:
    assert check_sentence(f"The price is {said}.", [f"The price is {held}."], "how much") == ACCEPTED


@pytest.mark.parametrize(("held", "said"), OTHER_NUMBER)
def test_a_different_number_is_refused_whatever_its_form(held: str, said: str) -> None:
    verdict = check_sentence(f"The price is {said}.", [f"The price is {held}."], "how much")
    assert verdict.reason is Reason.NUMBER, verdict


@pytest.mark.parametrize(
    "sentence",
    [
        "It takes twenty minutes.",
        "It costs two million dollars.",
        "It costs one hundred and fifty dollars.",
        "We open at nine o'clock.",
        "We close at noon.",
        "It arrives on the third of May.",
        "You get ten percent off.",
        "Call 555 0100.",
    ],
)
def test_a_number_in_any_form_is_refused_without_facts(sentence: str) -> None:
    assert check_ungrounded(sentence).reason is Reason.NUMBER


def test_one_as_a_pronoun_is_no_number() -> None:
    facts = ["A lost key card is replaced at the front desk."]
    assert check_sentence("The front desk can give you a new one.", facts, "I lost my key card") == ACCEPTED


def test_the_callers_own_number_may_be_restated_but_not_claimed() -> None:
    facts = ["Check-in is from 3 pm."]
    assert check_sentence("I understand you arrive at 9 pm.", facts, "I arrive at 9 pm") == ACCEPTED
    assert check_sentence("Check-in is from 9 pm.", facts, "I arrive at 9 pm").reason is Reason.UNSUPPORTED_CLAIM


# ---------------------------------------------------------------- names, claims, contradictions, no facts


def test_each_reason_names_what_is_wrong() -> None:
    facts = ["We deliver Monday to Friday only. Standard delivery costs 4 dollars 99."]
    name = check_sentence("We deliver to London.", facts, "where do you deliver")
    assert (name.reason, "london" in name.detail) == (Reason.NAME, True)
    claim = check_sentence("Yes, we accept Bitcoin.", ["We accept Visa and Mastercard."], "do you take bitcoin")
    assert (claim.reason, "bitcoin" in claim.detail) == (Reason.UNSUPPORTED_CLAIM, True)
    days = check_sentence("Yes, we deliver on Sundays.", facts, "do you deliver on sundays")
    assert days.reason is Reason.CONTRADICTION
    fee = check_sentence("Delivery is free.", ["Delivery costs 5 dollars. Returns are free."], "is delivery free")
    assert fee.reason is Reason.CONTRADICTION


def test_a_claim_may_repeat_the_callers_words_only_about_what_the_facts_say() -> None:
    where = ["We're at 240 Maple Street, on the second floor."]
    said = "The address of your office is 240 Maple Street."
    assert check_sentence(said, where, "what's the address of your office") == ACCEPTED
    price = ["In-office whitening costs 350 dollars."]
    assert (
        check_sentence("An implant costs 350 dollars.", price, "how much is an implant").reason
        is Reason.UNSUPPORTED_CLAIM
    )
    parking = ["There's free parking behind the building."]
    covered = check_sentence("Yes, the parking is covered.", parking, "is the parking covered")
    assert covered.reason is Reason.UNSUPPORTED_CLAIM  # what a yes is asked about must be in the facts
    flights = ["Online check-in closes 45 minutes before domestic flights."]
    other = check_sentence(
        "It closes 45 minutes before international flights.", flights, "when does it close for international flights"
    )
    assert other.reason is Reason.UNSUPPORTED_CLAIM  # the caller's word in place of the facts' own


def test_a_general_word_in_the_facts_holds_a_particular_one_but_not_its_sibling() -> None:
    facts = ["Dr. Patel sees children from age 2."]
    assert check_sentence("Yes, we see girls from age 2.", facts, "my girl is four, can she come") == ACCEPTED
    girls = ["Dr. Patel sees girls from age 2."]
    assert check_sentence("Yes, we see boys from age 2.", girls, "do you see boys").reason is Reason.UNSUPPORTED_CLAIM


def test_a_verdict_is_a_frozen_value_and_its_reason_reads_as_text() -> None:
    verdict = check_ungrounded("We're open on Sundays.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.ok = True  # type: ignore[misc]
    assert f"{verdict.reason}" == "name"
    assert {str(reason) for reason in Reason} == {"number", "name", "unsupported claim", "contradiction"}


def test_the_bots_own_lines_pass_without_facts() -> None:
    company = Company(name="Maple Street Dental", description="a family dental clinic")
    for sentence in prompts.fixed_lines(company):
        assert check_ungrounded(sentence, known=[company.name]) == ACCEPTED, sentence


def test_the_companys_name_may_be_said_when_known() -> None:
    greeting = "Thanks for calling Maple Street Dental, how can I help?"
    assert check_ungrounded(greeting).reason is Reason.NAME
    assert check_ungrounded(greeting, known=["Maple Street Dental"]) == ACCEPTED
    facts = ["Cleanings cost 120 dollars."]
    said = "At Maple Street Dental, cleanings cost 120 dollars."
    assert check_sentence(said, facts, "how much is a cleaning", known=["Maple Street Dental"]) == ACCEPTED


@pytest.mark.parametrize(
    ("reply", "declines"),
    [
        (prompts.FALLBACK_LINE, True),
        ("I'm sorry, I don't have information about parking.", True),
        ("Unfortunately I can't answer that, but a colleague can help.", True),
        ("I'm not sure. Would you like me to open a ticket?", True),
        ("Cleanings cost 120 dollars.", False),
        ("Yes, we accept Visa.", False),
        ("No, sorry, I don't have that information.", False),  # the "no" answers the question
        ("I can open a ticket for you.", False),  # an offer alone declines nothing
        ("I'm sorry, I don't have that information, but parking is free.", False),
    ],
)
def test_a_decline_is_told_from_an_answer(reply: str, declines: bool) -> None:
    assert is_decline(reply) is declines
