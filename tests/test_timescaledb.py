"""Storage on the TimescaleDB engine: what tests/test_storage.py proves on plain PostgreSQL, and the
same answers from both engines for the same data.

TimescaleDB here is PGlite with the TimescaleDB extension behind ``tests/tsdb/server.mjs``
(``tests/timescale.py``), or the server ``HYBRIDSPEND_TEST_DSN`` names when it has the extension.
Background jobs do not run by themselves there: the tests run the policies' jobs with ``run_job``
as TimescaleDB's scheduler would.  The server holds one session at a time, so every connection is
closed before the next one opens.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest

from hybridspend.contracts.config import KafkaConfig
from hybridspend.contracts.events import (
    CostLine,
    CostWindow,
    DeadLetter,
    GpuReading,
    GpuSample,
    LiveSpend,
    WorkloadShare,
)
from hybridspend.contracts.topics import Topics
from hybridspend.dashboards.build import all_dashboards
from hybridspend.infra.broker import ensure_topics, make_consumer, make_producer
from hybridspend.storage import onprem_allocation, queries, report_queries
from hybridspend.storage.db import SchemaError, check_schema, migrate, sync_budgets
from hybridspend.storage.sink import (
    Batch,
    Sink,
    cost_line_row,
    cost_window_row,
    dead_letter_row,
    decision_row,
    gpu_sample_rows,
    live_instance_row,
)
from hybridspend.storage.timeseries import POSTGRESQL, TIMESCALEDB
from hybridspend.storage.timeseries import TABLES as TIME_SERIES
from tests.grafana_sql import expand
from tests.test_dashboards import HOSTILE, seeded_decision

pytestmark = pytest.mark.integration  # every test here talks to a real TimescaleDB (and PostgreSQL)

WINDOW_MS = 900_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
ROOT = Path(__file__).resolve().parents[1]


def _hour_floor_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000) // HOUR_MS * HOUR_MS


def cost_windows(n: int, end_ms: int, seed: int = 7) -> list[CostWindow]:
    """Random 15-minute windows over the 4 days before ``end_ms`` (policies act relative to now)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = end_ms - 4 * DAY_MS + rng.randrange(0, 4 * 96) * WINDOW_MS
        workload = rng.choice(["train", "infer", "idle", "etl"])
        env = rng.choice(["onprem", "cloud"])
        resource = rng.choice(["n1", "n2", "i-1"])
        alloc = rng.randrange(1, 8) * WINDOW_MS
        out.append(CostWindow(
            event_id=CostWindow.make_id(resource, workload, env, "A100", start), workload=workload, team="t",
            allow_spot=False, environment=env, gpu_class="A100", resource=resource, window_start_ms=start,
            window_ms=WINDOW_MS, allocated_gpu_ms=alloc, busy_gpu_ms=rng.randrange(0, alloc + 1),
            metered_gpu_ms=alloc, energy_mj=rng.randrange(0, 10**9), sample_count=15, first_ms=start,
            last_ms=start + WINDOW_MS, cost_usd=D(rng.randrange(0, 10**8)) / 10**6,
            basis=rng.choice(["estimated", "estimated", "billed"]),
        ))
    return out


def sample(ts: datetime, resource: str = "n1", utilization_pct: float = 50.0, workload: str = "") -> GpuSample:
    shares = [WorkloadShare(workload, "ml")] if workload else []
    return GpuSample(f"s|{resource}|{ts.isoformat()}", int(ts.timestamp() * 1000), 60_000, resource, "onprem", "test",
                     [GpuReading("GPU-0", 0, "A100", "A100", utilization_pct, 1, 2, 300_000, shares)])


def write(dsn: str, *batches: Batch) -> Sink:
    """Write batches through the sink's own path (COPY into staging, upsert, rollups); the sink, closed."""
    sink = Sink(consumer=None, dsn=dsn, topics=Topics("t.", 1))
    try:
        for batch in batches:
            assert sink.write_durably(batch, stop=lambda: True), "the database did not answer"  # fail, never hang
    finally:
        sink.close()
    return sink


def batch_of(table: str, rows) -> Batch:
    batch = Batch()
    for row in rows:
        batch.add(table, row)
    return batch


