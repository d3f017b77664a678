"""Twilio Media Streams messages, sans-I/O: parse what Twilio sends, build what we send back.

Twilio opens one WebSocket per call and sends JSON text frames in order: `connected`, `start`, then `media`
(20 ms of caller audio each, silence included) with `dtmf` and `mark` interleaved, and finally `stop`. We answer
with `media` (base64 mu-law 8 kHz, no header), `mark` and `clear`, each naming the stream's `streamSid`.

`StreamParser` checks one stream's inbound messages against that order and turns them into typed events; a
message that breaks the protocol raises `ProtocolError` carrying Twilio's error number for the fault, so the
caller of the parser can log it and close the socket. Events this module does not know are returned as
`Unknown` and counted, not refused: Twilio may add events, and one extra message must not end a call.

The other direction lives here too (`TwilioStreamWriter`, `parse_outbound`), so the Twilio simulator and the
tests speak the protocol from the same definitions as the server. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
DTMF_DIGITS = frozenset("0123456789*#")

# Twilio's error numbers for the faults we detect (their "Errors worth logging" list).
BINARY_FRAME = 31950
INVALID_MESSAGE = 31951


class ProtocolError(ValueError):
    """A message breaks the Media Streams protocol. `kind` labels the fault for metrics; `code` is the Twilio
    error number that describes it."""

    def __init__(self, kind: str, code: int, message: str) -> None:
        super().__init__(f"{message} (Twilio error {code})")
        self.kind = kind
        self.code = code


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
    return ProtocolError("invalid_message", INVALID_MESSAGE, message)


def _decode(message: str | bytes) -> dict:
    if isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError(
            "binary_frame", BINARY_FRAME, f"binary WebSocket frame of {len(message)} bytes: Media Streams use JSON text"
        )
    try:
        data = json.loads(message)
    except ValueError as exc:
        raise ProtocolError("bad_json", INVALID_MESSAGE, f"message is not JSON ({exc}): {message[:80]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise _invalid(f"message has no string 'event' field: {message[:80]!r}")
    return data


def _field(data: Mapping, key: str, kind: type, where: str) -> object:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _invalid(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
    return value


def _int_field(data: Mapping, key: str, where: str) -> int:
    """Twilio sends numeric counters as strings ("chunk": "2"); accept a plain number too."""
    value = data.get(key)
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _invalid(f"{where}.{key} must be a number or a numeric string, got {value!r}") from None


def _object(data: Mapping, key: str, event: str) -> Mapping:
    value = data.get(key)
    if not isinstance(value, dict):
        raise _invalid(f"'{event}' message has no '{key}' object")
    return value


def _payload(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise _invalid(f"{where}.payload must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"{where}.payload is not base64: {exc}") from exc


# ---------------------------------------------------------------- server side


class StreamParser:
    """One stream's inbound messages, in order: typed events out, protocol faults raised.

    Media, DTMF and marks are refused before `start` (there is no call to give them to yet) and refused when
    they name another stream's `streamSid`. `unknown_events` counts the events skipped as `Unknown`.
    """

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self.unknown_events = 0

    def receive(self, message: str | bytes) -> InboundEvent:
        data = _decode(message)
        event = data["event"]
        match event:
            case "connected":
                return Connected(str(data.get("protocol", "")), str(data.get("version", "")))
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
        stream_sid = _field(start, "streamSid", str, "start")
        if data.get("streamSid", stream_sid) != stream_sid:
            raise _invalid(f"'start' names two streams: {data.get('streamSid')!r} and {stream_sid!r}")
        media_format = start.get("mediaFormat") or {}
        fmt = (media_format.get("encoding"), media_format.get("sampleRate"), media_format.get("channels"))
        if fmt != (ENCODING, SAMPLE_RATE, 1):
            raise ProtocolError(
                "unsupported_format",
                INVALID_MESSAGE,
                f"stream media format {fmt} is not ({ENCODING!r}, {SAMPLE_RATE}, 1); use a bidirectional "
                "<Connect><Stream>, which always carries 8 kHz mono mu-law",
            )
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise _invalid(f"start.customParameters must be an object, got {params!r}")
        self.stream_sid = str(stream_sid)
        return Start(
            stream_sid=self.stream_sid,
            call_sid=str(_field(start, "callSid", str, "start")),
            account_sid=str(start.get("accountSid", "")),
            tracks=tuple(str(t) for t in start.get("tracks") or ()),
            custom_parameters=MappingProxyType({str(k): str(v) for k, v in params.items()}),
        )

    def _check_stream(self, data: Mapping, event: str) -> None:
        if self.stream_sid is None:
            if event == "stop":
                return  # the caller left before the stream started: nothing to check against
            raise ProtocolError(f"{event}_before_start", INVALID_MESSAGE, f"'{event}' message before 'start'")
        sid = data.get("streamSid")
        if sid != self.stream_sid:
            raise ProtocolError(
                "wrong_stream_sid",
                INVALID_MESSAGE,
                f"'{event}' message for stream {sid!r} on stream {self.stream_sid!r}",
            )

    def _stream_event(self, data: Mapping, event: str) -> InboundEvent:
        if event == "media":
            media = _object(data, "media", event)
            return Media(
                payload=_payload(media.get("payload"), "media"),
                timestamp_ms=_int_field(media, "timestamp", "media"),
                chunk=_int_field(media, "chunk", "media"),
                track=str(media.get("track", "inbound")),
            )
        if event == "dtmf":
            digit = _field(_object(data, "dtmf", event), "digit", str, "dtmf")
            if digit not in DTMF_DIGITS:
                raise _invalid(f"dtmf.digit {digit!r} is not one of 0-9, * or #")
            return Dtmf(str(digit))
        if event == "mark":
            return Mark(str(_field(_object(data, "mark", event), "name", str, "mark")))
        stop = data.get("stop")
        return Stop(str(stop.get("callSid", "")) if isinstance(stop, dict) else "")


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
    event = data["event"]
    if data.get("streamSid") != stream_sid:
        raise ProtocolError(
            "wrong_stream_sid", INVALID_MESSAGE, f"'{event}' for stream {data.get('streamSid')!r}, not {stream_sid!r}"
        )
    if event == "media":
        return Play(_payload(_object(data, "media", event).get("payload"), "media"))
    if event == "mark":
        return Mark(str(_field(_object(data, "mark", event), "name", str, "mark")))
    if event == "clear":
        return Clear()
    raise _invalid(f"unknown outbound event {event!r}: the server may send only media, mark and clear")
