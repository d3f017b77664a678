"""Media Streams messages, sans-I/O: Twilio's documented message shapes in, protocol faults named, and the
server's outbound messages exactly as Twilio expects them."""

from __future__ import annotations

import base64
import json

import pytest

from telephony.protocol import (
    BINARY_FRAME,
    INVALID_MESSAGE,
    MAX_COUNTER,
    MAX_MESSAGE_CHARS,
    MAX_PARAMETERS,
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

STREAM = "MZ" + "1" * 32
CALL = "CA" + "2" * 32
ACCOUNT = "AC" + "3" * 32

# Twilio's documented examples (Media Streams - WebSocket messages), with its string-typed counters.
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM,
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": STREAM,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"token": "abc"},
        },
    }
)


def media(payload: bytes = b"\xff" * 160, stream: str = STREAM, timestamp: str = "5") -> str:
    body = {"track": "inbound", "chunk": "2", "timestamp": timestamp, "payload": base64.b64encode(payload).decode()}
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": stream, "media": body})


def started() -> StreamParser:
    parser = StreamParser()
    parser.receive(CONNECTED)
    parser.receive(START)
    return parser


def test_a_documented_stream_parses_in_order():
    parser = StreamParser()
    assert parser.receive(CONNECTED) == Connected("Call", "1.0.0")
    start = parser.receive(START)
    assert isinstance(start, Start)
    assert (start.stream_sid, start.call_sid, start.account_sid, start.tracks) == (STREAM, CALL, ACCOUNT, ("inbound",))
    assert start.custom_parameters == {"token": "abc"}
    assert parser.receive(media(b"\x01\x02", timestamp="40")) == Media(b"\x01\x02", 40, 2)
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"track": "inbound_track", "digit": "1"}}
    assert parser.receive(json.dumps(dtmf)) == Dtmf("1")
    mark = {"event": "mark", "sequenceNumber": "6", "streamSid": STREAM, "mark": {"name": "t1-s1"}}
    assert parser.receive(json.dumps(mark)) == Mark("t1-s1")
    stop = {"event": "stop", "streamSid": STREAM, "stop": {"accountSid": ACCOUNT, "callSid": CALL}}
    assert parser.receive(json.dumps(stop)) == Stop(CALL)


def test_unknown_events_are_skipped_and_counted_not_refused():
    parser = started()
    assert parser.receive('{"event": "transcription", "streamSid": "x"}') == Unknown("transcription")
    assert parser.receive('{"event": "something-new"}') == Unknown("something-new")
    assert parser.unknown_events == 2
    assert isinstance(parser.receive(media()), Media)  # the stream goes on


@pytest.mark.parametrize("event", ["media", "dtmf", "mark"])
def test_stream_events_before_start_are_refused(event):
    parser = StreamParser()
    parser.receive(CONNECTED)
    message = {
        "media": media(),
        "dtmf": json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "1"}}),
        "mark": json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "m"}}),
    }[event]
    with pytest.raises(ProtocolError, match=f"'{event}' message before 'start'") as err:
        parser.receive(message)
    assert (err.value.kind, err.value.code) == (f"{event}_before_start", INVALID_MESSAGE)


def test_a_stop_before_start_just_ends_the_stream():
    assert StreamParser().receive('{"event": "stop", "streamSid": "MZx", "stop": {"callSid": "CAx"}}') == Stop("CAx")


def test_another_streams_sid_is_refused():
    parser = started()
    with pytest.raises(ProtocolError, match="for stream 'MZother' on stream") as err:
        parser.receive(media(stream="MZother"))
    assert err.value.kind == "wrong_stream_sid"


@pytest.mark.parametrize(
    ("message", "kind", "words"),
    [
        ('{"event": "media", ', "bad_json", "not JSON"),
        ("[1, 2]", "invalid_message", "no string 'event'"),
        ('{"event": 7}', "invalid_message", "no string 'event'"),
        (media(timestamp="soon"), "invalid_message", "media.timestamp must be a number"),
        (media().replace('"payload": "', '"payload": "%%'), "invalid_message", "not base64"),
        (json.dumps({"event": "media", "streamSid": STREAM}), "invalid_message", "no 'media' object"),
        (json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "x"}}), "invalid_message", "0-9"),
    ],
)
def test_malformed_messages_name_the_fault(message, kind, words):
    with pytest.raises(ProtocolError, match=words) as err:
        started().receive(message)
    assert err.value.kind == kind
    assert "Twilio error 31951" in str(err.value)


