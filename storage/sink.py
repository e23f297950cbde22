"""The sink: every result and raw topic from Kafka into PostgreSQL / TimescaleDB, exactly once.

The sink's consumer positions live in the database (``sink_offsets``), written in the same
transaction as the rows of the batch they produced, the way Kafka Connect's JDBC sink and Flink's
two-phase sinks keep theirs; on start and on every partition assignment the sink seeks to them
(Kafka's committed offsets, still committed after each transaction for lag monitoring, are only
the fallback for a partition with no stored offset yet).  A crash or a kill therefore replays
nothing that was stored, and the raw tables that only ever grow (``TableSpec.append_only``: the GPU
samples) are COPYed straight into their tables.  Their natural keys stay unique, so a replay that
slips past the stored offsets (an operator resetting them) collides and is dead-lettered with the
reason instead of counted twice.  The tables whose rows are restated under the same key (cost
windows, a billing source's cost lines, decisions, prices, live instances, rollups) are COPYed into
temporary staging tables and upserted, together with the refresh of the rollup buckets the batch
touched (plain PostgreSQL; on TimescaleDB the real-time continuous aggregates read recent buckets
from the raw rows, and the materialized buckets a batch restated are refreshed once it commits), and
with the recomputation of the reconciliation rollup's days that its cloud windows and bill lines
touched, a superseded billing delivery's included (both engines; migration 017).
Each stored offset row is checked (``FOR UPDATE``) against the value this sink last saw, so a
sink that lost its partitions to another one cannot write over it.  While the database is down the
sink holds the batch, polls nothing more (back pressure), waits and retries; nothing is lost.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Callable, Collection, Iterable, Iterator, NamedTuple

import msgspec
import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb

from hybridspend.contracts.events import (
    Anomaly,
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
from hybridspend.costmodel import TRENDING_REPATRIATION
from hybridspend.costmodel.timeunits import utc_from_ms
from hybridspend.infra.broker import TopicIds
from hybridspend.infra.fast_consumer import CommitFailedError, ConsumerRebalanceListener, TopicPartition
from hybridspend.infra.clock import Every, utc_now

from .db import check_schema, connect, engine_of
from .timeseries import POSTGRESQL, ROLLUPS, TIMESCALEDB, Partitions, apply_retention, refresh_materialized_rollups

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
SAMPLE_ROLLUPS_EVERY_S = 900.0  # as TimescaleDB's job (migration 016): the panels read raw samples past them
SAMPLE_ROLLUPS_BEHIND = timedelta(minutes=5)  # samples still arriving for the last minutes are left to the next
LAG_EVERY_S = 30.0


# -- the tables the sink writes: each row type names its columns and their types once ------------


class CostWindowRow(NamedTuple):
    window_start: datetime
    window_end: datetime
    resource: str
    workload: str
    environment: str
    gpu_class: str
    basis: str
    team: str | None
    provider: str | None
    instance_type: str | None
    purchase_option: str | None
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int
    sample_count: int
    cost_usd: Decimal
    event_id: str


class DecisionRow(NamedTuple):
    decision_id: str
    decided_at: datetime
    window_start: datetime
    workload: str
    team: str | None
    from_env: str
    to_env: str
    kind: str
    gpu_class: str
    current_usd_per_busy_gpu_hour: Decimal | None
    alternative_usd_per_busy_gpu_hour: Decimal | None
    utilization: Decimal
    monthly_savings_usd: Decimal
    confidence: Decimal
    alternative_label: str
    gpus_needed: int
    reason: str
    basis: str | None
    payback_months: Decimal | None
    monthly_savings_low_usd: Decimal | None
    monthly_savings_high_usd: Decimal | None
    evidence_hours: Decimal | None
    nodes_needed: int | None
    instances_needed: int | None
    options: Jsonb | None
    horizon_months: int | None
    discount_rate_pct: Decimal | None


class AnomalyRow(NamedTuple):
    episode_id: str
    revision: int
    kind: str
    state: str
    subject: str
    workload: str
    team: str
    gpu_class: str
    environment: str
    resource: str
    started_at: datetime
    detected_at: datetime
    ended_at: datetime | None
    score: Decimal
    baseline: Decimal
    observed: Decimal
    unit: str
    usd_so_far: Decimal
    usd_per_day_at_stake: Decimal
    reason: str
    event_id: str


class DeadLetterRow(NamedTuple):
    event_id: str
    received_at: datetime
    source_topic: str
    reason: str
    payload: str


class GpuSampleRow(NamedTuple):
    ts: datetime
    resource: str
    gpu_uuid: str
    gpu_index: int
    gpu_model: str
    gpu_class: str
    environment: str
    interval_ms: int
    utilization_pct: float
    memory_used_mib: int
    memory_total_mib: int
    power_mw: int | None
    workloads: list
    parent_gpu_uuid: str | None
    mig_profile: str | None
    compute_fraction: float | None
    energy_mj: int


class CostLineRow(NamedTuple):
    charge_period_start: datetime
    event_id: str
    charge_period_end: datetime
    provider: str
    provider_name: str | None
    billing_account: str | None
    billing_period_start: datetime
    resource_id: str | None
    charge_category: str | None
    service: str | None
    sku: str | None
    region: str | None
    instance_type: str | None
    gpu_class: str | None
    gpus: int | None
    source: str
    export_version: str
    billed_cost_usd: Decimal
    effective_cost_usd: Decimal
    tags: Jsonb
    extra: Jsonb


class PriceRow(NamedTuple):
    provider: str
    region: str
    instance_type: str
    purchase_option: str
    effective_at: datetime
    usd_per_hour: Decimal
    source: str
    event_id: str


class LiveInstanceRow(NamedTuple):
    instance_id: str
    changed_at: datetime
    provider: str
    region: str
    instance_type: str
    purchase_option: str
    workload: str
    team: str | None
    gpu_class: str
    gpus: int
    state: str
    usd_per_hour: Decimal
    running_since: datetime | None
    ends_at: datetime | None
    event_id: str


@dataclass(frozen=True)
class TableSpec:
    row: type  # a NamedTuple: the table's columns, in order, with their Python types
    key: tuple[str, ...]
    update: bool  # on conflict: replace (a restatement) or keep (immutable facts)
    time_column: str | None = None  # partitioned on it (plain PostgreSQL)
    newer: str | None = None  # on conflict, replace only with a row at least this new (a latest-state table)
    append_only: bool = False  # rows are never restated: COPYed straight in, a second copy of a key is refused

    @property
    def columns(self) -> tuple[str, ...]:
        return self.row._fields

    def key_of(self, row: tuple) -> tuple:
        return tuple(row[self.columns.index(k)] for k in self.key)


TABLES = {
    "cost_windows": TableSpec(
        CostWindowRow, ("window_start", "resource", "workload", "environment", "gpu_class", "basis"), True,
        "window_start"),
    "decisions": TableSpec(DecisionRow, ("decision_id",), False),
    "anomalies": TableSpec(AnomalyRow, ("episode_id",), True, newer="revision"),
    "dead_letters": TableSpec(DeadLetterRow, ("event_id",), False),
    "gpu_samples": TableSpec(GpuSampleRow, ("ts", "resource", "gpu_uuid"), False, "ts", append_only=True),
    "cost_lines": TableSpec(CostLineRow, ("charge_period_start", "event_id"), True, "charge_period_start"),
    "prices": TableSpec(
        PriceRow, ("provider", "region", "instance_type", "purchase_option", "effective_at"), True),
    "live_instances": TableSpec(LiveInstanceRow, ("instance_id",), True, newer="changed_at"),
}
APPEND_ONLY = tuple(t for t, spec in TABLES.items() if spec.append_only)


# -- events to rows (pure) --------------------------------------------------------------------


def cost_window_row(w: CostWindow) -> CostWindowRow:
    return CostWindowRow(
        window_start=utc_from_ms(w.window_start_ms), window_end=utc_from_ms(w.window_start_ms + w.window_ms),
        resource=w.resource, workload=w.workload, environment=w.environment, gpu_class=w.gpu_class,
        basis=w.basis, team=w.team, provider=w.provider, instance_type=w.instance_type,
        purchase_option=w.purchase_option, allocated_gpu_ms=w.allocated_gpu_ms, busy_gpu_ms=w.busy_gpu_ms,
        energy_mj=w.energy_mj, sample_count=w.sample_count, cost_usd=w.cost_usd, event_id=w.event_id)


def decision_row(d: BreakevenDecision) -> DecisionRow:
    return DecisionRow(
        decision_id=d.event_id, decided_at=utc_from_ms(d.window_end_ms), window_start=utc_from_ms(d.window_start_ms),
        workload=d.workload, team=d.team, from_env=d.from_env, to_env=d.to_env, kind=d.kind, gpu_class=d.gpu_class,
        current_usd_per_busy_gpu_hour=d.current_usd_per_busy_gpu_hour,
        alternative_usd_per_busy_gpu_hour=d.alternative_usd_per_busy_gpu_hour, utilization=d.utilization,
        monthly_savings_usd=d.monthly_savings_usd, confidence=d.confidence, alternative_label=d.alternative_label,
        gpus_needed=d.gpus_needed, reason=d.reason, basis=d.basis, payback_months=d.payback_months,
        monthly_savings_low_usd=d.monthly_savings_low_usd, monthly_savings_high_usd=d.monthly_savings_high_usd,
        evidence_hours=d.evidence_hours, nodes_needed=d.nodes_needed, instances_needed=d.instances_needed,
        options=Jsonb(msgspec.to_builtins(d.options, enc_hook=str)) if d.options else None,
        horizon_months=d.horizon_months,
        discount_rate_pct=d.discount_rate_pct)


def decision_rows(d: BreakevenDecision) -> list[DecisionRow]:
    """Decisions are stored; a trending notice is only an alert (the alerter keeps it in its outbox)."""
    return [] if d.kind == TRENDING_REPATRIATION else [decision_row(d)]


def anomaly_row(a: Anomaly) -> AnomalyRow:
    return AnomalyRow(
        episode_id=a.episode_id, revision=int(a.state == "closed"), kind=a.kind, state=a.state, subject=a.subject,
        workload=a.workload, team=a.team, gpu_class=a.gpu_class, environment=a.environment, resource=a.resource,
        started_at=utc_from_ms(a.start_ms), detected_at=utc_from_ms(a.detected_ms),
        ended_at=None if a.ended_ms is None else utc_from_ms(a.ended_ms), score=a.score, baseline=a.baseline,
        observed=a.observed, unit=a.unit, usd_so_far=a.usd_so_far, usd_per_day_at_stake=a.usd_per_day_at_stake,
        reason=a.reason, event_id=a.event_id)


def dead_letter_row(d: DeadLetter) -> DeadLetterRow:
    return DeadLetterRow(event_id=d.event_id, received_at=utc_from_ms(d.ts_ms), source_topic=d.source_topic,
                         reason=d.reason, payload=d.payload)


def gpu_sample_rows(s: GpuSample) -> list[GpuSampleRow]:
    ts, resource, environment, interval_ms = utc_from_ms(s.ts_ms), s.resource, s.environment, s.interval_ms
    # positional, in GpuSampleRow's order (one row per GPU, the sink's hottest loop: keywords cost a third more)
    return [
        GpuSampleRow(
            ts, resource, g.uuid, g.index, g.model, g.gpu_class, environment, interval_ms, g.utilization_pct,
            g.memory_used_mib, g.memory_total_mib, g.power_mw, [w.workload for w in g.workloads],
            g.parent_uuid or None, g.mig_profile or None, g.compute_fraction if g.parent_uuid else None, g.energy_mj)
        for g in s.gpus
    ]


def cost_line_row(c: CostLine) -> CostLineRow:
    return CostLineRow(
        charge_period_start=utc_from_ms(c.charge_period_start_ms), event_id=c.event_id,
        charge_period_end=utc_from_ms(c.charge_period_end_ms), provider=c.provider, provider_name=c.provider_name,
        billing_account=c.billing_account, billing_period_start=utc_from_ms(c.billing_period_start_ms),
        resource_id=c.resource_id, charge_category=c.charge_category, service=c.service, sku=c.sku,
        region=c.region, instance_type=c.instance_type, gpu_class=c.gpu_class, gpus=c.gpus, source=c.source,
        export_version=c.export_version, billed_cost_usd=c.billed_cost_usd, effective_cost_usd=c.effective_cost_usd,
        tags=Jsonb(c.tags), extra=Jsonb(c.extra))


# The reconciliation rollup (``cloud_cost_daily``, migration 017) per UTC day and resource: the sink notes
# in ``stage_cloud_days`` each (day, resource) its batch's cloud windows and bill lines fall in, and those
# of the stored lines they replace, and recomputes those once, after every row of the batch is written
# (in every mode, row by row too), as the last statement of its transaction (``refresh_cloud_days``,
# ``refresh_cloud_cost_daily``).  A bill line's resource is the last segment of its path.
_CLOUD_DAY = "date_bin(INTERVAL '1 day', {}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_BILL_RESOURCE = "reverse(split_part(reverse({}), '/', 1))"
STAGE_CLOUD_DAYS_SQL = ("CREATE TEMP TABLE IF NOT EXISTS stage_cloud_days (day timestamptz NOT NULL,"
                        " resource text NOT NULL) ON COMMIT DELETE ROWS")
CLOUD_DAYS_OF_WINDOWS_SQL = f"""
    INSERT INTO stage_cloud_days (day, resource)
    SELECT DISTINCT {_CLOUD_DAY.format('window_start')}, resource FROM stage_cost_windows WHERE environment = 'cloud'
