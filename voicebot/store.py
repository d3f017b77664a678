"""Call records and tickets: every call leaves a record, every promise to call back leaves a ticket.

SQLite is the default (one file, WAL so the CLI can read while `serve` writes); a `postgresql://` URL gives
several workers one database (voicebot.store_postgres). Both run the same queries (`SqlStore`) and the same
migrations; SQLite versions its schema with `PRAGMA user_version`, and it is only ever migrated forward.

Caller numbers are stored in full (a ticket may need a call back) and masked whenever they are shown; long
numbers the caller says (card, account, phone numbers) are redacted from transcripts and ticket summaries
before they are stored (`voicebot.redaction`, setting store.redact_digits).

Every commit is durable (fsync'd) before it returns: a ticket id the caller hears must survive a power cut.
A live call names the process that owns it, so the calls a crashed process left open can be closed later.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

from voicebot.redaction import DEFAULT_MIN_DIGITS, check_min_digits, redact_digits
from voicebot.routes import DialogState, Route, Stage

CHANNELS = ("twilio", "chat", "replay", "mic")
# The routes a caller turn is recorded with (the greeting is recorded on the call, prompts not at all).
ROUTES = tuple(route.value for route in Route if route not in (Route.GREETING, Route.PROMPT))
# No 0/O, 1/I/L, 5/S, 2/Z, 8/B, U/V: pairs a caller mishears or misreads when the id is read out or written down.
TICKET_ALPHABET = "ACDEFGHJKMNPQRTWXY3479"
TICKET_ID_LENGTH = 6
_TICKET_ID = re.compile(f"[{TICKET_ALPHABET}]{{{TICKET_ID_LENGTH}}}")
SETTING_HINT = "setting store.url or environment variable VOICEBOT_STORE_URL"

# ITU country codes are prefix-free: 1 and 7 are the one-digit ones, these the two-digit ones, all others have 3.
_TWO_DIGIT_CC = re.compile(r"2[07]|3[0-469]|4[013-9]|5[1-8]|6[0-6]|8[1246]|9[0-58]")


class StoreError(RuntimeError):
    """The store cannot be used; the message names the database and what to do about it."""


class TicketIdConflict(ValueError):
    """A ticket id given to create_ticket already belongs to another call's ticket. A ValueError, not a
    StoreError: the store works, and trying again cannot help; the ticket needs another id."""

    def __init__(self, ticket_id: str, call_id: str, existing: Ticket) -> None:
        super().__init__(
            f"ticket {ticket_id} cannot be created for call {call_id}: that id belongs to a ticket of call "
            f"{existing.call_id} (created {existing.created_at}); give each new ticket its own new_ticket_id()"
        )
        self.ticket_id = ticket_id
        self.call_id = call_id
        self.existing = existing


@dataclass(frozen=True)
class TurnRecord:
    index: int
    caller_text: str
    route: Route  # one of ROUTES
    faq_id: str | None
    reply_text: str  # what was actually spoken: cut where the caller barged in
    interrupted: bool
    state: DialogState
    latency_ms: dict[str, float | None]  # endpoint, stt, route, llm_first_token, tts_first_audio, first_audio_out
    failed_stage: Stage | None = None  # the stage that raised or missed its deadline (route `repeat`)


@dataclass(frozen=True)
class Ticket:
    id: str
    call_id: str
    caller: str | None  # in full: mask_number() it before showing
    category: str
    summary: str
    status: str
    created_at: str

    def to_json(self) -> dict[str, object]:
        """The `tickets list --json` shape, caller masked."""
        return {
            "id": self.id,
            "call_id": self.call_id,
            "caller": mask_number(self.caller),
            "category": self.category,
            "summary": self.summary,
            "status": self.status,
            "created_at": self.created_at,
        }


class Store(ABC):
    """Where calls, turns and tickets live. Safe to use from several threads at once."""

    redact_digits = 0  # runs of this many digits in caller and reply text are stored redacted (0: as heard)

    @abstractmethod
    def start_call(self, call_id: str, caller: str | None, channel: str) -> int:
        """Open a call record owned by this process; returns how many turns it already has. Starting an id again
        reopens its record (a stream Twilio opens again when a hand-off found nobody): the call is live again,
        owned by this process, not handed off nor interrupted, its turns so far are kept and the new ones
        numbered after them."""

    @abstractmethod
    def record_turn(self, call_id: str, turn: TurnRecord) -> None:
        """Save a turn; the same index again replaces it (its reply may be cut by a later barge-in). Long numbers
        in its caller and reply text are stored redacted (setting store.redact_digits)."""

    @abstractmethod
    def end_call(self, call_id: str, handoff_reason: str | None = None) -> None:
        """Close a call; ending twice keeps the first end time and any reason already given."""

    @abstractmethod
    def record_greeting(self, call_id: str, spoken_text: str, interrupted: bool, latency_ms: dict) -> None:
        """Record the greeting as far as the caller heard it."""

    @abstractmethod
    def create_ticket(
        self, call_id: str, caller: str | None, category: str, summary: str, *, ticket_id: str | None = None
    ) -> Ticket:
        """Open a ticket with a new short, speakable id, or with `ticket_id` (from new_ticket_id(), chosen
        before the store could be reached). Creating a given id again for the same call returns the ticket as
        it was first stored (a replay); an id another call's ticket has raises TicketIdConflict, and one that is
        not TICKET_ID_LENGTH characters of TICKET_ALPHABET a ValueError. Long numbers in the summary are stored
        redacted (setting store.redact_digits)."""

    @abstractmethod
    def withdraw_ticket(self, ticket_id: str) -> None:
        """Remove a ticket whose id the caller never heard: the turn that opened it turned out to be half a
        sentence, and the whole of it is answered instead."""

    @abstractmethod
    def tickets_for_call(self, call_id: str) -> list[Ticket]:
        """The call's tickets, oldest first."""

    @abstractmethod
    def get_ticket(self, ticket_id: str) -> Ticket | None:
        """One ticket; the id is matched case-insensitively, ignoring spaces, commas and dashes."""

    @abstractmethod
    def list_tickets(self, limit: int = 50) -> list[Ticket]:
        """The newest tickets first."""

    @abstractmethod
    def get_call(self, call_id: str) -> dict | None:
        """One call as `calls show --json` prints it (turns, ticket ids, handoff reason, whether it was closed
        interrupted, caller masked)."""

    @abstractmethod
    def list_calls(self, limit: int = 50) -> list[dict]:
        """The newest calls first, without their turns (a turn count instead), caller masked."""

    @abstractmethod
    def close_abandoned_calls(self) -> list[str]:
        """End the calls a crashed process left open, marked interrupted; returns their ids, oldest first.

        Only calls owned by a process of this host that is no longer running are closed (ended now, since
        when the line dropped is not known): never one of a live process (another worker on the same database,
        or this one), nor one from another host or from before calls had owners."""

    @abstractmethod
    def close(self) -> None:
        """Release the database."""

    @property
    def spool_path(self) -> Path | None:
        """Where writes this store refuses wait for it (`RecordWriter`): None keeps them in memory only."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def utc_now() -> str:
    """UTC to the second with a `Z`: sorts as text and reads the same in every time zone."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_call_id(channel: str) -> str:
    """An id for a call that has no Twilio callSid, shaped like one ("CA" + 32 hex) so tools treat both alike."""
    if channel not in CHANNELS or channel == "twilio":
        raise ValueError(f"new_call_id: channel {channel!r} is not one of chat, replay, mic (Twilio gives its own)")
    return "CA" + secrets.token_hex(16)


