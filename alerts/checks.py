"""Alerts beyond breakeven crossings, as pure rules over figures the alerter reads from the database:
budgets (with the spend forecasts) and idle owned capacity.  Spend rates off their seasonal baseline and
silent collectors are anomalies the worker detects in the stream (streams/watch.py); the alerter routes them.

Every notice has a *subject* (what it is about) and a *severity*.  The alerter sends a subject
once per cooldown per route, and again within the cooldown only when the severity rises (an
escalation: 80 % of the budget spent, then 100 %).  Times are event time: "now" is the end of
the latest stored window, so a replayed or simulated fleet is judged by its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from hybridspend.costmodel.money import month_forecast_usd

FINANCE, PLATFORM = "finance", "platform"


@dataclass(frozen=True)
class Notice:
    subject: str
    severity: int
    audience: str
    title: str
    text: str
    fields: tuple[tuple[str, str], ...] = ()  # label -> value; values from users' clusters are escaped when rendered


@dataclass(frozen=True)
class BudgetForecast:
    """A team's month as forecast (``alerts.forecaster``): the hours so far plus the rest of the month."""

    total_usd: Decimal  # month to date (whole hours) + the rest's point forecast
    low_usd: Decimal  # the 80 % interval of that total
    high_usd: Decimal
    overrun_probability: Decimal  # 0..1: the share of the forecast's distribution above the budget
    model: str  # how it was made, for a person (MSTL(...), calibrated or not)
    band: tuple = ()  # storage.queries.ForecastPoint: the running month total at each day's end (Grafana's band)


@dataclass(frozen=True)
class Figures:
    now: datetime | None  # event time: end of the latest window (None: no data yet)
    team_month: list[tuple[str, Decimal, Decimal]] = field(default_factory=list)  # team, month-to-date $, budget $
    idle: list[tuple[str, Decimal]] = field(default_factory=list)  # GPU class, idle on-prem $ over the last 24 h
    team_forecasts: dict[str, BudgetForecast] = field(default_factory=dict)  # team -> its month, forecast


def _usd(amount: Decimal) -> str:
    return f"${amount:,.2f}"


def budget_notices(f: Figures, overrun_probability: Decimal = Decimal("0.8")) -> list[Notice]:
    """Month-to-date spend and the month's forecast against each team's monthly budget.

    With a forecast of the team's month (``Figures.team_forecasts``: seasonal, with an interval), the notice
    fires when it gives at least ``overrun_probability`` of exceeding the budget; without one (too little
    history, or not computed yet) on the straight line the month-to-date spend draws.
    """
    if f.now is None:
        return []
    month_start = f.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out = []
    for team, spent, budget in f.team_month:
        fc = f.team_forecasts.get(team)
        line = month_forecast_usd(spent, f.now)
        if budget <= 0 or (fc is None and line is None):
            continue
        used = spent / budget
        on_course = fc.overrun_probability >= overrun_probability if fc is not None else line > budget
        if used >= 1:
            severity, state = 3, "has spent its monthly budget"
        elif used >= Decimal("0.8"):
            severity, state = 2, "has spent 80 % of its monthly budget"
        elif on_course:
            severity, state = 1, "is on course to exceed its monthly budget"
        else:
            continue
        if fc is not None:
            outlook = (f"{fc.overrun_probability:.0%} likely to exceed it; {month_start:%B} forecast "
                       f"{_usd(fc.total_usd)} (80 %: {_usd(fc.low_usd)} to {_usd(fc.high_usd)}, {fc.model})")
            forecast = f"{_usd(fc.total_usd)} (80 %: {_usd(fc.low_usd)} to {_usd(fc.high_usd)})"
            extra = (("Chance to exceed", f"{fc.overrun_probability:.0%}"),)
        else:
            outlook = f"forecast for {month_start:%B}: {_usd(line)} (a straight line: too little history to model)"
            forecast, extra = _usd(line), ()
        out.append(Notice(
            subject=f"budget|{team}|{month_start:%Y-%m}", severity=severity, audience=FINANCE,
            title=f"Budget: {team} {state}",
            text=(f"Budget: {team} {state}: {_usd(spent)} spent of {_usd(budget)} ({used:.0%}) by "
                  f"{f.now:%Y-%m-%d %H:%M} UTC; {outlook}"),
            fields=(("Team", team), ("Spent this month", _usd(spent)), ("Budget", _usd(budget)),
                    ("Forecast", forecast), ("Used", f"{used:.0%}")) + extra,
        ))
    return out


