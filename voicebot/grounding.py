"""Guards against invented facts: every sentence the LLM writes is checked before the caller hears it.

The embedded model (0.5B) ignores "never invent" often enough that its words are checked, not trusted. Seen in
this project: "Yes, we ship to Canada." and "Shipping to Spain is 10 euros." with no facts given; "Yes, we offer
Delta Dental as our in-office whitening service." when the facts were the whitening entry; "Yes, we deliver on
Sundays." when the facts said weekdays only. A sentence may say only what its facts (the knowledge-base answers
it was given) or the caller's own words hold:

- numbers in any form (digits, number words, money, times, dates, percentages, durations, phone numbers) are
  compared by value, so "$4.99" matches "4 dollars 99", "9 am" matches "9:00" and "twenty-four" matches "24";
- names (capitalised words, acronyms, months, days) must appear in the facts or in the caller's words;
- a claim (a clause that states something, rather than declining, offering a ticket or a colleague, greeting,
  thanking, restating the caller or asking back) must be about what the facts say. It may repeat the caller's
  words about what it tells from the facts ("The address of your office is 240 Maple Street."), but a name or a
  number only the caller said, what a yes or a no is asked about ("Yes, we accept Bitcoin." to "do you take
  bitcoin"), a claim with nothing of the facts but a number ("An implant costs 350 dollars."), or a word in place
  of the facts' own ("international flights" for "domestic flights") makes it an unsupported claim; so do a
  yes/no answer about something the facts never mention (a general word holds a particular one: "children"
  holds "my girl") or that they deny for some of it, and an "all"/"every" the facts don't say;
- a claim or a yes/no answer must not contradict the fact about the same thing: negation (no, not, never,
  closed, non-), cost (free against a price) and days of the week are compared with that fact.

Pure Python and lexical: no model calls; `Grounds.check` takes a fraction of a millisecond a sentence. It is
strict on purpose: a refused sentence costs the caller the KB answer read as written or the decline-and-offer
line, an invented fact costs far more. It cannot reason (that a parrot is a bird, that 5 pm is after 3 pm), so
such replies are refused too. The word lists are plain English, the same for every business.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import NamedTuple


class Reason(StrEnum):
    """Why a sentence may not be said."""

    NUMBER = "number"  # a number, price, time, date or percentage the facts and the caller don't hold
    NAME = "name"  # a name, brand, product, place, day or month in neither the facts nor the caller's words
    UNSUPPORTED_CLAIM = "unsupported claim"  # states, or answers yes/no about, something the facts don't say
    CONTRADICTION = "contradiction"  # says the opposite of the fact about the same thing


@dataclass(frozen=True)
class Verdict:
    """The check's answer for one sentence: `detail` names the word or number at fault."""

    ok: bool
    reason: Reason | None = None
    detail: str = ""


ACCEPTED = Verdict(True)


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _pairs(pairs: str) -> dict[str, str]:
    """ "sold:sell paid:pay" as {"sold": "sell", "paid": "pay"}."""
    return dict(pair.split(":") for pair in pairs.split())


# ---------------------------------------------------------------- word lists (plain English, any business)

_STOP = _set(
    """a an the and or but if then than so because as at by for from in into of off on onto out over to up with within
    about above across after against along among around before behind below beneath beside besides between beyond down
    during inside near outside past since through throughout till toward towards under until upon via per plus also too
    instead anymore bit just only even still already yet again ever soon here there where when why how what which who
    whom whose whatever whenever wherever while whether this that these those it its itself i me my mine myself you your
    yours yourself yourselves we us our ours ourselves he him his she her hers they them their theirs be am is are was
    were been being have has had having do does did done doing will would shall should can could may might must let lets
    get gets got getting such own same other others another each either both some few many much more most less least lot
    lots very one ones otherwise"""
)
# Polite framing and the words of declining, offering and asking back: what a reply without facts may consist of.
_FRAMING = _set(
    """yes yeah yep yup no sure okay ok alright right well great good fine perfect wonderful lovely absolutely
    certainly definitely course indeed happy glad pleased help helps helping helped assist assistance sorry
    unfortunately fortunately afraid apologies apologise apologize moment minute problem worries thanks thank
    welcome please kindly really actually simply quite now today away hear understand see know let check look
    question questions anything something someone somebody everything info information details detail further way
    ways thing things sir madam hello hi hey bye goodbye take time day care calling call ready able happen happens"""
)
# Common words a faithful rewording brings in without inventing anything: exempt from needing support.
_COMMON = _set(
    """need needs needed want wants like likes make makes made take takes took taken give gives gave given go goes went
    gone going come comes came coming keep keeps kept put puts say says said tell tells told ask asks asked call calls
    called contact reach try tries tried use uses used using find finds found show shows showed shown mean means choose
    chooses chose chosen pick picks picked stay start starts started begin begins end ends finish work works worked
    working set sets setting drop drops dropped receive receives received send sends sent buy buys bought purchase
    purchases sell sells sold offer offers offered provide provides provided accept accepts accepted allow allows
    allowed include includes included including apply applies applied require requires required recommend recommends
    notice leave leaves leaving available availability possible usually normally typically generally currently also then
    next same new time times minute minutes hour hours day days week weeks month months year years morning afternoon
    evening night nights number account accounts order orders customer customers client clients people person team staff
    colleague colleagues agent agents service services support line ticket request issue case matter option options
    process step steps address location place office answer cost costs costing fee fees price prices priced pay pays
    paying paid payable charge charges charged charging rate rates dollar dollars euro euros pound pounds cent cents
    percent am pm noon midnight all every always any anytime anything everything everywhere everyone anyone everybody
    anybody"""
)
_GENERIC = _STOP | _FRAMING | _COMMON
_NEGATIONS = _set("not no never none nothing nobody nowhere neither nor without cannot non closed unavailable")
# "no later than 5 pm" and "no problem" negate nothing.
_NOT_NEGATING = re.compile(r"\b(?:no|not) (?:later|more|less|longer|earlier) than\b|\bno (?:problem|worries|matter)\b")
_UNIVERSAL = _set("all every always any anytime anything everything everywhere everyone anyone everybody anybody")
_COST = _set("cost costs costing fee fees price prices priced pay pays paying paid payable")
_CHARGE = _set("charge charges charged charging")
_FREE = _set("free complimentary waived waive")
# Words that make a question about cost ("is it free", "will I be charged"); "pay" alone asks how, not how much.
_COST_QUESTION = _FREE | _CHARGE | (_COST - _set("pay pays paying paid payable"))
# "a charge", "we charge", "are charged" are about cost; "charge my phone" is not.
_BEFORE_CHARGE = _set("a no any the extra additional we they will may is are be been being get not never don't won't")
_ANSWER_YES = _set("yes yeah yep yup")
_ANSWER_NO = _set("no nope")
_WEAK_YES = _set("sure absolutely certainly definitely indeed")
_SUBJECTS = _set("we i it they you that there this")
_AUXILIARIES = _set("do does did is are was were can could will would shall should may might have has had am must")
_QUESTION_START = _AUXILIARIES | _set("what when where which who how why")
_FILLERS = _set("hi hello hey um uh so and oh well ok okay yes yeah also")
# A question with one of these is about something said before it: "my daughter is four, can she come".
_POINTING_BACK = _set("it she he they them her him this that these those one")
_CLAUSE_WORDS = _set("but however although though whereas otherwise except unless")
# Plain-English synonyms: a word is supported when the facts hold any word of its group.
_SYNONYM_GROUPS = (
    "shop store",
    "item product article goods",
    "parcel package",
    "website site online web",
    "quick fast",
    "big large",
    "small little",
    "help assist support",
    "need require",
    "allow permit",
    "customer client",
    "kid child",
    "gym fitness",
    "tire tyre",
    "voucher gift",
    "open available",
    "close shut",
    "deliver ship",
    "installment instalment payment",
    "book reserve appointment reservation",
    "wifi wireless",
    "photo picture image",
    "bag luggage suitcase baggage",
    "phone mobile cellphone smartphone",
    "abroad overseas international foreign",
    "doctor dr physician",
    "free complimentary waive",
    "begin start",
    "finish end",
)
# A word is also supported by the facts' more general word, not by its siblings: "girl" by "children", not "boys".
_KIND_OF = _pairs("son:child daughter:child boy:child girl:child baby:child toddler:child teenager:child")
_IRREGULAR = _pairs(
    "sold:sell bought:buy paid:pay sent:send took:take taken:take made:make gave:give given:give got:get kept:keep "
    "left:leave held:hold told:tell found:find brought:bring spent:spend built:build lost:lose children:child "
    "people:person went:go gone:go ran:run stolen:steal stole:steal chose:choose chosen:choose"
)