def test_a_binary_frame_is_refused_with_twilios_code():
    with pytest.raises(ProtocolError, match="binary WebSocket frame of 160 bytes") as err:
        started().receive(b"\xff" * 160)
    assert (err.value.kind, err.value.code) == ("binary_frame", BINARY_FRAME)


def test_a_second_start_and_a_wrong_media_format_are_refused():
    with pytest.raises(ProtocolError, match="second 'start'"):
        started().receive(START)
    wrong = json.loads(START)
    wrong["start"]["mediaFormat"]["sampleRate"] = 16000
    with pytest.raises(ProtocolError, match="is not \\('audio/x-mulaw', 8000, 1\\)") as err:
        StreamParser().receive(json.dumps(wrong))
    assert err.value.kind == "unsupported_format"


def test_outbound_messages_have_twilios_shape():
    assert json.loads(media_message(STREAM, b"\x00\xff")) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\x00\xff").decode()},
    }
    assert json.loads(mark_message(STREAM, "t3-s2")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "t3-s2"},
    }
    assert json.loads(clear_message(STREAM)) == {"event": "clear", "streamSid": STREAM}
    assert parse_outbound(media_message(STREAM, b"\x01"), STREAM) == Play(b"\x01")
    assert parse_outbound(mark_message(STREAM, "m"), STREAM) == Mark("m")
    assert parse_outbound(clear_message(STREAM), STREAM) == Clear()


def test_outbound_checks_are_twilios():
    with pytest.raises(ProtocolError, match="for stream 'MZa', not"):
        parse_outbound(clear_message("MZa"), STREAM)
    with pytest.raises(ProtocolError, match="may send only media, mark and clear"):
        parse_outbound(json.dumps({"event": "start", "streamSid": STREAM}), STREAM)
    with pytest.raises(ProtocolError, match="binary"):
        parse_outbound(b"{}", STREAM)


def test_the_simulators_messages_parse_as_twilios():
    writer = TwilioStreamWriter(STREAM, CALL, ACCOUNT)
    parser = StreamParser()
    assert isinstance(parser.receive(writer.connected()), Connected)
    start = parser.receive(writer.start({"token": "t"}))
    assert isinstance(start, Start) and start.custom_parameters == {"token": "t"}
    message = json.loads(writer.media(b"\xff" * 160, 20))
    assert (message["sequenceNumber"], message["media"]["chunk"], message["media"]["timestamp"]) == ("2", "1", "20")
    assert parser.receive(writer.media(b"\xff" * 160, 40)) == Media(b"\xff" * 160, 40, 2)
    assert parser.receive(writer.dtmf("#")) == Dtmf("#")
    assert parser.receive(writer.mark("m")) == Mark("m")
    assert parser.receive(writer.stop()) == Stop(CALL)


# ---------------------------------------------------------------- hostile input: every fault is a counted ProtocolError


def start_with(**changes: object) -> str:
    """Twilio's documented `start`, with fields of its `start` object replaced (a value of ... deletes one)."""
    message = json.loads(START)
    for key, value in changes.items():
        if value is ...:
            del message["start"][key]
        else:
            message["start"][key] = value
    return json.dumps(message)


def media_with(**changes: object) -> str:
    message = json.loads(media())
    message["media"].update(changes)
    return json.dumps(message)


def refused(parser: StreamParser, message: str | bytes) -> ProtocolError:
    """The ProtocolError `message` raises, checked to be short and on one line whatever the input held."""
    with pytest.raises(ProtocolError) as err:
        parser.receive(message)
    text = str(err.value)
    assert len(text) <= 300 and text.isascii() and text.isprintable(), text
    return err.value


