"""The monthly repatriation / migration report for finance.

Reads the month through ``storage.report_queries``, prices each workload's month in the other
environment with the pure cost model, and writes Markdown, CSV, HTML and PDF (one Jinja2 template
renders the HTML; WeasyPrint turns that same HTML into the PDF, with fonts shipped by the project's
dependencies so no character is lost) and a FOCUS-shaped CSV of the on-prem costs (custom columns
prefixed ``x_``) that finance tools can load beside the cloud bill.  Every label from users' clusters
is escaped in HTML.
"""

from __future__ import annotations

import csv
import importlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

import psycopg

from hybridspend.contracts.config import Config
from hybridspend.contracts.files import write_replacing
from hybridspend.costmodel import (
    COMMIT_IN_CLOUD,
    MIGRATE_TO_CLOUD,
    ONPREM,
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    STAY,
    Market,
    WorkloadWindow,
)
from hybridspend.costmodel.money import HOURS_PER_MONTH, HOURS_PER_YEAR, calendar_month_hours, cents, range_text
from hybridspend.costmodel.options import OptionResult, PlannedOption, cheapest
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.costmodel.tco import (
    breakeven_band,
    breakeven_utilization,
    effective_usd_per_busy_gpu_hour,
    share_of_month_usd,
    usd_per_year,
)
from hybridspend.reports import charts, focus_export, pdf
from hybridspend.contracts.plans import plan_for
from hybridspend.storage import report_queries as q
from hybridspend.storage.onprem_allocation import onprem_node_day_shares
from hybridspend.storage.queries import WorkloadSummary, workload_hours, workload_providers

FORMATS = ("md", "csv", "html", "pdf", "focus")
TEMPLATE = "monthly.html.j2"
NAME_CHARS = 28  # longer workload names are truncated in the table (the HTML keeps them whole in `title`)
SUMMARY_MOVES = 6  # recommended moves listed on page 1, largest savings first
UTILIZATION_PANELS = 6  # recommended workloads drawn in Figure 3, largest savings first


@dataclass(frozen=True)
class WorkloadMonth(WorkloadSummary):  # cost_usd: estimated from live samples
    billed_usd: Decimal | None
    alternative_usd: Decimal | None
    alternative_label: str
    recommendation: str
    annualized_savings_usd: Decimal
    confidence: str
    days_with_data: int = 0
    kind: str = STAY  # the decision the month bears out (STAY when none does)
    decision_confidence: Decimal | None = None
    annualized_savings_low_usd: Decimal | None = None  # the decision's savings range, where it carries one
    annualized_savings_high_usd: Decimal | None = None
    payback_months: Decimal | None = None

    @property
    def recommended(self) -> bool:
        return self.kind != STAY and self.annualized_savings_usd > 0

    @property
    def basis(self) -> str:
        return "billed" if self.billed_usd is not None else "estimated"


@dataclass(frozen=True)
class MonthOverview:
    month: str
    spend_by_env: dict[str, Decimal]  # idle owned capacity included
    idle_usd: Decimal
    workloads: set[str]
    decisions: int

    @property
    def total_usd(self) -> Decimal:
        return sum(self.spend_by_env.values(), Decimal(0))


@dataclass(frozen=True)
class BreakevenFigures:
    owned_usd_per_gpu_hour: dict[str, Decimal]  # by GPU class, fully loaded
    cloud_usd_per_gpu_hour: list[tuple[str, str, Decimal]]  # (offer and option, GPU class, price per GPU-hour)
    breakeven: dict[str, Decimal]  # GPU class -> u* against the cheapest cloud option of that class
    margin: Decimal


@dataclass(frozen=True)
class NextMonth:
    """Next month's spend of a team (or of everything), forecast from the hours up to the report's end."""

    scope: str  # a team, or ALL_TEAMS
    total_usd: Decimal
    interval_usd: dict[int, tuple[Decimal, Decimal]]  # level (%) -> (low, high)
    how: str  # the model and how its intervals were calibrated
    daily_usd: list[tuple[datetime, Decimal]] = field(default_factory=list)  # the point forecast per day


ALL_TEAMS = "all teams"
FORECAST_TEAMS = 8  # the teams with the largest spend this month that get their own forecast


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    start: datetime
    end: datetime
    workloads: list[WorkloadMonth]
    idle_gpu_hours: Decimal
    idle_usd: Decimal
    assumptions: list[tuple[str, str]]
    daily: list[tuple[datetime, str, Decimal, Decimal]]  # day, environment, cost, busy GPU-hours
    days_with_data: int
    overview: MonthOverview | None = None
    previous: MonthOverview | None = None
    idle_daily: list[tuple[datetime, str, Decimal, Decimal]] = field(default_factory=list)  # day, class, h, $
    cloud_daily: list[tuple[datetime, Decimal | None, Decimal | None]] = field(default_factory=list)  # est., billed
    utilization_daily: dict[tuple[str, str], list[tuple[datetime, Decimal | None]]] = field(default_factory=dict)
    bands: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]] = field(default_factory=dict)  # low, u*, high
    breakeven: BreakevenFigures | None = None
    daily_budget_usd: Decimal | None = None
    # recommended workloads' options over the horizon: (workload, environment) -> (horizon months, options)
    options: dict[tuple[str, str], tuple[int, list[PlannedOption]]] = field(default_factory=dict)
    discount_rate_pct: Decimal = Decimal(8)  # of the options' present values
    next_month: list[NextMonth] = field(default_factory=list)  # all teams first, then the largest teams

    @property
    def recommended(self) -> list[WorkloadMonth]:
        return sorted((w for w in self.workloads if w.recommended), key=lambda w: -w.annualized_savings_usd)

    @property
    def savings_usd(self) -> Decimal:
        return sum((w.annualized_savings_usd for w in self.workloads), Decimal(0))

    @property
    def billed_cloud_usd(self) -> Decimal | None:
        billed = [b for _, _, b in self.cloud_daily if b is not None]
        return sum(billed, Decimal(0)) if billed else None


