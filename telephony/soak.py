"""`make soak`: the server at full capacity for minutes on end, with hostile sockets mixed in, then proof that no
call was lost, no ticket doubled and nothing leaked.

The real `VoiceServer` runs in this process, so its asyncio tasks, threads, open files and memory can be counted;
the phone network (the Twilio simulator) runs on a thread and event loop of its own, so the server's load never
stalls the callers' clocks; a local fake of Twilio's REST API takes the bot's hang-ups and hand-offs. N callers
(N = server.max_calls, or --calls; the server takes exactly N) stay on the line with staggered starts, each
placing item after item of a mix drawn from a seeded random generator (the k-th item is the same on every run
with the same seed):
- the sample calls of samples/calls in real time (questions, tickets, barge-ins, backchannels and DTMF presses
  from their sidecars); a quarter of them hung up early, half of those with Twilio's `stop`, half by a line that
  drops; half the hand-offs come back to the bot as Twilio's report of a `<Dial>` nobody answered;
- every 5th item a hostile socket instead: an upgrade with a wrong signature, a socket that never sends
  `start`, garbage, a message over the frame limit or JSON nested too deep after a valid `start` with a real
  token, or a replayed webhook for a CallSid that has streamed. Each must be refused quickly, never with 1011.

Then, once every call has ended: every call placed has a record with `ended_at` and its turns; every ticket id
read out in a reply exists exactly once, under that call, and the call has no ticket that was not read out
(unless the caller hung up early: the complaint is kept for a call back); the
server counted no internal error and logged no ERROR; open files and asyncio tasks are back at the baseline
(measured after a warm-up round of N calls, so thread pools and caches exist), threads and memory within their
tolerances; and one more call and /healthz are still answered. Exit status 1 names each check that failed.

    python -m telephony.soak --minutes 10 [--calls N] [--seed S] [--json soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import re
import secrets
import string
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from models import MissingArtifact
from telephony.fake_twilio import FakeTwilio
from telephony.metrics import ServerFault, StreamEnd
from telephony.protocol import MAX_DEPTH, MAX_MESSAGE_CHARS, TwilioStreamWriter
from telephony.security import MEDIA_PATH
from telephony.server import START_TIMEOUT_S, VoiceServer
from telephony.simulator import (
    SIGNATURE_HEADER,
    Endpoint,
    SimulatedCall,
    SimulatorError,
    fetch_twiml,
    simulate_call,
    stream_target,
)
from voicebot.agent import VoiceAgent, build_agent
from voicebot.config import ConfigError, Settings, load_settings
from voicebot.kb import KbError
from voicebot.store import TICKET_ALPHABET, TICKET_ID_LENGTH, Store, StoreError

log = logging.getLogger(__name__)

CALLS_DIR = Path(__file__).resolve().parent.parent / "samples" / "calls"
ACCOUNT_SID = "AC" + "50a4" * 8
PUBLIC_URL = "https://soak.voicebot.test"
HUMAN_NUMBER = "+15550100123"
WARM_UP = ("complaint_ticket", "human_request", "llm_grounded", "barge_in_greeting")  # a ticket, REST, the LLM, a cut
RETURN_CALL = "silence_noise"  # the caller back from a hand-off nobody answered: just listens
FINAL_CALL = "faq_returns"

HOSTILE_EVERY = 5  # every 5th item is a hostile socket instead of a call
EARLY_HANG_UP_SHARE = 0.25
RETURN_SHARE = 0.5  # of the calls handed off, those whose <Dial> nobody answers
STAGGER_S = 4.0  # between the callers' first calls
GAP_S = (0.2, 1.5)  # between one caller's items
RING_S = (2.0, 5.0)  # a hand-off's ringing before Twilio reports that nobody answered
ROOM_WAIT_S = 120.0  # the longest a caller waits for the server to have room
DRAIN_S = 90.0  # after the last item, for every call to end
SETTLE_S = 15.0  # for sockets and tasks of ended calls to go before resources are counted
SAMPLE_EVERY_S = 5.0  # resources are sampled this often during the soak, for the peak column
HANDSHAKE_REFUSAL_S = 3.0  # a refused upgrade or webhook
STREAM_REFUSAL_S = 8.0  # a stream refused after `start`: the call's record is flushed (up to 5 s) before the close

T = TypeVar("T")


class SoakError(RuntimeError):
    """The soak cannot run here; the message says why."""


class Hostile(StrEnum):
    """The hostile sockets of the mix."""

    BAD_SIGNATURE = "bad_signature"  # an upgrade signed with the wrong key
    NO_START = "no_start"  # a signed socket that never sends `start`
    GARBAGE = "garbage"  # not JSON, after a valid `start` with a real token
    HUGE = "huge"  # a message over the frame limit, after a valid `start`
    DEEP_JSON = "deep_json"  # JSON nested past MAX_DEPTH, after a valid `start`
    REPLAYED_WEBHOOK = "replayed_webhook"  # a signed /twiml for a CallSid that has streamed


# What the server must answer each hostile socket, and how soon (seconds from the first byte sent).
EXPECTED: dict[Hostile, tuple[str, float]] = {
    Hostile.BAD_SIGNATURE: ("HTTP 403", HANDSHAKE_REFUSAL_S),
    Hostile.NO_START: ("close 1002", START_TIMEOUT_S + HANDSHAKE_REFUSAL_S),
    Hostile.GARBAGE: ("close 1002", STREAM_REFUSAL_S),
    Hostile.HUGE: ("close 1009", STREAM_REFUSAL_S),  # refused by websockets' max_size, before the parser
    Hostile.DEEP_JSON: ("close 1002", STREAM_REFUSAL_S),
    Hostile.REPLAYED_WEBHOOK: ("HTTP 409", HANDSHAKE_REFUSAL_S),
}


@dataclass(frozen=True)
class Tolerances:
    """How far each resource may be above its baseline after the soak. Files and tasks must come back (a little
    slack for a connection in the REST client's pool); threads: the loop's default pool starts full (see
    `_full_default_executor`), the server's store readers (2) and REST pool grow lazily up to their size; RSS: see
    `rss_mib`."""

    fds: int = 4
    tasks: int = 2
    threads: int = 4
    # Measured on 10-minute soaks at 4 callers (2 cores, embedded models, after the warm-up round): +202 MiB while
    # freed memory stayed in malloc's arenas and every new turn length left Whisper's encoder a new workspace;
    # +97 and +120 MiB since the server trims the heap after each call and the windows are whole seconds, most of
    # it in the first half (bounded caches filling: 23 encoder windows, the embedder's and decoder's shapes). A
    # call carries 2-3 MiB of audio, so keeping one call's audio per call would add 250-350 MiB over the ~120 calls.
    rss_mib: float = 128.0


@dataclass(frozen=True)
class Resources:
    """What the process holds: open files, asyncio tasks on the server's loop, OS threads, resident memory."""

    fds: int
    tasks: int
    threads: int
    rss_mib: float

    @classmethod
    def measure(cls) -> Resources:
        """Now, from /proc/self; call it on the server's loop (its tasks are counted)."""
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return cls(
            fds=len(os.listdir("/proc/self/fd")),
            tasks=len(asyncio.all_tasks()),
            threads=int(status["Threads"]),
            rss_mib=round(int(status["VmRSS"].split()[0]) / 1024, 1),
        )


RESOURCES = {"fds": "open fds", "tasks": "asyncio tasks", "threads": "threads", "rss_mib": "RSS MiB"}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class SoakReport:
    """What the soak did and found; `passed` when every check did."""

    seed: int
    minutes: float
    concurrent: int
    calls_placed: int = 0  # webhooks for calls, returns from a hand-off included
    calls_completed: int = 0  # streamed and ended without a fault
    calls_refused: int = 0  # answered with the busy TwiML
    hung_up_early: int = 0
    returns: int = 0  # back from a hand-off nobody answered
    hostile: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> what the server answered -> count
    turns: int = 0
    routes: dict[str, int] = field(default_factory=dict)  # the turns by route
    tickets: int = 0
    first_audio_ms: dict[str, float | int | None] = field(default_factory=dict)  # p50, p95, n
    max_caller_late_ms: float = 0.0  # how far the simulator's frame clock fell behind (a busy machine)
    before: Resources | None = None
    peak: Resources | None = None
    after: Resources | None = None
    samples: list[dict[str, float]] = field(default_factory=list)  # resources over the soak, every SAMPLE_EVERY_S
    tolerances: Tolerances = field(default_factory=Tolerances)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def render(self) -> str:
        """The summary, the resource table and the checks, for a terminal."""
        latency = self.first_audio_ms
        hostile = "; ".join(
            f"{kind}: {', '.join(f'{answer} x{n}' for answer, n in answers.items())}"
            for kind, answers in sorted(self.hostile.items())
        )
        lines = [
            f"soak: {self.minutes:g} min, {self.concurrent} calls at a time, seed {self.seed}",
            f"calls: {self.calls_placed} placed, {self.calls_completed} completed, {self.calls_refused} refused "
            f"(busy), {self.hung_up_early} hung up early, {self.returns} back from an unanswered hand-off (the warm-up "
            "round and the final call included)",
            f"hostile sockets: {sum(sum(a.values()) for a in self.hostile.values())}"
            + (f" ({hostile})" if hostile else ""),
            f"turns: {self.turns} ({', '.join(f'{route} {n}' for route, n in sorted(self.routes.items()))}), "
            f"tickets: {self.tickets}",
            f"first bot audio after the caller stopped: p50 {latency.get('p50')} ms, p95 {latency.get('p95')} ms "
            f"(n={latency.get('n')}); the callers' clock ran at most {self.max_caller_late_ms:.0f} ms late",
        ]
        if self.before and self.after and self.peak:
            lines.append(f"{'resource':<14}{'before':>9}{'peak':>9}{'after':>9}{'delta':>9}{'allowed':>9}")
            for key, label in RESOURCES.items():
                before, peak, after = (getattr(r, key) for r in (self.before, self.peak, self.after))
                allowed = getattr(self.tolerances, key)
                lines.append(f"{label:<14}{before:>9g}{peak:>9g}{after:>9g}{after - before:>+9.5g}{allowed:>+9g}")
        lines.append("checks:")
        lines += [f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


# ---------------------------------------------------------------- the mix


@dataclass(frozen=True)
class CallPlan:
    wav: Path
    hang_up_at_ms: int | None = None
    send_stop: bool = True
    return_if_handed_off: bool = False
    ring_s: float = 0.0

    def describe(self) -> str:
        early = "" if self.hang_up_at_ms is None else f", hung up at {self.hang_up_at_ms} ms"
        return f"{self.wav.stem}{early}{'' if self.send_stop else ' without stop'}"


@dataclass(frozen=True)
class HostilePlan:
    kind: Hostile
    garbage: str  # the message a GARBAGE socket sends


class Mix:
    """The soak's items in a fixed order for a seed: the k-th item placed is the same on every run."""

    def __init__(self, seed: int, wavs: list[Path]) -> None:
        if not wavs:
            raise ConfigError(f"no sample calls (*.wav with a .json sidecar) in {CALLS_DIR}")
        self._rng = random.Random(seed)
        self._wavs = wavs
        self._kinds = list(Hostile)
        self._rng.shuffle(self._kinds)
        self._drawn = 0

    def next(self) -> CallPlan | HostilePlan:
        k = self._drawn
        self._drawn += 1
        rng = self._rng
        if k % HOSTILE_EVERY == HOSTILE_EVERY - 1:
            garbage = "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 200)))
            return HostilePlan(self._kinds[(k // HOSTILE_EVERY) % len(self._kinds)], garbage)
        wav = rng.choice(self._wavs)
        if rng.random() < EARLY_HANG_UP_SHARE:
            return CallPlan(wav, rng.randrange(1000, _sidecar(wav)["duration_ms"]), send_stop=rng.random() < 0.5)
        return CallPlan(wav, return_if_handed_off=rng.random() < RETURN_SHARE, ring_s=rng.uniform(*RING_S))

    def gap_s(self) -> float:
        return self._rng.uniform(*GAP_S)


def _sidecar(wav: Path) -> dict:
    return json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))


def sample_calls() -> list[Path]:
    return sorted(wav for wav in CALLS_DIR.glob("*.wav") if wav.with_suffix(".json").exists())


# ---------------------------------------------------------------- the phone network


class PhoneNetwork:
    """The callers' side: a thread with an event loop of its own, as the phone network is its own machine. The
    server's work must not stall the callers' clocks, or they would measure the soak's own lateness."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="phone-network", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def __enter__(self) -> PhoneNetwork:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the phone network; await it from the server's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))


def _upgrade_headers(endpoint: Endpoint, stream_url: str, key: str | None = None) -> dict[str, str]:
    """The upgrade's signature as Twilio computes it over the stream URL, with the auth token or `key`."""
    return {SIGNATURE_HEADER: RequestValidator(key or endpoint.auth_token).compute_signature(stream_url, {})}


async def _closed(ws: ClientConnection, timeout_s: float) -> str:
    """Read until the server closes the socket (TimeoutError after `timeout_s`); how it closed."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout_s):
            async for _ in ws:
                pass
    return f"close {ws.close_code}"


def _hostile_message(plan: HostilePlan) -> str:
    match plan.kind:
        case Hostile.HUGE:
            return '{"event": "media", "pad": "' + "x" * MAX_MESSAGE_CHARS + '"}'
        case Hostile.DEEP_JSON:
            depth = 4 * MAX_DEPTH
            return '{"event": "media", "media": ' + "[" * depth + "]" * depth + "}"
    return plan.garbage


async def _attack(plan: HostilePlan, endpoint: Endpoint, replay_sid: str, caller: str) -> tuple[str, str | None]:
    """Run one hostile socket on the phone network: what the server answered ("HTTP 403", "close 1002"), and the
    CallSid of a stream that started (its call must have a record)."""
    public_stream_url = "wss://" + endpoint.public_url.removeprefix("https://") + MEDIA_PATH
    if plan.kind is Hostile.BAD_SIGNATURE:
        forged = _upgrade_headers(endpoint, public_stream_url, key="not-" + endpoint.auth_token)
        try:
            async with connect(endpoint.media_url, additional_headers=forged) as ws:
                return f"accepted, then {await _closed(ws, HANDSHAKE_REFUSAL_S)}", None
        except InvalidStatus as exc:
            return f"HTTP {exc.response.status_code}", None
    if plan.kind is Hostile.REPLAYED_WEBHOOK:
        try:
            twiml = await fetch_twiml(endpoint, replay_sid, caller)
        except SimulatorError as exc:  # "the webhook ... answered HTTP 409: ..."
            found = re.search(r"HTTP \d+", str(exc))
            return (found.group() if found else str(exc)), None
        return ("HTTP 200 with a stream token" if stream_target(twiml) else "HTTP 200, busy"), None
    if plan.kind is Hostile.NO_START:
        async with connect(endpoint.media_url, additional_headers=_upgrade_headers(endpoint, public_stream_url)) as ws:
            await ws.send(TwilioStreamWriter("MZ" + secrets.token_hex(16), "CA" + "0" * 32, ACCOUNT_SID).connected())
            return await _closed(ws, START_TIMEOUT_S + HANDSHAKE_REFUSAL_S), None
    call_sid = "CA" + secrets.token_hex(16)
    target = stream_target(await fetch_twiml(endpoint, call_sid, caller))
    if target is None:
        return "busy TwiML", None
    stream_url, parameters = target
    writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, endpoint.account_sid)
    async with connect(endpoint.media_url, additional_headers=_upgrade_headers(endpoint, stream_url)) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(writer.connected())
            await ws.send(writer.start(parameters))
            await ws.send(writer.media(b"\xff" * 160, 0))
            await ws.send(_hostile_message(plan))
        return await _closed(ws, STREAM_REFUSAL_S + HANDSHAKE_REFUSAL_S), call_sid


async def _health(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as response:
        return response.status, await response.json()


# ---------------------------------------------------------------- the soak


@dataclass
class _Placed:
    """A stream the soak started, and what its record must show."""

    call_sid: str
    what: str
    wants_turn: bool = False  # a whole sample call with speech: at least one turn
    heard: bool = False  # audio reached the caller: the greeting is recorded
    left_early: bool = False  # the caller hung up mid-call: a ticket may be open that they never heard of


class _ErrorLog(logging.Handler):
    """ERROR records logged anywhere in the process while the soak runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()[:200]}")


class _Soak:
    def __init__(self, server: VoiceServer, fake: FakeTwilio, phone: PhoneNetwork, report: SoakReport) -> None:
        self.server, self.fake, self.phone, self.report = server, fake, phone, report
        self.endpoint = Endpoint(
            f"http://127.0.0.1:{server.http_port}",
            PUBLIC_URL,
            f"ws://127.0.0.1:{server.media_port}{MEDIA_PATH}",
            server.server.twilio_auth_token,
            ACCOUNT_SID,
        )
        self.placed: list[_Placed] = []
        self.faults: list[str] = []  # calls that failed or ended badly
        self.hostile_faults: list[str] = []
        self.hostile: dict[str, Counter[str]] = {}
        self.latencies: list[float] = []
        self.peak = Resources(0, 0, 0, 0.0)
        self.started = time.monotonic()

    # ------------------------------------------------------------ items

    async def room(self) -> bool:
        """Wait until the server has room for a call, as Twilio's next caller would find it (a call whose socket
        has closed may still be writing its record for a moment); False (a fault noted) after ROOM_WAIT_S."""
        server = self.server
        try:
            async with asyncio.timeout(ROOM_WAIT_S):
                while server.calls_active + server.tokens.pending >= server.server.max_calls:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.faults.append(f"no room for a call for {ROOM_WAIT_S:g} s: {server.calls_active} calls stay live")
            return False
        return True

    async def call(self, plan: CallPlan, caller: str, **options: Any) -> SimulatedCall | None:
        """Place one call; None (and a fault noted) when it failed."""
        self.report.calls_placed += 1
        try:
            call = await self.phone.run(
                simulate_call(
                    self.endpoint,
                    plan.wav,
                    caller=caller,
                    hang_up_at_ms=plan.hang_up_at_ms,
                    send_stop=plan.send_stop,
                    **options,
                )
            )
        except Exception as exc:  # a soak notes every failure and goes on
            self.faults.append(f"{plan.describe()}: {type(exc).__name__}: {exc}")
            return None
        if call.refused:
            self.report.calls_refused += 1
            return None
        returning = options.get("dial_status") is not None
        wants_turn = plan.hang_up_at_ms is None and not returning and bool(_sidecar(plan.wav)["expect"]["turns"])
        left_early = plan.hang_up_at_ms is not None
        self.placed.append(_Placed(call.call_sid, plan.describe(), wants_turn, bool(call.chunk_ms), left_early))
        self.latencies += [u.first_audio_ms for u in call.latencies if u.first_audio_ms is not None]
        self.report.max_caller_late_ms = max(self.report.max_caller_late_ms, call.max_late_ms)
        if call.closed_by_server and call.close_code != 1000:
            self.faults.append(f"{plan.describe()} ({call.call_sid}): the server closed with {call.close_code}")
        else:
            self.report.calls_completed += 1
        return call

    async def item(self, plan: CallPlan | HostilePlan, caller: str) -> None:
        if not await self.room():
            return
        if isinstance(plan, HostilePlan):
            await self.attack(plan, caller)
            return
        call = await self.call(plan, caller)
        self.report.hung_up_early += int(plan.hang_up_at_ms is not None)
        handed_off = call is not None and any("Twiml" in r.form for r in self.fake.for_call(call.call_sid))
        if call is not None and handed_off and plan.return_if_handed_off:
            await asyncio.sleep(plan.ring_s)  # nobody picks up
            if not await self.room():
                return
            back = CallPlan(CALLS_DIR / f"{RETURN_CALL}.wav")
            if await self.call(back, caller, call_sid=call.call_sid, dial_status="no-answer") is not None:
                self.report.returns += 1

    async def attack(self, plan: HostilePlan, caller: str) -> None:
        replay_sid = self.placed[-1].call_sid if self.placed else "CA" + "0" * 32
        started = time.monotonic()
        try:
            answer, call_sid = await self.phone.run(_attack(plan, self.endpoint, replay_sid, caller))
        except Exception as exc:  # e.g. no close in time: a finding, not a crash of the soak
            answer, call_sid = f"{type(exc).__name__}: {exc}".rstrip(": "), None
        took = time.monotonic() - started
        self.hostile.setdefault(plan.kind, Counter())[answer] += 1
        expected, within_s = EXPECTED[plan.kind]
        if answer != expected or took > within_s:
            self.hostile_faults.append(
                f"{plan.kind}: {answer} after {took:.1f} s (expected {expected} in {within_s:g} s)"
            )
        if call_sid is not None:
            self.placed.append(_Placed(call_sid, f"hostile {plan.kind}"))

    async def caller(self, index: int, mix: Mix, deadline: float) -> None:
        """One caller: item after item until the deadline."""
        loop = asyncio.get_running_loop()
        number = f"+1555010{index + 200:04d}"
        await asyncio.sleep(index * STAGGER_S)
        while loop.time() < deadline:
            await self.item(mix.next(), number)
            await asyncio.sleep(mix.gap_s())

    async def sample(self) -> None:
        """Resources every SAMPLE_EVERY_S, for the peak column and the JSON."""
        while True:
            now = Resources.measure()
            pairs = zip(dataclasses.astuple(self.peak), dataclasses.astuple(now), strict=True)
            self.peak = Resources(*(max(a, b) for a, b in pairs))
            self.report.samples.append({"t_s": round(time.monotonic() - self.started, 1), **dataclasses.asdict(now)})
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def idle(self, timeout_s: float) -> None:
        """Until no call is live and no token waits for its stream (a fault noted after `timeout_s`), and the
        records are written."""
        server = self.server
        try:
            async with asyncio.timeout(timeout_s):
                while server.calls_active or server.tokens.pending:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.faults.append(f"{server.calls_active} call(s) still live {timeout_s:g} s after the last was placed")
        await asyncio.to_thread(server.agent.records.flush, 10.0)

    async def settled(self, baseline: Resources | None = None) -> Resources:
        """Resources once the ended calls' sockets and tasks have gone: back within the tolerances of `baseline`,
        or without one, unchanged for a second; at most SETTLE_S."""
        loop = asyncio.get_running_loop()
        until, allowed = loop.time() + SETTLE_S, self.report.tolerances
        last = None
        while True:
            gc.collect()
            now = Resources.measure()
            if baseline is None:
                done = last is not None and (now.fds, now.tasks) == (last.fds, last.tasks)
            else:
                done = now.fds <= baseline.fds + allowed.fds and now.tasks <= baseline.tasks + allowed.tasks
            if done or loop.time() >= until:
                return now
            last = now
            await asyncio.sleep(1.0 if baseline is None else 0.25)

    # ------------------------------------------------------------ checks

    def checks(self, found: RecordFindings, final: list[str]) -> list[Check]:
        report, metrics = self.report, self.server.metrics
        report.turns, report.routes, report.tickets = found.turns, dict(found.routes), found.tickets_stored
        internal = metrics.value("voicebot_errors_total", kind=ServerFault.INTERNAL)
        ended_internal = metrics.value("voicebot_calls_ended_total", how=StreamEnd.INTERNAL)
        return [
            _check("calls", self.faults, f"{report.calls_completed} of {report.calls_placed} placed ended cleanly"),
            _check("hostile sockets", self.hostile_faults, "each refused as expected and in time, none with 1011"),
            _check("records", found.records, f"{len(self.placed)} streams, each with ended_at and its turns"),
            _check("tickets", found.tickets, f"{report.tickets} tickets, each read out and stored exactly once"),
            Check(
                "no internal errors",
                internal == 0 and ended_internal == 0,
                f'voicebot_errors_total{{kind="internal"}} {internal:g}, '
                f'voicebot_calls_ended_total{{how="internal_error"}} {ended_internal:g}',
            ),
            *self.resource_checks(),
            _check("still answers", final, "one more call and /healthz answered"),
        ]

    def resource_checks(self) -> list[Check]:
        before, after, allowed = self.report.before, self.report.after, self.report.tolerances
        assert before is not None and after is not None
        checks = []
        for key, label in RESOURCES.items():
            delta, limit = getattr(after, key) - getattr(before, key), getattr(allowed, key)
            detail = f"{getattr(before, key):g} -> {getattr(after, key):g} ({delta:+.5g}, allowed {limit:+g})"
            checks.append(Check(f"{label} flat", delta <= limit, detail))
        return checks

    async def final_call(self) -> list[str]:
        """One more call, whole, and /healthz: the server still answers after the soak."""
        problems: list[str] = []
        wav = CALLS_DIR / f"{FINAL_CALL}.wav"
        call = await self.call(CallPlan(wav), "+15550100299")
        await self.idle(DRAIN_S)
        record = None if call is None else await asyncio.to_thread(self.server.agent.store.get_call, call.call_sid)
        if record is None or record["ended_at"] is None or not record["turns"]:
            problems.append(f"the call after the soak: {'no call' if call is None else 'no complete record'}")
        status, health = await self.phone.run(_health(self.endpoint.url))
        if status != 200 or health.get("status") != "ok" or health.get("calls_active") != 0:
            problems.append(f"/healthz answered HTTP {status}: {health}")
        return problems


def _check(name: str, problems: list[str], ok: str) -> Check:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return Check(name, not problems, ok if not problems else f"{len(problems)} problem(s): {shown}")


def spoken_ticket_ids(text: str) -> list[str]:
    """The ticket ids read out in a reply, in the form `speak_ticket_id` gives them ("K, 7, M, 2, Q, X")."""
    letter = f"[{TICKET_ALPHABET}]"
    found = re.finditer(rf"(?<![\w,])(?<!, )({letter}(?:, {letter}){{{TICKET_ID_LENGTH - 1}}})(?![\w,])", text)
    return [match.group(1).replace(", ", "") for match in found]


@dataclass
class RecordFindings:
    records: list[str] = field(default_factory=list)  # problems with the calls' records
    tickets: list[str] = field(default_factory=list)  # problems with their tickets
    turns: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    tickets_stored: int = 0


def check_records(store: Store, placed: list[_Placed]) -> RecordFindings:
    """The records of the streams placed: each ended, with its turns; each ticket read out stored once under its
    call, and no ticket of the call that was not read out."""
    found = RecordFindings()
    records, tickets = found.records, found.tickets
    wants_turn = {p.call_sid for p in placed if p.wants_turn}  # a call back from a hand-off shares its CallSid
    # A caller who hangs up while the ticket's line plays has it opened all the same: the complaint is kept and
    # a colleague calls back. Only a caller who stayed must have heard every ticket of the call.
    left_early = {p.call_sid for p in placed if p.left_early}
    heard = {p.call_sid for p in placed if p.heard}
    for call_sid, what in {p.call_sid: p.what for p in placed}.items():
        record = store.get_call(call_sid)
        name = f"{call_sid} ({what})"
        if record is None:
            records.append(f"{name}: no record")
            continue
        found.turns += len(record["turns"])
        found.routes.update(turn["route"] for turn in record["turns"])
        if record["ended_at"] is None:
            records.append(f"{name}: not ended")
        if [t["index"] for t in record["turns"]] != list(range(len(record["turns"]))):
            records.append(f"{name}: turns numbered {[t['index'] for t in record['turns']]}")
        if call_sid in wants_turn and not record["turns"]:
            records.append(f"{name}: no turn recorded for a whole call with speech")
        if call_sid in heard and record["greeting"] is None:
            records.append(f"{name}: the caller heard audio but no greeting is recorded")
        spoken = [tid for turn in record["turns"] for tid in spoken_ticket_ids(turn["reply_text"] or "")]
        stored = Counter(t.id for t in store.tickets_for_call(call_sid))
        found.tickets_stored += len(stored)
        for ticket_id in sorted(set(spoken)):
            if stored[ticket_id] != 1:
                elsewhere = store.get_ticket(ticket_id)
                where = f", stored under {elsewhere.call_id}" if elsewhere and elsewhere.call_id != call_sid else ""
                tickets.append(f"{name}: ticket {ticket_id} read out, stored {stored[ticket_id]} times{where}")
        for ticket_id in sorted(set(stored) - set(spoken) if call_sid not in left_early else ()):
            routes = [(t["route"], t["interrupted"]) for t in record["turns"]]
            tickets.append(f"{name}: ticket {ticket_id} stored but never read out (turns: route, cut {routes})")
    return found


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run_soak(
    settings: Settings,
    agent: VoiceAgent,
    *,
    minutes: float,
    seed: int,
    calls: int | None = None,
    tolerances: Tolerances | None = None,
) -> SoakReport:
    """Run the soak against a `VoiceServer` with `agent` on free loopback ports; the report, with its checks.
    `calls` callers at a time (default server.max_calls; the server's max_calls is set to it). Only the calls
    the soak placed are checked, so `agent` may share its store with others."""
    if minutes <= 0:
        raise ValueError(f"minutes must be above 0, got {minutes}")
    concurrent = calls or settings.server.max_calls
    if concurrent < 1:
        raise ValueError(f"calls must be at least 1, got {concurrent}")
    if not Path("/proc/self/status").exists():
        raise SoakError("the soak counts open files, threads and memory from /proc/self: it needs Linux")
    report = SoakReport(seed, minutes, concurrent, tolerances=tolerances or Tolerances())
    errors = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        asyncio.run(_main(settings, agent, report, errors))
    finally:
        root.removeHandler(errors)
    return report


def _full_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Give `loop` the default thread pool asyncio would create, with all its threads already started. The pool
    runs each call's speech, LLM and heap-trim jobs and grows one thread at a time, whenever a job finds none idle;
    started full, its growth during the soak is not mistaken for a leak."""
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default (concurrent.futures' formula)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="asyncio")
    all_started = threading.Barrier(workers + 1)
    for _ in range(workers):
        pool.submit(all_started.wait, 10.0)
    all_started.wait(10.0)
    loop.set_default_executor(pool)


async def _main(settings: Settings, agent: VoiceAgent, report: SoakReport, errors: _ErrorLog) -> None:
    _full_default_executor(asyncio.get_running_loop())
    wavs = sample_calls()
    mix = Mix(report.seed, wavs)
    with FakeTwilio(ACCOUNT_SID, secrets.token_hex(16)) as fake, PhoneNetwork() as phone:
        server_settings = dataclasses.replace(
            settings.server,
            host="127.0.0.1",
            port=0,
            media_port=0,
            metrics_port=None,
            public_url=PUBLIC_URL,
            twilio_account_sid=fake.account_sid,
            twilio_auth_token=fake.auth_token,
            twilio_api_url=fake.url,
            human_number=HUMAN_NUMBER,
            max_calls=report.concurrent,
        )
        server = VoiceServer(dataclasses.replace(settings, server=server_settings), agent)
        await server.start()
        soak = _Soak(server, fake, phone, report)
        try:
            warm_up = [CallPlan(CALLS_DIR / f"{WARM_UP[i % len(WARM_UP)]}.wav") for i in range(report.concurrent)]
            log.info("warm-up: %d calls at once", len(warm_up))
            await asyncio.gather(*(soak.call(plan, f"+1555010{i + 100:04d}") for i, plan in enumerate(warm_up)))
            await soak.idle(DRAIN_S)
            report.before = await soak.settled()
            soak.peak = report.before
            loop = asyncio.get_running_loop()
            deadline = loop.time() + report.minutes * 60
            log.info("soak: %g min, %d callers, seed %d", report.minutes, report.concurrent, report.seed)
            sampler = asyncio.create_task(soak.sample())
            try:
                await asyncio.gather(*(soak.caller(i, mix, deadline) for i in range(report.concurrent)))
                await soak.idle(DRAIN_S)
            finally:
                sampler.cancel()
                await asyncio.wait({sampler})
            report.after = await soak.settled(report.before)
            report.peak = soak.peak
            found = await asyncio.to_thread(check_records, agent.store, soak.placed)
            final = await soak.final_call()
            report.hostile = {kind: dict(answers) for kind, answers in soak.hostile.items()}
            report.first_audio_ms = {
                "p50": _quantile(soak.latencies, 0.5),
                "p95": _quantile(soak.latencies, 0.95),
                "n": len(soak.latencies),
            }
            report.checks = soak.checks(found, final)
            report.checks.append(_check("nothing logged at ERROR", errors.messages, "no ERROR records"))
        finally:
            await server.shutdown(timeout_s=0)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m telephony.soak",
        description=summary.replace("\n", " "),
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep placing calls (default 10)")
    parser.add_argument("--calls", type=int, help="callers at a time (default: server.max_calls)")
    parser.add_argument("--seed", type=int, help="the mix's seed (default: a new one, printed)")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--config", type=Path, help="a voicebot TOML config (default: VOICEBOT_CONFIG)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or (args.calls is not None and args.calls < 1):
        parser.error("--minutes must be above 0 and --calls at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    print(f"seed {seed} (rerun this mix with --seed {seed})", flush=True)
    try:
        settings = load_settings(args.config)
        with tempfile.TemporaryDirectory(prefix="voicebot-soak-") as folder:
            started = time.monotonic()
            agent = build_agent(settings, store_url=str(Path(folder) / "calls.db"), spool=True)
            print(f"models loaded and warmed in {time.monotonic() - started:.0f} s", flush=True)
            try:
                report = run_soak(settings, agent, minutes=args.minutes, seed=seed, calls=args.calls)
            finally:
                agent.close()
    except (ConfigError, MissingArtifact, StoreError, KbError, SoakError) as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    if not report.passed:
        print(f"soak FAILED: {', '.join(check.name for check in report.failures)}", file=sys.stderr)
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
