"""A real PostgreSQL server (Debian's `postgresql` package) for tests: initdb in a temporary
directory, started on a free port on 127.0.0.1, trust authentication, stopped at the end.

Run as root (as CI does), the server runs as the `postgres` user (initdb refuses root). Tests can
stop and restart it (`stop()`, `start()`) to play a database outage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

INITDB = Path("/usr/lib/postgresql/15/bin/initdb")  # Debian bookworm's `postgresql` (scripts/sysdeps.txt)


def find_bin_dir() -> Path:
    """PostgreSQL's server binaries. Fails naming the package when it is missing, and skips only
    where nothing can be installed (tests/helpers/sysdeps.py: the one rule for system peers)."""
    from tests.helpers.sysdeps import require_file

    return require_file(INITDB).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, check=False)

    def init(self) -> None:
        done = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = str(self.bin_dir / "pg_ctl")
        done = self._run(
            pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        if done.returncode != 0:
            raise RuntimeError(f"postgres did not start: {done.stderr.strip()[-300:]} {self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-500:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        psql = str(self.bin_dir / "psql")
        where = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        done = self._run(psql, *where, "-c", f"CREATE DATABASE {name}")
        if done.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {done.stderr.strip()}")
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
