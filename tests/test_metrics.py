"""`ServerMetrics`: Prometheus text that parses, turns counted as committed, bounded labels, one registry each."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from telephony.metrics import AuthCheck, LatencyStage, Refusal, ServerFault, ServerMetrics, StreamEnd
from telephony.protocol import ErrorKind
from voicebot.routes import HandoffReason, Route

NAMES = {
    "voicebot_calls_active": "gauge",
    "voicebot_calls": "counter",
    "voicebot_calls_ended": "counter",
    "voicebot_calls_refused": "counter",
    "voicebot_turns": "counter",
    "voicebot_tickets": "counter",
    "voicebot_handoffs": "counter",
    "voicebot_errors": "counter",
    "voicebot_auth_failures": "counter",
    "voicebot_stage_latency_seconds": "histogram",
}

# What session.py records for a turn the caller barged in on: durations, two media positions and a working value.
BARGED_IN_TURN = {
    "endpoint": 240.0,
    "stt": 180.5,
    "stt_compute": 150.0,
    "route": 12.0,
    "llm_first_token": None,
    "tts_first_audio": 90.0,
    "first_audio_out": 610.0,
    "pause": 60.0,
    "pause_at_media_ms": 48_000.0,
    "barge_in": 320.0,
    "clear_at_media_ms": 48_260.0,
    "_t0": 1234.5,
}


def families(metrics: ServerMetrics) -> dict:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def latency_stages(metrics: ServerMetrics) -> dict[str, float]:
    """Observation count by stage label, as a scraper reads them."""
    family = families(metrics)["voicebot_stage_latency_seconds"]
    return {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_count")}


def series(metrics: ServerMetrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for f in families(metrics).values() for s in f.samples}


def test_render_parses_as_prometheus_text_with_every_metric():
    metrics = ServerMetrics(lambda: 3)
    metrics.call_started()
    metrics.turn_committed(Route.FAQ, {"stt": 250.0})
    parsed = families(metrics)
    assert {name: parsed[name].type for name in NAMES} == NAMES
    assert metrics.value("voicebot_calls_active") == 3  # read from the server at each scrape
    assert metrics.value("voicebot_calls_total") == 1
    samples = parsed["voicebot_stage_latency_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket") and s.labels["stage"] == "stt"}
    assert buckets["0.2"] == 0 and buckets["0.3"] == 1 and buckets["+Inf"] == 1


def test_render_speaks_openmetrics_when_the_scraper_asks():
    metrics = ServerMetrics(lambda: 0)
    metrics.error(ServerFault.STORE)
    body, content_type = metrics.render("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    parsed = {family.name: family for family in parse_openmetrics(body.decode())}
    errors = {s.labels["kind"]: s.value for s in parsed["voicebot_errors"].samples if s.name.endswith("_total")}
    assert errors["store"] == 1 and errors["internal"] == 0


def test_turn_committed_counts_routes_and_only_latency_stages():
    metrics = ServerMetrics(lambda: 0)
    metrics.turn_committed(Route.LLM, BARGED_IN_TURN)
    metrics.turn_committed(Route.LLM, {"first_audio_out": 900.0})
    metrics.turn_committed(Route.FAQ, {})
    assert metrics.value("voicebot_turns_total", route="llm") == 2
    assert metrics.value("voicebot_turns_total", route="faq") == 1
    assert metrics.value("voicebot_turns_total", route="ticket") == 0
    counts = latency_stages(metrics)
    assert set(counts) == set(LatencyStage)  # no media positions, no working values
    assert counts["first_audio_out"] == 2 and counts["barge_in"] == 1 and counts["pause"] == 1
    assert counts["llm_first_token"] == 0  # None: the stage did not run
    assert metrics.value("voicebot_stage_latency_seconds_sum", stage="barge_in") == pytest.approx(0.32)


def test_tickets_and_handoffs_count_as_they_happen():
    metrics = ServerMetrics(lambda: 0)
    metrics.ticket_opened()
    metrics.ticket_opened()
    metrics.handed_off(HandoffReason.FRUSTRATION)
    assert metrics.value("voicebot_tickets_total") == 2
    assert metrics.value("voicebot_handoffs_total", reason="frustration") == 1
    assert metrics.value("voicebot_handoffs_total", reason="requested") == 0


def test_every_named_fault_check_and_end_counts_under_its_own_name():
    metrics = ServerMetrics(lambda: 0)
    named = {
        "voicebot_errors_total": ("kind", (*ServerFault, *ErrorKind), metrics.error),
        "voicebot_auth_failures_total": ("check", tuple(AuthCheck), metrics.auth_failure),
        "voicebot_calls_ended_total": ("how", tuple(StreamEnd), metrics.call_ended),
        "voicebot_calls_refused_total": ("reason", tuple(Refusal), metrics.refused),
        "voicebot_handoffs_total": ("reason", tuple(HandoffReason), metrics.handed_off),
    }
    for name, (label, values, count) in named.items():
        for value in values:
            count(value)
        assert {metrics.value(name, **{label: value}) for value in values} == {1}, name
        assert metrics.value(name, **{label: "other"}) == 0, name


def test_label_values_outside_the_fixed_sets_are_counted_as_other():
    metrics = ServerMetrics(lambda: 0)
    before = series(metrics)
    for i in range(50):
        metrics.error(f"kind_{i}")
        metrics.refused(f'reason"{i}')
        metrics.auth_failure(f"check\n{i}")
        metrics.handed_off(f"why {i}")
        metrics.turn_committed(f"route_{i}", {f"stage_{i}": 100.0})  # type: ignore[arg-type]
    metrics.error("stream_error")
    assert metrics.value("voicebot_errors_total", kind="other") == 50
    assert metrics.value("voicebot_errors_total", kind="stream_error") == 1
    assert metrics.value("voicebot_calls_refused_total", reason="other") == 50
    assert metrics.value("voicebot_auth_failures_total", check="other") == 50
    assert metrics.value("voicebot_handoffs_total", reason="other") == 50
    assert metrics.value("voicebot_turns_total", route="other") == 50
    assert sum(latency_stages(metrics).values()) == 0
    assert series(metrics) == before  # the counts changed, not the series
    with pytest.raises(LookupError, match="kind_1"):
        metrics.value("voicebot_errors_total", kind="kind_1")


def test_two_servers_count_apart():
    first, second = ServerMetrics(lambda: 1), ServerMetrics(lambda: 2)
    first.call_started()
    first.auth_failure("stream_token")
    second.turn_committed(Route.TICKET, {"route": 20.0})
    assert first.value("voicebot_calls_total") == 1 and second.value("voicebot_calls_total") == 0
    assert first.value("voicebot_auth_failures_total", check="stream_token") == 1
    assert second.value("voicebot_auth_failures_total", check="stream_token") == 0
    assert first.value("voicebot_turns_total", route="ticket") == 0
    assert second.value("voicebot_turns_total", route="ticket") == 1
    assert (first.value("voicebot_calls_active"), second.value("voicebot_calls_active")) == (1, 2)
