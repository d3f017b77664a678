"""Twilio Media Streams messages, sans-I/O: parse what Twilio sends, build what we send back.

Twilio opens one WebSocket per call and sends JSON text frames in order: `connected`, `start`, then `media`
(20 ms of caller audio each, silence included) with `dtmf` and `mark` interleaved, and finally `stop`. We answer
with `media` (base64 mu-law 8 kHz, no header), `mark` and `clear`, each naming the stream's `streamSid`.

`StreamParser` checks one stream's inbound messages against that order and turns them into typed events; a
message that breaks the protocol raises `ProtocolError` carrying Twilio's error number for the fault, so the
caller of the parser can log it and close the socket. Events this module does not know are returned as
`Unknown` and counted, not refused: Twilio may add events, and one extra message must not end a call.

Anyone who can open the media socket reaches the parser before `start` proves the call (an upgrade signature
covers only the URL, so it can be replayed), so every message is treated as hostile: it is refused cheaply when
too long or nested too deeply, every field used is type- and range-checked, and `ProtocolError` is the only
exception `StreamParser.receive` raises. Its `kind` is one of the few `ErrorKind` labels (a metric label) and
its message is ASCII, quoting the input clipped to a short line.

The other direction lives here too (`TwilioStreamWriter`, `parse_outbound`), so the Twilio simulator and the
tests speak the protocol from the same definitions as the server. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from telephony.log_limit import clip

ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
DTMF_DIGITS = frozenset("0123456789*#")

# Twilio's error numbers for the faults we detect (their "Errors worth logging" list).
BINARY_FRAME = 31950
INVALID_MESSAGE = 31951

# Bounds on what a message may hold. Twilio's own messages stay far inside them: a 20 ms media message is ~300
# characters and nests 3 deep, and <Parameter> name + value must be under 500 characters.
MAX_MESSAGE_CHARS = 2**16  # the media socket's frame limit (websockets max_size) too
MAX_DEPTH = 32  # arrays and objects within each other; far below json's recursion limit
MAX_NAME_CHARS = 64  # event names, SIDs, tracks, connected.protocol/version
MAX_MARK_CHARS = 256  # mark names: ours, echoed back
MAX_TRACKS = 4
MAX_PARAMETERS = 32
MAX_PARAMETER_CHARS = 500  # one custom parameter's name and value together
MAX_COUNTER = 2**63 - 1  # chunk and timestamp: non-negative, fit a signed 64-bit integer

_SID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}")
_DIGITS = re.compile(rf"[0-9]{{1,{len(str(MAX_COUNTER))}}}")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string literal, escapes included
# bytes.translate arguments that keep only brackets, as +1 (opening) and -1 (closing) int8 values.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[{]}"))


class ErrorKind(StrEnum):
    """Why a message was refused: the `kind` label of the errors metric, so a small fixed set."""

    BINARY_FRAME = "binary_frame"
    TOO_LARGE = "too_large"  # over MAX_MESSAGE_CHARS, or nested deeper than MAX_DEPTH
    BAD_JSON = "bad_json"
    INVALID_MESSAGE = "invalid_message"  # a field missing, of the wrong type or out of range; a second 'start'
    UNSUPPORTED_FORMAT = "unsupported_format"
    WRONG_STREAM_SID = "wrong_stream_sid"
    MEDIA_BEFORE_START = "media_before_start"
    DTMF_BEFORE_START = "dtmf_before_start"
    MARK_BEFORE_START = "mark_before_start"


class ProtocolError(ValueError):
    """A message breaks the Media Streams protocol. `kind` labels the fault for metrics; `code` is the Twilio
    error number that describes it."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        self.kind = kind
        self.code = BINARY_FRAME if kind is ErrorKind.BINARY_FRAME else INVALID_MESSAGE
        super().__init__(f"{message} (Twilio error {self.code})")


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Media:
    """Caller audio: `payload` is raw mu-law bytes; `timestamp_ms` is media time since the stream started."""

    payload: bytes
    timestamp_ms: int
    chunk: int
    track: str = "inbound"


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    """A mark: inbound, playback reached it (or a `clear` dropped it); outbound, one we asked to be echoed."""

    name: str


