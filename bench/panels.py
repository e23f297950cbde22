"""Every Grafana panel's SQL on a big, long-retained fleet: 10,000 GPUs x 90 days (``--quick``: 400 x 7).

What is seeded, in the shape the sink writes it (COPY into the same tables, partitions created first):

* a fleet of 1,250 nodes of 8 GPUs: 1,000 on-prem (60 % A100, 40 % H100) and 250 cloud instances (AWS and
  GCP, A100 and H100), running 300 workloads of 12 teams;
* ``cost_windows``: one window per resource, workload and **hour** for 90 days (an on-prem node: a
  workload on 4 GPUs, another on 2, 2 idle; a cloud instance: one workload on 8; workloads move every
  week): 3,250 rows an hour, 7.0 million in all.  The pipeline closes 15-minute windows (4 x the rows);
  the panels read the rollups, whose size does not depend on the window length (the reconciliation
  panels read the cloud windows of 250 instances directly only for the hours at the ends of a range);
* ``cost_hourly`` and ``cost_daily`` filled from those windows with the sink's own grouping (its
  ``date_bin`` buckets, per workload, environment, GPU class and basis; on TimescaleDB the continuous
  aggregates are refreshed instead), and the reconciliation rollup ``cloud_cost_daily`` (migration 017) by
  the function the sink's refresh calls, from the windows and the bill lines;
* ``gpu_samples``: the raw samples' 30 days of retention, **one sample per GPU per hour** (7.2 million
  rows).  The collectors sample every 30 s (dcgm-exporter's default), 120 x as many: what reads the raw
  samples over a range reads 120 x these rows in production;
* ``cost_lines``: the cloud bill, one line per instance and hour, for all but the last 3 days (the bill lags);
* the rollups of the samples (migration 016) as 90 days of refreshes leave them: refreshed up to the data's
  end over the 30 days of raw samples (what TimescaleDB's job does every 15 minutes, and what the periodic
  maintenance is to call on plain PostgreSQL: docs/performance.md), and the 60 days before, whose raw
  samples retention dropped, written as those refreshes made them (each GPU's day, each hour's utilization);
* ``decisions`` (a decision per workload about every third day, with the options it weighed), their
  alerts in ``alert_outbox`` (delivered) beside budget and idle alerts, anomaly episodes, dead letters,
  consumer lag, team budgets, the month's spend forecasts and the running cloud instances.

The raw rows go in by two COPY streams at once (text format, lines formatted here), then
``VACUUM ANALYZE`` (what autovacuum keeps up in production).  Every panel of every dashboard in
``dashboards/json`` (each template variable and anomaly annotation too) then runs over the last 24 h,
7 days, 30 days and 90 days of the data, with Grafana's macros and variables expanded as Grafana's
PostgreSQL datasource does (``tests/grafana_sql.py``; every variable at "All") and ``$__interval`` as
Grafana computes it (the range over the panel's maxDataPoints, or else over 900 pixels), 5 times each
(``--quick``: 3) on one connection; each panel's p95 per range is reported, and the slowest one is the
figure judged against the target of 1 s.
"""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from hybridspend.storage.db import engine_of, migrate
from hybridspend.storage.queries import ForecastPoint, store_month_forecast
from hybridspend.storage.timeseries import TIMESCALEDB, Partitions
from tests.grafana_sql import expand

