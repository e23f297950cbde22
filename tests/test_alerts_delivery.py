"""Alert delivery through the outbox against a local HTTP server standing in for Slack: a 429 with
Retry-After, a 500, and Slack down for a while all end with every alert delivered exactly once."""

from __future__ import annotations

import http.server
import json
import threading
import time
from decimal import Decimal as D

import psycopg
import pytest
from psycopg.rows import dict_row
import yaml

from hybridspend.alerts.alerter import Alerter
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import BreakevenDecision
from hybridspend.infra.local import free_port
from hybridspend.storage.db import migrate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def decision(i: int) -> BreakevenDecision:
    return BreakevenDecision(
        event_id=f"d{i}", workload=f"team-{i}/train", team="ml", from_env="onprem", to_env="cloud",
        kind="migrate_to_cloud", gpu_class="A100", window_start_ms=0, window_end_ms=i, current_usd_per_busy_gpu_hour=D("5"),
        alternative_usd_per_busy_gpu_hour=D("3"), utilization=D("0.2"), monthly_savings_usd=D(1000 * i),
        confidence=D("1"), alternative_label="aws", gpus_needed=1, reason="test")


def alerter_for(tmp_path, database, url: str, monkeypatch) -> Alerter:
    monkeypatch.setenv("TEST_HOOK", url)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"alerts": {"routes": [
        {"name": "platform", "audience": "platform", "slack_webhook_url": {"env": "TEST_HOOK"}}]}}))
    migrate(database)
    return Alerter(load_config(tmp_path / "c.yaml", {}), database, say=lambda m: None)


def deliver_until_done(alerter: Alerter, timeout_s: float = 30) -> None:
    wait_until(lambda: alerter.deliver_pending() is not None and alerter.pending_count() == 0, timeout_s,
               "every alert delivered")


def test_429_with_retry_after_and_500_are_retried_and_each_alert_arrives_once(tmp_path, database, slack,
                                                                            monkeypatch):
    slack.answers = [(429, {"Retry-After": "2"}), (500, {})]
    alerter = alerter_for(tmp_path, database, slack.url + "/hook", monkeypatch)
    assert alerter.enqueue([decision(1), decision(2), decision(3)]) == 3
    assert alerter.enqueue([decision(1)]) == 0  # the dedupe key: the same decision is queued once
    started = time.monotonic()
    alerter.deliver_pending()  # d1 -> 429 (retry in 2 s), d2 -> 500 (backoff), d3 -> 200
    deliver_until_done(alerter)
    assert alerter.pending_count() == 0
    texts = sorted(p["body"]["text"].split(":")[1].split("(")[0].strip() for p in slack.wait_for(3))
    assert texts == ["team-1/train", "team-2/train", "team-3/train"]  # each exactly once
    assert time.monotonic() - started >= 2  # the 429's Retry-After was honoured
    with psycopg.connect(database, row_factory=dict_row) as conn:
        log = conn.execute("SELECT alert_id, status, detail FROM alert_log ORDER BY id").fetchall()
        attempts = {r["decision_id"]: r["attempts"] for r in conn.execute(
            "SELECT decision_id, attempts FROM alert_outbox").fetchall()}
    assert attempts == {"d1": 2, "d2": 2, "d3": 1}
    assert [row["status"] for row in log].count("retry") == 2 and "HTTP 429" in log[0]["detail"]


@pytest.mark.slow
def test_slack_down_for_a_while_then_back_delivers_everything_once(tmp_path, database, monkeypatch):
    port = free_port()
    received: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    alerter = alerter_for(tmp_path, database, f"http://127.0.0.1:{port}/hook", monkeypatch)
    alerter.enqueue([decision(i) for i in range(1, 6)])
    for _ in range(3):  # Slack is down: connection refused, every attempt is kept for later
        alerter.deliver_pending()
        with psycopg.connect(database) as conn:
            conn.execute("UPDATE alert_outbox SET next_attempt_at = now()")  # do not wait out the backoff
    assert alerter.pending_count() == 5 and received == []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with psycopg.connect(database) as conn:
            conn.execute("UPDATE alert_outbox SET next_attempt_at = now()")
        deliver_until_done(alerter)
        # a restart of the alerter finds nothing left to send
        again = alerter_for(tmp_path, database, f"http://127.0.0.1:{port}/hook", monkeypatch)
        assert again.deliver_pending() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(received) == sorted({t for t in received}) and len(received) == 5


def test_a_dry_run_prints_pending_alerts_once_and_leaves_them_for_the_real_alerter(tmp_path, database, slack,
                                                                                   monkeypatch):
    real = alerter_for(tmp_path, database, slack.url, monkeypatch)
    assert real.enqueue([decision(i) for i in range(1, 61)]) == 60  # more than one claim of 50
    printed = []
    dry = Alerter(real.config, database, say=printed.append, dry_run=True)
    dry.deliver_pending()
    dry.deliver_pending()  # a second loop of the dry run prints nothing again
    assert len(printed) == 60 and all(p.startswith("[dry-run, not sent: platform]") for p in printed)
    assert dry.pending_count() == 60 and slack.posts == []  # nothing marked delivered, nothing posted
    assert real.enqueue([decision(61)]) == 1
    dry.deliver_pending()
    assert len(printed) == 61  # a new alert is shown on the next loop
    deliver_until_done(real)
    assert len(slack.posts) == 61  # the real alerter still delivers every one


@pytest.mark.parametrize("header", ["1e308", "inf", "-inf", "nan", "-5", "soon"])
def test_a_hostile_retry_after_is_bounded_and_the_retry_is_stored(tmp_path, database, slack, monkeypatch, header):
    slack.answers = [(429, {"Retry-After": header})]
    alerter = alerter_for(tmp_path, database, slack.url, monkeypatch)
    alerter.enqueue([decision(1)])
    alerter.deliver_pending()  # the 429: a retry scheduled, not an error from the database
    with psycopg.connect(database) as conn:
        attempts, wait_s = conn.execute(
            "SELECT attempts, extract(epoch FROM next_attempt_at - now()) FROM alert_outbox").fetchone()
    # a number is clamped to [0, 300] s; inf, nan and text fall back to the first backoff, 0.5 s
    assert attempts == 1 and -1 <= wait_s <= 300
