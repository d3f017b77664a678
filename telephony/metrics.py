"""The metrics `voicebot serve` exposes at `GET /metrics`, kept in a `prometheus_client` registry of their own.

Each `ServerMetrics` has its own `CollectorRegistry`, never the library's global one, so several servers can run
in one process (the tests do). Every label value comes from a fixed set (the enums below, `Route`,
`HandoffReason`); anything else is counted as "other", so what a caller or client sends can never add series.
Every series of those sets exists from the start at 0, so `rate()` and `increase()` see the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from telephony.protocol import ErrorKind
from voicebot.routes import HandoffReason, Route

OTHER = "other"  # the label value of anything outside a metric's fixed set
LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class LatencyStage(StrEnum):
    """The keys of a turn's `latency_ms` that are durations, in ms: the only ones the histogram takes. The others
    (`pause_at_media_ms`, `clear_at_media_ms`: positions on the call's media clock; `_`-prefixed working
    values) are no latencies and are left out."""

    ENDPOINT = "endpoint"  # the caller's last sound to the VAD's end of turn
    STT = "stt"  # end of turn to the transcript, as waited for
    STT_COMPUTE = "stt_compute"  # Whisper's own compute time
    ROUTE = "route"
    LLM_FIRST_TOKEN = "llm_first_token"
    TTS_FIRST_AUDIO = "tts_first_audio"
    FIRST_AUDIO_OUT = "first_audio_out"  # the caller's last sound to the reply's first audio sent
    FILLER = "filler"  # end of turn to "One moment."
    PAUSE = "pause"  # the caller's first sound over the bot to the bot's audio held
    BARGE_IN = "barge_in"  # the caller's first sound over the bot to the phone's buffer cleared


class ServerFault(StrEnum):
    """The server's own faults, for `voicebot_errors_total{kind}`; the media stream's protocol faults are
    `telephony.protocol.ErrorKind`, counted under the same label."""

    CALL_CONTROL = "call_control"  # Twilio's REST API refused a transfer or hang-up
    HANDOFF_UNANSWERED = "handoff_unanswered"
    STREAM_ERROR = "stream_error"  # Twilio's stream status callback reported one
    NO_START = "no_start"
    UNKNOWN_EVENT = "unknown_event"
    SOCKET_LIMIT = "socket_limit"  # too many media sockets waiting for their `start`
    IDLE_STREAM = "idle_stream"
    INTERNAL = "internal"
    STORE = "store"


class Refusal(StrEnum):
    """Why a call got the busy TwiML instead of a stream."""

    CAPACITY = "capacity"
    SHUTTING_DOWN = "shutting_down"


class AuthCheck(StrEnum):
    """The check a refused request or socket failed."""

    WEBHOOK_SIGNATURE = "webhook_signature"
    STATUS_SIGNATURE = "status_signature"
    DIAL_SIGNATURE = "dial_signature"
    UPGRADE_SIGNATURE = "upgrade_signature"
    STREAM_TOKEN = "stream_token"
    WEBHOOK_REPLAY = "webhook_replay"  # a signed webhook for a call whose stream has started already
    DIAL_REPLAY = "dial_replay"  # a <Dial> report for a call not handed off from here
    DUPLICATE_STREAM = "duplicate_stream"  # a second stream for a live call


class StreamEnd(StrEnum):
    """How a call's media stream ended, for `voicebot_calls_ended_total{how}`."""

    STOP = "stop"  # Twilio's `stop`: the caller hung up, or the call moved on (a hand-off)
    DISCONNECT = "disconnect"  # the socket closed without a `stop`
    IDLE = "idle"  # nothing arrived for server.idle_timeout_s
    FLOOD = "flood"  # messages came faster than the call could take them, for too long
    PROTOCOL = "protocol_error"  # a message broke the protocol
    BOT = "bot"  # the session ended the call: hang-up or hand-off
    SHUTDOWN = "shutdown"  # still live when the shutdown's time ran out
    INTERNAL = "internal_error"  # a fault of ours: logged with its traceback


def _label_set(*enums: type[StrEnum]) -> tuple[str, ...]:
    """A label's values in the enums' order (the order /metrics lists them), then "other"."""
    return (*(member.value for values in enums for member in values), OTHER)


