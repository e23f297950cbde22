"""The Grafana dashboards, as code.

``python -m dashboards.build`` writes ``dashboards/json/*.json`` (committed, and mounted by the
docker-compose Grafana provisioning); a test fails when the committed files differ from what this
module builds.  Every panel queries the query layer of the database (views and rollups of
``storage/migrations``) through one PostgreSQL/TimescaleDB datasource.
"""

from __future__ import annotations

import json
from pathlib import Path

from hybridspend.contracts.files import write_replacing

DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "hybridspend-pg"}
OUT = Path(__file__).parent / "json"
SCHEMA_VERSION = 39
BREAKEVEN_UID = "hybridspend-breakeven"  # the dashboard a Slack alert links to (var-workload=...)

TEAM = "coalesce(nullif(team, ''), '(none)')"
FILTERS = (f"environment IN ($environment) AND workload IN ($workload) AND gpu_class IN ($gpu_class)"
           f" AND {TEAM} IN ($team)")

# Panels that draw one series per workload (several hundred on a big fleet) draw each point over at least an
# hour (the rollup's width: a narrower $__interval gave the same hourly points) and, over ranges longer than a
# week, over whole days, read from the daily rollup (a point an hour for 90 days of 500 series is 1 million
# rows); with maxDataPoints 100 a week is drawn in 2-hour points.  storage/migrations/016_panel_queries.sql.
SERIES_STEP_S = ("CASE WHEN $__timeTo()::timestamptz - $__timeFrom()::timestamptz > INTERVAL '7 days'"
                 " THEN ceil($__interval_ms / 86400000.0) * 86400 ELSE ceil($__interval_ms / 3600000.0) * 3600 END")
SERIES_MAX_DATA_POINTS = 100
# the start of a point, as $__timeGroup(bucket, step) has it (grouped by a timestamp, the epoch taken per point)
SERIES_POINT = "date_bin(make_interval(secs => p.step), r.bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
UTC_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
# The panels on the raw samples read their rollups up to the watermark and the raw samples after it (migration 016)
SAMPLES_WATERMARK = "(SELECT until FROM rollup_watermarks WHERE rollup = 'gpu_samples')"
# over a day or more, a GPU reported in the range if its first or last sample of a day in it did
A_DAY_OR_MORE = "$__timeTo()::timestamptz - $__timeFrom()::timestamptz >= INTERVAL '1 day'"
# the whole minutes of the range (none when $__interval is not a whole number of minutes), up to the watermark
MINUTES_FROM = (f"CASE WHEN $__interval_ms % 60000 = 0 THEN date_bin(INTERVAL '1 minute', $__timeFrom()::timestamptz"
                f" - INTERVAL '1 microsecond', {UTC_ORIGIN}) + INTERVAL '1 minute' ELSE 'infinity' END")
MINUTES_UNTIL = (f"least(date_bin(INTERVAL '1 minute', $__timeTo()::timestamptz + INTERVAL '1 microsecond', {UTC_ORIGIN}),"
                 f" {SAMPLES_WATERMARK})")


def _variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": query,
        "definition": query, "refresh": 2, "multi": True, "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }


VARIABLES = [
    _variable("environment", "Environment", "SELECT DISTINCT environment FROM cost_daily ORDER BY 1"),
    _variable("team", "Team", f"SELECT DISTINCT {TEAM} FROM cost_daily ORDER BY 1"),
    _variable("workload", "Workload",
              "SELECT DISTINCT workload FROM cost_daily WHERE environment IN ($environment) ORDER BY 1"),
    _variable("gpu_class", "GPU model", "SELECT DISTINCT gpu_class FROM cost_daily ORDER BY 1"),
]


def _panel(pid: int, title: str, kind: str, sql: str, *, unit: str | None = None, fmt: str = "time_series",
           w: int = 12, h: int = 8, x: int = 0, y: int = 0, description: str = "",
           max_data_points: int | None = None) -> dict:
    panel = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
        "options": {},
        "targets": [{"refId": "A", "datasource": DATASOURCE, "editorMode": "code", "format": fmt,
                     "rawQuery": True, "rawSql": " ".join(sql.split())}],
    }
    if max_data_points:  # Grafana's $__interval is the range / this, rounded (else / the panel's width in pixels)
        panel["maxDataPoints"] = max_data_points
    return panel


