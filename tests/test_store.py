"""The store on real SQLite files: records, the JSON users read, durability across processes, failure messages."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from voicebot.redaction import REDACTED
from voicebot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TICKET_ALPHABET,
    SqliteStore,
    StoreError,
    TicketIdConflict,
    TurnRecord,
    mask_number,
    mask_url,
    new_call_id,
    new_ticket_id,
    open_store,
    speak_ticket_id,
)

CALLER = "+15550100199"
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
LATENCY = {
    "endpoint": 310,
    "stt": 420,
    "route": 6,
    "llm_first_token": None,
    "tts_first_audio": 0,
    "first_audio_out": 745,
}
FAQ_TURN = TurnRecord(
    index=0,
    caller_text="how do i return something",
    route="faq",
    faq_id="returns",
    reply_text="You can return unopened items within 7 days.",
    interrupted=False,
    state="consulting",
    latency_ms=LATENCY,
)
TICKET_TURN = TurnRecord(
    index=1,
    caller_text="my parcel arrived broken",
    route="ticket",
    faq_id=None,
    reply_text="I'm sorry, I've opened",  # cut where the caller barged in
    interrupted=True,
    state="complaint",
    latency_ms={**LATENCY, "llm_first_token": 212.5},
)


def record_call(store, call_id: str = "CA" + "ab" * 16) -> str:
    """A Twilio call with an FAQ turn, a complaint turn that opened a ticket, and a handoff."""
    store.start_call(call_id, CALLER, "twilio")
    store.record_turn(call_id, FAQ_TURN)
    store.record_turn(call_id, TICKET_TURN)
    store.create_ticket(call_id, CALLER, "damaged", "Parcel arrived broken, wants a replacement")
    store.end_call(call_id, handoff_reason="caller asked for a human")
    return call_id


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_call_turns_and_tickets_round_trip(store_url):
    with open_store(store_url) as store:
        call_id = record_call(store)
        [ticket] = store.tickets_for_call(call_id)
        assert (ticket.call_id, ticket.caller, ticket.category, ticket.status) == (call_id, CALLER, "damaged", "open")
        assert ISO_Z.fullmatch(ticket.created_at)
        assert store.get_ticket(ticket.id) == ticket
        assert store.get_ticket(" " + ticket.id.lower()) == ticket, "ids typed by a person match case-insensitively"
        assert store.get_ticket("QQQQQQ") is None
        assert store.list_tickets() == [ticket]
        assert store.get_call("CAunknown") is None

        # recording a turn again replaces it (a reply cut by a barge-in that came after it was saved)
        store.record_turn(call_id, dataclasses.replace(TICKET_TURN, reply_text="I'm sorry"))
        turns = store.get_call(call_id)["turns"]
        assert [t["reply_text"] for t in turns] == [FAQ_TURN.reply_text, "I'm sorry"]

        [listed] = store.list_calls()
        assert "turns" not in listed
        assert listed["turn_count"] == 2
        assert listed["tickets"] == [ticket.id]
        assert listed["caller"] == "+1555***0199"


def test_get_call_has_the_documented_json_shape(store_url):
    with open_store(store_url) as store:
        call_id = record_call(store)
        call = store.get_call(call_id)
        ticket_id = store.tickets_for_call(call_id)[0].id

    call = json.loads(json.dumps(call))  # what --json prints must survive JSON unchanged
    assert {"call_id", "caller", "started_at", "ended_at", "turns", "tickets", "handoff"} <= call.keys()
    assert call["call_id"] == call_id
    assert call["caller"] == "+1555***0199"
    assert ISO_Z.fullmatch(call["started_at"]) and ISO_Z.fullmatch(call["ended_at"])
    assert call["started_at"] <= call["ended_at"]
    assert call["tickets"] == [ticket_id]
    assert call["handoff"] == "caller asked for a human"
    assert call["interrupted"] is False, "ended by the call itself, not by close_abandoned_calls"
    assert call["turns"][0] == {
        "index": 0,
        "caller_text": "how do i return something",
        "route": "faq",
        "faq_id": "returns",
        "reply_text": "You can return unopened items within 7 days.",
        "interrupted": False,
        "state": "consulting",
        "latency_ms": LATENCY,
        "failed_stage": None,  # the stage that failed, on a turn the bot answered with an apology
    }
    assert call["turns"][1]["interrupted"] is True
    assert call["turns"][1]["latency_ms"]["llm_first_token"] == 212.5


def test_end_call_twice_keeps_the_first_end_and_reason(store_url):
    with open_store(store_url) as store:
        call_id = record_call(store)
        first = store.get_call(call_id)
        store.end_call(call_id)  # e.g. the socket-closed cleanup after a transfer already ended it
        again = store.get_call(call_id)
    assert (again["ended_at"], again["handoff"]) == (first["ended_at"], "caller asked for a human")


def test_unknown_call_channel_and_route_are_refused(store_url):
    with open_store(store_url) as store:
        with pytest.raises(ValueError, match=r"CAnever.*start_call"):
            store.record_turn("CAnever", FAQ_TURN)
        with pytest.raises(ValueError, match="CAnever"):
            store.create_ticket("CAnever", None, "other", "x")
        with pytest.raises(ValueError, match="'sms'"):
            store.start_call("CA1", None, "sms")
        store.start_call("CA1", None, "chat")
        with pytest.raises(ValueError, match="'smalltalk'"):
            store.record_turn("CA1", TurnRecord(0, "hi", "smalltalk", None, "hello", False, "consulting", {}))
        assert store.get_call("CA1")["turns"] == []


def test_records_survive_a_new_process_reading_them_with_the_cli(tmp_path):
    db = tmp_path / "nested" / "folder" / "voicebot.db"
    with open_store(f"sqlite:///{db}") as store:
        call_id = record_call(store)
        ticket = store.tickets_for_call(call_id)[0]
    assert db.is_file(), "parent folders are created"

    listed = run_cli("tickets", "list", "--json", "--db", f"sqlite:///{db}")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert {k: row[k] for k in ("id", "call_id", "category", "summary", "status", "created_at")} == {
        "id": ticket.id,
        "call_id": call_id,
        "category": "damaged",
        "summary": "Parcel arrived broken, wants a replacement",
        "status": "open",
        "created_at": ticket.created_at,
    }
    assert CALLER not in listed.stdout

    shown = run_cli("calls", "show", call_id, "--json", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    call = json.loads(shown.stdout)
    assert call["tickets"] == [ticket.id]
    assert [t["route"] for t in call["turns"]] == ["faq", "ticket"]
    assert call["caller"] == "+1555***0199"

    text = run_cli("calls", "show", call_id, "--db", str(db))
    assert text.returncode == 0, text.stderr
    assert "how do i return something" in text.stdout and "faq returns" in text.stdout
    assert "first_audio_out 745" in text.stdout and CALLER not in text.stdout

    calls = run_cli("calls", "list", "--json", "--db", str(db))
    assert [c["call_id"] for c in json.loads(calls.stdout)] == [call_id]

    ticket_text = run_cli("tickets", "show", ticket.id.lower(), "--db", str(db))
    assert ticket_text.returncode == 0, ticket_text.stderr
    assert speak_ticket_id(ticket.id) in ticket_text.stdout


def test_cli_unknown_ids_exit_1_and_store_errors_exit_2(tmp_path):
    db = tmp_path / "voicebot.db"
    with open_store(str(db)) as store:
        record_call(store)

    missing_call = run_cli("calls", "show", "CAnope", "--db", str(db))
    assert missing_call.returncode == 1
    assert "CAnope" in missing_call.stderr and missing_call.stdout == ""
    missing_ticket = run_cli("tickets", "show", "QQQQQQ", "--json", "--db", str(db))
    assert missing_ticket.returncode == 1 and "QQQQQQ" in missing_ticket.stderr

    typo = run_cli("calls", "list", "--db", str(tmp_path / "voicbot.db"))
    assert typo.returncode == 2
    assert typo.stderr.startswith("voicebot: error:") and "voicbot.db does not exist" in typo.stderr
    assert not (tmp_path / "voicbot.db").exists(), "reading must not create an empty store"
    assert "Traceback" not in typo.stderr


def test_ticket_ids_are_short_speakable_and_unique(tmp_path):
    assert not set("0O1IL5S2Z8BUV") & set(TICKET_ALPHABET)
    generated = [new_ticket_id() for _ in range(2000)]
    assert all(len(t) == 6 and set(t) <= set(TICKET_ALPHABET) for t in generated)
    assert len(set(generated)) > 1990, "random ids from 22**6 rarely collide"

    with open_store(str(tmp_path / "calls.db")) as store:
        store.start_call("CA1", CALLER, "twilio")
        stored = [store.create_ticket("CA1", CALLER, "other", f"n{i}").id for i in range(2000)]
    assert len(set(stored)) == 2000
    assert all(re.fullmatch(f"[{TICKET_ALPHABET}]{{6}}", t) for t in stored)


def test_speak_ticket_id_reads_one_character_at_a_time():
    assert speak_ticket_id("K7MQX3") == "K, 7, M, Q, X, 3"
    assert speak_ticket_id("k7mqx3") == "K, 7, M, Q, X, 3"


def test_new_call_id_looks_like_a_twilio_call_sid():
    ids = {new_call_id("chat"), new_call_id("replay"), new_call_id("mic")}
    assert len(ids) == 3
    assert all(re.fullmatch(r"CA[0-9a-f]{32}", i) for i in ids)
    with pytest.raises(ValueError, match="Twilio"):
        new_call_id("twilio")


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15550100199", "+1555***0199"),
        ("+1 (555) 010-0199", "+1555***0199"),
        ("+442079460958", "+44207***0958"),  # UK: two-digit country code
        ("+4915123456789", "+49151***6789"),  # Germany mobile
        ("+353861234567", "+353861***4567"),  # Ireland: three-digit country code
        ("+1555123", "***"),  # too short to hide anything
        ("15550100199", "***"),  # no + : not E.164, country code unknown
        ("client:alice", "***"),
        ("anonymous", "***"),
        ("", "***"),
        (None, "***"),
    ],
)
def test_mask_number(number, masked):
    assert mask_number(number) == masked


def test_file_store_uses_wal_and_records_the_schema_version(tmp_path):
    db = tmp_path / "calls.db"
    with open_store(str(db)) as store:
        store.start_call("CA1", CALLER, "twilio")
        assert (tmp_path / "calls.db-wal").exists(), "an open store writes through the WAL"
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "WAL is persistent in the file"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"calls", "turns", "tickets"} <= tables
        assert raw.execute("SELECT channel FROM calls WHERE call_id = 'CA1'").fetchone() == ("twilio",)
    finally:
        raw.close()


def test_a_version_1_store_migrates_forward_and_keeps_its_calls(tmp_path):
    db = tmp_path / "calls.db"
    raw = sqlite3.connect(db)
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("INSERT INTO calls (call_id, caller, channel, started_at) VALUES ('CAold', NULL, 'chat', 'x')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with open_store(str(db)) as store:
        assert store.get_call("CAold")["greeting"] is None
        store.record_greeting("CAold", "Hi, thanks for calling.", True, {"barge_in": 320.0})
        greeting = store.get_call("CAold")["greeting"]
    assert greeting == {"text": "Hi, thanks for calling.", "interrupted": True, "latency_ms": {"barge_in": 320.0}}


def test_a_store_from_a_newer_voicebot_is_refused(tmp_path):
    db = tmp_path / "calls.db"
    open_store(str(db)).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this voicebot") as err:
        open_store(str(db))
    assert str(db) in str(err.value)


def test_memory_store_works_and_needs_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///:memory:") as store:
        call_id = record_call(store)
        assert store.get_call(call_id)["tickets"] == [t.id for t in store.tickets_for_call(call_id)]
    assert list(tmp_path.iterdir()) == []


def test_relative_sqlite_url_is_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///var/voicebot.db").close()
    assert (tmp_path / "var" / "voicebot.db").is_file()


def test_corrupt_file_gives_a_store_error_naming_it(tmp_path):
    db = tmp_path / "calls.db"
    db.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError) as err:
        open_store(f"sqlite:///{db}")
    message = str(err.value)
    assert str(db) in message
    assert "not a SQLite database" in message and "backup" in message


def test_unwritable_location_gives_a_store_error_naming_it(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    db = blocker / "sub" / "calls.db"
    with pytest.raises(StoreError) as err:
        open_store(str(db))
    message = str(err.value)
    assert str(db) in message and "VOICEBOT_STORE_URL" in message


def test_a_lock_held_too_long_gives_a_store_error(tmp_path):
    db = tmp_path / "calls.db"
    store = SqliteStore(db, timeout_s=0.2)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        with pytest.raises(StoreError, match="locked") as err:
            store.start_call("CA1", CALLER, "twilio")
        assert str(db) in str(err.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.start_call("CA1", CALLER, "twilio")  # the store is usable again once the lock is gone
    assert store.get_call("CA1") is not None
    store.close()


def test_other_schemes_name_the_url_masked_and_the_setting():
    with pytest.raises(StoreError) as err:
        open_store("mysql://root:hunter2@localhost/voicebot")
    message = str(err.value)
    assert "mysql://root:***@localhost/voicebot" in message
    assert "hunter2" not in message
    assert "store.url" in message and "VOICEBOT_STORE_URL" in message
    assert "postgresql://" in message, "the schemes there are are named"


def test_passwords_are_masked_in_the_user_part_and_as_a_parameter():
    assert mask_url("postgresql://vb:s3cret@db:5432/calls") == "postgresql://vb:***@db:5432/calls"
    masked = mask_url("postgresql://db/calls?sslmode=require&password=s3cret&user=vb")
    assert masked == "postgresql://db/calls?sslmode=require&password=***&user=vb"
    assert mask_url("sqlite:///var/voicebot.db") == "sqlite:///var/voicebot.db"


def test_concurrent_writes_from_four_threads_all_land(store_url):
    store = open_store(store_url)
    errors: list[BaseException] = []
    tickets: list[str] = []

    def one_call(n: int) -> None:
        try:
            call_id = f"CA{n:032x}"
            store.start_call(call_id, CALLER, "twilio")
            for i in range(25):
                store.record_turn(call_id, TurnRecord(i, f"q{i}", "llm", None, f"a{i}", False, "consulting", {}))
                if i % 5 == 0:
                    tickets.append(store.create_ticket(call_id, CALLER, "other", f"call {n} turn {i}").id)
            store.end_call(call_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_call, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()

    assert errors == []
    with open_store(store_url) as reopened:
        calls = reopened.list_calls()
        assert len(calls) == 4
        assert all(c["turn_count"] == 25 and c["ended_at"] for c in calls)
        assert sorted(t.id for t in reopened.list_tickets(limit=100)) == sorted(tickets)
        assert len(set(tickets)) == 20


def test_commits_are_durable_before_they_return(tmp_path):
    with SqliteStore(tmp_path / "calls.db") as store:
        conn = store._connection()  # the pragma is per connection: ask the store's own
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2, "FULL: the WAL is fsync'd at each commit"


def test_create_ticket_with_a_given_id_is_idempotent_and_refuses_another_calls_id(store_url):
    ticket_id = new_ticket_id()
    with open_store(store_url) as store:
        store.start_call("CA1", CALLER, "twilio")
        store.start_call("CA2", CALLER, "twilio")
        ticket = store.create_ticket("CA1", CALLER, "damaged", "Parcel arrived broken", ticket_id=ticket_id)
        assert (ticket.id, ticket.call_id, ticket.summary) == (ticket_id, "CA1", "Parcel arrived broken")

    with open_store(store_url) as store:  # the spool replays it after a restart
        replayed = store.create_ticket("CA1", CALLER, "other", "a later summary", ticket_id=ticket_id)
        assert replayed == ticket, "a replay returns the ticket as first stored"
        assert store.tickets_for_call("CA1") == [ticket]

        with pytest.raises(TicketIdConflict, match=f"{ticket_id}.*CA2.*CA1") as err:
            store.create_ticket("CA2", CALLER, "other", "x", ticket_id=ticket_id)
        assert isinstance(err.value, ValueError) and not isinstance(err.value, StoreError)
        assert err.value.existing == ticket
        assert store.tickets_for_call("CA2") == []

        for bad in ("k7mqx3", "K7MQX", "K7MQX0", "K7MQX33"):
            with pytest.raises(ValueError, match="new_ticket_id"):
                store.create_ticket("CA2", CALLER, "other", "x", ticket_id=bad)
        with pytest.raises(ValueError, match=r"CAnever.*start_call"):
            store.create_ticket("CAnever", CALLER, "other", "x", ticket_id=new_ticket_id())
        assert len(store.list_tickets()) == 1


def _version_3_store(db: Path) -> None:
    """A database as voicebot wrote it before calls had owners: one call ended, one left open by a crash."""
    raw = sqlite3.connect(db)
    for statements in MIGRATIONS[:3]:
        for statement in statements:
            raw.execute(statement)
    raw.execute("INSERT INTO calls (call_id, channel, started_at, ended_at) VALUES ('CAdone', 'chat', 'a', 'b')")
    raw.execute("INSERT INTO calls (call_id, channel, started_at) VALUES ('CAopen', 'twilio', 'c')")
    raw.execute(
        "INSERT INTO turns (call_id, turn_index, caller_text, route, faq_id, reply_text, interrupted, state, "
        "latency_ms) VALUES ('CAopen', 0, 'hello', 'llm', NULL, 'hi', 0, 'consulting', '{}')"
    )
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()


def test_a_version_3_store_migrates_and_its_open_calls_are_left_alone(tmp_path):
    db = tmp_path / "calls.db"
    _version_3_store(db)
    with open_store(str(db)) as store:
        assert [c["interrupted"] for c in store.list_calls()] == [False, False]
        assert store.close_abandoned_calls() == [], "a call without an owner may be a live older voicebot's"
        assert store.get_call("CAopen")["ended_at"] is None
        assert store.start_call("CAopen", None, "twilio") == 1, "reopened, its turn kept"
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        owners = dict(raw.execute("SELECT call_id, owner FROM calls"))
    finally:
        raw.close()
    assert owners["CAdone"] is None
    host, pid, *_ = owners["CAopen"].split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())


# A `voicebot serve` stand-in: starts a call in the store it is given, says so, and runs until it is killed.
SERVER = """
import sys, time
from voicebot.store import open_store
store = open_store(sys.argv[1])
store.start_call(sys.argv[2], None, "twilio")
print("started", flush=True)
time.sleep(60)
"""


def _set_owner(db: Path, call_id: str, owner: str) -> None:
    raw = sqlite3.connect(db)
    raw.execute("UPDATE calls SET owner = ? WHERE call_id = ?", (owner, call_id))
    raw.commit()
    raw.close()


def test_close_abandoned_calls_closes_only_the_calls_of_a_dead_process_of_this_host(tmp_path):
    db = tmp_path / "calls.db"
    store = open_store(str(db))
    store.start_call("CAmine", CALLER, "twilio")  # this process's live call
    store.start_call("CAelsewhere", CALLER, "twilio")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(db), "CAcrashed"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "started\n"
        assert store.close_abandoned_calls() == [], "the other worker is alive: its call is live"
    finally:
        server.kill()  # kill -9: no end_call, no clean-up
        server.wait()
    # the same dead pid on another host (a shared database): that host's own voicebot must decide
    _set_owner(db, "CAelsewhere", f"elsewhere.example:{server.pid}")

    assert store.close_abandoned_calls() == ["CAcrashed"]
    crashed = store.get_call("CAcrashed")
    assert crashed["interrupted"] is True and ISO_Z.fullmatch(crashed["ended_at"])
    assert [c["call_id"] for c in store.list_calls() if c["interrupted"]] == ["CAcrashed"]
    for call_id in ("CAmine", "CAelsewhere"):
        assert store.get_call(call_id)["ended_at"] is None and not store.get_call(call_id)["interrupted"]
    assert store.close_abandoned_calls() == [], "closed once"

    # the call comes back (Twilio reopens the stream): live again, owned by this process, not interrupted
    store.start_call("CAcrashed", CALLER, "twilio")
    assert store.get_call("CAcrashed")["interrupted"] is False
    assert store.close_abandoned_calls() == []
    store.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_a_crashed_process_whose_pid_runs_again_is_still_known_dead(tmp_path):
    """A restarted container's server is pid 1 again: its start time tells it from the one that crashed."""
    db = tmp_path / "calls.db"
    with open_store(str(db)) as store:
        store.start_call("CAbefore", CALLER, "twilio")
        _set_owner(db, "CAbefore", f"{store.owner.rsplit(':', 1)[0]}:1")  # this pid, started at another time
        assert store.owner.count(":") == 2
        assert store.close_abandoned_calls() == ["CAbefore"]


