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
import contextlib
import dataclasses
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telephony.call_control import CallControl, CallControlError
from telephony.metrics import CONTENT_TYPE, ServerMetrics
from telephony.protocol import (
    Dtmf,
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
from voicebot.call_runner import CallRunner
from voicebot.config import ConfigError, Settings
from voicebot.session import AudioIn, CallerHungUp, CallStarted, DtmfIn, MarkEchoed
from voicebot.store import mask_number

log = logging.getLogger(__name__)

BYTES_PER_MS = 8  # mu-law 8 kHz: one byte per sample
CHUNK_MS = 40  # outbound audio goes out in 40 ms chunks (20-60 ms: see _chunks)
LEAD_MS = 100  # send while less than this is buffered ahead of playback: the lead stays under 100 + 60 ms
START_TIMEOUT_S = 10.0  # a media socket must send `start` this soon after opening
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
    ) -> None:
        """`dial_url`: where Twilio reports how a hand-off's `<Dial>` ended (`DIAL_PATH`)."""
        self.ws, self.stream_sid, self.call_sid = ws, stream_sid, call_sid
        self.control, self.human_number, self.metrics, self.dial_url = control, human_number, metrics, dial_url
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
        return await self._control(self.control.transfer(self.call_sid, self.human_number, self.dial_url))

    async def hangup(self) -> None:
        log.info("call %s: the bot hangs up", self.call_sid)
        await self._control(self.control.hangup(self.call_sid))

    async def _control(self, request: Awaitable[None]) -> bool:
        """Carry out a REST request on the call; False (logged and counted) when Twilio refused it."""
        try:
            await request
        except CallControlError as exc:
            self.metrics.errors.inc(kind="call_control")
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


