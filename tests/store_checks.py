"""What tests read back from the store once a call is over."""

from __future__ import annotations

import time


def written_back(agent, call_id: str) -> dict:
    """The call's record once the spool has been written to the store (the writer retries every few seconds)."""
    deadline = time.monotonic() + 30
    while agent.records.spooled and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.records.flush(10) and agent.records.spooled == 0, "the spool was never written back"
    return agent.store.get_call(call_id)
