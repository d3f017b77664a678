"""What the bot says about itself: the company comes from the KB (or the settings), and no line assumes a shop."""

from __future__ import annotations

import re

import pytest

from telephony.twiml import busy_response
from voicebot import prompts
from voicebot.config import DialogSettings
from voicebot.kb import Company

CLINIC = Company(name="Bright Smile Dental", description="a dental clinic in Leeds")
NAMELESS = Company()
# Words that would tell a clinic's or a bank's caller they had reached a shop.
RETAIL = re.compile(
    r"\b(?:shop|store|orders?|parcels?|deliver\w*|ship\w*|items?|products?|arrived|checkout|cart|purchase\w*|"
    r"northwind)\b",
    re.IGNORECASE,
)


def test_system_prompt_says_who_answers() -> None:
    tone = "warm and brief"
    assert prompts.system_prompt(CLINIC, tone).startswith(
        "You are the phone agent of Bright Smile Dental, a dental clinic in Leeds. Be warm and brief."
    )
    assert prompts.system_prompt(Company(name="Acme Bank"), tone).startswith("You are the phone agent of Acme Bank.")
    described = Company(description="A dental clinic in Leeds.")  # written as a sentence: completes ours all the same
    assert prompts.system_prompt(described, tone).startswith("You are the phone agent of a dental clinic in Leeds.")
    assert prompts.system_prompt(NAMELESS, tone).startswith("You are a company's phone support agent. Be warm")


def test_greeting_and_farewell_with_and_without_a_name() -> None:
    assert prompts.greeting(CLINIC) == "Hi, thanks for calling Bright Smile Dental. How can I help?"
    assert prompts.farewell(CLINIC) == "Thanks for calling Bright Smile Dental. Goodbye!"
    assert prompts.greeting(NAMELESS) == "Hi, thanks for calling. How can I help?"
    assert prompts.farewell(NAMELESS) == "Thanks for calling. Goodbye!"
    own = Company(
        name="Harbour Hotel", greeting="Harbour Hotel, good day. How may I help?", farewell="Enjoy your stay!"
    )
    assert (prompts.greeting(own), prompts.farewell(own)) == (own.greeting, own.farewell)


def test_settings_name_overrides_the_kbs() -> None:
    assert prompts.company_profile(CLINIC, DialogSettings()) == CLINIC
    renamed = prompts.company_profile(CLINIC, DialogSettings(company_name=" Bright Smile  Leeds "))
    assert renamed == Company(name="Bright Smile Leeds", description=CLINIC.description)
    assert prompts.company_profile(NAMELESS, DialogSettings(company_name="Acme Bank")).name == "Acme Bank"


@pytest.mark.parametrize("category", ["billing", "Billing", "appointments", "Network outage", "damaged_item", ""])
def test_ticket_lines_suit_any_category(category: str) -> None:
    line = prompts.ticket_opened(category, "K, 7, M, 2, Q, X")
    assert "I've opened ticket K, 7, M, 2, Q, X for you" in line
    assert not RETAIL.search(line), line
    assert prompts.ticket_sorry(category) in prompts.fixed_lines(NAMELESS)


def test_no_line_or_prompt_assumes_a_shop() -> None:
    texts = [
        prompts.system_prompt(NAMELESS, DialogSettings().tone),
        prompts.CLASSIFIER_SYSTEM,
        *(text for pair in prompts.REPLY_EXAMPLES + prompts.CLASSIFIER_EXAMPLES for text in pair),
        *prompts.fixed_lines(NAMELESS),
        prompts.ticket_exists("A, B"),
    ]
    for text in texts:
        assert not RETAIL.search(text), text


def test_fixed_lines_are_the_companys_sentences() -> None:
    lines = prompts.fixed_lines(Company(name="Acme Bank", greeting="Acme Bank, good morning. How can I help?"))
    assert lines[:2] == ["Acme Bank, good morning.", "How can I help?"]
    assert "Thanks for calling Acme Bank." in lines
    assert {prompts.ANYTHING_ELSE, *prompts.split_sentences(prompts.FALLBACK_LINE)} <= set(lines)
    assert len(lines) == len(set(lines)), "each sentence once: the voice synthesizes every one at start-up"


def test_reply_prefix_is_static_and_uses_the_company() -> None:
    prefix = prompts.reply_prefix(CLINIC, "calm")
    assert prefix == prompts.reply_prefix(CLINIC, "calm")  # byte-identical: llama.cpp reuses its KV state
    assert prefix[0].role == "system" and "Bright Smile Dental" in prefix[0].content
    assert len(prefix) == 1 + 2 * len(prompts.REPLY_EXAMPLES)


@pytest.mark.parametrize("name", ["Acme Bank", "", "  "])
def test_busy_answer_with_or_without_a_name(name: str) -> None:
    for human in ("+15550100", None):
        twiml = busy_response(name, human)
        assert "All our lines are busy" in twiml
        assert ("Thanks for calling Acme Bank." in twiml) == bool(name.strip())
        assert not re.search(r"calling\s+[.,]", twiml) and "  " not in twiml  # no "calling ." artefact
