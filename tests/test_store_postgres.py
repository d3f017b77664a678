"""The PostgreSQL store on a real server (the session's own, telephony/local_postgres.py): what several workers on one
database need beyond the behaviour every store shares (tests/test_store.py runs those on both)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

import voicebot.store
from voicebot.store import SCHEMA_VERSION, StoreError, TurnRecord, open_store
from voicebot.store_postgres import PostgresStore

CALLER = "+15550100199"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(postgres_server) -> str:
    return postgres_server.new_database()


def test_two_workers_on_one_database_never_collide_on_ticket_ids(url, monkeypatch):
    # Ids drawn from 24 values instead of 22**6: the two workers draw the same ones all the time.
    pool = [f"CCCC{a}{b}" for a in "ACDEFG" for b in "HJKM"]
    drawn = iter(pool * 50)
    lock = threading.Lock()

    def scarce_id() -> str:
        with lock:
            return next(drawn)

    monkeypatch.setattr(voicebot.store, "new_ticket_id", scarce_id)
    workers = [open_store(url), open_store(url)]
    made: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            store = workers[n]
            store.start_call(f"CA{n}", CALLER, "twilio")
            for i in range(10):
                made[n].append(store.create_ticket(f"CA{n}", CALLER, "other", f"worker {n} #{i}").id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(made[0] + made[1])) == 20, "every ticket has an id of its own"
    for n, store in enumerate(workers):
        assert [t.id for t in store.tickets_for_call(f"CA{n}")] == made[n], "and belongs to the call that made it"
        store.close()


def test_workers_starting_at_once_migrate_the_database_once(url):
    opener = "import sys; from voicebot.store import open_store; open_store(sys.argv[1]).close(); print('ok')"
    starts = [
        subprocess.Popen([sys.executable, "-c", opener, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for start in starts:
        out, err = start.communicate(timeout=60)
        assert (start.returncode, out) == (0, "ok\n"), err
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM voicebot_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_the_cli_reads_calls_and_tickets_from_postgresql(url):
    with open_store(url) as store:
        store.start_call("CA1", CALLER, "twilio")
        store.record_turn("CA1", TurnRecord(0, "my parcel is broken", "ticket", None, "Sorry.", False, "complaint", {}))
        ticket = store.create_ticket("CA1", CALLER, "damaged", "Parcel arrived broken")
        store.end_call("CA1")
    run = [sys.executable, "-m", "voicebot"]
    listed = subprocess.run([*run, "tickets", "list", "--json", "--db", url], capture_output=True, text=True, cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    assert [t["id"] for t in json.loads(listed.stdout)] == [ticket.id]
    shown = subprocess.run([*run, "calls", "show", "CA1", "--json", "--db", url], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    call = json.loads(shown.stdout)
    assert (call["tickets"], call["caller"], [t["route"] for t in call["turns"]]) == (
        [ticket.id],
        "+1555***0199",
        ["ticket"],
    )


def test_an_empty_database_is_not_created_by_a_read_and_a_newer_one_is_refused(url):
    with pytest.raises(StoreError, match="has no voicebot tables"):
        open_store(url, create=False)
    open_store(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE voicebot_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this voicebot"):
        open_store(url)


def test_an_unreachable_server_is_named_without_its_password(postgres_server):
    dead = f"postgresql://voicebot:s3cret@127.0.0.1:{postgres_server.port + 1}/voicebot"
    with pytest.raises(StoreError) as err:
        PostgresStore(dead, timeout_s=1)
    message = str(err.value)
    assert "s3cret" not in message and "voicebot:***@127.0.0.1" in message
    assert "check that PostgreSQL is running" in message


def test_a_dropped_connection_fails_one_write_and_the_next_connects_again(url):
    with open_store(url) as store:
        store.start_call("CA1", CALLER, "twilio")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'voicebot' "
                "AND datname = current_database()"
            )
        with pytest.raises(StoreError, match="cannot record turn 0 of call CA1"):
            store.record_turn("CA1", TurnRecord(0, "hello", "faq", "hours", "We open at 9.", False, "idle", {}))
        store.record_turn("CA1", TurnRecord(0, "hello", "faq", "hours", "We open at 9.", False, "idle", {}))
        assert [t["caller_text"] for t in store.get_call("CA1")["turns"]] == ["hello"]


def test_its_spool_is_on_this_machine_one_per_database(url, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with open_store(url) as store:
        spool = store.spool_path
    assert spool is not None and spool.parent == tmp_path / "voicebot"
    assert spool.name.startswith("postgresql-voicebot_test_") and spool.suffix == ".spool"
    with open_store(url.rsplit("/", 1)[0] + "/postgres") as other:
        assert other.spool_path != spool
