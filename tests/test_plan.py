"""`hybridspend plan WORKLOAD`: the options table from stored cost windows, against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest
import yaml

from hybridspend.contracts.events import CostWindow
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_window_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = int(datetime(2026, 10, 5, tzinfo=timezone.utc).timestamp() * 1000)  # event time: a fixed day is fine

# one 8-GPU p4d.24xlarge of "embed" for 24 hours, 8 GPUs allocated and 6 busy every hour, costing 32.00
# an hour (4.00 an allocated GPU-hour); and 16 GPUs for 8 of the hours (a second instance)
CONFIG = {
    "onprem_assets": [{
        "name": "dgx", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 16,
        "gpus_per_node": 8, "hosts": ["dgx-*"], "purchase_price_usd_per_node": 200_000,
        "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1.0,
        "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 7008}],  # 876 a GPU a year
    "cloud_offers": [{
        "provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
        "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 32, "reserved": 19.2}}],
}


def _windows() -> list[CostWindow]:
    out = []
    for hour in range(24):
        for instance in ("i-1", "i-2") if hour >= 16 else ("i-1",):
            start = DAY_MS + hour * 3_600_000
            out.append(CostWindow(
                event_id=CostWindow.make_id(instance, "embed", "cloud", "A100", start), workload="embed", team="ml",
                environment="cloud", gpu_class="A100", resource=instance, window_start_ms=start, window_ms=3_600_000,
                allocated_gpu_ms=8 * 3_600_000, busy_gpu_ms=6 * 3_600_000, metered_gpu_ms=8 * 3_600_000, energy_mj=0,
                sample_count=60, first_ms=start, last_ms=start + 3_600_000, cost_usd=D(32), provider="aws",
                instance_type="p4d.24xlarge"))
    return out


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridspend.cli", "plan", *args, "--config",
                           str(tmp_path / "c.yaml")], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_plan_reads_the_stored_hours_and_prices_every_option(tmp_path, database):
    migrate(database)
    batch = Batch()
    for w in _windows():
        batch.add("cost_windows", cost_window_row(w))
    with psycopg.connect(database) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**CONFIG, "database": {"dsn": database}}))

    proc = plan(tmp_path, "embed", "--since", "2026-10-05", "--until", "2026-10-06", "--discount-rate-pct", "0",
                "--json")
    assert proc.returncode == 0, proc.stderr
    (only,) = json.loads(proc.stdout)["plans"]
    assert (only["environment"], only["gpu_class"], only["hours"], only["horizon_months"]) == ("cloud", "A100", 24, 36)
    by = {o["option"]: o for o in only["options"]}
    # staying: (16 x 32 + 8 x 64) / 24 x 730 = 31,146.666667 a month
    assert D(by["stay"]["monthly_usd"]) == D("31146.666667")
    # one reserved instance for the 8-GPU floor: (19.20 + 8 x 8 / 24 x 4.00) x 730 = 21,802.666667
    assert by["commitment"]["quantity"] == 1 and D(by["commitment"]["monthly_usd"]) == D("21802.666667")
    # two nodes: 400,000 up front, (0.05 + 0.10) x 16 x 730 = 1,752 a month; total 463,072; overtakes in month 14
    assert (by["buy"]["quantity"], D(by["buy"]["total_usd"]), by["buy"]["breakeven_month"]) == (2, 463_072, 14)
    assert only["cheapest"] == "buy 2 x dgx node (8 GPUs each)"

    what_if = json.loads(plan(tmp_path, "embed", "--since", "2026-10-05", "--until", "2026-10-06", "--gpus", "8",
                              "--horizon-months", "12", "--json").stdout)["plans"][0]
    # 8 GPUs every hour at 4.00: 23,360 a month staying; one reserved instance, 14,016, beats a node over a year
    by = {o["option"]: o for o in what_if["options"]}
    assert D(by["stay"]["monthly_usd"]) == 23_360 and what_if["horizon_months"] == 12
    assert what_if["cheapest"] == "commit 1 x aws us-east-1 p4d.24xlarge (reserved)"

    text = plan(tmp_path, "embed", "--since", "2026-10-05", "--until", "2026-10-06")
    assert "embed on cloud A100: 24 measured hours, repeated over 36 months" in text.stdout
    assert "cheapest by present value: buy 2 x dgx node (8 GPUs each)" in text.stdout

    # moving it costs 5,000 GB x 0.09 (AWS egress, the default list price) + 20,000 of work = 20,450 once,
    # and 1,000 GB left behind in S3 read out every month, 90 a month: buying the two nodes now totals
    # 420,450 + (1,752 + 90) x 36 = 486,762 and overtakes staying when 420,450 + 1,842 m <= 31,146.67 m:
    # m >= 14.35, month 15 (a month later than without the move's costs)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**CONFIG, "database": {"dsn": database}, "moves": {
        "workloads": {"embed": {"data_gb": 5000, "migration_effort_usd": 20000, "egress_gb_per_month": 1000}}}}))
    moved = json.loads(plan(tmp_path, "embed", "--since", "2026-10-05", "--until", "2026-10-06",
                            "--discount-rate-pct", "0", "--json").stdout)["plans"][0]
    buy = {o["option"]: o for o in moved["options"]}["buy"]
    assert D(moved["one_time_move_usd"]) == 20_450
    assert (buy["quantity"], D(buy["total_usd"]), buy["breakeven_month"]) == (2, 486_762, 15)

    missing = plan(tmp_path, "nobody", "--since", "2026-10-05", "--until", "2026-10-06")
    assert missing.returncode == 2 and "no cost windows of workload 'nobody'" in missing.stderr
    backwards = plan(tmp_path, "embed", "--since", "2026-10-06", "--until", "2026-10-05")
    assert backwards.returncode == 2 and "must be before --until" in backwards.stderr



def test_hours_without_windows_between_the_first_and_last_are_hours_of_no_demand(database):
    from hybridspend.storage.queries import workload_hours

    migrate(database)
    batch = Batch()
    for w in _windows()[:1] + _windows()[5:6]:  # hours 0 and 5 of the day only
        batch.add("cost_windows", cost_window_row(w))
    with psycopg.connect(database) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
        start = datetime(2026, 10, 5, tzinfo=timezone.utc)
        (hours,) = workload_hours(conn, "embed", start, datetime(2026, 10, 6, tzinfo=timezone.utc)).values()
    # six hours from the first to the last, the four between them empty: 2 x 32 over 6 hours, not over 2
    assert [h.cost_usd for h in hours] == [32, 0, 0, 0, 0, 32] and [h.allocated_gpus for h in hours][:2] == [8, 0]
