"""Time-series tables on two engines: TimescaleDB hypertables, or plain PostgreSQL partitions.

One registry says, per table, its time column, chunk/partition size, compression and retention.
With TimescaleDB the registry becomes hypertables with compression and retention policies.
Without it, tables are created ``PARTITION BY RANGE`` on the time column, partitions are created
on demand before rows are written (``Partitions.ensure``), and retention drops whole partitions
(``apply_retention``).  The engine is chosen when the database is first migrated and recorded.
The rollups (``ROLLUPS``) are tables the sink refreshes on plain PostgreSQL and continuous
aggregates on TimescaleDB, whose restated materialized buckets ``refresh_materialized_rollups``
refreshes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

TIMESCALEDB = "timescaledb"
POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class TimeSeriesTable:
    name: str
    time_column: str
    since_version: int  # migration that creates it
    partition: str  # "day" or "month": plain PostgreSQL partition size
    chunk_interval: str  # TimescaleDB chunk interval
    compress_after: str | None = None
    retention: timedelta | None = None
    segment_by: str | None = None  # TimescaleDB compression segment column


TABLES = {
    t.name: t
    for t in (
        TimeSeriesTable("cost_windows", "window_start", 1, "month", "7 days", compress_after="30 days",
                        segment_by="workload"),
        TimeSeriesTable("gpu_samples", "ts", 2, "day", "1 day", compress_after="2 days",
                        retention=timedelta(days=30), segment_by="resource"),
        TimeSeriesTable("cost_lines", "charge_period_start", 2, "month", "7 days", compress_after="60 days",
                        segment_by="provider"),
    )
}

# the rollups of cost windows and their bucket widths: tables the sink refreshes on plain PostgreSQL,
# real-time continuous aggregates on TimescaleDB (migration 003)
ROLLUPS = {"cost_hourly": timedelta(hours=1), "cost_daily": timedelta(days=1)}

_PARTITION_BY = re.compile(r"/\*PARTITION_BY\((\w+)\)\*/")


def render(sql_text: str, engine: str) -> str:
    """Expand ``/*PARTITION_BY(col)*/`` in a migration for the engine."""
    return _PARTITION_BY.sub(lambda m: f"PARTITION BY RANGE ({m.group(1)})" if engine == POSTGRESQL else "",
                             sql_text)


def after_migration(conn: psycopg.Connection, version: int, engine: str) -> None:
    """Turn the tables a migration created into hypertables with their policies (TimescaleDB)."""
    if engine != TIMESCALEDB:
        return
    for t in TABLES.values():
        if t.since_version != version:
            continue
        conn.execute(
            "SELECT create_hypertable(%s, by_range(%s, %s::interval), migrate_data => true)",
            (t.name, t.time_column, t.chunk_interval),
        )
        if t.compress_after:
            options = "timescaledb.compress"
            if t.segment_by:
                options += f", timescaledb.compress_segmentby = '{t.segment_by}'"
            conn.execute(sql.SQL("ALTER TABLE {} SET (" + options + ")").format(sql.Identifier(t.name)))
            conn.execute("SELECT add_compression_policy(%s, %s::interval)", (t.name, t.compress_after))
        if t.retention:
            conn.execute("SELECT add_retention_policy(%s, %s)", (t.name, t.retention))


def refresh_materialized_rollups(conn: psycopg.Connection, first: datetime, last: datetime) -> list[str]:
    """TimescaleDB: re-materialize the continuous-aggregate buckets holding window starts in
    [first, last] that the refresh policy has already materialized; return the rollups refreshed.

    A real-time continuous aggregate answers from its materialized buckets up to the policy's end
    offset and from the raw rows after it, so a restated or late window landing in a materialized
    bucket would otherwise show only after the policy's next run.  Call it once the rows are
    committed (a refresh cannot run inside a transaction); inside an open transaction it does
    nothing and leaves the buckets to the policy.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        log.debug("rollup refresh skipped: the connection is inside a transaction")
        return []
    refreshed = []
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        for view, width in ROLLUPS.items():
            row = conn.execute(
                "SELECT now() - (config->>'end_offset')::interval FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_name = %s",
                (view,)).fetchone()
            if row is None:
                continue  # no refresh policy: nothing is materialized on its own
            start = _floor(first, width)
            end = min(_floor(last, width) + width, _floor(row[0], width))  # newer buckets: aggregated when read
            if end - start >= width:
                conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (view, start, end))
                refreshed.append(view)
    finally:
        conn.autocommit = autocommit
    return refreshed


