"""Monthly report generation for 10,000 GPUs x 30 days of hourly cost windows, beside 1,000 and 30,000 to show
how it grows (``--quick``: 1,000 x 7).

The month is seeded through the sink's own write path (so the rollups are what production has), with
the cloud instances' hourly bill for all but the last three days; only the report is timed: the
queries, the cost model's counterfactuals, the charts and every format (the PDF laid out from the HTML).
"""

from __future__ import annotations

import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import psycopg

from hybridspend.contracts.config import EXAMPLE_CONFIG, load_config
from hybridspend.contracts.events import BreakevenDecision, CostLine, CostWindow
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.reports import monthly
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_line_row, cost_window_row, decision_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

from .seeded import earlier_seed, mark_seeded

MONTH = "2026-10"
MONTH_START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z
UNBILLED_DAYS = 3  # the provider's bill lags: the month's last days are estimated only


def _seed(dsn: str, gpus: int, days: int) -> int:
    rng = random.Random(5)
    nodes = gpus // 8
    cloud_nodes = nodes // 5
    rows = 0
    batch = Batch()
    with psycopg.connect(dsn) as conn:
        partitions = Partitions(POSTGRESQL)
        for hour in range(days * 24):
            ws = MONTH_START_MS + hour * MS_PER_HOUR
            for n in range(nodes):
                cloud = n < cloud_nodes
                resource = f"i-{n:05d}" if cloud else f"dgx-a100-{n:03d}"
                owners = [(f"wl-{n % 97:02d}", 6)] + ([] if cloud else [("idle", 2)])
                if not cloud:
                    owners = [(f"wl-{n % 97:02d}", 4), (f"wl-{(n * 7) % 97:02d}b", 2), ("idle", 2)]
                for workload, count in owners:
                    alloc = count * MS_PER_HOUR
                    busy = 0 if workload == "idle" else int(alloc * rng.uniform(0.1, 0.95))
                    cost = Decimal(count) * (Decimal("4.0965") if cloud else Decimal("2.3214"))
                    if cloud and hour < (days - UNBILLED_DAYS) * 24:
                        batch.add("cost_lines", cost_line_row(CostLine(
                            f"bill|{resource}|{ws}", "aws", "AWS", "acct", MONTH_START_MS,
                            f"arn:aws:ec2:us-east-1:1:instance/{resource}", ws, ws + MS_PER_HOUR, "Usage",
                            cost * Decimal("0.97"), cost * Decimal("0.97"), "AmazonEC2", "sku", "us-east-1",
                            "p4d.24xlarge", "A100", 8, "aws-cur", "2026-11-02T00:00:00Z|1")))
                    batch.add("cost_windows", cost_window_row(CostWindow(
                        event_id=f"{resource}|{workload}|{ws}", workload=workload, team=f"team-{n % 11}",
                        allow_spot=False, environment="cloud" if cloud else "onprem", gpu_class="A100",
                        resource=resource, window_start_ms=ws, window_ms=MS_PER_HOUR, allocated_gpu_ms=alloc,
                        busy_gpu_ms=busy, metered_gpu_ms=alloc, energy_mj=count * 400 * MS_PER_HOUR,
                        sample_count=60, first_ms=ws, last_ms=ws + MS_PER_HOUR, cost_usd=cost,
                        provider="aws" if cloud else "", instance_type="p4d.24xlarge" if cloud else "",
                        purchase_option="on_demand" if cloud else "")))
                    rows += 1
            if len(batch) >= 20_000:
                write_batch(conn, batch, POSTGRESQL, partitions)
                batch = Batch()
        for w in range(0, 97, 3):
            batch.add("decisions", decision_row(BreakevenDecision(
                event_id=f"d{w}", workload=f"wl-{w:02d}", team="t", from_env="onprem", to_env="cloud",
                kind="migrate_to_cloud", gpu_class="A100", window_start_ms=MONTH_START_MS,
                window_end_ms=MONTH_START_MS + 3 * MS_PER_HOUR, current_usd_per_busy_gpu_hour=Decimal(5),
                alternative_usd_per_busy_gpu_hour=Decimal(3), utilization=Decimal("0.3"),
                monthly_savings_usd=Decimal(900), confidence=Decimal(1), alternative_label="aws", gpus_needed=4,
                reason="bench", monthly_savings_low_usd=Decimal(600), monthly_savings_high_usd=Decimal(1200))))
        write_batch(conn, batch, POSTGRESQL, partitions)
    return rows


