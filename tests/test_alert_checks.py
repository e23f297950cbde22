"""Alerts beyond crossings: budgets and forecasts, idle capacity;
cooldown and escalation in the outbox; a bot token posting through chat.postMessage."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime, timezone
from decimal import Decimal as D
from urllib.parse import parse_qs

import psycopg
import pytest
import yaml

from hybridspend.alerts.alerter import Alerter
from hybridspend.alerts.checks import Figures, budget_notices, idle_notices
from hybridspend.contracts.config import ConfigError, load_config
from hybridspend.contracts.events import CostWindow
from hybridspend.storage.db import migrate, sync_budgets
from hybridspend.storage.sink import Batch, cost_window_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions
from tests.conftest import wait_until

NOW = datetime(2026, 11, 11, 0, tzinfo=timezone.utc)  # 10 days into a 30-day month
HOUR_MS = 3_600_000


def test_budget_forecast_then_80_then_100_percent_escalate():
    def severity(spent):
        (n,) = budget_notices(Figures(now=NOW, team_month=[("ml", D(spent), D(3000))])) or [None]
        return n and n.severity

    # 10 of 30 days gone: $900 spent forecasts $2,700 (under), $1,200 forecasts $3,600 (over)
    assert severity(900) is None
    assert severity(1200) == 1
    assert severity(2400) == 2 and severity(3000) == 3
    (n,) = budget_notices(Figures(now=NOW, team_month=[("ml", D(1200), D(3000))]))
    assert n.subject == "budget|ml|2026-11" and n.audience == "finance"
    assert "forecast for November: $3,600.00" in n.text


def test_with_a_forecast_the_budget_notice_fires_on_the_chance_of_exceeding_it():
    from hybridspend.alerts.checks import BudgetForecast

    def notices(probability, spent=1200):
        fc = BudgetForecast(D(3400), D(3100), D(3800), D(probability), "MSTL(season_length=[24, 168]), calibrated")
        return budget_notices(Figures(now=NOW, team_month=[("ml", D(spent), D(3000))], team_forecasts={"ml": fc}),
                              D("0.8"))

    # the straight line says $3,600 (over), but the seasonal forecast gives only 70 %: no notice
    assert notices("0.7") == []
    (n,) = notices("0.85")
    assert n.severity == 1 and n.title == "Budget: ml is on course to exceed its monthly budget"
    assert ("85% likely to exceed it; November forecast $3,400.00 (80 %: $3,100.00 to $3,800.00, "
            "MSTL(season_length=[24, 168]), calibrated)") in n.text
    assert ("Chance to exceed", "85%") in n.fields and ("Forecast", "$3,400.00 (80 %: $3,100.00 to $3,800.00)") in n.fields
    # spending 80 % of the budget escalates whatever the forecast says, and carries it
    (n,) = notices("0.1", spent=2400)
    assert n.severity == 2 and "10% likely to exceed it" in n.text


def test_idle_capacity():
    (n,) = idle_notices(Figures(now=NOW, idle=[("A100", D(2500)), ("H100", D(10))]), D(1000))
    assert n.subject == "idle|A100" and n.severity == 2 and n.audience == "platform"


def _seed(dsn: str, team: str, spent_per_hour: D, hours: int, idle_per_hour: D = D(0)) -> None:
    migrate(dsn)
    batch = Batch()
    start = int(NOW.timestamp() * 1000) - hours * HOUR_MS
    for h in range(hours):
        ws = start + h * HOUR_MS
        for workload, cost in (("train", spent_per_hour), ("idle", idle_per_hour)):
            batch.add("cost_windows", cost_window_row(CostWindow(
                event_id=f"{workload}{ws}", workload=workload, team=team if workload != "idle" else "",
                allow_spot=False, environment="onprem", gpu_class="A100", resource="node-1", window_start_ms=ws,
                window_ms=HOUR_MS, allocated_gpu_ms=HOUR_MS, busy_gpu_ms=HOUR_MS // 2, metered_gpu_ms=0,
                energy_mj=0, sample_count=60, first_ms=ws, last_ms=ws + HOUR_MS, cost_usd=cost)))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL), careful=True)  # seeded twice: same samples


def _alerter(tmp_path, dsn: str, **alerts) -> Alerter:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"budgets": {"<!channel> ml": 3000}, "alerts": {
        "routes": [{"name": "fin", "audience": "finance"}, {"name": "ops", "audience": "platform"}], **alerts}}))
    config = load_config(path, {})
    migrate(dsn)
    sync_budgets(dsn, config.budgets)
    return Alerter(config, dsn, say=lambda m: None)


def _outbox(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT route, subject, severity, payload->>'text' FROM alert_outbox"
                            " ORDER BY created_at, alert_id").fetchall()


@pytest.mark.integration
def test_checks_on_stored_data_route_dedupe_within_the_cooldown_and_renotify_on_escalation(tmp_path, database):
    team = "<!channel> ml"  # a hostile team name from a cluster label
    _seed(database, team, D(5), 240, idle_per_hour=D(50))  # 10 days x 24 h x $5 = $1,200: forecast $3,600
    alerter = _alerter(tmp_path, database)
    assert alerter.run_checks() == 2  # budget forecast (finance), idle A100 $1,200/24 h (ops)
    rows = _outbox(database)
    assert sorted((r[0], r[1].split("|")[0], r[2]) for r in rows) == [("fin", "budget", 1), ("ops", "idle", 1)]
    budget_text = next(r[3] for r in rows if r[1].startswith("budget"))
    assert "&lt;!channel&gt; ml" in budget_text and "<!channel>" not in budget_text  # cannot ping anyone
    assert alerter.run_checks() == 0  # the same again within the cooldown: nothing
    # the team keeps spending: 80 % of the budget is an escalation and is sent at once
    _seed(database, team, D(10), 240, idle_per_hour=D(50))
    assert alerter.run_checks() == 1
    assert _outbox(database)[-1][:3] == ("fin", f"budget|{team}|2026-11", 2)
    alerter.deliver_pending()
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0] == 0
    # with no cooldown, the same notice is queued again
    again = _alerter(tmp_path, database, checks={"cooldown_hours": 0})
    assert again.run_checks() == 2


class SlackApi:
    """A stand-in for Slack's Web API: chat.postMessage, answering from a script."""

    def __init__(self, answers: list[tuple[int, dict, dict]]) -> None:
        self.answers = answers
        self.calls: list[dict] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                body = json.loads(raw) if self.headers.get("Content-Type", "").startswith("application/json") \
                    else {k: v[0] for k, v in parse_qs(raw).items()}
                status, headers, answer = api.answers.pop(0) if api.answers else (200, {}, {"ok": True})
                api.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                  "status": status})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"


