"""Storage on a real PostgreSQL: migrations, partitions, rollups, an idempotent sink, outages, retention."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest

from hybridspend.contracts.config import KafkaConfig
from hybridspend.contracts.events import CostWindow, GpuReading, GpuSample, LiveSpend
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import LOCAL_PROFILE, ensure_topics, make_producer, make_sink_consumer
from hybridspend.infra.local import LocalPostgres
from hybridspend.storage.db import SchemaError, check_schema, migrate
from hybridspend.storage.sink import Batch, Sink, cost_window_row, gpu_sample_rows, live_instance_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions, apply_retention
from tests.conftest import wait_until

pytestmark = pytest.mark.integration  # every test here talks to a real PostgreSQL or broker

DAY_MS = 86_400_000
T0_MS = int(datetime(2026, 10, 30, tzinfo=timezone.utc).timestamp() * 1000)  # crosses a month boundary


def cost_windows(n: int, seed: int = 7) -> list[CostWindow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = T0_MS + rng.randrange(0, 4 * 96) * 900_000  # 4 days of 15-minute windows
        workload = rng.choice(["train", "infer", "idle", "etl"])
        env = rng.choice(["onprem", "cloud"])
        resource = rng.choice(["n1", "n2", "i-1"])
        alloc = rng.randrange(1, 8) * 900_000
        out.append(CostWindow(
            event_id=CostWindow.make_id(resource, workload, env, "A100", start), workload=workload, team="t",
            allow_spot=False, environment=env, gpu_class="A100", resource=resource, window_start_ms=start,
            window_ms=900_000, allocated_gpu_ms=alloc, busy_gpu_ms=rng.randrange(0, alloc + 1), metered_gpu_ms=alloc,
            energy_mj=rng.randrange(0, 10**9), sample_count=15, first_ms=start, last_ms=start + 900_000,
            cost_usd=D(rng.randrange(0, 10**8)) / 10**6,
            basis=rng.choice(["estimated", "estimated", "billed"]),
        ))
    return out


def direct(conn, width: str):
    return conn.execute(f"""
        SELECT date_bin(INTERVAL '{width}', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b, workload,
               environment, gpu_class, basis, sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj),
               sum(cost_usd), count(*)
          FROM cost_windows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""").fetchall()


def rollup(conn, table: str):
    return conn.execute(f"""
        SELECT bucket, workload, environment, gpu_class, basis, allocated_gpu_ms, busy_gpu_ms, energy_mj,
               cost_usd, windows FROM {table} ORDER BY 1, 2, 3, 4, 5""").fetchall()


def test_migrate_is_idempotent_records_version_and_engine(database):
    files = sorted(Path(__file__).resolve().parents[1].joinpath("storage", "migrations").glob("*.sql"))
    versions = sorted({int(f.name[:3]) for f in files})
    latest = versions[-1]
    assert versions == list(range(1, latest + 1))  # numbered without gaps
    assert migrate(database) == (0, latest, POSTGRESQL)
    assert migrate(database) == (latest, latest, POSTGRESQL)
    with psycopg.connect(database) as conn:
        check_schema(conn)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == versions
        partitioned = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid")}
        assert partitioned == {"cost_windows", "gpu_samples", "cost_lines"}


def test_a_newer_schema_is_refused(database):
    migrate(database)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'from_the_future')")
        with pytest.raises(SchemaError, match="version 99, newer than this hybridspend knows"):
            check_schema(conn)
    with pytest.raises(SchemaError, match="upgrade hybridspend"):
        migrate(database)


def test_rollups_equal_a_direct_aggregate_after_replays_and_restatements(database):
    migrate(database)
    windows = cost_windows(600)
    partitions = Partitions(POSTGRESQL)
    with psycopg.connect(database) as conn:
        for chunk in range(0, 600, 150):  # several batches
            batch = Batch()
            for w in windows[chunk:chunk + 150]:
                batch.add("cost_windows", cost_window_row(w))
            write_batch(conn, batch, POSTGRESQL, partitions)
        # a replay of everything and a restatement of some (same key, new cost) in one batch
        batch = Batch()
        for w in windows:
            batch.add("cost_windows", cost_window_row(w))
        for w in windows[:50]:
            w.cost_usd += D("1.000001")
            batch.add("cost_windows", cost_window_row(w))
        write_batch(conn, batch, POSTGRESQL, partitions)
        conn.commit()
        assert rollup(conn, "cost_hourly") == direct(conn, "1 hour")
        assert rollup(conn, "cost_daily") == direct(conn, "1 day")
        # the rows landed in two monthly partitions (October and November)
        parts = {r[0] for r in conn.execute("SELECT tableoid::regclass::text FROM cost_windows")}
        assert parts == {"cost_windows_p202610", "cost_windows_p202611"}
        # the query layer's per-day effective cost equals the hand-made division
        row = conn.execute("""SELECT cost_usd, busy_gpu_hours, usd_per_busy_gpu_hour FROM workload_daily_cost
                              WHERE busy_gpu_hours > 0 LIMIT 1""").fetchone()
        assert abs(row[2] - row[0] / row[1]) < D("1e-9")
        assert conn.execute("SELECT count(*) FROM workload_daily_cost WHERE workload = 'idle'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM idle_cost_daily").fetchone()[0] > 0


class Totals(NamedTuple):
    rows: int
    cost_usd: D | None
    allocated_gpu_ms: int | None
    busy_gpu_ms: int | None


def _totals(dsn: str) -> Totals:
    with psycopg.connect(dsn) as conn:
        return Totals(*conn.execute("SELECT count(*), sum(cost_usd), sum(allocated_gpu_ms), sum(busy_gpu_ms)"
                                    " FROM cost_windows").fetchone())


def _expected(windows: list[CostWindow]) -> Totals:
    unique = {w.event_id + w.basis: w for w in windows}
    return Totals(len(unique), sum((w.cost_usd for w in unique.values()), D(0)),
                  sum(w.allocated_gpu_ms for w in unique.values()), sum(w.busy_gpu_ms for w in unique.values()))


def _produce(broker, topics, windows):
    producer = make_producer(broker.bootstrap, KafkaConfig())
    for w in windows:
        producer.send(topics.cost_windows, key=w.workload.encode(), value=w.encode())
    producer.flush()
    producer.close()


def _sink(broker, dsn, topics, group="sink-test", **kwargs) -> Sink:
    consumer = make_sink_consumer(broker.bootstrap, KafkaConfig(), broker.profile, group,
                                  [topics.cost_windows, topics.gpu_samples], fetch_max_wait_ms=100)
    return Sink(consumer, dsn, topics, **kwargs)


def _drain(sink: Sink, until, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sink.run_once(timeout_ms=200)
        if until():
            return
    raise AssertionError("the sink did not catch up in time")


@pytest.mark.integration
def test_replaying_the_same_events_changes_nothing(broker, database, topic_prefix):
    migrate(database)
    topics = Topics(topic_prefix, 2)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    windows = cost_windows(400, seed=11)
    expected = _expected(windows)
    _produce(broker, topics, windows)
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: _totals(database).rows == expected.rows)
        first = _totals(database)
        assert first == expected
        _produce(broker, topics, windows)  # the same events again
        _drain(sink, lambda: sink.records_read >= 800)
        assert _totals(database) == first
    finally:
        sink.consumer.close()
        sink.close()


@pytest.mark.slow
@pytest.mark.integration
def test_database_outage_mid_stream_loses_nothing(broker, topic_prefix):
    pg = LocalPostgres(Path("/tmp") / f"hs-outage-{uuid.uuid4().hex[:8]}", delete_on_stop=True).start()
    try:
        dsn = pg.dsn
        migrate(dsn)
        topics = Topics(topic_prefix, 2)
        ensure_topics(broker.bootstrap, KafkaConfig(), topics)
        windows = cost_windows(1000, seed=3)
        expected = _expected(windows)
        sink = _sink(broker, dsn, topics, retry_max_s=0.5, max_records=100, say=lambda m: None)
        stop = threading.Event()
        thread = threading.Thread(target=sink.run, args=(stop.is_set,), daemon=True)
        thread.start()
        try:
            _produce(broker, topics, windows[:500])
            wait_until(lambda: _totals(dsn).rows > 0, 60, "the first rows", interval_s=0.1)
            pg.pg_ctl("stop")  # mid-stream: part of the first half may not be written yet
            _produce(broker, topics, windows[500:])
            # down while the stream goes on: the sink finds it out, then retries (every 0.5 s at most) for a while
            wait_until(lambda: sink.outages > 0, 60, "the sink to find the database down", interval_s=0.1)
            time.sleep(5)
            pg.pg_ctl("start")
            wait_until(lambda: _totals(dsn).rows >= expected.rows, 60, "every row after the outage")
            assert _totals(dsn) == expected
        finally:
            stop.set()
            thread.join(10)
            sink.consumer.close()
            sink.close()
    finally:
        pg.stop()


def _one_gpu_sample(ts: datetime) -> GpuSample:
    return GpuSample(f"s{ts}", int(ts.timestamp() * 1000), 60_000, "n1", "onprem", "test",
                     [GpuReading("GPU-0", 0, "A100", "A100", 50.0, 1, 2, None, [])])


def _store_samples(dsn: str, *times: datetime) -> None:
    batch = Batch()
    for ts in times:
        for row in gpu_sample_rows(_one_gpu_sample(ts)):
            batch.add("gpu_samples", row)
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))


def _sample_partitions(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'gpu_samples'::regclass")}


def test_retention_drops_raw_sample_partitions_past_30_days(database):
    migrate(database)
    now = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)  # passed in: retention reads no clock itself
    _store_samples(database, *(now - timedelta(days=days_ago) for days_ago in (45, 31, 29, 0)))
    with psycopg.connect(database) as conn:
        with conn.transaction():
            dropped = apply_retention(conn, POSTGRESQL, now)
        assert sorted(dropped) == ["gpu_samples_p20261008", "gpu_samples_p20261022"]
        kept = [r[0] for r in conn.execute("SELECT ts FROM gpu_samples ORDER BY ts")]
        assert kept == [now - timedelta(days=29), now]


@pytest.mark.integration
def test_the_sink_refreshes_the_sample_rollups_the_fleet_panels_read(database):
    """On plain PostgreSQL nothing else moves them (TimescaleDB's job scheduler does there); the panels read
    raw samples past their watermark, so an unrefreshed rollup is slow, never wrong."""
    from hybridspend.storage.sink import SAMPLE_ROLLUPS_BEHIND

    migrate(database)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    _store_samples(database, now - timedelta(hours=2), now - timedelta(minutes=1))
    sink = Sink(None, database, Topics("t.", 1), clock=lambda: now)
    try:
        assert sink.refresh_sample_rollups() == now - SAMPLE_ROLLUPS_BEHIND
        with psycopg.connect(database) as conn:
            # the sample 2 h back is in the rollups, the one a minute back (past the watermark) is not yet
            assert conn.execute("SELECT sum(samples) FROM gpu_utilization_minutely").fetchone()[0] == \
                conn.execute("SELECT count(*) FROM gpu_samples WHERE ts < %s", (now - SAMPLE_ROLLUPS_BEHIND,)).fetchone()[0] > 0
    finally:
        sink.close()


@pytest.mark.parametrize("uptime_s", [5.0, 3 * 86_400.0], ids=["freshly-booted", "up-for-days"])
def test_the_first_retention_pass_runs_at_start_however_long_the_machine_has_been_up(
        broker, database, topic_prefix, uptime_s):
    """The monotonic clock starts at boot: the sink's first pass runs at its first poll either way,
    the next one an hour of that clock later."""
    migrate(database)
    now = datetime(2030, 3, 15, 12, tzinfo=timezone.utc)  # the sink's wall clock, passed in
    _store_samples(database, now - timedelta(days=45), now - timedelta(days=1))
    topics = Topics(topic_prefix, 1)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    monotonic_s = [uptime_s]
    sink = _sink(broker, database, topics, clock=lambda: now, monotonic=lambda: monotonic_s[0])
    try:
        sink.run_once(timeout_ms=50)
        # 2030-01-29 (45 days back) ends before the cutoff 2030-02-13 12:00; 2030-03-14 is kept
        assert _sample_partitions(database) == {"gpu_samples_p20300314"}
        _store_samples(database, now - timedelta(days=40))  # 2030-02-03, past retention as well
        monotonic_s[0] += 3599  # 59 min 59 s later: the next pass is not due yet
        sink.run_once(timeout_ms=50)
        assert _sample_partitions(database) == {"gpu_samples_p20300203", "gpu_samples_p20300314"}
        monotonic_s[0] += 1  # an hour after the first pass
        sink.run_once(timeout_ms=50)
        assert _sample_partitions(database) == {"gpu_samples_p20300314"}
    finally:
        sink.consumer.close()
        sink.close()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _docker_answers(), reason="no Docker engine answers here, so testcontainers cannot start "
                    "timescale/timescaledb (the image docker-compose runs); tests/test_timescaledb.py runs the "
                    "TimescaleDB path on PGlite with TimescaleDB instead")
def test_timescaledb_path_gives_the_same_answers():
    """The TimescaleDB path in docker-compose's own image, where Docker answers."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("timescale/timescaledb:2.17.2-pg16", driver=None) as tsdb:
        dsn = tsdb.get_connection_url()
        assert migrate(dsn)[2] == "timescaledb"
        batch = Batch()
        for w in cost_windows(300):
            batch.add("cost_windows", cost_window_row(w))
        with psycopg.connect(dsn) as conn:
            write_batch(conn, batch, "timescaledb", Partitions("timescaledb"))
            conn.commit()
            assert rollup(conn, "cost_hourly") == direct(conn, "1 hour")
            assert rollup(conn, "cost_daily") == direct(conn, "1 day")


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_is_written(database):
    migrate(database)
    good, bad = cost_windows(2, seed=5)
    bad.resource, bad.event_id = "n9", bad.event_id + "-n9"  # a different natural key from the good one
    bad.cost_usd = D("1e20")  # beyond numeric(20, 6): the database refuses it
    sink = Sink(consumer=None, dsn=database, topics=Topics("x.", 1))
    batch = Batch()
    batch.add("cost_windows", cost_window_row(good))
    batch.add("cost_windows", cost_window_row(bad))
    assert sink.write_durably(batch)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT event_id FROM cost_windows").fetchall() == [(good.event_id,)]
        reason = conn.execute("SELECT reason FROM dead_letters").fetchone()[0]
        assert reason.startswith("sink: refused by the database: numeric field overflow")
    sink.close()


def test_live_instances_keep_the_latest_state_whatever_order_batches_arrive_in(database):
    migrate(database)

    def change(ts_ms: int, state: str) -> Batch:
        batch = Batch()
        batch.add("live_instances", live_instance_row(LiveSpend(
            event_id=f"i-1|{ts_ms}", ts_ms=ts_ms, instance_id="i-1", provider="aws", region="us-east-1",
            instance_type="p4d.24xlarge", purchase_option="on_demand", workload="w", team="t", gpu_class="A100",
            gpus=8, state=state, usd_per_hour=D("32.77") if state == "running" else D(0),
            running_since_ms=T0_MS if state == "running" else None)))
        return batch

    with psycopg.connect(database) as conn:
        for batch in (change(T0_MS, "running"), change(T0_MS + 60_000, "stopped"), change(T0_MS, "running")):
            write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))  # the last one replays the start
        assert conn.execute("SELECT state, usd_per_hour, event_id FROM live_instances").fetchall() == [
            ("stopped", D(0), f"i-1|{T0_MS + 60_000}")]
        assert conn.execute("SELECT count(*) FROM live_cloud_spend").fetchone()[0] == 0


