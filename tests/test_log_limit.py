"""Bounded logging of peer-controlled values: short one-line reprs, and a per-connection ration of log lines."""

from __future__ import annotations

import logging

import pytest

from telephony.log_limit import LogBudget, clip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("MZ123", "'MZ123'"),
        (None, "None"),
        (b"\x00\xff", "b'\\x00\\xff'"),
        ({"a": 1}, "{'a': 1}"),
        ("a\nb\r\x1b[31m", "'a\\nb\\r\\x1b[31m'"),
        ("José \u202eevil", "'Jos\\xe9 \\u202eevil'"),  # non-ASCII escaped: a bidi override stays inert
    ],
)
def test_short_values_are_their_repr(value, expected):
    assert clip(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "x" * 1_000_000,
        "\n" * 1_000_000,
        b"\xff" * 1_000_000,
        bytearray(1_000_000),
        list(range(1_000_000)),
        {str(i): "v" * 1000 for i in range(1000)},
        10**5000,  # too long for repr() itself
        [[[[[[[[[[["deep"]]]]]]]]]]],
    ],
    ids=["str", "newlines", "bytes", "bytearray", "list", "dict", "huge-int", "nested"],
)
def test_long_values_are_cut_to_one_line_within_the_limit(value):
    for limit in (4, 20, 80):
        text = clip(value, limit)
        assert len(text) <= limit and text.isascii() and text.isprintable()


def test_what_was_left_out_is_marked():
    assert clip("x" * 1_000_000, 10) == "'xxxxxx..."
    assert clip("\n" * 1_000_000, 10) == "'\\n\\n\\n..."
    assert clip(list(range(1_000_000))) == "[0, 1, 2, 3, 4, 5, ...]"  # containers are summarised by reprlib
    assert clip([[[[["deep"]]]]]) == "[[[[...]]]]"
    assert clip(10**5000) == "<int too long to print>"


def test_an_object_whose_repr_spans_lines_is_kept_on_one():
    class Chatty:
        def __repr__(self) -> str:
            return "line one\nline two\u2028thrée"

    assert clip(Chatty()) == "line one\\nline two\\u2028thr\\xe9e"


def test_a_limit_without_room_for_the_ellipsis_is_refused():
    with pytest.raises(ValueError, match="must be over 3 characters"):
        clip("x", 3)


def test_a_budget_logs_its_lines_then_one_notice_then_nothing_until_the_window_ends(caplog):
    clock = FakeClock()
    budget = LogBudget(lines=3, window_s=10.0, clock=clock)
    log = logging.getLogger("test.log_limit")
    with caplog.at_level(logging.INFO, logger="test.log_limit"):
        logged = [budget.log(log, logging.WARNING, "bad frame %d", i) for i in range(10)]
        assert logged == [True] * 3 + [False] * 7
        assert [r.getMessage() for r in caplog.records] == [
            "bad frame 0",
            "bad frame 1",
            "bad frame 2",
            "further log lines from this connection suppressed for 10 s",
        ]
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        caplog.clear()
        clock.now += 9.9
        assert not budget.log(log, logging.WARNING, "still quiet")
        clock.now += 0.1  # the window has passed: a fresh ration
        assert budget.log(log, logging.INFO, "bad frame %s", "again")
        assert [(r.getMessage(), r.levelno) for r in caplog.records] == [("bad frame again", logging.INFO)]
    assert budget.suppressed == 8


def test_budgets_are_per_connection(caplog):
    clock = FakeClock()
    first, second = LogBudget(1, 10.0, clock), LogBudget(1, 10.0, clock)
    log = logging.getLogger("test.log_limit")
    with caplog.at_level(logging.INFO, logger="test.log_limit"):
        assert first.log(log, logging.INFO, "a")
        assert not first.log(log, logging.INFO, "b")
        assert second.log(log, logging.INFO, "c")
    assert [r.getMessage() for r in caplog.records][::2] == ["a", "c"]


def test_exc_info_passes_through(caplog):
    budget = LogBudget(clock=FakeClock())
    log = logging.getLogger("test.log_limit")
    with caplog.at_level(logging.INFO, logger="test.log_limit"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            budget.log(log, logging.ERROR, "failed", exc_info=True)
    assert caplog.records[0].exc_info is not None and "boom" in caplog.text


@pytest.mark.parametrize(("lines", "window_s"), [(0, 10.0), (5, 0.0)])
def test_an_empty_budget_is_refused(lines, window_s):
    with pytest.raises(ValueError, match="lines >= 1 and window_s > 0"):
        LogBudget(lines, window_s)