_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_ABBREVIATIONS = {
    word: int(day) for word, day in _pairs("mon:0 tue:1 tues:1 wed:2 thu:3 thur:3 thurs:3 fri:4 sat:5 sun:6").items()
}
_DAY_GROUPS = _set("weekday weekdays weekend weekends daily")
_MONTHS = _set(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
)
_WEEKDAYS = frozenset(range(5))
_WEEKEND = frozenset((5, 6))
_ALL_DAYS = frozenset(range(7))
_RANGE_WORDS = _set("to through thru - till until")

# ---------------------------------------------------------------- numbers


def _counted(words: str, first: int, step: int = 1) -> dict[str, int]:
    """ "one two three" counted from `first` by `step`: {"one": 1, "two": 2, "three": 3}."""
    return {word: first + n * step for n, word in enumerate(words.split())}


_UNIT_WORDS = _counted("zero one two three four five six seven eight nine", 0)
_TEEN_WORDS = _counted("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen", 10)
_TEN_WORDS = _counted("twenty thirty forty fifty sixty seventy eighty ninety", 20, 10)
_SCALE_WORDS = {"thousand": 1e3, "million": 1e6, "billion": 1e9}
_ORDINAL_UNITS = _counted("first second third fourth fifth sixth seventh eighth ninth", 1)
_ORDINAL_TEENS = _counted(
    "tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth", 10
)
_ORDINAL_TENS = _counted("twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth", 20, 10)
_NUMBER_PARTS = (
    ("unit", _UNIT_WORDS),
    ("teen", _TEEN_WORDS),
    ("ten", _TEN_WORDS),
    ("scale", _SCALE_WORDS),
    ("ord_unit", _ORDINAL_UNITS),
    ("ord_teen", _ORDINAL_TEENS),
    ("ord_ten", _ORDINAL_TENS),
    ("hundred", {"hundred": 100}),
)
_NUMBER_STARTS = frozenset({"a", "an"}.union(*(table for _, table in _NUMBER_PARTS)))
_EVERY_DAY_STARTS = _set("daily every each 7 seven 24")
# What may follow what in "two thousand five hundred and forty-first": anything else starts a new number.
_NEXT_PART = {
    None: {"unit", "teen", "ten", "ord_unit", "ord_teen", "ord_ten"},
    "unit": {"hundred", "scale"},
    "teen": {"hundred", "scale"},
    "ten": {"unit", "ord_unit", "scale"},
    "hundred": {"unit", "teen", "ten", "scale", "ord_unit", "ord_teen", "ord_ten"},
    "scale": {"unit", "teen", "ten", "hundred", "ord_unit", "ord_teen", "ord_ten"},
}
_MULTIPLIERS = {**_SCALE_WORDS, "k": 1e3, "m": 1e6, "bn": 1e9}
_CURRENCY_SYMBOLS = {"$": "usd", "€": "eur", "£": "gbp"}
_CURRENCY_WORDS = _pairs(
    "dollar:usd dollars:usd buck:usd bucks:usd usd:usd euro:eur euros:eur eur:eur pound:gbp pounds:gbp gbp:gbp quid:gbp"
)
_CENT_WORDS = _set("cent cents pence")
_MINUTES_IN = {"second": 1 / 60, "sec": 1 / 60, "minute": 1, "min": 1, "hour": 60, "hr": 60, "day": 1440}
_MINUTES_IN |= {"night": 1440, "week": 10080, "month": 43200, "year": 525600}
_PERIODS = _set("day night week month year hour")
_MULTIPLES = {"once": 1.0, "twice": 2.0, "thrice": 3.0}
_MERIDIEM = {"am": False, "pm": True}
_CLOCK_PHRASES = {("half", "past"): 30.0, ("quarter", "past"): 15.0, ("quarter", "to"): 45.0}
_PARTS_OF_DAY = {"morning": False, "afternoon": True, "evening": True}

_TOKEN = re.compile(
    r"(?P<num>\d+(?:[.,]\d+)*)|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)|(?P<sym>[$€£%/:&+-])|(?P<punct>[.,;!?()\"])"
)


class _Token(NamedTuple):
    text: str  # as written
    low: str
    kind: str  # "num", "word", "sym" or "punct"
    start: int  # character offsets
    end: int


class _Number(NamedTuple):
    """A number as written, before what it counts is known."""

    start: int  # token span
    end: int
    value: float
    ordinal: bool
    digits: str  # the digits as written ("0142"), "" for words and decimals


# A reading is what a quantity may mean, compared by `_compatible`:
# ("num", value) · ("money", value, currency | None, per period | None) · ("pct", value) · ("time", minutes after
# midnight) · ("dur", minutes, count as said) · ("ord", value) · ("times", count) · ("digits", "18005550199")
_Reading = tuple


@dataclass(frozen=True)
class _Quantity:
    """A number with what it counts: each reading is something it may mean ("9:00" is 9 am or 9 pm)."""

    text: str
    readings: frozenset[_Reading]
    first: int  # token span, units included
    last: int

    @property
    def kind(self) -> str:
        kinds = {r[0] for r in self.readings}
        return kinds.pop() if len(kinds) == 1 else "num"


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.translate({0x2019: "'", 0x2018: "'", 0x201C: '"', 0x201D: '"', 0x2013: "-", 0x2014: "-"})
    return re.sub(r"\b([aApP])\.\s?[mM]\.?", r"\1m", text)


