"""The caller's end of the line: a model of the phone's playback buffer, as Twilio keeps it.

Audio and marks queue in order; playing advances through the audio at real rate and returns each mark the
moment playback reaches it (at once when nothing is buffered ahead of it); `clear` drops the audio and
returns every pending mark. `hold` models a sender that stops sending: what it had already sent (at most
`SENT_AHEAD_MS`, the server's pacing) still plays, then the line is silent until `release`. The replayer
and the Twilio client simulator both use it to hear the bot the way a caller would. Sans-I/O: time advances
only by the samples asked for.
"""

from __future__ import annotations

from collections import deque

import numpy as np

SENT_AHEAD_MS = 160  # the most bot audio a paced sender has handed the phone ahead of playback (LEAD_MS + a chunk)


class PlaybackBuffer:
    def __init__(self) -> None:
        self._queue: deque[np.ndarray | str] = deque()  # int16 audio chunks and mark names, in order
        self._offset = 0  # samples of the head chunk already played
        self._held_after: int | None = None  # while held: samples still to play before the line goes silent

    @property
    def pending_samples(self) -> int:
        return sum(item.size for item in self._queue if not isinstance(item, str)) - self._offset

    def add_audio(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._queue.append(np.asarray(pcm, dtype=np.int16))

    def add_mark(self, name: str) -> None:
        self._queue.append(name)

    def clear(self) -> list[str]:
        """Drop all buffered audio; return the marks that were still pending (Twilio echoes them all)."""
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self._offset = 0
        self._held_after = None
        return marks

    def hold(self, after_samples: int) -> None:
        """The sender stopped: play at most `after_samples` more (what it had sent), then silence."""
        if self._held_after is None:
            self._held_after = max(0, after_samples)

    def release(self) -> None:
        """The sender goes on: the rest of the audio plays from where it stopped."""
        self._held_after = None

    def play(self, samples: int) -> tuple[np.ndarray, list[str]]:
        """Play `samples` of audio (silence where the buffer runs dry) and return the marks reached."""
        out = np.zeros(samples, dtype=np.int16)
        marks: list[str] = []
        filled = 0
        while self._queue:
            head = self._queue[0]
            if isinstance(head, str):
                marks.append(head)
                self._queue.popleft()
                continue
            if filled == samples or self._held_after == 0:
                break
            take = min(samples - filled, head.size - self._offset)
            if self._held_after is not None:
                take = min(take, self._held_after)
                self._held_after -= take
            out[filled : filled + take] = head[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset == head.size:
                self._queue.popleft()
                self._offset = 0
        return out, marks