def _time_report(dsn: str, gpus: int, days: int, say) -> tuple[float, int]:
    """Seconds to build and write the report of a fleet of ``gpus`` seeded for ``days`` (the seeding untimed)."""
    kept = earlier_seed(dsn, gpus, days)
    if kept:
        rows = kept["cost_windows"]
        say(f"  {rows:,} hourly cost windows ({gpus:,} GPUs x {days} days) seeded by an earlier run")
    else:
        migrate(dsn)
        seeded_at = time.perf_counter()
        rows = _seed(dsn, gpus, days)
        say(f"  seeded {rows:,} hourly cost windows ({gpus:,} GPUs x {days} days) in "
            f"{time.perf_counter() - seeded_at:.1f} s (not timed)")
        mark_seeded(dsn, gpus, days, {"cost_windows": rows})
    config = load_config(EXAMPLE_CONFIG, {})
    with tempfile.TemporaryDirectory(prefix="hs-bench-report-") as out, psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        report = monthly.build(conn, config, MONTH)
        paths = monthly.write(conn, report, list(monthly.FORMATS), Path(out))
        elapsed = time.perf_counter() - start
        assert len(report.workloads) > 100 and all(p.stat().st_size > 0 for p in paths)
    say(f"  monthly report, {gpus:,} GPUs, {len(report.workloads)} workloads, formats "
        f"{', '.join(monthly.FORMATS)}: {elapsed:.2f} s")
    return elapsed, rows


def run(dsn_for, quick: bool, say=print) -> dict:
    """The report at 10,000 GPUs x 30 days (``report_seconds``, its target) and, beside it, at 1,000 and
    30,000 to show how it grows (``quick``: 1,000 x 7 days only); ``dsn_for(name)`` gives a database, seeded
    here unless an earlier run seeded it (``bench/seeded.py``)."""
    if quick:
        elapsed, rows = _time_report(dsn_for("bench_report"), 1000, 7, say)
        return {"report_gpus": 1000, "report_seconds": round(elapsed, 2), "report_cost_windows": rows}
    figures: dict = {"report_gpus": 10_000}
    for gpus in (1000, 10_000, 30_000):
        elapsed, rows = _time_report(dsn_for(f"bench_report_{gpus}"), gpus, 30, say)
        key = "report_seconds" if gpus == 10_000 else f"report_seconds_{gpus // 1000}k"
        figures[key] = round(elapsed, 2)
        if gpus == 10_000:
            figures["report_cost_windows"] = rows
    # time per GPU from 10,000 to 30,000 against from 1,000 to 10,000: at most 1 when it grows no faster than linearly
    figures["report_growth_ratio"] = round(figures["report_seconds_30k"] / figures["report_seconds"] / 3, 2)
    return figures


if __name__ == "__main__":  # python -m bench.report [--quick | --gpus N,...]: this benchmark alone, embedded PostgreSQL
    import argparse
    import json
    import uuid

    from hybridspend.infra.local import LocalPostgres

    from .sink import _fresh_database

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 GPUs x 7 days only (a smoke test)")
    parser.add_argument("--gpus", help="comma-separated fleet sizes to time, each over 30 days (default: the full "
                                       "run's 1,000, 10,000 and 30,000 with the growth ratio)")
    args = parser.parse_args()
    pg = LocalPostgres(Path("/tmp") / f"hs-bench-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True,
                       database="postgres").start()
    try:
        def dsn_for(name: str) -> str:
            return _fresh_database(pg.dsn, name)

        if args.gpus:
            result = {}
            for gpus in (int(g) for g in args.gpus.split(",")):
                elapsed, _ = _time_report(dsn_for(f"bench_report_{gpus}"), gpus, 30, print)
                result[f"report_seconds_{gpus}"] = round(elapsed, 2)
        else:
            result = run(dsn_for, args.quick)
        print(json.dumps(result, indent=2))
    finally:
        pg.stop()
