"""The sink: every result and raw topic from Kafka into PostgreSQL / TimescaleDB, idempotently.

Each poll (at most ``max_records``) is COPYed into temporary staging tables and upserted on
natural keys in one transaction, together with the refresh of the rollup buckets it touched (plain
PostgreSQL; on TimescaleDB the real-time continuous aggregates read recent buckets from the raw
rows, and the materialized buckets a batch restated are refreshed once it commits).  Kafka
offsets are committed only after that transaction commits, so a crash replays the batch and the
upsert makes the replay change nothing.  While the database is down the sink holds the batch,
polls nothing more (back pressure), waits and retries; nothing is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

import psycopg
from kafka.errors import CommitFailedError
from psycopg.types.json import Jsonb

from contracts.events import (
    BreakevenDecision,
    CostLine,
    CostWindow,
    DeadLetter,
    EventError,
    GpuSample,
    LiveSpend,
    PriceUpdate,
    is_watermark,
)

from costmodel import TRENDING_REPATRIATION

from .db import check_schema, connect, engine_of
from .timeseries import POSTGRESQL, ROLLUPS, TIMESCALEDB, Partitions, apply_retention, refresh_materialized_rollups

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
LAG_EVERY_S = 30.0


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class TableSpec:
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: bool  # on conflict: replace (a restatement) or keep (immutable facts)
    time_column: str | None = None  # partitioned on it (plain PostgreSQL)
    newer: str | None = None  # on conflict, replace only with a row at least this new (a latest-state table)

    def key_of(self, row: tuple) -> tuple:
        return tuple(row[self.columns.index(k)] for k in self.key)


TABLES = {
    "cost_windows": TableSpec(
        ("window_start", "window_end", "resource", "workload", "environment", "gpu_class", "basis", "team",
         "provider", "instance_type", "purchase_option", "allocated_gpu_ms", "busy_gpu_ms", "energy_mj",
         "sample_count", "cost_usd", "event_id"),
        ("window_start", "resource", "workload", "environment", "gpu_class", "basis"), True, "window_start"),
    "decisions": TableSpec(
        ("decision_id", "decided_at", "window_start", "workload", "team", "from_env", "to_env", "kind", "gpu_class",
         "current_usd_per_busy_gpu_hour", "alternative_usd_per_busy_gpu_hour", "utilization", "monthly_savings_usd",
         "confidence", "alternative_label", "gpus_needed", "reason", "basis", "payback_months",
         "monthly_savings_low_usd", "monthly_savings_high_usd", "evidence_hours", "nodes_needed", "instances_needed"),
        ("decision_id",), False),
    "dead_letters": TableSpec(
        ("event_id", "received_at", "source_topic", "reason", "payload"), ("event_id",), False),
    "gpu_samples": TableSpec(
        ("ts", "resource", "gpu_uuid", "gpu_index", "gpu_model", "gpu_class", "environment", "interval_ms",
         "utilization_pct", "memory_used_mib", "memory_total_mib", "power_mw", "workloads", "parent_gpu_uuid",
         "mig_profile", "compute_fraction", "energy_mj"),
        ("ts", "resource", "gpu_uuid"), False, "ts"),
    "cost_lines": TableSpec(
        ("charge_period_start", "event_id", "charge_period_end", "provider", "provider_name", "billing_account",
         "billing_period_start", "resource_id", "charge_category", "service", "sku", "region", "instance_type",
         "gpu_class", "gpus", "source", "export_version", "billed_cost_usd", "effective_cost_usd", "tags", "extra"),
        ("charge_period_start", "event_id"), True, "charge_period_start"),
    "prices": TableSpec(
        ("provider", "region", "instance_type", "purchase_option", "effective_at", "usd_per_hour", "source",
         "event_id"),
        ("provider", "region", "instance_type", "purchase_option", "effective_at"), True),
    "live_instances": TableSpec(
        ("instance_id", "changed_at", "provider", "region", "instance_type", "purchase_option", "workload", "team",
         "gpu_class", "gpus", "state", "usd_per_hour", "running_since", "ends_at", "event_id"),
        ("instance_id",), True, newer="changed_at"),
}


# -- events to rows (pure) --------------------------------------------------------------------


def cost_window_row(w: CostWindow) -> tuple:
    return (
        _ts(w.window_start_ms), _ts(w.window_start_ms + w.window_ms), w.resource, w.workload, w.environment,
        w.gpu_class, w.basis, w.team, w.provider, w.instance_type, w.purchase_option,
        w.allocated_gpu_ms, w.busy_gpu_ms, w.energy_mj, w.sample_count, w.cost_usd, w.event_id,
    )


def decision_row(d: BreakevenDecision) -> tuple:
    return (
        d.event_id, _ts(d.window_end_ms), _ts(d.window_start_ms), d.workload, d.team, d.from_env, d.to_env, d.kind,
        d.gpu_class, d.current_usd_per_busy_gpu_hour, d.alternative_usd_per_busy_gpu_hour, d.utilization,
        d.monthly_savings_usd, d.confidence, d.alternative_label, d.gpus_needed, d.reason, d.basis,
        d.payback_months, d.monthly_savings_low_usd, d.monthly_savings_high_usd, d.evidence_hours, d.nodes_needed,
        d.instances_needed,
    )


def decision_rows(d: BreakevenDecision) -> list[tuple[str, tuple]]:
    """Decisions are stored; a trending notice is only an alert (the alerter keeps it in its outbox)."""
    return [] if d.kind == TRENDING_REPATRIATION else [("decisions", decision_row(d))]


def dead_letter_row(d: DeadLetter) -> tuple:
    return (d.event_id, _ts(d.ts_ms), d.source_topic, d.reason, d.payload)


def gpu_sample_rows(s: GpuSample) -> list[tuple]:
    ts = _ts(s.ts_ms)
    return [
        (ts, s.resource, g.uuid, g.index, g.model, g.gpu_class, s.environment, s.interval_ms, g.utilization_pct,
         g.memory_used_mib, g.memory_total_mib, g.power_mw, [w.workload for w in g.workloads],
         g.parent_uuid or None, g.mig_profile or None, g.compute_fraction if g.parent_uuid else None, g.energy_mj)
        for g in s.gpus
    ]


def cost_line_row(c: CostLine) -> tuple:
    return (
        _ts(c.charge_period_start_ms), c.event_id, _ts(c.charge_period_end_ms), c.provider, c.provider_name,
        c.billing_account, _ts(c.billing_period_start_ms), c.resource_id, c.charge_category, c.service, c.sku,
        c.region, c.instance_type, c.gpu_class, c.gpus, c.source, c.export_version, c.billed_cost_usd,
        c.effective_cost_usd, Jsonb(c.tags), Jsonb(c.extra),
    )


# the newest export of a billing period replaces the lines of older exports of that period, whatever
# order they arrive in (export versions sort by time: "<ISO timestamp>|<id>")
SUPERSEDE_COST_LINES_SQL = """
    DELETE FROM cost_lines c
     USING (SELECT l.source, l.billing_account, l.billing_period_start, max(l.export_version) AS export_version
              FROM cost_lines l
              JOIN (SELECT DISTINCT source, billing_account, billing_period_start FROM stage_cost_lines) k
                ON l.source = k.source AND l.billing_account = k.billing_account
               AND l.billing_period_start = k.billing_period_start
             GROUP BY 1, 2, 3) s
     WHERE c.source = s.source AND c.billing_account = s.billing_account
       AND c.billing_period_start = s.billing_period_start AND c.export_version < s.export_version
