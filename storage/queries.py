"""Read queries shared by the demo summary, the reports and the dashboards (one place per number)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg


@dataclass(frozen=True)
class WorkloadSummary:
    workload: str
    team: str
    environment: str
    gpu_class: str
    allocated_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    cost_usd: Decimal

    @property
    def utilization(self) -> Decimal | None:
        return self.busy_gpu_hours / self.allocated_gpu_hours if self.allocated_gpu_hours else None

    @property
    def usd_per_busy_gpu_hour(self) -> Decimal | None:
        return self.cost_usd / self.busy_gpu_hours if self.busy_gpu_hours else None


def workload_summary(conn: psycopg.Connection, start: datetime, end: datetime) -> list[WorkloadSummary]:
    rows = conn.execute(
        """
        SELECT workload, max(team), environment, gpu_class,
               sum(allocated_gpu_ms) / 3600000.0, sum(busy_gpu_ms) / 3600000.0, sum(cost_usd)
          FROM cost_windows
         WHERE basis = 'estimated' AND window_start >= %s AND window_start < %s
         GROUP BY workload, environment, gpu_class
         ORDER BY sum(cost_usd) DESC, workload
        """,
        (start, end),
    ).fetchall()
    return [WorkloadSummary(*row) for row in rows]


def decisions_between(conn: psycopg.Connection, start: datetime, end: datetime) -> list[dict]:
    cur = conn.execute(
        """
        SELECT d.decision_id, d.decided_at, d.workload, d.team, d.from_env, d.to_env, d.kind,
               d.current_usd_per_busy_gpu_hour, d.alternative_usd_per_busy_gpu_hour, d.utilization,
               d.monthly_savings_usd, d.confidence, d.alternative_label, d.reason,
               (SELECT count(*) FROM alert_outbox a WHERE a.decision_id = d.decision_id AND a.delivered_at IS NOT NULL)
                 AS alerts_delivered
          FROM decisions d
         WHERE d.decided_at >= %s AND d.decided_at <= %s
         ORDER BY d.decided_at, d.workload
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