def test_lag_probe_reports_what_a_group_has_not_committed(broker, topic_prefix):
    from hybridspend.infra.broker import LagProbe, make_consumer, make_producer

    kafka = KafkaConfig(topic_prefix=topic_prefix, topic_partitions=1)
    topics = Topics.from_config(kafka)
    ensure_topics(broker.bootstrap, kafka, topics)
    producer = make_producer(broker.bootstrap, kafka)
    for i in range(5):  # one request each: Tansu reports a too-low end offset after a batch (docs/design.md, "Broker profiles")
        producer.send(topics.decisions, key=b"k", value=b"%d" % i)
        producer.flush()
    producer.close()
    consumer = make_consumer(broker.bootstrap, kafka, broker.profile, f"lag-{topic_prefix}", [topics.decisions])
    seen = 0
    while seen < 2:
        for records in consumer.poll(timeout_ms=500, max_records=2).values():
            seen += len(records)
    consumer.commit()
    consumer.close()
    probe = LagProbe(broker.bootstrap, kafka, [f"lag-{topic_prefix}"])
    try:
        assert probe() == [(f"lag-{topic_prefix}", topics.decisions, 0, 5 - seen)]
    finally:
        probe.close()


def test_every_sink_table_spec_names_the_columns_the_migrations_create_with_their_types_and_its_rows_fill_them(
        database):
    """Each table's row type (storage.sink) declares its columns and their Python types once: a migration
    that adds, renames or retypes a column, or a builder that fills a column with the wrong type, fails here."""
    import typing
    from decimal import Decimal

    from psycopg.types.json import Jsonb

    from hybridspend.storage.sink import (TABLES, anomaly_row, cost_line_row, dead_letter_row, decision_row,
                                          live_instance_row, price_row)
    from tests.test_anomalies import anomaly
    from tests.test_event_contracts import EXAMPLES

    pg_types = {datetime: {"timestamp with time zone"}, str: {"text"}, int: {"bigint", "integer", "smallint"},
                Decimal: {"numeric"}, float: {"real", "double precision"}, list: {"ARRAY"}, Jsonb: {"jsonb"}}

    def python_type(hint):  # X | None -> X
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if args else hint

    migrate(database)
    with psycopg.connect(database) as conn:
        for table, spec in TABLES.items():
            in_db = {c: (t, nullable == "YES" or default is not None) for c, t, nullable, default in conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_name = %s", (table,))}
            missing = set(spec.columns) - in_db.keys()
            assert not missing, f"{table}: the sink writes columns the schema lacks: {sorted(missing)}"
            unwritten = {c for c, (_, optional) in in_db.items() if c not in spec.columns and not optional}
            assert not unwritten, f"{table}: required columns the sink never writes: {sorted(unwritten)}"
            for column, hint in typing.get_type_hints(spec.row).items():
                assert in_db[column][0] in pg_types[python_type(hint)], (table, column, hint, in_db[column][0])

    builders = {"cost_windows": (cost_window_row, "CostWindow"), "decisions": (decision_row, "BreakevenDecision"),
                "gpu_samples": (lambda e: gpu_sample_rows(e)[0], "GpuSample"), "prices": (price_row, "PriceUpdate"),
                "live_instances": (live_instance_row, "LiveSpend"), "cost_lines": (cost_line_row, "CostLine"),
                "dead_letters": (dead_letter_row, "DeadLetter"), "anomalies": (anomaly_row, "Anomaly")}
    assert set(builders) == set(TABLES)
    examples = {**EXAMPLES, "Anomaly": anomaly("768", "closed")}  # a record younger than the hand-written checks
    for table, (build, record) in builders.items():
        row = build(type(examples[record]).decode(examples[record].encode()))  # as the sink reads it
        assert type(row) is TABLES[table].row, table
        for column, hint in typing.get_type_hints(TABLES[table].row).items():
            value = getattr(row, column)
            assert value is None or isinstance(value, python_type(hint)), (table, column, type(value))


def test_gpu_sample_rows_read_back_the_same_through_binary_and_text_copy(database):
    """The binary COPY dumps each distinct text[] once per COPY (``storage.sink._TextArrayBinaryDumper``):
    what is stored is what psycopg's own dumpers store, and what the rows said."""
    from hybridspend.contracts.events import WorkloadShare
    from hybridspend.storage.sink import copy_rows

    names = [[], ["train"], ["train", "infer"], ["ünï-cödé", "a,b", 'q"uote', "back\\slash", "{brace}", "NULL", ""]]
    samples = [GpuSample(f"s{i}", T0_MS + i * 1000, 1000, f"n{i % 2}", "onprem", "test", [
        GpuReading(f"GPU-{g}", g, "A100", "A100", 12.5 * g, 10, 80, None if g == 3 else 300_000,
                   [WorkloadShare(w, 1.0 / len(names[(i + g) % 4])) for w in names[(i + g) % 4]], 7,
                   "GPU-0" if g == 2 else "", "3g.40gb" if g == 2 else "", 3 / 7 if g == 2 else 1.0)
        for g in range(4)]) for i in range(40)]
    rows = [row for s in samples for row in gpu_sample_rows(s)]
    assert {tuple(r.workloads) for r in rows} == {tuple(n) for n in names}
    migrate(database)
    stored = {}
    with psycopg.connect(database) as conn:
        Partitions(POSTGRESQL).ensure(conn, "gpu_samples", {r.ts for r in rows})
        for binary in (True, False):
            copy_rows(conn, "gpu_samples", "gpu_samples", rows, binary)
            stored[binary] = conn.execute(f"SELECT {', '.join(rows[0]._fields)} FROM gpu_samples"
                                          " ORDER BY ts, resource, gpu_uuid").fetchall()
            conn.execute("DELETE FROM gpu_samples")
        conn.rollback()
    assert stored[True] == stored[False]
    by_key = {(r.ts, r.resource, r.gpu_uuid): r for r in rows}
    workloads, power = rows[0]._fields.index("workloads"), rows[0]._fields.index("power_mw")
    assert [(by_key[v[:3]].workloads, by_key[v[:3]].power_mw) for v in stored[True]] == \
        [(v[workloads], v[power]) for v in stored[True]]