def _tokens(text: str) -> list[_Token]:
    return [_Token(m.group(), m.group().lower(), m.lastgroup or "", m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _digits_value(text: str) -> float:
    """ "1,000", "4.99" and "4,99" (a decimal comma) as numbers."""
    if re.fullmatch(r"\d+,\d{1,2}", text):
        return float(text.replace(",", "."))
    return float(text.replace(",", ""))


def _number_part(word: str) -> tuple[str, int] | None:
    for kind, table in _NUMBER_PARTS:
        if word in table:
            return kind, int(table[word])
    return None


def _time_minutes(hour: float, minute: float, pm: bool | None) -> frozenset[int]:
    """Minutes after midnight a clock time may mean: both halves of the day when am/pm is not said."""
    h, m = int(hour), int(minute)
    if hour != h or not 0 <= h <= 24 or not 0 <= m < 60:
        return frozenset()
    if pm is None:
        return frozenset({(h % 24) * 60 + m, ((h % 12) + 12) * 60 + m}) if h <= 12 else frozenset({h * 60 + m})
    return frozenset({((h % 12) + (12 if pm else 0)) * 60 + m})


class _QuantityReader:
    """Finds every quantity in one text's tokens and what it measures."""

    def __init__(self, toks: list[_Token]) -> None:
        self.toks = toks

    def low(self, i: int) -> str:
        return self.toks[i].low if 0 <= i < len(self.toks) else ""

    def read(self) -> list[_Quantity]:
        numbers = self._digit_runs(self._numbers())
        quantities: list[_Quantity] = []
        for number in numbers:
            if quantities and number.start <= quantities[-1].last:
                continue  # "4 dollars 99": the cents are already part of the price
            quantity = self._typed(number, numbers)
            if quantity is not None:
                quantities.append(quantity)
        quantities = self._ranges(quantities)
        used = {i for q in quantities for i in range(q.first, q.last + 1)}
        return sorted(quantities + self._named(used), key=lambda q: q.first)

    def _numbers(self) -> list[_Number]:
        """Every number, written in digits ("1,000", "15th", "2 million") or in words ("one hundred and fifty")."""
        found: list[_Number] = []
        i = 0
        while i < len(self.toks):
            tok = self.toks[i]
            number = None
            if tok.kind == "num":
                value, end, ordinal = _digits_value(tok.low), i + 1, False
                nxt = self.low(i + 1)
                if i + 1 < len(self.toks) and self.toks[i + 1].start == tok.end and nxt in ("st", "nd", "rd", "th"):
                    end, ordinal = i + 2, True
                elif nxt in _MULTIPLIERS:
                    value, end = value * _MULTIPLIERS[nxt], i + 2
                number = _Number(i, end, value, ordinal, tok.low if tok.low.isdigit() else "")
            elif tok.low in _NUMBER_STARTS:
                number = self._number_words(i)
            if number is None:
                i += 1
            else:
                found.append(number)
                i = number.end
        return found

    def _number_words(self, i: int) -> _Number | None:
        """The number spelled out from token `i` ("one hundred and fifty", "twenty-first", "a thousand")."""
        total, current, last, j, end = 0.0, 0.0, None, i, None
        if self.low(i) in ("a", "an") and self.low(i + 1) in ("hundred", *_SCALE_WORDS):
            current, last, j = 1.0, "unit", i + 1
        while j < len(self.toks):
            word = self.low(j)
            if word in ("-", "and") and last is not None:
                if (word == "and" and last not in ("hundred", "scale")) or (word == "-" and last != "ten"):
                    break
                j += 1
                continue
            part = _number_part(word) if self.toks[j].kind == "word" else None
            if part is None or part[0] not in _NEXT_PART[last]:
                break
            kind, value = part
            if kind == "hundred":
                current = (current or 1) * 100
            elif kind == "scale":
                total, current = total + (current or 1) * value, 0.0
            else:
                current += value
            last, j, end = kind, j + 1, j + 1
            if kind.startswith("ord"):
                break
        if end is None:
            return None
        return _Number(i, end, total + current, bool(last and last.startswith("ord")), "")

    def _digit_runs(self, numbers: list[_Number]) -> list[_Number]:
        """Phone numbers and codes read in groups ("1 800 555 0199", "0 2 1 0 8 9") become one digit string."""
        out: list[_Number] = []
        k = 0
        while k < len(numbers):
            run = [numbers[k]]
            while k + len(run) < len(numbers):
                prev, nxt = run[-1], numbers[k + len(run)]
                spaced = nxt.start == prev.end and self.toks[nxt.start].start - self.toks[prev.end - 1].end == 1
                dashed = nxt.start == prev.end + 1 and self.low(prev.end) == "-"
                if not (prev.digits and nxt.digits and nxt.end == nxt.start + 1 and (spaced or dashed)):
                    break
                run.append(nxt)
            digits = "".join(n.digits for n in run)
            if len(run) > 1 and (len(digits) >= 5 or (len(run) >= 3 and len(digits) == len(run))):
                out.append(_Number(run[0].start, run[-1].end, float(digits), False, "+" + digits))
                k += len(run)
            else:
                out.append(numbers[k])
                k += 1
        return out

    def _typed(self, number: _Number, numbers: list[_Number]) -> _Quantity | None:
        """The quantity `number` starts: money, percentage, time, duration, ordinal or a plain number."""
        start, end, value = number.start, number.end, number.value
        nxt, prev = self.low(end), self.low(start - 1)
        if number.digits.startswith("+"):
            return self._quantity(start, end, {("digits", number.digits[1:])})
        if prev in _CURRENCY_SYMBOLS or nxt in _CURRENCY_WORDS or nxt in _CENT_WORDS:
            return self._money(number, numbers)
        if nxt in ("%", "percent") or (nxt == "per" and self.low(end + 1) == "cent"):
            return self._quantity(start, end + (2 if nxt == "per" else 1), {("pct", value)})
        clock = self._clock(number)
        if clock is not None:
            return clock
        if nxt in ("times", "time") and not number.ordinal:  # "three times", "one time"
            return self._quantity(start, end + 1, {("times", value)})
        unit_at = end + 1 if nxt == "-" else end
        if self.low(unit_at) in ("working", "business", "calendar"):
            unit_at += 1
        unit = _unit_of(self.low(unit_at))
        if unit and not number.ordinal:
            return self._quantity(start, unit_at + 1, {("dur", round(value * _MINUTES_IN[unit], 6), value)})
        word = self.low(start) if end == start + 1 and not number.digits else ""
        if number.ordinal:
            # "first" and "second" alone are words ("your first visit", "the second floor"), unless a date's
            month_near = self.low(start - 1) in _MONTHS or (nxt == "of" and self.low(end + 1) in _MONTHS)
            return (
                None if word in ("first", "second") and not month_near else self._quantity(start, end, {("ord", value)})
            )
        if word == "one":
            return None  # "one" alone is a pronoun far more often than a number ("a smaller one")
        readings: set[_Reading] = {("num", value)}
        if len(number.digits) >= 5:
            readings.add(("digits", number.digits))
        if re.fullmatch(r"\d{1,2}\.\d{2}", self.low(start)):  # "9.30" may be a time
            hour, minute = self.low(start).split(".")
            readings |= {("time", m) for m in _time_minutes(float(hour), float(minute), None)}
        return self._quantity(start, end, readings)

    def _money(self, number: _Number, numbers: list[_Number]) -> _Quantity:
        """ "$4.99", "4 dollars 99", "4 dollars and 99 cents", "99 cents", "35 dollars a night"."""
        start, end, value = number.start, number.end, number.value
        prev = self.low(start - 1)
        currency = _CURRENCY_SYMBOLS.get(prev) or _CURRENCY_WORDS.get(self.low(end))
        if self.low(end) in _CENT_WORDS:
            value, currency, end = value / 100, None, end + 1
        elif self.low(end) in _CURRENCY_WORDS:
            end += 1
            cents_at = end + 1 if self.low(end) == "and" else end
            cents = next((n for n in numbers if n.start == cents_at and n.value < 100 and not n.ordinal), None)
            if cents is not None:
                value, end = value + cents.value / 100, cents.end + (self.low(cents.end) in _CENT_WORDS)
        per = None
        for j in range(end, min(end + 6, len(self.toks))):
            if self.toks[j].kind in ("num", "punct") or self.low(j) == "and":
                break
            if self.low(j) in ("a", "an", "per", "each", "every") and _stem(self.low(j + 1)) in _PERIODS:
                per = _stem(self.low(j + 1))
                break
        first = start - 1 if prev in _CURRENCY_SYMBOLS else start
        return self._quantity(first, end, {("money", round(value, 4), currency, per)})

    def _clock(self, number: _Number) -> _Quantity | None:
        """A time of day: "9:30", "9 am", "nine o'clock", "5 in the evening", "10 at night", "12 noon", "half
        past nine"."""
        minute, after, first, hour = 0.0, number.end, number.start, number.value
        before = (self.low(first - 2), self.low(first - 1))
        if before in _CLOCK_PHRASES:
            minute, first = _CLOCK_PHRASES[before], first - 2
            hour -= minute == 45  # "quarter to ten" is 9:45
        elif self.low(after) == ":" and re.fullmatch(r"\d{2}", self.low(after + 1)):
            minute, after = float(self.low(after + 1)), after + 2
        word, pm = self.low(after), None
        if word in _MERIDIEM:
            pm, after = _MERIDIEM[word], after + 1
        elif word == "o'clock":
            after += 1
        elif (word, self.low(after + 1)) == ("in", "the") and self.low(after + 2) in _PARTS_OF_DAY:
            pm, after = _PARTS_OF_DAY[self.low(after + 2)], after + 3
        elif (word, self.low(after + 1)) == ("at", "night"):
            pm, after = True, after + 2
        elif word in ("noon", "midday", "midnight"):
            return self._quantity(first, after + 1, {("time", 0 if word == "midnight" else 720)})
        elif after == number.end and first == number.start:
            return None
        minutes = _time_minutes(hour, minute, pm)
        return self._quantity(first, after, {("time", m) for m in minutes}) if minutes else None

    def _named(self, used: set[int]) -> list[_Quantity]:
        """ "noon", "midday", "midnight", "half an hour", "once" and "twice": quantities said without a number."""
        found = []
        for i, tok in enumerate(self.toks):
            if i in used:
                continue
            if tok.low in ("noon", "midday", "midnight"):
                found.append(self._quantity(i, i + 1, {("time", 0 if tok.low == "midnight" else 720)}))
            elif tok.low in _MULTIPLES:
                found.append(self._quantity(i, i + 1, {("times", _MULTIPLES[tok.low])}))
            elif tok.low == "half":
                span = next((n for n, words in ((2, ("hour",)), (3, ("an", "hour"))) if self._at(i + 1, words)), 0)
                if span:
                    found.append(self._quantity(i, i + span, {("dur", 30.0, 0.5)}))
        return found

    def _at(self, i: int, words: tuple[str, ...]) -> bool:
        return all(self.low(i + n) == word for n, word in enumerate(words))

    def _quantity(self, first: int, end: int, readings: set[_Reading]) -> _Quantity:
        return _Quantity(" ".join(t.text for t in self.toks[first:end]), frozenset(readings), first, end - 1)

    def _ranges(self, quantities: list[_Quantity]) -> list[_Quantity]:
        """ "3 to 5 working days", "from 10 to 100 dollars": a bare end of a range takes the other end's unit."""
        out = list(quantities)
        for k in range(len(out) - 1):
            a, b = out[k], out[k + 1]
            if b.first - a.last != 2 or self.low(a.last + 1) not in _RANGE_WORDS | {"and", "or"}:
                continue
            for bare, other, at in ((a, b, k), (b, a, k + 1)):
                if (
                    bare.kind != "num"
                    or other.kind not in ("money", "pct", "dur")
                    or (other.kind == "dur" and bare is b)
                ):
                    continue
                value = next(r[1] for r in bare.readings if r[0] == "num")
                unit = next(iter(other.readings))
                if other.kind == "dur":
                    reading = ("dur", round(value * unit[1] / unit[2], 6) if unit[2] else 0.0, value)
                else:
                    reading = (other.kind, value, *unit[2:])
                out[at] = _Quantity(bare.text, frozenset({reading}), bare.first, bare.last)
        return out


def _unit_of(word: str) -> str | None:
    """The duration unit a word names ("hours" is "hour"), or None."""
    word = word[:-1] if word.endswith("s") else word
    return word if word in _MINUTES_IN else None


def _compatible(said: _Reading, held: _Reading) -> bool:
    """One reading of a sentence's quantity is what a reading of a source's quantity says."""
    kind, other = said[0], held[0]
    if kind == other:
        if kind == "money":
            currency = said[2] is None or held[2] is None or said[2] == held[2]
            per = said[3] is None or held[3] is None or said[3] == held[3]
            return abs(said[1] - held[1]) < 1e-6 and currency and per
        if kind == "dur":
            return abs(said[1] - held[1]) < 1e-6
        if kind == "digits":
            return said[1] == held[1] or (len(said[1]) >= 7 and said[1] in held[1])
        return said[1] == held[1]
    if kind != "num" and (other != "num" or kind not in ("time", "ord", "digits")):
        return False  # a plain number says less than a typed one: "Fiber 2 Gig" in the facts is no "2 years"
    number, typed = (said, held) if kind == "num" else (held, said)
    value = number[1]
    if typed[0] == "dur":
        return value == typed[2]
    if typed[0] == "time":  # "from 9 to 5" holds "9 am" and "5 pm"
        return value == int(value) and value <= 24 and typed[1] % 60 == 0 and (typed[1] // 60) % 12 == value % 12
    if typed[0] == "digits":
        return value == int(value) and str(int(value)) == typed[1].lstrip("0")
    return value == typed[1]


def _holds(readings: Iterable[frozenset[_Reading]], quantity: _Quantity) -> bool:
    return any(_compatible(a, b) for held in readings for a in quantity.readings for b in held)


def _ordinal_words(words: Iterable[str]) -> list[frozenset[_Reading]]:
    """ "first" and "second" in the facts may be said as "1st" and "2nd" (in a sentence they are only words)."""
    return [frozenset({("ord", n)}) for n, word in ((1, "first"), (2, "second")) if word in words]


# ---------------------------------------------------------------- words

_SUFFIX = re.compile(r"(?<=...)(?:ation|ing|ed|ly|ment|able)$")


def _stem(word: str) -> str:
    """A crude stem, enough to match "deliveries" with "delivery", "cancelled" with "cancel", "taking" with "take"."""
    word = _IRREGULAR.get(word, word)
    if len(word) > 3 and word[-1] == "s":
        if len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"
        elif len(word) > 4 and word.endswith(("sses", "ches", "shes", "xes", "zes")):
            word = word[:-2]
        elif not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    suffix = _SUFFIX.search(word) if len(word) > 4 else None
    if suffix:
        word = word[: suffix.start()]
        if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
            word = word[:-1]
    word = _IRREGULAR.get(word, word)
    # "taking" and "take", "welcomed" and "welcome" meet at "tak" and "welcom"; "free" keeps its e
    return word[:-1] if len(word) > 3 and word.endswith("e") and not word.endswith("ee") else word


_GROUP_OF = {_stem(word): n for n, group in enumerate(_SYNONYM_GROUPS) for word in group.split(" ")}
_KIND_OF_STEMS = {_stem(word): _stem(general) for word, general in _KIND_OF.items()}
_GENERIC_STEMS = frozenset(map(_stem, _GENERIC))
_COST_STEMS = frozenset(map(_stem, _COST | _CHARGE | _FREE))
_COST_TOPIC = "<cost>"  # a question's topic when it asks what something costs


def _base(word: str) -> tuple[str, bool]:
    """A word without its contraction, and whether that contraction negated it ("don't" is "do", negated)."""
    if "'" not in word:
        return word, False
    head, tail = word.split("'", 1)
    if tail == "t" and head.endswith("n"):
        return {"can": "can", "won": "will", "don": "do", "shan": "shall", "ain": "be"}.get(head, head[:-1]), True
    return head, False


@dataclass(frozen=True)
class _Word:
    base: str
    stem: str
    capital: bool  # written as a name: capitalised where no sentence starts, or starting "Delta Dental"
    acronym: bool  # written in capitals ("ATM", "HIPAA")
    joined: str = ""  # the stem of "wifi" for "Wi-Fi": the hyphenated word this part belongs to

    @property
    def salient(self) -> bool:
        """Says what a clause is about: not framing, a common word, a negation, a day or a month."""
        generic = self.base in _GENERIC or (self.stem in _GENERIC_STEMS and not self.base.endswith("ly"))
        return not (
            generic
            or len(self.base) < 2
            or self.base in _NEGATIONS
            or _day_of(self.base) is not None
            or self.base in _DAY_GROUPS
            or self.base in _MONTHS
        )


@dataclass
class _Vocabulary:
    """The words a source holds, matched by stem, synonym, or a stem one holds a few letters longer."""

    stems: set[str] = field(default_factory=set)
    groups: set[int] = field(default_factory=set)
    by_prefix: dict[str, list[str]] = field(default_factory=dict)
    initials: set[str] = field(default_factory=set)  # "us" for "United States"
    names: set[str] = field(default_factory=set)  # stems written as names ("Advance Purchase", "Okta")

    def add(self, stem: str) -> None:
        if stem not in self.stems:
            self.stems.add(stem)
            if stem in _GROUP_OF:
                self.groups.add(_GROUP_OF[stem])
            self.by_prefix.setdefault(stem[:4], []).append(stem)

    def holds(self, stem: str) -> bool:
        if stem in self.stems or _GROUP_OF.get(stem, -1) in self.groups:
            return True
        if stem in _KIND_OF_STEMS and self.holds(_KIND_OF_STEMS[stem]):
            return True
        for other in self.by_prefix.get(stem[:4], ()) if len(stem) >= 4 else ():
            short, long = sorted((stem, other), key=len)
            if long.startswith(short) and len(long) - len(short) <= 3:
                return True
        return False


def _day_of(word: str) -> int | None:
    word = word[:-1] if word.endswith("s") and word[:-1] in _DAY_NAMES else word
    return _DAY_NAMES.index(word) if word in _DAY_NAMES else None


# ---------------------------------------------------------------- one analysed text


@dataclass
class _Clause:
    """A stretch of a sentence between commas, semicolons, "but" and the like: what polarity is judged on."""

    words: list[_Word]  # its words that are not part of a quantity
    lows: list[str]  # every word, lowercase, contractions kept
    text: str  # lowercase, single-spaced
    quantities: list[_Quantity]
    days: list[tuple[int, bool]]  # (day 0-6, said negatively)
    negated: bool
    free: bool | None  # True: said to cost nothing; False: said to cost something; None: says neither
    ends_question: bool  # the clause ends with "?"
    in_question: bool = False  # its sentence ends with "?"

    def topic(self, names: Collection[str] = ()) -> set[str]:
        """The stems that say what the clause is about, a hyphenated word ("call-out", "Wi-Fi") as one; cost
        words are compared as `free` instead. A common word the facts write as a name (`names`: "Everyday
        Checking") says what the clause is about too."""
        stems = {
            w.stem
            for w in self.words
            if (w.salient or (w.stem in names and w.base not in _STOP)) and not w.joined and w.stem not in _COST_STEMS
        }
        return stems | {w.joined for w in self.words if w.joined and w.joined not in _GENERIC_STEMS}

    def held_stems(self) -> set[str]:
        """What a fact's clause holds: its topic (its own names included), the parts of its hyphenated words,
        and its cost words."""
        parts = {w.stem for w in self.words if w.salient and w.joined and w.stem not in _COST_STEMS}
        return self.topic({w.stem for w in self.words if w.capital}) | parts | self.cost_words()

    def cost_words(self) -> set[str]:
        return {w.stem for w in self.words if w.stem in _COST_STEMS}


@dataclass
class _Text:
    toks: list[_Token]
    quantities: list[_Quantity]
    words: list[_Word]
    clauses: list[_Clause]
    sentences: list[list[_Clause]]


def _analyse(text: str) -> _Text:
    text = _normalise(text)
    toks = _tokens(text)
    quantities = _QuantityReader(toks).read()
    used = {i for q in quantities for i in range(q.first, q.last + 1)}
    words = _words(toks, used)
    clauses: list[_Clause] = []
    sentences: list[list[_Clause]] = [[]]
    start = 0
    for i in range(len(toks) + 1):
        tok = toks[i] if i < len(toks) else None
        ends_sentence = tok is None or (tok.low in (".", "!", "?") and i not in used)
        boundary = ends_sentence or (
            i not in used
            and (
                tok.low in (",", ";", ":", "(", ")", '"')
                or tok.low in _CLAUSE_WORDS
                or (tok.low in ("and", "or") and _low(toks, i + 1) in ("no", "not", "never", "without"))
            )
        )
        if not boundary:
            continue
        span = range(start, i)
        if any(toks[k].kind in ("word", "num") for k in span):
            clause = _clause(text, toks, span, words, quantities, ends_question=bool(tok and tok.low == "?"))
            clauses.append(clause)
            sentences[-1].append(clause)
        if ends_sentence and sentences[-1]:
            for clause in sentences[-1]:
                clause.in_question = bool(tok and tok.low == "?")
            sentences.append([])
        start = i if tok is not None and tok.low in _CLAUSE_WORDS else i + 1
    return _Text(toks, quantities, [w for w in words if w is not None], clauses, [s for s in sentences if s])


def _low(toks: list[_Token], i: int) -> str:
    return toks[i].low if 0 <= i < len(toks) else ""


def _words(toks: list[_Token], used: set[int]) -> list[_Word | None]:
    """The word at each token index (None for numbers, symbols and words that are part of a quantity)."""
    words: list[_Word | None] = []
    sentence_start = True
    for i, tok in enumerate(toks):
        word = None
        if tok.kind == "word" and i not in used:
            base, _ = _base(tok.low)
            joined = ""
            if i >= 2 and toks[i - 1].low == "-" and toks[i - 2].end == toks[i - 1].start == tok.start - 1:
                joined = _stem(toks[i - 2].low + base)
            elif (
                _low(toks, i + 1) == "-"
                and i + 2 < len(toks)
                and tok.end == toks[i + 1].end - 1 == toks[i + 2].start - 1
            ):
                joined = _stem(base + toks[i + 2].low)
            name_next = i + 1 < len(toks) and toks[i + 1].kind == "word" and toks[i + 1].text[:1].isupper()
            capital = tok.text[0].isupper() and base != "i" and (not sentence_start or name_next)
            word = _Word(base, _stem(base), capital, len(tok.text) > 1 and tok.text.isupper(), joined)
        words.append(word)
        if tok.kind in ("word", "num"):
            sentence_start = False
        elif tok.low in (".", "!", "?", ":", '"', "("):
            sentence_start = True
    return words


def _clause(
    text: str,
    toks: list[_Token],
    span: range,
    words: list[_Word | None],
    quantities: list[_Quantity],
    ends_question: bool,
) -> _Clause:
    lows = [toks[k].low for k in span if toks[k].kind == "word"]
    inside = [q for q in quantities if span.start <= q.first < span.stop]
    negated, free = _polarity([toks[k].low for k in span], span.start, inside)
    return _Clause(
        words=[w for w in words[span.start : span.stop] if w is not None],
        lows=lows,
        text=" ".join(text[toks[span.start].start : toks[span.stop - 1].end].lower().split()),
        quantities=inside,
        days=_days(toks, span),
        negated=negated,
        free=free,
        ends_question=ends_question,
    )


def _polarity(lows: list[str], offset: int, quantities: list[_Quantity]) -> tuple[bool, bool | None]:
    """Whether a clause is negative, and what it says about cost.

    A negation that governs a cost word ("no fee", "we never charge", "doesn't cost") says the thing is free
    rather than negating the clause. Past a time limit ("after 30 days") turns the clause around, so "you can't
    return it after 30 days" agrees with "you can return it within 30 days".
    """
    text = " ".join(lows)
    positions = [0]
    for low in lows:
        positions.append(positions[-1] + len(low) + 1)
    not_negating = {m.start() for m in _NOT_NEGATING.finditer(text)}
    negations: list[int] = []
    free = costly = False
    for k, low in enumerate(lows):
        base, contracted = _base(low)
        if (low in _NEGATIONS or contracted) and positions[k] not in not_negating:
            negations.append(k)
        if base in _FREE and (k == 0 or lows[k - 1] not in ("feel", "toll", "hands")) and _at(lows, k + 1) != "to":
            free = True
        elif base in _COST or (base in _CHARGE and _at(lows, k - 1) in _BEFORE_CHARGE):
            governed = [n for n in negations if sum(w[0].isalpha() for w in lows[n + 1 : k]) <= 2]
            if governed or lows[max(k - 2, 0) : k] == ["free", "of"]:
                free = True
                negations = [n for n in negations if n not in governed]
            else:
                costly = True
    costly = costly or any(q.kind == "money" for q in quantities)
    negated = bool(negations)
    timed = {q.first - offset for q in quantities if q.kind in ("dur", "time")}
    limits = {q.first - offset for q in quantities}
    for k, low in enumerate(lows):
        past_time = low in ("after", "over", "beyond", "past", "outside") or (
            low in ("more", "longer", "later") and _at(lows, k + 1) == "than"
        )
        past_limit = low in ("further", "farther") and _at(lows, k + 1) == "than"
        if (past_time and timed & {k + 1, k + 2}) or (past_limit and limits & {k + 2}):
            negated = not negated
    return negated, (True if free and not costly else False if costly and not free else None)


def _at(lows: list[str], k: int) -> str:
    return lows[k] if 0 <= k < len(lows) else ""


def _days(toks: list[_Token], span: range) -> list[tuple[int, bool]]:
    """The days of the week a clause names, each with whether it is named negatively ("closed on Sundays",
    "every day except Sunday"); ranges and groups expand ("Monday to Friday", "weekdays", "7 days a week")."""
    found: list[tuple[int, bool]] = []
    negative = False
    k = span.start
    while k < span.stop:
        tok = toks[k]
        low, contracted = _base(tok.low)
        if tok.low in _NEGATIONS or contracted or low in ("except", "excluding"):
            negative = True
        elif low in ("open", "opens", "available"):
            negative = False
        group = frozenset()
        day = _named_day(tok)
        if day is not None:
            end_day = _named_day(toks[k + 2]) if k + 2 < span.stop and toks[k + 1].low in _RANGE_WORDS else None
            if end_day is None:
                group = frozenset({day})
            else:
                group = frozenset((day + n) % 7 for n in range((end_day - day) % 7 + 1))
                k += 2
        elif low in ("weekday", "weekdays"):
            group = _WEEKDAYS
        elif low in ("weekend", "weekends"):
            group = _WEEKEND
        elif low in _EVERY_DAY_STARTS and _every_day(toks, k):
            group = _ALL_DAYS
        found += [(d, negative) for d in sorted(group)]
        k += 1
    return found


def _every_day(toks: list[_Token], k: int) -> bool:
    """ "daily", "every day", "7 days a week" or "24/7" at token `k`."""
    low, after = toks[k].low, [_low(toks, k + n) for n in (1, 2, 3)]
    return (
        low == "daily"
        or (low in ("every", "each") and after[0] == "day")
        or (low in ("7", "seven") and after[0] == "days" and after[2] == "week")
        or (low == "24" and after[:2] == ["/", "7"])
    )


def _named_day(tok: _Token) -> int | None:
    day = _day_of(tok.low)
    if day is None and tok.text[:1].isupper():
        day = _DAY_ABBREVIATIONS.get(tok.low)
    return day


# ---------------------------------------------------------------- the sources a sentence may draw on


@dataclass
class _Source:
    """The facts, or the caller's words, analysed once."""

    texts: list[_Text]
    vocabulary: _Vocabulary
    readings: list[frozenset[_Reading]]
    modifiers: dict[str, set[str]]  # stem: the stems of the salient words written just before it ("domestic")

    @classmethod
    def of(cls, texts: Iterable[str]) -> _Source:
        analysed = [_analyse(t) for t in texts if t.strip()]
        vocabulary = _Vocabulary()
        modifiers: dict[str, set[str]] = {}
        for text in analysed:
            for clause in text.clauses:
                for before, word in pairwise(clause.words):
                    if before.salient and word.salient:
                        modifiers.setdefault(word.stem, set()).add(before.stem)
            for word in text.words:
                vocabulary.add(word.stem)
                if word.joined:
                    vocabulary.add(word.joined)
                if word.capital:
                    vocabulary.names.add(word.stem)
            vocabulary.initials |= _initials(text.toks)
        readings = [q.readings for text in analysed for q in text.quantities]
        return cls(analysed, vocabulary, readings + _ordinal_words(vocabulary.stems), modifiers)

    def holds_quantity(self, quantity: _Quantity) -> bool:
        return _holds(self.readings, quantity)

    def holds_word(self, word: _Word) -> bool:
        if word.joined and self.vocabulary.holds(word.joined):
            return True
        return (word.acronym and word.base in self.vocabulary.initials) or self.vocabulary.holds(word.stem)


def _initials(toks: list[_Token]) -> set[str]:
    """ "us" for "United States", "eu" for "European Union": acronyms a reply may use for names the facts spell."""
    found, run = set(), []
    for tok in [*toks, None]:
        if tok is not None and tok.kind == "word" and tok.text[:1].isupper():
            run.append(tok.low[0])
            continue
        if len(run) >= 2:
            found.add("".join(run))
        run = []
    return found


@dataclass
class _Unit:
    """A fact's clause, or a whole fact sentence: what a claim or an answer is compared with."""

    stems: set[str]  # its topic and its cost words
    negated: bool | None  # None: a sentence whose clauses disagree
    free: bool | None
    sentence: int  # which fact sentence it is or belongs to
    sentence_lows: set[str]  # every word of that sentence
    readings: list[frozenset[_Reading]]
    days: list[tuple[int, bool]]
    level: int  # 0: one clause, 1: a sentence of several clauses, 2: a fact of several sentences
    whole: bool  # the unit is one whole sentence
    parts: list[_Unit] = field(default_factory=list)  # a whole sentence's clauses, when they disagree
    vocabulary: _Vocabulary = field(default_factory=_Vocabulary)

    def __post_init__(self) -> None:
        for stem in self.stems:
            self.vocabulary.add(stem)

    def holds(self, quantity: _Quantity) -> bool:
        return _holds(self.readings, quantity)


def _units(source: _Source) -> list[_Unit]:
    """Every clause of the facts; every sentence of several clauses, and every fact of several sentences, as a
    unit of its own ("Rental cover comes with Premium policies. Standard policies don't include it.")."""
    units: list[_Unit] = []
    n = 0
    for text in source.texts:
        fact_parts: list[_Unit] = []
        for sentence in text.sentences:
            lows = {low for clause in sentence for low in clause.lows}
            parts = [
                _Unit(
                    stems=c.held_stems(),
                    negated=c.negated,
                    free=c.free,
                    sentence=n,
                    sentence_lows=lows,
                    readings=[q.readings for q in c.quantities] + _ordinal_words(c.lows),
                    days=c.days,
                    level=0,
                    whole=len(sentence) == 1,
                )
                for c in sentence
            ]
            for k in range(1, len(parts)):  # "We offer aligners, starting at 3,500 dollars": the price is theirs
                if not sentence[k].topic():
                    parts[k - 1].readings += parts[k].readings
            units += parts
            fact_parts += parts
            if len(parts) > 1:
                units.append(_joined(parts, n, lows, level=1))
            n += 1
        if len(text.sentences) > 1:
            units.append(_joined(fact_parts, n, set().union(*(p.sentence_lows for p in fact_parts)), level=2))
            n += 1
    return units


def _joined(parts: list[_Unit], sentence: int, lows: set[str], *, level: int) -> _Unit:
    """One unit for several clauses: it stands for the clause most about a claim when they disagree."""
    negations = {p.negated for p in parts}
    frees = {p.free for p in parts} - {None}
    return _Unit(
        stems=set().union(*(p.stems for p in parts)),
        negated=negations.pop() if len(negations) == 1 else None,
        free=frees.pop() if len(frees) == 1 else None,
        sentence=sentence,
        sentence_lows=lows,
        readings=[r for p in parts for r in p.readings],
        days=[d for p in parts for d in p.days],
        level=level,
        whole=level == 1,
        parts=parts if len(negations) > 1 or len(frees) > 1 else [],
    )


def _overlap(weights: dict[str, int], unit: _Unit) -> tuple[int, int]:
    """How much of `weights` (stem: weight) the unit holds, and how many stems it holds as their opposite
    ("opened" against "unopened", "refundable" against "non-refundable")."""
    held = flipped = 0
    for stem, weight in weights.items():
        if unit.vocabulary.holds(stem):
            held += weight
        elif {"un" + stem, "non" + stem, stem.removeprefix("un"), stem.removeprefix("non")} - {stem} & unit.stems:
            held += weight
            flipped += 1
    return held, flipped


def _contradicts(negated: bool, free: bool | None, unit: _Unit, flipped: int) -> bool:
    """Says the opposite of the unit: free against a price, or a negation the unit doesn't have (or lacks one
    it has); a stem the unit holds as its opposite ("opened" for "unopened") turns the unit around."""
    if free is not None and unit.free is not None:
        return free != unit.free
    return unit.negated is not None and negated != (unit.negated != bool(flipped % 2))


# ---------------------------------------------------------------- what kind of clause

_DECLINE = re.compile(
    r"\b(?:i|we) (?:do not|don't|cannot|can't|can not) have (?:\w+ ){0,3}?(?:information|info|details|answer|"
    r"record|records|access)\b|\b(?:i|we) (?:do not|don't) know\b|\b(?:i'm|i am|we're|we are) (?:not sure|not "
    r"certain|not able|unable|afraid)\b|\b(?:i|we) (?:cannot|can't|can not|couldn't|could not) (?:say|tell|"
    r"confirm|answer|find|see|check|help|look|access|give)\b|\bno information\b|\bnot something (?:i|we)\b|"
    r"\bi (?:didn't|did not) (?:catch|hear|understand|get)\b"
)
_OFFER = re.compile(
    r"\b(?:ticket|colleague|colleagues|representative|agent|human|someone|somebody|specialist|team member)\b|"
    r"\btransfer (?:you|your call|the call)\b|\bput you through\b|\bconnect you\b|\bcall you back\b|"
    r"\bget back to you\b|\bfollow up\b|\blook into\b|\bpass (?:this|it|that) on\b"
)
_GREET = re.compile(
    r"^(?:hello|hi|hey|good (?:morning|afternoon|evening|day))\b|\byou'?re (?:very |most )?welcome\b|"
    r"\bthank(?:s| you)\b|\b(?:good)?bye\b|\bhave a (?:nice|good|great|lovely|wonderful) \w+|\btake care\b|"
    r"\b(?:glad|happy|pleased) to (?:help|assist)\b|\bmy pleasure\b|\bi'?m (?:still )?here\b|\bi am here\b|"
    r"\bi can hear you\b|\bhow (?:can|may) i help\b"
)
_RESTATE = re.compile(
    r"\byou(?:'d| would) like\b|\byou want\b|\byou(?:'re| are) (?:asking|looking|calling|wondering|interested)\b|"
    r"\byou (?:asked|mentioned|said|wish)\b|\bi understand\b|\bi see\b|\bsounds like\b|\bso you\b|"
    r"\byour question\b|\bsorry (?:to hear|about|that|you|for|this|it)\b"
)


def _act(clause: _Clause) -> str:
    """ "ask", "decline", "offer", "greet", "restate", or "state" for a clause that claims something."""
    if clause.ends_question or (clause.in_question and clause.lows and clause.lows[0] in _QUESTION_START):
        return "ask"
    for act, pattern in (("decline", _DECLINE), ("offer", _OFFER), ("greet", _GREET), ("restate", _RESTATE)):
        if pattern.search(clause.text):
            return act
    return "state"


def _answer(clause: _Clause) -> bool | None:
    """A yes (True) or a no (False) said on its own ("Yes,", "No.", "We do.", "No, it isn't."), else None."""
    lows = clause.lows
    if len(lows) == 1 and lows[0] in _ANSWER_YES | _ANSWER_NO:
        return lows[0] in _ANSWER_YES
    rest = lows[1:] if lows and lows[0] in _ANSWER_YES | _ANSWER_NO else lows
    elliptic = 2 <= len(rest) <= 4 and rest[0] in _SUBJECTS and _base(rest[1])[0] in _AUXILIARIES
    if elliptic and all(w in ("not", "too", "also", "indeed") for w in rest[2:]):  # "We do.", "No, it isn't."
        return not (_base(rest[1])[1] or "not" in rest)
    return None


def _asks(clause: _Clause) -> bool:
    """The clause is a question a yes or a no answers ("so can I pay by card", "I wonder if it's free")."""
    lows = [w for w in clause.lows if w not in _FILLERS]
    return bool(lows and _base(lows[0])[0] in _AUXILIARIES) or any(w in ("if", "whether") for w in clause.lows)


def _yes_no_question(text: _Text) -> bool:
    """The caller asked something a yes or a no answers ("do you take cards", "I wonder if it's free")."""
    return any(map(_asks, text.clauses))


def _asked_topic(said: list[_Clause], names: Collection[str]) -> tuple[set[str], set[str]]:
    """What a yes or a no answers: the stems of the question's own clauses, and those of what the caller said
    around it when the question needs them ("my girl is four, can she come"), else none ("I'm switching
    dentists, can you send my x-rays")."""
    questions = [c for c in said if _asks(c)] or said
    asked = set().union(*(c.topic(names) for c in questions))
    pointing = any(low in _POINTING_BACK for c in questions for low in c.lows)
    context = set().union(*(c.topic(names) for c in said)) - asked if pointing or not asked else set()
    return asked, context


# ---------------------------------------------------------------- the checks


class Grounds:
    """What one reply may draw on: its facts (with the company's own words, `known`) and the caller's words.

    Analysed once for all the reply's sentences (about a millisecond for a few KB answers); `check` then
    costs a fraction of a millisecond a sentence.
    """

    def __init__(self, facts: Sequence[str], caller_text: str, *, known: Sequence[str] = ()) -> None:
        self.facts = _Source.of([*facts, *known])
        self.caller = _Source.of([caller_text])
        self.units = _units(self.facts)

    def check(self, sentence: str) -> Verdict:
        """Whether `sentence` says only what the facts and the caller's words hold."""
        said = _analyse(sentence)
        for check in (_check_numbers, _check_names, _check_answer, _check_claims):
            verdict = check(said, self)
            if not verdict.ok:
                return verdict
        return ACCEPTED

    def best_units(
        self, stems: set[str], share: float, quantities: Sequence[_Quantity] = (), *, cost: bool = False
    ) -> list[tuple[_Unit, int]]:
        """The fact units that hold most of `stems` (at least `share` of them) and of `quantities`, each with
        the number of stems it holds as opposites; with `cost`, those that say what something costs first.

        A name the facts spell ("Advance Purchase") counts double: a question naming it is about it. A whole
        fact counts only when no clause or sentence of it will do. A sentence or fact whose clauses disagree
        stands for its clause most about `stems` ("they never expire" for "gift cards never expire"), if one is.
        """
        weights = {stem: 2 if stem in self.facts.vocabulary.names else 1 for stem in stems}
        need = max(1.0, sum(weights.values()) * share)
        scored = []
        for unit in self.units:
            held, flipped = _overlap(weights, unit)
            if held >= need:
                score = (unit.level < 2, held + sum(map(unit.holds, quantities)), cost and unit.free is not None)
                scored.append((score, _resolved(unit, weights, flipped)))
        top = max((score for score, _ in scored), default=None)
        return [match for score, match in scored if score == top]

    def fact_days(self, stems: set[str]) -> tuple[set[int], set[int]]:
        """The days the facts name positively and negatively: those of the sentences most about `stems`."""
        scored = [(_overlap(dict.fromkeys(stems, 1), u)[0], u) for u in self.units if u.days and u.whole]
        top = max((score for score, _ in scored), default=0)
        said = [d for score, unit in scored if score == top for d in unit.days]
        negative = {d for d, neg in said if neg}
        return {d for d, neg in said if not neg} - negative, negative


def _resolved(unit: _Unit, weights: dict[str, int], flipped: int) -> tuple[_Unit, int]:
    """A sentence whose clauses disagree, as the clause with most of `weights` for its size, if one leads."""
    if not unit.parts:
        return unit, flipped
    scored = []
    for part in unit.parts:
        held, part_flipped = _overlap(weights, part)
        scored.append(((held / max(len(part.stems), 1), held), part_flipped, part))
    scored.sort(key=lambda x: x[0], reverse=True)
    if scored[0][0][1] and scored[0][0] > scored[1][0]:
        return scored[0][2], scored[0][1]
    return unit, flipped


def check_sentence(sentence: str, facts: Sequence[str], caller_text: str, *, known: Sequence[str] = ()) -> Verdict:
    """Whether `sentence`, written from `facts` in reply to `caller_text`, says only what they hold.

    `known` are words the bot may always use (the company's name and description). To check several sentences
    of one reply, build `Grounds` once instead.
    """
    return Grounds(facts, caller_text, known=known).check(sentence)


def check_ungrounded(sentence: str, *, known: Sequence[str] = ()) -> Verdict:
    """Whether `sentence`, written with no facts, only declines, offers a ticket or a colleague, greets, thanks
    or asks back: no numbers, no names (but those in `known`, the company's), no yes/no answers, no claims."""
    said = _analyse(sentence)
    known_source = _Source.of(known)
    if said.quantities:
        return Verdict(False, Reason.NUMBER, f"'{said.quantities[0].text}' with no facts to hold it")
    for word in said.words:
        named = word.capital or word.acronym or _day_of(word.base) is not None
        if named and word.base not in _GENERIC and not known_source.holds_word(word):
            return Verdict(False, Reason.NAME, f"'{word.base}' with no facts to hold it")
    acts = [_act(clause) for clause in said.clauses]
    helpful = any(act in ("decline", "offer", "greet", "ask") for act in acts)
    for clause, act in zip(said.clauses, acts, strict=True):
        if _answer(clause) is not None:
            if not helpful:  # "Yes, I can put you through" is fine; "Yes, we do." is a claim
                return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"answers '{clause.text}' with no facts")
        elif act == "state" and not _neutral(clause, known_source):
            return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{clause.text}' states something with no facts")
    return ACCEPTED


def is_decline(reply: str) -> bool:
    """Whether `reply` says it doesn't have the information (offering a ticket or a colleague at most) instead
    of answering: "I'm sorry, I don't have that information. I can open a ticket for you."."""
    said = _analyse(reply)
    acts = [_act(clause) for clause in said.clauses]
    framing = all(act != "state" or _neutral(clause) for clause, act in zip(said.clauses, acts, strict=True))
    return "decline" in acts and framing and not any(_answer(clause) is not None for clause in said.clauses)


def _neutral(clause: _Clause, known: _Source | None = None) -> bool:
    """Polite framing that claims nothing: "Sure", "Of course", "I can help with that"."""
    if clause.days or clause.negated or any(low in _SUBJECTS - {"i", "that", "this"} for low in clause.lows):
        return False
    return all(w.base in _STOP or w.base in _FRAMING or (known and known.holds_word(w)) for w in clause.words)


def _check_numbers(said: _Text, grounds: Grounds) -> Verdict:
    for quantity in said.quantities:
        if not (grounds.facts.holds_quantity(quantity) or grounds.caller.holds_quantity(quantity)):
            return Verdict(False, Reason.NUMBER, f"'{quantity.text}' is in neither the facts nor the caller's words")
    return ACCEPTED


def _check_names(said: _Text, grounds: Grounds) -> Verdict:
    """Capitalised words, acronyms and months must be in the facts or the caller's words; days of the week in
    the days they name ("Monday to Friday" names Wednesday)."""
    days = {d for unit in grounds.units for d, _ in unit.days}
    days |= {d for text in grounds.caller.texts for clause in text.clauses for d, _ in clause.days}
    for word in said.words:
        day = _day_of(word.base)
        if day is not None:
            held = day in days
        elif (word.capital or word.acronym) and (word.base not in _GENERIC or word.base in _MONTHS):
            held = grounds.facts.holds_word(word) or grounds.caller.holds_word(word)
        else:
            continue
        if not held:
            return Verdict(False, Reason.NAME, f"'{word.base}' is in neither the facts nor the caller's words")
    return ACCEPTED


def _check_answer(said: _Text, grounds: Grounds) -> Verdict:
    """A yes or a no must answer a question the facts speak to, and agree with them."""
    caller = grounds.caller.texts[0] if grounds.caller.texts else None
    if caller is None or not said.sentences or not _yes_no_question(caller):
        return ACCEPTED
    clauses = said.sentences[0]
    answer = next((a for a in map(_answer, clauses) if a is not None), None)
    names = grounds.facts.vocabulary.names
    rest = [
        c for c in clauses if _answer(c) is None and (c.topic(names) or c.quantities or c.days or c.free is not None)
    ]
    if answer is None and len(clauses) == 1 and not rest:  # "Sure!" or "Of course." alone is a yes
        lows = clauses[0].lows
        answer = True if (len(lows) == 1 and lows[0] in _WEAK_YES) or lows == ["of", "course"] else None
    if answer is None:
        return ACCEPTED
    asked = caller.clauses
    question, context = _asked_topic(asked, names)
    stems = question | context
    negated = any(c.negated for c in asked)
    frees = {c.free for c in asked} - {None}
    free = frees.pop() if len(frees) == 1 else None
    if not answer:  # "no" to "is it free" says it costs; "no" to "do you deliver" says it doesn't
        free, negated = (not free, negated) if free is not None else (None, not negated)
    days = [(d, neg != (not answer)) for c in asked for d, neg in c.days]
    if days:  # a question about days: the facts' days answer it
        return _judge_days(days, stems, grounds, "the answer")
    topic = {stem: grounds.facts.vocabulary.holds(stem) for stem in question}
    if any(low in _COST_QUESTION for c in asked for low in c.lows):
        topic[_COST_TOPIC] = any(u.free is not None for u in grounds.units)
    around = [grounds.facts.vocabulary.holds(stem) for stem in context]
    held = sum(topic.values())
    # A bare yes needs all it is asked about, a yes that says more half of it; either needs half its setting.
    if (held < len(topic) if not rest else held * 2 < len(topic)) or sum(around) * 2 < len(around):
        missing = " ".join(sorted(s for s in stems | set(topic) if not grounds.facts.vocabulary.holds(s)))
        return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"a yes/no about '{missing}', which the facts never mention")
    quantities = [q for c in asked for q in c.quantities]
    for quantity in quantities if answer and not rest else ():
        if not grounds.facts.holds_quantity(quantity):
            return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"a yes to '{quantity.text}', not in the facts")
    # The fact the question is about; by its cost words when nothing else matches ("will I be charged").
    cost_words = set().union(*(c.cost_words() for c in asked))
    matches = grounds.best_units(stems, 0.5, cost=free is not None)
    matches = matches or grounds.best_units(stems | cost_words, 0.5, cost=free is not None)
    matches = [(u, f) for u, f in matches if all(u.holds(q) for q in quantities)]  # else it hinges on a number
    if answer and held < len(topic) and any(_contradicts(negated, free, u, f) for u, f in matches):
        # "can you deliver my oxycodone" with "we deliver prescriptions" and "we don't deliver controlled
        # medicines": the facts say no to some of it, and which the asked thing is they don't say
        return Verdict(False, Reason.UNSUPPORTED_CLAIM, "the facts answer no for some of what is asked")
    for clause in rest:
        answered_from = grounds.best_units(clause.topic(names), 1.0, cost=clause.free is not None)
        if (
            clause.topic(names)
            and answered_from
            and {u.sentence for u, _ in answered_from} <= {u.sentence for u, _ in matches}
        ):
            return ACCEPTED  # the reply says which part of that fact it answers from: its own claim is checked
    if matches and all(_contradicts(negated, free, unit, flipped) for unit, flipped in matches):
        return Verdict(False, Reason.CONTRADICTION, f"'{'yes' if answer else 'no'}' contradicts the facts")
    return ACCEPTED