@pytest.mark.integration
def test_bot_token_posts_with_chat_post_message_honouring_429_and_slack_errors(tmp_path, database, monkeypatch):
    api = SlackApi([(429, {"Retry-After": "1"}, {"ok": False, "error": "ratelimited"}),
                    (200, {}, {"ok": False, "error": "internal_error"})])
    monkeypatch.setenv("TEST_BOT_TOKEN", "xoxb-test-token")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"routes": [{
        "name": "ops", "audience": "platform", "slack_bot_token": {"env": "TEST_BOT_TOKEN"},
        "slack_channel": "#gpu-spend", "slack_api_url": api.url}]}}))
    migrate(database)
    alerter = Alerter(load_config(path, {}), database, say=lambda m: None)
    from hybridspend.alerts.checks import Notice

    assert alerter.enqueue_notices([Notice("idle|A100", 1, "platform", "Idle", "Idle capacity: A100")]) == 1
    wait_until(lambda: alerter.deliver_pending() is not None and alerter.pending_count() == 0, 20,
               "every alert delivered")
    assert [c["status"] for c in api.calls] == [429, 200, 200]  # rate limited, Slack's error, then ok
    assert all(c["path"] == "/api/chat.postMessage" and c["auth"] == "Bearer xoxb-test-token" for c in api.calls)
    assert api.calls[-1]["body"]["channel"] == "#gpu-spend" and api.calls[-1]["body"]["text"] == "Idle capacity: A100"
    with psycopg.connect(database) as conn:
        log = [r[0] for r in conn.execute("SELECT detail FROM alert_log ORDER BY id")]
    assert "ratelimited" in log[0] and "internal_error" in log[1] and "xoxb" not in " ".join(log)


def test_a_route_takes_a_webhook_or_a_bot_token_with_a_channel(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"routes": [{
        "name": "ops", "audience": "platform", "slack_bot_token": {"env": "X"}}]}}))
    with pytest.raises(ConfigError, match="slack_bot_token and slack_channel go together"):
        load_config(path, {})
