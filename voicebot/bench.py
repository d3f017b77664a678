"""`voicebot bench`: replay the sample calls in real time and report where every millisecond goes.

Numbers, not assertions: the machine is shared and noisy, so the benchmark prints medians over several runs
and writes them as JSON for comparison between changes. What it measures, per caller turn:
`first_audio_out` (caller stops talking → first bot audio leaves, the number callers feel), split into
endpoint (VAD silence wait), stt (waiting for the transcript after the endpoint), route, llm_first_token and
tts_first_audio, and `filler` (when "One moment." bridged a slow answer); and for speech over the bot, the
caller's first sound (from the call's sidecar) → the bot silent at the caller's ear (it stops sending, then the
phone plays what it holds, at most `SENT_AHEAD_MS`) and → `clear` sent once Whisper has read real words.
Targets (p50, 2 cores, embedded models): knowledge-base answer < 700 ms, LLM answer < 1200 ms, bot silent
< 400 ms after the caller talks over it.
"""

from __future__ import annotations

import asyncio
import json
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from voicebot.agent import VoiceAgent
from voicebot.playback import SENT_AHEAD_MS
from voicebot.replay import replay_call

TARGETS_MS = {"faq": 700.0, "llm": 1200.0, "barge_in": 400.0}
STAGES = (
    "endpoint",
    "stt",
    "stt_compute",
    "route",
    "llm_first_token",
    "tts_first_audio",
    "first_audio_out",
    "filler",
)


@dataclass(frozen=True)
class TurnSample:
    call: str
    run: int
    route: str
    latency_ms: dict


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1)


def caller_onsets(wav: Path) -> list[float]:
    """Where each utterance of the call really starts (sidecar `script[].at_ms`), if the call has a sidecar."""
    sidecar = wav.with_suffix(".json")
    if not sidecar.exists():
        return []
    return sorted(float(step["at_ms"]) for step in json.loads(sidecar.read_text())["script"] if "say" in step)


def with_true_barge_in(latency: dict, onsets: list[float]) -> dict:
    """Add `silent_from_sound` and `barge_in_from_sound`: the caller's first sound (known from the sidecar) to
    the bot silent at their ear (pause, plus the most the phone held) and to the clear.

    The session can only count from where the VAD first heard speech, which is 10-150 ms after a soft onset.
    """
    out = dict(latency)
    for key, at_key, held_ms in (
        ("silent_from_sound", "pause_at_media_ms", SENT_AHEAD_MS),
        ("barge_in_from_sound", "clear_at_media_ms", 0),
    ):
        at = latency.get(at_key)
        started = [t for t in onsets if at is not None and t <= at]
        if started:
            out[key] = round(at + held_ms - started[-1], 1)
    return out


def summarise(samples: list[TurnSample]) -> dict:
    """Medians and p90s of every stage, by route, plus barge-in reaction times."""
    by_route: dict[str, dict] = {}
    for route in sorted({s.route for s in samples}):
        turns = [s for s in samples if s.route == route]
        stages = {}
        for stage in STAGES:
            values = [float(s.latency_ms[stage]) for s in turns if s.latency_ms.get(stage) is not None]
            stages[stage] = {"p50": _median(values), "p90": _p90(values), "n": len(values)}
        by_route[route] = {"turns": len(turns), "stages_ms": stages}
    barge = {}
    for key in ("pause", "silent_from_sound", "barge_in", "barge_in_from_sound"):
        values = [float(s.latency_ms[key]) for s in samples if s.latency_ms.get(key) is not None]
        barge[key] = {"p50": _median(values), "p90": _p90(values), "n": len(values)}
    return {"by_route": by_route, "barge_in_ms": barge}


def verdicts(summary: dict) -> dict[str, dict]:
    """Each target with its measured p50 and whether it is met (None when nothing was measured)."""
    out = {}
    for name, target in TARGETS_MS.items():
        if name == "barge_in":  # the honest number: from the caller's first sound to silence at their ear
            p50 = summary["barge_in_ms"]["silent_from_sound"]["p50"]
        else:
            p50 = summary["by_route"].get(name, {}).get("stages_ms", {}).get("first_audio_out", {}).get("p50")
        out[name] = {"target_ms": target, "p50_ms": p50, "met": None if p50 is None else p50 < target}
    return out


async def run_bench(agent: VoiceAgent, calls: list[Path], *, runs: int, speed: float) -> list[TurnSample]:
    samples: list[TurnSample] = []
    for run in range(runs):
        for wav in calls:
            result = await replay_call(agent, wav, speed=speed)
            onsets = caller_onsets(wav)
            greeting = result.record.get("greeting") or {}
            replies = [(t["route"], t.get("latency_ms") or {}) for t in result.record.get("turns", [])]
            if greeting.get("latency_ms", {}).get("pause") is not None:
                replies.append(("greeting", greeting["latency_ms"]))
            for route, latency in replies:
                samples.append(TurnSample(wav.stem, run, route, with_true_barge_in(latency, onsets)))
            print(f"  run {run + 1}/{runs} {wav.stem:<20} {result.media_s:5.1f} s of call in {result.wall_s:5.1f} s")
    return samples


def bench(agent: VoiceAgent, calls: list[Path], *, runs: int, speed: float, load_s: float, out: Path) -> dict:
    """Replay `calls` `runs` times, print the table and write the JSON report to `out`."""
    started = time.perf_counter()
    samples = asyncio.run(run_bench(agent, calls, runs=runs, speed=speed))
    summary = summarise(samples)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "profile": agent.settings.models.profile,
        "runs": runs,
        "speed": speed,
        "calls": [c.stem for c in calls],
        "load_and_warm_s": round(load_s, 1),
        "bench_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tts_cache": {"hits": agent.speech.hits, "misses": agent.speech.misses},
        "summary": summary,
        "targets": verdicts(summary),
        "turns": [s.__dict__ for s in samples],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"written: {out}")
    return report


def print_report(report: dict) -> None:
    summary = report["summary"]
    print(
        f"\nturn latencies, ms (p50 / p90 over {report['runs']} run(s); load+warm {report['load_and_warm_s']} s, "
        f"peak RSS {report['peak_rss_mb']} MB)"
    )
    header = f"{'route':<10}{'n':>4}" + "".join(f"{s:>18}" for s in STAGES)
    print(header)
    for route, data in summary["by_route"].items():
        cells = []
        for stage in STAGES:
            st = data["stages_ms"][stage]
            cells.append(f"{'-' if st['p50'] is None else st['p50']:>9} /{'-' if st['p90'] is None else st['p90']:>7}")
        print(f"{route:<10}{data['turns']:>4}" + "".join(f"{c:>18}" for c in cells))
    for key, what in (
        ("silent_from_sound", f"caller's first sound → bot silent at their ear (pause + {SENT_AHEAD_MS} ms held)"),
        ("pause", "VAD onset → bot stops sending"),
        ("barge_in_from_sound", "caller's first sound → clear, once Whisper read real words"),
        ("barge_in", "VAD onset → clear"),
    ):
        barge = summary["barge_in_ms"][key]
        print(f"talked over ({what}): p50 {barge['p50']} ms, p90 {barge['p90']} ms, n={barge['n']}")
    for name, verdict in report["targets"].items():
        state = {True: "met", False: "MISSED", None: "not measured"}[verdict["met"]]
        print(f"target {name:<9} < {verdict['target_ms']:.0f} ms: p50 {verdict['p50_ms']} ms  {state}")