from .seeded import earlier_seed, mark_seeded

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards" / "json"
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "90d": timedelta(days=90)}
PANEL_PIXELS = 900  # Grafana's $__interval: the range / the panel's maxDataPoints or else its width, rounded
# Grafana's roundInterval (packages/grafana-data/src/datetime/rangeutil.ts) from a minute up: (below, ms)
_ROUNDED_MS = ((90_000, 60_000), (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000),
               (1_500_000, 1_200_000), (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
               (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
               (604_800_000, 86_400_000), (1_814_400_000, 604_800_000))
TARGET_S = 1.0
SAMPLE_RETENTION_DAYS = 30  # storage/timeseries.py: raw gpu_samples
BILL_LAG_DAYS = 3

HOUR = timedelta(hours=1)
MS_PER_HOUR = 3_600_000
TEAMS = 12
ONPREM_RATE = {"A100": Decimal("2.3214"), "H100": Decimal("3.9120")}  # USD per GPU-hour, fully loaded
CLOUD = {  # (provider, GPU class) -> (instance type, USD per GPU-hour on demand)
    ("aws", "A100"): ("p4d.24xlarge", Decimal("4.0965")), ("aws", "H100"): ("p5.48xlarge", Decimal("12.2900")),
    ("gcp", "A100"): ("a2-highgpu-8g", Decimal("3.6730")), ("gcp", "H100"): ("a3-highgpu-8g", Decimal("11.0613")),
}


class Fleet:
    """Who runs where: nodes, instances and the workloads on them, week by week."""

    def __init__(self, gpus: int, workloads: int) -> None:
        nodes = gpus // 8
        self.cloud = [(f"i-{i:05x}{'a' if i % 2 == 0 else 'g'}", "aws" if i % 2 == 0 else "gcp",
                       "A100" if i % 5 < 3 else "H100") for i in range(nodes // 5)]
        onprem = nodes - len(self.cloud)
        a100 = onprem * 3 // 5
        self.onprem = [(f"dgx-{'a' if n < a100 else 'h'}100-{n:04d}", "A100" if n < a100 else "H100")
                       for n in range(onprem)]
        self.workloads = [f"wl-{w:03d}" for w in range(workloads)]

    @staticmethod
    def team(workload: str) -> str:
        return f"team-{int(workload[3:]) % TEAMS:02d}"

    def onprem_owners(self, n: int, week: int) -> list[tuple[str, int, range]]:
        """(workload, GPUs, GPU indexes) on on-prem node ``n`` in ``week``: 4 + 2 GPUs held, 2 idle."""
        count = len(self.workloads)
        a = (n + week * 7) % count
        b = (a + 1 + (n * 7) % (count - 1)) % count
        return [(self.workloads[a], 4, range(0, 4)), (self.workloads[b], 2, range(4, 6)), ("idle", 2, range(6, 8))]

    def cloud_owner(self, i: int, week: int) -> str:
        return self.workloads[(i * 13 + week * 3) % len(self.workloads)]


class Copier:
    """COPY in PostgreSQL's text format of lines formatted here (tab-separated, in the order of
    ``columns``): the seeded values need no escaping, and formatting them beats dumping each value."""

    def __init__(self, conn: psycopg.Connection, table: str, columns: tuple[str, ...]) -> None:
        self.conn, self.table, self.columns = conn, table, columns

    def write(self, lines) -> int:
        lines = list(lines)
        with self.conn.cursor().copy(f"COPY {self.table} ({', '.join(self.columns)}) FROM STDIN") as copy:
            copy.write("".join(lines))
        return len(lines)


COST_WINDOW_COLUMNS = (
    "window_start", "window_end", "resource", "workload", "environment", "gpu_class", "basis", "team", "provider",
    "instance_type", "purchase_option", "allocated_gpu_ms", "busy_gpu_ms", "energy_mj", "sample_count", "cost_usd",
    "event_id")
SAMPLE_COLUMNS = (
    "ts", "resource", "gpu_uuid", "gpu_index", "gpu_model", "gpu_class", "environment", "interval_ms",
    "utilization_pct", "memory_used_mib", "memory_total_mib", "power_mw", "workloads")
COST_LINE_COLUMNS = (
    "charge_period_start", "event_id", "charge_period_end", "provider", "provider_name", "billing_account",
    "billing_period_start", "resource_id", "charge_category", "service", "sku", "region", "instance_type",
    "gpu_class", "gpus", "source", "export_version", "billed_cost_usd", "effective_cost_usd")


def _month(ts: datetime) -> datetime:
    return ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _cost_window_rows(fleet: Fleet, hour: datetime, h: int, rng: random.Random):
    start, end = hour.isoformat(), (hour + HOUR).isoformat()
    week = h // (24 * 7)
    epoch = int(hour.timestamp())
    alloc = {count: count * MS_PER_HOUR for count in (2, 4, 8)}
    for n, (resource, gpu_class) in enumerate(fleet.onprem):
        rate = ONPREM_RATE[gpu_class]
        for workload, count, _ in fleet.onprem_owners(n, week):
            busy = 0 if workload == "idle" else int(alloc[count] * (0.1 + 0.85 * rng.random()))
            team = "" if workload == "idle" else fleet.team(workload)
            yield (f"{start}\t{end}\t{resource}\t{workload}\tonprem\t{gpu_class}\testimated\t{team}\t\t\t\t"
                   f"{alloc[count]}\t{busy}\t{count * 1_440_000_000}\t120\t{rate * count}\t{resource}|{workload}|{epoch}\n")
    for i, (resource, provider, gpu_class) in enumerate(fleet.cloud):
        workload = fleet.cloud_owner(i, week)
        instance_type, rate = CLOUD[(provider, gpu_class)]
        busy = int(alloc[8] * (0.2 + 0.75 * rng.random()))
        yield (f"{start}\t{end}\t{resource}\t{workload}\tcloud\t{gpu_class}\testimated\t{fleet.team(workload)}\t"
               f"{provider}\t{instance_type}\ton_demand\t{alloc[8]}\t{busy}\t{8 * 1_440_000_000}\t120\t{rate * 8}\t"
               f"{resource}|{workload}|{epoch}\n")


def _sample_rows(fleet: Fleet, hour: datetime, h: int, rng: random.Random):
    ts = (hour + HOUR).isoformat()  # a sample is stamped with the end of the interval it covers
    week = h // (24 * 7)
    for n, (resource, gpu_class) in enumerate(fleet.onprem):
        model = "NVIDIA A100-SXM4-80GB" if gpu_class == "A100" else "NVIDIA H100 80GB HBM3"
        for workload, _, indexes in fleet.onprem_owners(n, week):
            held = "{}" if workload == "idle" else "{" + workload + "}"
            for g in indexes:
                util = 0.0 if workload == "idle" else round(10 + 85 * rng.random(), 1)
                yield (f"{ts}\t{resource}\tGPU-{resource}-{g}\t{g}\t{model}\t{gpu_class}\tonprem\t{MS_PER_HOUR}\t"
                       f"{util}\t{int(800 * util)}\t81920\t{60_000 + int(util * 3_400)}\t{held}\n")
    for i, (resource, _, gpu_class) in enumerate(fleet.cloud):
        model = "NVIDIA A100-SXM4-40GB" if gpu_class == "A100" else "NVIDIA H100 80GB HBM3"
        held = "{" + fleet.cloud_owner(i, week) + "}"
        for g in range(8):
            util = round(20 + 75 * rng.random(), 1)
            yield (f"{ts}\t{resource}\tGPU-{resource}-{g}\t{g}\t{model}\t{gpu_class}\tcloud\t{MS_PER_HOUR}\t"
                   f"{util}\t{int(400 * util)}\t40960\t{60_000 + int(util * 3_400)}\t{held}\n")


def _cost_line_rows(fleet: Fleet, hour: datetime):
    start, end = hour.isoformat(), (hour + HOUR).isoformat()
    epoch = int(hour.timestamp())
    period = _month(hour)
    for i, (resource, provider, gpu_class) in enumerate(fleet.cloud):
        instance_type, rate = CLOUD[(provider, gpu_class)]
        billed = rate * 8 * (Decimal("0.97"), Decimal("1.00"), Decimal("1.02"))[i % 3]
        if provider == "aws":
            rid, source, name = f"arn:aws:ec2:us-east-1:123456789012:instance/{resource}", "aws-cur", "AWS"
        else:
            rid, source, name = f"//compute.googleapis.com/projects/ml/zones/us-central1-a/instances/{resource}", \
                "gcp-export", "Google Cloud"
        region = "us-east-1" if provider == "aws" else "us-central1"
        yield (f"{start}\t{source}|{resource}|{epoch}\t{end}\t{provider}\t{name}\tacct-1\t{period.isoformat()}\t"
               f"{rid}\tUsage\tcompute\t{instance_type}\t{region}\t{instance_type}\t{gpu_class}\t8\t{source}\t"
               f"{period:%Y-%m}-01T00:00:00Z|1\t{billed}\t{billed}\n")


def seed(dsn: str, gpus: int, days: int, end: datetime, workloads: int = 300, say=print) -> dict:
    """Seed a migrated database; return what was seeded (row counts per table, seconds)."""
    rng = random.Random(27)
    fleet = Fleet(gpus, workloads)
    start = end - timedelta(days=days)
    samples_from = end - timedelta(days=min(days, SAMPLE_RETENTION_DAYS))
    billed_until = end - timedelta(days=BILL_LAG_DAYS)
    hours = [start + timedelta(hours=h) for h in range(days * 24)]
    began = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        engine = engine_of(conn)
        partitions = Partitions(engine)
        partitions.ensure(conn, "cost_windows", hours)
        partitions.ensure(conn, "cost_lines", [h for h in hours if h < billed_until])
        partitions.ensure(conn, "gpu_samples", [h + HOUR for h in hours if h >= samples_from])
        conn.commit()

    def windows_and_lines() -> dict:
        wrng = random.Random(28)
        counts = {"cost_windows": 0, "cost_lines": 0}
        with psycopg.connect(dsn) as conn:
            windows = Copier(conn, "cost_windows", COST_WINDOW_COLUMNS)
            lines = Copier(conn, "cost_lines", COST_LINE_COLUMNS)
            for h, hour in enumerate(hours):
                counts["cost_windows"] += windows.write(_cost_window_rows(fleet, hour, h, wrng))
                if hour < billed_until:
                    counts["cost_lines"] += lines.write(_cost_line_rows(fleet, hour))
                if h % 24 == 23:
                    conn.commit()
        return counts

    def samples() -> dict:
        srng = random.Random(29)
        count = 0
        with psycopg.connect(dsn) as conn:
            copier = Copier(conn, "gpu_samples", SAMPLE_COLUMNS)
            for h, hour in enumerate(hours):
                if hour >= samples_from:
                    count += copier.write(_sample_rows(fleet, hour, h, srng))
                if h % 24 == 23:
                    conn.commit()
        return {"gpu_samples": count}

    # two COPY streams at once: one server process each, and the formatting of one overlaps the other's COPY
    with ThreadPoolExecutor(2) as pool:
        streams = [pool.submit(windows_and_lines), pool.submit(samples)]
        counts = {k: v for stream in streams for k, v in stream.result().items()}
    say(f"  raw rows COPYed in {time.perf_counter() - began:.0f} s")
    with psycopg.connect(dsn) as conn:
        counts.update(_seed_small_tables(conn, fleet, start, end, rng))
    rolled = time.perf_counter()
    _fill_rollups(dsn, engine)
    counts.update(_fill_sample_rollups(dsn, fleet, start, samples_from, end, rng))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("cost_hourly", "cost_daily", "cloud_cost_daily"):
            counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        say(f"  rollups filled in {time.perf_counter() - rolled:.0f} s")
        analyzed = time.perf_counter()
        conn.execute("VACUUM ANALYZE")  # what autovacuum keeps up in production: statistics, visibility map
        say(f"  VACUUM ANALYZE in {time.perf_counter() - analyzed:.0f} s")
    counts["seconds"] = round(time.perf_counter() - began, 1)
    return counts


def _fill_rollups(dsn: str, engine: str) -> None:
    """The cost rollups as the sink leaves them: its own buckets and grouping over every window, written hour
    after hour (plain PostgreSQL), or the continuous aggregates refreshed over the whole range (TimescaleDB);
    and the reconciliation rollup (migration 017) by the function the sink's refresh calls, on both engines."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT refresh_cloud_cost_daily_between('-infinity', 'infinity')")
        if engine == TIMESCALEDB:
            for view in ("cost_hourly", "cost_daily"):
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
            return
        for rollup, width in (("cost_hourly", 3600), ("cost_daily", 86400)):
            conn.execute(f"""
                INSERT INTO {rollup} (bucket, workload, environment, gpu_class, basis, team, allocated_gpu_ms,
                                      busy_gpu_ms, energy_mj, cost_usd, windows)
                SELECT date_bin(INTERVAL '{width} seconds', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                       workload, environment, gpu_class, basis, max(team), sum(allocated_gpu_ms), sum(busy_gpu_ms),
                       sum(energy_mj), sum(cost_usd), count(*)
                  FROM cost_windows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1""")


def _fill_sample_rollups(dsn: str, fleet: Fleet, start: datetime, samples_from: datetime, end: datetime,
                         rng: random.Random) -> dict:
    """The rollups of the raw samples as 90 days of refreshes leave them: refreshed up to the data's end over the
    30 days of raw samples (``refresh_gpu_sample_rollups``), and the days before, whose raw samples retention
    dropped, as those refreshes made them (each GPU seen from midnight to 23:00, its hourly samples)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT refresh_gpu_sample_rollups(%s)", (end,))
        seen = Copier(conn, "gpu_seen_daily",
                      ("day", "environment", "gpu_class", "resource", "gpu_uuid", "first_ts", "last_ts"))
        minutes = Copier(conn, "gpu_utilization_minutely",
                         ("bucket", "environment", "gpu_class", "samples", "utilization_pct_sum"))
        gpus = [(resource, "onprem", cls, g) for resource, cls in fleet.onprem for g in range(8)]
        gpus += [(resource, "cloud", cls, g) for resource, _, cls in fleet.cloud for g in range(8)]
        groups: dict[tuple[str, str], int] = {}
        for _, env, cls, _ in gpus:
            groups[(env, cls)] = groups.get((env, cls), 0) + 1
        day = start.replace(hour=0)
        while day < samples_from.replace(hour=0):
            first, last = day.isoformat(), (day + timedelta(hours=23)).isoformat()
            seen.write(f"{day.isoformat()}\t{env}\t{cls}\t{resource}\tGPU-{resource}-{g}\t{first}\t{last}\n"
                       for resource, env, cls, g in gpus)
            minutes.write(f"{(day + timedelta(hours=h)).isoformat()}\t{env}\t{cls}\t{n}\t"
                          f"{n * (30 + 40 * rng.random())}\n" for h in range(24) for (env, cls), n in groups.items())
            day += timedelta(days=1)
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("gpu_seen_daily", "gpu_utilization_minutely")}


def _seed_small_tables(conn: psycopg.Connection, fleet: Fleet, start: datetime, end: datetime,
                       rng: random.Random) -> dict:
    counts = {}
    days = (end - start).days
    decisions, alerts = [], []
    kinds = (("repatriate_fill_idle", "cloud", "onprem"), ("repatriate_buy_capacity", "cloud", "onprem"),
             ("migrate_to_cloud", "onprem", "cloud"), ("commit_reserved", "cloud", "cloud"))
    for w, workload in enumerate(fleet.workloads):
        for day in range(w % 3, days, 3):
            at = start + timedelta(days=day, hours=rng.randrange(24))
            kind, from_env, to_env = kinds[(w + day) % len(kinds)]
            savings = Decimal(rng.randrange(500, 90_000))
            options = [{"label": "stay (as it runs)", "kind": "stay", "quantity": 0, "term_months": 0,
                        "upfront_usd": "0", "monthly_usd": str(savings * 3), "total_usd": str(savings * 108),
                        "npv_usd": str(savings * 96), "breakeven_month": None},
                       {"label": "buy 1 x dgx node (8 GPUs each)", "kind": "buy", "quantity": 1, "term_months": 36,
                        "upfront_usd": "240000", "monthly_usd": str(savings), "total_usd": str(240000 + savings * 36),
                        "npv_usd": str(230000 + savings * 32), "breakeven_month": 14},
                       {"label": "commit 1 year", "kind": "commit", "quantity": 8, "term_months": 12,
                        "upfront_usd": "0", "monthly_usd": str(savings * 2), "total_usd": str(savings * 72),
                        "npv_usd": str(savings * 65), "breakeven_month": 1}]
            decision_id = f"{workload}|{kind}|{int(at.timestamp())}"
            decisions.append((decision_id, at, at - timedelta(hours=3), workload, fleet.team(workload), from_env,
                              to_env, kind, "A100" if w % 2 else "H100", Decimal("4.61"), Decimal("2.37"),
                              Decimal("0.71"), savings, Decimal("0.9"), "on-prem A100", 8,
                              f"{kind}: the alternative held 10 % cheaper for 3 windows", "estimated",
                              Decimal(14), savings * Decimal("0.8"), savings * Decimal("1.2"), Decimal(3), 1, 1,
                              Jsonb(options), 36, Decimal(8)))
            payload = Jsonb({"text": f"{workload}: {kind}", "blocks": [
                {"type": "section",
                 "text": {"type": "mrkdwn", "text": f"*{workload}* should {kind} (~${savings}/month)"}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "x" * 400}]}]})
            alerts.append((f"{decision_id}|slack", "slack", decision_id, payload, at, 1, at, at + timedelta(seconds=1),
                           None, workload, 1))
    for day in range(days):  # alerts that are not decisions: budgets and idle capacity, one route each
        for team in range(TEAMS):
            at = start + timedelta(days=day, hours=9)
            subject = f"budget|team-{team:02d}|{at:%Y-%m}"
            alerts.append((f"{subject}|{day}|slack", "slack", subject, Jsonb({"text": subject}), at, 1, at,
                           at + timedelta(seconds=1), None, subject, 1 + day % 2))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO decisions (decision_id, decided_at, window_start, workload, team, from_env, to_env, kind,"
            " gpu_class, current_usd_per_busy_gpu_hour, alternative_usd_per_busy_gpu_hour, utilization,"
            " monthly_savings_usd, confidence, alternative_label, gpus_needed, reason, basis, payback_months,"
            " monthly_savings_low_usd, monthly_savings_high_usd, evidence_hours, nodes_needed, instances_needed,"
            " options, horizon_months, discount_rate_pct) VALUES (" + ", ".join(["%s"] * 27) + ")", decisions)
        cur.executemany(
            "INSERT INTO alert_outbox (alert_id, route, decision_id, payload, created_at, attempts, next_attempt_at,"
            " delivered_at, last_error, subject, severity) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", alerts)
        # anomaly episodes (about 5 a day), dead letters (about 20 a day), consumer lag, budgets, live instances
        anomalies = []
        for k in range(days * 5):
            kind = ("held_idle", "usd_per_busy_gpu_hour", "spend_rate", "silent")[k % 4]
            at = start + timedelta(hours=k * 24 / 5)
            workload = fleet.workloads[k % len(fleet.workloads)]
            anomalies.append((f"{kind}|{k}", 1, kind, "closed", workload, workload if kind != "silent" else "",
                              fleet.team(workload), "A100", "onprem" if kind == "silent" else "cloud",
                              fleet.onprem[k % len(fleet.onprem)][0] if kind == "silent" else "", at,
                              at + timedelta(minutes=30), at + timedelta(hours=3), Decimal(5), Decimal(1), Decimal(2),
                              "usd_per_hour", Decimal(10), Decimal(240), f"{workload}: {kind}", f"{kind}|{k}|closed"))
        cur.executemany(
            "INSERT INTO anomalies (episode_id, revision, kind, state, subject, workload, team, gpu_class, environment,"
            " resource, started_at, detected_at, ended_at, score, baseline, observed, unit, usd_so_far,"
            " usd_per_day_at_stake, reason, event_id) VALUES (" + ", ".join(["%s"] * 21) + ")", anomalies)
        letters = [(f"t.gpu-samples|{k % 8}|{k}", start + timedelta(minutes=k * 72), "t.gpu-samples",
                    "not a GpuSample: Object missing required field `gpus`", '{"ts_ms": 1}') for k in range(days * 20)]
        cur.executemany("INSERT INTO dead_letters (event_id, received_at, source_topic, reason, payload)"
                        " VALUES (%s, %s, %s, %s, %s)", letters)
        cur.executemany("INSERT INTO consumer_lag (group_id, topic, partition, lag, measured_at)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        [(group, topic, p, rng.randrange(0, 5000), end)
                         for group, topics in (("hybridspend-sink", ("gpu-samples", "cost-windows", "decisions",
                                                                      "cost-lines", "dead-letter", "anomalies")),
                                               ("hybridspend-worker", ("gpu-samples", "cloud-events")))
                         for topic in topics for p in range(8)])
        cur.executemany("INSERT INTO team_budgets (team, monthly_budget_usd) VALUES (%s, %s)",
                        [(f"team-{t:02d}", Decimal(400_000 + 50_000 * t)) for t in range(TEAMS)])
        cur.executemany(
            "INSERT INTO live_instances (instance_id, changed_at, provider, region, instance_type, purchase_option,"
            " workload, team, gpu_class, gpus, state, usd_per_hour, running_since, ends_at, event_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(resource, end - timedelta(hours=i % 48), provider, "us-east-1", CLOUD[(provider, cls)][0], "on_demand",
              fleet.cloud_owner(i, 0), fleet.team(fleet.cloud_owner(i, 0)), cls, 8, "running",
              CLOUD[(provider, cls)][1] * 8, end - timedelta(hours=i % 48), None, f"{resource}|live")
             for i, (resource, provider, cls) in enumerate(fleet.cloud)])
    counts.update(decisions=len(decisions), alert_outbox=len(alerts), anomalies=len(anomalies),
                  dead_letters=len(letters))
    month = _month(end)
    month_end = (month + timedelta(days=32)).replace(day=1)
    for t in range(TEAMS):  # the alerter's forecast of every budgeted team's month, as it stores it
        spent = Decimal(10_000 * (t + 1))
        ats = [end + timedelta(days=k) for k in range((month_end - end).days + 1)
               if end + timedelta(days=k) < month_end]
        points = []
        for at in ats + [month_end]:
            spent += Decimal(12_000)
            points.append(ForecastPoint(at, spent, spent * Decimal("0.9"), spent * Decimal("1.1"),
                                        spent * Decimal("0.85"), spent * Decimal("1.15")))
        store_month_forecast(conn, f"team-{t:02d}", month, end, points, Decimal("0.25"), "MSTL")
    return counts


