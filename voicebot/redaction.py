"""Long numbers a caller says are kept out of call records: card, account and phone numbers are personal data.

`redact_digits` replaces every run of at least `min_digits` digits with REDACTED before a transcript or a ticket
summary is stored. A run is what speech-to-text writes for a number read out: digit groups joined by a space,
a dash or ", " ("4111 1111 1111 1111", "4111-1111-...", "4, 1, 1, 1, ..."), a phone number's "+" and
"(555) 010-0199", digits written as words ("four one one one ..."), or one long string of digits, also inside a
word (an IBAN "DE89370400440532013000" keeps its "DE").

Why 8 by default: shorter numbers are what a support call needs in its record and is no one's secret: prices,
years and dates, times, quantities, order numbers up to 7 digits, extensions and post codes. From 8 digits a
number is an account, card, IBAN, social security or phone number. Phone numbers said aloud are redacted too:
the caller's own number is on the call record already (in full for call-backs, masked wherever it is shown),
and a number read into a transcript would be shown unmasked by `voicebot calls show`. A 7-digit local phone
number ("555-0199") stays, like a 7-digit order number. Dates written with dashes ("2026-01-02") and years side
by side ("2019-2020") stay although they have 8 digits; other short numbers side by side ("10 20 30 40") do not.
A ticket id is never redacted: it is 6 characters (`voicebot.store.TICKET_ID_LENGTH`), mostly letters that
split its digits, and `min_digits` is never at or below its length.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
DEFAULT_MIN_DIGITS = 8
# The smallest min_digits allowed: one more than a ticket id's length, so even an all-digit id survives.
FLOOR_MIN_DIGITS = 7

_DIGIT_WORDS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# One token is a whole word of digits or a digit said as a word; "X3" (the end of a ticket id) is neither.
_TOKEN = r"\b(?:\d+|" + "|".join(_DIGIT_WORDS) + r")\b"
# What STT writes between the groups of a number read out: a space, a dash with or without spaces, ", ", and
# the ") " of "(555) 010-0199".
_SEPARATOR = r"(?:[ \t]*[-\u2013][ \t]*|,?[ \t]+|\)[ \t]*)"
_RUN = re.compile(rf"(?:[+(][ \t]*)?{_TOKEN}(?:{_SEPARATOR}\(?{_TOKEN})*", re.IGNORECASE)
# Runs of 8 digits and more that are no one's secret: a date written with dashes (2026-01-02, 01-02-2026) and
# years side by side ("2019-2020", "2019, 2020 and 2021"). No card number starts with 19 or 20.
_YEAR = r"(?:19|20)\d\d"
_NOT_SECRET = re.compile(
    rf"{_YEAR}-(?:0?[1-9]|1[0-2])-(?:0?[1-9]|[12]\d|3[01])"
    rf"|(?:0?[1-9]|[12]\d|3[01])-(?:0?[1-9]|[12]\d|3[01])-{_YEAR}"
    rf"|{_YEAR}(?:{_SEPARATOR}{_YEAR})+"
)
_DIGITS = re.compile(r"\d+")


def check_min_digits(min_digits: int, what: str = "min_digits") -> int:
    """`min_digits` if it is a valid setting (0 = off, else at least FLOOR_MIN_DIGITS); the ValueError says
    why not, naming the setting as `what`."""
    if min_digits != 0 and min_digits < FLOOR_MIN_DIGITS:
        raise ValueError(
            f"{what} is {min_digits}, which would redact ticket ids, prices or years: use 0 (off) or at least "
            f"{FLOOR_MIN_DIGITS} (default {DEFAULT_MIN_DIGITS})"
        )
    return min_digits


def redact_digits(text: str, min_digits: int = DEFAULT_MIN_DIGITS) -> str:
    """`text` with every run of at least `min_digits` digits (see the module docstring) replaced by REDACTED;
    `min_digits=0` returns it unchanged."""
    if check_min_digits(min_digits) == 0:
        return text

    def replace(match: re.Match[str]) -> str:
        run = match.group()
        digits = sum(len(token) if token.isdigit() else 1 for token in re.findall(_TOKEN, run, re.IGNORECASE))
        return REDACTED if digits >= min_digits and not _NOT_SECRET.fullmatch(run) else run

    text = _RUN.sub(replace, text)
    # Digits inside a word ("DE89370400440532013000", "acct12345678") are not tokens above: a long stretch of
    # them alone is enough.
    return _DIGITS.sub(lambda m: REDACTED if len(m.group()) >= min_digits else m.group(), text)
