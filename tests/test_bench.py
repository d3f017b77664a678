"""The benchmark's arithmetic: medians by route, talk-over from the caller's first sound, verdicts."""

from __future__ import annotations

import json

from voicebot.bench import TurnSample, caller_onsets, summarise, verdicts, with_true_barge_in


def test_summary_medians_by_route_and_verdicts():
    samples = [
        TurnSample("a", 0, "faq", {"endpoint": 480, "first_audio_out": 500}),
        TurnSample("a", 1, "faq", {"endpoint": 480, "first_audio_out": 900}),
        TurnSample("b", 0, "faq", {"endpoint": 480, "first_audio_out": 600}),
        TurnSample("c", 0, "llm", {"endpoint": 480, "first_audio_out": 1500, "llm_first_token": 300}),
        TurnSample("d", 0, "greeting", {"pause": 180, "silent_from_sound": 370, "barge_in_from_sound": 720}),
    ]
    summary = summarise(samples)
    assert summary["by_route"]["faq"]["stages_ms"]["first_audio_out"] == {"p50": 600.0, "p90": 900.0, "n": 3}
    assert summary["by_route"]["llm"]["stages_ms"]["stt"]["n"] == 0
    assert summary["barge_in_ms"]["barge_in_from_sound"]["p50"] == 720.0
    assert verdicts(summary) == {
        "faq": {"target_ms": 700.0, "p50_ms": 600.0, "met": True},
        "llm": {"target_ms": 1200.0, "p50_ms": 1500.0, "met": False},
        "barge_in": {"target_ms": 400.0, "p50_ms": 370.0, "met": True},
    }


def test_barge_in_counts_from_the_utterance_that_was_going_on(tmp_path):
    wav = tmp_path / "call.wav"
    wav.with_suffix(".json").write_text(
        json.dumps(
            {"script": [{"at_ms": 1200, "say": "sorry"}, {"at_ms": 9000, "dtmf": "0"}, {"at_ms": 20000, "say": "x"}]}
        )
    )
    onsets = caller_onsets(wav)
    assert onsets == [1200.0, 20000.0]
    latency = with_true_barge_in({"pause_at_media_ms": 1390.0, "clear_at_media_ms": 1610.0}, onsets)
    assert latency["barge_in_from_sound"] == 410.0
    assert latency["silent_from_sound"] == 1390.0 + 160 - 1200, "the bot stops sending; the phone plays what it held"
    assert with_true_barge_in({"route": 3.0}, onsets) == {"route": 3.0}
    assert caller_onsets(tmp_path / "no-sidecar.wav") == []