@dataclass(frozen=True)
class Stop:
    call_sid: str


@dataclass(frozen=True)
class Unknown:
    """An event this parser does not know; skipped."""

    event: str


@dataclass(frozen=True)
class Play:
    """Outbound audio for the caller: raw mu-law bytes."""

    payload: bytes


@dataclass(frozen=True)
class Clear:
    """Outbound: drop everything buffered for playback and return every pending mark."""


InboundEvent = Connected | Start | Media | Dtmf | Mark | Stop | Unknown
OutboundEvent = Play | Mark | Clear


# ---------------------------------------------------------------- helpers


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorKind.INVALID_MESSAGE, message)


def _got(value: object) -> str:
    """What a field held, for an error message: its type and a clipped repr."""
    return "nothing" if value is None else f"{type(value).__name__} {clip(value, 40)}"


def _too_deep(text: str) -> bool:
    """Whether `text` nests arrays and objects deeper than MAX_DEPTH, counting brackets outside its strings.

    Up to the first fault in broken JSON (all json.loads recurses into), strings are found as json finds them and
    everything else is ASCII, so the depth counted there is exact. A 64 KiB message takes 1-3 ms.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    steps = _STRING.sub("", text).encode("ascii", "ignore").translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return int(np.cumsum(np.frombuffer(steps, np.int8), dtype=np.int64).max(initial=0)) > MAX_DEPTH


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _decode(message: str | bytes) -> dict[str, object]:
    if isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError(
            ErrorKind.BINARY_FRAME,
            f"binary WebSocket frame of {len(message)} bytes: Media Streams use JSON text",
        )
    if len(message) > MAX_MESSAGE_CHARS:
        raise ProtocolError(
            ErrorKind.TOO_LARGE, f"message of {len(message)} characters is over {MAX_MESSAGE_CHARS}: {clip(message)}"
        )
    if _too_deep(message):
        raise ProtocolError(ErrorKind.TOO_LARGE, f"message nests deeper than {MAX_DEPTH} levels: {clip(message)}")
    try:
        data = json.loads(message, parse_constant=_no_constant)
    except ValueError as exc:
        raise ProtocolError(ErrorKind.BAD_JSON, f"message is not JSON ({clip(str(exc))}): {clip(message)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise _invalid(f"message has no string 'event' field: {clip(message)}")
    if len(data["event"]) > MAX_NAME_CHARS:
        raise _invalid(f"event name of {len(data['event'])} characters is over {MAX_NAME_CHARS}: {clip(data['event'])}")
    return data


def _object(data: Mapping, key: str, where: str) -> Mapping:
    value = data.get(key)
    if not isinstance(value, dict):
        raise _invalid(f"'{where}' message has no '{key}' object (got {_got(value)})")
    return value


def _text(data: Mapping, key: str, where: str, limit: int, default: str | None = None) -> str:
    """A string field of at most `limit` characters; `default` stands in for an absent (or null) optional one."""
    value = data.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or len(value) > limit:
        raise _invalid(f"{where}.{key} must be a string of at most {limit} characters, got {_got(value)}")
    return value


def _sid(data: Mapping, key: str, where: str, default: str | None = None) -> str:
    """A Twilio SID (`MZ…`, `CA…`, `AC…`): letters, digits, '-' or '_', so it is safe in logs, URLs and SQL."""
    value = data.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise _invalid(f"{where}.{key} must be a SID of 1-{MAX_NAME_CHARS} letters, digits, - or _, got {_got(value)}")
    return value


def _counter(data: Mapping, key: str, where: str) -> int:
    """Twilio sends numeric counters as strings ("chunk": "2"); accept a plain whole number too."""
    value = data.get(key)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_COUNTER:
        raise _invalid(
            f"{where}.{key} must be a number or a numeric string from 0 to 2**63 - 1, got {_got(data.get(key))}"
        )
    return value


def _payload(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise _invalid(f"{where}.payload must be a base64 string, got {_got(text)}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"{where}.payload is not base64 ({clip(str(exc))}): {clip(text)}") from exc


def _tracks(start: Mapping) -> tuple[str, ...]:
    tracks = start.get("tracks")
    if tracks is None:
        return ()
    if (
        not isinstance(tracks, list)
        or len(tracks) > MAX_TRACKS
        or not all(isinstance(t, str) and len(t) <= MAX_NAME_CHARS for t in tracks)
    ):
        raise _invalid(
            f"start.tracks must be a list of at most {MAX_TRACKS} names of at most {MAX_NAME_CHARS} characters, "
            f"got {_got(tracks)}"
        )
    return tuple(tracks)


def _check_format(start: Mapping) -> None:
    media_format = _object(start, "mediaFormat", "start")
    fmt = (media_format.get("encoding"), media_format.get("sampleRate"), media_format.get("channels"))
    if fmt != (ENCODING, SAMPLE_RATE, 1) or [type(v) for v in fmt] != [str, int, int]:
        shown = ", ".join(clip(v, 40) for v in fmt)
        raise ProtocolError(
            ErrorKind.UNSUPPORTED_FORMAT,
            f"stream media format ({shown}) is not ({ENCODING!r}, {SAMPLE_RATE}, 1); use a bidirectional "
            "<Connect><Stream>, which always carries 8 kHz mono mu-law",
        )


def _custom_parameters(start: Mapping) -> Mapping[str, str]:
    """The <Parameter> values: at most MAX_PARAMETERS strings, each under Twilio's length limit with its name."""
    params = start.get("customParameters")
    if params is None:
        params = {}
    if not isinstance(params, dict) or len(params) > MAX_PARAMETERS:
        raise _invalid(
            f"start.customParameters must be an object of at most {MAX_PARAMETERS} parameters, got {_got(params)}"
        )
    for name, value in params.items():
        if not isinstance(value, str) or len(name) + len(value) > MAX_PARAMETER_CHARS:
            raise _invalid(
                f"start.customParameters[{clip(name, 40)}] must be a string of at most {MAX_PARAMETER_CHARS} "
                f"characters with its name, got {_got(value)}"
            )
    return MappingProxyType(dict(params))


