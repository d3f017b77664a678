"""`voicebot serve`: one asyncio process that answers Twilio calls with the voice agent.

Two listeners, because each job has the library that does it properly:
- HTTP (aiohttp, `server.port`): `POST`/`GET /twiml` (the voice webhook: TwiML that connects the call to the
  media socket with a one-time token, or the polite busy answer), `POST /stream-status` (Twilio's stream
  status callback), `GET /healthz` and `GET /metrics` (Prometheus text);
- the Media Streams WebSocket (websockets, `server.media_port`, path `/media`).

Per call, the socket's messages go through the sans-I/O `StreamParser` into the call's `CallRunner`; the
runner's actions come back through `StreamTransport`, which paces the bot's audio like a phone would play
it. The stream must pass the upgrade signature and bring back its token before any audio is processed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import signal
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telephony.call_control import CallControl, CallControlError
from telephony.log_limit import LogBudget, clip
from telephony.metrics import AuthCheck, Refusal, ServerFault, ServerMetrics, StreamEnd
from telephony.protocol import (
    MAX_MESSAGE_CHARS,
    Dtmf,
    ErrorKind,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    StreamParser,
    Unknown,
    clear_message,
    mark_message,
    media_message,
)
from telephony.security import (
    DIAL_PATH,
    MEDIA_PATH,
    STATUS_PATH,
    TWIML_PATH,
    PublicUrls,
    SignatureChecker,
    StreamGrant,
    StreamTokens,
    check_exposure,
)
from telephony.twiml import busy_response, connect_stream, hang_up
from voicebot.agent import VoiceAgent
from voicebot.audio import ulaw_decode, ulaw_encode
from voicebot.call_runner import CallFlooded, CallRunner
from voicebot.config import ConfigError, Settings
from voicebot.heap import HeapTrimmer
from voicebot.session import AudioIn, CallerHungUp, CallStarted, DtmfIn, MarkEchoed
from voicebot.store import StoreError, mask_number

log = logging.getLogger(__name__)

BYTES_PER_MS = 8  # mu-law 8 kHz: one byte per sample
CHUNK_MS = 40  # outbound audio goes out in 40 ms chunks (20-60 ms: see _chunks)
LEAD_MS = 100  # send while less than this is buffered ahead of playback: the lead stays under 100 + 60 ms
START_TIMEOUT_S = 10.0  # a media socket must send `start` this soon after opening

MAX_WEBHOOK_BYTES = 2**16  # Twilio's webhook forms are well under 4 KiB
STORE_READ_S = 1.0  # the webhook's look-up of earlier streams gives up after this: callers are not kept waiting
CLOSE_GRACE_S = 5.0  # at shutdown, for sockets to close and records to be written
SIGNATURE_HEADER = "X-Twilio-Signature"
ULAW_SILENCE = b"\xff"


def _chunks(ulaw: bytes) -> list[bytes]:
    """Split audio into 40 ms chunks. A tail under 20 ms joins the chunk before it (at most 60 ms), and a
    whole sentence under 20 ms is padded with silence: tiny chunks make Twilio's playback jitter."""
    size, floor = CHUNK_MS * BYTES_PER_MS, CHUNK_MS * BYTES_PER_MS // 2
    if len(ulaw) < floor:
        return [ulaw.ljust(floor, ULAW_SILENCE)] if ulaw else []
    chunks = [ulaw[i : i + size] for i in range(0, len(ulaw), size)]
    if len(chunks) > 1 and len(chunks[-1]) < floor:
        tail = chunks.pop()
        chunks[-1] += tail
    return chunks


