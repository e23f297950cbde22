"""Alerts beyond breakeven crossings, as pure rules over figures the alerter reads from the database.

Every notice has a *subject* (what it is about) and a *severity*.  The alerter sends a subject
once per cooldown per route, and again within the cooldown only when the severity rises (an
escalation: 80 % of the budget spent, then 100 %).  Times are event time: "now" is the end of
the latest stored window, so a replayed or simulated fleet is judged by its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
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


@dataclass(frozen=True)
class Figures:
    now: datetime | None  # event time: end of the latest window (None: no data yet)
    team_month: list[tuple[str, Decimal, Decimal]] = field(default_factory=list)  # team, month-to-date $, budget $
    team_rate: list[tuple[str, Decimal, Decimal, int]] = field(default_factory=list)
    # team, last 24 h $, mean daily $ of the 7 days before, days of baseline with data
    idle: list[tuple[str, Decimal]] = field(default_factory=list)  # GPU class, idle on-prem $ over the last 24 h
    hosts_last_seen: list[tuple[str, datetime]] = field(default_factory=list)  # on-prem host, its latest sample
    samples_now: datetime | None = None  # the latest on-prem sample of the fleet
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


def spend_rate_notices(f: Figures, increase_pct: Decimal) -> list[Notice]:
    """A team's last 24 hours against its daily average over the 7 days before (3 days of data at least)."""
    out = []
    for team, last_day, baseline, days in f.team_rate:
        if days < 3 or baseline <= 0:
            continue
        change_pct = (last_day - baseline) / baseline * 100
        if change_pct < increase_pct:
            continue
        severity = 1 + int(change_pct >= 2 * increase_pct) + int(change_pct >= 4 * increase_pct)
        out.append(Notice(
            subject=f"spend-rate|{team}", severity=severity, audience=FINANCE,
            title=f"Spend rate: {team} up {change_pct:.0f} %",
            text=(f"Spend rate: {team} spent {_usd(last_day)} in the last 24 h, {change_pct:.0f} % above its "
                  f"daily average of {_usd(baseline)} over the {days} days before"),
            fields=(("Team", team), ("Last 24 h", _usd(last_day)), ("Daily average before", _usd(baseline)),
                    ("Change", f"+{change_pct:.0f} %")),
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


def silence_notices(f: Figures, minutes: float) -> list[Notice]:
    """An on-prem host whose samples stopped while the rest of the fleet's kept coming."""
    if f.samples_now is None:
        return []
    limit = f.samples_now - timedelta(minutes=minutes)
    out = []
    for host, last_seen in f.hosts_last_seen:
        if last_seen >= limit:
            continue
        silent_min = (f.samples_now - last_seen).total_seconds() / 60
        out.append(Notice(
            subject=f"silent|{host}|{last_seen:%Y-%m-%dT%H:%M:%S}", severity=1, audience=PLATFORM,
            title=f"Collector silent: {host}",
            text=(f"Collector silent: no GPU samples from {host} for {silent_min:.0f} min (last at "
                  f"{last_seen:%Y-%m-%d %H:%M} UTC): its GPUs are not being accounted"),
            fields=(("Host", host), ("Last sample", f"{last_seen:%Y-%m-%d %H:%M} UTC"),
                    ("Silent for", f"{silent_min:.0f} min")),
        ))
    return out


def all_notices(f: Figures, checks) -> list[Notice]:
    """Every rule the configuration turns on (``checks``: contracts.config.AlertChecks)."""
    out: list[Notice] = []
    if checks.budget_forecast:
        out += budget_notices(f, Decimal(checks.budget_overrun_probability_pct) / 100)
    if checks.spend_rate_increase_pct is not None:
        out += spend_rate_notices(f, checks.spend_rate_increase_pct)
    if checks.idle_usd_per_day is not None:
        out += idle_notices(f, checks.idle_usd_per_day)
    if checks.collector_silence_minutes is not None:
        out += silence_notices(f, checks.collector_silence_minutes)
    return out