def new_ticket_id() -> str:
    """Six random characters from TICKET_ALPHABET: 22**6 ≈ 113 million ids, short enough to read out."""
    return "".join(secrets.choice(TICKET_ALPHABET) for _ in range(TICKET_ID_LENGTH))


def speak_ticket_id(ticket_id: str) -> str:
    """The id character by character with commas ("K, 7, M, 2, Q, X"), so the voice pauses between them
    and says each letter's name (without the commas Piper reads a lone "A" as the article)."""
    return ", ".join(ticket_id.upper())


def process_owner() -> str:
    """Who owns the calls this process starts: "host:pid:start", where start is the process's start time in
    clock ticks since boot (Linux; elsewhere "host:pid"), so a pid used again after a crash (a restarted
    container's server is pid 1 again) is not taken for the process that crashed."""
    pid = os.getpid()
    state = _process_state(pid)
    return f"{socket.gethostname()}:{pid}" + (f":{state[1]}" if state else "")


def _process_state(pid: int) -> tuple[str, str] | None:
    """A process's state letter and start time as /proc tells them; None without /proc or such a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) ": field 3 (state) on
    return fields[0], fields[19]  # state, starttime (field 22)


def _owner_gone(owner: str, this_process: str) -> bool:
    """Whether the process that owns an open call surely is no more: a process of this host whose pid does
    not run, or runs a zombie or a process started at another time (the pid was used again). In doubt: no."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if owner == this_process or host != this_process.partition(":")[0] or not pid.isdigit():
        return False
    if os.name != "posix":
        return False  # no safe way to ask: on Windows os.kill(pid, 0) would stop the process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # PermissionError: it runs, as another user
    state = _process_state(int(pid))
    return state is not None and (state[0] in "ZX" or (bool(started) and state[1] != started))