def _anomalies(kinds: tuple[str, ...], panel_ids: list[int], where: str, color: str = "red") -> dict:
    """Anomaly episodes of ``kinds`` (the worker's, docs/anomalies.md) as annotations on the panels named: a
    region from its start to its end (or its detection while it lasts), its reason as the text."""
    kinds_sql = ", ".join(f"'{k}'" for k in kinds)
    return {
        "name": "Anomalies: " + ", ".join(k.replace("_", " ") for k in kinds), "datasource": DATASOURCE,
        "enable": True, "iconColor": color, "filter": {"exclude": False, "ids": panel_ids},
        "target": {"refId": "Anomalies", "datasource": DATASOURCE, "editorMode": "code", "format": "table",
                   "rawQuery": True, "rawSql": " ".join(f"""
            SELECT started_at AS time, coalesce(ended_at, detected_at) AS timeend,
                   kind || ': ' || reason AS text, kind || ',' || state AS tags
              FROM anomalies
             WHERE started_at < $__timeTo() AND coalesce(ended_at, detected_at) > $__timeFrom()
               AND kind IN ({kinds_sql}) AND {where}
             ORDER BY started_at""".split())},
    }


def _dashboard(uid: str, title: str, panels: list[dict], description: str, time_from: str = "now-7d",
               annotations: list[dict] = ()) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["hybridspend"],
        "timezone": "utc", "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
        "time": {"from": time_from, "to": "now"}, "refresh": "1m",
        "templating": {"list": VARIABLES}, "annotations": {"list": list(annotations)}, "panels": panels,
        "links": [{"title": "hybridspend", "type": "dashboards", "tags": ["hybridspend"], "asDropdown": True}],
    }


def _forecast_band(pid: int, y: int) -> dict:
    """A budgeted team's month: what it has spent so far and the forecast the budget notices quote, with its
    80 % interval as a band (one panel per team)."""
    panel = _panel(pid, "Month spend and forecast: $team", "timeseries", f"""
        SELECT time, metric, value FROM (
            SELECT bucket + INTERVAL '1 hour' AS time, 'spent' AS metric, sum(sum(cost_usd)) OVER (ORDER BY bucket) AS value
              FROM cost_hourly
             WHERE basis = 'estimated' AND {TEAM} IN ($team)
               AND bucket >= date_trunc('month', $__timeTo()::timestamptz) AND bucket < $__timeTo()
             GROUP BY bucket
            UNION ALL
            SELECT f.at, v.metric, v.value FROM spend_forecasts f
             CROSS JOIN LATERAL (VALUES ('forecast', f.spend_usd), ('80 % low', f.low_80_usd),
                                        ('80 % high', f.high_80_usd)) AS v(metric, value)
             WHERE f.team IN ($team) AND f.month = date_trunc('month', $__timeTo()::timestamptz)::date
        ) s ORDER BY 1""", unit="currencyUSD", w=12, y=y,
        description="Month to date and the seasonal forecast of the rest of the month (the alerter's, hourly, the "
                    "figure its budget notices quote), with its 80 % interval shaded.")
    panel.update(repeat="team", repeatDirection="h", maxPerRow=2)
    panel["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": "80 % high"},
         "properties": [{"id": "custom.fillBelowTo", "value": "80 % low"}, {"id": "custom.lineWidth", "value": 0},
                        {"id": "custom.fillOpacity", "value": 25}]},
        {"matcher": {"id": "byName", "options": "80 % low"},
         "properties": [{"id": "custom.lineWidth", "value": 0}]},
        {"matcher": {"id": "byName", "options": "forecast"},
         "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]},
    ]
    return panel


