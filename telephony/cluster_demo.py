"""`make cluster-demo`: the scale-out topology on one machine, without containers.

PostgreSQL (a throwaway cluster of its own), the shared LLM server (`voicebot llm-serve`) and two `voicebot serve`
workers, all on loopback and configured the way a deployment configures them: through environment variables.
Simulated Twilio calls go to both workers at once; their records and tickets land in the one database, and
`voicebot calls list` / `voicebot tickets list`, run with each worker's settings, read the same rows back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from telephony.demo import ROOT, free_port, wait_healthy
from telephony.local_postgres import PostgresServer, server_programs
from telephony.simulator import Endpoint, SimulatedCall, simulate_call
from voicebot.config import ModelSettings
from voicebot.llm_endpoint import EndpointChat
from voicebot.store import open_store

CALLS = (ROOT / "samples/calls/complaint_ticket.wav", ROOT / "samples/calls/out_of_scope.wav")
# Variables of ours that would point the cluster elsewhere: each process gets the cluster's own.
NOT_INHERITED = ("TWILIO_AUTH_TOKEN", "VOICEBOT_PUBLIC_URL", "VOICEBOT_STORE_URL", "VOICEBOT_MODELS_LLM_URL")


@dataclass
class Worker:
    name: str
    env: dict[str, str]  # what a deployment would set on this worker (store URL, LLM URL, spool)
    url: str
    process: subprocess.Popen
    log: Path


@dataclass
class Cluster:
    """The running topology: `start_cluster` yields one, and stops every process on the way out."""

    folder: Path
    database_url: str
    llm_url: str
    workers: list[Worker] = field(default_factory=list)

    def cli(self, worker: Worker, *args: str) -> str:
        """A `voicebot` command run with `worker`'s settings (as an operator on that box would); its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "voicebot", *args],
            env=worker.env,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"voicebot {' '.join(args)} on {worker.name} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _stop(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def start_cluster(folder: Path, *, workers: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """PostgreSQL, the LLM server and `workers` workers, up and healthy; `extra_env` goes to every worker."""
    programs = server_programs()
    if programs is None:
        raise RuntimeError("PostgreSQL's server programs are not installed: `make postgres` (Debian's postgresql)")
    # A folder of its own: as root the server runs as `postgres`, which may not enter `folder`.
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="voicebot-cluster-postgres-")), programs)
    processes: list[subprocess.Popen] = []
    base = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    try:
        postgres.start()
        database_url = postgres.new_database("voicebot")
        llm_port, api_key = free_port(), secrets.token_urlsafe(16)
        llm_env = {**base, "VOICEBOT_MODELS_LLM_API_KEY": api_key}
        llm_log = folder / "llm-server.log"
        llm = _spawn([sys.executable, "-m", "voicebot", "llm-serve", "--port", str(llm_port)], llm_env, llm_log)
        processes.append(llm)
        llm_url = f"http://127.0.0.1:{llm_port}/v1"
        cluster = Cluster(folder, database_url, llm_url)
        for n in range(1, workers + 1):
            env = {
                **base,
                **(extra_env or {}),
                "VOICEBOT_STORE_URL": database_url,
                "VOICEBOT_STORE_SPOOL_PATH": str(folder / f"worker{n}.spool"),
                "VOICEBOT_MODELS_LLM_URL": llm_url,
                "VOICEBOT_MODELS_LLM_API_KEY": api_key,
                "VOICEBOT_MODELS_LLM_TIMEOUT_S": "300",  # the workers start while the LLM server loads
            }
            port, media_port = free_port(), free_port()
            log = folder / f"worker{n}.log"
            command = [sys.executable, "-m", "voicebot", "serve", "--port", str(port), "--media-port", str(media_port)]
            process = _spawn([*command, "--kb", str(ROOT / "samples/kb.json")], env, log)
            processes.append(process)
            cluster.workers.append(Worker(f"worker {n}", env, f"http://127.0.0.1:{port}", process, log))
        # The server answers /models once its model is loaded (the workers' own start-up waits for it too).
        EndpointChat.connect(ModelSettings(llm_url=llm_url, llm_api_key=api_key, llm_timeout_s=300))
        for worker in cluster.workers:
            try:
                wait_healthy(worker.url, worker.process)
            except RuntimeError as exc:
                tail = worker.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{worker.name}: {exc}; the end of its log, {worker.log}:\n{tail}") from exc
        yield cluster
    finally:
        for process in reversed(processes):  # workers first: they drain their calls and close the store
            _stop(process)
        postgres.stop()
        shutil.rmtree(postgres.folder, ignore_errors=True)


async def call_both(
    cluster: Cluster, calls: list[Path], *, speed: float, quiet_ms: int = 1500
) -> list[tuple[Worker, SimulatedCall]]:
    """The calls at once, dealt to the workers in turn: call i goes to worker i mod N. Each caller hangs up once
    the bot has been quiet for `quiet_ms` after their recording."""
    placed = [(cluster.workers[i % len(cluster.workers)], wav) for i, wav in enumerate(calls)]
    results = await asyncio.gather(
        *(simulate_call(Endpoint(w.url), wav, speed=speed, quiet_ms=quiet_ms) for w, wav in placed)
    )
    return [(worker, call) for (worker, _), call in zip(placed, results, strict=True)]


def records(cluster: Cluster, worker: Worker) -> tuple[list[dict], list[dict]]:
    """The calls and tickets `voicebot calls list --json` / `tickets list --json` print with `worker`'s settings."""
    calls = json.loads(cluster.cli(worker, "calls", "list", "--json"))
    tickets = json.loads(cluster.cli(worker, "tickets", "list", "--json"))
    return calls, tickets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telephony.cluster_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one call per worker at once (default 2)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 is real time (default)")
    parser.add_argument("--keep", action="store_true", help="keep the folder with the logs (printed at the end)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="voicebot-cluster-"))
    started = time.monotonic()
    try:
        print("starting PostgreSQL, the LLM server (voicebot llm-serve) and two workers (voicebot serve)...")
        with start_cluster(folder) as cluster:
            ready_s = time.monotonic() - started
            print(f"ready in {ready_s:.0f} s: database {cluster.database_url}, LLM server {cluster.llm_url}")
            for worker in cluster.workers:
                print(f"  {worker.name}: {worker.url} (log {worker.log.name})")
            for round_number in range(args.rounds):
                calls = [CALLS[(round_number + i) % len(CALLS)] for i in range(len(cluster.workers))]
                dealt = ", ".join(f"{c.stem} -> worker {i + 1}" for i, c in enumerate(calls))
                print(f"\nround {round_number + 1}, at once: {dealt}")
                for worker, call in asyncio.run(call_both(cluster, calls, speed=args.speed)):
                    firsts = ", ".join(f"{u.first_audio_ms:.0f}" for u in call.latencies if u.first_audio_ms)
                    with open_store(cluster.database_url, create=False) as store:
                        record = store.get_call(call.call_sid) or {"turns": []}
                    routes = ", ".join(str(turn["route"]) for turn in record["turns"]) or "no turns"
                    print(f"  {worker.name}: {call.call_sid} ({routes}), first bot audio {firsts or '-'} ms")
            first, *others = cluster.workers
            print(f"\n$ voicebot calls list      (with {first.name}'s settings)")
            print(cluster.cli(first, "calls", "list"), end="")
            print(f"$ voicebot tickets list    (with {first.name}'s settings)")
            print(cluster.cli(first, "tickets", "list"), end="")
            seen = records(cluster, first)
            for worker in others:
                same = "the same" if records(cluster, worker) == seen else "DIFFERENT"
                print(f"{worker.name} reads {same} {len(seen[0])} calls and {len(seen[1])} tickets from the database")
        print(f"\nall stopped; {time.monotonic() - started:.0f} s in all")
        return 0
    finally:
        if args.keep:
            print(f"logs: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