def _restates(clause: _Clause, callers: list[_Word], stems: set[str], grounds: Grounds) -> bool:
    """A claim may repeat the caller's words (`callers`) about what it tells from the facts: "The address of your
    office is 240 Maple Street." to "what's the address of your office". Not a name, not what a yes or a no is
    asked about ("is the pool heated": "heated"), and the facts' part of the claim (`stems`, its numbers) must
    outweigh the caller's. Nor a word in place of the facts' own ("international flights" where the facts say
    "domestic flights")."""
    if any(w.capital or w.acronym for w in callers) or not stems:
        return False
    for before, word in pairwise(clause.words):
        if before in callers and word.salient and grounds.facts.modifiers.get(word.stem, set()) - {before.stem}:
            return False
    caller = grounds.caller.texts[0]
    if _yes_no_question(caller):
        asked = _Vocabulary()
        for stem in _asked_topic(caller.clauses, grounds.facts.vocabulary.names)[0]:
            asked.add(stem)
        if any(asked.holds(w.stem) or (w.joined and asked.holds(w.joined)) for w in callers):
            return False
    held = len(stems) + sum(map(grounds.facts.holds_quantity, clause.quantities))
    return held >= len(callers)


def _restates_days(clause: _Clause, grounds: Grounds) -> bool:
    """ "We open at 3 pm on Friday." to "what time can we come on friday" when the facts name no days: the
    caller's own day, not a yes or a no about it."""
    caller = grounds.caller.texts[0]
    said = {day for c in caller.clauses for day in c.days}
    fact_days = any(unit.days for unit in grounds.units)
    return not fact_days and not _yes_no_question(caller) and set(clause.days) <= said


