"""`make cluster-demo`'s topology as a test: PostgreSQL, the shared LLM server and two `voicebot serve` workers on
loopback, two simulated Twilio calls at once (one per worker), and the records and tickets of both read back
from the one database through each worker's settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telephony.cluster_demo import CALLS, call_both, records, start_cluster
from telephony.local_postgres import server_programs
from voicebot.store import open_store

pytestmark = pytest.mark.models  # every worker and the LLM server load the embedded models

# Calls in real time that assert their routes: deadlines no busy machine misses (they are tested elsewhere).
PATIENT = {
    "VOICEBOT_VOICE_STT_DEADLINE_MS": "20000",
    "VOICEBOT_VOICE_REPLY_DEADLINE_MS": "20000",
    "VOICEBOT_VOICE_REPLY_STALL_MS": "20000",
    "VOICEBOT_VOICE_NO_INPUT_MS": "60000",  # the waiting caller is not asked whether they are still there
}


@pytest.mark.skipif(server_programs() is None, reason="PostgreSQL's server programs are not installed")
def test_two_workers_share_one_database_and_one_llm_server(tmp_path: Path):
    complaint, out_of_scope = CALLS
    folder = tmp_path / "cluster"  # its logs stay there (pytest keeps the last few runs' folders)
    folder.mkdir()
    with start_cluster(folder, extra_env=PATIENT) as cluster:
        # A caller who waits 20 s for an answer: the LLM server is shared with two workers on two cores, and on a
        # loaded machine a caller who hung up sooner was gone before the reply began (and such a turn has no record).
        placed = asyncio.run(call_both(cluster, [complaint, out_of_scope], speed=1.0, quiet_ms=20_000))
        (first, ticket_call), (second, question_call) = placed
        assert (first, second) == tuple(cluster.workers)
        calls, tickets = records(cluster, first)
        assert records(cluster, second) == (calls, tickets)  # either side reads the same rows
        with open_store(cluster.database_url, create=False) as store:
            ticketed = store.get_call(ticket_call.call_sid)
            question = store.get_call(question_call.call_sid)
        log = (folder / "llm-server.log").read_text(errors="replace")
        worker_logs = [w.log.read_text(errors="replace") for w in cluster.workers]
    assert {c["call_id"] for c in calls} == {ticket_call.call_sid, question_call.call_sid}
    assert all(c["ended_at"] for c in calls), calls
    assert [t["call_id"] for t in tickets] == [ticket_call.call_sid]
    assert ticketed["tickets"] == [tickets[0]["id"]] and ticketed["turns"][0]["route"] == "ticket"
    # The question the KB does not cover reached the LLM, which only the shared server runs for the workers.
    assert question["turns"], f"the question's turn was not recorded: {question}"
    turn = question["turns"][0]
    assert turn["route"] in ("llm", "fallback") and turn["latency_ms"].get("llm_first_token") is not None, turn
    assert log.count("POST /v1/chat/completions") >= 5, "two warm-ups per worker, then the question"
    assert all("Traceback" not in text for text in worker_logs)