"""


def price_row(p: PriceUpdate) -> tuple:
    return (p.provider, p.region, p.instance_type, p.purchase_option, _ts(p.ts_ms), p.usd_per_hour, p.source,
            p.event_id)


def live_instance_row(s: LiveSpend) -> tuple:
    return (s.instance_id, _ts(s.ts_ms), s.provider, s.region, s.instance_type, s.purchase_option, s.workload,
            s.team, s.gpu_class, s.gpus, s.state, s.usd_per_hour,
            _ts(s.running_since_ms) if s.running_since_ms else None, _ts(s.ends_at_ms) if s.ends_at_ms else None,
            s.event_id)


class Batch:
    """Rows of one poll, deduplicated on their natural key (the last version wins)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, tuple]] = {t: {} for t in TABLES}

    def add(self, table: str, row: tuple) -> None:
        self.rows[table][TABLES[table].key_of(row)] = row

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


# -- writing ----------------------------------------------------------------------------------------


def _upsert_sql(table: str, spec: TableSpec) -> str:
    cols = ", ".join(spec.columns)
    if spec.update:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in spec.columns if c not in spec.key)
        action = f"DO UPDATE SET {sets}" + (", updated_at = now()" if table == "cost_windows" else "")
        if spec.newer:
            action += f" WHERE {table}.{spec.newer} <= EXCLUDED.{spec.newer}"
    else:
        action = "DO NOTHING"
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} ON CONFLICT ({', '.join(spec.key)}) {action}"


