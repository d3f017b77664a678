"""Bounded logging of what a caller's connection sends: values clipped to one short line, lines rationed per
connection.

Anything a WebSocket peer sends reaches the logs when it is refused, and a peer may send 64 KiB lines full of
newlines, or a fault 50 times a second. `clip` makes a value safe to interpolate into one log line; `LogBudget`
lets one connection write a few lines per window, says once that it is holding the rest back, and then stays
silent until the window has passed, so no single connection can flood the logs.
"""

from __future__ import annotations

import logging
import reprlib
import time
from collections.abc import Callable

ELLIPSIS = "..."


def clip(value: object, limit: int = 80) -> str:
    """A repr of `value` in at most `limit` printable ASCII characters, ending in '...' when cut.

    Only about `limit` items of a string or bytes value are looked at, and containers are summarised
    (`reprlib`), so a huge value costs little. Control and non-ASCII characters are escaped as `ascii()` does,
    so a log line stays one line, terminal escapes and bidi overrides stay inert, and the text's UTF-8 length
    is its length (a WebSocket close reason may hold only 123 bytes).
    """
    if limit <= len(ELLIPSIS):
        raise ValueError(
            f"clip limit must be over {len(ELLIPSIS)} characters (room for one and {ELLIPSIS!r}), got {limit}"
        )
    if isinstance(value, str | bytes | bytearray):
        text = ascii(value[:limit])
    else:
        summary = reprlib.Repr()
        summary.maxlevel, summary.maxstring, summary.maxother, summary.maxlong = 3, limit, limit, limit
        try:
            text = summary.repr(value)
        except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
            text = f"<{type(value).__name__} too long to print>"
    text = "".join(ch if ch.isascii() and ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


class LogBudget:
    """One connection's log ration: `lines` lines per `window_s` seconds, then a single 'suppressed' line and
    silence until the window has passed. `clock` returns seconds (monotonic); tests pass a fake one."""

    def __init__(self, lines: int = 5, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if lines < 1 or window_s <= 0:
            raise ValueError(f"a log budget needs lines >= 1 and window_s > 0, got lines={lines}, window_s={window_s}")
        self.lines, self.window_s, self._clock = lines, window_s, clock
        self._window_start: float | None = None
        self._used = 0
        self.suppressed = 0  # lines held back since this connection's budget was created

    def log(self, logger: logging.Logger, level: int, msg: str, *args: object, **kwargs: object) -> bool:
        """Log `msg % args` at `level` if the budget allows (kwargs such as `exc_info` pass through); True if logged.

        The first line refused in a window is replaced by one notice that further lines are suppressed.
        """
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self.window_s:
            self._window_start, self._used = now, 0
        self._used += 1
        if self._used <= self.lines:
            logger.log(level, msg, *args, **kwargs)  # type: ignore[arg-type]
            return True
        self.suppressed += 1
        if self._used == self.lines + 1:
            remaining = self.window_s - (now - self._window_start)
            logger.log(level, "further log lines from this connection suppressed for %.0f s", remaining)
        return False