def idle_notices(f: Figures, threshold_usd_per_day: Decimal) -> list[Notice]:
    """Owned GPUs that sat idle cost money all the same: their cost over the last 24 hours, per class."""
    out = []
    for gpu_class, idle_usd in f.idle:
        if idle_usd < threshold_usd_per_day or idle_usd <= 0:
            continue
        ratio = idle_usd / threshold_usd_per_day if threshold_usd_per_day else Decimal(4)
        severity = 1 + int(ratio >= 2) + int(ratio >= 4)
        out.append(Notice(
            subject=f"idle|{gpu_class}", severity=severity, audience=PLATFORM,
            title=f"Idle capacity: on-prem {gpu_class} GPUs idle for {_usd(idle_usd)} in 24 h",
            text=(f"Idle capacity: on-prem {gpu_class} GPUs that ran nothing cost {_usd(idle_usd)} in the last "
                  f"24 h (threshold {_usd(threshold_usd_per_day)}): cloud workloads could fill them"),
            fields=(("GPU class", gpu_class), ("Idle cost, 24 h", _usd(idle_usd))),
        ))
    return out


_ANOMALY_TITLES = {
    "held_idle": "GPUs held idle: {workload} ({environment} {gpu_class})",
    "usd_per_busy_gpu_hour": "Cost per busy GPU-hour up: {workload} ({environment} {gpu_class})",
    "spend_rate": "Spend rate off its baseline: team {team}",
    "silent": "Collector silent: {resource}",
}
_ANOMALY_UNITS = {"usd_per_hour": "$/h", "usd_per_busy_gpu_hour": "$ per busy GPU-hour", "utilization_pct": "% busy",
                  "minutes": "min without samples"}


def anomaly_notice(a, finance_usd_per_day: Decimal) -> Notice:
    """An anomaly the worker detected (``contracts.events.Anomaly``, opened) as a notice: to the platform
    team, and to finance too when a day of it is worth at least ``finance_usd_per_day``.  Its subject is
    the episode, so it is sent once however often the record is read."""
    unit = _ANOMALY_UNITS.get(a.unit, a.unit)
    return Notice(
        subject=a.episode_id, severity=1,
        audience=FINANCE if a.usd_per_day_at_stake >= finance_usd_per_day else PLATFORM,
        title=_ANOMALY_TITLES[a.kind].format(workload=a.workload, environment=a.environment, gpu_class=a.gpu_class,
                                             team=a.team, resource=a.resource),
        text=f"Anomaly ({a.kind}): {a.reason}",
        fields=(("Since", f"{_when(a.start_ms)}"), ("Observed", f"{a.observed:,.2f} {unit}"),
                ("Expected", f"{a.baseline:,.2f} {unit}"), ("Score", f"{a.score:.1f}"),
                ("At stake a day", _usd(a.usd_per_day_at_stake)), ("So far", _usd(a.usd_so_far))),
    )


def _when(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, tz=timezone.utc):%Y-%m-%d %H:%M} UTC"


def all_notices(f: Figures, checks) -> list[Notice]:
    """Every rule the configuration turns on (``checks``: contracts.config.AlertChecks)."""
    out: list[Notice] = []
    if checks.budget_forecast:
        out += budget_notices(f, Decimal(checks.budget_overrun_probability_pct) / 100)
    if checks.idle_usd_per_day is not None:
        out += idle_notices(f, checks.idle_usd_per_day)
    return out