# -- running the panels -------------------------------------------------------------------------------


def interval(width: timedelta, max_data_points: int = PANEL_PIXELS) -> str:
    """Grafana's ``$__interval`` for a range of ``width`` drawn in ``max_data_points`` (at least a minute)."""
    raw_ms = width.total_seconds() * 1000 / max_data_points
    ms = next((rounded for below, rounded in _ROUNDED_MS if raw_ms < below), 2_592_000_000)
    for unit, unit_ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % unit_ms == 0:
            return f"{ms // unit_ms}{unit}"
    raise AssertionError(ms)


def queries(dashboards_dir: Path = DASHBOARDS) -> list[tuple[str, str, str, int]]:
    """(dashboard uid, what, SQL, maxDataPoints) of every panel target and annotation of the committed dashboards
    (what Grafana is given), and the template variables (the same on every dashboard) once."""
    out = []
    for n, path in enumerate(sorted(dashboards_dir.glob("*.json"))):
        d = json.loads(path.read_text())
        if n == 0:
            for v in d["templating"]["list"]:
                out.append(("every dashboard", f"variable ${v['name']}", v["query"], PANEL_PIXELS))
        for p in d["panels"]:
            for t in p["targets"]:
                out.append((d["uid"], f"{p['id']} {p['title']}", t["rawSql"], p.get("maxDataPoints", PANEL_PIXELS)))
        for a in d["annotations"]["list"]:
            out.append((d["uid"], f"annotation {a['name']}", a["target"]["rawSql"], PANEL_PIXELS))
    return out


