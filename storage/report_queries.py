"""Every query the monthly report runs, over the query layer (migrations 004 and 006).

Each function takes a half-open month ``[start, end)`` in UTC and returns named rows (dicts or
tuples documented in the docstring); none of them computes money, they only sum what the sink stored.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

DayRow = tuple[datetime, str, Decimal, Decimal]

import psycopg


def _dicts(cur: psycopg.Cursor) -> list[dict]:
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def days_with_data(conn: psycopg.Connection, start: datetime, end: datetime) -> int:
    """Days of the month that have any cost window (estimated or billed)."""
    return conn.execute("SELECT count(DISTINCT bucket) FROM cost_daily WHERE bucket >= %s AND bucket < %s",
                        (start, end)).fetchone()[0]


def workload_month(conn: psycopg.Connection, start: datetime, end: datetime) -> list[dict]:
    """One row per workload, environment and GPU class (idle excluded), most expensive first:
    workload, team, environment, gpu_class, allocated_gpu_ms, busy_gpu_ms, estimated_usd, days_with_data."""
    return _dicts(conn.execute(
        """
        SELECT workload, max(team) AS team, environment, gpu_class,
               sum(allocated_gpu_ms)::bigint AS allocated_gpu_ms, sum(busy_gpu_ms)::bigint AS busy_gpu_ms,
               coalesce(sum(cost_usd), 0) AS estimated_usd, count(DISTINCT bucket) AS days_with_data
          FROM cost_daily
         WHERE basis = 'estimated' AND bucket >= %(start)s AND bucket < %(end)s AND workload <> 'idle'
         GROUP BY workload, environment, gpu_class
         ORDER BY estimated_usd DESC, workload, environment, gpu_class
        """, {"start": start, "end": end}))


def cloud_estimate_vs_billed(conn: psycopg.Connection, start: datetime, end: datetime) -> list[dict]:
    """Cloud cost estimated live against billed, per day and workload (the resource-hour matching of
    ``estimate_vs_billed_daily``): day, workload, estimated_usd, billed_usd (NULL: not billed yet).

    Read through ``estimate_vs_billed_daily_between`` (migrations 016 and 017: the view's rows for the UTC
    days it is given, the month's days, from the sink's daily rollup): a filter on the view's day cannot
    reach through its grouping and full join, so the view matched every cloud window with every bill line
    ever stored (2 s of a 10,000-GPU month's report with a single month stored, more with every month kept)."""
    return _dicts(conn.execute(
        """
        SELECT day, workload, estimated_usd, billed_usd
          FROM estimate_vs_billed_daily_between(%s, %s::timestamptz - INTERVAL '1 microsecond')
         ORDER BY day, workload
        """, (start, end)))


def latest_decisions(conn: psycopg.Connection, start: datetime, end: datetime) -> list[dict]:
    """The month's last decision per workload and environment it would leave: workload, from_env, kind,
    confidence, decided_at, monthly_savings_usd, monthly_savings_low_usd / monthly_savings_high_usd (migration
    009; NULL for decisions stored before it)."""
    return _dicts(conn.execute(
        """
        SELECT DISTINCT ON (workload, from_env)
               workload, from_env, kind, confidence, decided_at, monthly_savings_usd,
               monthly_savings_low_usd, monthly_savings_high_usd, alternative_label, instances_needed, options,
               horizon_months, alternative_usd_per_busy_gpu_hour, payback_months, gpus_needed, nodes_needed
          FROM decisions
         WHERE decided_at >= %s AND decided_at < %s
         ORDER BY workload, from_env, decided_at DESC
        """, (start, end)))


def decision_count(conn: psycopg.Connection, start: datetime, end: datetime) -> int:
    return conn.execute("SELECT count(*) FROM decisions WHERE decided_at >= %s AND decided_at < %s",
                        (start, end)).fetchone()[0]


def idle_daily(conn: psycopg.Connection, start: datetime, end: datetime) -> list[DayRow]:
    """Idle owned capacity per day and GPU class: (day, gpu_class, idle_gpu_hours, idle_cost_usd)."""
    return conn.execute(
        """
        SELECT day, gpu_class, sum(idle_gpu_hours), sum(idle_cost_usd) FROM idle_cost_daily
         WHERE day >= %s AND day < %s GROUP BY day, gpu_class ORDER BY day, gpu_class
        """, (start, end)).fetchall()


def spend_daily(conn: psycopg.Connection, start: datetime, end: datetime) -> list[DayRow]:
    """Estimated spend of the workloads (idle excluded) per day and environment:
    (day, environment, cost_usd, busy_gpu_hours)."""
    return conn.execute(
        """
        SELECT bucket, environment, sum(cost_usd), sum(busy_gpu_ms) / 3600000.0 FROM cost_daily
         WHERE basis = 'estimated' AND workload <> 'idle' AND bucket >= %s AND bucket < %s
         GROUP BY 1, 2 ORDER BY 1, 2
        """, (start, end)).fetchall()


def spend_by_environment(conn: psycopg.Connection, start: datetime, end: datetime) -> dict[str, Decimal]:
    """Total estimated spend per environment, idle capacity included (what the GPUs cost)."""
    return dict(conn.execute(
        """
        SELECT environment, coalesce(sum(cost_usd), 0) FROM cost_daily
         WHERE basis = 'estimated' AND bucket >= %s AND bucket < %s GROUP BY environment ORDER BY environment
        """, (start, end)).fetchall())


def workload_names(conn: psycopg.Connection, start: datetime, end: datetime) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT DISTINCT workload FROM cost_daily WHERE basis = 'estimated' AND workload <> 'idle'"
        " AND bucket >= %s AND bucket < %s", (start, end))}


def workload_daily_utilization(conn: psycopg.Connection, start: datetime, end: datetime,
                               workloads: list[tuple[str, str]]) -> list[tuple[datetime, str, str, Decimal]]:
    """Daily utilization (busy / allocated GPU-hours) of the given (workload, environment) pairs:
    (day, workload, environment, utilization)."""
    if not workloads:
        return []
    return conn.execute(
        """
        SELECT day, workload, environment, sum(busy_gpu_hours) / NULLIF(sum(allocated_gpu_hours), 0)
          FROM workload_daily_cost
         WHERE basis = 'estimated' AND day >= %s AND day < %s
           AND (workload, environment) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
         GROUP BY day, workload, environment ORDER BY workload, environment, day
        """, (start, end, [w for w, _ in workloads], [e for _, e in workloads])).fetchall()
