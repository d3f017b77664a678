"""The write-behind recorder on real SQLite files: writes never wait for a locked database, land in order, survive
an outage and a crash in the spool, and tickets keep the id their caller heard."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from voicebot.record_writer import RecordWriter
from voicebot.routes import DialogState, HandoffReason, Route
from voicebot.store import TICKET_ALPHABET, SqliteStore, StoreError, TurnRecord

CALL = "CA" + "1" * 32
CALLER = "+15550100199"
SECRET = "my parcel from aunt Matilda never came"  # caller words: never in a log line at INFO or above


def turn(index: int, caller_text: str = "how do i return something", reply: str = "Within 7 days.") -> TurnRecord:
    return TurnRecord(index, caller_text, Route.FAQ, "returns", reply, False, DialogState.CONSULTING, {"stt": 300.0})


@contextmanager
def write_lock(db: Path) -> Iterator[Callable[[], None]]:
    """Another process's transaction holding the database's write lock; yields a function that releases it."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            conn.execute("ROLLBACK")
            conn.close()

    try:
        yield release
    finally:
        release()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a condition the writer's thread brings about (on its retry schedule), failing after a bound."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the record writer"
        time.sleep(0.01)


def spool_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "calls.db"
    SqliteStore(path).close()  # created (and migrated) before anyone locks it
    return path


def test_writes_return_at_once_while_another_process_holds_the_lock(db, tmp_path):
    with SqliteStore(db, timeout_s=30) as store, RecordWriter(store, tmp_path / "spool.jsonl") as writer:
        with write_lock(db) as release:
            started = time.perf_counter()
            assert writer.start_call(CALL, CALLER, "twilio") == 0
            writer.record_greeting(CALL, "Hello, you're through to Acme.", False, {"tts_first_audio": 80.0})
            for index in range(3):
                writer.record_turn(CALL, turn(index, f"question {index}"))
            writer.end_call(CALL)
            assert time.perf_counter() - started < 0.5  # the store waits for the lock; the caller does not
            assert writer.pending == 6
            assert not writer.flush(0.1)  # still waiting for the lock, and says so within its bound
            release()
            assert writer.flush(10)
        assert writer.pending == 0 and writer.spooled == 0
        call = store.get_call(CALL)
    assert call["greeting"]["text"] == "Hello, you're through to Acme."
    assert [t["caller_text"] for t in call["turns"]] == ["question 0", "question 1", "question 2"]
    assert call["ended_at"] is not None


def test_a_calls_writes_land_in_the_order_they_were_made(db, tmp_path):
    with SqliteStore(db) as store, RecordWriter(store, tmp_path / "spool.jsonl") as writer:
        writer.start_call(CALL, CALLER, "twilio")
        writer.record_turn(CALL, turn(0, reply="Within"))  # as far as it was heard, then the final record
        writer.record_turn(CALL, turn(0, reply="Within 7 days."))
        unheard = writer.create_ticket(CALL, CALLER, "delivery", "Parcel never came")  # call row exists first
        writer.withdraw_ticket(unheard.id)
        kept = writer.create_ticket(CALL, CALLER, "delivery", "Parcel never came / it was a gift")
        writer.end_call(CALL, HandoffReason.REQUESTED)
        writer.end_call(CALL, None)  # a second end keeps the first reason
        assert writer.flush(10)
        call = store.get_call(CALL)
    assert [t["reply_text"] for t in call["turns"]] == ["Within 7 days."]
    assert call["tickets"] == [kept.id]
    assert call["handoff"] == "requested"


def test_a_reopened_call_numbers_its_turns_after_those_it_had(db, tmp_path):
    with SqliteStore(db) as store, RecordWriter(store, tmp_path / "spool.jsonl") as writer:
        writer.start_call(CALL, CALLER, "twilio")
        writer.record_turn(CALL, turn(0, "first stream, turn 0"))
        writer.record_turn(CALL, turn(1, "first stream, turn 1"))
        writer.end_call(CALL, HandoffReason.REQUESTED)
        # Twilio opens the stream again (nobody took the hand-off): the conversation counts from 0 again.
        assert writer.start_call(CALL, CALLER, "twilio") == 0
        writer.record_turn(CALL, turn(0, "second stream, turn 0"))
        writer.record_turn(CALL, turn(0, "second stream, turn 0, final"))
        assert writer.flush(10)
        turns = store.get_call(CALL)["turns"]
    assert [(t["index"], t["caller_text"]) for t in turns] == [
        (0, "first stream, turn 0"),
        (1, "first stream, turn 1"),
        (2, "second stream, turn 0, final"),
    ]


