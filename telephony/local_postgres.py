"""A throwaway PostgreSQL server for the store tests and `make cluster-demo`: its own cluster in a folder, on a
free loopback port, trusting local connections, stopped at the end. It needs PostgreSQL's server programs
(Debian's `postgresql` package, which `make postgres` installs); PostgreSQL refuses to run as root, so as root it
runs as the `postgres` user the package creates."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from telephony.demo import free_port

SERVER_USER = "postgres"


def server_programs() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PostgresServer:
    """`start()` initialises and starts the cluster; `new_database()` gives each test an empty database.

    As root, `folder` is handed to the server's user, so it must be a folder of its own that user can reach (not
    inside another private temporary folder)."""

    def __init__(self, folder: Path, programs: Path) -> None:
        self.folder, self.programs = folder, programs
        self.data = folder / "data"
        self.port = free_port()
        self._as_server_user: list[str] = []
        self._names = itertools.count(1)
        self.running = False

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_server_user, *command], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, SERVER_USER)
            self._as_server_user = ["runuser", "-u", SERVER_USER, "--"]
        self._run(str(self.programs / "initdb"), "-D", str(self.data), "-A", "trust", "-U", SERVER_USER, "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = self.folder / "server.log"
        self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")
        self.running = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str = "") -> str:
        """Create an empty database (a fresh name by default) and return its URL."""
        name = name or f"voicebot_test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server if it was started (a no-op otherwise, so a failed start can be cleaned up the same way)."""
        if not self.running:
            return
        self.running = False
        self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