def test_the_kinds_stay_the_metric_labels_the_server_counts():
    assert {str(kind) for kind in ErrorKind} == {
        "binary_frame",
        "too_large",
        "bad_json",
        "invalid_message",
        "unsupported_format",
        "wrong_stream_sid",
        "media_before_start",
        "dtmf_before_start",
        "mark_before_start",
    }
    err = refused(started(), b"\x00")
    assert err.kind == "binary_frame" and f"{err.kind}" == "binary_frame"  # a plain string as a label value


@pytest.mark.parametrize(
    "message",
    [
        "[" * 60_000,  # was a RecursionError out of json.loads
        "{" * 60_000,
        '{"event": "x", "a": ' + "[" * 33 + "]" * 33 + "}",  # valid JSON, just too deep
        '{"event": "x", "a": "' + "x" * MAX_MESSAGE_CHARS + '"}',
    ],
    ids=["60k-brackets", "60k-braces", "33-deep", "over-64k"],
)
def test_too_long_or_too_deep_is_refused_before_parsing(message):
    assert refused(started(), message).kind == ErrorKind.TOO_LARGE


def test_depth_is_counted_outside_strings_and_real_nesting_up_to_the_limit_passes():
    parser = started()
    in_a_string = json.dumps({"event": "x", "a": "[" * 100, "b": ["{" * 40]})
    assert parser.receive(in_a_string) == Unknown("x")
    assert parser.receive('{"event": "y", "a": ' + "[" * 31 + "]" * 31 + "}") == Unknown("y")  # 32 deep in all


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (start_with(mediaFormat="x"), "no 'mediaFormat' object"),  # was an AttributeError
        (start_with(mediaFormat=...), "no 'mediaFormat' object"),
        (start_with(tracks=5), "start.tracks must be a list"),  # was a TypeError
        (start_with(tracks=[{"a": 1}]), "start.tracks must be a list"),
        (start_with(tracks=["inbound"] * 5), "start.tracks must be a list of at most 4"),
        (start_with(customParameters={"token": {"nested": "object"}}), "customParameters['token'] must be a string"),
        (start_with(customParameters={"token": 7}), "customParameters['token'] must be a string"),
        (start_with(customParameters=["token"]), "customParameters must be an object"),
        (start_with(customParameters={str(i): "v" for i in range(MAX_PARAMETERS + 1)}), "at most 32"),
        (start_with(customParameters={"token": "x" * 500}), "at most 500 characters with its name"),
        (start_with(streamSid="MZ" + "1" * 100), "start.streamSid must be a SID"),
        (start_with(callSid="CA/../../Accounts"), "start.callSid must be a SID"),
        (start_with(callSid=None), "start.callSid must be a SID"),
        (start_with(accountSid=["AC1"]), "start.accountSid must be a SID"),
        (start_with(streamSid="MZ" + "2" * 32), "'start' names two streams"),
    ],
)
def test_a_malformed_start_is_refused_and_the_stream_stays_unstarted(message, words):
    parser = StreamParser()
    err = refused(parser, message)
    assert err.kind == ErrorKind.INVALID_MESSAGE and words in str(err)
    assert parser.stream_sid is None
    assert isinstance(parser.receive(START), Start)  # the real start still works


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": True},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000.0, "channels": 1},
        {"encoding": "audio/x-mulaw" * 1000, "sampleRate": 8000, "channels": 1},
        {},
    ],
)
def test_a_format_that_is_not_exactly_8k_mono_mulaw_is_unsupported(media_format):
    assert refused(StreamParser(), start_with(mediaFormat=media_format)).kind == ErrorKind.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (media().replace('"timestamp": "5"', '"timestamp": 1e400'), "got float inf"),  # was an OverflowError
        (media_with(timestamp="9" * 400), "media.timestamp must be a number"),  # was a 400-digit int
        (media().replace('"timestamp": "5"', '"timestamp": ' + "9" * 400), "media.timestamp must be a number"),
        (media_with(timestamp=MAX_COUNTER + 1), "from 0 to 2**63 - 1"),
        (media_with(timestamp=str(MAX_COUNTER + 1)), "from 0 to 2**63 - 1"),
        (media_with(chunk=-1), "media.chunk must be a number"),
        (media_with(chunk="-1"), "media.chunk must be a number"),
        (media_with(chunk=" 2"), "media.chunk must be a number"),
        (media_with(chunk="٢"), "media.chunk must be a number"),  # int() reads an Arabic-Indic digit
        (media_with(chunk=2.5), "media.chunk must be a number"),
        (media_with(chunk=True), "media.chunk must be a number"),
        (media_with(payload="é" * 8), "media.payload is not base64"),
        (media_with(payload="AAA"), "media.payload is not base64"),
        (media_with(payload=["AAAA"]), "media.payload must be a base64 string"),
        (media_with(track={"x": 1}), "media.track must be a string"),
        (media_with(track="t" * 65), "media.track must be a string of at most 64"),
        (json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "m" * 257}}), "at most 256"),
        (json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "12"}}), "dtmf.digit must be"),
        (json.dumps({"event": "stop", "streamSid": STREAM, "stop": "now"}), "'stop' must be an object"),
        (json.dumps({"event": "stop", "streamSid": STREAM, "stop": {"callSid": 5}}), "stop.callSid must be a SID"),
        (json.dumps({"event": "e" * 65}), "event name of 65 characters is over 64"),
    ],
)
def test_a_malformed_stream_event_is_refused_with_a_short_message(message, words):
    err = refused(started(), message)
    assert err.kind == ErrorKind.INVALID_MESSAGE and words in str(err)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_extensions_are_not_json(constant):
    assert refused(started(), media().replace('"timestamp": "5"', f'"timestamp": {constant}')).kind == "bad_json"


