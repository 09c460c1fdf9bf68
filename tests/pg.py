"""A real PostgreSQL server for tests: its own cluster in a temp folder, on a free loopback port.

Debian's ``postgresql`` package provides the programs (``scripts/setup.sh
--dev`` installs it). PostgreSQL refuses to run as root, so as root the
cluster belongs to the ``postgres`` user and every program runs through
``runuser``. Stopped by ``pg_ctl stop -m immediate``, then by the postmaster's
PID if that fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from tests.peers import free_port

__all__ = ["PostgresServer", "pg_bin"]


def pg_bin(program: str) -> str | None:
    """A PostgreSQL program: on PATH, or in Debian's versioned folder."""
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.sockets = folder / "sockets"
        self.port = free_port()
        self._root = os.geteuid() == 0
        self._databases = 0

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", "postgres", "--", *args] if self._root else list(args)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> PostgresServer:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError("PostgreSQL is not installed (Debian: postgresql)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._root:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.resume()
        return self

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL (no password: trust on loopback)."""
        self._databases += 1
        name = f"t{self._databases}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def pause(self) -> None:
        """Stop the server (fast shutdown), keeping its data: an outage."""
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server on its port (at :meth:`start`, and again after :meth:`pause`)."""
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        self._run(
            pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        try:
            if pg_ctl is not None:
                self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)
                time.sleep(0.5)
        shutil.rmtree(self.folder, ignore_errors=True)
