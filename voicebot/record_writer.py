"""Write-behind call records: the dialog's writes never wait for the database.

`RecordWriter` is the dialog's `Recorder`. Its writes go, in order, to one background thread and return at once,
so a database another process keeps locked (or a slow disk) delays the record, never a caller's audio. A write
the store refuses (StoreError) goes to a durable local spool (`voicebot.spool`), and so does every write after
it, in order, until the spool is written back: every `retry_s`, and when the next process starts on the same
spool (one a crash or an outage left). Replayed writes are idempotent: a turn replaces its number, a ticket
keeps its id, a withdrawal deletes, an end keeps the first end time.

A ticket is the one write a caller waits for: the next sentence says its id. `create_ticket` waits for the
store up to `ticket_wait_s`; when the store fails or is too slow, the ticket gets an id here, is fsync'd into
the spool, and reaches the store later under that id.

Turn numbers: `start_call` returns 0 at once, so a conversation numbers its turns from 0; the writer adds the
turns the call's record already had (what store.start_call answers, for a call reopened after a hand-off nobody
answered).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from voicebot.redaction import redact_digits
from voicebot.routes import DialogState, Route, Stage
from voicebot.spool import Spool, SpoolError
from voicebot.store import Store, StoreError, Ticket, TicketIdConflict, TurnRecord, new_ticket_id, utc_now

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # writes waiting for the store before new ones are refused (a store this far behind is stuck)
RETRY_S = 5.0  # how often a failing store is tried again
TICKET_WAIT_S = 2.0  # how long a ticket waits for the store before it is kept in the spool under an id of its own
TRACKED_CALLS = 10_000  # calls whose turn numbering is remembered (a late turn can be recorded after the call ends)


@dataclass
class _Stream:
    """One start_call of a call: the conversation numbers its turns from 0, the record after the turns it had."""

    token: str  # names it in the spool
    offset: int | None = None  # the record's turns when it started; None until its start_call is written


@dataclass(eq=False)
class _Op(ABC):
    """One write, in the order the dialog made it (`seq`); the spool replays in that order."""

    KIND: ClassVar[str]
    seq: int

    @abstractmethod
    def apply(self, store: Store) -> None: ...

    def fields(self) -> dict[str, object]:
        """What the spool keeps of it, besides its kind and seq: its constructor's fields, unless told otherwise."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and f.name != "seq"}

    @abstractmethod
    def describe(self) -> str:
        """For logs: never the caller's words."""

    def to_json(self) -> dict[str, object]:
        return {"op": self.KIND, "seq": self.seq, **self.fields()}


@dataclass(eq=False)
class _StartCall(_Op):
    KIND = "start"
    call_id: str
    caller: str | None
    channel: str
    stream: _Stream

    def apply(self, store: Store) -> None:
        self.stream.offset = store.start_call(self.call_id, self.caller, self.channel)

    def fields(self) -> dict[str, object]:
        return {"call_id": self.call_id, "caller": self.caller, "channel": self.channel, "stream": self.stream.token}

    def describe(self) -> str:
        return f"the start of call {self.call_id}"


@dataclass(eq=False)
class _RecordTurn(_Op):
    KIND = "turn"
    call_id: str
    turn: TurnRecord
    stream: _Stream | None  # None: turn.index is the record's own number

    @property
    def resolved(self) -> bool:
        return self.stream is None or self.stream.offset is not None

    def stored(self) -> TurnRecord:
        """The turn under its number in the record (0 for a stream whose start was never written)."""
        offset = (self.stream.offset or 0) if self.stream is not None else 0
        return dataclasses.replace(self.turn, index=self.turn.index + offset)

    def apply(self, store: Store) -> None:
        store.record_turn(self.call_id, self.stored())

    def fields(self) -> dict[str, object]:
        turn = self.stored() if self.resolved else self.turn
        stream = None if self.resolved or self.stream is None else self.stream.token
        return {"call_id": self.call_id, "stream": stream, "turn": dataclasses.asdict(turn)}

    def describe(self) -> str:
        return f"turn {self.turn.index} of call {self.call_id}"


@dataclass(eq=False)
class _RecordGreeting(_Op):
    KIND = "greeting"
    call_id: str
    spoken_text: str
    interrupted: bool
    latency_ms: dict

    def apply(self, store: Store) -> None:
        store.record_greeting(self.call_id, self.spoken_text, self.interrupted, self.latency_ms)

    def describe(self) -> str:
        return f"the greeting of call {self.call_id}"