def test_long_numbers_are_stored_redacted_and_kept_with_the_setting_off(tmp_path):
    said = "my card 4111 1111 1111 1111 was charged twice for order 1234567"
    echoed = "I see a charge on 4111 1111 1111 1111."
    turn = TurnRecord(0, said, "ticket", None, echoed, False, "complaint", {})
    redacted = f"my card {REDACTED} was charged twice for order 1234567"

    with open_store(str(tmp_path / "on.db")) as store:  # on by default
        store.start_call("CA1", CALLER, "twilio")
        store.record_turn("CA1", turn)
        ticket = store.create_ticket("CA1", CALLER, "billing", said)
        [stored] = store.get_call("CA1")["turns"]
        assert (stored["caller_text"], stored["reply_text"]) == (redacted, f"I see a charge on {REDACTED}.")
        assert ticket.summary == redacted == store.get_ticket(ticket.id).summary
        assert store.get_call("CA1")["tickets"] == [ticket.id]
    assert b"4111" not in (tmp_path / "on.db").read_bytes(), "the number is in no page of the file"

    with open_store(str(tmp_path / "off.db"), redact_digits=0) as store:
        store.start_call("CA1", CALLER, "twilio")
        store.record_turn("CA1", turn)
        assert store.create_ticket("CA1", CALLER, "billing", said).summary == said
        assert store.get_call("CA1")["turns"][0]["caller_text"] == said

    with open_store(str(tmp_path / "cards.db"), redact_digits=13) as store:
        store.start_call("CA1", CALLER, "twilio")
        assert store.create_ticket("CA1", CALLER, "callback", "call 555 010 0199").summary == "call 555 010 0199"

    with pytest.raises(ValueError, match=r"store\.redact_digits.*is 5"):
        open_store(str(tmp_path / "bad.db"), redact_digits=5)