# ---------------------------------------------------------------- server side


class StreamParser:
    """One stream's inbound messages, in order: typed events out, protocol faults raised as `ProtocolError`.

    Media, DTMF and marks are refused before `start` (there is no call to give them to yet) and refused when
    they name another stream's `streamSid`. A refused message leaves the state as it was. `unknown_events`
    counts the events skipped as `Unknown`.
    """

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self.unknown_events = 0

    def receive(self, message: str | bytes) -> InboundEvent:
        data = _decode(message)
        event = str(data["event"])
        match event:
            case "connected":
                return Connected(
                    _text(data, "protocol", "connected", MAX_NAME_CHARS, default=""),
                    _text(data, "version", "connected", MAX_NAME_CHARS, default=""),
                )
            case "start":
                return self._start(data)
            case "media" | "dtmf" | "mark" | "stop":
                self._check_stream(data, event)
                return self._stream_event(data, event)
        self.unknown_events += 1
        return Unknown(event)

    def _start(self, data: Mapping) -> Start:
        if self.stream_sid is not None:
            raise _invalid(f"second 'start' on stream {self.stream_sid}")
        start = _object(data, "start", "start")
        stream_sid = _sid(start, "streamSid", "start")
        if data.get("streamSid", stream_sid) != stream_sid:
            raise _invalid(f"'start' names two streams: {clip(data.get('streamSid'))} and {stream_sid!r}")
        _check_format(start)
        parsed = Start(
            stream_sid=stream_sid,
            call_sid=_sid(start, "callSid", "start"),
            account_sid=_sid(start, "accountSid", "start", default=""),
            tracks=_tracks(start),
            custom_parameters=_custom_parameters(start),
        )
        self.stream_sid = stream_sid
        return parsed

    def _check_stream(self, data: Mapping, event: str) -> None:
        if self.stream_sid is None:
            if event == "stop":
                return  # the caller left before the stream started: nothing to check against
            raise ProtocolError(ErrorKind(f"{event}_before_start"), f"'{event}' message before 'start'")
        sid = data.get("streamSid")
        if sid != self.stream_sid:
            raise ProtocolError(
                ErrorKind.WRONG_STREAM_SID, f"'{event}' message for stream {clip(sid)} on stream {self.stream_sid!r}"
            )

    def _stream_event(self, data: Mapping, event: str) -> InboundEvent:
        if event == "media":
            media = _object(data, "media", event)
            return Media(
                payload=_payload(media.get("payload"), "media"),
                timestamp_ms=_counter(media, "timestamp", "media"),
                chunk=_counter(media, "chunk", "media"),
                track=_text(media, "track", "media", MAX_NAME_CHARS, default="inbound"),
            )
        if event == "dtmf":
            digit = _text(_object(data, "dtmf", event), "digit", "dtmf", 1)
            if digit not in DTMF_DIGITS:
                raise _invalid(f"dtmf.digit {clip(digit)} is not one of 0-9, * or #")
            return Dtmf(digit)
        if event == "mark":
            return Mark(_text(_object(data, "mark", event), "name", "mark", MAX_MARK_CHARS))
        stop = data.get("stop")
        if stop is None:
            return Stop("")
        if not isinstance(stop, dict):
            raise _invalid(f"'stop' message's 'stop' must be an object, got {_got(stop)}")
        return Stop(_sid(stop, "callSid", "stop", default=""))