def mask_number(number: str | None) -> str:
    """A phone number for logs and screens: country code, the next 3 digits and the last 4 ("+1555***0199").

    Anything that is not a long enough E.164 number (client ids, "anonymous", None) becomes "***".
    """
    if not number:
        return "***"
    compact = re.sub(r"[\s\-().]", "", number)
    if not re.fullmatch(r"\+\d{8,15}", compact):
        return "***"
    digits = compact[1:]
    cc_len = 1 if digits[0] in "17" else 2 if _TWO_DIGIT_CC.fullmatch(digits[:2]) else 3
    national = digits[cc_len:]
    if len(national) < 8:  # 3 shown + 4 shown would leave nothing hidden
        return "***"
    return f"+{digits[:cc_len]}{national[:3]}***{national[-4:]}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for error messages and logs: in the user part, or as a
    `password=` parameter (libpq's form)."""
    parts = urlsplit(url)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if parts.password is None and query == parts.query:
        return url  # (unsplitting would turn sqlite:/// into sqlite:/)
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}")
    return urlunsplit(parts._replace(query=query))


def open_store(url: str, *, create: bool = True, redact_digits: int = DEFAULT_MIN_DIGITS) -> Store:
    """Open the store a URL names: `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite:///:memory:`
    or a bare file path; `postgresql://user:password@host:port/database` for several workers on one database
    (voicebot.store_postgres). With `create=False` a missing database is an error instead of a new empty file
    (the CLI's read-only commands use that, so a typo in `--db` doesn't look like an empty store).
    `redact_digits` is setting store.redact_digits: runs of that many digits the caller says are stored
    redacted (0: as heard)."""
    url = url.strip()
    if not url:
        raise StoreError(f"the store URL is empty; set {SETTING_HINT}, e.g. sqlite:///var/voicebot.db")
    if "://" not in url:
        return SqliteStore(Path(url).expanduser(), create=create, redact_digits=redact_digits)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreError(
                f"store URL {mask_url(url)!r} has no file path; use sqlite:///relative/path.db or "
                f"sqlite:////absolute/path.db ({SETTING_HINT})"
            )
        path = url[len("sqlite:///") :]
        return SqliteStore(None if path == ":memory:" else Path(path), create=create, redact_digits=redact_digits)
    if scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+"):
        from voicebot.store_postgres import PostgresStore

        return PostgresStore(url, create=create, redact_digits=redact_digits)
    raise StoreError(
        f"store URL {mask_url(url)!r} has an unsupported scheme {scheme!r}; use sqlite:///path/to/file.db, "
        f"postgresql://user:password@host/database or a plain file path ({SETTING_HINT})"
    )


