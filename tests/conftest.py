"""Fixtures that start real servers: the local broker, PostgreSQL, and an HTTP server for Slack.

Set ``HYBRIDSPEND_TEST_KAFKA`` (host:port) or ``HYBRIDSPEND_TEST_DSN`` to run against external
services instead of the embedded ones.  Every server listens on a free port; every test gets its
own topic prefix and its own database, so tests never see each other's data.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from infra.broker import KAFKA_PROFILE, LOCAL_PROFILE, BrokerProfile
from infra.local import LocalBroker, LocalPostgres

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class BrokerHandle:
    bootstrap: str
    profile: BrokerProfile


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    external = os.environ.get("HYBRIDSPEND_TEST_KAFKA")
    if external:
        yield BrokerHandle(external, KAFKA_PROFILE)
        return
    local = LocalBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log").start()
    try:
        yield BrokerHandle(local.bootstrap, LOCAL_PROFILE)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """(admin DSN, server handle or None when external)."""
    external = os.environ.get("HYBRIDSPEND_TEST_DSN")
    if external:
        yield external, None
        return
    pg = LocalPostgres(Path("/tmp") / f"hs-test-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True,
                       database="postgres").start()
    try:
        yield pg.dsn, pg
    finally:
        pg.stop()


@pytest.fixture
def database(postgres_server):
    """A fresh, empty database for one test; its DSN."""
    admin_dsn, _ = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    yield dsn
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def topic_prefix():
    return f"t{uuid.uuid4().hex[:8]}."


@dataclass
class SlackReceiver:
    """A local HTTP server standing in for Slack's incoming-webhook endpoint."""

    url: str
    posts: list[dict] = field(default_factory=list)
    # scripted answers, consumed one per request: (status, headers); then 200
    answers: list[tuple[int, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout_s: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.posts) >= count:
                    return list(self.posts)
            time.sleep(0.1)
        with self.lock:
            return list(self.posts)


@pytest.fixture
def slack():
    receiver = SlackReceiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                if status == 200:
                    receiver.posts.append({"path": self.path, "body": json.loads(body)})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"error")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def consume(bootstrap: str, topic: str, decode) -> list:
    """Every event on a topic from the beginning, decoded (a consumer without a group)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=2500)
    events = [decode(m.value) for m in consumer]
    consumer.close()
    return events