@dataclass(eq=False)
class _EndCall(_Op):
    KIND = "end"
    call_id: str
    handoff_reason: str | None

    def apply(self, store: Store) -> None:
        store.end_call(self.call_id, self.handoff_reason)

    def describe(self) -> str:
        return f"the end of call {self.call_id}"


@dataclass(eq=False)
class _WithdrawTicket(_Op):
    KIND = "withdraw"
    ticket_id: str

    def apply(self, store: Store) -> None:
        store.withdraw_ticket(self.ticket_id)

    def describe(self) -> str:
        return f"the withdrawal of ticket {self.ticket_id}"


class _Claim(Enum):
    """Who settles a ticket: the writer (it reached the store, or the writer spooled it) or, once the wait ran
    out, the caller (it spooled it under an id of its own). Changed under the writer's lock only."""

    QUEUED = auto()
    CLAIMED = auto()  # the writer is asking the store
    SPOOLING = auto()  # the writer is putting it in the spool: the caller waits for that (a local fsync)
    ABANDONED = auto()  # the caller stopped waiting; whatever the writer gets is not the caller's ticket
    SETTLED = auto()


@dataclass(eq=False)
class _CreateTicket(_Op):
    KIND = "ticket"
    call_id: str
    caller: str | None
    category: str
    summary: str
    ticket_id: str | None = None  # set for a ticket kept in the spool: the id the caller heard
    claim: _Claim = field(default=_Claim.QUEUED, init=False)
    result: Ticket | None = field(default=None, init=False)
    error: Exception | None = field(default=None, init=False)
    settled: threading.Event = field(default_factory=threading.Event, init=False)

    def apply(self, store: Store) -> None:
        """The spooled copy's write, under the id its caller heard (a live ticket lets the store choose)."""
        store.create_ticket(self.call_id, self.caller, self.category, self.summary, ticket_id=self.ticket_id)

    def describe(self) -> str:
        return f"ticket {self.ticket_id or '(new)'} of call {self.call_id}"

    def kept(self) -> _CreateTicket:
        """A copy under a new id of its own, for the spool (its claim, result and event fresh)."""
        return dataclasses.replace(self, ticket_id=new_ticket_id())

    def local_ticket(self) -> Ticket:
        assert self.ticket_id is not None
        return Ticket(self.ticket_id, self.call_id, self.caller, self.category, self.summary, "open", utc_now())

    def outcome(self) -> Ticket:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


_OFFSET = "offset"  # a spool line that says how many turns a stream's record had when its start was replayed


def _op_from_json(record: dict, streams: dict[str, _Stream]) -> _Op:
    """One spool line back into a write; KeyError, TypeError or ValueError when it is not one."""
    seq, kind = int(record["seq"]), record["op"]
    stream = record.get("stream")
    match kind:
        case _StartCall.KIND:
            return _StartCall(seq, record["call_id"], record["caller"], record["channel"], streams[stream])
        case _RecordTurn.KIND:
            turn = dict(record["turn"])
            turn["route"] = Route(turn["route"])
            turn["state"] = DialogState(turn["state"])
            turn["failed_stage"] = None if turn.get("failed_stage") is None else Stage(turn["failed_stage"])
            return _RecordTurn(seq, record["call_id"], TurnRecord(**turn), None if stream is None else streams[stream])
        case _RecordGreeting.KIND:
            return _RecordGreeting(
                seq, record["call_id"], record["spoken_text"], bool(record["interrupted"]), dict(record["latency_ms"])
            )
        case _EndCall.KIND:
            return _EndCall(seq, record["call_id"], record["handoff_reason"])
        case _WithdrawTicket.KIND:
            return _WithdrawTicket(seq, record["ticket_id"])
        case _CreateTicket.KIND:
            return _CreateTicket(
                seq, record["call_id"], record["caller"], record["category"], record["summary"], record["ticket_id"]
            )
    raise ValueError(f"unknown write {kind!r}")


def _by_seq(op: _Op) -> int:
    return op.seq


