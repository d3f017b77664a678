"""Properties of the Media Streams parser under generated input: whatever arrives, `receive` returns a typed event
or raises a short `ProtocolError`; the stream's state follows the protocol whatever the order; and what
`TwilioStreamWriter` builds parses back to the same values.

Deterministic (derandomize, no example database) and bounded, so the suite is never flaky and runs in seconds.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.protocol import (
    DTMF_DIGITS,
    MAX_COUNTER,
    MAX_DEPTH,
    MAX_MARK_CHARS,
    MAX_PARAMETER_CHARS,
    Clear,
    Connected,
    Dtmf,
    ErrorKind,
    Mark,
    Media,
    Play,
    ProtocolError,
    Start,
    Stop,
    StreamParser,
    TwilioStreamWriter,
    Unknown,
    clear_message,
    mark_message,
    media_message,
    parse_outbound,
)

FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],  # a timing check: it would make the suite flaky
)

STREAM = "MZ" + "1" * 32
OTHER_STREAM = "MZ" + "9" * 32
CALL = "CA" + "2" * 32
ACCOUNT = "AC" + "3" * 32
START = Start(STREAM, CALL, ACCOUNT, ("inbound",), {"token": "t"})  # what the writer's start parses to
EVENTS = (Connected, Start, Media, Dtmf, Mark, Stop, Unknown)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
sids = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=64)


def receive(parser: StreamParser, message: str | bytes) -> object:
    """The event, or the ProtocolError: checked to be one of the two, with a known kind and a short one-line text."""
    try:
        event = parser.receive(message)
    except ProtocolError as exc:
        assert exc.kind in set(ErrorKind)
        assert len(str(exc)) <= 300 and str(exc).isascii() and str(exc).isprintable()
        return exc
    assert isinstance(event, EVENTS)
    return event


def started() -> StreamParser:
    parser = StreamParser()
    parser.receive(TwilioStreamWriter(STREAM, CALL, ACCOUNT).start({"token": "t"}))
    return parser


# ---------------------------------------------------------------- anything in: an event or a ProtocolError


JSONISH = '[]{}",:\\ 1aeé-'  # the characters that steer json.loads and the depth scan


@FAST
@given(st.text(max_size=300) | st.text(JSONISH, max_size=300) | st.binary(max_size=300))
def test_arbitrary_text_and_bytes(message):
    for parser in (StreamParser(), started()):
        receive(parser, message)


@st.composite
def nested(draw: st.DrawFn) -> tuple[object, int]:
    """A JSON value nested `depth` arrays and objects deep, with brackets and quotes inside its strings."""
    depth = draw(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 1) | st.integers(0, 2 * MAX_DEPTH))  # the edge, and any
    value: object = draw(st.text(JSONISH, max_size=10))
    for _ in range(depth):
        sibling = draw(st.text(JSONISH, max_size=5) | st.integers())
        value = [sibling, value] if draw(st.booleans()) else {draw(st.text(JSONISH, max_size=5)): value}
    return value, depth


@FAST
@given(nested())
def test_nesting_is_refused_exactly_past_the_limit(value_and_depth):
    value, depth = value_and_depth
    got = receive(started(), json.dumps({"event": "x", "value": value}))  # one level more
    if depth + 1 <= MAX_DEPTH:
        assert got == Unknown("x")
    else:
        assert isinstance(got, ProtocolError) and got.kind == ErrorKind.TOO_LARGE


@FAST
@given(json_values)
def test_arbitrary_json(value):
    for parser in (StreamParser(), started()):
        receive(parser, json.dumps(value))


def _templates() -> dict[str, dict]:
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    messages = [
        writer.connected(),
        writer.start({"token": "t"}),
        writer.media(b"\xff" * 160, 20),
        writer.dtmf("5"),
        writer.mark("m"),
        writer.stop(),
    ]
    return {json.loads(m)["event"]: json.loads(m) for m in messages}


TEMPLATES = _templates()


def _paths(value: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a message, nested objects included."""
    if not isinstance(value, dict):
        return []
    return [p for key, inner in value.items() for p in [(*path, key), *_paths(inner, (*path, key))]]


@st.composite
def corrupted(draw: st.DrawFn) -> str:
    """A real Twilio message with one field anywhere in it replaced by any JSON value, or deleted."""
    message = json.loads(json.dumps(TEMPLATES[draw(st.sampled_from(sorted(TEMPLATES)))]))
    *parents, key = draw(st.sampled_from(_paths(message)))
    holder = message
    for parent in parents:
        holder = holder[parent]
    if draw(st.booleans()):
        del holder[key]
    else:
        holder[key] = draw(json_values | st.text(min_size=100, max_size=2000) | st.integers(2**63 - 5, 2**64))
    return json.dumps(message)


@FAST
@given(corrupted())
def test_real_messages_with_one_field_corrupted(message):
    for parser in (StreamParser(), started()):
        receive(parser, message)


# ---------------------------------------------------------------- sequences: the state follows the protocol