def _bounded(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


class ServerMetrics:
    """What `voicebot serve` counts. Turns, tickets and hand-offs are counted as the call commits them, so a
    long call's turns show while it is still live."""

    def __init__(self, calls_active: Callable[[], float]) -> None:
        """`calls_active`: how many calls are connected now, read at each scrape."""
        self.registry = CollectorRegistry()
        self._routes, self._handoffs = _label_set(Route), _label_set(HandoffReason)
        self._kinds, self._refusals = _label_set(ServerFault, ErrorKind), _label_set(Refusal)
        self._checks, self._ends = _label_set(AuthCheck), _label_set(StreamEnd)
        r = self.registry
        Gauge("voicebot_calls_active", "Calls connected to the media socket now.", registry=r).set_function(
            calls_active
        )
        self._calls = Counter("voicebot_calls_total", "Calls whose media stream started.", registry=r)
        self._ended = Counter(
            "voicebot_calls_ended_total", "Calls whose media stream ended, by how.", ("how",), registry=r
        )
        self._refused = Counter(
            "voicebot_calls_refused_total",
            "Calls answered with the busy TwiML instead of a stream.",
            ("reason",),
            registry=r,
        )
        self._turns = Counter("voicebot_turns_total", "Turns committed, by route.", ("route",), registry=r)
        self._tickets = Counter("voicebot_tickets_total", "Support tickets opened during calls.", registry=r)
        self._handed_off = Counter(
            "voicebot_handoffs_total", "Calls handed to a person, by reason.", ("reason",), registry=r
        )
        self._errors = Counter("voicebot_errors_total", "Errors, by kind.", ("kind",), registry=r)
        self._auth_failures = Counter(
            "voicebot_auth_failures_total",
            "Requests refused for a missing or wrong X-Twilio-Signature or stream token, by check.",
            ("check",),
            registry=r,
        )
        self._latency = Histogram(
            "voicebot_stage_latency_seconds",
            "Per-turn latency of each pipeline stage.",
            ("stage",),
            registry=r,
            buckets=LATENCY_BUCKETS_S,
        )
        for metric, values in (
            (self._ended, self._ends),
            (self._refused, self._refusals),
            (self._turns, self._routes),
            (self._handed_off, self._handoffs),
            (self._errors, self._kinds),
            (self._auth_failures, self._checks),
            (self._latency, tuple(LatencyStage)),
        ):
            for value in values:
                metric.labels(value)

    # ------------------------------------------------------------ what the server counts

    def call_started(self) -> None:
        self._calls.inc()

    def call_ended(self, how: StreamEnd) -> None:
        self._ended.labels(_bounded(how, self._ends)).inc()

    def refused(self, reason: Refusal | str) -> None:
        self._refused.labels(_bounded(reason, self._refusals)).inc()

    def error(self, kind: ServerFault | ErrorKind | str) -> None:
        self._errors.labels(_bounded(kind, self._kinds)).inc()

    def auth_failure(self, check: AuthCheck | str) -> None:
        self._auth_failures.labels(_bounded(check, self._checks)).inc()

    def turn_committed(self, route: Route, latency_ms: Mapping[str, float | None]) -> None:
        """A turn as the call commits it: counted by route; its stage durations go into the latency histogram,
        any other key of `latency_ms` is left out (see `LatencyStage`)."""
        self._turns.labels(_bounded(route, self._routes)).inc()
        for stage in LatencyStage:
            ms = latency_ms.get(stage)
            if ms is not None:
                self._latency.labels(stage).observe(ms / 1000)

    def ticket_opened(self) -> None:
        self._tickets.inc()

    def handed_off(self, reason: HandoffReason | str) -> None:
        self._handed_off.labels(_bounded(reason, self._handoffs)).inc()

    # ------------------------------------------------------------ reading them

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and Content-Type for `GET /metrics`, in the format the scraper's `Accept` header asks for:
        Prometheus text 0.0.4 unless it asks for OpenMetrics or text 1.0.0."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def value(self, name: str, **labels: str) -> float:
        """One sample's value, e.g. `value("voicebot_errors_total", kind="store")`, for tests and checks.
        Every series of the fixed label sets exists from the start, so a miss is a wrong name or label."""
        sample = self.registry.get_sample_value(name, labels)
        if sample is None:
            raise LookupError(f"no sample {name}{labels or ''} in the server's metrics: check the name and labels")
        return sample
