"""The sink: cost windows, decisions and dead letters from Kafka into PostgreSQL, idempotently.

Each batch is COPYed into temporary staging tables and upserted on natural keys in one
transaction; the Kafka offsets are committed only after that transaction commits, so a crash
replays the batch and the upsert makes the replay change nothing.  When the database is down
the sink keeps the batch, waits and retries; nothing is lost.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Iterable

import psycopg

from hybridspend.events import BreakevenDecision, CostWindow, DeadLetter, EventError

from .db import check_schema, connect

log = logging.getLogger(__name__)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


COST_WINDOW_COLUMNS = (
    "window_start", "window_end", "resource", "workload", "environment", "gpu_class", "basis", "team",
    "provider", "instance_type", "purchase_option", "allocated_gpu_ms", "busy_gpu_ms", "energy_mj",
    "sample_count", "cost_usd", "event_id",
)
COST_WINDOW_KEY = ("window_start", "resource", "workload", "environment", "gpu_class", "basis")

DECISION_COLUMNS = (
    "decision_id", "decided_at", "window_start", "workload", "team", "from_env", "to_env", "kind", "gpu_class",
    "current_usd_per_busy_gpu_hour", "alternative_usd_per_busy_gpu_hour", "utilization", "monthly_savings_usd",
    "confidence", "alternative_label", "gpus_needed", "reason", "basis",
)
DEAD_LETTER_COLUMNS = ("event_id", "received_at", "source_topic", "reason", "payload")


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
    )


def dead_letter_row(d: DeadLetter) -> tuple:
    return (d.event_id, _ts(d.ts_ms), d.source_topic, d.reason, d.payload)


def _upsert_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...], update: bool) -> str:
    cols = ", ".join(columns)
    if update:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
        action = f"DO UPDATE SET {sets}" + (", updated_at = now()" if table == "cost_windows" else "")
    else:
        action = "DO NOTHING"
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} ON CONFLICT ({', '.join(key)}) {action}"


TABLES = {
    # table: (columns, natural key, update on conflict)
    "cost_windows": (COST_WINDOW_COLUMNS, COST_WINDOW_KEY, True),
    "decisions": (DECISION_COLUMNS, ("decision_id",), False),
    "dead_letters": (DEAD_LETTER_COLUMNS, ("event_id",), False),
}


class Batch:
    """Rows of one poll, deduplicated on their natural key (the last version wins)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, tuple]] = {t: {} for t in TABLES}
        self.rejected: list[tuple[str, str]] = []

    def add(self, table: str, row: tuple) -> None:
        columns, key, _ = TABLES[table]
        index = [columns.index(k) for k in key]
        self.rows[table][tuple(row[i] for i in index)] = row

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


def write_batch(conn: psycopg.Connection, batch: Batch) -> None:
    """COPY into staging and upsert, all in one transaction."""
    with conn.transaction():
        for table, rows in batch.rows.items():
            if not rows:
                continue
            columns, key, update = TABLES[table]
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with conn.cursor().copy(f"COPY stage_{table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows.values():
                    copy.write_row(row)
            conn.execute(_upsert_sql(table, columns, key, update))


class Sink:
    """Consumes the result topics and writes them; offsets follow durable rows."""

    def __init__(self, consumer, dsn: str, topics, *, retry_max_s: float = 10.0, say: Callable[[str], None] = log.info):
        self.consumer = consumer
        self.dsn = dsn
        self.topics = topics
        self.retry_max_s = retry_max_s
        self.say = say
        self.conn: psycopg.Connection | None = None
        self.rows_written = 0
        self.rejected = 0

    def _decode(self, records: Iterable) -> Batch:
        batch = Batch()
        for rec in records:
            try:
                if rec.topic == self.topics.cost_windows:
                    batch.add("cost_windows", cost_window_row(CostWindow.decode(rec.value)))
                elif rec.topic == self.topics.decisions:
                    batch.add("decisions", decision_row(BreakevenDecision.decode(rec.value)))
                elif rec.topic == self.topics.dead_letter:
                    batch.add("dead_letters", dead_letter_row(DeadLetter.decode(rec.value)))
            except (EventError, KeyError, TypeError, ValueError) as exc:
                # a bad record on a result topic is stored as a dead letter, never dropped silently
                dl = DeadLetter.of(topic=rec.topic, partition=rec.partition, offset=rec.offset,
                                   reason=f"sink: {exc}", payload=rec.value, ts_ms=int(time.time() * 1000))
                batch.add("dead_letters", dead_letter_row(dl))
                self.rejected += 1
        return batch

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn)
            check_schema(self.conn)
            self.conn.commit()
        return self.conn

    def write_durably(self, batch: Batch, stop: Callable[[], bool] = lambda: False) -> bool:
        """Write the batch, retrying with backoff while the database is unreachable."""
        delay = 0.2
        while True:
            try:
                write_batch(self._connection(), batch)
                self.rows_written += len(batch)
                return True
            except psycopg.OperationalError as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.say(f"sink: database unavailable ({str(exc).splitlines()[0]}); retrying in {delay:.1f}s")
                if stop():
                    return False
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def run_once(self, timeout_ms: int = 500, stop: Callable[[], bool] = lambda: False) -> int:
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        records = [r for recs in polled.values() for r in recs]
        if not records:
            return 0
        batch = self._decode(records)
        if len(batch) and not self.write_durably(batch, stop):
            return 0
        self.consumer.commit()
        return len(records)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.run_once(stop=stop)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