def fleet() -> dict:
    return _dashboard("hybridspend-fleet", "Fleet overview", [
        _panel(1, "GPUs by environment", "stat", f"""
            SELECT environment AS metric, count(*) AS value FROM (
                SELECT DISTINCT environment, gpu_uuid FROM (
                    SELECT environment, gpu_uuid FROM gpu_seen_daily
                     WHERE {A_DAY_OR_MORE} AND day >= date_bin(INTERVAL '1 day', $__timeFrom()::timestamptz, {UTC_ORIGIN})
                       AND day <= $__timeTo()
                       AND (first_ts BETWEEN $__timeFrom() AND $__timeTo() OR last_ts BETWEEN $__timeFrom() AND $__timeTo())
                       AND environment IN ($environment) AND gpu_class IN ($gpu_class)
                    UNION ALL
                    SELECT environment, gpu_uuid FROM gpu_samples
                     WHERE $__timeFilter(ts) AND ts >= {SAMPLES_WATERMARK}
                       AND environment IN ($environment) AND gpu_class IN ($gpu_class)
                    UNION ALL
                    SELECT environment, gpu_uuid FROM gpu_samples
                     WHERE NOT {A_DAY_OR_MORE} AND $__timeFilter(ts) AND ts < {SAMPLES_WATERMARK}
                       AND environment IN ($environment) AND gpu_class IN ($gpu_class)
                ) seen
            ) gpus GROUP BY 1 ORDER BY 1""", fmt="table", w=8,
               description="GPUs that reported in the range: from each GPU's first and last sample of every day (a "
                           "rollup of the samples) and the raw samples since its last refresh; a range shorter than "
                           "a day may lie between a GPU's first and last sample and reads the raw samples."),
        _panel(2, "Idle on-prem cost in range", "stat", """
            SELECT sum(cost_usd) AS "idle cost" FROM cost_hourly
             WHERE workload = 'idle' AND basis = 'estimated' AND $__timeFilter(bucket) AND gpu_class IN ($gpu_class)""",
               unit="currencyUSD", fmt="table", w=8, x=8),
        _panel(3, "Idle GPU-hours in range", "stat", """
            SELECT sum(allocated_gpu_ms) / 3600000.0 AS "idle GPU-hours" FROM cost_hourly
             WHERE workload = 'idle' AND basis = 'estimated' AND $__timeFilter(bucket) AND gpu_class IN ($gpu_class)""",
               unit="short", fmt="table", w=8, x=16),
        _panel(4, "GPU utilization by environment", "timeseries", f"""
            SELECT $__timeGroupAlias(t, $__interval), environment AS metric, sum(s) / sum(n)::double precision AS value
              FROM (SELECT m.bucket AS t, m.environment, m.utilization_pct_sum AS s, m.samples AS n
                      FROM gpu_utilization_minutely m
                     WHERE m.bucket >= {MINUTES_FROM} AND m.bucket < {MINUTES_UNTIL}
                       AND m.environment IN ($environment) AND m.gpu_class IN ($gpu_class)
                    UNION ALL
                    SELECT g.ts, g.environment, g.utilization_pct, 1 FROM gpu_samples g
                     WHERE $__timeFilter(g.ts)
                       AND (g.ts < {MINUTES_FROM} OR g.ts >= greatest({MINUTES_UNTIL}, {MINUTES_FROM}))
                       AND g.environment IN ($environment) AND g.gpu_class IN ($gpu_class)) u
             GROUP BY 1, 2 ORDER BY 1""", unit="percent", y=8,
               description="Mean utilization of the samples: the whole minutes from the rollup of the samples, the "
                           "rest (and everything since its last refresh) from the raw samples."),
        _panel(5, "Idle capacity cost per hour", "timeseries", """
            SELECT $__timeGroupAlias(bucket, $__interval), gpu_class AS metric, sum(cost_usd) AS value
              FROM cost_hourly
             WHERE workload = 'idle' AND basis = 'estimated' AND $__timeFilter(bucket) AND gpu_class IN ($gpu_class)
             GROUP BY 1, 2 ORDER BY 1""", unit="currencyUSD", x=12, y=8),
    ], "GPUs, utilization and idle capacity across on-prem and cloud.", annotations=[
        _anomalies(("silent",), [4, 5], "environment IN ($environment)", "orange"),
        _anomalies(("held_idle",), [4], "environment IN ($environment) AND workload IN ($workload)"
                                        " AND gpu_class IN ($gpu_class)")])


