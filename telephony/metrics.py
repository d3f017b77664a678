"""A tiny Prometheus registry (counters, gauges, histograms) and the metrics `voicebot serve` exposes.

Rendered in the Prometheus text exposition format 0.0.4 at `GET /metrics`. Everything runs on the server's
event loop, so no locks. Label values are always from fixed sets (routes, stages, check names), never from
what a caller or client sent, so the number of series stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_number(value)}")
        return lines


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only go up, got {amount}")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = LATENCY_BUCKETS_S
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = (*sorted(buckets), math.inf)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]

    def observe(self, value: float, **labels: str) -> None:
        counts, total = self._series.setdefault(self._key(labels), ([0] * len(self.buckets), [0.0]))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return series[0][-1] if series else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, (counts, total) in sorted(self._series.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Histogram:
        return self._add(Histogram(name, help_text, labels))  # type: ignore[return-value]

    def render(self) -> str:
        return "\n".join(line for metric in self._metrics.values() for line in metric.render()) + "\n"


class ServerMetrics:
    """What `voicebot serve` counts. Turn, ticket, hand-off and latency figures come from each finished
    call's stored record, so they match what `voicebot calls show` says about the same call."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.calls_active = r.gauge("voicebot_calls_active", "Calls connected to the media socket now.")
        self.calls_total = r.counter("voicebot_calls_total", "Calls whose media stream started.")
        self.calls_refused = r.counter(
            "voicebot_calls_refused_total", "Calls answered with the busy TwiML instead of a stream.", ("reason",)
        )
        self.turns = r.counter("voicebot_turns_total", "Caller turns answered, by route.", ("route",))
        self.tickets = r.counter("voicebot_tickets_total", "Support tickets opened during calls.")
        self.handoffs = r.counter("voicebot_handoffs_total", "Calls handed to a person, by reason.", ("reason",))
        self.errors = r.counter("voicebot_errors_total", "Errors, by kind.", ("kind",))
        self.auth_failures = r.counter(
            "voicebot_auth_failures_total",
            "Requests refused for a missing or wrong X-Twilio-Signature or stream token, by check.",
            ("check",),
        )
        self.stage_latency = r.histogram(
            "voicebot_stage_latency_seconds", "Per-turn latency of each pipeline stage.", ("stage",)
        )

    def record_call(self, record: Mapping) -> None:
        """Count a finished call from its stored record (`Store.get_call`)."""
        for turn in record.get("turns", []):
            self.turns.inc(route=str(turn.get("route")))
            for stage, ms in (turn.get("latency_ms") or {}).items():
                if isinstance(ms, int | float):
                    self.stage_latency.observe(ms / 1000, stage=str(stage))
        self.tickets.inc(len(record.get("tickets", [])))
        if record.get("handoff"):
            self.handoffs.inc(reason=str(record["handoff"]))

    def render(self) -> str:
        return self.registry.render()
