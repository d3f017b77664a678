"""The heap trim that the server runs after each call: freed memory pinned under a live block goes back to the OS."""

from __future__ import annotations

import pytest

from voicebot.heap import HeapTrimmer


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_trim_returns_freed_memory_that_malloc_kept() -> None:
    trimmer = HeapTrimmer()
    if not trimmer.available:
        pytest.skip("this C library has no malloc_trim")
    # 3,000 blocks of 60 kB: under the mmap threshold, so they come from the heap; the last one stays alive and
    # pins the top of the heap, so free() alone cannot shrink it: what a call's buffers leave behind.
    blocks = [bytearray(b"\x01" * 60_000) for _ in range(3_000)]
    pinned = blocks.pop()
    del blocks
    before = _rss_mib()
    took_ms = trimmer.trim()
    after = _rss_mib()
    assert took_ms is not None and took_ms >= 0
    assert before - after > 100, f"RSS {before:.0f} -> {after:.0f} MiB"
    assert pinned[0] == 1