class StreamTransport:
    """The call runner's transport over one media socket.

    The bot's audio is queued with its marks in order and sent by a pacer task in 20-60 ms chunks, never
    more than 160 ms ahead of where the caller's playback is (plus up to one 20 ms frame where playback
    restarts after a pause), within the 200 ms budget. The pacer's clock is the call's media time
    (the latest inbound frame's timestamp), which runs in real time on a real call and as fast as the
    simulator streams in a sped-up test; wall time since the stream started takes over if inbound frames
    stall. `clear` drops the queued audio and goes out at once; queued marks follow it, so Twilio echoes
    every mark the session sent exactly once. `pause` stops sending audio (Twilio plays out the little it
    has) and keeps the rest queued for `resume`; a `clear` ends a pause.
    """

    def __init__(
        self,
        ws: ServerConnection,
        stream_sid: str,
        call_sid: str,
        control: CallControl,
        human_number: str,
        metrics: ServerMetrics,
        dial_url: str = "",
        on_handed_off: Callable[[str], None] | None = None,
    ) -> None:
        """`dial_url`: where Twilio reports how a hand-off's `<Dial>` ended (`DIAL_PATH`); `on_handed_off` is told
        the CallSid once Twilio has taken the hand-off, so that report may bring the call back."""
        self.ws, self.stream_sid, self.call_sid = ws, stream_sid, call_sid
        self.control, self.human_number, self.metrics, self.dial_url = control, human_number, metrics, dial_url
        self.on_handed_off = on_handed_off
        self._queue: deque[bytes | str] = deque()  # mu-law chunks and mark names
        self._wake = asyncio.Event()
        self._started = time.monotonic()
        self._media_ms = 0.0
        self._played_until_ms = 0.0  # media time at which everything sent so far has been played
        self._paused = False
        self._pacer: asyncio.Task | None = None

    def start(self) -> None:
        self._pacer = asyncio.get_running_loop().create_task(self._pace())

    async def close(self) -> None:
        """Stop sending. Waits for the pacer without swallowing a cancel aimed at the caller of `close`."""
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.wait({self._pacer})

    def media_time(self, timestamp_ms: int) -> None:
        """An inbound frame arrived: the call's media clock has advanced."""
        self._media_ms = max(self._media_ms, float(timestamp_ms))
        self._wake.set()

    def _now_ms(self) -> float:
        return max(self._media_ms, (time.monotonic() - self._started) * 1000)

    async def play(self, pcm: np.ndarray) -> None:
        self._queue.extend(_chunks(ulaw_encode(pcm)))
        self._wake.set()

    async def mark(self, name: str) -> None:
        self._queue.append(name)
        self._wake.set()

    async def clear(self) -> None:
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue = deque(marks)
        self._played_until_ms = self._now_ms()  # Twilio empties its buffer at once
        self._paused = False
        await self._send(clear_message(self.stream_sid))
        self._wake.set()

    async def pause(self) -> None:
        self._paused = True

    async def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def transfer(self, reason: str) -> bool:
        log.info("call %s: handing off to a person (%s)", self.call_sid, reason)
        if self.on_handed_off is not None:  # before the request: Twilio may report on the <Dial> before it returns
            self.on_handed_off(self.call_sid)
        return await self._control(self.control.transfer(self.call_sid, self.human_number, self.dial_url))

    async def hangup(self) -> None:
        log.info("call %s: the bot hangs up", self.call_sid)
        await self._control(self.control.hangup(self.call_sid))

    async def _control(self, request: Awaitable[None]) -> bool:
        """Carry out a REST request on the call; False (logged and counted) when Twilio refused it."""
        try:
            await request
        except CallControlError as exc:
            self.metrics.error(ServerFault.CALL_CONTROL)
            log.error("%s", exc)
            return False
        return True

    async def _send(self, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # the caller left; the reader ends the call
            await self.ws.send(message)

    async def _pace(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._now_ms()
            self._played_until_ms = max(self._played_until_ms, now)
            lead = self._played_until_ms - now
            item = self._queue[0]
            if isinstance(item, bytes) and self._paused:
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(item, bytes) and lead >= LEAD_MS:
                self._wake.clear()
                # Not asyncio.wait_for: on Python 3.11 it loses a cancel that lands as the event is set, and
                # this task then waits forever, holding up the call's end and the server's shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout((lead - LEAD_MS) / 1000):
                        await self._wake.wait()
                continue
            self._queue.popleft()
            if isinstance(item, str):
                await self._send(mark_message(self.stream_sid, item))
            else:
                self._played_until_ms += len(item) / BYTES_PER_MS
                await self._send(media_message(self.stream_sid, item))


@dataclass
class _LiveCall:
    runner: CallRunner
    done: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.contextmanager
def _bind_error(setting: str, host: str, port: int) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host} port {port} ({setting}): {exc.strerror or exc}; choose another port "
            "(--port / --media-port) or stop what uses it"
        ) from exc


def _source(connection: ServerConnection) -> str:
    """The peer's address, the unit the per-source socket limit counts."""
    address = connection.remote_address
    return str(address[0]) if address else "?"