def _judge_days(days: list[tuple[int, bool]], stems: set[str], grounds: Grounds, what: str) -> Verdict:
    """Days said positively must be days the facts name so; days said negatively must be named so, or left out
    of the days the facts list ("closed on Sundays" when they say "Monday to Friday")."""
    positive, negative = grounds.fact_days(stems)
    for day, neg in days:
        if day in (negative if neg else positive) or (neg and positive and day not in positive):
            continue
        name = _DAY_NAMES[day].capitalize()
        if positive or negative:
            return Verdict(False, Reason.CONTRADICTION, f"{what} about {name} contradicts the facts' days")
        return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"{what} about {name}: the facts name no days")
    return ACCEPTED


def _check_claims(said: _Text, grounds: Grounds) -> Verdict:
    """Every clause that states something: its words and numbers from the facts, its days and its polarity as
    the fact about the same thing says, no "all" or "every" that fact doesn't say."""
    for clause in said.clauses:
        if _act(clause) != "state":
            continue
        unheld = [w for w in clause.words if w.salient and not grounds.facts.holds_word(w)]
        for word in unheld:
            if not grounds.caller.holds_word(word):
                return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{word.base}' is not in the facts")
        stems = clause.topic(grounds.facts.vocabulary.names) - {s for w in unheld for s in (w.stem, w.joined)}
        if unheld and not _restates(clause, unheld, stems, grounds):
            return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{unheld[0].base}' only the caller said")
        condition = bool(clause.lows) and clause.lows[0] == "if" and not unheld  # "if your account goes below zero"
        for quantity in clause.quantities:
            if not (grounds.facts.holds_quantity(quantity) or (condition and grounds.caller.holds_quantity(quantity))):
                return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{quantity.text}': only the caller said it")
        if clause.days and not _restates_days(clause, grounds):
            verdict = _judge_days(clause.days, stems, grounds, f"'{clause.text}'")
            if not verdict.ok:
                return verdict
            continue
        matches = grounds.best_units(stems, 1.0, clause.quantities, cost=clause.free is not None) if stems else []
        if len(stems) > 1 and not matches:
            return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{clause.text}' joins what different facts say")
        if not matches:
            continue
        universal = any(w.base in _UNIVERSAL for w in clause.words)
        if universal and not any(unit.sentence_lows & _UNIVERSAL for unit, _ in matches):
            return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{clause.text}' generalises what the facts say")
        plain = clause.topic() & stems  # what the clause is about in its own words: "your order", not "My Orders"
        about = [u for u in grounds.units if u.level == 0 and _overlap(dict.fromkeys(plain, 1), u)[0] == len(plain)]
        for quantity in clause.quantities:
            if about and not any(u.holds(quantity) for u in about):
                return Verdict(False, Reason.UNSUPPORTED_CLAIM, f"'{quantity.text}' is said of another thing")
        if clause.negated and not all(u.holds(q) for u, _ in matches for q in clause.quantities):
            continue  # "not after 30 days": the negation is about a number that fact does not state
        if all(_contradicts(clause.negated, clause.free, unit, flipped) for unit, flipped in matches):
            return Verdict(False, Reason.CONTRADICTION, f"'{clause.text}' contradicts the facts")
    return ACCEPTED