"""
# before the upsert: a line restated under its key with another resource leaves its old resource's day too
CLOUD_DAYS_OF_LINES_SQL = f"""
    INSERT INTO stage_cloud_days (day, resource)
    SELECT {_CLOUD_DAY.format('charge_period_start')}, {_BILL_RESOURCE.format('resource_id')}
      FROM stage_cost_lines WHERE resource_id <> ''
    UNION
    SELECT {_CLOUD_DAY.format('l.charge_period_start')}, {_BILL_RESOURCE.format('l.resource_id')}
      FROM stage_cost_lines s
      JOIN cost_lines l ON l.charge_period_start = s.charge_period_start AND l.event_id = s.event_id
     WHERE l.resource_id <> s.resource_id AND l.resource_id <> ''
"""
REFRESH_CLOUD_DAYS_SQL = """
    SELECT refresh_cloud_cost_daily(array_agg(day), array_agg(resource))
      FROM (SELECT DISTINCT day, resource FROM stage_cloud_days) k
"""

# the newest export of a billing period replaces the lines of older exports of that period, whatever
# order they arrive in (export versions sort by time: "<ISO timestamp>|<id>"); the days of the lines it
# removes are recomputed in the reconciliation rollup, those a newer delivery no longer bills included
SUPERSEDE_COST_LINES_SQL = f"""
    WITH superseded AS (
        DELETE FROM cost_lines c
         USING (SELECT l.source, l.billing_account, l.billing_period_start, max(l.export_version) AS export_version
                  FROM cost_lines l
                  JOIN (SELECT DISTINCT source, billing_account, billing_period_start FROM stage_cost_lines) k
                    ON l.source = k.source AND l.billing_account = k.billing_account
                   AND l.billing_period_start = k.billing_period_start
                 GROUP BY 1, 2, 3) s
         WHERE c.source = s.source AND c.billing_account = s.billing_account
           AND c.billing_period_start = s.billing_period_start AND c.export_version < s.export_version
        RETURNING c.charge_period_start, c.resource_id
    )
    INSERT INTO stage_cloud_days (day, resource)
    SELECT DISTINCT {_CLOUD_DAY.format('charge_period_start')}, {_BILL_RESOURCE.format('resource_id')}
      FROM superseded WHERE resource_id <> ''