def test_a_ticket_while_the_store_is_locked_is_spooled_and_stored_once_it_is_back(db, tmp_path, caplog):
    spool = tmp_path / "spool.jsonl"
    caplog.set_level(logging.DEBUG, logger="voicebot")
    with SqliteStore(db, timeout_s=0.2) as store, RecordWriter(store, spool, retry_s=0.05) as writer:
        writer.start_call(CALL, CALLER, "twilio")
        writer.record_turn(CALL, turn(0))
        assert writer.flush(10)
        with write_lock(db):  # mid-call, the database becomes unwritable
            writer.record_turn(CALL, turn(1, SECRET))
            started = time.perf_counter()
            ticket = writer.create_ticket(CALL, CALLER, "delivery", SECRET)
            assert time.perf_counter() - started < writer.ticket_wait_s + 1
            assert len(ticket.id) == 6 and set(ticket.id) <= set(TICKET_ALPHABET)
            # Before its id is spoken the ticket is in the spool file, on disk.
            assert {"op": "ticket", "ticket_id": ticket.id, "summary": SECRET}.items() <= spool_lines(spool)[-1].items()
            writer.end_call(CALL)
            assert not writer.flush(10)  # in the spool, not in the store
            assert writer.spooled == 3
        wait_until(lambda: writer.spooled == 0)  # the next retry writes them
        assert writer.flush(10)
        call = store.get_call(CALL)
        tickets = store.tickets_for_call(CALL)
    assert [t.id for t in tickets] == [ticket.id]  # exactly once, under the id the caller heard
    assert [t["caller_text"] for t in call["turns"]] == ["how do i return something", SECRET]
    assert call["ended_at"] is not None
    assert spool.read_text() == ""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # once per outage, with the store's own words (the file, what to do)
    assert str(db) in errors[0].getMessage() and "locked" in errors[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert not any(SECRET in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)


def test_a_ticket_the_store_is_too_slow_for_keeps_its_own_id_and_is_stored_once(db, tmp_path):
    spool = tmp_path / "spool.jsonl"
    with SqliteStore(db, timeout_s=30) as store, RecordWriter(store, spool, ticket_wait_s=0.3) as writer:
        writer.start_call(CALL, CALLER, "twilio")
        assert writer.flush(10)
        with write_lock(db):  # slow, not failing: the store would wait 30 s for the lock
            started = time.perf_counter()
            ticket = writer.create_ticket(CALL, CALLER, "billing", "Charged twice")
            assert 0.3 <= time.perf_counter() - started < 2
            assert spool_lines(spool)[-1]["ticket_id"] == ticket.id
        # The writer's own attempt may have reached the store under another id: that one is withdrawn.
        assert writer.flush(10)
        assert [t.id for t in store.tickets_for_call(CALL)] == [ticket.id]
    assert spool.read_text() == ""


def test_a_spool_left_by_a_crashed_process_is_written_by_the_next(db, tmp_path):
    spool = tmp_path / "spool.jsonl"
    with SqliteStore(db) as store:  # a call with two turns, handed off, that nobody answered
        store.start_call(CALL, CALLER, "twilio")
        store.record_turn(CALL, turn(0, "before the hand-off 0"))
        store.record_turn(CALL, turn(1, "before the hand-off 1"))
    script = f"""
import os, sqlite3
from pathlib import Path
from voicebot.record_writer import RecordWriter
from voicebot.routes import DialogState, Route
from voicebot.store import SqliteStore, TurnRecord
store = SqliteStore(Path({str(db)!r}), timeout_s=0.2)
sqlite3.connect({str(db)!r}, isolation_level=None).execute("BEGIN IMMEDIATE")  # the database stops taking writes
writer = RecordWriter(store, Path({str(spool)!r}))
writer.start_call({CALL!r}, {CALLER!r}, "twilio")  # the stream reopened: its turns count from 0
writer.record_turn({CALL!r}, TurnRecord(0, "after", Route.TICKET, None, "Ticket opened", False,
                                        DialogState.COMPLAINT, {{}}))
print(writer.create_ticket({CALL!r}, {CALLER!r}, "delivery", "Parcel never came").id, flush=True)
os._exit(0)  # killed: no flush, no close
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ticket_id = done.stdout.strip()
    assert [line["op"] for line in spool_lines(spool)] == ["start", "turn", "ticket"]
    with SqliteStore(db) as store, RecordWriter(store, spool) as writer:
        assert writer.flush(10)
        call = store.get_call(CALL)
    assert [(t["index"], t["caller_text"]) for t in call["turns"]] == [
        (0, "before the hand-off 0"),
        (1, "before the hand-off 1"),
        (2, "after"),
    ]
    assert call["tickets"] == [ticket_id]
    assert spool.read_text() == ""


def test_a_replay_cut_short_does_not_number_a_reopened_calls_turns_twice(db, tmp_path):
    """The crash came after the replay reopened the call and wrote its turn, before the spool was rewritten."""
    spool = tmp_path / "spool.jsonl"
    with SqliteStore(db) as store:
        store.start_call(CALL, CALLER, "twilio")
        for index, text in enumerate(["first 0", "first 1", "second 0"]):
            store.record_turn(CALL, turn(index, text))
    records = [
        {"op": "start", "seq": 0, "call_id": CALL, "caller": CALLER, "channel": "twilio", "stream": "s"},
        {"op": "turn", "seq": 1, "call_id": CALL, "stream": "s", "turn": {**vars(turn(0, "second 0, final"))}},
        {"op": "offset", "stream": "s", "offset": 2},  # what the replay's start_call answered
    ]
    spool.write_text("".join(json.dumps(record) + "\n" for record in records))
    with SqliteStore(db) as store, RecordWriter(store, spool) as writer:
        assert writer.flush(10)
        turns = store.get_call(CALL)["turns"]
    assert [(t["index"], t["caller_text"]) for t in turns] == [(0, "first 0"), (1, "first 1"), (2, "second 0, final")]


def test_flush_and_close_are_bounded_and_close_leaves_what_is_queued_in_the_spool(db, tmp_path):
    spool = tmp_path / "spool.jsonl"
    store = SqliteStore(db, timeout_s=30)
    writer = RecordWriter(store, spool)
    with write_lock(db):
        writer.start_call(CALL, CALLER, "twilio")  # the writer is stuck on this one
        writer.record_turn(CALL, turn(0))
        writer.end_call(CALL)
        started = time.perf_counter()
        assert not writer.flush(0.2)
        assert not writer.close(0.3)
        assert time.perf_counter() - started < 2
        with pytest.raises(StoreError, match="closed"):
            writer.record_turn(CALL, turn(1))
        assert [line["op"] for line in spool_lines(spool)] == ["turn", "end"]  # for the next process

    def recorded() -> bool:  # the stuck write lands once the lock goes, and the thread writes the spool before it ends
        call = store.get_call(CALL)
        return call is not None and call["ended_at"] is not None and len(call["turns"]) == 1

    wait_until(recorded)
    wait_until(lambda: spool.read_text() == "")
    store.close()


def test_a_store_too_far_behind_refuses_writes_instead_of_queueing_without_end(db, tmp_path):
    with SqliteStore(db, timeout_s=30) as store, RecordWriter(store, tmp_path / "spool.jsonl", max_pending=2) as w:
        with write_lock(db):
            w.start_call(CALL, CALLER, "twilio")
            w.record_turn(CALL, turn(0))
            with pytest.raises(StoreError, match="max_pending"):
                w.record_turn(CALL, turn(1))
            started = time.perf_counter()
            with pytest.raises(StoreError, match="max_pending"):  # a ticket waits for room, within its bound
                w.create_ticket(CALL, CALLER, "billing", "Charged twice")
            assert time.perf_counter() - started < w.ticket_wait_s + 1
        assert w.flush(10)


def test_a_write_with_wrong_data_is_dropped_and_logged_without_holding_up_the_rest(db, tmp_path, caplog):
    with SqliteStore(db) as store, RecordWriter(store, tmp_path / "spool.jsonl") as writer:
        writer.record_turn("CA-never-started", turn(0))  # the store refuses it: a ValueError, not an outage
        writer.start_call(CALL, CALLER, "twilio")
        writer.record_turn(CALL, turn(0))
        assert writer.flush(10)
        assert len(store.get_call(CALL)["turns"]) == 1
    assert "turn 0 of call CA-never-started cannot be written" in caplog.text


def test_writes_from_many_threads_all_land(db, tmp_path):
    calls = [f"CA{n:032x}" for n in range(4)]
    with SqliteStore(db) as store, RecordWriter(store, tmp_path / "spool.jsonl") as writer:

        def call(call_id: str) -> None:
            writer.start_call(call_id, CALLER, "twilio")
            for index in range(20):
                writer.record_turn(call_id, turn(index, f"{call_id[-1]} said {index}"))
            writer.create_ticket(call_id, CALLER, "billing", "Charged twice")
            writer.end_call(call_id)

        threads = [threading.Thread(target=call, args=(call_id,)) for call_id in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert writer.flush(10)
        for call_id in calls:
            record = store.get_call(call_id)
            assert [t["caller_text"] for t in record["turns"]] == [f"{call_id[-1]} said {i}" for i in range(20)]
            assert len(record["tickets"]) == 1 and record["ended_at"] is not None


def test_without_a_spool_file_writes_wait_in_memory_and_a_ticket_cannot_be_promised(db):
    with SqliteStore(db, timeout_s=0.2) as store, RecordWriter(store, None, retry_s=0.05) as writer:
        writer.start_call(CALL, CALLER, "chat")
        assert writer.flush(10)
        with write_lock(db):
            writer.record_turn(CALL, turn(0))
            with pytest.raises(StoreError, match="no spool file"):
                writer.create_ticket(CALL, CALLER, "billing", "Charged twice")
        wait_until(lambda: writer.spooled == 0)
        assert writer.flush(10)
        assert len(store.get_call(CALL)["turns"]) == 1
        assert store.tickets_for_call(CALL) == []