def _workload_series(value: str) -> str:
    """A per-workload-and-environment series of the hourly cost rollup over the panel's range, ``value`` an
    aggregate over its rows ``r``, a point per ``SERIES_STEP_S``."""
    return f"""
            WITH p AS (SELECT {SERIES_STEP_S} AS step)
            SELECT extract(epoch FROM s.t) AS "time", s.workload || ' (' || s.environment || ')' AS metric, s.value
              FROM (SELECT {SERIES_POINT} AS t, r.workload, r.environment,
                           {value} AS value
                      FROM p, cost_rollup_between($__timeFrom(), $__timeTo(), p.step) r
                     WHERE r.basis = 'estimated' AND r.workload <> 'idle' AND {FILTERS}
                     GROUP BY 1, 2, 3) s
             ORDER BY 1"""


def cost() -> dict:
    return _dashboard("hybridspend-cost", "Cost per busy GPU-hour", [
        _panel(1, "Effective $ per busy GPU-hour by workload and environment", "timeseries", _workload_series("sum(r.cost_usd) * 3600000 / NULLIF(sum(r.busy_gpu_ms), 0)"), unit="currencyUSD", w=24, h=9, max_data_points=SERIES_MAX_DATA_POINTS,
               description="Cost where the workload runs divided by its busy GPU-hours ($/h); a point is an hour "
                           "or more, a day or more over ranges longer than a week."),
        _panel(2, "Workloads in range", "table", f"""
            SELECT workload, {TEAM} AS team, environment, gpu_class,
                   sum(allocated_gpu_ms) / 3600000.0 AS "GPU-hours",
                   sum(busy_gpu_ms) / 3600000.0 AS "busy GPU-hours",
                   sum(busy_gpu_ms)::numeric / NULLIF(sum(allocated_gpu_ms), 0) AS utilization,
                   sum(cost_usd) AS "cost",
                   sum(cost_usd) * 3600000 / NULLIF(sum(busy_gpu_ms), 0) AS "$ per busy GPU-hour"
              FROM cost_rollup_between($__timeFrom(), $__timeTo())
             WHERE basis = 'estimated' AND {FILTERS}
             GROUP BY 1, 2, 3, 4 ORDER BY "cost" DESC""", fmt="table", w=24, h=10, y=9),
    ], "What a useful GPU-hour costs each workload, on-prem and in the cloud.", annotations=[
        _anomalies(("usd_per_busy_gpu_hour", "held_idle"), [1], FILTERS)])


def breakeven() -> dict:
    return _dashboard(BREAKEVEN_UID, "Breakeven status", [
        _panel(1, "Last decision per workload", "table", """
            SELECT DISTINCT ON (workload) decided_at AS "time", workload, kind, from_env, to_env,
                   current_usd_per_busy_gpu_hour, alternative_usd_per_busy_gpu_hour, utilization,
                   monthly_savings_usd, monthly_savings_low_usd, monthly_savings_high_usd, evidence_hours,
                   gpus_needed, nodes_needed, instances_needed, confidence, alerts_delivered, reason
              FROM decision_log WHERE workload IN ($workload)
             ORDER BY workload, decided_at DESC""", fmt="table", w=24, h=9,
               description="The panel Slack alerts link to, filtered to the alert's workload."),
        _panel(2, "Utilization per workload", "timeseries", _workload_series("100.0 * sum(r.busy_gpu_ms) / NULLIF(sum(r.allocated_gpu_ms), 0)"), unit="percent", w=12, y=9, max_data_points=SERIES_MAX_DATA_POINTS,
               description="Busy over allocated GPU-hours; a point is an hour or more, a day or more over ranges "
                           "longer than a week."),
        _panel(3, "Decisions in range", "table", """
            SELECT decided_at AS "time", workload, kind, from_env, to_env, monthly_savings_low_usd,
                   monthly_savings_usd, monthly_savings_high_usd, evidence_hours, confidence
              FROM decision_log WHERE $__timeFilter(decided_at) AND workload IN ($workload)
             ORDER BY decided_at DESC""", fmt="table", w=12, x=12, y=9),
        _panel(4, "Options of the last recommendation per workload", "table", """
            WITH last AS (
                SELECT DISTINCT ON (workload) workload, kind, decided_at, options, horizon_months, discount_rate_pct
                  FROM decision_log WHERE workload IN ($workload) AND options IS NOT NULL
                 ORDER BY workload, decided_at DESC
            )
            SELECT l.workload, l.kind AS recommended, o.label AS "option", o.quantity, o.term_months,
                   o.upfront_usd::numeric AS "up front", o.monthly_usd::numeric AS "a month",
                   o.total_usd::numeric AS "total", o.npv_usd::numeric AS "present value",
                   o.breakeven_month AS "overtakes staying in month", l.horizon_months, l.discount_rate_pct
              FROM last l CROSS JOIN LATERAL jsonb_to_recordset(l.options) AS o(
                   label text, quantity int, term_months int, upfront_usd text, monthly_usd text, total_usd text,
                   npv_usd text, breakeven_month int)
             ORDER BY l.workload, o.npv_usd::numeric""", fmt="table", w=24, h=9, y=17,
               description="Every option the last recommendation weighed over its horizon (the table Slack, "
                           "simulate and the monthly report show), cheapest present value first."),
    ], "Where each workload should run, and why.", annotations=[
        _anomalies(("held_idle", "usd_per_busy_gpu_hour"), [2], FILTERS)])