"""


def price_row(p: PriceUpdate) -> PriceRow:
    return PriceRow(provider=p.provider, region=p.region, instance_type=p.instance_type,
                    purchase_option=p.purchase_option, effective_at=utc_from_ms(p.ts_ms), usd_per_hour=p.usd_per_hour,
                    source=p.source, event_id=p.event_id)


def live_instance_row(s: LiveSpend) -> LiveInstanceRow:
    return LiveInstanceRow(
        instance_id=s.instance_id, changed_at=utc_from_ms(s.ts_ms), provider=s.provider, region=s.region,
        instance_type=s.instance_type, purchase_option=s.purchase_option, workload=s.workload, team=s.team,
        gpu_class=s.gpu_class, gpus=s.gpus, state=s.state, usd_per_hour=s.usd_per_hour,
        running_since=utc_from_ms(s.running_since_ms) if s.running_since_ms else None,
        ends_at=utc_from_ms(s.ends_at_ms) if s.ends_at_ms else None, event_id=s.event_id)


class Batch:
    """Rows of one poll, and the next offset of every partition the poll read (stored with the rows).

    Rows of tables that restate are deduplicated on their natural key as they come (the last version
    wins).  Append-only tables keep every row in arrival order, unkeyed: their keys are computed
    only when the database refuses a copy of a stored key (``keyed``), the first copy of a key is
    kept and the others become dead letters (keying every GPU sample as it comes costs a fifth of
    the sink's decoding).

    The records of an append-only table may be left to decode (``defer``): the fast write decodes
    them while it COPYs their rows (``stream``), so that the database works through the COPY while
    the sink decodes what follows, in the same transaction as ever.  Anything that reads ``rows``
    gets them all: what is left is decoded first."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple, tuple] | list[tuple]] = {
            t: [] if spec.append_only else {} for t, spec in TABLES.items()}
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to read
        # append-only table -> its records not decoded yet, and what decodes one into this batch
        self._unread: dict[str, tuple[deque, Callable[[Batch, object], None]]] = {}

    @property
    def rows(self) -> dict[str, dict[tuple, tuple] | list[tuple]]:
        self.complete()
        return self._rows

    def add(self, table: str, row: tuple) -> None:
        self.extend(table, (row,))

    def extend(self, table: str, rows: Iterable[tuple]) -> None:
        target = self._rows[table]
        if isinstance(target, list):
            target.extend(rows)
            return
        key_of = TABLES[table].key_of
        for row in rows:
            target[key_of(row)] = row

    def defer(self, table: str, record, read: Callable[[Batch, object], None]) -> None:
        """Leave ``record`` of the append-only ``table`` to decode later; ``read(batch, record)`` adds its rows."""
        assert TABLES[table].append_only, table
        unread = self._unread.get(table)
        if unread is None:
            unread = self._unread[table] = (deque(), read)
        unread[0].append(record)

    def stream(self, table: str) -> Iterator[tuple]:
        """Every row of ``table`` (append-only) in arrival order, decoding its deferred records as it goes."""
        rows = self._rows[table]
        records, read = self._unread.get(table, ((), None))
        i = 0
        while True:
            while i < len(rows):
                yield rows[i]
                i += 1
            if not records:
                return
            read(self, records.popleft())

    def complete(self) -> None:
        """Decode every deferred record."""
        for records, read in self._unread.values():
            while records:
                read(self, records.popleft())

    def values(self, table: str) -> Collection[tuple]:
        rows = self.rows[table]
        return rows if isinstance(rows, list) else rows.values()

    def keyed(self, table: str) -> list[tuple[tuple, tuple]]:
        """(natural key, row) for every row of ``table``; an append-only table's in arrival order,
        copies of a key included."""
        rows = self.rows[table]
        if isinstance(rows, list):
            key_of = TABLES[table].key_of
            return [(key_of(row), row) for row in rows]
        return list(rows.items())

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


def _key_text(table: str, key: tuple) -> str:
    values = (v.isoformat() if isinstance(v, datetime) else str(v) for v in key)
    return ", ".join(f"{name}={value}" for name, value in zip(TABLES[table].key, values))


