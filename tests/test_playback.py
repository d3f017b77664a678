"""The caller's playback buffer: marks at their place in the audio, clear, and a held sender."""

from __future__ import annotations

import numpy as np

from voicebot.playback import PlaybackBuffer


def ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int16)


def two_sentences() -> PlaybackBuffer:
    """100 samples, mark "a", 100 more, mark "b": a reply of two sentences as the bot sends it."""
    buffer = PlaybackBuffer()
    for start, mark in ((1, "a"), (101, "b")):
        buffer.add_audio(ramp(start, 100))
        buffer.add_mark(mark)
    return buffer


def test_marks_come_back_when_playback_reaches_them_and_a_clear_returns_the_rest():
    buffer = two_sentences()
    played, marks = buffer.play(150)
    assert np.array_equal(played, ramp(1, 150)) and marks == ["a"]
    assert buffer.clear() == ["b"] and buffer.pending_samples == 0
    played, marks = buffer.play(20)
    assert not played.any() and marks == []


def test_a_held_sender_plays_what_it_had_sent_then_silence_and_goes_on_where_it_stopped():
    buffer = two_sentences()
    buffer.hold(60)
    played, marks = buffer.play(100)
    assert np.array_equal(played[:60], ramp(1, 60)) and not played[60:].any() and marks == []
    played, marks = buffer.play(100)
    assert not played.any() and marks == [], "nothing more plays, no mark comes back while held"
    buffer.release()
    played, marks = buffer.play(100)
    assert np.array_equal(played, ramp(61, 100)) and marks == ["a"]
    buffer.hold(0)
    assert buffer.clear() == ["b"]
    buffer.add_audio(ramp(1, 10))
    played, _ = buffer.play(10)
    assert np.array_equal(played, ramp(1, 10)), "a clear ends the hold"