# Forward migrations: MIGRATIONS[n] takes a database from user_version n to n + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            caller TEXT,
            channel TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            handoff_reason TEXT
        )""",
        """CREATE TABLE turns (
            call_id TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,
            turn_index INTEGER NOT NULL,
            caller_text TEXT NOT NULL,
            route TEXT NOT NULL,
            faq_id TEXT,
            reply_text TEXT NOT NULL,
            interrupted INTEGER NOT NULL,
            state TEXT NOT NULL,
            latency_ms TEXT NOT NULL,
            PRIMARY KEY (call_id, turn_index)
        )""",
        """CREATE TABLE tickets (
            id TEXT PRIMARY KEY,
            call_id TEXT NOT NULL REFERENCES calls(call_id),
            caller TEXT,
            category TEXT NOT NULL,
            summary TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open',
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX calls_started_at ON calls(started_at)",
        "CREATE INDEX tickets_call_id ON tickets(call_id)",
        "CREATE INDEX tickets_created_at ON tickets(created_at)",
    ),
    (  # 2: the greeting as heard (a caller who talks over it cuts it, and that is worth knowing)
        "ALTER TABLE calls ADD COLUMN greeting_text TEXT",
        "ALTER TABLE calls ADD COLUMN greeting_interrupted INTEGER",
        "ALTER TABLE calls ADD COLUMN greeting_latency_ms TEXT",
    ),
    (  # 3: a turn whose work failed says which stage failed (the caller heard an apology)
        "ALTER TABLE turns ADD COLUMN failed_stage TEXT",
    ),
    (  # 4: the process a live call belongs to ("host:pid:start"), so a crashed one's calls can be closed, and
        # whether a call was closed that way (calls from before have no owner: close_abandoned_calls skips them)
        "ALTER TABLE calls ADD COLUMN owner TEXT",
        "ALTER TABLE calls ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX calls_open ON calls(owner) WHERE ended_at IS NULL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_ADVICE = {
    "SQLITE_NOTADB": "it is not a SQLite database or it is damaged: restore it from a backup, or move it "
    "aside so a new store is created",
    "SQLITE_CORRUPT": "it is damaged: restore it from a backup, or move it aside so a new store is created",
    "SQLITE_READONLY": "this user cannot write it: fix the permissions of the file and its folder",
    "SQLITE_CANTOPEN": "it cannot be opened: check that the folder exists and this user may write there",
    "SQLITE_PERM": "access was refused: fix the permissions of the file and its folder",
    "SQLITE_FULL": "the disk is full: free some space",
}


class SqlConnection(Protocol):
    """What the shared queries need of a connection: sqlite3's, or the PostgreSQL store's adapter."""

    def execute(self, sql: str, parameters: Sequence[object] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[object]], /) -> Any: ...