class VoiceServer:
    """The webhook, status, health and metrics endpoints and the media socket, sharing one loaded agent."""

    def __init__(self, settings: Settings, agent: VoiceAgent) -> None:
        self.settings, self.agent = settings, agent
        self.server = settings.server
        self.control = CallControl.from_settings(self.server)
        self.metrics = ServerMetrics()
        self.tokens = StreamTokens()
        self.urls = PublicUrls.from_settings(self.server)
        self.signatures = SignatureChecker(self.server.twilio_auth_token, self.urls)
        self.http_port = self.media_port = 0
        self._calls: dict[str, _LiveCall] = {}
        self._draining = False
        # Checked once at start-up: a hand-off with nowhere to go would say "I'll put you through" and drop the
        # caller. Without one, callers who ask for a person hear that nobody can be reached and get a ticket.
        self.no_hand_off = self.control.cannot_transfer(self.server.human_number)
        if self.no_hand_off:
            log.warning("hand-off to a person is off: %s; callers who ask for one get a ticket", self.no_hand_off)
        self._http: web.AppRunner | None = None
        self._media: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on both ports (port 0 picks a free one; the bound ports are in http_port/media_port)."""
        app = web.Application()
        app.add_routes(
            [
                web.post(TWIML_PATH, self._twiml),
                web.get(TWIML_PATH, self._twiml),
                web.post(STATUS_PATH, self._stream_status),
                web.post(DIAL_PATH, self._dial_result),
                web.get("/healthz", self._healthz),
                web.get("/metrics", self._metrics),
            ]
        )
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        with _bind_error("server.port", self.server.host, self.server.port):
            await web.TCPSite(self._http, self.server.host, self.server.port).start()
        self.http_port = self._http.addresses[0][1]
        with _bind_error("server.media_port", self.server.host, self.server.media_port):
            self._media = await serve(
                self._media_socket,
                self.server.host,
                self.server.media_port,
                process_request=self._check_path,
                compression=None,
                max_size=2**16,
            )
        self.media_port = self._media.sockets[0].getsockname()[1]
        if not self.server.public_url:  # local URLs name the ports actually bound
            bound = dataclasses.replace(self.server, port=self.http_port, media_port=self.media_port)
            self.urls = PublicUrls.from_settings(bound)
            self.signatures = SignatureChecker(self.server.twilio_auth_token, self.urls)
        log.info(
            "listening: http://%s:%d (%s, %s, /healthz, /metrics), media ws://%s:%d%s; Twilio uses %s and %s",
            self.server.host,
            self.http_port,
            TWIML_PATH,
            STATUS_PATH,
            self.server.host,
            self.media_port,
            MEDIA_PATH,
            self.urls.webhook_url(TWIML_PATH),
            self.urls.stream_url,
        )

    @property
    def calls_active(self) -> int:
        return len(self._calls)

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop taking calls, let live ones finish for up to `timeout_s`, then end the rest and close."""
        timeout_s = self.server.shutdown_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        if self._media is not None:
            self._media.close(close_connections=False)
        live = [call.done.wait() for call in self._calls.values()]
        if live:
            log.info("shutting down: waiting up to %.0f s for %d live call(s)", timeout_s, len(live))
            _, pending = await asyncio.wait([asyncio.ensure_future(w) for w in live], timeout=timeout_s)
            for waiter in pending:
                waiter.cancel()
        for call_sid, call in list(self._calls.items()):
            log.warning("call %s: still live at shutdown, ending it", call_sid)
            call.runner.push(CallerHungUp(time.monotonic()))
        if self._media is not None:
            await self._media.wait_closed()
        if self._http is not None:
            await self._http.cleanup()
        log.info("server stopped")

    # ------------------------------------------------------------ HTTP

    async def _twiml(self, request: web.Request) -> web.Response:
        params = await request.post() if request.method == "POST" else {}
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden("webhook_signature", request)
        values = params or request.query
        call_sid = values.get("CallSid")
        if not call_sid:
            raise web.HTTPBadRequest(text="CallSid is missing: this URL is Twilio's voice webhook for incoming calls")
        if self._draining or self.calls_active + self.tokens.pending >= self.server.max_calls:
            reason = "shutting_down" if self._draining else "capacity"
            self.metrics.calls_refused.inc(reason=reason)
            log.warning("call %s refused (%s, %d live calls)", call_sid, reason, self.calls_active)
            twiml = busy_response(self.agent.dialog.company.name, self.server.human_number or None)
            return web.Response(text=twiml, content_type="text/xml")
        token = self.tokens.issue(call_sid, values.get("From"))
        log.info("call %s from %s: answering with the media stream", call_sid, mask_number(values.get("From")))
        twiml = connect_stream(self.urls.stream_url, self.urls.status_url, token)
        return web.Response(text=twiml, content_type="text/xml")

    async def _dial_result(self, request: web.Request) -> web.Response:
        """Twilio's report on a hand-off's `<Dial>`: a call a person answered is over; one nobody answered (busy,
        no answer, failed) comes back to the bot, which says so and offers a ticket, instead of dropping."""
        params = await request.post()
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden("dial_signature", request)
        call_sid, status = params.get("CallSid"), params.get("DialCallStatus", "")
        if not call_sid:
            raise web.HTTPBadRequest(text="CallSid is missing: this URL is the action of voicebot's hand-off <Dial>")
        if status in ("completed", "answered"):
            log.info("call %s: the person's call ended (%s)", call_sid, status)
            return web.Response(text=hang_up(), content_type="text/xml")
        self.metrics.errors.inc(kind="handoff_unanswered")
        log.warning("call %s: nobody took the hand-off (%s); the bot takes the call back", call_sid, status)
        token = self.tokens.issue(call_sid, params.get("From"), no_answer=True)
        twiml = connect_stream(self.urls.stream_url, self.urls.status_url, token)
        return web.Response(text=twiml, content_type="text/xml")

    async def _stream_status(self, request: web.Request) -> web.Response:
        params = await request.post()
        if not self.signatures.webhook_ok(request.raw_path, params, request.headers.get(SIGNATURE_HEADER)):
            return self._forbidden("status_signature", request)
        event = params.get("StreamEvent", "")
        if event == "stream-error":
            self.metrics.errors.inc(kind="stream_error")
            log.error("call %s: Twilio reports a stream error: %s", params.get("CallSid"), params.get("StreamError"))
        else:
            log.info("call %s: %s", params.get("CallSid"), event or "stream status without StreamEvent")
        return web.Response(status=204)

    def _forbidden(self, check: str, request: web.Request) -> web.Response:
        self.metrics.auth_failures.inc(check=check)
        log.warning("%s %s refused: missing or invalid %s", request.method, request.path, SIGNATURE_HEADER)
        return web.Response(status=403, text=f"missing or invalid {SIGNATURE_HEADER}")

    async def _healthz(self, request: web.Request) -> web.Response:
        status = "draining" if self._draining else "ok"
        body = {"status": status, "calls_active": self.calls_active, "max_calls": self.server.max_calls}
        return web.json_response(body, status=503 if self._draining else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.calls_active.set(self.calls_active)
        return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------ media socket

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != MEDIA_PATH:
            return connection.respond(404, f"the media stream is at {MEDIA_PATH}\n")
        return None

    async def _media_socket(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if not self.signatures.upgrade_ok(ws.request.headers.get(SIGNATURE_HEADER)):
            self.metrics.auth_failures.inc(check="upgrade_signature")
            log.warning("media socket from %s refused: missing or invalid %s", ws.remote_address, SIGNATURE_HEADER)
            await ws.close(1008, f"missing or invalid {SIGNATURE_HEADER}")
            return
        parser = StreamParser()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                start = await self._read_start(ws, parser)
        except ProtocolError as exc:
            await self._protocol_error(ws, exc)
            return
        except TimeoutError:
            self.metrics.errors.inc(kind="no_start")
            await ws.close(1002, f"no 'start' message within {START_TIMEOUT_S:.0f} s")
            return
        except ConnectionClosed:
            return  # gone before the stream started: nothing to clean up
        grant = self.tokens.redeem(start.call_sid, start.custom_parameters.get("token", ""))
        if grant is None:
            self.metrics.auth_failures.inc(check="stream_token")
            log.warning("call %s: stream token missing, wrong, reused or expired; closing", start.call_sid)
            await ws.close(1008, "stream token missing, wrong, reused or expired")
            return
        await self._run_call(ws, parser, start, grant)

    async def _read_start(self, ws: ServerConnection, parser: StreamParser) -> Start:
        while True:
            event = parser.receive(await ws.recv())
            if isinstance(event, Start):
                return event
            if isinstance(event, Unknown):
                self._unknown(event)

    def _unknown(self, event: Unknown) -> None:
        self.metrics.errors.inc(kind="unknown_event")
        log.info("skipping unknown stream event %r", event.event[:40])

    async def _protocol_error(self, ws: ServerConnection, exc: ProtocolError) -> None:
        self.metrics.errors.inc(kind=exc.kind)
        log.warning("media socket closed on a protocol error: %s", exc)
        await ws.close(1003 if exc.kind == "binary_frame" else 1002, str(exc)[:120])

    async def _run_call(self, ws: ServerConnection, parser: StreamParser, start: Start, grant: StreamGrant) -> None:
        call_sid, caller = start.call_sid, grant.caller
        transport = StreamTransport(
            ws, start.stream_sid, call_sid, self.control, self.server.human_number, self.metrics, self.urls.dial_url
        )
        session, conversation = self.agent.open_call(call_sid, caller, "twilio", can_hand_off=not self.no_hand_off)
        runner = CallRunner(self.agent, session, conversation, transport)
        call = self._calls[call_sid] = _LiveCall(runner)
        self.metrics.calls_total.inc()
        log.info("call %s from %s: stream %s started", call_sid, mask_number(caller), start.stream_sid)
        running = asyncio.create_task(runner.run())
        reading = asyncio.create_task(self._read_call(ws, parser, runner, transport))
        transport.start()
        runner.push(CallStarted(time.monotonic(), after_no_answer=grant.no_answer))
        try:
            await asyncio.wait({running, reading}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():  # the caller left, or the stream broke: end the session
                runner.push(CallerHungUp(time.monotonic()))
            reason = await running
            reading.cancel()
            await transport.close()
            error = reading.exception() if reading.done() and not reading.cancelled() else None
            if isinstance(error, ProtocolError):
                await self._protocol_error(ws, error)
            else:
                if error is not None:
                    self.metrics.errors.inc(kind="internal")
                    log.error("call %s: reading the stream failed", call_sid, exc_info=error)
                await ws.close(1001 if self._draining else 1000, reason[:120])
            log.info("call %s ended: %s", call_sid, reason)
        finally:
            running.cancel()
            reading.cancel()
            await self._count_call(call_sid)
            del self._calls[call_sid]
            call.done.set()

    async def _read_call(
        self, ws: ServerConnection, parser: StreamParser, runner: CallRunner, transport: StreamTransport
    ) -> None:
        """Feed the stream into the call until `stop` or disconnection; a protocol fault is raised."""
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                event = parser.receive(message)
                now = time.monotonic()
                match event:
                    case Media():
                        runner.push(AudioIn(ulaw_decode(event.payload), now))
                        transport.media_time(event.timestamp_ms)
                    case Dtmf():
                        runner.push(DtmfIn(event.digit, now))
                    case Mark():
                        runner.push(MarkEchoed(event.name, now))
                    case Stop():
                        return
                    case Unknown():
                        self._unknown(event)

    async def _count_call(self, call_sid: str) -> None:
        try:
            record = await asyncio.to_thread(self.agent.dialog.store.get_call, call_sid)
        except Exception:  # metrics must never take a call down with them
            log.exception("call %s: cannot read its record for the metrics", call_sid)
            self.metrics.errors.inc(kind="store")
            return
        if record is not None:
            self.metrics.record_call(record)


async def serve_until_signalled(settings: Settings, agent: VoiceAgent) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully."""
    server = VoiceServer(settings, agent)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: no new calls; live calls get %.0f s to finish", settings.server.shutdown_timeout_s)
    await server.shutdown()


def run(settings: Settings) -> int:
    """`voicebot serve`: check the exposure, load and warm the agent, serve until signalled."""
    from voicebot.agent import build_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)  # it logs every request at INFO
    check_exposure(settings.server)
    agent = build_agent(settings)  # the knowledge base and store named by dialog.kb_path and store.url
    try:
        asyncio.run(serve_until_signalled(settings, agent))
    finally:
        agent.dialog.store.close()
    return 0