class VoiceServer:
    """The webhook, status, health and metrics endpoints and the media socket, sharing one loaded agent."""

    def __init__(self, settings: Settings, agent: VoiceAgent) -> None:
        self.settings, self.agent = settings, agent
        self.server = settings.server
        self.control = CallControl.from_settings(self.server)
        self.metrics = ServerMetrics(calls_active=lambda: len(self._calls))
        self.tokens = StreamTokens(ttl_s=self.server.stream_token_ttl_s)
        self.urls = PublicUrls.from_settings(self.server)
        self.signatures = SignatureChecker(self.server.twilio_auth_token, self.urls)
        self.http_port = self.media_port = 0
        self.metrics_port: int | None = None  # where /metrics and /healthz listen when on their own port
        self._calls: dict[str, _LiveCall] = {}
        self._unauthenticated: collections.Counter[str] = collections.Counter()  # sockets before `start`, by source
        self._draining = False
        self._changed = asyncio.Event()  # a call started or ended: the shutdown looks again
        self._force = asyncio.Event()  # a second signal: stop waiting for live calls
        self._refusals = LogBudget()  # refused upgrades: logged, but never a line per attacker's request
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="store-read")  # never the loop's thread
        self._heap = HeapTrimmer()
        self._trimming: asyncio.Future[float | None] | None = None  # at most one trim at a time
        # Checked once at start-up: a hand-off with nowhere to go would say "I'll put you through" and drop the
        # caller. Without one, callers who ask for a person hear that nobody can be reached and get a ticket.
        self.no_hand_off = self.control.cannot_transfer(self.server.human_number)
        if self.no_hand_off:
            log.warning("hand-off to a person is off: %s; callers who ask for one get a ticket", self.no_hand_off)
        self._http: web.AppRunner | None = None
        self._internal: web.AppRunner | None = None
        self._media: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on both ports (port 0 picks a free one; the bound ports are in http_port/media_port), and on
        server.metrics_port for /metrics and /healthz when that is set."""
        internal = [web.get("/healthz", self._healthz), web.get("/metrics", self._metrics)]
        public = [
            web.post(TWIML_PATH, self._twiml),
            web.get(TWIML_PATH, self._twiml),
            web.post(STATUS_PATH, self._stream_status),
            web.post(DIAL_PATH, self._dial_result),
        ]
        separate = self.server.metrics_port is not None
        self._http = await self._site(public if separate else public + internal, "server.port", self.server.port)
        self.http_port = self._http.addresses[0][1]
        if separate:
            port = self.server.metrics_port or 0
            self._internal = await self._site(internal, "server.metrics_port", port, self.server.metrics_host)
            self.metrics_port = self._internal.addresses[0][1]
        with _bind_error("server.media_port", self.server.host, self.server.media_port):
            self._media = await serve(
                self._media_socket,
                self.server.host,
                self.server.media_port,
                process_request=self._check_upgrade,
                compression=None,
                max_size=MAX_MESSAGE_CHARS,
                max_queue=16,  # frames buffered per socket before the reader is made to wait
                close_timeout=2,  # a peer that floods never reads our close: its socket goes 2 s later, not 10
            )
        self.media_port = self._media.sockets[0].getsockname()[1]
        if not self.server.public_url:  # local URLs name the ports actually bound
            bound = dataclasses.replace(self.server, port=self.http_port, media_port=self.media_port)
            self.urls = PublicUrls.from_settings(bound)
            self.signatures = SignatureChecker(self.server.twilio_auth_token, self.urls)
        log.info(
            "listening: http://%s:%d (%s, %s, %s), media ws://%s:%d%s; Twilio uses %s and %s",
            self.server.host,
            self.http_port,
            TWIML_PATH,
            STATUS_PATH,
            f"/healthz and /metrics on {self.server.metrics_host}:{self.metrics_port}"
            if separate
            else "/healthz, /metrics",
            self.server.host,
            self.media_port,
            MEDIA_PATH,
            self.urls.webhook_url(TWIML_PATH),
            self.urls.stream_url,
        )

    async def _site(self, routes: list, setting: str, port: int, host: str | None = None) -> web.AppRunner:
        app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host = host or self.server.host
        with _bind_error(setting, host, port):
            await web.TCPSite(runner, host, port).start()
        return runner

    @property
    def calls_active(self) -> int:
        return len(self._calls)

    def force(self) -> None:
        """Stop waiting for live calls (a second SIGTERM): they are ended, their records flushed, and the
        server stops."""
        self._force.set()

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop taking calls; let live ones, and streams for TwiML already issued, go on for up to `timeout_s`
        (or until `force`), then end the rest, flush the records and close."""
        timeout_s = self.server.shutdown_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._draining = True
        if self._calls or self.tokens.pending:
            log.info(
                "shutting down: up to %.0f s for %d live call(s) and %d on their way",
                timeout_s,
                self.calls_active,
                self.tokens.pending,
            )
        while (self._calls or self.tokens.pending) and not self._force.is_set() and loop.time() < deadline:
            self._changed.clear()
            waiters = {asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(self._force.wait())}
            # Tokens expire without an event: look again at least every quarter second.
            await asyncio.wait(waiters, timeout=min(deadline - loop.time(), 0.25), return_when=FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        for call_sid, call in list(self._calls.items()):
            log.warning("call %s: still live at shutdown, ending it", call_sid)
            self.metrics.call_ended(StreamEnd.SHUTDOWN)
            call.runner.push(CallerHungUp(time.monotonic()))
        if self._media is not None:
            self._media.close(close_connections=True)  # sockets still waiting for `start` go too
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await self._media.wait_closed()
        for runner in (self._http, self._internal):
            if runner is not None:
                await runner.cleanup()
        if not await asyncio.to_thread(self.agent.records.flush, CLOSE_GRACE_S):
            log.error("shutdown: call records not yet written are kept in the spool, for the next start")
        self._readers.shutdown(wait=False, cancel_futures=True)
        if self._trimming is not None:
            await asyncio.wait({self._trimming})
        self.control.close()
        log.info("server stopped")

    # ------------------------------------------------------------ HTTP

    async def _twiml(self, request: web.Request) -> web.Response:
        params = await request.post() if request.method == "POST" else {}
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden(AuthCheck.WEBHOOK_SIGNATURE, request)
        values = params or request.query
        call_sid = values.get("CallSid")
        if not call_sid:
            raise web.HTTPBadRequest(text="CallSid is missing: this URL is Twilio's voice webhook for incoming calls")
        if self._draining or self.calls_active + self.tokens.pending >= self.server.max_calls:
            reason = Refusal.SHUTTING_DOWN if self._draining else Refusal.CAPACITY
            self.metrics.refused(reason)
            log.warning("call %s refused (%s, %d live calls)", clip(call_sid), reason, self.calls_active)
            twiml = busy_response(self.agent.dialog.company.name, self.server.human_number or None)
            return web.Response(text=twiml, content_type="text/xml")
        token = None if await self._has_streamed(call_sid) else self.tokens.issue(call_sid, values.get("From"))
        if token is None:
            return self._forbidden(
                AuthCheck.WEBHOOK_REPLAY, request, f"call {clip(call_sid)} has already been answered"
            )
        log.info("call %s from %s: answering with the media stream", call_sid, mask_number(values.get("From")))
        twiml = connect_stream(self.urls.stream_url, self.urls.status_url, token)
        return web.Response(text=twiml, content_type="text/xml")

    async def _has_streamed(self, call_sid: str) -> bool:
        """A stream of this call has started, here or (by its record) in an earlier run of the server."""
        if self.tokens.streamed(call_sid):
            return True
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(STORE_READ_S):
                return await loop.run_in_executor(
                    self._readers, lambda: self.agent.store.get_call(call_sid) is not None
                )
        except (StoreError, TimeoutError) as exc:  # an outage must not turn callers away: the memory check stands
            self.metrics.error(ServerFault.STORE)
            log.warning("call %s: cannot look up earlier streams (%s)", clip(call_sid), clip(exc, 200))
            return False

    async def _dial_result(self, request: web.Request) -> web.Response:
        """Twilio's report on a hand-off's `<Dial>`: a call a person answered is over; one nobody answered (busy,
        no answer, failed) comes back to the bot, which says so and offers a ticket, instead of dropping."""
        params = await request.post()
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden(AuthCheck.DIAL_SIGNATURE, request)
        call_sid, status = params.get("CallSid"), params.get("DialCallStatus", "")
        if not call_sid:
            raise web.HTTPBadRequest(text="CallSid is missing: this URL is the action of voicebot's hand-off <Dial>")
        if status in ("completed", "answered"):
            log.info("call %s: the person's call ended (%s)", call_sid, clip(status))
            return web.Response(text=hang_up(), content_type="text/xml")
        token = self.tokens.issue(call_sid, params.get("From"), no_answer=True)
        if token is None:  # not a call this server handed off, or its report came once already
            return self._forbidden(
                AuthCheck.DIAL_REPLAY, request, f"call {clip(call_sid)} was not handed off from here"
            )
        self.metrics.error(ServerFault.HANDOFF_UNANSWERED)
        log.warning("call %s: nobody took the hand-off (%s); the bot takes the call back", call_sid, clip(status))
        twiml = connect_stream(self.urls.stream_url, self.urls.status_url, token)
        return web.Response(text=twiml, content_type="text/xml")

    async def _stream_status(self, request: web.Request) -> web.Response:
        params = await request.post()
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden(AuthCheck.STATUS_SIGNATURE, request)
        event = params.get("StreamEvent", "")
        call_sid = clip(params.get("CallSid"))
        if event == "stream-error":
            self.metrics.error(ServerFault.STREAM_ERROR)
            log.error("call %s: Twilio reports a stream error: %s", call_sid, clip(params.get("StreamError"), 200))
        else:
            log.info("call %s: %s", call_sid, clip(event) if event else "stream status without StreamEvent")
        return web.Response(status=204)

    def _forbidden(self, check: AuthCheck, request: web.Request, why: str = "") -> web.Response:
        self.metrics.auth_failure(check)
        why = why or f"missing or invalid {SIGNATURE_HEADER}"
        self._refusals.log(log, logging.WARNING, "%s %s refused: %s", request.method, request.path, why)
        status = 409 if check in (AuthCheck.WEBHOOK_REPLAY, AuthCheck.DIAL_REPLAY) else 403
        return web.Response(status=status, text=why)

    async def _healthz(self, request: web.Request) -> web.Response:
        status = "draining" if self._draining else "ok"
        body = {"status": status, "calls_active": self.calls_active, "max_calls": self.server.max_calls}
        return web.json_response(body, status=503 if self._draining else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------ media socket

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse in the handshake itself, before a socket exists: a wrong path, a missing or wrong signature,
        too many sockets still waiting to authenticate (in all, or from this address), or a server stopping."""
        if request.path != MEDIA_PATH:
            return connection.respond(404, f"the media stream is at {MEDIA_PATH}\n")
        if not self.signatures.upgrade_ok(request.headers.get(SIGNATURE_HEADER)):
            self.metrics.auth_failure(AuthCheck.UPGRADE_SIGNATURE)
            self._refusals.log(
                log,
                logging.WARNING,
                "media socket from %s refused: missing or invalid %s",
                _source(connection),
                SIGNATURE_HEADER,
            )
            return connection.respond(403, f"missing or invalid {SIGNATURE_HEADER}\n")
        source = _source(connection)
        waiting = sum(self._unauthenticated.values())
        if (
            waiting >= self.server.max_pending_sockets
            or self._unauthenticated[source] >= self.server.max_pending_per_source
        ):
            self.metrics.error(ServerFault.SOCKET_LIMIT)
            self._refusals.log(
                log,
                logging.WARNING,
                "media socket from %s refused: %d sockets already wait for their `start`",
                source,
                waiting,
            )
            return connection.respond(503, "too many media sockets waiting to start; try again later\n")
        return None

    async def _media_socket(self, ws: ServerConnection) -> None:
        source, budget = _source(ws), LogBudget()
        self._unauthenticated[source] += 1
        try:
            admitted = await self._admit(ws, budget)
        finally:
            self._unauthenticated[source] -= 1
            if not self._unauthenticated[source]:
                del self._unauthenticated[source]
        if admitted is not None:
            await self._run_call(ws, *admitted, budget)

    async def _admit(self, ws: ServerConnection, budget: LogBudget) -> tuple[StreamParser, Start, StreamGrant] | None:
        """Read up to `start` and check its token; None (the socket closed, the refusal counted) when refused."""
        parser = StreamParser()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                start = await self._read_start(ws, parser, budget)
        except ProtocolError as exc:
            await self._protocol_error(ws, exc, budget)
            return None
        except TimeoutError:
            self.metrics.error(ServerFault.NO_START)
            await ws.close(1002, f"no 'start' message within {START_TIMEOUT_S:.0f} s")
            return None
        except ConnectionClosed:
            return None  # gone before the stream started: nothing to clean up
        grant = self.tokens.redeem(start.call_sid, start.custom_parameters.get("token", ""))
        if grant is None:
            self.metrics.auth_failure(AuthCheck.STREAM_TOKEN)
            budget.log(
                log,
                logging.WARNING,
                "call %s: stream token missing, wrong, reused or expired; closing",
                clip(start.call_sid),
            )
            await ws.close(1008, "stream token missing, wrong, reused or expired")
            return None
        if start.call_sid in self._calls:  # one live stream per call: a second would share its record
            self.metrics.auth_failure(AuthCheck.DUPLICATE_STREAM)
            log.warning("call %s: a second stream for a live call; closing it", clip(start.call_sid))
            await ws.close(1008, "this call already has a live stream")
            return None
        return parser, start, grant

    async def _read_start(self, ws: ServerConnection, parser: StreamParser, budget: LogBudget) -> Start:
        while True:
            event = parser.receive(await ws.recv())
            if isinstance(event, Start):
                return event
            if isinstance(event, Unknown):
                self._unknown(event, budget)

    def _unknown(self, event: Unknown, budget: LogBudget) -> None:
        self.metrics.error(ServerFault.UNKNOWN_EVENT)
        budget.log(log, logging.DEBUG, "skipping unknown stream event %s", clip(event.event, 40))

    async def _protocol_error(self, ws: ServerConnection, exc: ProtocolError, budget: LogBudget) -> None:
        self.metrics.error(exc.kind)
        # The message may quote the sender's bytes (audio, a token): only its kind at WARNING.
        if budget.log(log, logging.WARNING, "media socket closed on a protocol error (%s)", exc.kind):
            log.debug("the protocol error: %s", clip(exc, 200))
        await ws.close(1003 if exc.kind is ErrorKind.BINARY_FRAME else 1002, str(exc)[:120])

    async def _run_call(
        self, ws: ServerConnection, parser: StreamParser, start: Start, grant: StreamGrant, budget: LogBudget
    ) -> None:
        call_sid, caller = start.call_sid, grant.caller
        transport = StreamTransport(
            ws,
            start.stream_sid,
            call_sid,
            self.control,
            self.server.human_number,
            self.metrics,
            self.urls.dial_url,
            on_handed_off=self.tokens.expect_return,
        )
        session, conversation = self.agent.open_call(call_sid, caller, "twilio", can_hand_off=not self.no_hand_off)
        runner = CallRunner(self.agent, session, conversation, transport, observer=self.metrics)
        call = self._calls[call_sid] = _LiveCall(runner)
        self._changed.set()
        self.metrics.call_started()
        log.info("call %s from %s: stream %s started", call_sid, mask_number(caller), start.stream_sid)
        running = asyncio.create_task(runner.run())
        reading = asyncio.create_task(self._read_call(ws, parser, runner, transport, budget))
        transport.start()
        runner.push(CallStarted(time.monotonic(), after_no_answer=grant.no_answer))
        how, error = StreamEnd.BOT, None
        try:
            await asyncio.wait({running, reading}, return_when=FIRST_COMPLETED)
            if reading.done():
                how, error = self._how_reading_ended(reading)
            if not running.done():  # the caller left, or the stream broke: end the session
                runner.push(CallerHungUp(time.monotonic()))
            try:
                reason = await running
            except Exception as exc:
                how, error, reason = StreamEnd.INTERNAL, exc, "internal error"
        finally:
            for task in (running, reading):
                task.cancel()
            await asyncio.wait({running, reading})
            await transport.close()
            del self._calls[call_sid]
            call.done.set()
            self._changed.set()
        if how is not StreamEnd.SHUTDOWN:
            self.metrics.call_ended(how)
        self._release_memory()
        await self._close(ws, call_sid, how, error, reason, budget)

    def _release_memory(self) -> None:
        """Give the memory the ended call freed back to the OS, off the loop (a few ms; see voicebot.heap); a
        call that ends while a trim runs is covered by the next."""
        if self._heap.available and (self._trimming is None or self._trimming.done()):
            self._trimming = asyncio.ensure_future(asyncio.to_thread(self._heap.trim))

    async def _close(
        self,
        ws: ServerConnection,
        call_sid: str,
        how: StreamEnd,
        error: BaseException | None,
        reason: str,
        budget: LogBudget,
    ) -> None:
        """Close the socket with the code the end calls for: 1002/1003 for a protocol fault, 1011 only for ours."""
        if isinstance(error, ProtocolError):
            await self._protocol_error(ws, error, budget)
        elif how is StreamEnd.INTERNAL:
            self.metrics.error(ServerFault.INTERNAL)
            log.error("call %s: ended by an internal error", call_sid, exc_info=error)
            await ws.close(1011, "internal error")
        elif how is StreamEnd.FLOOD:
            await ws.close(1008, "messages faster than real time")
        else:
            await ws.close(1001 if self._draining else 1000, reason[:120])
        log.info("call %s ended (%s): %s", call_sid, how, reason)

    @staticmethod
    def _how_reading_ended(reading: asyncio.Task) -> tuple[StreamEnd, BaseException | None]:
        if reading.cancelled():
            return StreamEnd.BOT, None
        error = reading.exception()
        if error is None:
            return reading.result(), None
        if isinstance(error, ProtocolError):
            return StreamEnd.PROTOCOL, error
        if isinstance(error, CallFlooded):
            return StreamEnd.FLOOD, None
        return StreamEnd.INTERNAL, error

    async def _read_call(
        self,
        ws: ServerConnection,
        parser: StreamParser,
        runner: CallRunner,
        transport: StreamTransport,
        budget: LogBudget,
    ) -> StreamEnd:
        """Feed the stream into the call until `stop`, disconnection or silence from Twilio (which sends 50
        frames a second while a call is up); a protocol fault is raised, and so is a flood: audio arriving more
        than server.max_media_ahead_s ahead of real time (Twilio streams in real time; backlog after a network
        stall arrives late, never early)."""
        loop = asyncio.get_running_loop()
        idle_s, ahead_s = self.server.idle_timeout_s, self.server.max_media_ahead_s
        started, audio_s = loop.time(), 0.0
        try:
            async with asyncio.timeout(idle_s) as idle:
                async for message in ws:
                    idle.reschedule(loop.time() + idle_s)
                    event = parser.receive(message)
                    now = time.monotonic()
                    match event:
                        case Media():
                            audio_s += len(event.payload) / (BYTES_PER_MS * 1000)
                            if audio_s > loop.time() - started + ahead_s:
                                raise CallFlooded(f"{audio_s:.1f} s of audio in {loop.time() - started:.1f} s")
                            await runner.feed(AudioIn(ulaw_decode(event.payload), now))
                            transport.media_time(event.timestamp_ms)
                        case Dtmf():
                            await runner.feed(DtmfIn(event.digit, now))
                        case Mark():
                            await runner.feed(MarkEchoed(event.name, now))
                        case Stop():
                            return StreamEnd.STOP
                        case Unknown():
                            self._unknown(event, budget)
        except TimeoutError:
            self.metrics.error(ServerFault.IDLE_STREAM)
            log.warning("call %s: nothing on the stream for %.0f s; ending the call", transport.call_sid, idle_s)
            return StreamEnd.IDLE
        except ConnectionClosed:
            pass
        return StreamEnd.DISCONNECT


async def serve_until_signalled(settings: Settings, agent: VoiceAgent) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully; a second signal stops waiting for
    live calls (they are ended and their records flushed)."""
    server = VoiceServer(settings, agent)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: ending live calls now")
            server.force()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    log.info("signal received: no new calls; live calls get %.0f s to finish", settings.server.shutdown_timeout_s)
    await server.shutdown()


def run(settings: Settings) -> int:
    """`voicebot serve`: check the exposure, load and warm the agent, serve until signalled."""
    from voicebot.agent import build_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)  # it logs every request at INFO
    check_exposure(settings.server)
    agent = build_agent(settings, spool=True)  # the KB and store named by dialog.kb_path and store.url
    try:
        if closed := agent.store.close_abandoned_calls():
            log.warning("closed %d call(s) a voicebot left open when it stopped mid-call (interrupted)", len(closed))
        asyncio.run(serve_until_signalled(settings, agent))
    finally:
        agent.close()
    return 0