def test_counters_accept_what_twilio_sends_up_to_64_bits():
    parser = started()
    assert parser.receive(media_with(chunk="0", timestamp=str(MAX_COUNTER))) == Media(b"\xff" * 160, MAX_COUNTER, 0)
    assert parser.receive(media_with(chunk=7, timestamp="0042")) == Media(b"\xff" * 160, 42, 7)


def test_a_second_start_is_refused_and_the_first_stream_goes_on():
    parser = started()
    other = json.loads(START)
    other["streamSid"] = other["start"]["streamSid"] = "MZ" + "9" * 32
    for message in (START, json.dumps(other)):
        err = refused(parser, message)
        assert err.kind == ErrorKind.INVALID_MESSAGE and "second 'start'" in str(err)
    assert parser.stream_sid == STREAM
    assert isinstance(parser.receive(media()), Media)
    assert refused(parser, media(stream="MZ" + "9" * 32)).kind == ErrorKind.WRONG_STREAM_SID


def test_attacker_text_in_error_messages_is_clipped_to_one_short_line():
    huge = "\n" * 10_000
    assert refused(StreamParser(), huge).kind == ErrorKind.BAD_JSON
    assert refused(started(), json.dumps({"event": "media", "streamSid": huge})).kind == ErrorKind.WRONG_STREAM_SID
    assert refused(StreamParser(), start_with(customParameters={huge: "v"})).kind == ErrorKind.INVALID_MESSAGE
    encoding = {"encoding": huge, "sampleRate": 8000, "channels": 1}
    assert refused(StreamParser(), start_with(mediaFormat=encoding)).kind == ErrorKind.UNSUPPORTED_FORMAT


def test_what_twilio_may_add_is_still_accepted():
    parser = StreamParser()
    assert parser.receive('{"event": "connected", "protocol": "Call", "version": "1.0.0", "new": [1]}') == Connected(
        "Call", "1.0.0"
    )
    assert parser.receive('{"event": "connected"}') == Connected("", "")
    start = parser.receive(start_with(tracks=..., customParameters=None, extra={"a": [1, 2]}))
    assert isinstance(start, Start) and start.tracks == () and start.custom_parameters == {}
    assert parser.receive(json.dumps({"event": "e" * 64, "payload": {"deep": [[1]]}})) == Unknown("e" * 64)
    with_extras = json.loads(media())
    with_extras["media"]["something"] = {"new": True}
    with_extras["extra"] = None
    assert isinstance(parser.receive(json.dumps(with_extras)), Media)
    assert parser.receive(json.dumps({"event": "stop", "streamSid": STREAM})) == Stop("")