def spend() -> dict:
    return _dashboard("hybridspend-spend", "Month-to-date spend and forecast", [
        _panel(1, "Month to date vs budget per team", "table", """
            WITH mtd AS (
                SELECT team, spend_usd FROM team_spend_month
                 WHERE month = date_trunc('month', $__timeTo()::timestamptz)
            ), elapsed AS (
                SELECT extract(epoch FROM ($__timeTo()::timestamptz - date_trunc('month', $__timeTo()::timestamptz)))
                       / extract(epoch FROM (date_trunc('month', $__timeTo()::timestamptz) + INTERVAL '1 month'
                                             - date_trunc('month', $__timeTo()::timestamptz))) AS fraction
            ), fc AS (
                SELECT DISTINCT ON (team) team, spend_usd, low_80_usd, high_80_usd, overrun_probability
                  FROM spend_forecasts WHERE month = date_trunc('month', $__timeTo()::timestamptz)::date
                   AND made_at >= $__timeTo()::timestamptz - INTERVAL '3 hours'
                 ORDER BY team, at DESC
            ), t AS (
                SELECT coalesce(m.team, b.team) AS team, coalesce(m.spend_usd, 0) AS mtd,
                       coalesce(f.spend_usd, coalesce(m.spend_usd, 0) / NULLIF((SELECT fraction FROM elapsed), 0))
                         AS forecast, f.low_80_usd, f.high_80_usd, f.overrun_probability, b.monthly_budget_usd
                  FROM mtd m FULL JOIN team_budgets b ON b.team = m.team LEFT JOIN fc f ON f.team = coalesce(m.team, b.team)
            )
            SELECT team, mtd AS "month to date", forecast, low_80_usd AS "forecast, 80 % low",
                   high_80_usd AS "forecast, 80 % high", overrun_probability AS "chance over budget",
                   monthly_budget_usd AS budget, forecast / NULLIF(monthly_budget_usd, 0) AS "forecast / budget"
              FROM t WHERE team IN ($team)
             ORDER BY 2 DESC""", fmt="table", w=24, h=9,
               description="Forecast: the seasonal forecast of the month the budget notices quote (made hourly by "
                           "the alerter for every budgeted team, with its 80 % interval and the chance of exceeding "
                           "the budget); the straight line of the month-to-date spend where there is none of the last 3 hours."),
        _panel(2, "Daily spend per team", "timeseries", f"""
            SELECT $__timeGroupAlias(bucket, 1d), {TEAM} AS metric, sum(cost_usd) AS value
              FROM cost_daily
             WHERE $__timeFilter(bucket) AND basis = 'estimated' AND {FILTERS}
             GROUP BY 1, 2 ORDER BY 1""", unit="currencyUSD", w=24, y=9),
        _panel(3, "Cloud spend right now", "table", f"""
            SELECT workload, {TEAM} AS team, provider, instances_running AS instances, gpus_running AS gpus,
                   usd_per_hour AS "USD per hour", usd_since_start AS "USD since start", running_since AS since
              FROM live_cloud_spend
             WHERE workload IN ($workload) AND {TEAM} IN ($team)
             ORDER BY usd_per_hour DESC""", fmt="table", w=24, y=17,
               description="Running cloud GPU instances per workload, from their state changes seconds after "
                           "they happen, at the live price; their cost windows are still open."),
        _forecast_band(4, y=25),
    ], "Spend this month per team, its forecast with its interval and the team budgets, and the cloud spend right now.",
        time_from="now/M", annotations=[_anomalies(("spend_rate",), [2], f"{TEAM} IN ($team)")])


