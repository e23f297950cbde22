"""The panels that read the rollups of migrations 016 and 017 give the rows their raw queries give.

Each panel that was made fast for a big fleet (bench/panels.py, docs/performance.md) is run, with
Grafana's macros and variables expanded, beside the query it replaced reading the raw rows: the
GPU samples, the cost windows (the hourly rollup recomputed from them) and the reconciliation views
over the windows and the bill lines.  The data are 95 days of a small fleet written through the
sink's own path, with windows of 30 minutes, samples at odd seconds, GPUs that stop reporting, a
bill with gaps and a resource billed but never seen live; then windows restated and stored late,
and a billing delivery that supersedes a month of the bill with other amounts and fewer hours.  The
ranges end off the hour, over 24 hours, 7, 30 and 90 days and less than a day (the reconciliation's
also at and around midnights, where its daily rollup's whole days begin and end); the sample rollups
never refreshed, refreshed to the middle of the data, and refreshed again after a late sample.  A
panel whose SQL does not read ``$__interval`` runs at one interval, and one that reads no time range
over one range.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import psycopg
import pytest
from msgspec.structs import replace

from bench.panels import interval
from hybridspend.contracts.events import CostLine, CostWindow, GpuReading, GpuSample, WorkloadShare
from hybridspend.dashboards.build import TEAM, all_dashboards
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_line_row, cost_window_row, gpu_sample_rows, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions
from tests.grafana_sql import expand, seconds
from tests.test_dashboards import HOSTILE

pytestmark = pytest.mark.integration

# the data's end, off the hour and the minute (a panel reads the last two days before now())
END = datetime.now(timezone.utc).replace(second=23, microsecond=0) - timedelta(minutes=2)
DAYS = 95
WINDOW_MS = 1_800_000
SAMPLE_S = 900

# The queries the panels ran before migration 016, on the raw rows: `cost_hourly` below is recomputed from the
# cost windows (RAW_HOURLY), so these check the rollups too.
FILTERS = (f"environment IN ($environment) AND workload IN ($workload) AND gpu_class IN ($gpu_class)"
           f" AND {TEAM} IN ($team)")
RAW_HOURLY = """(SELECT date_bin(INTERVAL '1 hour', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                        workload, environment, gpu_class, basis, max(team) AS team,
                        sum(allocated_gpu_ms) AS allocated_gpu_ms, sum(busy_gpu_ms) AS busy_gpu_ms,
                        sum(cost_usd) AS cost_usd
                   FROM cost_windows GROUP BY 1, 2, 3, 4, 5) raw_hourly"""
BEFORE = {
    ("hybridspend-fleet", 1): """
        SELECT environment AS metric, count(DISTINCT gpu_uuid) AS value FROM gpu_samples
         WHERE $__timeFilter(ts) AND environment IN ($environment) AND gpu_class IN ($gpu_class)
         GROUP BY 1 ORDER BY 1""",
    ("hybridspend-fleet", 4): """
        SELECT $__timeGroupAlias(ts, $__interval), environment AS metric, avg(utilization_pct) AS value
          FROM gpu_samples
         WHERE $__timeFilter(ts) AND environment IN ($environment) AND gpu_class IN ($gpu_class)
         GROUP BY 1, 2 ORDER BY 1""",
    ("hybridspend-cost", 1): f"""
        SELECT $__timeGroupAlias(bucket, $__interval), workload || ' (' || environment || ')' AS metric,
               sum(cost_usd) * 3600000 / NULLIF(sum(busy_gpu_ms), 0) AS value
          FROM {RAW_HOURLY}
         WHERE $__timeFilter(bucket) AND basis = 'estimated' AND workload <> 'idle' AND {FILTERS}
         GROUP BY 1, 2 ORDER BY 1""",
    ("hybridspend-cost", 2): f"""
        SELECT workload, {TEAM} AS team, environment, gpu_class,
               sum(allocated_gpu_ms) / 3600000.0 AS "GPU-hours",
               sum(busy_gpu_ms) / 3600000.0 AS "busy GPU-hours",
               sum(busy_gpu_ms)::numeric / NULLIF(sum(allocated_gpu_ms), 0) AS utilization,
               sum(cost_usd) AS "cost",
               sum(cost_usd) * 3600000 / NULLIF(sum(busy_gpu_ms), 0) AS "$ per busy GPU-hour"
          FROM {RAW_HOURLY}
         WHERE $__timeFilter(bucket) AND basis = 'estimated' AND {FILTERS}
         GROUP BY 1, 2, 3, 4 ORDER BY "cost" DESC""",
    ("hybridspend-breakeven", 2): f"""
        SELECT $__timeGroupAlias(bucket, $__interval), workload || ' (' || environment || ')' AS metric,
               100.0 * sum(busy_gpu_ms) / NULLIF(sum(allocated_gpu_ms), 0) AS value
          FROM {RAW_HOURLY}
         WHERE $__timeFilter(bucket) AND basis = 'estimated' AND workload <> 'idle' AND {FILTERS}
         GROUP BY 1, 2 ORDER BY 1""",
    ("hybridspend-pipeline", 2): """
        SELECT resource, environment, max(ts) AS last_sample,
               extract(epoch FROM now() - max(ts)) AS age_s
          FROM gpu_samples WHERE ts > now() - INTERVAL '2 days'
         GROUP BY 1, 2 ORDER BY 4 DESC""",
    ("hybridspend-reconciliation", 1): """
        SELECT day AS "time", environment || ' estimated' AS metric, sum(estimated_usd) AS value
          FROM estimate_vs_billed_daily
         WHERE $__timeFilter(day) AND environment IN ($environment) AND workload IN ($workload)
         GROUP BY 1, 2
        UNION ALL
        SELECT day, environment || ' billed', sum(billed_usd)
          FROM estimate_vs_billed_daily
         WHERE $__timeFilter(day) AND environment IN ($environment) AND workload IN ($workload)
         GROUP BY 1, 2 ORDER BY 1""",
    ("hybridspend-reconciliation", 2): """
        SELECT day AS "time", workload, environment, estimated_usd, billed_usd, estimate_error_ratio
          FROM estimate_vs_billed_daily
         WHERE $__timeFilter(day) AND environment IN ($environment) AND workload IN ($workload)
         ORDER BY day DESC, workload""",
    ("hybridspend-reconciliation", 3): """
        SELECT provider, sum(estimated_usd) AS estimated_usd, sum(billed_usd) AS billed_usd,
               (sum(estimated_usd) - sum(billed_usd)) / NULLIF(sum(billed_usd), 0) AS estimate_error_ratio,
               count(*) FILTER (WHERE billed_usd IS NULL) AS resource_hours_not_billed_yet
          FROM estimate_vs_billed_hourly
         WHERE $__timeFilter(hour)
         GROUP BY provider ORDER BY provider""",
}
SERIES = {("hybridspend-cost", 1), ("hybridspend-breakeven", 2)}  # drawn in points of an hour or more
RECONCILIATION = {("hybridspend-reconciliation", pid) for pid in (1, 2, 3)}
PER_PROVIDER = {("hybridspend-reconciliation", 3)}  # the hourly one, which takes no workload
SAMPLE_PANELS = {("hybridspend-fleet", 1), ("hybridspend-fleet", 4), ("hybridspend-pipeline", 2)}

RANGES = [timedelta(hours=24), timedelta(days=7), timedelta(days=30), timedelta(days=90)]
SHORT = [timedelta(hours=6), timedelta(minutes=90), timedelta(minutes=7)]  # less than a day


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _seed(dsn: str) -> None:
    """95 days of four resources: an on-prem node shared by two workloads and idle capacity, an on-prem H100
    node, two cloud instances (one of them the hostile name's) billed hourly in monthly deliveries except the
    last 3 days and some hours, and a bill for an instance never seen live; then the windows of one cloud
    instance's day restated, a workload's windows on the other stored late over two weeks (the owner of three
    of those days), and a second delivery of the month 40 days back, 1 % dearer and without the lines of one
    instance's days 2-5 (superseding the first).  GPU samples every 15 minutes (at 17 s past) for the last 35
    days (two GPUs every 2 minutes in the last 3 hours), one GPU gone quiet 10 days ago, another reporting once
    a day."""
    migrate(dsn)
    rng = random.Random(16)
    start = END - timedelta(days=DAYS)
    start_ms = _ms(start) // WINDOW_MS * WINDOW_MS
    owners = [("node-1", "onprem", "A100", "train", "ml", 4), ("node-1", "onprem", "A100", "idle", "", 2),
              ("node-1", "onprem", "A100", "etl", "", 2), ("node-2", "onprem", "H100", "embed", "search", 8),
              ("i-0aa", "cloud", "A100", HOSTILE, "ml", 8), ("i-0bb", "cloud", "H100", "embed", "search", 8)]
    batch, partitions = Batch(), Partitions(POSTGRESQL)
    windows: dict[str, CostWindow] = {}
    with psycopg.connect(dsn) as conn:
        for i in range((_ms(END) - start_ms) // WINDOW_MS):
            ws = start_ms + i * WINDOW_MS
            for resource, env, cls, workload, team, gpus in owners:
                if workload == "etl" and (i // 48) % 3 == 0:
                    continue  # runs two days in three
                alloc = gpus * WINDOW_MS
                busy = 0 if workload == "idle" else int(alloc * rng.uniform(0.05, 0.98))
                cost = D(rng.randrange(1_000_000, 9_000_000)) / 1_000_000 * gpus
                provider = ("aws" if resource == "i-0aa" else "gcp") if env == "cloud" else ""
                window = windows[f"{resource}|{workload}|{ws}"] = CostWindow(
                    event_id=f"{resource}|{workload}|{ws}", workload=workload, team=team, allow_spot=False,
                    environment=env, gpu_class=cls, resource=resource, window_start_ms=ws, window_ms=WINDOW_MS,
                    allocated_gpu_ms=alloc, busy_gpu_ms=busy, metered_gpu_ms=alloc, energy_mj=10**8, sample_count=6,
                    first_ms=ws, last_ms=ws + WINDOW_MS, cost_usd=cost, provider=provider)
                batch.add("cost_windows", cost_window_row(window))
                billed = env == "cloud" and ws < _ms(END - timedelta(days=3)) and i % 97 != 5
                if billed and (ws // WINDOW_MS) % 2 == 0:  # the bill's lines are hourly
                    line_cost = cost * 2 * D(rng.choice(("0.97", "1.00", "1.03")))
                    rid = (f"arn:aws:ec2:us-east-1:1:instance/{resource}" if provider == "aws"
                           else f"//compute.googleapis.com/projects/p/zones/z/instances/{resource}")
                    batch.add("cost_lines", _line(f"{resource}|{ws}", provider, rid, ws, line_cost, "1"))
            if i % 48 == 7:  # a resource billed but never seen live
                batch.add("cost_lines", _line(f"ghost|{ws}", "aws", "arn:aws:ec2:us-east-1:1:instance/i-0gh0st", ws,
                                              D("12.5"), "1"))
            if len(batch) >= 5000:
                write_batch(conn, batch, POSTGRESQL, partitions)
                batch = Batch()
        write_batch(conn, batch, POSTGRESQL, partitions)
        # restated: i-0aa's windows of a day 12 days back, 5 % dearer; stored late: a workload on i-0bb over the
        # two weeks before 20 days back, for whole days on three of them (a tie with embed: it owns them by its
        # name) and 8 hours on the others
        late = Batch()
        for w in windows.values():
            if w.resource == "i-0aa" and _day(w.window_start_ms) == _day(_ms(END - timedelta(days=12))):
                late.add("cost_windows", cost_window_row(replace(w, cost_usd=w.cost_usd * D("1.05"))))
        for day in range(20, 34):
            first = _day(_ms(END - timedelta(days=day)))
            hours = (0, 24) if day < 23 else (6, 14)
            for ws in range(first + hours[0] * 3_600_000, first + hours[1] * 3_600_000, WINDOW_MS):
                late.add("cost_windows", cost_window_row(CostWindow(
                    event_id=f"late|{ws}", workload="backfill", team="search", allow_spot=False, environment="cloud",
                    gpu_class="H100", resource="i-0bb", window_start_ms=ws, window_ms=WINDOW_MS,
                    allocated_gpu_ms=8 * WINDOW_MS, busy_gpu_ms=WINDOW_MS, metered_gpu_ms=8 * WINDOW_MS, energy_mj=0,
                    sample_count=6, first_ms=ws, last_ms=ws + WINDOW_MS, cost_usd=D("3.5"), provider="gcp")))
        write_batch(conn, late, POSTGRESQL, partitions)
        # a second delivery of the month 40 days back: each line of the first under a new id, 1 % dearer, but
        # for i-0bb's days 2 to 5 of the month, which the first delivery billed and this one no longer does
        month = _month_ms(_ms(END - timedelta(days=40)))
        superseding = Batch()
        for event_id, provider, rid, ws, cost in conn.execute(
                "SELECT event_id, provider, resource_id, charge_period_start, effective_cost_usd FROM cost_lines"
                " WHERE billing_period_start = %s", (datetime.fromtimestamp(month / 1000, timezone.utc),)):
            if rid.endswith("/i-0bb") and 1 <= (_ms(ws) - month) // 86_400_000 <= 4:
                continue
            superseding.add("cost_lines", _line(f"{event_id}|2", provider, rid, _ms(ws), cost * D("1.01"), "2"))
        write_batch(conn, superseding, POSTGRESQL, partitions)
        conn.commit()
        assert conn.execute("SELECT DISTINCT export_version FROM cost_lines WHERE billing_period_start = %s",
                            (datetime.fromtimestamp(month / 1000, timezone.utc),)).fetchall() == [("2",)]
        # what the panels are to show of it: i-0bb's four days not billed any more, three days of backfill's
        assert conn.execute("SELECT count(*) FROM cloud_cost_daily WHERE resource = 'i-0bb' AND billed_usd IS NULL"
                            " AND day < %s", (END - timedelta(days=4),)).fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM cloud_cost_daily WHERE workload = 'backfill'").fetchone()[0] == 3
    _samples(dsn, END - timedelta(days=35), END - timedelta(hours=3))
    _samples(dsn, END - timedelta(hours=3), END, {"GPU-node-1-0", "GPU-i-0aa-1"}, 41, 120)  # the last hours: two GPUs


def _day(ms: int) -> int:
    return ms // 86_400_000 * 86_400_000


def _month_ms(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return _ms(day.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


def _line(event_id: str, provider: str, resource_id: str, ws: int, cost: D, version: str):
    """A bill line of the delivery ``version`` of its month."""
    return cost_line_row(CostLine(
        event_id=event_id, provider=provider, provider_name=provider, billing_account="1",
        billing_period_start_ms=_month_ms(ws), resource_id=resource_id, charge_period_start_ms=ws,
        charge_period_end_ms=ws + 3_600_000, charge_category="Usage", billed_cost_usd=cost, effective_cost_usd=cost,
        service="compute", sku="", region="r", instance_type="p4d.24xlarge", gpu_class="A100", gpus=8,
        source="test", export_version=version))


def _samples(dsn: str, first: datetime, until: datetime, only: set[str] | None = None, second: int = 17,
             step_s: int = SAMPLE_S) -> None:
    """GPU samples every ``step_s`` at ``second`` past the minute, from about ``first`` to before ``until``."""
    rng = random.Random(int(first.timestamp()))
    gpus = [("node-1", "onprem", "A100", g) for g in range(8)] + [("node-2", "onprem", "H100", g) for g in range(4)]
    gpus += [("i-0aa", "cloud", "A100", g) for g in range(4)]
    batch, partitions = Batch(), Partitions(POSTGRESQL)
    ts = first.replace(second=second, microsecond=0)
    with psycopg.connect(dsn) as conn:
        while ts < until:
            by_resource: dict[tuple[str, str], list[GpuReading]] = {}
            for resource, env, cls, g in gpus:
                uuid = f"GPU-{resource}-{g}"
                if only is not None and uuid not in only:
                    continue
                if uuid == "GPU-node-2-3" and ts > END - timedelta(days=10):
                    continue  # gone quiet
                if uuid == "GPU-i-0aa-3" and not (ts.hour == 4 and ts.minute < step_s // 60):
                    continue  # once a day
                util = round(rng.uniform(0, 100), 3)
                by_resource.setdefault((resource, env), []).append(GpuReading(
                    uuid, g, cls, cls, util, 1, 2, 300_000, [WorkloadShare("train", "ml")] if util > 5 else []))
            for (resource, env), readings in by_resource.items():
                for row in gpu_sample_rows(GpuSample(f"s|{resource}|{ts.isoformat()}", _ms(ts), step_s * 1000,
                                                     resource, env, "test", readings)):
                    batch.add("gpu_samples", row)
            ts += timedelta(seconds=step_s)
            if len(batch) >= 5000:
                write_batch(conn, batch, POSTGRESQL, partitions)
                batch = Batch()
        write_batch(conn, batch, POSTGRESQL, partitions)
        conn.commit()


def _panels() -> dict[tuple[str, int], dict]:
    return {(uid, p["id"]): p for uid, d in all_dashboards().items() for p in d["panels"] if (uid, p["id"]) in BEFORE}


def _rows(conn: psycopg.Connection, sql: str) -> tuple[list[str], list[tuple]]:
    cur = conn.execute(sql)
    return [c.name for c in cur.description], cur.fetchall()


def _same(where: str, new: tuple[list[str], list[tuple]], old: tuple[list[str], list[tuple]]) -> None:
    (columns, rows), (old_columns, old_rows) = new, old
    assert columns == old_columns, where
    assert len(rows) == len(old_rows), f"{where}: {len(rows)} rows, the raw query {len(old_rows)}"
    assert rows, f"{where}: no rows"
    key = repr  # (floats compared within rounding below; they sort the same at this precision)
    for a, b in zip(sorted(rows, key=lambda r: key([round(v, 6) if isinstance(v, float) else v for v in r])),
                    sorted(old_rows, key=lambda r: key([round(v, 6) if isinstance(v, float) else v for v in r]))):
        for column, va, vb in zip(columns, a, b):
            if isinstance(va, float) and isinstance(vb, float):  # a mean of floats summed in another order
                assert math.isclose(va, vb, rel_tol=1e-9), f"{where}.{column}: {va} vs {vb}"
            else:
                assert va == vb, f"{where}.{column}: {va!r} vs the raw query's {vb!r}\n{a}\n{b}"


def _series_step(width: timedelta, grafana_interval: str) -> str:
    """The points' width the per-workload series draw: an hour or more, whole days past a week."""
    unit = 86400 if width > timedelta(days=7) else 3600
    return f"{math.ceil(seconds(grafana_interval) / unit) * unit}s"


def _compare(conn: psycopg.Connection, variables: dict, ranges: list[timedelta], which=None,
             intervals: tuple[str, ...] = (), end: datetime = END) -> int:
    """Each panel (of ``which``) beside its raw query over each range up to ``end``, at each of ``intervals``
    (default: Grafana's for the range); a panel whose SQL reads no interval at one of them, and one that reads
    no time range over one range.  How many comparisons."""
    compared = 0
    for (uid, pid), panel in _panels().items():
        if which is not None and (uid, pid) not in which:
            continue
        sql = panel["targets"][0]["rawSql"]
        for width in ranges if "$__time" in sql else ranges[:1]:
            grafana_intervals = intervals or (interval(width, panel.get("maxDataPoints", 900)),)
            for grafana_interval in grafana_intervals if "$__interval" in sql else grafana_intervals[:1]:
                window = {"time_from": end - width, "time_to": end, "variables": variables}
                raw_interval = _series_step(width, grafana_interval) if (uid, pid) in SERIES else grafana_interval
                with conn.transaction():  # one now() for both
                    new = _rows(conn, expand(panel["targets"][0]["rawSql"], interval=grafana_interval, **window))
                    old = _rows(conn, expand(BEFORE[(uid, pid)], interval=raw_interval, **window))
                _same(f"{uid} / {panel['title']} over {width} at {grafana_interval}", new, old)
                compared += 1
    return compared


@pytest.mark.slow
def test_the_fast_panels_give_the_raw_queries_rows(database):
    _seed(database)
    with psycopg.connect(database, autocommit=True) as conn:
        variables: dict[str, list[str]] = {}
        for v in next(iter(all_dashboards().values()))["templating"]["list"]:
            variables[v["name"]] = [r[0] for r in conn.execute(expand(
                v["query"], time_from=END - timedelta(days=7), time_to=END, interval="1h", variables=variables))]
        assert HOSTILE in variables["workload"] and "(none)" in variables["team"]

        # the sample rollups never refreshed: the fleet panels read the raw samples (GPUs by environment at one
        # interval, and collector freshness, which reads the two days before now(), over one range)
        assert _compare(conn, variables, RANGES[-1:] + SHORT, SAMPLE_PANELS, ("1m",)) == 4 + 4 + 1
        # every panel over the long ranges, the sample rollups refreshed up to five days ago (raw after it)
        assert conn.execute("SELECT refresh_gpu_sample_rollups(%s)", (END - timedelta(days=5),)).fetchone()[0] \
            == (END - timedelta(days=5)).replace(second=0)
        assert conn.execute("SELECT count(*) FROM gpu_seen_daily").fetchone()[0] > 0
        assert _compare(conn, variables, RANGES) == (len(BEFORE) - 1) * len(RANGES) + 1
        assert _compare(conn, variables, RANGES + SHORT, SAMPLE_PANELS, ("1m",)) == 7 + 7 + 1
        # an interval that is not a whole number of minutes reads no minute of the rollup
        assert _compare(conn, variables, RANGES[1:2], SAMPLE_PANELS, ("30s",)) == 3
        # one filtered value (the hostile name's quoting included) and the series' other steps
        one = {**variables, "workload": [HOSTILE, "train", "backfill"], "environment": ["cloud", "onprem"],
               "team": ["ml"]}
        assert _compare(conn, one, RANGES, SERIES | {("hybridspend-cost", 2), ("hybridspend-reconciliation", 2)},
                        ("1m", "2h", "1d")) == 2 * 4 * 3 + 2 * 4
        # less than a day: hourly rollup rows only, and the hourly reconciliation from the windows and lines only
        assert _compare(conn, variables, SHORT[:2], SERIES | {("hybridspend-cost", 2)} | PER_PROVIDER, ("1m",)) == 4 * 2
        # the reconciliation over ranges to a midnight and to 23:00 (a whole last day), from a midnight and from
        # 22:00 (the hourly one reads its whole days from the rollup, the hours around them not)
        midnight = (END - timedelta(days=9)).replace(hour=0, minute=0, second=0)
        for end in (midnight, midnight - timedelta(hours=1)):
            assert _compare(conn, variables, [timedelta(days=7), timedelta(hours=26)], PER_PROVIDER, end=end) == 2
            assert _compare(conn, variables, [timedelta(days=7)], RECONCILIATION - PER_PROVIDER, end=end) == 2
        # within a week and at most an hour's interval, the series give the very rows they gave before
        for uid, pid in SERIES:
            panel = _panels()[(uid, pid)]
            for width in (timedelta(hours=24), timedelta(days=7)):
                window = {"time_from": END - width, "time_to": END, "variables": variables}
                _same(f"{uid} / {pid} as before", _rows(conn, expand(panel["targets"][0]["rawSql"], interval="10m",
                                                                     **window)),
                      _rows(conn, expand(BEFORE[(uid, pid)], interval="10m", **window)))

    # a sample stored late (before the watermark, within the hour the refresh aggregates again)
    _samples(database, END - timedelta(days=5, minutes=40), END - timedelta(days=5, minutes=39), {"GPU-node-2-0"}, 41)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SELECT refresh_gpu_sample_rollups(%s)", (END - timedelta(hours=4),))
        assert _compare(conn, variables, RANGES[1:] + SHORT[:1], SAMPLE_PANELS, ("1m",)) == 4 + 4 + 1


def test_the_bench_draws_grafanas_intervals():
    # Grafana's roundInterval of the range over 900 pixels, or over the panel's maxDataPoints
    assert [interval(timedelta(hours=24)), interval(timedelta(days=7)), interval(timedelta(days=30)),
            interval(timedelta(days=90))] == ["2m", "10m", "1h", "2h"]
    assert [interval(w, 100) for w in RANGES] == ["15m", "2h", "6h", "12h"]
