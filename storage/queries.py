"""Read queries by name over the stored results and the query layer (the views of migration 004).

The demo's and ``simulate``'s summaries and the figures the alert checks judge read the database
through these functions; rows come back as dataclasses or dicts named by column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg.rows import class_row, dict_row

from hybridspend.costmodel.options import HourOfDemand
from hybridspend.costmodel.timeunits import MS_PER_HOUR


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
               monthly_savings_usd, confidence, alternative_label, reason, alerts_delivered,
               monthly_savings_low_usd, monthly_savings_high_usd, evidence_hours, gpus_needed, nodes_needed,
               instances_needed, options, horizon_months, discount_rate_pct
          FROM decision_log
         WHERE decided_at >= %s AND decided_at <= %s
         ORDER BY decided_at, workload
        """,
        (start, end),
    )
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def cloud_cost_estimated_and_billed(conn: psycopg.Connection, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
    """(cloud cost estimated from live samples, cost billed by the providers) for windows starting in [start, end)."""
    return conn.execute(
        "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM cost_windows WHERE environment = 'cloud'"
        "        AND basis = 'estimated' AND window_start >= %s AND window_start < %s),"
        "       (SELECT coalesce(sum(billed_cost_usd), 0) FROM cost_lines"
        "        WHERE charge_period_start >= %s AND charge_period_start < %s)", (start, end, start, end)).fetchone()


@dataclass(frozen=True)
class PipelineProgress:
    """What the pipeline has stored so far; equal twice in a row when nothing new arrived."""

    cost_windows: int
    cost_usd: Decimal
    decisions: int
    cost_lines: int
    dead_letters: int


def pipeline_progress(conn: psycopg.Connection) -> PipelineProgress:
    with conn.cursor(row_factory=class_row(PipelineProgress)) as cur:
        return cur.execute(
            "SELECT (SELECT count(*) FROM cost_windows) AS cost_windows,"
            " (SELECT coalesce(sum(cost_usd), 0) FROM cost_windows) AS cost_usd,"
            " (SELECT count(*) FROM decisions) AS decisions, (SELECT count(*) FROM cost_lines) AS cost_lines,"
            " (SELECT count(*) FROM dead_letters) AS dead_letters").fetchone()


def all_anomalies(conn: psycopg.Connection) -> list[dict]:
    """Every stored anomaly episode in the order it started, one dict per episode named by column."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT kind, state, subject, workload, team, gpu_class, environment, resource, started_at, detected_at,"
            " ended_at, score, baseline, observed, unit, usd_so_far, usd_per_day_at_stake, reason"
            " FROM anomalies ORDER BY started_at, kind, subject").fetchall()


def anomaly_alerts(conn: psycopg.Connection) -> tuple[int, int]:
    """(alerts queued about anomaly episodes, episodes they are about): equal when each was alerted once per route."""
    queued, episodes = conn.execute(
        "SELECT count(*), count(DISTINCT subject) FROM alert_outbox"
        " WHERE subject IN (SELECT episode_id FROM anomalies)").fetchone()
    return queued, episodes


def all_decisions(conn: psycopg.Connection) -> list[dict]:
    """Every stored decision in the order it was made, one dict per decision named by column."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT workload, team, from_env, to_env, kind, gpu_class, decided_at, current_usd_per_busy_gpu_hour,"
            " alternative_usd_per_busy_gpu_hour, utilization, monthly_savings_usd, confidence, alternative_label,"
            " gpus_needed, payback_months, reason, monthly_savings_low_usd, monthly_savings_high_usd, evidence_hours,"
            " nodes_needed, instances_needed, options, horizon_months, discount_rate_pct"
            " FROM decisions ORDER BY decided_at, workload").fetchall()


