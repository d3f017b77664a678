"""`make demo`: a real `voicebot serve` answering a simulated Twilio call, end to end, on this machine.

Starts the server as its own process (embedded models, the sample knowledge base, a fresh SQLite file), waits
until it is healthy, calls it through the Twilio client simulator with a recorded sample call in real time,
prints the conversation with the latency of every turn, writes what the caller heard, and stops the server
with SIGTERM the way a process manager would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from telephony.simulator import Endpoint, simulate_call
from voicebot.cli import print_call
from voicebot.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Poll /healthz until the server has loaded and warmed its models."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"voicebot serve exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"voicebot serve was not healthy at {url}/healthz within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telephony.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--call", type=Path, default=ROOT / "samples/calls/multi_turn.wav", help="the caller")
    parser.add_argument("--out", type=Path, default=ROOT / "var/demo", help="folder for the db, log and audio")
    parser.add_argument("--speed", type=float, default=1.0, help="1 is real time (default)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "demo.db"
    db.unlink(missing_ok=True)
    port, media_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "VOICEBOT_PUBLIC_URL")}
    log_path = args.out / "server.log"
    command = [
        sys.executable,
        "-m",
        "voicebot",
        "serve",
        "--port",
        str(port),
        "--media-port",
        str(media_port),
        "--kb",
        str(ROOT / "samples/kb.json"),
        "--db",
        str(db),
    ]
    print(f"$ voicebot serve --port {port} --media-port {media_port} --db {db}   (log: {log_path})")
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            started = time.monotonic()
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            print(f"server ready in {time.monotonic() - started:.1f} s (models loaded and warmed)")
            heard = args.out / "heard.wav"
            print(f"calling it like Twilio does with {args.call.name} (speed {args.speed}x)...\n")
            call = asyncio.run(simulate_call(Endpoint(url), args.call, speed=args.speed, heard_wav=heard))
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
    with open_store(str(db)) as store:
        record = store.get_call(call.call_sid)
    if record is None:
        print(f"the server kept no record of {call.call_sid}; see {log_path}", file=sys.stderr)
        return 1
    print_call(record)
    firsts = [u.first_audio_ms for u in call.latencies if u.first_audio_ms is not None]
    print(
        f"\nmeasured at the caller's end: first bot audio {', '.join(f'{ms:.0f}' for ms in firsts)} ms after "
        f"each utterance ended; audio chunks {min(call.chunk_ms or [0]):.0f}-{max(call.chunk_ms or [0]):.0f} ms, "
        f"at most {call.lead_ms(1.0):.0f} ms buffered ahead"
    )
    print(f"what the caller heard: {heard}")
    print(f"server stopped with code {code} after SIGTERM")
    (args.out / "call.json").write_text(json.dumps(record, indent=2))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
