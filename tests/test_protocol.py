"""Media Streams messages, sans-I/O: Twilio's documented message shapes in, protocol faults named, and the
server's outbound messages exactly as Twilio expects them."""

from __future__ import annotations

import base64
import json

import pytest

from telephony.protocol import (
    BINARY_FRAME,
    INVALID_MESSAGE,
    Clear,
    Connected,
    Dtmf,
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