class RecordWriter:
    """The dialog's Recorder in front of a Store: writes in order on one background thread, with a durable spool
    for what the store refuses. Thread-safe. Nothing here waits for the database but `create_ticket` (from a
    worker thread, up to `ticket_wait_s`), `flush` and `close`. Reads go to the Store itself, after `flush`.

    `spool_path` None keeps refused writes in memory only (tests, chat demos): a restart loses them, and a
    ticket the store cannot take raises StoreError, since its id could not be kept."""

    def __init__(
        self,
        store: Store,
        spool_path: Path | None,
        *,
        max_pending: int = MAX_PENDING,
        retry_s: float = RETRY_S,
        ticket_wait_s: float = TICKET_WAIT_S,
    ) -> None:
        """Open the spool (a spool left by an earlier process is written first) and start the writer thread."""
        if max_pending < 1:
            raise ValueError(f"RecordWriter: max_pending must be at least 1, got {max_pending}")
        if retry_s <= 0 or ticket_wait_s <= 0:
            raise ValueError(f"RecordWriter: retry_s ({retry_s}) and ticket_wait_s ({ticket_wait_s}) must be > 0")
        self.store = store
        self.max_pending, self.retry_s, self.ticket_wait_s = max_pending, retry_s, ticket_wait_s
        self._lock = threading.Lock()  # never held while waiting for the store or the disk
        self._changed = threading.Condition(self._lock)
        # The spool file and `_spooled` change together; taken before _lock, and held by close() over several.
        self._spool_lock = threading.RLock()
        self._queue: deque[_Op] = deque()
        self._spooled: list[_Op] = []  # writes waiting for the store, by seq, each on disk too (with a spool file)
        self._streams: dict[str, _Stream] = {}  # call id -> its latest start, oldest first
        self._next_seq = 0
        self._last_queued = -1
        self._processed = -1  # the seq of the last queued write the writer has written or spooled
        self._replays = 0  # replays attempted so far
        self._retry_at = 0.0  # when the spool is tried next (time.monotonic)
        self._outage = False  # the store failed and the spool has not been written back since
        self._spool_failing = False
        self._closed = False  # new writes are refused
        self._stopping = False  # the writer thread ends once the queue is empty
        self._file = None if spool_path is None else Spool(spool_path)
        if self._file is not None:
            try:
                self._load(self._file)
            except BaseException:
                self._file.close()
                raise
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        """Where refused writes wait, as logs name it."""
        return f"spool {self._file.path}" if self._file is not None else "memory (no spool file: a restart loses them)"

    @property
    def pending(self) -> int:
        """Writes queued and not yet written or spooled."""
        with self._lock:
            return self._last_queued - self._processed

    @property
    def spooled(self) -> int:
        """Writes in the spool, waiting for the store."""
        with self._lock:
            return len(self._spooled)

    # ------------------------------------------------------------ the Recorder (any thread)

    def start_call(self, call_id: str, caller: str | None, channel: str) -> int:
        """Queue the opening of the call's record; returns 0 at once: the conversation numbers its turns from 0,
        and they are stored after the turns a reopened record already has."""
        stream = _Stream(uuid.uuid4().hex)
        with self._lock:
            self._enqueue(_StartCall(-1, call_id, caller, channel, stream))
            self._streams.pop(call_id, None)
            self._streams[call_id] = stream
            while len(self._streams) > TRACKED_CALLS:
                del self._streams[next(iter(self._streams))]
        return 0

    def record_turn(self, call_id: str, turn: TurnRecord) -> None:
        # Redacted here already, as the store would: the spool must not keep what the store never would.
        turn = dataclasses.replace(
            turn, caller_text=self._redact(turn.caller_text), reply_text=self._redact(turn.reply_text)
        )
        with self._lock:
            self._enqueue(_RecordTurn(-1, call_id, turn, self._streams.get(call_id)))

    def record_greeting(self, call_id: str, spoken_text: str, interrupted: bool, latency_ms: dict) -> None:
        with self._lock:
            self._enqueue(_RecordGreeting(-1, call_id, spoken_text, interrupted, dict(latency_ms)))

    def end_call(self, call_id: str, handoff_reason: str | None = None) -> None:
        with self._lock:
            self._enqueue(_EndCall(-1, call_id, handoff_reason))

    def withdraw_ticket(self, ticket_id: str) -> None:
        with self._lock:
            self._enqueue(_WithdrawTicket(-1, ticket_id))

    def _redact(self, text: str) -> str:
        return redact_digits(text, self.store.redact_digits)

    def create_ticket(self, call_id: str, caller: str | None, category: str, summary: str) -> Ticket:
        """Open a ticket, in order after the call's other writes. From a worker thread, never the event loop: it
        waits up to `ticket_wait_s` for the store, then keeps the ticket in the spool (fsync'd) under an id of
        its own. Raises StoreError only when neither the store nor the spool can take it."""
        deadline = time.monotonic() + self.ticket_wait_s
        op = _CreateTicket(-1, call_id, caller, category, self._redact(summary))
        with self._lock:
            self._enqueue(op, deadline)
        if not op.settled.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                abandon = op.claim in (_Claim.QUEUED, _Claim.CLAIMED)
                if abandon:
                    op.claim = _Claim.ABANDONED
            if abandon:
                return self._keep_ticket(op, f"the store did not answer within {self.ticket_wait_s:g} s")
            op.settled.wait()  # the writer is putting it in the spool: a local write
        return op.outcome()

    def _enqueue(self, op: _Op, deadline: float | None = None) -> None:
        """Give `op` its place in the order and queue it (the lock is held). A full queue refuses it at once, or
        after waiting until `deadline` for room."""
        if self._closed:
            raise StoreError(f"the record writer is closed: {op.describe()} is not recorded")
        while self._last_queued - self._processed >= self.max_pending:
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"{self.max_pending} writes are waiting for the store (RecordWriter max_pending): "
                    f"{op.describe()} is not recorded; the store is too slow: look for a process holding the "
                    "database or a failing disk"
                )
            self._changed.wait(remaining)
        op.seq = self._next_seq
        self._next_seq += 1
        self._last_queued = op.seq
        self._queue.append(op)
        self._changed.notify_all()

    # ------------------------------------------------------------ waiting for the store

    def flush(self, timeout_s: float) -> bool:
        """Wait until every write queued before this call is in the store. False when the time ran out or the
        store is failing: those writes then wait in the spool (`where`) and are written when it works again."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._last_queued
            if not self._changed.wait_for(lambda: self._processed >= target, max(0.0, deadline - time.monotonic())):
                return False
            if not self._spooled_up_to(target):
                return True
            if self._outage:
                return False
            # Only a ticket whose caller stopped waiting holds them in the spool: the store works, write it now.
            replays, self._retry_at = self._replays, 0.0
            self._changed.notify_all()
            self._changed.wait_for(
                lambda: self._replays > replays or not self._spooled_up_to(target),
                max(0.0, deadline - time.monotonic()),
            )
            return not self._spooled_up_to(target)

    def _spooled_up_to(self, seq: int) -> bool:
        return bool(self._spooled) and self._spooled[0].seq <= seq

    def close(self, timeout_s: float = 10.0) -> bool:
        """Refuse new writes, flush, stop the writer thread. A writer stuck in the store past `timeout_s` leaves
        what is still queued in the spool. True when everything reached the store; the store itself stays open."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                return not self._queue and not self._spooled
            self._closed = True
        written = self.flush(timeout_s)
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return written
        # Stuck in the store: what is still queued goes to the spool, for the next process. The thread closes
        # the spool file on its way out, so it may still keep the write it is stuck on.
        with self._spool_lock:
            with self._lock:
                left = list(self._queue)
                self._queue.clear()
                self._processed = max(self._processed, self._last_queued)
                self._changed.notify_all()
            for op in left:
                self._keep(op, "the store did not answer before the record writer was closed")
        if left:
            log.warning(
                "the store took more than %g s to answer: %d writes queued at close wait in %s",
                timeout_s,
                len(left),
                self.where,
            )
        return written and not left

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        try:
            self._work()
        finally:
            with self._spool_lock:
                if self._file is not None:
                    self._file.close()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not (replay := self._replay_due()) and not self._queue:
                    if self._stopping:
                        return
                    self._changed.wait(max(0.0, self._retry_at - time.monotonic()) if self._spooled else None)
                op = None if replay else self._take()
            if op is None:
                if replay:
                    self._replay()
                continue
            try:
                self._process(op)
            finally:
                with self._lock:
                    self._processed = max(self._processed, op.seq)
                    self._changed.notify_all()

    def _replay_due(self) -> bool:
        """Spooled writes older than everything still queued, and their time has come (the lock is held)."""
        frontier = self._queue[0].seq if self._queue else math.inf
        return bool(self._spooled) and self._spooled[0].seq < frontier and time.monotonic() >= self._retry_at

    def _take(self) -> _Op | None:
        """The next queued write; a ticket its caller gave up on is theirs (None: it is already in the spool)."""
        op = self._queue.popleft()
        if not isinstance(op, _CreateTicket):
            return op
        if op.claim is _Claim.ABANDONED:
            self._processed = op.seq
            self._changed.notify_all()
            return None
        op.claim = _Claim.CLAIMED
        return op

    def _blocked(self, op: _Op) -> tuple[bool, bool]:
        """Whether the store is failing, and whether older writes than `op` wait in the spool."""
        with self._lock:
            return self._outage, bool(self._spooled) and self._spooled[0].seq < op.seq

    def _process(self, op: _Op) -> None:
        outage, behind = self._blocked(op)
        if behind and not outage:  # a ticket its caller stopped waiting for: the store works, so write it first
            self._replay(op.seq)
            outage, behind = self._blocked(op)
        if outage or behind:
            self._keep(op, "the store is failing; earlier writes wait in the spool")
            return
        try:
            if isinstance(op, _CreateTicket):
                ticket = self.store.create_ticket(op.call_id, op.caller, op.category, op.summary)
            else:
                op.apply(self.store)
        except StoreError as exc:
            self._failed(exc)
            self._keep(op, str(exc))
        except Exception as exc:
            if isinstance(op, _CreateTicket):
                self._settle(op, error=exc)
            else:  # wrong data (an unknown route...): trying again cannot help
                log.exception("%s cannot be written and is dropped", op.describe())
        else:
            if isinstance(op, _CreateTicket) and not self._settle(op, result=ticket):
                log.info(
                    "call %s: ticket %s reached the store after its caller was given another id: withdrawn",
                    op.call_id,
                    ticket.id,
                )
                with self._lock:
                    withdraw = _WithdrawTicket(self._next_seq, ticket.id)
                    self._next_seq += 1
                self._process(withdraw)

    def _settle(self, op: _CreateTicket, *, result: Ticket | None = None, error: Exception | None = None) -> bool:
        """Hand the caller its ticket (or error); False when the caller has stopped waiting."""
        with self._lock:
            if op.claim is _Claim.ABANDONED:
                return False
            op.claim, op.result, op.error = _Claim.SETTLED, result, error
        op.settled.set()
        return True

    def _keep(self, op: _Op, why: str) -> None:
        """Put `op` in the spool; a ticket under an id of its own, handed to its caller if it is still waiting."""
        if not isinstance(op, _CreateTicket):
            self._spool(op, required=False)
            return
        with self._lock:
            if op.claim not in (_Claim.QUEUED, _Claim.CLAIMED):
                return  # its caller gave up and kept it themselves
            op.claim = _Claim.SPOOLING
        try:
            self._settle(op, result=self._keep_ticket(op, why))
        except StoreError as exc:
            self._settle(op, error=exc)

    def _keep_ticket(self, op: _CreateTicket, why: str) -> Ticket:
        """Spool the ticket under an id of its own, on disk before its id can be spoken."""
        if self._file is None:
            raise StoreError(f"{why}; the ticket of call {op.call_id} cannot be kept: no spool file is set")
        kept = op.kept()
        try:
            self._spool(kept, required=True)
        except SpoolError as exc:
            raise StoreError(f"{why}; the ticket of call {op.call_id} cannot be kept either: {exc}") from exc
        with self._lock:
            if not self._outage:  # the store works: write it as soon as the writes before it are
                self._retry_at = time.monotonic()
                self._changed.notify_all()
        log.info(
            "call %s: ticket %s is kept in %s until the store takes it (%s)",
            op.call_id,
            kept.ticket_id,
            self.where,
            why,
        )
        return kept.local_ticket()

    def _spool(self, op: _Op, *, required: bool) -> None:
        """Add `op` to the spool, on disk when this returns. A file that cannot be written raises SpoolError for
        a `required` op; any other is kept in memory only (logged once)."""
        with self._spool_lock:
            if self._file is not None:
                try:
                    self._file.append(op.to_json())
                    self._spool_failing = False
                except SpoolError as exc:
                    if required:
                        raise
                    if not self._spool_failing:
                        log.error("%s; writes waiting for the store are kept in memory only until it works", exc)
                    self._spool_failing = True
            with self._lock:
                bisect.insort(self._spooled, op, key=_by_seq)
                self._changed.notify_all()

    def _failed(self, exc: StoreError) -> None:
        """The store refused a write: later writes go to the spool until it has been written back."""
        with self._lock:
            first, self._outage = not self._outage, True
            self._retry_at = time.monotonic() + self.retry_s
        if first:
            log.error(
                "store writes fail: %s. Records wait in %s, tried again every %g s", exc, self.where, self.retry_s
            )

    def _replay(self, before: float = math.inf) -> None:
        """Write the spooled writes older than everything queued (and than `before`), in order, until the store
        refuses one."""
        with self._lock:
            frontier = min(before, self._queue[0].seq if self._queue else math.inf)
            batch = [op for op in self._spooled if op.seq < frontier]
        done: set[_Op] = set()
        failure: StoreError | None = None
        for op in batch:
            try:
                self._replay_one(op)
            except StoreError as exc:
                failure = exc
                break
            except Exception:  # wrong data: trying again cannot help, and it must not hold up the rest
                log.exception("%s in %s cannot be written and is dropped", op.describe(), self.where)
            done.add(op)
        with self._spool_lock:
            with self._lock:
                self._spooled = [op for op in self._spooled if op not in done]
                left = list(self._spooled)
            if done and self._file is not None:
                try:
                    self._file.rewrite([op.to_json() for op in left])
                except SpoolError as exc:
                    log.error("%s; its written records stay in it and are written again (harmlessly) later", exc)
        with self._lock:
            self._replays += 1
            recovered = failure is None and self._outage
            if failure is None:
                self._outage = False
            self._changed.notify_all()
        if failure is not None:
            self._failed(failure)
        elif recovered:
            log.warning("the store works again: %d writes from %s written, %d left", len(done), self.where, len(left))
        elif done:
            log.info("%d writes from %s written, %d left", len(done), self.where, len(left))

    def _replay_one(self, op: _Op) -> None:
        if isinstance(op, _CreateTicket):
            try:
                op.apply(self.store)
            except TicketIdConflict as exc:  # its caller heard the id; the promise to call back is kept
                ticket = self.store.create_ticket(op.call_id, op.caller, op.category, op.summary)
                log.error(
                    "%s; it is stored as ticket %s instead: tell whoever asks for %s", exc, ticket.id, op.ticket_id
                )
            return
        op.apply(self.store)
        if isinstance(op, _StartCall) and self._file is not None:
            # A crash before the spool is rewritten must not start the call again: by then its record would
            # count this stream's turns too, and number them twice.
            with self._spool_lock:
                try:
                    self._file.append({"op": _OFFSET, "stream": op.stream.token, "offset": op.stream.offset})
                except SpoolError as exc:
                    log.error("%s; a crash now could number the turns of call %s twice", exc, op.call_id)

    def _load(self, spool: Spool) -> None:
        """Take over the writes an earlier process left in the spool: they are written before anything new."""
        records = spool.load()
        streams: dict[str, _Stream] = {}
        for record in records:
            if record.get("op") == _OFFSET:
                streams[record["stream"]] = _Stream(record["stream"], int(record["offset"]))
        ops: list[_Op] = []
        for number, record in enumerate(records, start=1):
            if record.get("op") == _OFFSET:
                continue
            stream = record.get("stream")
            if stream is not None:
                streams.setdefault(stream, _Stream(stream))
            try:
                op = _op_from_json(record, streams)
            except (KeyError, TypeError, ValueError) as exc:
                raise SpoolError(
                    f"spool {spool.path}: record {number} is not a write this voicebot knows ({exc!r}); it was "
                    "edited, or written by another version: repair it, or move the file aside (its records then "
                    "never reach the store)"
                ) from None
            if isinstance(op, _StartCall) and op.stream.offset is not None:
                continue  # written before the process stopped (see _replay_one)
            ops.append(op)
        ops.sort(key=_by_seq)
        self._spooled = ops
        self._next_seq = ops[-1].seq + 1 if ops else 0
        self._last_queued = self._processed = self._next_seq - 1  # flush() waits for them too
        if ops:
            log.warning("%s holds %d writes an earlier run could not make; writing them first", self.where, len(ops))