def duplicate_row(table: str, key: tuple, row: tuple) -> DeadLetterRow:
    """The dead letter of an append-only row whose natural key is already taken."""
    reason = (f"sink: duplicate {table} row ({_key_text(table, key)}): that key is already stored, so this copy is "
              "not stored again (a replay past the sink's stored offsets: were they reset?)")
    return DeadLetterRow(f"sink|{table}|{key}", utc_now(), table, reason, repr(row)[:65536])


def refused_row(table: str, key: tuple, row: tuple, exc: psycopg.Error) -> DeadLetterRow:
    return DeadLetterRow(f"sink|{table}|{key}", utc_now(), table,
                         f"sink: refused by the database: {str(exc).splitlines()[0]}", repr(row)[:65536])


class OffsetsMoved(RuntimeError):
    """A stored offset is not the one this sink last saw: another sink wrote that partition."""


@dataclass
class StoredOffsets:
    """The offsets a sink (its consumer group) keeps in ``sink_offsets``, as it last saw them, and
    the id of the log each one counts in (``topic_ids``: topic -> id, written with the offsets)."""

    group: str
    seen: dict[tuple[str, int], int | None]  # (topic, partition) -> next offset; None: no row yet
    topic_ids: dict[str, str] = field(default_factory=dict)

    def load(self, conn: psycopg.Connection) -> dict[tuple[str, int], int]:
        """The stored offsets of this sink's group."""
        return {tp: offset for tp, (offset, _) in self.load_with_ids(conn).items()}

    def load_with_ids(self, conn: psycopg.Connection) -> dict[tuple[str, int], tuple[int, str | None]]:
        """(topic, partition) -> (stored offset, the topic id it was stored against, or None)."""
        return {(t, p): (o, i) for t, p, o, i in conn.execute(
            "SELECT topic, partition, next_offset, topic_id FROM sink_offsets WHERE group_id = %s", (self.group,))}

    def write(self, conn: psycopg.Connection, offsets: dict[tuple[str, int], int]) -> None:
        """Store the next offsets in the caller's transaction, after checking (and locking) the
        stored ones: each must still be what this sink saw, else ``OffsetsMoved``."""
        if not offsets:
            return
        topics = [t for t, _ in offsets]
        parts = [p for _, p in offsets]
        stored = {(t, p): o for t, p, o in conn.execute(
            "SELECT o.topic, o.partition, o.next_offset FROM sink_offsets o"
            "  JOIN unnest(%s::text[], %s::int[]) AS w(topic, partition) USING (topic, partition)"
            " WHERE o.group_id = %s FOR UPDATE OF o", (topics, parts, self.group))}
        for tp in offsets:
            if stored.get(tp) != self.seen.get(tp):
                raise OffsetsMoved(f"{tp[0]}[{tp[1]}]: stored offset {stored.get(tp)}, this sink saw "
                                   f"{self.seen.get(tp)}")
        conn.execute(
            "INSERT INTO sink_offsets (group_id, topic, partition, next_offset, topic_id)"
            " SELECT %s, t, p, o, i FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[]) AS u(t, p, o, i)"
            " ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,"
            " topic_id = EXCLUDED.topic_id, updated_at = now()",
            (self.group, topics, parts, list(offsets.values()), [self.topic_ids.get(t) for t in topics]))


# -- writing ----------------------------------------------------------------------------------------


def _upsert_sql(table: str, spec: TableSpec) -> str:
    """From staging into the table.  An append-only table keeps what it has and returns the keys it
    took, so that the caller can dead-letter the rest."""
    cols = ", ".join(spec.columns)
    if spec.update:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in spec.columns if c not in spec.key)
        action = f"DO UPDATE SET {sets}" + (", updated_at = now()" if table == "cost_windows" else "")
        if spec.newer:
            action += f" WHERE {table}.{spec.newer} <= EXCLUDED.{spec.newer}"
    else:
        action = "DO NOTHING"
        if spec.append_only:
            action += f" RETURNING {', '.join(spec.key)}"
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} ON CONFLICT ({', '.join(spec.key)}) {action}"