def _rollup_sql(rollup: str, width: str) -> str:
    """Recompute the rollup buckets that the staged cost windows fall in, from the raw rows."""
    bucket = f"date_bin(INTERVAL '{width}', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    return f"""
        INSERT INTO {rollup} (bucket, workload, environment, gpu_class, basis, team, allocated_gpu_ms,
                              busy_gpu_ms, energy_mj, cost_usd, windows)
        SELECT k.bucket, c.workload, c.environment, c.gpu_class, c.basis, max(c.team), sum(c.allocated_gpu_ms),
               sum(c.busy_gpu_ms), sum(c.energy_mj), sum(c.cost_usd), count(*)
          FROM (SELECT DISTINCT {bucket} AS bucket, workload, environment, gpu_class, basis
                  FROM stage_cost_windows) k
          JOIN cost_windows c
            ON c.workload = k.workload AND c.environment = k.environment AND c.gpu_class = k.gpu_class
           AND c.basis = k.basis AND c.window_start >= k.bucket AND c.window_start < k.bucket + INTERVAL '{width}'
         GROUP BY k.bucket, c.workload, c.environment, c.gpu_class, c.basis
        ON CONFLICT (bucket, workload, environment, gpu_class, basis) DO UPDATE SET
            team = EXCLUDED.team, allocated_gpu_ms = EXCLUDED.allocated_gpu_ms, busy_gpu_ms = EXCLUDED.busy_gpu_ms,
            energy_mj = EXCLUDED.energy_mj, cost_usd = EXCLUDED.cost_usd, windows = EXCLUDED.windows
    """


ROLLUPS_SQL = tuple(_rollup_sql(name, f"{int(width.total_seconds())} seconds") for name, width in ROLLUPS.items())


def write_batch(conn: psycopg.Connection, batch: Batch, engine: str, partitions: Partitions) -> None:
    """COPY into staging, upsert, refresh rollups: one transaction.  (On TimescaleDB the continuous
    aggregates' materialized buckets the batch restated are refreshed right after it commits.)"""
    created: list[str] = []
    try:
        _write_batch(conn, batch, engine, partitions, created)
    except BaseException:
        partitions.known.difference_update(created)  # rolled back with the transaction
        raise
    windows = batch.rows["cost_windows"]
    if engine == TIMESCALEDB and windows:
        index = TABLES["cost_windows"].columns.index("window_start")
        starts = [row[index] for row in windows.values()]
        try:
            refresh_materialized_rollups(conn, min(starts), max(starts))
        except psycopg.OperationalError:
            raise  # the database went away: the batch is written again, and refreshed then
        except psycopg.Error as exc:
            log.warning("sink: continuous aggregates not refreshed (%s); their refresh policy will",
                        str(exc).splitlines()[0])


def _write_batch(conn: psycopg.Connection, batch: Batch, engine: str, partitions: Partitions,
                 created: list[str]) -> None:
    with conn.transaction():
        for table, rows in batch.rows.items():
            if not rows:
                continue
            spec = TABLES[table]
            if spec.time_column:
                index = spec.columns.index(spec.time_column)
                created += partitions.ensure(conn, table, {row[index] for row in rows.values()})
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with conn.cursor().copy(f"COPY stage_{table} ({', '.join(spec.columns)}) FROM STDIN") as copy:
                for row in rows.values():
                    copy.write_row(row)
            conn.execute(_upsert_sql(table, spec))
            if table == "cost_lines":
                conn.execute(SUPERSEDE_COST_LINES_SQL)
            if table == "cost_windows" and engine == POSTGRESQL:
                for statement in ROLLUPS_SQL:
                    conn.execute(statement)


def sink_topics(topics) -> list[str]:
    """The topics the sink stores (watermarks on them are skipped)."""
    return [topics.cost_windows, topics.decisions, topics.dead_letter, topics.gpu_samples, topics.cost_lines,
            topics.prices, topics.live_spend]


class Sink:
    """Consumes the topics and writes them; offsets follow durable rows."""

    def __init__(self, consumer, dsn: str, topics, *, retry_max_s: float = 10.0, max_records: int = 5000,
                 say: Callable[[str], None] = log.warning,
                 lag_probe: Callable[[], list[tuple[str, str, int, int]]] | None = None, metrics=None):
        self.consumer = consumer
        self.metrics = metrics  # a storage.metrics.SinkMetrics, or None
        self.dsn = dsn
        self.topics = topics
        self.retry_max_s = retry_max_s
        self.max_records = max_records
        self.say = say
        self.conn: psycopg.Connection | None = None
        self.engine = POSTGRESQL
        self.partitions = Partitions(POSTGRESQL)
        self.records_read = 0
        self.rows_written = 0
        self.rejected = 0
        self.outages = 0
        self._last_retention = 0.0
        self.lag_probe = lag_probe
        self._last_lag = 0.0
        self._decoders: dict[str, Callable[[bytes], list[tuple[str, tuple]]]] = {
            topics.cost_windows: lambda v: [("cost_windows", cost_window_row(CostWindow.decode(v)))],
            topics.decisions: lambda v: decision_rows(BreakevenDecision.decode(v)),
            topics.dead_letter: lambda v: [("dead_letters", dead_letter_row(DeadLetter.decode(v)))],
            topics.gpu_samples: lambda v: [("gpu_samples", r) for r in gpu_sample_rows(GpuSample.decode(v))],
            topics.cost_lines: lambda v: [("cost_lines", cost_line_row(CostLine.decode(v)))],
            topics.prices: lambda v: [("prices", price_row(PriceUpdate.decode(v)))],
            topics.live_spend: lambda v: [("live_instances", live_instance_row(LiveSpend.decode(v)))],
        }

    def decode(self, records: Iterable) -> Batch:
        batch = Batch()
        for rec in records:
            decoder = self._decoders.get(rec.topic)
            if decoder is None or is_watermark(rec.value):
                continue  # watermarks are stream progress, not data
            try:
                for table, row in decoder(rec.value):
                    batch.add(table, row)
            except (EventError, KeyError, TypeError, ValueError) as exc:
                # a bad record is stored as a dead letter, never dropped silently
                letter = DeadLetter.of(topic=rec.topic, partition=rec.partition, offset=rec.offset,
                                       reason=f"sink: {exc}", payload=rec.value, ts_ms=int(time.time() * 1000))
                batch.add("dead_letters", dead_letter_row(letter))
                self.rejected += 1
        return batch

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn)
            check_schema(self.conn)
            engine = engine_of(self.conn)
            self.conn.commit()
            if engine != self.engine or not self.partitions.known:
                self.engine, self.partitions = engine, Partitions(engine)
        return self.conn

    def write_durably(self, batch: Batch, stop: Callable[[], bool] = lambda: False) -> bool:
        """Write the batch, retrying with backoff while the database is unreachable."""
        delay = 0.2
        while True:
            try:
                conn = self._connection()
                write_batch(conn, batch, self.engine, self.partitions)
                self.rows_written += len(batch)
                return True
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                # a row the database refuses must not block the rest: write row by row, dead-letter the refused
                log.warning("sink: batch refused (%s); writing it row by row", str(exc).splitlines()[0])
                self._write_row_by_row(batch)
                return True
            except psycopg.OperationalError as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.outages += 1
                self.say(f"sink: database unavailable ({str(exc).strip().splitlines()[0]}); "
                         f"holding {len(batch)} rows, retrying in {delay:.1f}s")
                if stop():
                    return False
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _write_row_by_row(self, batch: Batch) -> None:
        conn = self._connection()
        now = datetime.now(timezone.utc)
        for table, rows in batch.rows.items():
            for key, row in rows.items():
                single = Batch()
                single.add(table, row)
                try:
                    write_batch(conn, single, self.engine, self.partitions)
                    self.rows_written += 1
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    conn.rollback()
                    refused = Batch()
                    refused.add("dead_letters", (f"sink|{table}|{key}", now, table,
                                                 f"sink: refused by the database: {str(exc).splitlines()[0]}",
                                                 repr(row)[:65536]))
                    write_batch(conn, refused, self.engine, self.partitions)
                    self.rejected += 1

    def record_lag(self, rows: list[tuple[str, str, int, int]]) -> None:
        conn = self._connection()
        now = datetime.now(timezone.utc)
        with conn.transaction():
            for group, topic, partition, lag in rows:
                conn.execute(
                    "INSERT INTO consumer_lag VALUES (%s, %s, %s, %s, %s) ON CONFLICT (group_id, topic, partition)"
                    " DO UPDATE SET lag = EXCLUDED.lag, measured_at = EXCLUDED.measured_at",
                    (group, topic, partition, lag, now),
                )

    def maintain(self, now: datetime | None = None) -> list[str]:
        """Drop raw partitions past their retention (plain PostgreSQL; TimescaleDB has policies)."""
        conn = self._connection()
        with conn.transaction():
            dropped = apply_retention(conn, self.engine, now)
        if dropped:
            self.partitions.known.difference_update(dropped)
            log.info("sink: retention dropped %s", ", ".join(dropped))
        return dropped

    def run_once(self, timeout_ms: int = 500, stop: Callable[[], bool] = lambda: False) -> int:
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        records = [r for recs in polled.values() for r in recs]
        self.records_read += len(records)
        if records:
            batch = self.decode(records)
            if len(batch) and not self.write_durably(batch, stop):
                return 0  # stopping with the batch unwritten: its offsets stay uncommitted
            try:
                self.consumer.commit()
            except CommitFailedError as exc:
                # the group rebalanced while the database was down: the rows are durable and the
                # new owner of the partitions re-reads them from the last commit; upserts absorb it
                log.warning("sink: offsets not committed (%s); the batch will be replayed", exc)
            if self.metrics is not None:
                self.metrics.consumed(records)
                self.metrics.stored(batch)
        if self.lag_probe is not None and time.monotonic() - self._last_lag > LAG_EVERY_S:
            self._last_lag = time.monotonic()
            try:
                lag = self.lag_probe()
                if self.metrics is not None:
                    self.metrics.lag(lag)
                self.record_lag(lag)
            except Exception as exc:  # health reporting must never stop the sink
                log.warning("sink: consumer lag not recorded: %s", exc)
        if time.monotonic() - self._last_retention > RETENTION_EVERY_S:
            self._last_retention = time.monotonic()
            try:
                self.maintain()
            except psycopg.OperationalError:
                pass  # next time
        return len(records)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.run_once(stop=stop)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        close_probe = getattr(self.lag_probe, "close", None)
        if close_probe is not None:
            close_probe()
