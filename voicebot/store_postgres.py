"""Call records and tickets in PostgreSQL, for several `voicebot serve` workers on one database.

The queries are `SqlStore`'s, shared with SQLite; this module connects (psycopg 3), migrates, and turns psycopg's
errors into StoreErrors that name the server (never its password) and what to do. The migrations are SQLite's,
plus an explicit `rowid` column where SQLite has an implicit one, applied under an advisory lock (two workers
may start at once); the version lives in table `voicebot_schema`.

A commit is durable when it returns (the store's sessions set synchronous_commit=on, whatever the server's
default): a ticket id the caller hears is on disk. One connection per store, shared behind a lock like SQLite's;
a lost one (a restart, a failover) is opened again by the next transaction, and writes that fail meanwhile go to
the record writer's spool, which is on this machine's disk (`spool_path`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voicebot.redaction import DEFAULT_MIN_DIGITS, check_min_digits
from voicebot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SETTING_HINT,
    SqlStore,
    StoreError,
    mask_url,
    process_owner,
)

# Statements PostgreSQL runs after SQLite's migration of the same number: what SQLite has without asking.
EXTRA_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE voicebot_schema (version INTEGER NOT NULL)",
        "INSERT INTO voicebot_schema (version) VALUES (1)",
        "ALTER TABLE calls ADD COLUMN rowid BIGSERIAL",  # SQLite's implicit rowid: insertion order
        "ALTER TABLE tickets ADD COLUMN rowid BIGSERIAL",
    ),
}
_MIGRATION_LOCK = 0x766F6963  # pg_advisory_xact_lock key: one worker migrates, the others wait and see it done


class _Connection:
    """The surface the shared queries use (sqlite3's) over a psycopg connection: `?` placeholders."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[object] = (), /) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), parameters or None)

    def executemany(self, sql: str, parameters: Iterable[Sequence[object]], /) -> Any:
        cursor = self._conn.cursor()
        cursor.executemany(sql.replace("?", "%s"), list(parameters))
        return cursor


class PostgresStore(SqlStore):
    """The PostgreSQL store (`postgresql://user:password@host:port/database`)."""

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        timeout_s: float = 5.0,
        redact_digits: int = DEFAULT_MIN_DIGITS,
    ) -> None:
        """`timeout_s` bounds connecting and waiting for another transaction's lock (then a StoreError);
        `create=False` refuses a database without voicebot's tables instead of creating them (the CLI's read-only
        commands); `redact_digits`: see open_store."""
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"store {mask_url(url)}: PostgreSQL needs the psycopg package: pip install 'psycopg[binary]' "
                f"(it is in voicebot's dependencies; reinstall voicebot) or use a sqlite URL ({SETTING_HINT})"
            ) from exc
        self._psycopg = psycopg
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0]  # postgresql+psycopg://, as SQLAlchemy writes it
        self.url = parts._replace(scheme="postgresql" if scheme == "postgres" else scheme).geturl()
        self.timeout_s = timeout_s
        self.redact_digits = check_min_digits(redact_digits, "redact_digits (setting store.redact_digits)")
        self.owner = process_owner()
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        try:
            with self._lock, self._guard("open it"):
                self._migrate(create)
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        """The database as error messages name it (no password)."""
        return mask_url(self.url)

    @property
    def spool_path(self) -> Path | None:
        """On this machine, under $XDG_STATE_HOME (default ~/.local/state)/voicebot, one file per database:
        the spool must be on a local disk, since it holds what the database could not take."""
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        parts = urlsplit(self.url)
        name = (parts.path.strip("/") or "postgres").replace("/", "_")
        digest = hashlib.sha256(f"{parts.hostname}:{parts.port}/{name}".encode()).hexdigest()[:8]
        return state / "voicebot" / f"postgresql-{name}-{digest}.spool"

    def _connect(self) -> Any:
        if self._closed:
            raise StoreError(f"store {self.where} is closed; open it again with open_store()")
        if self._conn is None or self._conn.closed or self._conn.broken:
            timeout_ms = max(1, round(self.timeout_s * 1000))
            self._conn = self._psycopg.connect(
                self.url,
                autocommit=True,  # transactions are explicit (conn.transaction())
                connect_timeout=max(1, round(self.timeout_s)),
                # synchronous_commit=on whatever the server's default: a commit is on disk when it returns.
                options=f"-c lock_timeout={timeout_ms} -c synchronous_commit=on "
                "-c idle_in_transaction_session_timeout=60000",
                application_name="voicebot",
            )
        return self._conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn a psycopg error into a StoreError that names the database, what failed and what to do."""
        errors = self._psycopg.errors
        try:
            yield
        except self._psycopg.Error as exc:
            if isinstance(exc, errors.LockNotAvailable):
                advice = (
                    f"another transaction kept a lock for more than {self.timeout_s:g} s: look for a stuck "
                    "worker or a long query on this database, then retry"
                )
            elif isinstance(exc, errors.InsufficientPrivilege):
                advice = "this database user may not do that: grant it the rights on voicebot's tables"
            elif isinstance(exc, self._psycopg.OperationalError):
                advice = (
                    "check that PostgreSQL is running and reachable there, and the user, password and database "
                    f"in the URL ({SETTING_HINT})"
                )
            else:
                advice = f"check the database, or point {SETTING_HINT} at another one"
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn = None  # the next transaction connects again
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"store {self.where}: cannot {action} ({message}); {advice}") from exc

    @contextmanager
    def _transaction(self, action: str, *, write: bool = True) -> Iterator[_Connection]:
        """See SqlStore; reads and writes alike run in one transaction (READ COMMITTED, PostgreSQL's default)."""
        with self._lock, self._guard(action):
            conn = self._connect()
            with conn.transaction():
                yield _Connection(conn)

    def _migrate(self, create: bool) -> None:
        conn = self._connect()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            found = conn.execute("SELECT to_regclass('voicebot_schema') IS NOT NULL").fetchone()[0]
            version = conn.execute("SELECT version FROM voicebot_schema").fetchone()[0] if found else 0
            if version == 0 and not create:
                raise StoreError(
                    f"store {self.where} has no voicebot tables: no call has been recorded there yet, or the URL "
                    f"names the wrong database (--db, {SETTING_HINT})"
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.where} has schema version {version}, newer than this voicebot knows "
                    f"({SCHEMA_VERSION}): upgrade voicebot, or point {SETTING_HINT} at another database"
                )
            for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in (*statements, *EXTRA_MIGRATIONS.get(target, ())):
                    conn.execute(statement)
                conn.execute("UPDATE voicebot_schema SET version = %s", (target,))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
