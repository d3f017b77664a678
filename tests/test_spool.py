"""The spool on real files: records survive reopening, a crash mid-append costs only that record, and every
append is on disk (fsync'd) before it returns."""

from __future__ import annotations

import json
import os
import stat

import pytest

from voicebot.spool import Spool, SpoolError
from voicebot.store import StoreError


def test_records_survive_reopening_in_order(tmp_path):
    path = tmp_path / "spool" / "records.jsonl"  # its folder is created too
    with Spool(path) as spool:
        assert spool.load() == []
        spool.append({"seq": 1, "text": "my card ends 4242"})
        spool.append({"seq": 2, "text": "naïve café"})
    with Spool(path) as spool:
        assert spool.load() == [{"seq": 1, "text": "my card ends 4242"}, {"seq": 2, "text": "naïve café"}]
    # caller numbers and words: readable by this user only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_append_is_fsynced_before_it_returns(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "records.jsonl"
    with Spool(path) as spool:
        assert tmp_path.stat().st_ino in synced  # the new file's entry in its folder
        synced.clear()
        spool.append({"seq": 1})
        assert synced == [path.stat().st_ino]
        assert json.loads(path.read_text()) == {"seq": 1}  # and it is in the file, not in a buffer


def test_a_torn_last_line_is_dropped_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "records.jsonl"
    with Spool(path) as spool:
        spool.append({"seq": 1})
    with path.open("ab") as file:
        file.write(b'{"seq": 2, "te')  # the process died in the middle of this append
    with Spool(path) as spool:
        assert spool.load() == [{"seq": 1}]
        spool.append({"seq": 3})
    with Spool(path) as spool:
        assert spool.load() == [{"seq": 1}, {"seq": 3}]


def test_a_damaged_line_in_the_middle_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"seq": 1}\nnot json\n{"seq": 3}\n')
    with Spool(path) as spool, pytest.raises(SpoolError, match=r"records\.jsonl: line 2 is not a JSON object"):
        spool.load()
    assert issubclass(SpoolError, StoreError)  # reported wherever a failing store is


def test_rewrite_replaces_the_records_atomically(tmp_path):
    path = tmp_path / "records.jsonl"
    with Spool(path) as spool:
        for seq in range(3):
            spool.append({"seq": seq})
        spool.rewrite([{"seq": 2}])
        spool.append({"seq": 3})  # appends go to the new file
        assert spool.load() == [{"seq": 2}, {"seq": 3}]
        spool.rewrite([])
        assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl", "records.jsonl.lock"]  # no .tmp left


def test_one_process_at_a_time(tmp_path):
    path = tmp_path / "records.jsonl"
    with Spool(path), pytest.raises(SpoolError, match="in use by another process"):
        Spool(path)
    with Spool(path) as spool:  # released on close
        assert spool.load() == []


def test_a_closed_spool_says_so(tmp_path):
    spool = Spool(tmp_path / "records.jsonl")
    spool.close()
    with pytest.raises(SpoolError, match="is closed"):
        spool.append({"seq": 1})