def _step(step: str, writer: TwilioStreamWriter, draw: st.DrawFn) -> tuple[str, object, object]:
    """A message for `step`, and what it parses to (an event, or the kind refusing it) after and before 'start'."""
    if step == "connected":
        return writer.connected(), Connected("Call", "1.0.0"), Connected("Call", "1.0.0")
    if step == "start":
        return writer.start({"token": "t"}), ErrorKind.INVALID_MESSAGE, START  # a second start is refused
    if step == "bad_start":
        start = json.loads(writer.start({"token": "t"}))
        field = draw(st.sampled_from(["tracks", "mediaFormat", "customParameters", "callSid"]))
        start["start"][field] = draw(st.sampled_from([5, [{}], 1e300, "é"]))  # wrong for each of these fields
        return json.dumps(start), ErrorKind.INVALID_MESSAGE, ErrorKind.INVALID_MESSAGE
    if step in ("media", "bad_media", "other_media"):
        sender = TwilioStreamWriter(OTHER_STREAM, CALL, ACCOUNT) if step == "other_media" else writer
        payload, timestamp = draw(st.binary(max_size=400)), draw(st.integers(0, MAX_COUNTER))
        message = sender.media(payload, timestamp)
        data = json.loads(message)
        after = {
            "media": Media(payload, timestamp, int(data["media"]["chunk"])),
            "bad_media": ErrorKind.INVALID_MESSAGE,
            "other_media": ErrorKind.WRONG_STREAM_SID,
        }[step]
        if step == "bad_media":
            field = draw(st.sampled_from(["chunk", "timestamp", "payload", "track"]))
            data["media"][field] = draw(st.sampled_from([-1, 2**64, [1], {"a": 1}]))
            message = json.dumps(data)
        return message, after, ErrorKind.MEDIA_BEFORE_START
    if step == "dtmf":
        digit = draw(st.sampled_from(sorted(DTMF_DIGITS)))
        return writer.dtmf(digit), Dtmf(digit), ErrorKind.DTMF_BEFORE_START
    if step == "mark":
        name = draw(st.text(max_size=MAX_MARK_CHARS))
        return writer.mark(name), Mark(name), ErrorKind.MARK_BEFORE_START
    if step == "stop":
        return writer.stop(), Stop(CALL), Stop(CALL)
    name = draw(st.text(max_size=64).filter(lambda e: e not in TEMPLATES))
    return json.dumps({"event": name, "streamSid": STREAM}), Unknown(name), Unknown(name)


STEPS = ("connected", "start", "bad_start", "media", "bad_media", "other_media", "dtmf", "mark", "stop", "unknown")


@FAST
@given(st.lists(st.sampled_from(STEPS), max_size=30), st.data())
def test_any_order_of_valid_and_broken_messages(steps, data):
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    parser = StreamParser()
    for count, step in enumerate(steps, start=1):
        message, after, before = _step(step, writer, data.draw)
        expected = after if parser.stream_sid is not None else before
        got = receive(parser, message)
        if isinstance(expected, ErrorKind):
            assert isinstance(got, ProtocolError) and got.kind == expected, (step, got)
        else:
            assert got == expected, (step, got)
        assert parser.stream_sid == (STREAM if "start" in steps[:count] else None)  # only a valid start starts
        assert parser.unknown_events == steps[:count].count("unknown")


# ---------------------------------------------------------------- round trip: the writer's messages parse back


parameters = st.dictionaries(st.text(max_size=40), st.text(max_size=MAX_PARAMETER_CHARS - 40), max_size=4)


@FAST
@given(sids, sids, sids, parameters, st.lists(st.binary(max_size=800), max_size=5), st.data())
def test_the_writers_messages_parse_back_to_their_values(stream_sid, call_sid, account_sid, params, payloads, data):
    writer = TwilioStreamWriter(stream_sid, call_sid, account_sid)
    parser = StreamParser()
    assert parser.receive(writer.connected()) == Connected("Call", "1.0.0")
    start = parser.receive(writer.start(params))
    assert start == Start(stream_sid, call_sid, account_sid, ("inbound",), params)
    for chunk, payload in enumerate(payloads, start=1):
        timestamp = data.draw(st.integers(0, MAX_COUNTER))
        assert parser.receive(writer.media(payload, timestamp)) == Media(payload, timestamp, chunk)
    digit = data.draw(st.sampled_from(sorted(DTMF_DIGITS)))
    name = data.draw(st.text(max_size=MAX_MARK_CHARS))
    assert parser.receive(writer.dtmf(digit)) == Dtmf(digit)
    assert parser.receive(writer.mark(name)) == Mark(name)
    assert parser.receive(writer.stop()) == Stop(call_sid)


@FAST
@given(sids, st.binary(max_size=2000), st.text(max_size=MAX_MARK_CHARS))
def test_the_servers_messages_parse_back_as_twilio_reads_them(stream_sid, payload, name):
    build: list[tuple[Callable[[], str], object]] = [
        (lambda: media_message(stream_sid, payload), Play(payload)),
        (lambda: mark_message(stream_sid, name), Mark(name)),
        (lambda: clear_message(stream_sid), Clear()),
    ]
    for message, expected in build:
        assert parse_outbound(message(), stream_sid) == expected