def _floor(ts: datetime, width: timedelta) -> datetime:
    """The start of the bucket of ``width`` (dividing a day) holding ``ts``, in UTC."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return ts - (ts - epoch) % width


def _bounds(ts: datetime, unit: str) -> tuple[datetime, datetime]:
    ts = ts.astimezone(timezone.utc)
    if unit == "day":
        start = ts.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def partition_name(table: str, start: datetime, unit: str) -> str:
    return f"{table}_p{start:%Y%m%d}" if unit == "day" else f"{table}_p{start:%Y%m}"


class Partitions:
    """Creates plain-PostgreSQL partitions before rows land in them; remembers what exists."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.known: set[str] = set()

    def has(self, table: str, ts: datetime) -> bool:
        """Whether the partition holding ``ts`` is known to exist (no query; always on TimescaleDB)."""
        if self.engine != POSTGRESQL:
            return True
        unit = TABLES[table].partition
        return partition_name(table, _bounds(ts, unit)[0], unit) in self.known

    def ensure(self, conn: psycopg.Connection, table: str, timestamps: Iterable[datetime]) -> list[str]:
        """Create the missing partitions in the caller's transaction; return the names it recorded
        (the caller forgets them again if that transaction rolls back)."""
        if self.engine != POSTGRESQL:
            return []
        t = TABLES[table]
        wanted: dict[str, tuple[datetime, datetime]] = {}
        for ts in timestamps:
            start, end = _bounds(ts, t.partition)
            name = partition_name(table, start, t.partition)
            if name not in self.known:
                wanted[name] = (start, end)
        for name, (start, end) in sorted(wanted.items()):
            try:
                with conn.transaction():  # a savepoint: another sink may create it at the same moment
                    conn.execute(
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                            sql.Identifier(name), sql.Identifier(table), sql.Literal(start), sql.Literal(end)))
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                pass
            self.known.add(name)
        return sorted(wanted)


def apply_retention(conn: psycopg.Connection, engine: str, now: datetime | None = None) -> list[str]:
    """Drop plain-PostgreSQL partitions wholly older than their table's retention; return their names.

    (TimescaleDB runs its own retention policy jobs.)
    """
    if engine != POSTGRESQL:
        return []
    now = now or datetime.now(timezone.utc)
    dropped = []
    for t in TABLES.values():
        if t.retention is None:
            continue
        cutoff = now - t.retention
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass",
            (t.name,),
        ).fetchall()
        for (name,) in rows:
            m = re.fullmatch(re.escape(t.name) + r"_p(\d{8}|\d{6})", name)
            if not m:
                continue
            fmt = "%Y%m%d" if t.partition == "day" else "%Y%m"
            start = datetime.strptime(m.group(1), fmt).replace(tzinfo=timezone.utc)
            _, upper = _bounds(start, t.partition)
            if upper <= cutoff:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                dropped.append(name)
    return dropped


def delete_raw_samples(conn: psycopg.Connection, resources: Iterable[str], start: datetime, through: datetime) -> int:
    """Delete the raw GPU samples of ``resources`` from ``start`` through ``through``; return how many there were.

    For a replay that means to store the same samples again (the demo simulating a day it stored
    before): the sink refuses a second copy of a stored sample as a replay past its offsets.
    """
    return conn.execute("DELETE FROM gpu_samples WHERE resource = ANY(%s) AND ts >= %s AND ts <= %s",
                        (list(resources), start, through)).rowcount
