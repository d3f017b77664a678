"""A durable local spool: an append-only JSON-lines file of records that must outlive a crash or a store outage.

An append is written and fsync'd before it returns (the folder too when the file is new), so a record whose
append returned survives a power cut. A crash in the middle of an append leaves at most a torn last line, which
`load` drops: that append never returned. `rewrite` replaces the whole file atomically (temporary file, fsync,
rename, fsync of the folder) once records are no longer needed.

One process at a time: a sidecar `<name>.lock` is locked while the spool is open, so two workers given the same
spool cannot drop each other's records. The records hold caller numbers and words, so the files are created
readable by their owner only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from voicebot.store import StoreError

FILE_MODE = 0o600


class SpoolError(StoreError):
    """The spool cannot be used; the message names the file and what to do about it. A StoreError: the spool is
    where records go when the database cannot take them, and whoever reports a failing store reports this too."""


class Spool:
    """An open spool file. Not thread-safe: its user serializes appends and rewrites."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the spool at `path` and lock it for this process."""
        self.path = path.absolute()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise self._error("cannot be opened", exc, "make its folder writable for this user") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise SpoolError(
                f"spool {self.path} is in use by another process ({self._lock_path} is locked): give each voicebot "
                "process its own spool file"
            ) from None
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise self._error("cannot be opened", exc, "make it and its folder writable for this user") from exc

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        if created:
            _fsync_folder(self.path.parent)

    def _error(self, what: str, exc: OSError, advice: str) -> SpoolError:
        return SpoolError(f"spool {self.path} {what} ({exc.strerror or exc}); {advice}")

    def load(self) -> list[dict]:
        """The records in the order they were appended. A last line without its newline (a crash mid-append:
        that append never returned) is dropped, and the file rewritten without it, so the next append starts
        on a line of its own."""
        try:
            *lines, torn = self.path.read_bytes().split(b"\n")
        except OSError as exc:
            raise self._error("cannot be read", exc, "make it readable for this user") from exc
        records: list[dict] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                record = exc
            if not isinstance(record, dict):
                raise SpoolError(
                    f"spool {self.path}: line {number} is not a JSON object ({record}); the file was edited or "
                    "damaged: repair that line, or move the file aside (its records then never reach the store)"
                )
            records.append(record)
        if torn:
            self.rewrite(records)
        return records

    def append(self, record: dict) -> None:
        """Add one record; it is on disk when this returns. On failure nothing of it is left in the file."""
        data = _line(record)
        fd = self._descriptor()
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # a half-written line would run into the next one
            raise self._error("cannot be written", exc, "free disk space or fix its permissions") from exc

    def rewrite(self, records: list[dict]) -> None:
        """Replace the file's records with `records`, atomically: a crash leaves either the old file or the new."""
        self._descriptor()
        temporary = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(_line(record) for record in records)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            _fsync_folder(self.path.parent)
        except OSError as exc:
            raise self._error("cannot be rewritten", exc, "free disk space or fix its folder's permissions") from exc
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        try:
            self._open()
        except OSError as exc:
            raise self._error("cannot be reopened", exc, "fix its permissions") from exc

    def _descriptor(self) -> int:
        if self._fd is None:
            raise SpoolError(f"spool {self.path} is closed; open it again with Spool()")
        return self._fd

    def close(self) -> None:
        """Release the file and its lock (the lock file stays: removing it could race another process)."""
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def _fsync_folder(folder: Path) -> None:
    """Make a file's creation or rename durable: the folder's entry is data too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