def _rollup_sql(rollup: str, width: str) -> str:
    """Recompute the rollup buckets that the staged cost windows fall in, from the raw rows: each bucket's
    windows read through the (workload, window_start) index, in a lateral aggregate, whatever the planner
    guesses of the staged rows (which have no statistics).  A join of them merge-joined every window stored of
    their workloads with each bucket: 3.3 s for a batch of 50 windows on 14 days of 10,000 GPUs (0.05 s so),
    3 million rows filtered for a batch of 4,000 windows over 17 days (tests/test_panel_queries.py)."""
    bucket = f"date_bin(INTERVAL '{width}', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    return f"""
        INSERT INTO {rollup} (bucket, workload, environment, gpu_class, basis, team, allocated_gpu_ms,
                              busy_gpu_ms, energy_mj, cost_usd, windows)
        SELECT k.bucket, k.workload, k.environment, k.gpu_class, k.basis, c.team, c.allocated_gpu_ms, c.busy_gpu_ms,
               c.energy_mj, c.cost_usd, c.windows
          FROM (SELECT DISTINCT {bucket} AS bucket, workload, environment, gpu_class, basis
                  FROM stage_cost_windows) k
         CROSS JOIN LATERAL (
             SELECT max(c.team) AS team, sum(c.allocated_gpu_ms) AS allocated_gpu_ms, sum(c.busy_gpu_ms) AS busy_gpu_ms,
                    sum(c.energy_mj) AS energy_mj, sum(c.cost_usd) AS cost_usd, count(*) AS windows
               FROM cost_windows c
              WHERE c.workload = k.workload AND c.environment = k.environment AND c.gpu_class = k.gpu_class
                AND c.basis = k.basis AND c.window_start >= k.bucket AND c.window_start < k.bucket + INTERVAL '{width}'
         ) c
        ON CONFLICT (bucket, workload, environment, gpu_class, basis) DO UPDATE SET
            team = EXCLUDED.team, allocated_gpu_ms = EXCLUDED.allocated_gpu_ms, busy_gpu_ms = EXCLUDED.busy_gpu_ms,
            energy_mj = EXCLUDED.energy_mj, cost_usd = EXCLUDED.cost_usd, windows = EXCLUDED.windows
    """


ROLLUPS_SQL = tuple(_rollup_sql(name, f"{int(width.total_seconds())} seconds") for name, width in ROLLUPS.items())


def write_batch(conn: psycopg.Connection, batch: Batch, engine: str, partitions: Partitions,
                offsets: StoredOffsets | None = None, *, careful: bool = False, binary: bool = True) -> int:
    """Write a batch and its offsets in one transaction; return how many rows were dead-lettered as
    duplicates of stored rows.

    Append-only tables are COPYed straight in, first, decoding the batch's deferred records as
    their rows go (``Batch.stream``): a key already stored fails the whole transaction with
    ``UniqueViolation``, and the caller writes the batch again with ``careful``, which stages those
    tables too, keeps the rows already stored and dead-letters the new copies.  The other tables
    (dead letters of records that did not decode among them) are COPYed into staging and upserted,
    and the rollups refreshed; the reconciliation rollup's touched days last, once all of that is
    written (``refresh_cloud_days``).  (On TimescaleDB the continuous aggregates' materialized buckets
    the batch restated are refreshed after it commits.)
    ``binary``: COPY in PostgreSQL's binary format (else text, for a server that refuses it).
    """
    created: list[str] = []
    copied = () if careful else APPEND_ONLY
    try:
        with conn.transaction():
            if offsets is not None:  # first: a sink whose partitions moved on fails before writing anything
                offsets.write(conn, batch.offsets)
            for table in copied:
                created += copy_streamed(conn, table, batch.stream(table), partitions, binary)
            created += _ensure_partitions(conn, batch, partitions, skip=copied)
            duplicates = _write_rows(conn, batch, engine, careful, binary, skip=copied)
            if duplicates:
                letters = Batch()
                for table, key, row in duplicates:
                    letters.add("dead_letters", duplicate_row(table, key, row))
                _write_rows(conn, letters, engine, careful, binary)
            refresh_cloud_days(conn, batch)  # last: its locks are the last this transaction takes
    except BaseException:
        partitions.known.difference_update(created)  # rolled back with the transaction
        raise
    refresh_restated_rollups(conn, batch, engine)
    return len(duplicates)


def write_row_by_row(conn: psycopg.Connection, batch: Batch, engine: str, partitions: Partitions,
                     offsets: StoredOffsets | None = None, *, binary: bool = True) -> tuple[int, int]:
    """Write a batch the database refused as a whole: each row in its own savepoint, the refused
    ones as dead letters with the database's reason, and the offsets, in one transaction.  Return
    (rows written, rows refused)."""
    created: list[str] = []
    written, refused = 0, Batch()
    try:
        with conn.transaction():
            if offsets is not None:
                offsets.write(conn, batch.offsets)
            created += _ensure_partitions(conn, batch, partitions)
            for table in batch.rows:
                for key, row in batch.keyed(table):
                    single = Batch()
                    single.add(table, row)
                    try:
                        with conn.transaction():  # a savepoint
                            if _write_rows(conn, single, engine, True, binary):
                                refused.add("dead_letters", duplicate_row(table, key, row))
                            else:
                                written += 1
                    except (psycopg.DataError, psycopg.IntegrityError) as exc:
                        refused.add("dead_letters", refused_row(table, key, row, exc))
            _write_rows(conn, refused, engine, True, binary)
            # once, after every row: the rows' savepoints noted their (day, resource) pairs (a refused row's
            # rolled back with it)
            refresh_cloud_days(conn, batch)
    except BaseException:
        partitions.known.difference_update(created)
        raise
    refresh_restated_rollups(conn, batch, engine)
    return written, len(refused)


def _ensure_partitions(conn: psycopg.Connection, batch: Batch, partitions: Partitions,
                       skip: Collection[str] = ()) -> list[str]:
    created = []
    for table, rows in batch.rows.items():
        spec = TABLES[table]
        if rows and spec.time_column and table not in skip:
            created += partitions.ensure(conn, table, {getattr(row, spec.time_column) for row in batch.values(table)})
    return created


def _write_rows(conn: psycopg.Connection, batch: Batch, engine: str, careful: bool,
                binary: bool, skip: Collection[str] = ()) -> list[tuple[str, tuple, tuple]]:
    """The batch's rows but those of ``skip``, in the caller's transaction; with ``careful``, the
    append-only rows whose keys were already stored (not written), as (table, key, row).  The
    reconciliation rollup's (day, resource) pairs of its bill lines and cloud windows are noted in
    ``stage_cloud_days``, for the caller to refresh once its batch is written (``refresh_cloud_days``)."""
    duplicates = []
    cloud_days = False  # stage_cloud_days created (it may be already: this noting adds to it)
    for table, rows in batch.rows.items():
        if not rows or table in skip:
            continue
        spec = TABLES[table]
        if spec.append_only and not careful:
            copy_rows(conn, table, table, rows, binary)
            continue
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        copy_rows(conn, f"stage_{table}", table, batch.values(table), binary)
        if table == "cost_lines" or (table == "cost_windows" and any(
                row.environment == "cloud" for row in batch.values(table))):
            if not cloud_days:
                conn.execute(STAGE_CLOUD_DAYS_SQL)
                cloud_days = True
            conn.execute(CLOUD_DAYS_OF_LINES_SQL if table == "cost_lines" else CLOUD_DAYS_OF_WINDOWS_SQL)
        if spec.append_only:
            taken = {tuple(key) for key in conn.execute(_upsert_sql(table, spec))}
            for key, row in batch.keyed(table):  # the first copy of a key is the one inserted
                if key in taken:
                    taken.discard(key)
                else:
                    duplicates.append((table, key, row))
            conn.execute(f"DELETE FROM stage_{table}")  # the careful path stages again in this transaction
            continue
        conn.execute(_upsert_sql(table, spec))
        if table == "cost_lines":
            conn.execute(SUPERSEDE_COST_LINES_SQL)
        if table == "cost_windows" and engine == POSTGRESQL:
            for statement in ROLLUPS_SQL:
                conn.execute(statement)
        if careful:
            conn.execute(f"DELETE FROM stage_{table}")  # the careful path stages again in this transaction
    return duplicates


def has_cloud_days(batch: Batch) -> bool:
    """Whether the batch has rows of the reconciliation rollup: bill lines, or cloud cost windows."""
    return bool(batch.rows["cost_lines"]) or any(
        row.environment == "cloud" for row in batch.values("cost_windows"))


def refresh_cloud_days(conn: psycopg.Connection, batch: Batch) -> None:
    """Recompute the reconciliation rollup's (day, resource) pairs noted while the batch was written, in
    the caller's transaction: once a batch, after all of its rows (whichever way they were written) and
    just before the commit.  The refresh's locks (a lock per resource, migration 017) are then the last
    locks the transaction takes: a sink holding them waits on no row lock of another's (it did, row by
    row: it refreshed after each row and went on writing rows), so no deadlock runs through them."""
    if has_cloud_days(batch):
        conn.execute(STAGE_CLOUD_DAYS_SQL)  # the rows noting some may all have been refused (row by row)
        conn.execute(REFRESH_CLOUD_DAYS_SQL)


_COLUMN_TYPES: dict[str, list[int]] = {}  # table -> the type OIDs of its spec's columns (built-in types)
TEXT_ARRAY_OID = 1009


class _TextArrayBinaryDumper(psycopg.adapt.Dumper):
    """text[] for a binary COPY, each distinct array dumped once per COPY: psycopg's own array dumper
    is Python code, and the GPU samples' workload lists repeat from row to row (a handful of distinct
    ones in a batch of thousands).  The bytes are psycopg's, so the stored arrays are the same."""

    format = psycopg.pq.Format.BINARY
    oid = TEXT_ARRAY_OID

    def __init__(self, cls: type, context=None) -> None:
        super().__init__(cls, context)
        self._dump_array = psycopg.postgres.adapters.get_dumper_by_oid(TEXT_ARRAY_OID, self.format)(
            list, context).dump
        self._dumped: dict[tuple, bytes] = {}

    def dump(self, obj: list) -> bytes:
        key = tuple(obj)
        data = self._dumped.get(key)
        if data is None:
            data = self._dumped[key] = bytes(self._dump_array(obj))
        return data