class SqlStore(Store):
    """The queries of both SQL stores. They are written once, in the SQL SQLite and PostgreSQL share: `?`
    placeholders (the PostgreSQL store translates them), upserts with ON CONFLICT, and a `rowid` for insertion
    order (SQLite's own; an explicit column in PostgreSQL). A subclass connects, migrates and runs transactions."""

    redact_digits: int
    owner: str  # this process, as the calls it starts name it

    @abstractmethod
    def _transaction(self, action: str, *, write: bool = True) -> AbstractContextManager[SqlConnection]:
        """One consistent transaction, committed when the block ends; a database error becomes a StoreError
        that names the database, the `action` and what to do."""

    @staticmethod
    def _require_call(conn: SqlConnection, call_id: str) -> None:
        if conn.execute("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)).fetchone() is None:
            raise ValueError(f"call {call_id!r} was never started: call start_call() first")

    def start_call(self, call_id: str, caller: str | None, channel: str) -> int:
        if channel not in CHANNELS:
            raise ValueError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
        with self._transaction(f"start call {call_id}") as conn:
            conn.execute(
                "INSERT INTO calls (call_id, caller, channel, started_at, owner) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (call_id) DO UPDATE SET ended_at = NULL, handoff_reason = NULL, owner = excluded.owner, "
                "interrupted = 0",
                (call_id, caller, channel, utc_now(), self.owner),
            )
            return conn.execute("SELECT COUNT(*) FROM turns WHERE call_id = ?", (call_id,)).fetchone()[0]

    def record_turn(self, call_id: str, turn: TurnRecord) -> None:
        if turn.route not in ROUTES:
            raise ValueError(
                f"turn {turn.index} of call {call_id}: route {turn.route!r} is not one of {', '.join(ROUTES)}"
            )
        with self._transaction(f"record turn {turn.index} of call {call_id}") as conn:
            self._require_call(conn, call_id)
            conn.execute(
                "INSERT INTO turns (call_id, turn_index, caller_text, route, faq_id, reply_text, interrupted, "
                "state, latency_ms, failed_stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (call_id, turn_index) DO UPDATE SET caller_text = excluded.caller_text, "
                "route = excluded.route, faq_id = excluded.faq_id, reply_text = excluded.reply_text, "
                "interrupted = excluded.interrupted, state = excluded.state, latency_ms = excluded.latency_ms, "
                "failed_stage = excluded.failed_stage",
                (
                    call_id,
                    turn.index,
                    redact_digits(turn.caller_text, self.redact_digits),
                    str(turn.route),
                    turn.faq_id,
                    # the reply too: the LLM may repeat a number the caller said (grounding lets it)
                    redact_digits(turn.reply_text, self.redact_digits),
                    int(turn.interrupted),
                    str(turn.state),
                    json.dumps(turn.latency_ms),
                    None if turn.failed_stage is None else str(turn.failed_stage),
                ),
            )

    def end_call(self, call_id: str, handoff_reason: str | None = None) -> None:
        with self._transaction(f"end call {call_id}") as conn:
            self._require_call(conn, call_id)
            conn.execute(
                "UPDATE calls SET ended_at = COALESCE(ended_at, ?), handoff_reason = COALESCE(?, handoff_reason) "
                "WHERE call_id = ?",
                (utc_now(), handoff_reason, call_id),
            )

    def record_greeting(self, call_id: str, spoken_text: str, interrupted: bool, latency_ms: dict) -> None:
        with self._transaction(f"record the greeting of call {call_id}") as conn:
            self._require_call(conn, call_id)
            conn.execute(
                "UPDATE calls SET greeting_text = ?, greeting_interrupted = ?, greeting_latency_ms = ? "
                "WHERE call_id = ?",
                (spoken_text, int(interrupted), json.dumps(latency_ms), call_id),
            )

    def create_ticket(
        self, call_id: str, caller: str | None, category: str, summary: str, *, ticket_id: str | None = None
    ) -> Ticket:
        if ticket_id is not None and not _TICKET_ID.fullmatch(ticket_id):
            raise ValueError(
                f"ticket id {ticket_id!r} for call {call_id} is not {TICKET_ID_LENGTH} characters of "
                f"{TICKET_ALPHABET}: make ticket ids with new_ticket_id()"
            )
        summary = redact_digits(summary, self.redact_digits)
        with self._transaction(f"create a ticket for call {call_id}") as conn:
            self._require_call(conn, call_id)
            while True:
                ticket = Ticket(ticket_id or new_ticket_id(), call_id, caller, category, summary, "open", utc_now())
                # ON CONFLICT: an id taken meanwhile, even by another worker on the same database, is never
                # overwritten; a drawn id is drawn again, a given one is a replay or a conflict.
                inserted = conn.execute(
                    "INSERT INTO tickets (id, call_id, caller, category, summary, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (
                        ticket.id,
                        ticket.call_id,
                        ticket.caller,
                        ticket.category,
                        ticket.summary,
                        ticket.status,
                        ticket.created_at,
                    ),
                ).rowcount
                if inserted:
                    return ticket
                if ticket_id is not None:
                    row = conn.execute(f"SELECT {self._TICKET_COLUMNS} FROM tickets WHERE id = ?", (ticket_id,))
                    existing = Ticket(*row.fetchone())
                    if existing.call_id != call_id:
                        raise TicketIdConflict(ticket_id, call_id, existing)
                    return existing  # a replay of a ticket already stored

    _TICKET_COLUMNS = "id, call_id, caller, category, summary, status, created_at"

    def withdraw_ticket(self, ticket_id: str) -> None:
        with self._transaction(f"withdraw ticket {ticket_id}") as conn:
            conn.execute("DELETE FROM tickets WHERE id = ?", (ticket_id,))

    def tickets_for_call(self, call_id: str) -> list[Ticket]:
        with self._transaction(f"read the tickets of call {call_id}", write=False) as conn:
            rows = conn.execute(
                f"SELECT {self._TICKET_COLUMNS} FROM tickets WHERE call_id = ? ORDER BY created_at, rowid",
                (call_id,),
            ).fetchall()
        return [Ticket(*row) for row in rows]

    def get_ticket(self, ticket_id: str) -> Ticket | None:
        wanted = "".join(ch for ch in ticket_id.upper() if ch.isalnum())
        with self._transaction(f"read ticket {ticket_id}", write=False) as conn:
            row = conn.execute(f"SELECT {self._TICKET_COLUMNS} FROM tickets WHERE id = ?", (wanted,)).fetchone()
        return Ticket(*row) if row else None

    def list_tickets(self, limit: int = 50) -> list[Ticket]:
        _check_limit(limit)
        with self._transaction("list tickets", write=False) as conn:
            rows = conn.execute(
                f"SELECT {self._TICKET_COLUMNS} FROM tickets ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Ticket(*row) for row in rows]

    _CALL_COLUMNS = (
        "call_id, caller, channel, started_at, ended_at, handoff_reason, interrupted, greeting_text, "
        "greeting_interrupted, greeting_latency_ms"
    )

    @staticmethod
    def _call_json(row: tuple, ticket_ids: list[str]) -> dict:
        call_id, caller, channel, started_at, ended_at, handoff_reason, interrupted, greeting, cut, latency = row
        return {
            "call_id": call_id,
            "caller": mask_number(caller),
            "channel": channel,
            "started_at": started_at,
            "ended_at": ended_at,
            "interrupted": bool(interrupted),  # closed by close_abandoned_calls: its process crashed mid-call
            "tickets": ticket_ids,
            "handoff": handoff_reason,
            "greeting": None
            if greeting is None
            else {"text": greeting, "interrupted": bool(cut), "latency_ms": json.loads(latency or "{}")},
        }

    def get_call(self, call_id: str) -> dict | None:
        with self._transaction(f"read call {call_id}", write=False) as conn:
            row = conn.execute(f"SELECT {self._CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            turns = conn.execute(
                "SELECT turn_index, caller_text, route, faq_id, reply_text, interrupted, state, latency_ms, "
                "failed_stage FROM turns WHERE call_id = ? ORDER BY turn_index",
                (call_id,),
            ).fetchall()
            ticket_ids = [
                r[0]
                for r in conn.execute("SELECT id FROM tickets WHERE call_id = ? ORDER BY created_at, rowid", (call_id,))
            ]
        call = self._call_json(row, ticket_ids)
        call["turns"] = [
            {
                "index": index,
                "caller_text": caller_text,
                "route": route,
                "faq_id": faq_id,
                "reply_text": reply_text,
                "interrupted": bool(interrupted),
                "state": state,
                "latency_ms": json.loads(latency_ms),
                "failed_stage": failed_stage,
            }
            for index, caller_text, route, faq_id, reply_text, interrupted, state, latency_ms, failed_stage in turns
        ]
        return call

    def list_calls(self, limit: int = 50) -> list[dict]:
        _check_limit(limit)
        with self._transaction("list calls", write=False) as conn:
            rows = conn.execute(
                f"SELECT {self._CALL_COLUMNS}, (SELECT COUNT(*) FROM turns t WHERE t.call_id = c.call_id) "
                "FROM calls c ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            tickets: dict[str, list[str]] = {}
            for call_id, ticket_id in conn.execute(
                "SELECT call_id, id FROM tickets WHERE call_id IN "
                "(SELECT call_id FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?) ORDER BY created_at, rowid",
                (limit,),
            ):
                tickets.setdefault(call_id, []).append(ticket_id)
        calls = []
        for *row, turn_count in rows:
            call = self._call_json(tuple(row), tickets.get(row[0], []))
            call["turn_count"] = turn_count
            calls.append(call)
        return calls

    def close_abandoned_calls(self) -> list[str]:
        with self._transaction("close the calls a crashed process left open") as conn:
            open_calls = conn.execute(
                "SELECT call_id, owner FROM calls WHERE ended_at IS NULL AND owner IS NOT NULL "
                "ORDER BY started_at, rowid"
            ).fetchall()
            closed = [call_id for call_id, owner in open_calls if _owner_gone(owner, self.owner)]
            now = utc_now()
            conn.executemany(
                "UPDATE calls SET ended_at = ?, interrupted = 1 WHERE call_id = ?", [(now, c) for c in closed]
            )
        return closed


class SqliteStore(SqlStore):
    """The SQLite store: one connection shared behind a lock (writes are a few rows per turn), WAL journal
    so other processes can read while a call is being written."""

    def __init__(
        self,
        path: Path | None,
        *,
        create: bool = True,
        timeout_s: float = 5.0,
        redact_digits: int = DEFAULT_MIN_DIGITS,
    ) -> None:
        """`path=None` keeps the database in memory (tests, chat demos); `timeout_s` is how long a write
        waits for another process's lock before it gives up with a StoreError; `redact_digits` is setting
        store.redact_digits (see open_store)."""
        self.path = path.absolute() if path is not None else None
        self.timeout_s = timeout_s
        self.redact_digits = check_min_digits(redact_digits, "redact_digits (setting store.redact_digits)")
        self.owner = process_owner()  # this process, as the calls it starts name it
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            if not create and not self.path.is_file():
                raise StoreError(
                    f"store {self.path} does not exist: no call has been recorded there yet, or the URL "
                    f"points at the wrong file (--db, {SETTING_HINT})"
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"store {self.path}: cannot create its folder {self.path.parent} ({exc.strerror or exc}); "
                    f"make it writable for this user or point {SETTING_HINT} elsewhere"
                ) from exc
        with self._guard("open it"):
            self._conn = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path),
                timeout=timeout_s,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # shared between call threads, serialized by self._lock
            )
            try:
                self._conn.execute("PRAGMA foreign_keys = ON")
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if self.path is not None and mode.lower() != "wal":
                    raise StoreError(f"store {self.path}: SQLite refused WAL mode (journal mode is {mode!r})")
                # FULL: each commit is on disk (the WAL fsync'd) before it returns, so a ticket id the caller
                # hears survives a power cut; NORMAL could lose the last commits. On the 2-core dev machine a
                # commit takes ~0.5 ms instead of ~0.15 (p99 ~6 ms, at checkpoints). fullfsync: on macOS fsync
                # alone leaves the data in the drive's cache.
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA fullfsync = ON")
                self._migrate()
            except BaseException:
                self.close()
                raise

    @property
    def where(self) -> str:
        """The database file as error messages name it."""
        return str(self.path) if self.path is not None else ":memory:"

    @property
    def spool_path(self) -> Path | None:
        """Beside the database file (`calls.db.spool`): on the same disk, owned by the same user."""
        return None if self.path is None else self.path.with_name(self.path.name + ".spool")

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn a sqlite3 error into a StoreError that names the file, what failed and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                advice = (
                    f"another process kept it locked for more than {self.timeout_s:g} s: look for a stuck "
                    "voicebot or a tool holding it open, then retry"
                )
            elif name.startswith("SQLITE_IOERR"):
                advice = "the disk or file system failed: check the disk, its free space and permissions"
            else:
                advice = _ADVICE.get(name, f"check the file, or point {SETTING_HINT} at another database")
            raise StoreError(f"store {self.where}: cannot {action} ({exc}); {advice}") from exc

    @contextmanager
    def _transaction(self, action: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """See SqlStore; writes take the write lock up front so they never deadlock."""
        with self._lock, self._guard(action):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # some errors (disk full, I/O) have rolled back already
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.where} is closed; open it again with open_store()")
        return self._conn

    def _migrate(self) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # re-read the version under the lock: two workers may start at once
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.where} has schema version {version}, newer than this voicebot knows "
                    f"({SCHEMA_VERSION}): upgrade voicebot, or point {SETTING_HINT} at another database"
                )
            for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