def run_jobs(dsn: str, proc_name: str, hypertable: str) -> int:
    """Run a policy's job now, as TimescaleDB's scheduler would; how many ran."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %s AND hypertable_name = %s",
            (proc_name, hypertable))]
        for job_id in ids:
            conn.execute("CALL run_job(%s)", (job_id,))
    return len(ids)


def refresh_rollups(dsn: str) -> None:
    for cagg in ("cost_hourly", "cost_daily"):
        assert run_jobs(dsn, "policy_refresh_continuous_aggregate", cagg) == 1


def compress_chunks(dsn: str, table: str) -> int:
    """Compress every chunk of a hypertable; how many chunks are compressed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks(%s) c", (table,))
        return conn.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = %s"
                            " AND is_compressed", (table,)).fetchone()[0]


def fetch(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def direct(dsn: str, width: str) -> list[tuple]:
    return fetch(dsn, f"""
        SELECT date_bin(INTERVAL '{width}', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b, workload,
               environment, gpu_class, basis, sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj),
               sum(cost_usd), count(*)
          FROM cost_windows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""")


def rollup(dsn: str, table: str) -> list[tuple]:
    return fetch(dsn, f"""
        SELECT bucket, workload, environment, gpu_class, basis, allocated_gpu_ms, busy_gpu_ms, energy_mj,
               cost_usd, windows FROM {table} ORDER BY 1, 2, 3, 4, 5""")


def test_migrations_report_timescaledb_are_idempotent_and_refuse_a_newer_schema(timescale_database, tmp_path):
    dsn = timescale_database
    files = sorted(ROOT.joinpath("storage", "migrations").glob("*.sql"))
    versions = sorted({int(f.name[:3]) for f in files})
    latest = versions[-1]
    # the command an operator runs, the password from the environment as libpq reads it
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = {**os.environ, "HYBRIDSPEND__DATABASE__DSN": psycopg.conninfo.make_conninfo(**params)}
    if password:
        env["PGPASSWORD"] = password
    proc = subprocess.run([sys.executable, "-m", "hybridspend.cli", "db", "migrate", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"migrated from version 0 to {latest} (engine: timescaledb)" in proc.stdout
    assert migrate(dsn) == (latest, latest, TIMESCALEDB)
    with pytest.raises(SchemaError, match="built for engine timescaledb, not postgresql"):
        migrate(dsn, engine=POSTGRESQL)
    with psycopg.connect(dsn) as conn:
        check_schema(conn)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == versions
        hypertables = dict(conn.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = 'public'"))
        assert hypertables == {t.name: bool(t.compress_after) for t in TIME_SERIES.values()}
        assert {"cost_windows", "gpu_samples", "cost_lines"} <= set(hypertables)
        caggs = dict(conn.execute(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"))
        assert caggs == {"cost_hourly": False, "cost_daily": False}  # real-time
        jobs = sorted(conn.execute(
            "SELECT proc_name, hypertable_name, config->>'compress_after', config->>'drop_after',"
            "       config->>'start_offset', config->>'end_offset'"
            "  FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"))
        assert {
            ("policy_compression", "cost_lines", "60 days", None, None, None),
            ("policy_compression", "cost_windows", "30 days", None, None, None),
            ("policy_compression", "gpu_samples", "2 days", None, None, None),
            ("policy_refresh_continuous_aggregate", "cost_daily", None, None, "40 days", "1 day"),
            ("policy_refresh_continuous_aggregate", "cost_hourly", None, None, "40 days", "01:00:00"),
            ("policy_retention", "gpu_samples", None, "30 days", None, None),
        } <= set(jobs)
        # raw samples are the only table with a retention policy
        assert [j[1] for j in jobs if j[0] == "policy_retention"] == ["gpu_samples"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'from_the_future')")
        with pytest.raises(SchemaError, match="version 99, newer than this hybridspend knows"):
            check_schema(conn)
    with pytest.raises(SchemaError, match="upgrade hybridspend"):
        migrate(dsn)


def _totals(dsn: str, sink: Sink) -> tuple:
    if sink.conn is not None:
        sink.conn.close()  # the server holds one session at a time; the sink reconnects
    return fetch(dsn, """
        SELECT (SELECT count(*) FROM cost_windows), (SELECT sum(cost_usd) FROM cost_windows),
               (SELECT sum(allocated_gpu_ms) FROM cost_windows), (SELECT count(*) FROM gpu_samples),
               (SELECT count(*) FROM cost_lines), (SELECT sum(effective_cost_usd) FROM cost_lines)""")[0]


def test_the_sink_upserts_into_hypertables_and_replays_change_nothing(broker, timescale_database, topic_prefix):
    dsn = timescale_database
    migrate(dsn)
    topics = Topics(topic_prefix, 2)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    end_ms = _hour_floor_ms(datetime.now(timezone.utc))
    windows = cost_windows(300, end_ms, seed=11)
    samples = [sample(datetime.fromtimestamp((end_ms - i * HOUR_MS) / 1000, timezone.utc), f"n{i % 3}")
               for i in range(72)]  # 3 days, hourly, three hosts in turn
    lines = [CostLine(
        event_id=f"line-{i}", provider="aws", provider_name="AWS", billing_account="1",
        billing_period_start_ms=end_ms - 4 * DAY_MS, resource_id=f"arn:aws:ec2:us-east-1:1:instance/i-{i % 2}",
        charge_period_start_ms=end_ms - (i + 1) * HOUR_MS, charge_period_end_ms=end_ms - i * HOUR_MS,
        charge_category="Usage", billed_cost_usd=D("32.77"), effective_cost_usd=D("20.5"), service="ec2", sku="",
        region="us-east-1", instance_type="p4d.24xlarge", gpu_class="A100", gpus=8, source="test",
        export_version="2026-11-01T00:00:00Z|a") for i in range(48)]
    unique = {(w.window_start_ms, w.resource, w.workload, w.environment, w.basis): w for w in windows}
    # 72 samples of one GPU each; 48 lines of $20.5 effective: 48 * 20.5 = 984
    expected = (len(unique), sum((w.cost_usd for w in unique.values()), D(0)),
                sum(w.allocated_gpu_ms for w in unique.values()), 72, 48, D("984"))

    def produce():
        producer = make_producer(broker.bootstrap, KafkaConfig())
        for w in windows:
            producer.send(topics.cost_windows, key=w.workload.encode(), value=w.encode())
        for s in samples:
            producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
        for c in lines:
            producer.send(topics.cost_lines, key=c.resource_id.encode(), value=c.encode())
        producer.flush()
        producer.close()

    consumer = make_consumer(broker.bootstrap, KafkaConfig(), broker.profile, topics.group("sink"),
                             [topics.cost_windows, topics.gpu_samples, topics.cost_lines], fetch_max_wait_ms=100)
    sink = Sink(consumer, dsn, topics)
    records = len(windows) + len(samples) + len(lines)

    def drain(until, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sink.run_once(timeout_ms=200, stop=lambda: time.monotonic() > deadline)
            if until():
                return
        raise AssertionError("the sink did not catch up in time")

    try:
        produce()
        drain(lambda: sink.records_read >= records and _totals(dsn, sink) == expected)
        assert sink.engine == TIMESCALEDB and sink.partitions.known == set()  # chunks, not partitions
        produce()  # the same events again
        drain(lambda: sink.records_read >= 2 * records)
        assert _totals(dsn, sink) == expected
    finally:
        consumer.close()
        sink.close()
    # the rows are in the hypertables' chunks
    chunks = dict(fetch(dsn, "SELECT hypertable_name, count(*) FROM timescaledb_information.chunks"
                             " WHERE hypertable_schema = 'public' GROUP BY 1"))
    assert set(chunks) == {"cost_windows", "gpu_samples", "cost_lines"} and chunks["gpu_samples"] >= 3
    stored_in = fetch(dsn, "SELECT DISTINCT c.relnamespace::regnamespace::text FROM gpu_samples s"
                           " JOIN pg_class c ON c.oid = s.tableoid")
    assert stored_in == [("_timescaledb_internal",)]


def test_a_row_timescaledb_refuses_is_dead_lettered_and_the_rest_is_written(timescale_database):
    dsn = timescale_database
    migrate(dsn)
    good, bad = cost_windows(2, _hour_floor_ms(datetime.now(timezone.utc)), seed=5)
    bad.resource, bad.event_id = "n9", bad.event_id + "-n9"  # a different natural key from the good one
    bad.cost_usd = D("1e20")  # beyond numeric(20, 6): the database refuses it
    sink = write(dsn, batch_of("cost_windows", [cost_window_row(good), cost_window_row(bad)]))
    assert sink.rejected == 1 and sink.rows_written == 1
    assert fetch(dsn, "SELECT event_id FROM cost_windows") == [(good.event_id,)]
    ((reason, table),) = fetch(dsn, "SELECT reason, source_topic FROM dead_letters")
    assert reason.startswith("sink: refused by the database: numeric field overflow") and table == "cost_windows"


def test_rollups_equal_plain_postgresql_and_a_direct_aggregate_after_replays_and_restatements(
        database, timescale_database):
    tsdb, plain = timescale_database, database
    assert migrate(tsdb)[2] == TIMESCALEDB and migrate(plain, engine=POSTGRESQL)[2] == POSTGRESQL
    end_ms = _hour_floor_ms(datetime.now(timezone.utc))
    windows = cost_windows(600, end_ms)
    first = [batch_of("cost_windows", [cost_window_row(w) for w in windows[i:i + 150]]) for i in range(0, 600, 150)]
    for dsn in (tsdb, plain):
        write(dsn, *first)

    def same_everywhere() -> None:
        for width, table in (("1 hour", "cost_hourly"), ("1 day", "cost_daily")):
            expected = direct(plain, width)
            assert direct(tsdb, width) == expected
            assert rollup(plain, table) == expected
            assert rollup(tsdb, table) == expected, f"{table} on TimescaleDB"

    # the sink materialized the buckets older than each refresh policy's end offset (1 hour, 1 day);
    # the newer ones (the last hour's windows, today's) are aggregated from the raw rows when read
    for schema, table in fetch(tsdb, "SELECT materialization_hypertable_schema, materialization_hypertable_name"
                                     " FROM timescaledb_information.continuous_aggregates"):
        assert fetch(tsdb, f'SELECT count(*) FROM "{schema}"."{table}"')[0][0] > 0
    same_everywhere()
    refresh_rollups(tsdb)  # the policies' run changes nothing
    same_everywhere()

    # the buckets already materialized are restated where their rows are compressed
    assert compress_chunks(tsdb, "cost_windows") >= 1
    replay = Batch()
    for w in windows:  # a replay of everything and a restatement of some (same key, new cost) in one batch
        replay.add("cost_windows", cost_window_row(w))
    for w in windows[:50]:
        w.cost_usd += D("1.000001")
        replay.add("cost_windows", cost_window_row(w))
    for dsn in (tsdb, plain):
        write(dsn, replay)
    same_everywhere()  # the sink refreshed the materialized buckets it restated
    refresh_rollups(tsdb)  # and the policy's next run changes nothing
    same_everywhere()
    unique = {w.event_id + w.basis: w for w in windows}
    (count, cost), = fetch(tsdb, "SELECT count(*), sum(cost_usd) FROM cost_windows")
    assert (count, cost) == (len(unique), sum((w.cost_usd for w in unique.values()), D(0)))


def _delivery(version: str, amounts: dict[int, str], start_ms: int) -> list[CostLine]:
    """One delivery of a billing period: line i bills hour i of instance i-(i % 2)."""
    return [CostLine(
        event_id=f"{version}|{i}", provider="aws", provider_name="AWS", billing_account="123",
        billing_period_start_ms=start_ms, resource_id=f"arn:aws:ec2:us-east-1:123:instance/i-{i % 2}",
        charge_period_start_ms=start_ms + i * HOUR_MS, charge_period_end_ms=start_ms + (i + 1) * HOUR_MS,
        charge_category="Usage", billed_cost_usd=D(amount), effective_cost_usd=D(amount), service="ec2", sku="",
        region="us-east-1", instance_type="p4d.24xlarge", gpu_class="A100", gpus=8, source="aws-cur",
        export_version=version) for i, amount in amounts.items()]


def test_a_restatement_landing_in_a_compressed_chunk_gives_the_same_totals_as_plain_postgresql(
        database, timescale_database):
    tsdb, plain = timescale_database, database
    migrate(tsdb)
    migrate(plain, engine=POSTGRESQL)
    start_ms = (_hour_floor_ms(datetime.now(timezone.utc)) - 20 * DAY_MS) // DAY_MS * DAY_MS
    # 240 hourly lines (10 days, two instances taking turns) at $32.77
    first = _delivery("2026-11-02T00:00:00Z|a", {i: "32.77" for i in range(240)}, start_ms)
    # the restated delivery: the first 200 hours at $30.125, hours 200-239 dropped, nothing new
    restated = _delivery("2026-11-03T00:00:00Z|b", {i: "30.125" for i in range(200)}, start_ms)
    estimates = batch_of("cost_windows", [cost_window_row(CostWindow(
        event_id=f"e{i}", workload="embed", team="search", allow_spot=False, environment="cloud",
        gpu_class="A100", resource=f"i-{i % 2}", window_start_ms=start_ms + i * HOUR_MS, window_ms=HOUR_MS,
        allocated_gpu_ms=8 * HOUR_MS, busy_gpu_ms=6 * HOUR_MS, metered_gpu_ms=8 * HOUR_MS, energy_mj=0,
        sample_count=60, first_ms=start_ms + i * HOUR_MS, last_ms=start_ms + (i + 1) * HOUR_MS, cost_usd=D("32.77"),
        provider="aws")) for i in range(240)])
    for dsn in (tsdb, plain):
        write(dsn, batch_of("cost_lines", [cost_line_row(c) for c in first]), estimates)
    assert compress_chunks(tsdb, "cost_lines") >= 2  # 10 days in 7-day chunks
    for dsn in (tsdb, plain):
        write(dsn, batch_of("cost_lines", [cost_line_row(c) for c in restated]))
    totals = "SELECT export_version, count(*), sum(billed_cost_usd), sum(effective_cost_usd) FROM cost_lines GROUP BY 1"
    # only the newer delivery is left: 200 * 30.125 = 6025
    expected = [("2026-11-03T00:00:00Z|b", 200, D("6025"), D("6025"))]
    assert fetch(tsdb, totals) == expected
    assert fetch(plain, totals) == expected
    # the estimate against the restated bill, per hour: equal on both engines
    matched = ("SELECT hour, provider, resource, estimated_usd, billed_usd FROM estimate_vs_billed_hourly"
               " ORDER BY hour, resource")
    assert fetch(tsdb, matched) == fetch(plain, matched)
    # 200 hours billed at 30.125 against 32.77 estimated; 40 estimated hours not billed any more
    (estimated, billed, unbilled), = fetch(tsdb, "SELECT sum(estimated_usd) FILTER (WHERE billed_usd IS NOT NULL),"
                                                 " sum(billed_usd), count(*) FILTER (WHERE billed_usd IS NULL)"
                                                 " FROM estimate_vs_billed_hourly")
    assert (estimated, billed, unbilled) == (D("6554"), D("6025"), 40)  # 200 * 32.77 = 6554


def test_the_retention_job_removes_expired_raw_samples_and_the_compression_job_compresses(timescale_database):
    dsn = timescale_database
    migrate(dsn)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ages_days = (45, 31, 29, 3, 0)
    write(dsn, batch_of("gpu_samples", [row for days in ages_days
                                        for row in gpu_sample_rows(sample(now - timedelta(days=days)))]))
    assert fetch(dsn, "SELECT count(*) FROM show_chunks('gpu_samples')") == [(5,)]  # daily chunks
    assert run_jobs(dsn, "policy_compression", "gpu_samples") == 1
    # compressed after 2 days: the chunks of the samples 45, 31, 29 and 3 days old
    assert fetch(dsn, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'gpu_samples'"
                      " AND is_compressed") == [(4,)]
    assert run_jobs(dsn, "policy_retention", "gpu_samples") == 1
    # dropped after 30 days: the chunks of the samples 45 and 31 days old
    kept = [r[0] for r in fetch(dsn, "SELECT ts FROM gpu_samples ORDER BY ts")]
    assert kept == [now - timedelta(days=29), now - timedelta(days=3), now]
    assert fetch(dsn, "SELECT count(*) FROM show_chunks('gpu_samples')") == [(3,)]


# -- the query layer and the dashboards on both engines ------------------------------------------------


def _fleet(now: datetime) -> list[Batch]:
    """Three days of a small fleet: cost windows with a bill 2 % above the cloud estimates, samples,
    a decision, a dead letter and live instances; then a replay and a restated day of windows."""
    start_ms = int((now - timedelta(days=3)).timestamp() * 1000) // WINDOW_MS * WINDOW_MS
    workloads = [("train", "ml", "onprem"), ("embed", "search", "cloud"), ("idle", "", "onprem"),
                 (HOSTILE, "ml", "cloud")]
    windows, batch = [], Batch()
    for i in range(3 * 96):
        ws = start_ms + i * WINDOW_MS
        for name, team, env in workloads:
            cost = D(1000 + i) / 1000
            resource = f"i-{name[:5]}" if env == "cloud" else "node-1"
            windows.append(CostWindow(
                event_id=f"r|{name}|{ws}", workload=name, team=team, allow_spot=False, environment=env,
                gpu_class="A100", resource=resource, window_start_ms=ws, window_ms=WINDOW_MS,
                allocated_gpu_ms=WINDOW_MS, busy_gpu_ms=0 if name == "idle" else 600_000, metered_gpu_ms=WINDOW_MS,
                energy_mj=10**8, sample_count=15, first_ms=ws, last_ms=ws + WINDOW_MS, cost_usd=cost,
                provider="aws" if env == "cloud" else ""))
            if env == "cloud":
                batch.add("cost_lines", cost_line_row(CostLine(
                    event_id=f"bill|{name}|{ws}", provider="aws", provider_name="AWS", billing_account="1",
                    billing_period_start_ms=start_ms, resource_id=f"arn:aws:ec2:us-east-1:1:instance/{resource}",
                    charge_period_start_ms=ws, charge_period_end_ms=ws + WINDOW_MS, charge_category="Usage",
                    billed_cost_usd=cost * D("1.02"), effective_cost_usd=cost * D("1.02"), service="ec2", sku="",
                    region="us-east-1", instance_type="p4d.24xlarge", gpu_class="A100", gpus=8, source="test",
                    export_version="1")))
        if i % 4 == 0:
            for row in gpu_sample_rows(sample(datetime.fromtimestamp(ws / 1000, timezone.utc), "node-1",
                                              40.0 + i % 50, "train")):
                batch.add("gpu_samples", row)
    for w in windows:
        batch.add("cost_windows", cost_window_row(w))
    batch.add("decisions", decision_row(seeded_decision(start_ms)))
    now_ms = int(now.timestamp() * 1000)
    batch.add("dead_letters", dead_letter_row(DeadLetter.of(topic="t.gpu-samples", partition=0, offset=1,
                                                            reason="not JSON", payload=b"{", ts_ms=now_ms - HOUR_MS)))
    for instance, name, state, since_ms in (("i-a", HOSTILE, "running", now_ms - 2 * HOUR_MS),
                                           ("i-b", "embed", "stopped", None)):
        batch.add("live_instances", live_instance_row(LiveSpend(
            event_id=f"{instance}|1", ts_ms=now_ms - 2 * HOUR_MS, instance_id=instance, provider="aws",
            region="us-east-1", instance_type="p4d.24xlarge", purchase_option="on_demand", workload=name, team="ml",
            gpu_class="A100", gpus=8, state=state, usd_per_hour=D("32.77") if since_ms else D(0),
            running_since_ms=since_ms)))
    replay = batch_of("cost_windows", [cost_window_row(w) for w in windows])
    for w in windows[:96 * 4]:  # the first day restated: 5 % more
        w.cost_usd = w.cost_usd * D("1.05")
        replay.add("cost_windows", cost_window_row(w))
    return [batch, replay]


def _seed(dsn: str, engine: str, batches: list[Batch]) -> None:
    assert migrate(dsn, engine=engine)[2] == engine
    sync_budgets(dsn, {"ml": D(20000), "search": D(5000)})
    sink = write(dsn, *batches[:1])
    sink.record_lag([("t.sink", "t.cost-windows", 0, 12)])
    sink.close()
    if engine == TIMESCALEDB:  # part of the data materialized and compressed, as a running deployment has it
        refresh_rollups(dsn)
        for table in ("cost_windows", "cost_lines", "gpu_samples"):
            compress_chunks(dsn, table)
    write(dsn, *batches[1:])
    if engine == TIMESCALEDB:
        refresh_rollups(dsn)


# columns that read the clock (now()): equal within the seconds between the two engines' queries
NOW_DEPENDENT = {"age_s": 120, "usd_since_start": D("32.77") * 120 / 3600, "USD since start": D("32.77") * 120 / 3600,
                 "measured_at": timedelta(seconds=120)}


def _same(columns: list[str], a: list[tuple], b: list[tuple], where: str) -> None:
    def key(row):
        return repr([v for c, v in zip(columns, row) if c not in NOW_DEPENDENT])

    assert len(a) == len(b), f"{where}: {len(a)} rows on TimescaleDB, {len(b)} on PostgreSQL"
    for ra, rb in zip(sorted(a, key=key), sorted(b, key=key)):
        for column, va, vb in zip(columns, ra, rb):
            if column in NOW_DEPENDENT and va is not None and vb is not None:
                assert abs(va - vb) <= NOW_DEPENDENT[column], f"{where}.{column}: {va} vs {vb}"
            elif isinstance(va, float) and isinstance(vb, float):
                assert math.isclose(va, vb, rel_tol=1e-9), f"{where}.{column}: {va} vs {vb}"
            else:
                assert va == vb, f"{where}.{column}: {va!r} on TimescaleDB, {vb!r} on PostgreSQL\n{ra}\n{rb}"


def _run(dsn: str, sql: str) -> tuple[list[str], list[tuple]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql)
        return [c.name for c in cur.description], cur.fetchall()


def test_every_view_query_and_panel_gives_the_same_rows_on_timescaledb_as_on_postgresql(
        database, timescale_database):
    tsdb, plain = timescale_database, database
    now = datetime.now(timezone.utc).replace(microsecond=0)
    batches = _fleet(now)
    _seed(tsdb, TIMESCALEDB, batches)
    _seed(plain, POSTGRESQL, batches)

    # every view of the query layer (and the rollups, tables on one engine and views on the other)
    views = [r[0] for r in fetch(plain, "SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1")]
    assert {"workload_daily_cost", "idle_cost_daily", "estimate_vs_billed_daily", "estimate_vs_billed_hourly",
            "workload_rolling", "decision_log", "team_spend_month", "live_cloud_spend"} <= set(views)
    for relation in ["cost_hourly", "cost_daily", *views]:
        columns, rows = _run(tsdb, f"SELECT * FROM {relation}")
        plain_columns, plain_rows = _run(plain, f"SELECT * FROM {relation}")
        assert columns == plain_columns, relation
        assert rows, f"{relation}: no rows on TimescaleDB"
        _same(columns, rows, plain_rows, relation)

    # every read query of the demo, simulate, the alert checks and the monthly report that needs
    # only a connection and times: (conn), (conn, now) or (conn, start, end)
    compared = []
    end = now + timedelta(hours=1)
    for module in (queries, report_queries, onprem_allocation):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__ or name.startswith("_"):
                continue
            params = list(inspect.signature(function).parameters.values())[1:]
            if len(params) > 2 or any(p.annotation not in ("datetime", datetime) for p in params):
                continue
            args = [now - timedelta(days=4), end] if len(params) == 2 else [end][:len(params)]
            with psycopg.connect(tsdb) as conn:
                on_tsdb = function(conn, *args)
            with psycopg.connect(plain) as conn:
                on_plain = function(conn, *args)
            assert on_tsdb == on_plain, f"{module.__name__}.{name}"
            compared.append(name)
    assert {"workload_summary", "team_month_spend", "workload_month", "onprem_cost_usd"} <= set(compared)

    # every panel of every dashboard, with Grafana's macros and template variables expanded
    window = {"time_from": now - timedelta(days=7), "time_to": now, "interval": "1h"}
    variables: dict[str, list[str]] = {}
    for v in next(iter(all_dashboards().values()))["templating"]["list"]:
        values = [[r[0] for r in fetch(dsn, expand(v["query"], variables=variables, **window))]
                  for dsn in (tsdb, plain)]
        assert sorted(values[0]) == sorted(values[1]), f"variable {v['name']}"  # (sorted by each one's collation)
        variables[v["name"]] = values[0]
    assert HOSTILE in variables["workload"]
    panels = 0
    for uid, dashboard in all_dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                sql = expand(target["rawSql"], variables=variables, **window)
                columns, rows = _run(tsdb, sql)
                assert rows, f"{uid} / {panel['title']}: no rows on TimescaleDB\n{sql}"
                _same(columns, rows, _run(plain, sql)[1], f"{uid} / {panel['title']}")
                panels += 1
    assert panels >= 20