def variables(conn: psycopg.Connection, end: datetime, dashboards_dir: Path = DASHBOARDS) -> dict[str, list[str]]:
    """Every template variable at "All": each value its query returns (in order, as they depend on each other)."""
    values: dict[str, list[str]] = {}
    d = json.loads(next(iter(sorted(dashboards_dir.glob("*.json")))).read_text())
    for v in d["templating"]["list"]:
        sql = expand(v["query"], time_from=end - RANGES["7d"], time_to=end, interval="1h", variables=values)
        values[v["name"]] = [r[0] for r in conn.execute(sql)]
    return values


def p95(times: list[float]) -> float:
    """The nearest-rank 95th percentile (of five runs: the slowest)."""
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def time_panels(dsn: str, end: datetime, runs: int, say=print, timeout_s: float = 60) -> dict[tuple[str, str], dict]:
    """{(uid, what): {range: p95 seconds}}; a query past ``timeout_s`` counts as the timeout."""
    out: dict[tuple[str, str], dict] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = '{int(timeout_s * 1000)}ms'")
        values = variables(conn, end)
        for uid, what, raw, points in queries():
            out[(uid, what)] = {}
            for name, width in RANGES.items():
                sql = expand(raw, time_from=end - width, time_to=end, interval=interval(width, points),
                             variables=values)
                times = []
                for _ in range(runs):
                    began = time.perf_counter()
                    try:
                        conn.execute(sql).fetchall()
                    except psycopg.errors.QueryCanceled:
                        times.append(timeout_s)
                        break
                    times.append(time.perf_counter() - began)
                out[(uid, what)][name] = p95(times)
            say("  " + _line(uid, what, out[(uid, what)]))
    return out


