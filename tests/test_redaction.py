"""Redaction of long numbers a caller says: what goes, what stays, and the setting that governs it."""

from __future__ import annotations

import pytest

from voicebot.config import ConfigError, StoreSettings, load_settings
from voicebot.redaction import DEFAULT_MIN_DIGITS, FLOOR_MIN_DIGITS, REDACTED, check_min_digits, redact_digits
from voicebot.store import TICKET_ID_LENGTH, new_ticket_id, speak_ticket_id


@pytest.mark.parametrize(
    ("said", "stored"),
    [
        # card numbers as STT writes them
        ("my card is 4111 1111 1111 1111 thanks", f"my card is {REDACTED} thanks"),
        ("4111-1111-1111-1111", REDACTED),
        ("4111111111111111.", f"{REDACTED}."),
        ("it's 3782 822463 10005", f"it's {REDACTED}"),  # Amex 4-6-5
        ("4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1", REDACTED),  # read digit by digit with pauses
        ("four one one one one one one one one", REDACTED),  # digits Whisper wrote as words
        # accounts, IBANs, social security and routing numbers
        ("IBAN GB82 WEST 1234 5698 7654 32", f"IBAN GB82 WEST {REDACTED}"),
        ("DE89370400440532013000", f"DE{REDACTED}"),  # digits inside a word
        ("account acct12345678 please", f"account acct{REDACTED} please"),
        ("ssn 123-45-6789", f"ssn {REDACTED}"),
        ("routing 0 2 1 0 0 0 0 8 9", f"routing {REDACTED}"),
        # phone numbers with an area code: personal data, the caller's own is on the call record already
        ("call me on +1 555 010 0199", f"call me on {REDACTED}"),
        ("(555) 010-0199 please", f"{REDACTED} please"),
        ("07700 900123", REDACTED),
    ],
)
def test_long_numbers_are_redacted(said, stored):
    assert redact_digits(said) == stored


@pytest.mark.parametrize(
    "said",
    [
        "it cost $12.50, or 12.50 dollars",
        "I paid 1,250 dollars, they want 12,500,000 back",
        "I bought it in 2024",
        "between 2019-2020, and again in 2019, 2020 and 2021",
        "it came on 2026-01-02 or 01-02-2026, at 10:30",
        "order number 1234567",  # short order numbers: up to 7 digits
        "the local number 555-0199",  # 7 digits, like an order number
        "extension 12345, post code 90210",
        "I have 3 chairs and 2 tables",
        "one or two of them, maybe three",
    ],
)
def test_what_a_support_call_needs_stays(said):
    assert redact_digits(said) == said


def test_ticket_ids_are_never_redacted():
    ids = [new_ticket_id() for _ in range(500)] + ["347934", "K7MQX3"]
    for ticket_id in ids:
        for said in (ticket_id, speak_ticket_id(ticket_id), " ".join(ticket_id), f"ticket {ticket_id} please"):
            assert redact_digits(said) == said
    # next to a card number the id stays whole and the card goes
    assert redact_digits("ticket K7MQX3 4111 1111 1111 1111") == f"ticket K7MQX3 {REDACTED}"
    assert FLOOR_MIN_DIGITS == TICKET_ID_LENGTH + 1, "even an all-digit ticket id is shorter than any setting"


def test_the_threshold_is_a_choice_and_0_turns_it_off():
    assert redact_digits("card 4111 1111 1111 1111, phone 555 010 0199", 13) == f"card {REDACTED}, phone 555 010 0199"
    assert redact_digits("order 1234567", FLOOR_MIN_DIGITS) == f"order {REDACTED}"
    assert redact_digits("4111 1111 1111 1111", 0) == "4111 1111 1111 1111"
    with pytest.raises(ValueError, match=r"min_digits is 4.*0 \(off\) or at least 7"):
        redact_digits("2024", 4)
    assert check_min_digits(0) == 0 and check_min_digits(12) == 12


def test_the_store_setting_defaults_on_and_refuses_a_value_that_would_eat_ticket_ids(tmp_path):
    assert StoreSettings().redact_digits == DEFAULT_MIN_DIGITS
    assert load_settings(env={"VOICEBOT_STORE_REDACT_DIGITS": "0"}).store.redact_digits == 0
    config = tmp_path / "voicebot.toml"
    config.write_text("[store]\nredact_digits = 13\n")
    assert load_settings(config, env={}).store.redact_digits == 13

    with pytest.raises(ConfigError, match=r"store\.redact_digits \(VOICEBOT_STORE_REDACT_DIGITS\) is 4") as err:
        load_settings(env={"VOICEBOT_STORE_REDACT_DIGITS": "4"})
    assert "ticket ids" in str(err.value)
    config.write_text("[store]\nredact_digits = 6\n")
    with pytest.raises(ConfigError, match=r"store\.redact_digits .* is 6"):
        load_settings(config, env={})