def reconciliation() -> dict:
    return _dashboard("hybridspend-reconciliation", "Estimate vs billed", [
        _panel(1, "Estimated and billed cost per day", "timeseries", """
            SELECT d.day AS "time", d.environment || v.side AS metric, sum(v.usd) AS value
              FROM estimate_vs_billed_daily_between($__timeFrom(), $__timeTo()) d
             CROSS JOIN LATERAL (VALUES (' estimated', d.estimated_usd), (' billed', d.billed_usd)) AS v(side, usd)
             WHERE d.environment IN ($environment) AND d.workload IN ($workload)
             GROUP BY 1, 2 ORDER BY 1""", unit="currencyUSD", w=24),
        _panel(2, "Estimate error per workload and day", "table", """
            SELECT day AS "time", workload, environment, estimated_usd, billed_usd, estimate_error_ratio
              FROM estimate_vs_billed_daily_between($__timeFrom(), $__timeTo())
             WHERE environment IN ($environment) AND workload IN ($workload)
             ORDER BY day DESC, workload""", fmt="table", w=24, h=10, y=8),
        _panel(3, "Estimate error per provider (hours on both sides)", "table", """
            SELECT provider, estimated_usd, billed_usd,
                   (estimated_usd - billed_usd) / NULLIF(billed_usd, 0) AS estimate_error_ratio,
                   resource_hours_not_billed AS resource_hours_not_billed_yet
              FROM estimate_vs_billed_per_provider_between($__timeFrom(), $__timeTo())
             ORDER BY provider""", fmt="table", w=24, h=6, y=18),
    ], "Live estimates (instance state x live price) against the bill when it arrives, matched by resource "
       "and hour.", time_from="now-30d")


def pipeline() -> dict:
    return _dashboard("hybridspend-pipeline", "Pipeline health", [
        _panel(1, "Consumer lag", "table", """
            SELECT group_id, topic, sum(lag) AS lag, max(measured_at) AS measured_at
              FROM consumer_lag GROUP BY 1, 2 ORDER BY 3 DESC""", fmt="table", w=12),
        _panel(2, "Collector freshness", "table", f"""
            SELECT resource, environment, max(ts) AS last_sample, extract(epoch FROM now() - max(ts)) AS age_s
              FROM (SELECT resource, environment, last_ts AS ts FROM gpu_seen_daily
                     WHERE day >= date_bin(INTERVAL '1 day', now() - INTERVAL '2 days', {UTC_ORIGIN})
                       AND last_ts > now() - INTERVAL '2 days'
                    UNION ALL
                    SELECT resource, environment, ts FROM gpu_samples
                     WHERE ts > now() - INTERVAL '2 days' AND ts >= {SAMPLES_WATERMARK}) s
             GROUP BY 1, 2 ORDER BY 4 DESC""", fmt="table", w=12, x=12,
               description="The last sample of each resource in the last two days: from each GPU's last sample of "
                           "every day (a rollup of the samples) and the raw samples since its last refresh."),
        _panel(3, "Dead letters", "timeseries", """
            SELECT $__timeGroupAlias(received_at, $__interval), source_topic AS metric, count(*) AS value
              FROM dead_letters WHERE $__timeFilter(received_at)
             GROUP BY 1, 2 ORDER BY 1""", unit="short", w=12, y=8),
        _panel(4, "Latest dead letters", "table", """
            SELECT received_at AS "time", source_topic, reason FROM dead_letters
             WHERE $__timeFilter(received_at) ORDER BY received_at DESC LIMIT 100""", fmt="table", w=12, x=12, y=8),
    ], "Is the pipeline keeping up, and what did it reject?", time_from="now-24h")


def all_dashboards() -> dict[str, dict]:
    return {d["uid"]: d for d in (fleet(), cost(), breakeven(), spend(), reconciliation(), pipeline())}


def render(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, dashboard in all_dashboards().items():
        path = out / f"{uid}.json"
        write_replacing(path, render(dashboard))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