def month_bounds(month: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--month must be YYYY-MM, got {month!r}") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _recommend(row: dict, decision: dict | None, market: Market, observed_hours: Decimal) -> tuple:
    """(alternative $, label, recommendation, annualized savings $, kind, payback months) for one workload.

    The other environment is priced over the hours the month has data for (owned GPUs cost every
    one of them): a decision whose move the month does not bear out is shown as staying.  The savings
    of a move are the decision's own (its monthly figure x 12), so the report, Slack, the dashboard and
    the demo show one figure for one decision.
    """
    window = WorkloadWindow(
        workload=row["workload"], team=row["team"], environment=row["environment"], gpu_class=row["gpu_class"],
        window_start_ms=0, window_ms=int(observed_hours * MS_PER_HOUR), allocated_gpu_ms=row["allocated_gpu_ms"],
        busy_gpu_ms=row["busy_gpu_ms"], cost_usd=row["estimated_usd"], coverage=Decimal(1))
    kind = decision["kind"] if decision is not None else STAY
    if kind == COMMIT_IN_CLOUD:  # the month's rows carry no offer: the decision's committed rate, its own savings
        rate = decision["alternative_usd_per_busy_gpu_hour"]  # None: not busy at all through its evidence
        alt = (rate * Decimal(row["busy_gpu_ms"]) / MS_PER_HOUR if rate is not None
               else row["estimated_usd"] - decision["monthly_savings_usd"] * observed_hours / HOURS_PER_MONTH)
        if alt >= row["estimated_usd"]:
            return alt, decision["alternative_label"], "stay (the in-month commit decision does not hold over the " \
                "month)", Decimal(0), STAY, None
        n = decision["instances_needed"]
        count = f"; {n} instance{'' if n == 1 else 's'}" if n is not None else ""
        return (alt, decision["alternative_label"], f"commit in the cloud ({decision['alternative_label']}{count})",
                usd_per_year(decision["monthly_savings_usd"], HOURS_PER_MONTH), kind, None)
    # a fill-idle decision is priced at the idle GPUs it was promised (the month's rows do not say which were idle)
    promised = {c: Decimal(row["allocated_gpu_ms"]) for c in market.onprem} if kind == REPATRIATE_FILL_IDLE else None
    alternative = market.alternative(window, allow_spot=False, idle_gpus=promised)
    if kind == REPATRIATE_BUY and alternative is not None and alternative.kind != REPATRIATE_BUY:
        alternative = alternative.other or alternative  # buying was decided by present value, not by the hour
    if alternative is None:
        return None, "no matching offer or asset", "stay", Decimal(0), STAY, None
    savings = usd_per_year(row["estimated_usd"] - alternative.cost_usd, observed_hours)
    if kind != STAY and savings <= 0:
        return (alternative.cost_usd, alternative.label,
                f"stay (the in-month {kind.replace('_', ' ')} decision does not hold over the month)", Decimal(0),
                STAY, None)
    if kind != STAY:
        # one savings figure for the decision wherever it is shown (Slack, simulate, demo, the dashboard): its own,
        # with its range; the month's re-pricing above only says whether it still holds
        savings = usd_per_year(decision["monthly_savings_usd"], HOURS_PER_MONTH)
    payback = None
    if kind == MIGRATE_TO_CLOUD:
        text = f"migrate to cloud ({alternative.label})"
    elif kind == REPATRIATE_BUY and alternative.kind == REPATRIATE_BUY:
        # what the decision recommends buying (the quantity its options table chose), and its payback
        payback = decision["payback_months"]
        nodes = f" ({decision['nodes_needed']} nodes)" if decision["nodes_needed"] is not None else ""
        text = f"repatriate by buying {decision['gpus_needed']} {decision['alternative_label'].removeprefix('on-prem ')} " \
               f"GPUs{nodes}" + (f" (payback {payback:.1f} months)" if payback is not None else "")
    elif kind == REPATRIATE_FILL_IDLE:
        text = "repatriate by filling idle capacity"
    else:
        return alternative.cost_usd, alternative.label, "stay", Decimal(0), STAY, None
    return alternative.cost_usd, alternative.label, text, savings, kind, payback


def _breakeven(market: Market, margin: Decimal) -> BreakevenFigures:
    owned = {gpu_class: gpu.rate().usd_per_gpu_hour for gpu_class, gpu in sorted(market.onprem.items())}
    cloud = []
    for offer in market.offers:
        for option in market.purchase_options:
            price = offer.usd_per_gpu_hour(option)
            if price is not None:
                cloud.append((f"{offer.provider} {offer.instance_type} {option.replace('_', '-')}", offer.gpu_class,
                              price))
    crossings = {}
    for gpu_class, rate in owned.items():
        same_class = [price for _, c, price in cloud if c == gpu_class]
        if same_class:
            crossings[gpu_class] = breakeven_utilization(rate, min(same_class))
    return BreakevenFigures(owned, cloud, crossings, margin)


def _band(market: Market, w: WorkloadMonth, margin: Decimal) -> tuple[Decimal, Decimal, Decimal] | None:
    """(low, u*, high) for one workload: what its GPU-hour cost this month against the cheapest option in
    the other environment (normalized to its GPU class's throughput)."""
    if not w.allocated_gpu_hours:
        return None
    own_usd_per_gpu_hour = w.cost_usd / w.allocated_gpu_hours
    if w.environment == ONPREM:
        cloud = market.cheapest_cloud(w.gpu_class, allow_spot=False)
        if cloud is None:
            return None
        _, _, price, factor = cloud
        u_star = breakeven_utilization(own_usd_per_gpu_hour, price * factor)
    else:
        owned = market.cheapest_onprem(w.gpu_class)
        if owned is None:
            return None
        gpu, factor = owned
        u_star = breakeven_utilization(gpu.rate().usd_per_gpu_hour * factor, own_usd_per_gpu_hour)
    low, high = breakeven_band(u_star, margin)
    return low, u_star, high


def overview(conn: psycopg.Connection, month: str) -> MonthOverview:
    start, end = month_bounds(month)
    spend = q.spend_by_environment(conn, start, end)
    idle = sum((usd for _, _, _, usd in q.idle_daily(conn, start, end)), Decimal(0))
    return MonthOverview(month, spend, idle, q.workload_names(conn, start, end), q.decision_count(conn, start, end))


def build(conn: psycopg.Connection, config: Config, month: str) -> MonthlyReport:
    """The month's report.  Next month's forecasts are fitted in a second thread while the month's other
    queries run: loading the forecasting libraries and fitting nine series is seconds of Python, and the
    queries leave this thread waiting on the database most of their time."""
    start, end = month_bounds(month)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-forecasts") as forecasts:
        forecasts.submit(_load_forecasting)
        month_rows = q.workload_month(conn, start, end)
        next_month = forecasts.submit(_next_month, *_forecast_series(conn, end, month_rows))
        report = _build(conn, config, month, month_rows)
        return replace(report, next_month=next_month.result())


def _build(conn: psycopg.Connection, config: Config, month: str, month_rows: list[dict]) -> MonthlyReport:
    """The report but for its forecasts, from the month's rows of ``q.workload_month``."""
    start, end = month_bounds(month)
    market = config.market()
    margin = config.thresholds.domain().margin
    days = q.days_with_data(conn, start, end)
    observed_hours = Decimal(max(1, days) * 24)
    vs_billed = q.cloud_estimate_vs_billed(conn, start, end)
    billed_by_workload: dict[str, Decimal] = {}
    per_day: dict[datetime, list] = {}
    for r in vs_billed:
        if r["billed_usd"] is not None:
            billed_by_workload[r["workload"]] = billed_by_workload.get(r["workload"], Decimal(0)) + r["billed_usd"]
        day = per_day.setdefault(r["day"], [None, None])
        for i, key in ((0, "estimated_usd"), (1, "billed_usd")):
            if r[key] is not None:
                day[i] = (day[i] or Decimal(0)) + r[key]
    decisions = {(d["workload"], d["from_env"]): d for d in q.latest_decisions(conn, start, end)}
    workloads = []
    for row in month_rows:
        decision = decisions.get((row["workload"], row["environment"]))
        alt, label, text, savings, kind, payback = _recommend(row, decision, market, observed_hours)
        billed = billed_by_workload.get(row["workload"]) if row["environment"] == "cloud" else None
        confidence = "billed" if billed is not None else "estimated"
        decision_confidence = None
        low = high = None
        if decision is not None:
            decision_confidence = Decimal(decision["confidence"])
            confidence += f", decision confidence {decision_confidence:.0%}"
            if kind != STAY and decision["monthly_savings_low_usd"] is not None:
                low = usd_per_year(decision["monthly_savings_low_usd"], HOURS_PER_MONTH)
                high = usd_per_year(decision["monthly_savings_high_usd"], HOURS_PER_MONTH)
        workloads.append(WorkloadMonth(
            workload=row["workload"], team=row["team"], environment=row["environment"], gpu_class=row["gpu_class"],
            allocated_gpu_hours=Decimal(row["allocated_gpu_ms"]) / MS_PER_HOUR,
            busy_gpu_hours=Decimal(row["busy_gpu_ms"]) / MS_PER_HOUR, cost_usd=row["estimated_usd"],
            billed_usd=billed, alternative_usd=alt, alternative_label=label, recommendation=text,
            annualized_savings_usd=savings, confidence=confidence, days_with_data=row["days_with_data"], kind=kind,
            decision_confidence=decision_confidence, annualized_savings_low_usd=low,
            annualized_savings_high_usd=high, payback_months=payback))
    idle_daily = q.idle_daily(conn, start, end)
    movers = sorted((w for w in workloads if w.recommended), key=lambda w: -w.annualized_savings_usd)
    panels = [(w.workload, w.environment) for w in movers[:UTILIZATION_PANELS]]
    utilization_daily: dict[tuple[str, str], list] = {key: [] for key in panels}
    for day, workload, env, utilization in q.workload_daily_utilization(conn, start, end, panels):
        utilization_daily[(workload, env)].append((day, utilization))
    bands = {}
    for w in movers[:UTILIZATION_PANELS]:
        band = _band(market, w, margin)
        if band is not None:
            bands[(w.workload, w.environment)] = band
    options = _options(conn, config, movers[:charts.HORIZON_PANELS], start, end, decisions)
    budget = sum(config.budgets.values(), Decimal(0))
    daily_budget = share_of_month_usd(budget, Decimal(24), calendar_month_hours(start)) if budget else None
    previous_month = (start - timedelta(days=1)).strftime("%Y-%m")
    return MonthlyReport(
        month, start, end, workloads,
        idle_gpu_hours=sum((h for _, _, h, _ in idle_daily), Decimal(0)),
        idle_usd=sum((usd for _, _, _, usd in idle_daily), Decimal(0)),
        assumptions=assumptions(config), daily=q.spend_daily(conn, start, end), days_with_data=days,
        overview=overview(conn, month), previous=overview(conn, previous_month), idle_daily=idle_daily,
        cloud_daily=[(day, est, billed) for day, (est, billed) in sorted(per_day.items())],
        utilization_daily=utilization_daily, bands=bands, breakeven=_breakeven(market, margin),
        daily_budget_usd=daily_budget, options=options, discount_rate_pct=config.thresholds.discount_rate_pct)


def _load_forecasting() -> None:
    """Load what the forecasts fit with (``forecasting.spend`` fits statsforecast's MSTL, which loads
    statsmodels): seconds of imports, made while the month's queries run."""
    importlib.import_module("statsforecast.models")


def _forecast_series(conn: psycopg.Connection, end: datetime, month_rows: list[dict]) -> tuple:
    """(origin, horizon and skipped hours, [(team or None for all, its hourly spend)]) of the forecasts of
    next month: in total and for the teams that spent most this month, from the half year of hours before
    ``end`` (``month_rows``: ``q.workload_month``'s)."""
    from hybridspend.storage.queries import hourly_spend, latest_window_end

    after = (end + timedelta(days=32)).replace(day=1)
    # a month still in progress is forecast from its last stored hour, not from hours that have not come yet
    latest = latest_window_end(conn)
    origin = min(end, latest.replace(minute=0, second=0, microsecond=0)) if latest is not None else end
    skip = int((end - origin).total_seconds() // 3600)  # the rest of the report's month: not next month's
    horizon = int((after - origin).total_seconds() // 3600)
    by_team: dict[str, Decimal] = {}
    for row in month_rows:
        if row["team"]:
            by_team[row["team"]] = by_team.get(row["team"], Decimal(0)) + row["estimated_usd"]
    teams = sorted(by_team, key=lambda t: (-by_team[t], t))[:FORECAST_TEAMS]
    series = [(team, hourly_spend(conn, origin - timedelta(days=182), origin, team)[1]) for team in [None] + teams]
    return end, origin, horizon, skip, series


def _next_month(end: datetime, origin: datetime, horizon: int, skip: int,
                series: list[tuple[str | None, list[Decimal]]]) -> list[NextMonth]:
    """Next month's spend of each series of ``_forecast_series``, as ``hybridspend forecast`` forecasts it
    (``forecasting.spend``); a series of under a day of hours gets none."""
    from hybridspend.forecasting.spend import calibrated_forecast

    out = []
    for team, hours in series:
        if len(hours) < 24:
            continue
        fc = calibrated_forecast(hours, origin, horizon, skip_hours=skip)
        daily = [(end + timedelta(days=d), sum(fc.point_usd[d * 24:(d + 1) * 24], Decimal(0)))
                 for d in range(len(fc.point_usd) // 24)]
        out.append(NextMonth(team or ALL_TEAMS, fc.total_usd, fc.interval_usd, f"{fc.model}; {fc.calibration}",
                             daily if team is None else []))
    return out


def _cheapest(options: list[PlannedOption]) -> PlannedOption:
    best = cheapest([o.result for o in options])
    return next(o for o in options if o.result is best)


def _options(conn: psycopg.Connection, config: Config, workloads: list[WorkloadMonth], start: datetime,
             end: datetime, decisions: dict) -> dict[tuple[str, str], tuple[int, list[PlannedOption]]]:
    """Each workload's options over its horizon: the table its decision carried (the figures Slack and
    ``simulate`` showed for it), else from the month's hours, priced as ``hybridspend plan`` prices them
    (``contracts.plans.plan_for``: configured horizon, cost of capital and move costs)."""
    out = {}
    for w in workloads:
        decision = decisions.get((w.workload, w.environment))
        if decision is not None and decision.get("options"):
            out[(w.workload, w.environment)] = (decision["horizon_months"],
                                                [_stored_option(o) for o in decision["options"]])
            continue
        hours = workload_hours(conn, w.workload, start, end).get((w.environment, w.gpu_class))
        if not hours:
            continue
        provider = workload_providers(conn, w.workload, start, end).get((w.environment, w.gpu_class), "")
        plan = plan_for(config, w.workload, w.environment, w.gpu_class, hours, provider)
        out[(w.workload, w.environment)] = (plan.horizon_months, plan.options)
    return out


def _stored_option(o: dict) -> PlannedOption:
    """An option of a stored decision's table (jsonb: amounts as decimal strings)."""
    return PlannedOption(o["label"], OptionResult(
        o["option"], o["quantity"], o["unit"] or "", o["term_months"], Decimal(o["upfront_usd"]),
        Decimal(o["monthly_usd"]), Decimal(o["total_usd"]), Decimal(o["npv_usd"]), o["breakeven_month"]))


def assumptions(config: Config) -> list[tuple[str, str]]:
    out = []
    for asset in config.onprem_assets:
        rate = asset.gpu_cost().rate()
        out.append((f"on-prem {asset.name} ({asset.gpu_count} x {asset.gpu_model})",
                    f"${asset.purchase_price_usd_per_node:,} per node of {asset.gpus_per_node}, "
                    f"{asset.amortization_months} months from {asset.in_service_date}, {asset.power_w_per_gpu} W, "
                    f"PUE {asset.pue}, ${asset.electricity_usd_per_kwh}/kWh; "
                    f"${cents(rate.usd_per_gpu_hour)} per GPU-hour fully loaded"))
    for offer in config.cloud_offers:
        prices = ", ".join(f"{k} ${v}" for k, v in offer.usd_per_hour.items())
        out.append((f"cloud {offer.provider} {offer.region} {offer.instance_type}",
                    f"{offer.gpus_per_instance} x {offer.gpu_model}; {prices} per instance-hour"
                    + (f"; {offer.discount_pct}% contract discount" if offer.discount_pct else "")))
    t = config.thresholds
    out.append(("breakeven rules", f"margin {t.margin_pct}%, dwell {t.dwell_windows} windows of {t.window_seconds} s; "
                                   f"migration priced at {', '.join(t.migration_purchase_options)}"))
    evidence = ", ".join(f"{kind.replace('_', ' ')} {hours:g} h" for kind, hours in t.evidence_hours.model_dump().items())
    out.append(("evidence before a decision", f"{evidence} (at least the dwell); capacity is bought in whole nodes "
                                              f"for {t.buy_target_utilization_pct}% utilization of the GPUs bought"))
    out.append(("GPU throughput", ", ".join(f"{k} {v}" for k, v in sorted(config.gpu_throughput.items())) or "none"))
    budgets = ", ".join(f"{team} ${usd:,}" for team, usd in sorted(config.budgets.items()))
    out.append(("budgets", f"{budgets} a month (Figure 2 draws their daily share)" if budgets else "none configured"))
    out.append(("calendar", f"{HOURS_PER_MONTH} hours a month, {HOURS_PER_YEAR} a year; the other environment is "
                            "priced over the days of the month that have data; a move's savings a year are its decision's "
                            "monthly savings x 12"))
    return out


# -- presentation ---------------------------------------------------------------------------------


def _usd(v: Decimal | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


def _usd0(v: Decimal | None) -> str:
    return "—" if v is None else f"${v:,.0f}"


def _pct(v: Decimal | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _savings_range(w: WorkloadMonth) -> str:
    """The decision's savings range, annualized, where it carries one ("" otherwise)."""
    text = range_text(w.annualized_savings_low_usd, w.annualized_savings_high_usd, _usd0) if w.recommended else None
    return f"decision's range: {text}" if text else ""


def _evidence(w: WorkloadMonth) -> str:
    parts = [f"{w.days_with_data} day{'s' if w.days_with_data != 1 else ''} of data", w.basis]
    if w.decision_confidence is not None:
        parts.append(f"decision confidence {w.decision_confidence:.0%}")
    return ", ".join(parts)


def _env(env: str) -> str:
    return charts.ENV_NAMES.get(env, env)


def changes(report: MonthlyReport) -> list[str]:
    """What changed since the month before, one sentence each."""
    now, before = report.overview, report.previous
    if now is None:
        return []
    if before is None or (not before.spend_by_env and not before.workloads):
        return [f"No data for {before.month if before else 'the month before'}: nothing to compare with yet."]

    def delta(a: Decimal, b: Decimal) -> str:
        if b == 0:
            return "new this month" if a else "unchanged"
        change = (a - b) / b
        return f"{'up' if change > 0 else 'down'} {abs(change):.0%} from {_usd0(b)}" if change else "unchanged"

    out = [f"GPU spend {_usd0(now.total_usd)}, {delta(now.total_usd, before.total_usd)} in {before.month}."]
    for env in sorted(set(now.spend_by_env) | set(before.spend_by_env)):
        a, b = now.spend_by_env.get(env, Decimal(0)), before.spend_by_env.get(env, Decimal(0))
        out.append(f"{_env(env).capitalize()} {_usd0(a)}, {delta(a, b)}.")
    out.append(f"Idle owned capacity {_usd0(now.idle_usd)}, {delta(now.idle_usd, before.idle_usd)}.")
    new, gone = sorted(now.workloads - before.workloads), sorted(before.workloads - now.workloads)
    if new:
        out.append(f"{len(new)} new workload(s): {', '.join(charts.short(n, 24) for n in new[:5])}"
                   + (f" and {len(new) - 5} more." if len(new) > 5 else "."))
    if gone:
        out.append(f"{len(gone)} workload(s) no longer running: {', '.join(charts.short(n, 24) for n in gone[:5])}"
                   + (f" and {len(gone) - 5} more." if len(gone) > 5 else "."))
    out.append(f"{now.decisions} breakeven decision(s) this month against {before.decisions} in {before.month}.")
    return out


COLUMNS = ("workload", "team", "environment", "gpu_class", "allocated_gpu_hours", "busy_gpu_hours", "utilization",
           "estimated_usd", "billed_usd", "usd_per_busy_gpu_hour", "alternative_usd", "alternative",
           "recommendation", "annualized_savings_usd", "annualized_savings_low_usd", "annualized_savings_high_usd",
           "days_with_data", "confidence")


def _opt(v: Decimal | None, places: str) -> str:
    return "" if v is None else f"{v:{places}}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that starts like a formula (``=``, ``+``, ``-``,
    ``@``, tab, carriage return) gets a leading apostrophe (OWASP, CSV injection).  For the finance
    CSV a person opens; the FOCUS and OpenCost exports are read by machines and keep values as they are."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def _row(w: WorkloadMonth) -> list:
    return [spreadsheet_text(w.workload), spreadsheet_text(w.team), spreadsheet_text(w.environment),
            spreadsheet_text(w.gpu_class), f"{w.allocated_gpu_hours:.3f}", f"{w.busy_gpu_hours:.3f}",
            _opt(w.utilization, ".4f"), f"{w.cost_usd:.2f}", _opt(w.billed_usd, ".2f"),
            _opt(w.usd_per_busy_gpu_hour, ".4f"), _opt(w.alternative_usd, ".2f"), spreadsheet_text(w.alternative_label),
            spreadsheet_text(w.recommendation), f"{w.annualized_savings_usd:.2f}", _opt(w.annualized_savings_low_usd, ".2f"),
            _opt(w.annualized_savings_high_usd, ".2f"), w.days_with_data, w.confidence]


def render_csv(report: MonthlyReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for w in report.workloads:
        writer.writerow(_row(w))
    return out.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(report: MonthlyReport) -> str:
    total = sum((w.cost_usd for w in report.workloads), Decimal(0))
    lines = [f"# GPU spend and placement — {report.month}", "",
             f"Total estimated GPU spend {_usd(total)}; idle on-prem capacity {report.idle_gpu_hours:,.1f} GPU-hours "
             f"costing {_usd(report.idle_usd)}; recommended moves save {_usd(report.savings_usd)} a year "
             f"(from {report.days_with_data} day(s) of data).", "",
             "## What changed since last month", ""] + [f"- {_md_cell(c)}" for c in changes(report)] + [
             "", "## Workloads", "",
             "| workload | team | where | GPU | GPU-h | busy | cost | billed | $/busy GPU-h | other env "
             "| recommendation | savings/yr | evidence |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for w in report.workloads:
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            w.workload, w.team, w.environment, w.gpu_class, f"{w.allocated_gpu_hours:,.1f}", _pct(w.utilization),
            _usd(w.cost_usd), _usd(w.billed_usd), _usd(w.usd_per_busy_gpu_hour), _usd(w.alternative_usd),
            w.recommendation, _usd(w.annualized_savings_usd), _evidence(w))) + " |")
    lines += ["", "## Top movers", ""] + [f"- {_md_cell(w.workload)}: {w.recommendation}, "
                                          f"{_usd(w.annualized_savings_usd)} a year" for w in report.recommended[:5]]
    if report.next_month:
        lines += ["", "## Next month's forecast", "", f"{report.next_month[0].how}.", "",
                  "| team | forecast | 80 % interval | 95 % interval |", "|---|---:|---:|---:|"]
        lines += [f"| {_md_cell(f.scope)} | {_usd(f.total_usd)} | {_usd(f.interval_usd[80][0])} to "
                  f"{_usd(f.interval_usd[80][1])} | {_usd(f.interval_usd[95][0])} to {_usd(f.interval_usd[95][1])} |"
                  for f in report.next_month]
    lines += ["", "## Assumptions", ""] + [f"- **{k}**: {v}" for k, v in report.assumptions]
    return "\n".join(lines) + "\n"


def figures(report: MonthlyReport) -> list[tuple[str, str, str]]:
    """The seven figures as (title, SVG, caption), numbered in this order in the HTML and the PDF."""
    label = report.start.strftime("%B %Y")
    be = report.breakeven
    points = [(w.workload, w.environment, w.gpu_class, float(w.utilization), float(w.usd_per_busy_gpu_hour),
               w.recommended) for w in report.workloads if w.utilization and w.usd_per_busy_gpu_hour is not None]
    steps = [Decimal(i) / 100 for i in range(4, 101)]
    curves = [(c, [float(u) for u in steps], [float(effective_usd_per_busy_gpu_hour(rate, u)) for u in steps])
              for c, rate in be.owned_usd_per_gpu_hour.items()] if be else []
    breakeven_svg = charts.breakeven(
        curves, [(lbl, c, float(p)) for lbl, c, p in be.cloud_usd_per_gpu_hour] if be else [],
        [(c, float(u)) for c, u in be.breakeven.items()] if be else [], points)
    crossings = ", ".join(f"{c} at {u:.0%}" for c, u in be.breakeven.items()) if be and be.breakeven else "none"

    days = sorted({d for d, _, _, _ in report.daily})
    by_env: dict[str, list[float]] = {}
    for day, env, cost, _ in report.daily:
        by_env.setdefault(env, [0.0] * len(days))[days.index(day)] = float(cost)
    spend_svg = charts.daily_spend(days, by_env, charts.as_float(report.daily_budget_usd), label)

    series = []
    for w in report.recommended[:UTILIZATION_PANELS]:
        points_w = report.utilization_daily.get((w.workload, w.environment), [])
        band = report.bands.get((w.workload, w.environment))
        series.append((f"{charts.short(w.workload, 26)} ({_env(w.environment)} {w.gpu_class})",
                       [d for d, _ in points_w], [charts.as_float(u) for _, u in points_w],
                       tuple(float(b) for b in band) if band else None))
    bands_svg = charts.utilization_bands(series, label)

    idle_days = sorted({d for d, _, _, _ in report.idle_daily})
    by_class: dict[str, list[float]] = {}
    for day, gpu_class, _, usd in report.idle_daily:
        by_class.setdefault(gpu_class, [0.0] * len(idle_days))[idle_days.index(day)] += float(usd)
    idle_svg = charts.idle_cost(idle_days, by_class, label)

    horizon_panels = [(f"{w} ({_env(env)})", horizon, [(o.label, float(o.result.upfront_usd), float(o.result.monthly_usd),
                                                        o.result.breakeven_month) for o in options])
                      for (w, env), (horizon, options) in report.options.items()]
    horizon_svg = charts.options_over_horizon(horizon_panels)
    cheapest_text = "; ".join(
        f"{w}: {_cheapest(opts).label} ({_usd0(_cheapest(opts).result.npv_usd)} over {horizon} months)"
        for (w, _), (horizon, opts) in report.options.items())

    whole = next((f for f in report.next_month if f.scope == ALL_TEAMS), None)
    actual: dict[datetime, float] = {}
    for day, _, cost, _ in report.daily:
        actual[day] = actual.get(day, 0.0) + float(cost)
    for day, _, _, idle_usd in report.idle_daily:  # the forecast of all spend counts idle owned GPUs: so do the bars
        actual[day] = actual.get(day, 0.0) + float(idle_usd)
    bands = {level: (float(low / whole.total_usd), float(high / whole.total_usd))
             for level, (low, high) in whole.interval_usd.items()} if whole and whole.total_usd else {}
    forecast_svg = charts.spend_forecast(sorted(actual.items()), [(d, float(v)) for d, v in whole.daily_usd]
                                         if whole else [], bands, label)
    forecast_text = "; ".join(
        f"{f.scope}: {_usd0(f.total_usd)} (80 %: {_usd0(f.interval_usd[80][0])} to {_usd0(f.interval_usd[80][1])})"
        for f in report.next_month) or "too little history to forecast"

    cloud_days = [d for d, _, _ in report.cloud_daily]
    billed_svg = charts.estimated_vs_billed(cloud_days, [charts.as_float(e) for _, e, _ in report.cloud_daily],
                                            [charts.as_float(b) for _, _, b in report.cloud_daily], label)
    estimated = sum((e for _, e, b in report.cloud_daily if e is not None and b is not None), Decimal(0))
    billed = report.billed_cloud_usd
    gap = (f"on the days billed so far the live estimate was {_usd0(estimated)} against {_usd0(billed)} billed"
           if billed is not None else "no bill has arrived for this month yet")
    return [
        ("What does a useful GPU-hour cost, owned or rented?", breakeven_svg,
         f"Each owned GPU class costs its hourly rate divided by utilization (solid curves); renting busy hours costs "
         f"the cloud price (dashed lines). Owning wins to the right of the dotted breakeven utilization ({crossings}). "
         f"Dots (on-prem) and squares (cloud) are workloads at their measured utilization; outlined ones are "
         f"recommended to move."),
        ("Daily spend by environment against the budget", spend_svg,
         "Estimated spend of the workloads per day, on-prem and cloud stacked"
         + (", with the daily share of the monthly budgets." if report.daily_budget_usd is not None
            else "; no budget is configured.")),
        ("Do the recommended workloads stay outside their breakeven band?", bands_svg,
         f"Daily utilization of the recommended workloads with the largest savings (up to {UTILIZATION_PANELS}); "
         f"the grey band is the breakeven utilization ± the {be.margin if be else 0:.0%} margin, within which no "
         f"move is acted on."),
        ("What does idle owned capacity cost each day?", idle_svg,
         f"Owned GPUs allocated to no workload, per GPU class: {report.idle_gpu_hours:,.0f} GPU-hours costing "
         f"{_usd0(report.idle_usd)} this month."),
        ("Cloud cost estimated live against billed", billed_svg,
         f"Cloud cost per day as estimated within seconds from instance events and prices, and as billed hours "
         f"later; {gap}."),
        ("What would each option cost over the years ahead?", horizon_svg,
         "Cumulative cost of staying as it runs (dashed) against filling the idle owned GPUs promised to it, "
         "committing to cloud capacity and buying owned nodes (sized to the workload's demand floor by present "
         "value) and moving, from the hours its decision rested on (the table Slack "
         "showed; else this month's measured hours) repeated; a dot "
         f"marks the month an option overtakes staying. Cheapest by present value at {report.discount_rate_pct:g}% a year: "
         + (cheapest_text or "no recommended move to compare") + "."),
        ("What will next month cost?", forecast_svg,
         "Daily spend this month, idle owned GPUs included (bars), and next month's forecast per day (line), from "
         "the hours up to the end of "
         "this month: statsforecast's MSTL with daily and weekly seasons, as `hybridspend forecast` makes it. The "
         "shading spreads the 80 % and 95 % intervals of the month's total over its days in proportion; the total's "
         f"intervals are what is calibrated ({whole.how if whole else 'no forecast'}). Next month: {forecast_text}."),
    ]


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(usd=_usd, usd0=_usd0, pct=_pct, savings_range=_savings_range, evidence=_evidence, env=_env,
                       short=charts.short)
    return env


def render_html(report: MonthlyReport) -> str:
    from markupsafe import Markup

    total = report.overview.total_usd if report.overview else sum((w.cost_usd for w in report.workloads), Decimal(0))
    return _environment().get_template(TEMPLATE).render(
        r=report, total_usd=total, spend_by_env=report.overview.spend_by_env if report.overview else {},
        changes=changes(report), name_chars=NAME_CHARS, summary_moves=SUMMARY_MOVES,
        figures=[(title, Markup(svg), text) for title, svg, text in figures(report)],
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write(conn: psycopg.Connection, report: MonthlyReport, formats: list[str], out_dir: Path,
          progress: Callable[[str], None] = lambda m: None, config: Config | None = None) -> list[Path]:
    """Write each format.  The PDF is laid out from the very HTML written, by a second process, while
    the other formats are written: laying out pages is the slowest step and runs on one core.  The FOCUS
    export's rows (the month's on-prem cost windows, summed per node and day: seconds of the database's
    time at 10,000 GPUs) are read in a second thread while the charts are drawn."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"md": "gpu-spend-{}.md", "csv": "gpu-spend-{}.csv", "html": "gpu-spend-{}.html",
             "pdf": "gpu-spend-{}.pdf", "focus": "onprem-focus-{}.csv"}
    paths = {fmt: out_dir / names[fmt].format(report.month) for fmt in formats}
    job = pdf.PdfJob(paths["pdf"]) if "pdf" in formats else None
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-focus") as reader:
            shares = reader.submit(onprem_node_day_shares, conn, report.start, report.end) if "focus" in formats \
                else None
            html_text = render_html(report) if "html" in formats or job is not None else ""
            if job is not None:
                job.send(html_text)
            order = [f for f in formats if f == "html"] + [f for f in formats if f not in ("html", "pdf")] + (
                ["pdf"] if job is not None else [])  # the PDF last: it is being laid out meanwhile
            for done, fmt in enumerate(order):
                filled = 20 * done // len(formats)
                progress(f"  [{'#' * filled}{'.' * (20 - filled)}] {done}/{len(formats)} writing {fmt}")
                if fmt == "html":
                    write_replacing(paths[fmt], html_text)
                elif fmt == "pdf":
                    job.wait()
                elif fmt == "focus":  # the month's on-prem costs as a FOCUS dataset (reports/focus_export.py)
                    write_replacing(paths[fmt], focus_export.render_csv(focus_export.focus_rows(
                        shares.result(), report.start, report.end, config)))
                else:
                    write_replacing(paths[fmt], {"md": render_md, "csv": render_csv}[fmt](report))
    finally:
        if job is not None:
            job.cancel()
    progress(f"  [{'#' * 20}] {len(formats)}/{len(formats)} done")
    return [paths[fmt] for fmt in formats]