def workload_totals(conn: psycopg.Connection) -> list[dict]:
    """Estimated GPU-hours and cost per workload, environment and GPU class over every stored window."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT workload, environment, gpu_class, sum(allocated_gpu_ms) / 3600000.0 AS allocated_gpu_hours,"
            " sum(busy_gpu_ms) / 3600000.0 AS busy_gpu_hours, sum(cost_usd) AS cost_usd"
            " FROM cost_windows WHERE basis = 'estimated' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").fetchall()


def reconciliation_by_provider(conn: psycopg.Connection) -> list[dict]:
    """Per provider: estimated and billed cost over the hours present on both sides, and the hours on one only."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT provider, sum(estimated_usd) FILTER (WHERE billed_usd IS NOT NULL) AS estimated_usd,"
            " sum(billed_usd) FILTER (WHERE estimated_usd IS NOT NULL) AS billed_usd,"
            " count(*) FILTER (WHERE billed_usd IS NULL) AS hours_estimated_not_billed,"
            " count(*) FILTER (WHERE estimated_usd IS NULL) AS hours_billed_not_estimated"
            " FROM estimate_vs_billed_hourly GROUP BY 1 ORDER BY 1").fetchall()


def workload_rolling(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT span, workload, environment, until, allocated_gpu_hours, busy_gpu_hours, cost_usd"
            " FROM workload_rolling ORDER BY workload, environment, span").fetchall()


def cost_windows_in_order(conn: psycopg.Connection) -> list[tuple]:
    """Every cost window's key and figures, in a fixed order (what a digest of the results is taken over)."""
    return conn.execute(
        "SELECT window_start, resource, workload, environment, gpu_class, allocated_gpu_ms, busy_gpu_ms,"
        " energy_mj, cost_usd FROM cost_windows ORDER BY 1, 2, 3, 4, 5").fetchall()


def idle_cost_usd(conn: psycopg.Connection) -> Decimal:
    """What idle owned GPUs cost over every stored window."""
    return conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM cost_windows WHERE workload = 'idle'").fetchone()[0]


def counts(conn: psycopg.Connection) -> dict[str, int]:
    out = {}
    for table in ("cost_windows", "decisions", "alert_outbox", "dead_letters", "gpu_samples"):
        out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    out["alerts_pending"] = conn.execute(
        "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0]
    return out


# -- what the alert checks judge (alerts.checks), in event time: "now" is the latest window's end ----

_TEAM = "coalesce(nullif(team, ''), '(none)')"


@dataclass(frozen=True)
class TeamMonthSpend:
    team: str
    spent_usd: Decimal  # month to date
    budget_usd: Decimal  # monthly


def latest_window_end(conn: psycopg.Connection) -> datetime | None:
    """The end of the latest estimated cost window: the event-time "now" of the checks."""
    return conn.execute("SELECT max(window_end) FROM cost_windows WHERE basis = 'estimated'").fetchone()[0]


def team_month_spend(conn: psycopg.Connection, now: datetime) -> list[TeamMonthSpend]:
    """Every budgeted team's estimated spend from the start of ``now``'s UTC month to ``now``."""
    rows = conn.execute(
        f"SELECT b.team, coalesce(s.spent, 0), b.monthly_budget_usd FROM team_budgets b LEFT JOIN"
        f" (SELECT {_TEAM} AS team, sum(cost_usd) AS spent FROM cost_hourly WHERE basis = 'estimated'"
        f"   AND bucket >= date_trunc('month', %(now)s AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        f"   AND bucket < %(now)s GROUP BY 1) s ON s.team = b.team ORDER BY b.team",
        {"now": now}).fetchall()
    return [TeamMonthSpend(team, Decimal(spent), Decimal(budget)) for team, spent, budget in rows]


def idle_cost_last_day(conn: psycopg.Connection, now: datetime) -> list[tuple[str, Decimal]]:
    """(GPU class, cost of idle owned GPUs over the 24 hours before ``now``)."""
    rows = conn.execute(
        "SELECT gpu_class, sum(cost_usd) FROM cost_hourly WHERE basis = 'estimated' AND workload = 'idle'"
        " AND environment = 'onprem' AND bucket >= %(now)s - INTERVAL '24 hours' AND bucket < %(now)s"
        " GROUP BY 1 ORDER BY 1", {"now": now}).fetchall()
    return [(gpu_class, Decimal(usd)) for gpu_class, usd in rows]


