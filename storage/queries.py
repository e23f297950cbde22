"""Read queries over the query layer (the views of migration 004), shared by the demo, reports and dashboards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg


class UsageFigures:
    """Utilization and effective rate of anything with allocated and busy GPU-hours and a cost."""

    allocated_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    cost_usd: Decimal

    @property
    def utilization(self) -> Decimal | None:
        return self.busy_gpu_hours / self.allocated_gpu_hours if self.allocated_gpu_hours else None

    @property
    def usd_per_busy_gpu_hour(self) -> Decimal | None:
        return self.cost_usd / self.busy_gpu_hours if self.busy_gpu_hours else None


@dataclass(frozen=True)
class WorkloadSummary(UsageFigures):
    workload: str
    team: str
    environment: str
    gpu_class: str
    allocated_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    cost_usd: Decimal


def workload_summary(conn: psycopg.Connection, start: datetime, end: datetime) -> list[WorkloadSummary]:
    rows = conn.execute(
        """
        SELECT workload, max(team), environment, gpu_class,
               sum(allocated_gpu_ms) / 3600000.0, sum(busy_gpu_ms) / 3600000.0, sum(cost_usd)
          FROM cost_hourly
         WHERE basis = 'estimated' AND bucket >= %s AND bucket < %s
         GROUP BY workload, environment, gpu_class
         ORDER BY sum(cost_usd) DESC, workload
        """,
        (start, end),
    ).fetchall()
    return [WorkloadSummary(*row) for row in rows]


def decisions_between(conn: psycopg.Connection, start: datetime, end: datetime) -> list[dict]:
    cur = conn.execute(
        """
        SELECT decision_id, decided_at, workload, team, from_env, to_env, kind,
               current_usd_per_busy_gpu_hour, alternative_usd_per_busy_gpu_hour, utilization,
               monthly_savings_usd, confidence, alternative_label, reason, alerts_delivered
          FROM decision_log
         WHERE decided_at >= %s AND decided_at <= %s
         ORDER BY decided_at, workload
        """,
        (start, end),
    )
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def counts(conn: psycopg.Connection) -> dict[str, int]:
    out = {}
    for table in ("cost_windows", "decisions", "alert_outbox", "dead_letters"):
        out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    out["alerts_pending"] = conn.execute(
        "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0]
    return out
