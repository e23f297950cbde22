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

from hybridspend.infra.broker import KAFKA_PROFILE, LOCAL_PROFILE, BrokerProfile
from hybridspend.infra.local import LocalBroker, LocalPostgres
from tests.timescale import timescale_database, timescale_server  # noqa: F401  (TimescaleDB fixtures)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_working_tree():
    """Faust writes its data directory (``<app id>-data/``) into the current directory unless told
    otherwise; every app here keeps it under the state directory.  Fails the session if a test's
    worker wrote one into the working tree (or the directory pytest runs in)."""
    places = {ROOT, Path.cwd()}
    before = {p for place in places for p in place.glob("*-data")}
    yield
    written = sorted(str(p) for place in places for p in place.glob("*-data") if p not in before)
    assert not written, f"the tests wrote Faust data directories into the working tree: {written}"


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


@dataclass
class HttpPages:
    """A local HTTP server: ``pages[path] = (status, body)`` for GET; ``handlers[path] = fn(query) -> (status,
    body)`` for computed answers (path without the query string); every request's path is kept in ``requests``."""

    url: str = ""
    pages: dict = field(default_factory=dict)
    handlers: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)


@pytest.fixture
def http_pages():
    from urllib.parse import parse_qs, urlsplit

    served = HttpPages()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            served.requests.append(self.path)
            parts = urlsplit(self.path)
            if parts.path in served.handlers:
                status, body = served.handlers[parts.path](parse_qs(parts.query))
            else:
                status, body = served.pages.get(self.path, (404, "not found"))
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


def pytest_collection_modifyitems(items) -> None:
    """The files with slow tests first: `make test` runs the files on three workers (``--dist loadfile``), and a
    long test started last would run alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def consume(bootstrap: str, topic: str, decode) -> list:
    """Every event on a topic from its start to its end as of now, decoded (a consumer without a group).

    Read up to the end offsets, then polled a little longer: Tansu may report an end offset a little
    behind a batched produce (docs/design.md, "Broker profiles")."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        wait_until(lambda: consumer.partitions_for_topic(topic), 10, f"topic {topic}", interval_s=0.05)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        events: list = []
        deadline, settled = time.monotonic() + 60, None
        while settled is None or time.monotonic() < settled:
            polled = consumer.poll(timeout_ms=100)
            events.extend(decode(r.value) for records in polled.values() for r in records)
            if settled is None and all(consumer.position(tp) >= end[tp] for tp in partitions):
                settled = time.monotonic() + 0.3
            assert time.monotonic() < deadline, f"{topic}: not read to its end in 60 s"
        return events
    finally:
        consumer.close()


# -- waiting for what the code under test does: poll a condition, never sleep a fixed time -----------


def wait_until(predicate, timeout_s: float = 60, what: str = "condition", interval_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy, and return that; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def eventually(assertion, timeout_s: float = 60, interval_s: float = 0.2):
    """Run ``assertion`` (a function that asserts) until it passes; after ``timeout_s`` its last failure is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return assertion()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval_s)


# -- `pytest -m "not integration"` is the unit run: a test that starts a server must say so -----------

SERVER_FIXTURES = {"broker", "postgres_server", "database", "slack", "http_pages", "timescale_server",
                   "timescale_database"}


def pytest_runtest_setup(item):
    servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if servers and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} starts a server ({', '.join(sorted(servers))}) but is not marked "
                    "@pytest.mark.integration", pytrace=False)
