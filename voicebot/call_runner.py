"""The thin asyncio layer under a CallSession: runs its jobs in threads and its actions on a transport.

Events from the transport (audio, DTMF, marks, hang-up) and from finished jobs go through one queue into the
session, so the session sees one ordered stream and needs no locks. Jobs run in worker threads because
CTranslate2, onnxruntime and llama.cpp release the GIL; a cancelled job is told to stop between sentences
(and between LLM tokens) and its late results are dropped by the session. A job that raises is reported to the
session (`JobFailed`, with the stage it was in), which has the caller hear an apology; a store that fails while
a turn is recorded is logged, and the call goes on. Records are written behind the call (`RecordWriter`), so a
slow or locked database never holds up its audio.

The transport's events are bounded (`feed` waits while `MAX_QUEUED` are waiting, and gives up on a stream
that floods for longer than `FLOOD_WAIT_S`), and the runner lets other calls run every few events, so one
call's flood slows only that call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voicebot.agent import VoiceAgent
from voicebot.dialog import Conversation, Reply
from voicebot.routes import HandoffReason, ReplyKind, Route, Stage
from voicebot.session import (
    Action,
    CallEnded,
    CallSession,
    Cancel,
    ClearAudio,
    CommitProgress,
    CommitTurn,
    Event,
    Hangup,
    JobFailed,
    PauseAudio,
    PlayAudio,
    PlayLine,
    RecordTurn,
    ReplyFinished,
    Respond,
    ResumeAudio,
    SendMark,
    SentenceReady,
    Transcribe,
    Transcribed,
    Transfer,
    TransferDone,
    Withdraw,
)
from voicebot.store import StoreError, speak_ticket_id

log = logging.getLogger(__name__)

MAX_QUEUED = 250  # transport events waiting for the session: 5 s of audio frames
FLOOD_WAIT_S = 2.0  # a stream that keeps the queue full this long is flooding: the call is dropped
FAIR_EVERY = 8  # events handled in a row before other calls get the loop
FLUSH_S = 5.0  # at the end of a call, how long to wait for its records to be written (else they stay spooled)


class CallFlooded(RuntimeError):
    """The transport sent events faster than the call could handle them, for longer than FLOOD_WAIT_S."""


class CallObserver(Protocol):
    """Told of each turn as it is committed (the server's metrics), so a long call counts while it is live."""

    def turn_committed(self, route: Route, latency_ms: Mapping[str, float | None]) -> None: ...
    def ticket_opened(self) -> None: ...
    def handed_off(self, reason: HandoffReason) -> None: ...


class Transport(Protocol):
    """Where the call's audio goes: the Twilio socket, the local speaker, or a replay's virtual phone."""

    async def play(self, pcm: np.ndarray) -> None: ...
    async def mark(self, name: str) -> None: ...
    async def clear(self) -> None: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def transfer(self, reason: HandoffReason) -> bool:
        """Hand the call to a person; False when that failed (the call goes on with the bot)."""

    async def hangup(self) -> None: ...


@dataclass
class _Job:
    cancelled: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    task: asyncio.Task | None = None
    stage: Stage = Stage.ROUTE  # where the work is now: what a failure or a missed deadline is put down to


class CallRunner:
    """Drives one call: `push` events in, `run` until the session ends."""

    def __init__(
        self,
        agent: VoiceAgent,
        session: CallSession,
        conversation: Conversation,
        transport: Transport,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
    ) -> None:
        self.agent, self.session, self.conversation, self.transport = agent, session, conversation, transport
        self.clock, self.observer = clock, observer
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._room = asyncio.Event()  # set while the queue has room for the transport's events
        self._room.set()
        self._jobs: dict[int, _Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.end_reason: str | None = None
        self.done = asyncio.Event()

    @property
    def working(self) -> bool:
        """A job (transcription, reply) is running for this call."""
        return any(j.task is not None and not j.task.done() for j in self._jobs.values())

    @property
    def busy(self) -> bool:
        """Events are queued or a job is running for this call."""
        return not self._queue.empty() or self.working

    def push(self, event: Event) -> None:
        """Queue an event (from the event loop's thread) whatever the queue holds: the call's own events."""
        self._queue.put_nowait(event)

    async def feed(self, event: Event) -> None:
        """Queue an event from the transport, waiting while the queue is full; raises CallFlooded when it stays
        full for FLOOD_WAIT_S (the other end sends faster than real time and will not stop)."""
        if self._queue.qsize() >= MAX_QUEUED:
            self._room.clear()
            try:
                async with asyncio.timeout(FLOOD_WAIT_S):
                    await self._room.wait()
            except TimeoutError:
                raise CallFlooded(f"more than {MAX_QUEUED} events waiting for {FLOOD_WAIT_S:g} s") from None
        self._queue.put_nowait(event)

    async def run(self) -> str:
        """Process events until the session ends; returns why it ended, once the call's records are written
        (or spooled: a store that is down keeps them for later)."""
        self._loop = asyncio.get_running_loop()
        handled = 0
        try:
            while not self.session.ended:
                event = await self._queue.get()
                if self._queue.qsize() < MAX_QUEUED // 2:
                    self._room.set()
                for action in self.session.handle(event):
                    await self._execute(action)
                handled += 1
                if handled % FAIR_EVERY == 0:
                    await asyncio.sleep(0)  # a queue that is never empty must not keep other calls waiting
        finally:
            for job in self._jobs.values():
                job.cancelled.set()
            self._store_safely("close the call's record", self.conversation.end)
            if not await asyncio.to_thread(self.agent.records.flush, FLUSH_S):
                log.warning(
                    "call %s: its records are not written yet; they are kept for later", self.conversation.call_id
                )
            self.done.set()
        return self.end_reason or "ended"

    async def idle(self) -> None:
        """Wait until every queued event is handled and no job is running (lock-step replay)."""
        while not self.session.ended and self.busy:
            running = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
            await (asyncio.wait(running) if running else asyncio.sleep(0))

    # ------------------------------------------------------------ actions

    async def _execute(self, action: Action) -> None:
        match action:
            case PlayAudio():
                await self.transport.play(action.pcm)
            case PlayLine():
                await self.transport.play(self.agent.lines[action.line])
                await self.transport.mark(action.mark)
            case SendMark():
                await self.transport.mark(action.name)
            case ClearAudio():
                await self.transport.clear()
            case PauseAudio():
                await self.transport.pause()
            case ResumeAudio():
                await self.transport.resume()
            case Transcribe():
                self._start(action.job, self._transcribe, action)
            case Respond():
                self._start(action.job, self._respond, action)
            case Cancel():
                job = self._jobs.get(action.job)
                if job is not None:
                    job.cancelled.set()
            case Withdraw():
                self._withdraw(action.job)
            case CommitTurn():
                self._commit(action)
            case CommitProgress():
                self._progress(action)
            case RecordTurn():
                self._record(action)
            case Transfer():
                accepted = await self.transport.transfer(action.reason)
                if accepted and self.observer is not None:
                    self.observer.handed_off(action.reason)
                self.push(TransferDone(accepted, self.clock()))
            case Hangup():
                await self.transport.hangup()
            case CallEnded():
                self.end_reason = action.reason

    def _start(self, job_id: int, work: Callable[[_Job, Action], None], action: Action) -> None:
        job = _Job()
        self._jobs[job_id] = job
        job.task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._guard, work, job, action))

    def _guard(self, work: Callable[[_Job, Action], None], job: _Job, action: Transcribe | Respond) -> None:
        try:
            work(job, action)
        except Exception as exc:  # a failing job must not leave the caller in silence: the session says sorry
            stage = Stage.STORE if isinstance(exc, StoreError) else job.stage
            log.exception(
                "call %s: %s job %d failed in %s", self.conversation.call_id, type(action).__name__, action.job, stage
            )
            if not job.cancelled.is_set():
                self._post(JobFailed(action.job, stage, self.clock()))

    def _post(self, event: Event) -> None:
        """Hand an event from a worker thread to the call's loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    # ------------------------------------------------------------ jobs (worker threads)

    def _transcribe(self, job: _Job, action: Transcribe) -> None:
        job.stage = Stage.STT
        start = time.perf_counter()
        transcript = self.agent.transcriber.transcribe(action.audio)
        if not job.cancelled.is_set():
            elapsed = (time.perf_counter() - start) * 1000
            self._post(Transcribed(action.job, transcript, elapsed, self.clock()))

    def _respond(self, job: _Job, action: Respond) -> None:
        match action.kind:
            case ReplyKind.GREETING:
                reply = self.conversation.greeting()
            case ReplyKind.DTMF:
                reply = self.conversation.respond_dtmf(action.text)
            case ReplyKind.PROMPT:
                reply = self.conversation.prompt(action.text)
            case ReplyKind.TURN:
                reply = self.conversation.respond(action.text, cancelled=job.cancelled.is_set, misheard=action.misheard)
        job.reply = reply
        sentences = iter(reply.sentences)
        try:
            while not job.cancelled.is_set():
                job.stage = Stage.LLM if reply.route is Route.LLM else Stage.ROUTE
                sentence = next(sentences, None)
                if sentence is None or job.cancelled.is_set():
                    break
                job.stage = Stage.TTS
                pcm, tts_ms = self.agent.speech.sentence(sentence, store=self._reusable(reply, sentence))
                if job.cancelled.is_set():
                    break
                self._post(SentenceReady(action.job, sentence, pcm, tts_ms, self.clock()))
        finally:
            reply.cancel()  # an LLM stream left open would keep the shared model locked for every call
        if job.cancelled.is_set():
            return
        self._post(
            ReplyFinished(
                action.job,
                reply.route,
                reply.action,
                reply.reason,
                reply.route_ms,
                reply.llm_first_token_ms,
                self.clock(),
            )
        )

    @staticmethod
    def _reusable(reply: Reply, sentence: str) -> bool:
        """Worth keeping in the speech cache: not an LLM's words, nor the sentence with a new ticket's id (each one
        is said once, and thousands would fill the cache)."""
        return reply.route is not Route.LLM and not (reply.ticket_id and speak_ticket_id(reply.ticket_id) in sentence)

    def _withdraw(self, job_id: int) -> None:
        """Cancel the reply's work and, once its job has stopped, undo what its decision did."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.cancelled.set()
        if job.task is not None and not job.task.done():
            job.task.add_done_callback(lambda _: self._withdraw(job_id))
        elif job.reply is not None:
            reply, job.reply = job.reply, None
            self._store_safely("withdraw a reply", lambda: self.conversation.withdraw(reply))

    def _commit(self, action: CommitTurn) -> None:
        job = self._jobs.get(action.job)
        if job is None:
            return
        if job.reply is None and job.task is not None and not job.task.done():
            # Cut off before the dialog had even decided: record the turn once it has.
            job.task.add_done_callback(lambda _: self._commit(action))
            return
        if job.reply is not None:
            reply = job.reply
            self._store_safely(
                "record a turn",
                lambda: self.conversation.commit(
                    reply, action.spoken_text, interrupted=action.interrupted, latency_ms=action.latency_ms
                ),
            )
            self._observe(reply, action)
            if job.reply.kind is ReplyKind.TURN and not self.session.ended:
                # While the reply plays, put this turn into the LLM's cache: the next LLM answer starts sooner.
                asyncio.get_running_loop().run_in_executor(None, self._prefill)

    def _observe(self, reply: Reply, action: CommitTurn) -> None:
        if self.observer is None or reply.kind is not ReplyKind.TURN:
            return
        self.observer.turn_committed(reply.route, {**reply.timings(), **action.latency_ms})
        if reply.opened_ticket:
            self.observer.ticket_opened()

    def _progress(self, action: CommitProgress) -> None:
        """Record the reply as far as it has been heard, so a crash loses at most the sentence in flight (a
        ticket's id, once read out, is in the record); the turn's `CommitTurn` replaces it."""
        job = self._jobs.get(action.job)
        if job is not None and job.reply is not None and job.reply.kind is ReplyKind.TURN:
            reply = job.reply
            self._store_safely(
                "record a turn so far", lambda: self.conversation.record_progress(reply, action.spoken_text)
            )

    def _prefill(self) -> None:
        """Warm the LLM's cache with the call so far; a failure here costs the next LLM turn time, nothing else."""
        try:
            self.conversation.prefill()
        except Exception:
            log.exception("call %s: prefilling the LLM's cache failed", self.conversation.call_id)

    def _record(self, action: RecordTurn) -> None:
        """Record a turn the session answered from memory. A ticket the failed reply opened, whose id the caller
        did not hear, is withdrawn."""
        job = self._jobs.get(action.job) if action.job is not None else None
        stage = action.failed_stage or (job.stage if job is not None else None)
        self._store_safely(
            "record a turn",
            lambda: self.conversation.record_line(action.route, action.caller_text, action.spoken_text, stage),
        )
        if self.observer is not None:
            self.observer.turn_committed(action.route, {})
        if job is not None:
            job.cancelled.set()
            self._forget_unheard_ticket(job, action.spoken_text)

    def _forget_unheard_ticket(self, job: _Job, spoken_text: str) -> None:
        """Now, if the reply exists (its TTS may hang forever), and again once the job has stopped (a stuck
        routing step may still open a ticket)."""
        if job.reply is not None:
            reply, forget = job.reply, self.conversation.forget_unheard
            self._store_safely("withdraw an unheard ticket", lambda: forget(reply, spoken_text))
        if job.task is not None and not job.task.done():
            job.task.add_done_callback(lambda _: self._forget_unheard_ticket(job, spoken_text))

    def _store_safely(self, what: str, write: Callable[[], None]) -> None:
        """A store that fails while the call goes on is logged, not fatal: the caller has heard the reply."""
        try:
            write()
        except StoreError as exc:
            log.error("call %s: could not %s: %s", self.conversation.call_id, what, exc)
