"""What the sink and the alerter put in their Prometheus metrics (definitions in ``infra/metrics.py``).

``SinkMetrics`` counts what each poll brought and stored: records per topic, rows per table, dead
letters by kind of reason, each cost window's close delay, and the newest event time per source.
``AlerterMetrics`` refreshes, with the alerter's checks (``alerts.checks.interval_seconds``), the outbox depth and the cost figures:
each owned node's fully loaded rate per GPU (OpenCost's ``node_gpu_hourly_cost``), the 24-hour
effective rate per busy GPU-hour of the costliest workloads, the breakeven utilization per GPU
class and each workload's latest recommendation.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from datetime import datetime
from typing import Iterable

import psycopg

from hybridspend.contracts.config import Config
from hybridspend.contracts.events import is_watermark
from hybridspend.costmodel.tco import breakeven_utilization
from hybridspend.infra import metrics
from hybridspend.infra.clock import Every, utc_now

from .sink import Batch

TOPICS = metrics.BoundedLabel(64)
SOURCES = metrics.BoundedLabel(64)
NODES = metrics.BoundedLabel(4096)


class SinkMetrics:
    def consumed(self, records: Iterable) -> None:
        """Records read that carry data (a watermark is stream progress: the sink stores nothing for it,
        and counting it would make a quiet pipeline look like a sink that cannot write)."""
        for topic, count in Tally(rec.topic for rec in records if not is_watermark(rec.value)).items():
            metrics.EVENTS_IN.labels("sink", TOPICS(topic)).inc(count)

    def stored(self, batch: Batch, now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        for table, rows in batch.rows.items():
            if rows:
                metrics.EVENTS_OUT.labels("sink", table).inc(len(rows))
        for row in batch.values("dead_letters"):
            metrics.DEAD_LETTERS.labels(TOPICS(row.source_topic),
                                        metrics.DEAD_LETTER_REASONS(metrics.reason_kind(row.reason))).inc()
        for row in batch.values("cost_windows"):
            metrics.WINDOW_CLOSE_DELAY.observe(max(0.0, now_s - row.window_end.timestamp()))
        for table, time_column, source_column, name in (
                ("gpu_samples", "ts", "environment", "gpu-samples"),
                ("cost_lines", "charge_period_end", "source", "cost-lines"),
                ("prices", "effective_at", "source", "prices"),
                ("live_instances", "changed_at", "provider", "instance-events")):
            newest: dict[str, float] = {}
            for row in batch.values(table):
                by = getattr(row, source_column)
                key = f"{name}/{by}" if by else name
                newest[key] = max(newest.get(key, 0.0), getattr(row, time_column).timestamp())
            for key, event_time_s in newest.items():
                metrics.LAST_EVENTS.seen(SOURCES(key), event_time_s)

    def lag(self, rows: list[tuple[str, str, int, int]]) -> None:
        totals: dict[tuple[str, str], int] = {}
        for group, topic, _partition, behind in rows:
            totals[(group, topic)] = totals.get((group, topic), 0) + max(0, behind)
        for (group, topic), behind in totals.items():
            metrics.CONSUMER_LAG.labels(TOPICS(group), TOPICS(topic)).set(behind)


class AlerterMetrics:
    def __init__(self, config: Config, every_s: float | None = None) -> None:
        self.config = config
        self.every_s = config.alerts.checks.interval_seconds if every_s is None else every_s
        self.due = Every(self.every_s)

    def consumed(self, polled: dict) -> None:
        for tp, records in polled.items():
            metrics.EVENTS_IN.labels("alerter", TOPICS(tp.topic)).inc(len(records))

    def refresh(self, conn: psycopg.Connection, now: datetime | None = None) -> bool:
        """Read and publish the figures, unless they were read less than ``every_s`` ago."""
        if not self.due.due():
            return False
        now = now or utc_now()
        metrics.OUTBOX_PENDING.set(conn.execute(
            "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0])
        self._nodes(conn, now)
        self._workloads(conn)
        self._breakeven(now)
        return True

    def _nodes(self, conn: psycopg.Connection, now: datetime) -> None:
        """Owned nodes that sent samples in the 24 h before the newest one, at their fully loaded rate."""
        nodes = [r[0] for r in conn.execute(
            "SELECT DISTINCT resource FROM gpu_samples WHERE environment = 'onprem' AND ts >="
            " (SELECT max(ts) FROM gpu_samples WHERE environment = 'onprem') - INTERVAL '24 hours'"
            " ORDER BY 1").fetchall()]
        metrics.NODE_GPU_HOURLY_COST.clear()
        for node in nodes:
            asset = self.config.asset_for_host(node)
            if asset is not None:
                rate = asset.gpu_cost().rate(now).usd_per_gpu_hour
                metrics.NODE_GPU_HOURLY_COST.labels(NODES(node), asset.name, "onprem").set(float(rate))

    def _workloads(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT workload, environment, usd_per_busy_gpu_hour FROM workload_rolling"
            " WHERE span = '24h' AND workload <> 'idle' AND usd_per_busy_gpu_hour IS NOT NULL"
            " ORDER BY cost_usd DESC, workload LIMIT %s", (metrics.MAX_WORKLOADS,)).fetchall()
        metrics.WORKLOAD_USD_PER_BUSY_GPU_HOUR.clear()
        for workload, environment, usd in rows:
            metrics.WORKLOAD_USD_PER_BUSY_GPU_HOUR.labels(workload, environment).set(float(usd))
        decided = conn.execute(
            "SELECT workload, kind FROM (SELECT DISTINCT ON (workload) workload, kind, decided_at FROM decisions"
            " ORDER BY workload, decided_at DESC) latest ORDER BY decided_at DESC, workload LIMIT %s",
            (metrics.MAX_WORKLOADS,)).fetchall()
        metrics.RECOMMENDATION.clear()
        for workload, kind in decided:
            metrics.RECOMMENDATION.labels(workload).state(
                kind if kind in metrics.RECOMMENDATION_STATES else metrics.OTHER)

    def _breakeven(self, now: datetime) -> None:
        """Per GPU class: the first profile's fully loaded rate over the cheapest on-demand cloud rate per GPU."""
        metrics.BREAKEVEN_UTILIZATION.clear()
        for gpu_class, gpu in self.config.market().onprem.items():
            cloud = [o.offer().usd_per_gpu_hour("on_demand") for o in self.config.cloud_offers
                     if o.gpu_class == gpu_class]
            cheapest = min((c for c in cloud if c), default=None)
            if cheapest is not None:
                metrics.BREAKEVEN_UTILIZATION.labels(gpu_class).set(
                    float(breakeven_utilization(gpu.rate(now).usd_per_gpu_hour, cheapest)))