def copy_rows(conn: psycopg.Connection, target: str, table: str, rows: Iterable[tuple], binary: bool = True) -> None:
    """COPY rows of ``table``'s spec into ``target``, in PostgreSQL's binary format unless told
    otherwise: twice as fast as text for the GPU samples (measured; docs/performance.md), since
    neither side formats or parses numbers, timestamps and arrays as text."""
    with _copy(conn, target, table, binary) as write_row:
        for row in rows:
            write_row(row)


def copy_streamed(conn: psycopg.Connection, table: str, rows: Iterator[tuple], partitions: Partitions,
                  binary: bool = True) -> list[str]:
    """COPY ``table``'s rows into it as ``rows`` yields them (while the rows after are decoded, the
    server works through those sent), creating the partitions they need first; return the names of
    the partitions created.  A row whose partition this sink has not met ends the COPY: its partition
    is created and another COPY, in the same transaction, takes the rest (once a day, or at start)."""
    spec = TABLES[table]
    at = spec.columns.index(spec.time_column) if spec.time_column else None
    created: list[str] = []
    met: set = set()  # times whose partition exists
    try:
        row = next(rows, None)
        while row is not None:
            if at is not None and row[at] not in met:
                created += partitions.ensure(conn, table, (row[at],))
                met.add(row[at])
            with _copy(conn, table, table, binary) as write_row:
                while row is not None:
                    if at is not None and row[at] not in met:
                        if not partitions.has(table, row[at]):
                            break
                        met.add(row[at])
                    write_row(row)
                    row = next(rows, None)
    except BaseException:
        partitions.known.difference_update(created)  # rolled back with the caller's transaction
        raise
    return created