def workload_hours(conn: psycopg.Connection, workload: str, start: datetime,
                   end: datetime) -> dict[tuple[str, str], list[HourOfDemand]]:
    """A workload's hours in [start, end), per (environment, GPU class), from its first to its last hour
    with data: the GPU-equivalents allocated and busy (GPU-ms over an hour's ms) and the estimated cost
    of each hour, in time order; an hour between them without a window is an hour of no demand (a
    job that ran 60 of 720 hours is not priced as if it ran all month)."""
    rows = conn.execute(
        """
        SELECT environment, gpu_class, date_trunc('hour', window_start) AS hour,
               sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(cost_usd)
          FROM cost_windows
         WHERE workload = %s AND basis = 'estimated' AND window_start >= %s AND window_start < %s
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        """,
        (workload, start, end),
    ).fetchall()
    measured: dict[tuple[str, str], dict[datetime, HourOfDemand]] = {}
    for environment, gpu_class, hour, allocated_ms, busy_ms, cost in rows:
        measured.setdefault((environment, gpu_class), {})[hour] = HourOfDemand(
            Decimal(allocated_ms) / MS_PER_HOUR, Decimal(busy_ms) / MS_PER_HOUR, Decimal(cost))
    idle = HourOfDemand(Decimal(0), Decimal(0), Decimal(0))
    out: dict[tuple[str, str], list[HourOfDemand]] = {}
    for key, by_hour in measured.items():
        first, last = min(by_hour), max(by_hour)
        span = int((last - first).total_seconds() // 3600) + 1
        out[key] = [by_hour.get(first + timedelta(hours=h), idle) for h in range(span)]
    return out


def workload_providers(conn: psycopg.Connection, workload: str, start: datetime,
                       end: datetime) -> dict[tuple[str, str], str]:
    """The cloud provider a workload's windows ran on in [start, end), per (environment, GPU class)
    ("" on-prem; the costliest where it ran on several)."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (environment, gpu_class) environment, gpu_class, provider
          FROM cost_windows
         WHERE workload = %s AND basis = 'estimated' AND window_start >= %s AND window_start < %s
         GROUP BY environment, gpu_class, provider
         ORDER BY environment, gpu_class, sum(cost_usd) DESC, provider
        """,
        (workload, start, end),
    ).fetchall()
    return {(environment, gpu_class): provider for environment, gpu_class, provider in rows}


@dataclass(frozen=True)
class ForecastPoint:
    """A point of a team's month as forecast: the running total at ``at`` and its intervals."""

    at: datetime
    spend_usd: Decimal
    low_80_usd: Decimal
    high_80_usd: Decimal
    low_95_usd: Decimal
    high_95_usd: Decimal


def store_month_forecast(conn: psycopg.Connection, team: str, month: datetime, made_at: datetime,
                         points: list[ForecastPoint], overrun_probability: Decimal, model: str) -> None:
    """Replace the stored forecast of ``team``'s ``month`` with ``points``."""
    with conn.transaction():
        conn.execute("DELETE FROM spend_forecasts WHERE team = %s AND month = %s", (team, month.date()))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO spend_forecasts (team, month, at, made_at, spend_usd, low_80_usd, high_80_usd, low_95_usd,"
                " high_95_usd, overrun_probability, model) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(team, month.date(), p.at, made_at, p.spend_usd, p.low_80_usd, p.high_80_usd, p.low_95_usd,
                  p.high_95_usd, overrun_probability, model[:200]) for p in points])


def hourly_spend(conn: psycopg.Connection, start: datetime, end: datetime,
                 team: str | None = None) -> tuple[datetime | None, list[Decimal]]:
    """(first hour, estimated spend of every hour from it to ``end``): of one team, or of everything (idle
    owned capacity included); an hour without a window costs 0.  (None, []) when nothing was spent.  Read
    from the hourly rollup (the same sums, kept in the sink's transaction): a month of 10,000 GPUs is
    2.3 million cost windows, a tenth of a second here against half a second per team from the windows."""
    rows = conn.execute(
        """
        SELECT bucket AS hour, sum(cost_usd)
          FROM cost_hourly
         WHERE basis = 'estimated' AND bucket >= date_trunc('hour', %s::timestamptz, 'UTC') AND bucket < %s
           AND (%s::text IS NULL OR team = %s::text)
         GROUP BY 1 ORDER BY 1
        """,
        (start, end, team, team),
    ).fetchall()
    if not rows:
        return None, []
    by_hour = {hour: Decimal(cost) for hour, cost in rows}
    first = rows[0][0]
    last = end.replace(minute=0, second=0, microsecond=0)
    span = int((last - first).total_seconds() // 3600)
    return first, [by_hour.get(first + timedelta(hours=h), Decimal(0)) for h in range(span)]