def _line(uid: str, what: str, by_range: dict) -> str:
    cells = "  ".join(f"{by_range[r]:7.3f}" for r in RANGES)
    slow = " MISSED" if max(by_range.values()) >= TARGET_S else ""
    return f"{uid.removeprefix('hybridspend-') + ' / ' + what:<72.72} {cells}{slow}"


def run(dsn_for, quick: bool, say=print) -> dict:
    """Seed (``dsn_for(name)`` gives a fresh database), then time every panel over each range."""
    gpus, days, workloads, runs = (400, 7, 40, 3) if quick else (10_000, 90, 300, 5)
    dsn = dsn_for("bench_panels")
    kept = earlier_seed(dsn, gpus, days)
    if kept:
        end, counts = datetime.fromisoformat(kept["end"]), kept["counts"]
        say(f"  timing the database an earlier run seeded ({gpus:,} GPUs x {days} days; its seed is not timed again)")
    else:
        migrate(dsn)
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        counts = seed(dsn, gpus, days, end, workloads, say)
        say(f"  seeded {gpus:,} GPUs x {days} days in {counts['seconds']:.0f} s: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "seconds"))
        mark_seeded(dsn, gpus, days, {"end": end.isoformat(), "counts": counts})
    say(f"  p95 of {runs} runs, seconds:{'':<47}" + "  ".join(f"{r:>7}" for r in RANGES))
    timed = time_panels(dsn, end, runs, say)
    panels = {k: v for k, v in timed.items() if not k[1].startswith(("variable", "annotation"))}
    figures = {
        "panels_gpus": gpus, "panels_days": days, **({} if kept else {"panels_seed_s": counts["seconds"]}),
        "panel_p95_s_max": round(max(max(v.values()) for v in panels.values()), 3),
        **{f"panel_p95_s_max_{r}": round(max(v[r] for v in panels.values()), 3) for r in RANGES},
        "panel_queries_over_1s": sum(1 for v in panels.values() for t in v.values() if t >= TARGET_S),
        "panel_p95_s": {f"{uid}/{what}": {r: round(t, 4) for r, t in v.items()} for (uid, what), v in timed.items()},
    }
    slowest = max(panels, key=lambda k: max(panels[k].values()))
    say(f"  slowest panel: {slowest[0]} / {slowest[1]} ({max(panels[slowest].values()):.3f} s)")
    return figures


if __name__ == "__main__":  # python -m bench.panels [--quick]: this benchmark alone, on an embedded PostgreSQL
    import sys
    import uuid

    from hybridspend.infra.local import LocalPostgres

    from .sink import _fresh_database

    pg = LocalPostgres(Path("/tmp") / f"hs-bench-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True,
                       database="postgres").start()
    try:
        result = run(lambda name: _fresh_database(pg.dsn, name), "--quick" in sys.argv)
        print(json.dumps({k: v for k, v in result.items() if k != "panel_p95_s"}, indent=2))
    finally:
        pg.stop()