@contextmanager
def _copy(conn: psycopg.Connection, target: str, table: str, binary: bool) -> Iterator[Callable[[tuple], None]]:
    """A COPY into ``target`` of rows of ``table``'s spec; yields the function that writes one row."""
    columns = ", ".join(TABLES[table].columns)
    if not binary:
        with conn.cursor().copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            yield copy.write_row
        return
    if conn.adapters.get_dumper_by_oid(TEXT_ARRAY_OID, psycopg.pq.Format.BINARY) is not _TextArrayBinaryDumper:
        conn.adapters.register_dumper(None, _TextArrayBinaryDumper)  # this connection's, by type OID only
    types = _COLUMN_TYPES.get(table)
    if types is None:
        oids = dict(conn.execute("SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass"
                                 " AND attnum > 0 AND NOT attisdropped", (table,)).fetchall())
        types = _COLUMN_TYPES[table] = [oids[c] for c in TABLES[table].columns]
    with conn.cursor().copy(f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        yield copy.write_row


def refresh_restated_rollups(conn: psycopg.Connection, batch: Batch, engine: str) -> None:
    """TimescaleDB: refresh the continuous aggregates' materialized buckets the committed batch restated."""
    windows = batch.rows["cost_windows"]
    if engine == TIMESCALEDB and windows:
        starts = [row.window_start for row in batch.values("cost_windows")]
        try:
            refresh_materialized_rollups(conn, min(starts), max(starts))
        except psycopg.OperationalError:
            raise  # the database went away: the batch is written again, and refreshed then
        except psycopg.Error as exc:
            log.warning("sink: continuous aggregates not refreshed (%s); their refresh policy will",
                        str(exc).splitlines()[0])


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a batch is decoded and written: the batch is
    tens of thousands of small containers (rows, their arrays, the decoded events) without a cycle
    among them, which the collector walked again and again as they were made (a third of the
    time the bench's 8,100 records took to decode, measured); it runs again afterwards, and memory
    without cycles is freed as ever, by reference counting."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def sink_topics(topics) -> list[str]:
    """The topics the sink stores (watermarks on them are skipped)."""
    return [topics.cost_windows, topics.decisions, topics.anomalies, topics.dead_letter, topics.gpu_samples,
            topics.cost_lines, topics.prices, topics.live_spend]


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """On every assignment the sink reads its stored offsets and seeks to them (``Sink.place``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.sink.offsets.seen.pop((tp.topic, tp.partition), None)
            self.sink.unplaced.discard(tp)
            self.sink.from_start.discard(tp)

    def on_partitions_assigned(self, assigned) -> None:
        # placed by the sink right after the poll that assigned them (no I/O inside the consumer's callback)
        self.sink.unplaced.update(assigned)


class Sink:
    """Consumes the topics and writes them, each batch with its offsets in one transaction.

    ``consumer``: ``infra.broker.make_sink_consumer``'s (confluent-kafka), or a kafka-python
    ``KafkaConsumer`` (``make_consumer``): the sink calls only the methods both have."""

    def __init__(self, consumer, dsn: str, topics, *, retry_max_s: float = 10.0, max_records: int = 5000,
                 say: Callable[[str], None] = log.warning,
                 lag_probe: Callable[[], list[tuple[str, str, int, int]]] | None = None, metrics=None,
                 clock: Callable[[], datetime] = utc_now, retention_every_s: float = RETENTION_EVERY_S,
                 lag_every_s: float = LAG_EVERY_S, monotonic: Callable[[], float] = time.monotonic):
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
        # the wall clock retention measures from; the first pass runs with the first ``run_once``
        self.clock = clock
        self.retention_due = Every(retention_every_s, monotonic)
        self.sample_rollups_due = Every(SAMPLE_ROLLUPS_EVERY_S, monotonic)
        self.lag_probe = lag_probe
        self.lag_due = Every(lag_every_s, monotonic)
        self.binary_copy = True  # until the server refuses it (PGlite over a socket does)
        # topic -> (table, the rows of one record's value)
        self._decoders: dict[str, tuple[str, Callable[[bytes], list[tuple]]]] = {
            topics.cost_windows: ("cost_windows", lambda v: [cost_window_row(CostWindow.decode(v))]),
            topics.decisions: ("decisions", lambda v: decision_rows(BreakevenDecision.decode(v))),
            topics.anomalies: ("anomalies", lambda v: [anomaly_row(Anomaly.decode(v))]),
            topics.dead_letter: ("dead_letters", lambda v: [dead_letter_row(DeadLetter.decode(v))]),
            # labels replaced as the worker replaces them (it dead-letters the original once)
            topics.gpu_samples: ("gpu_samples", lambda v: gpu_sample_rows(GpuSample.decode_replacing_labels(v)[0])),
            topics.cost_lines: ("cost_lines", lambda v: [cost_line_row(CostLine.decode(v))]),
            topics.prices: ("prices", lambda v: [price_row(PriceUpdate.decode(v))]),
            topics.live_spend: ("live_instances", lambda v: [live_instance_row(LiveSpend.decode(v))]),
        }
        # the topics of append-only tables: their records are decoded while their rows are COPYed
        self._deferrable = {topic for topic, (table, _) in self._decoders.items() if TABLES[table].append_only}
        group = consumer.config.get("group_id") if consumer is not None else None
        self.offsets = StoredOffsets(group or "", {})
        self.topic_ids = TopicIds(consumer.config) if consumer is not None else None
        self.unplaced: set[TopicPartition] = set()  # assigned, not yet at their stored offsets
        self.from_start: set[TopicPartition] = set()  # sent to a new log's start, below their stored offsets
        if consumer is not None and consumer.subscription():
            subscribed = sorted(consumer.subscription())
            consumer.unsubscribe()  # subscribed again, with the listener that seeks on every assignment
            consumer.subscribe(topics=subscribed, listener=_SeekToStoredOffsets(self))
        elif consumer is not None:
            self.unplaced.update(consumer.assignment())  # assigned by hand

    def decode(self, records: Iterable, *, defer: bool = False) -> Batch:
        """The batch of ``records``; with ``defer`` the records of append-only tables are left for the
        write to decode as it COPYs their rows (``Batch.defer``)."""
        batch = Batch()
        for rec in records:
            batch.offsets[(rec.topic, rec.partition)] = rec.offset + 1
            decoder = self._decoders.get(rec.topic)
            if decoder is None or is_watermark(rec.value):
                continue  # watermarks are stream progress, not data
            if defer and rec.topic in self._deferrable:
                batch.defer(decoder[0], rec, self._read)
            else:
                self._read(batch, rec)
        return batch

    def _read(self, batch: Batch, rec) -> None:
        """Add the rows of ``rec`` to ``batch``, or its dead letter."""
        table, rows_of = self._decoders[rec.topic]
        try:
            batch.extend(table, rows_of(rec.value))
        except (EventError, KeyError, TypeError, ValueError) as exc:
            # a bad record is stored as a dead letter, never dropped silently
            letter = DeadLetter.of(topic=rec.topic, partition=rec.partition, offset=rec.offset,
                                   reason=f"sink: {exc}", payload=rec.value, ts_ms=int(time.time() * 1000))
            batch.add("dead_letters", dead_letter_row(letter))
            self.rejected += 1

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn)
            check_schema(self.conn)
            engine = engine_of(self.conn)
            self.conn.commit()
            if engine != self.engine or not self.partitions.known:
                self.engine, self.partitions = engine, Partitions(engine)
        return self.conn

    def _unavailable(self, exc: psycopg.OperationalError, what: str, stop: Callable[[], bool], delay: float) -> bool:
        """Note an outage; False when stopping, else wait ``delay`` and True (try again)."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.outages += 1
        self.say(f"sink: database unavailable ({str(exc).strip().splitlines()[0]}); {what}, "
                 f"retrying in {delay:.1f}s")
        if stop():
            return False
        time.sleep(delay)
        return True

    def place(self, stop: Callable[[], bool] = lambda: False, rewind: dict | None = None) -> bool:
        """Seek the unplaced partitions to their stored offsets (waiting for the database).  A stored
        offset counts only in the log it was read from: a partition whose topic has another id
        than its offset was stored against (the topic recreated, a broker that lost its data) is
        read from its start, however long the new log already is, and one with the same id is
        sought to its stored offset.  Where ids are unknown, a stored offset past the end of the
        log says the log is new, and the partition stays where Kafka's committed offset put it.  One without a stored offset stays there too, or goes back to
        ``rewind[tp]``.  False when stopping first."""
        delay = 0.2
        while self.unplaced:
            try:
                conn = self._connection()
                stored = self.offsets.load_with_ids(conn)
                conn.commit()
            except psycopg.OperationalError as exc:
                if not self._unavailable(exc, "stored offsets not read", stop, delay):
                    return False
                delay = min(delay * 2, self.retry_max_s)
                continue
            ids = self._topic_ids({tp.topic for tp in self.unplaced})
            self.offsets.topic_ids.update(ids)
            # a stored offset whose log is known by its id needs no other check (the end offsets the
            # local broker reports can be below the last record: docs/design.md, "Broker profiles")
            known = {tp for tp in self.unplaced if stored.get((tp.topic, tp.partition), (None, None))[1]
                     and tp.topic in ids}
            ends = self._log_ends([tp for tp in self.unplaced if (tp.topic, tp.partition) in stored and tp not in known])
            for tp in self.unplaced:
                offset, stored_id = stored.get((tp.topic, tp.partition), (None, None))
                self.offsets.seen[(tp.topic, tp.partition)] = offset
                if tp in known and ids[tp.topic] != stored_id:
                    log.warning("sink: %s[%d]: the stored offset %d counts in the topic's log %s, the topic is now"
                                " %s (recreated, or the broker lost its data): reading it from its start",
                                tp.topic, tp.partition, offset, stored_id, ids[tp.topic])
                    self.consumer.seek_to_beginning(tp)
                    self.from_start.add(tp)
                    continue
                if tp not in known and offset is not None and offset > ends.get(tp, offset):
                    log.warning("sink: %s[%d]: the stored offset %d is past the end of the log (%d): the topic"
                                " was recreated or the broker lost its data; reading it from Kafka's position",
                                tp.topic, tp.partition, offset, ends[tp])
                    offset = None
                if offset is not None:
                    self.consumer.seek(tp, offset)
                elif rewind and tp in rewind:
                    self.consumer.seek(tp, rewind[tp])
            self.unplaced.clear()
        return True

    def _topic_ids(self, topics: set[str]) -> dict[str, str]:
        """The current id of each topic's log ({} when the broker does not say)."""
        if self.topic_ids is None:
            return {}
        try:
            return self.topic_ids(topics)
        except Exception as exc:  # a check, not a requirement: the end-of-log check still runs
            log.warning("sink: topic ids not read (%s); checking stored offsets against the logs' ends only", exc)
            return {}

    def _log_ends(self, partitions: list) -> dict:
        """The end offset of each partition's log ({} when the broker does not say)."""
        if not partitions:
            return {}
        try:
            return self.consumer.end_offsets(partitions)
        except Exception as exc:  # a check, not a requirement: seek to the stored offsets anyway
            log.warning("sink: end offsets not read (%s); seeking to the stored offsets", exc)
            return {}

    def write_durably(self, batch: Batch, stop: Callable[[], bool] = lambda: False) -> bool:
        """Write the batch and its offsets, retrying with backoff while the database is unreachable;
        False when stopping with the batch unwritten.  Raises ``OffsetsMoved`` when another sink
        wrote one of its partitions."""
        delay = 0.2
        mode = "fast"  # then "careful" (a stored key of an append-only table), then "row by row"
        fence = self.offsets if self.consumer is not None else None
        while True:
            try:
                conn = self._connection()
                with cyclic_gc_paused():
                    if mode == "row by row":
                        written, refused = write_row_by_row(conn, batch, self.engine, self.partitions, fence,
                                                            binary=self.binary_copy)
                    else:
                        refused = write_batch(conn, batch, self.engine, self.partitions, fence,
                                              careful=mode == "careful", binary=self.binary_copy)
                        written = len(batch) - refused
                self.rows_written += written
                self.rejected += refused
                self.offsets.seen.update(batch.offsets)
                return True
            except psycopg.errors.BadCopyFileFormat as exc:
                if not self.binary_copy:
                    raise
                log.warning("sink: the database refuses binary COPY (%s); using text COPY",
                            str(exc).splitlines()[0])
                self.binary_copy = False
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                if mode == "row by row":
                    raise
                if mode == "fast" and isinstance(exc, psycopg.errors.UniqueViolation):
                    mode = "careful"  # an append-only row is stored already: keep it, dead-letter the copy
                else:
                    # a row the database refuses must not block the rest: row by row, the refused dead-lettered
                    log.warning("sink: batch refused (%s); writing it row by row", str(exc).splitlines()[0])
                    mode = "row by row"
            except psycopg.OperationalError as exc:
                if not self._unavailable(exc, f"holding {len(batch)} rows", stop, delay):
                    return False
                delay = min(delay * 2, self.retry_max_s)

    def record_lag(self, rows: list[tuple[str, str, int, int]]) -> None:
        conn = self._connection()
        now = self.clock()
        with conn.transaction():
            for group, topic, partition, lag in rows:
                conn.execute(
                    "INSERT INTO consumer_lag VALUES (%s, %s, %s, %s, %s) ON CONFLICT (group_id, topic, partition)"
                    " DO UPDATE SET lag = EXCLUDED.lag, measured_at = EXCLUDED.measured_at",
                    (group, topic, partition, lag, now),
                )

    def maintain(self, now: datetime | None = None) -> list[str]:
        """Drop raw partitions wholly older than their retention before ``now`` (default: the sink's
        wall clock); plain PostgreSQL only, TimescaleDB runs its policies."""
        conn = self._connection()
        with conn.transaction():
            dropped = apply_retention(conn, self.engine, now or self.clock())
        if dropped:
            self.partitions.known.difference_update(dropped)
            log.info("sink: retention dropped %s", ", ".join(dropped))
        return dropped

    def refresh_sample_rollups(self, now: datetime | None = None) -> datetime | None:
        """Plain PostgreSQL: aggregate the raw GPU samples up to a few minutes before ``now`` (default: the
        sink's wall clock) into the rollups the fleet panels read (``refresh_gpu_sample_rollups``, migration
        016); TimescaleDB's job scheduler does it there.  The rollups' new watermark, or None."""
        if self.engine != POSTGRESQL:
            return None
        conn = self._connection()
        with conn.transaction():
            return conn.execute("SELECT refresh_gpu_sample_rollups(%s)",
                                ((now or self.clock()) - SAMPLE_ROLLUPS_BEHIND,)).fetchone()[0]

    def run_once(self, timeout_ms: int = 500, stop: Callable[[], bool] = lambda: False) -> int:
        if self.unplaced and not self.place(stop):
            return 0
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        if self.unplaced:
            # assigned during this poll: its records were read from Kafka's committed offsets, which
            # may be behind the stored ones; read them again from the stored offsets
            late = {tp: recs[0].offset for tp, recs in polled.items() if tp in self.unplaced and recs}
            if not self.place(stop, rewind=late):
                return 0
            polled = {tp: recs for tp, recs in polled.items() if tp not in late}
        for tp, recs in polled.items():
            stored = self.offsets.seen.get((tp.topic, tp.partition))
            if recs and tp in self.from_start:
                self.from_start.discard(tp)
            elif recs and stored is not None and recs[0].offset < stored:
                # the consumer started over below the stored offset (Kafka resets a position past the
                # log's end): a topic recreated under its name, or a broker that lost its data
                log.warning("sink: %s[%d] restarts at offset %d, below the stored %d: the log was recreated;"
                            " storing it from there", tp.topic, tp.partition, recs[0].offset, stored)
        records = [r for recs in polled.values() for r in recs]
        self.records_read += len(records)
        if records:
            with cyclic_gc_paused():
                batch = self.decode(records, defer=True)
            try:
                if not self.write_durably(batch, stop):
                    return 0  # stopping with the batch unwritten: its offsets are not stored
            except OffsetsMoved as exc:
                # another sink took these partitions and wrote them: read on from what it stored
                log.warning("sink: %s; reading on from the stored offsets", exc)
                self.unplaced.update(self.consumer.assignment())
                return 0
            try:
                self.consumer.commit()
            except CommitFailedError as exc:
                # the group rebalanced: the rows and their offsets are stored, and whoever owns the
                # partitions now starts from those
                log.warning("sink: Kafka offsets not committed (%s); the stored offsets stand", exc)
            if self.metrics is not None:
                self.metrics.consumed(records)
                self.metrics.stored(batch)
        if self.lag_probe is not None and self.lag_due.due():
            try:
                lag = self.lag_probe()
                if self.metrics is not None:
                    self.metrics.lag(lag)
                self.record_lag(lag)
            except Exception as exc:  # health reporting must never stop the sink
                log.warning("sink: consumer lag not recorded: %s", exc)
        if self.retention_due.due():
            try:
                self.maintain()
            except psycopg.OperationalError:
                pass  # next time
        if self.sample_rollups_due.due():
            try:
                self.refresh_sample_rollups()
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
        if self.topic_ids is not None:
            self.topic_ids.close()