def media_message(stream_sid: str, payload: bytes) -> str:
    """Audio for the caller: raw mu-law 8 kHz mono bytes, base64 in JSON (no WAV header)."""
    text = base64.b64encode(payload).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": text}})


def mark_message(stream_sid: str, name: str) -> str:
    """Ask Twilio to echo `name` back when playback reaches this point."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Drop the caller's playback buffer now; Twilio then echoes every pending mark."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})


# ---------------------------------------------------------------- Twilio side (simulator, tests)


class TwilioStreamWriter:
    """Builds the messages Twilio sends on one stream, with its string-typed counters, for the simulator."""

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str) -> None:
        self.stream_sid, self.call_sid, self.account_sid = stream_sid, call_sid, account_sid
        self._sequence = 0
        self._chunk = 0

    def _message(self, event: str, **body: object) -> str:
        self._sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(self._sequence), "streamSid": self.stream_sid, **body})

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, custom_parameters: Mapping[str, str]) -> str:
        return self._message(
            "start",
            start={
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": ENCODING, "sampleRate": SAMPLE_RATE, "channels": 1},
                "customParameters": dict(custom_parameters),
            },
        )

    def media(self, payload: bytes, timestamp_ms: int) -> str:
        self._chunk += 1
        return self._message(
            "media",
            media={
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
        )

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    def mark(self, name: str) -> str:
        return self._message("mark", mark={"name": name})

    def stop(self) -> str:
        return self._message("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})


def parse_outbound(message: str | bytes, stream_sid: str) -> OutboundEvent:
    """What Twilio checks in the server's messages: JSON text, a known event, the stream's own streamSid."""
    data = _decode(message)
    event = str(data["event"])
    if data.get("streamSid") != stream_sid:
        raise ProtocolError(
            ErrorKind.WRONG_STREAM_SID, f"'{event}' for stream {clip(data.get('streamSid'))}, not {stream_sid!r}"
        )
    if event == "media":
        return Play(_payload(_object(data, "media", event).get("payload"), "media"))
    if event == "mark":
        return Mark(_text(_object(data, "mark", event), "name", "mark", MAX_MARK_CHARS))
    if event == "clear":
        return Clear()
    raise _invalid(f"unknown outbound event {clip(event)}: the server may send only media, mark and clear")
