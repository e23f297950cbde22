"""Hourly spend forecasts with prediction intervals, and their rolling-origin backtest.

The model is statsforecast's MSTL (a maintained library: Nixtla's StatsForecast): the hourly series is
split into a trend and its daily and weekly seasonal parts (LOESS), the trend forecast as a level (ETS A,N,N) and the
seasonal parts repeated.  Which seasons it uses depends on the history, and the forecast says so:

    two weeks or more     daily and weekly seasonality           MSTL(season_length=[24, 168])
    two days or more      daily seasonality only                 MSTL(season_length=24)
    less                  the mean hour of the history, flat     (too short for any season)

Intervals are for what a budget needs: the total over the horizon.  statsforecast's conformal intervals
calibrate each step from cross-validation windows of the horizon's length (n windows x h hours of
history: three months for a month ahead), so they are not used here.  The total's distribution comes
from a moving-block bootstrap of the model's in-sample errors instead: whole days of errors (blocks of 24
hours, kept at their hour of the day), drawn again and again and added to the point path; the interval
is the quantiles of the sums.  Errors of one day move together, so a day of errors is drawn as a block.
That holds the shape of the noise but not the uncertainty of the trend and the seasons themselves, so
each level's interval is at least as wide as the series' own past forecasts say it must be
(``calibrate``): from up to eight earlier origins, each miss relative to its forecast total, and the
conformal quantile of those (split conformal on the horizon's total).  After a step change the misses of
the origins that straddled it widen the intervals; they narrow again once the calibration origins are
past it (about two weeks for a week ahead).

Amounts are Decimal (micro-dollars) at the edges; the model works in floats.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Sequence

from hybridspend.costmodel.money import MICRO

HOURS_PER_DAY = 24
HOURS_PER_WEEK = 168
LEVELS = (80, 95)
PATHS = 2000
CALIBRATION_ORIGINS = 8  # past origins, a day apart, that calibrate the intervals
MAX_HISTORY_HOURS = 24 * 7 * 26  # half a year of hours is plenty for two seasons


class ForecastError(ValueError):
    """A forecast that cannot be made (no history, a horizon out of bounds)."""


@dataclass(frozen=True)
class SpendForecast:
    """What the next ``len(point_usd)`` hours will cost from ``start``: the point path, its total and the
    total's interval at each level; ``model`` and ``note`` say how it was made."""

    start: datetime
    model: str
    note: str
    point_usd: tuple[Decimal, ...]
    total_usd: Decimal
    interval_usd: dict[int, tuple[Decimal, Decimal]]  # level (%) -> (low, high) of the total
    _totals: tuple[float, ...]  # the bootstrap's totals, sorted: the distribution behind the intervals
    calibration: str = "not calibrated"  # how the intervals were calibrated, for a person
    # the band: at the end of each day of the horizon (and at its end), hours from ``start`` -> the running
    # total's point and its interval at each level (the last one is the total's)
    band: tuple[tuple[int, Decimal, dict[int, tuple[Decimal, Decimal]]], ...] = ()

    def probability_above(self, usd: Decimal) -> Decimal:
        """The share of the total's distribution above ``usd`` (0..1, to 3 places)."""
        above = sum(1 for t in self._totals if t > float(usd))
        return (Decimal(above) / len(self._totals)).quantize(Decimal("0.001"))

    def quantile_usd(self, q: float) -> Decimal:
        return _usd(_quantile(self._totals, q))


def _usd(value: float) -> Decimal:
    return Decimal(repr(float(value))).quantize(MICRO)


def _quantile(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _fit(history: list[float], horizon: int) -> tuple[str, str, list[float], list[float]]:
    """(model, note, point path, in-sample errors) for the history."""
    import numpy as np

    n = len(history)
    if n < 2 * HOURS_PER_DAY:
        mean = sum(history) / n
        return ("mean hour", f"{n} h of history is too short for a daily season (48 h): the mean hour, flat",
                [mean] * horizon, [y - mean for y in history])
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    seasons = [HOURS_PER_DAY, HOURS_PER_WEEK] if n >= 2 * HOURS_PER_WEEK else [HOURS_PER_DAY]
    note = ("daily and weekly seasonality" if len(seasons) == 2 else
            f"daily seasonality only: {n} h of history is under the two weeks a weekly season needs")
    frame = pd.DataFrame({"unique_id": "spend", "ds": pd.date_range("2000-01-03", periods=n, freq="h"),
                          "y": np.asarray(history, dtype=float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the deseasonalized level by simple exponential smoothing (ETS A,N,N): measured as accurate as
        # AutoETS choosing among trends (weekly-cycles MAPE 7.04 % both, hybrid-month 2.19 % against 2.22 %)
        # and cheaper, and a month ahead a fitted trend is more often a guess than a forecast
        sf = StatsForecast(models=[MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ANN"))], freq="h")
        out = sf.forecast(df=frame, h=horizon, fitted=True)
        fitted = sf.forecast_fitted_values()["MSTL"].to_numpy()
    errors = [float(y - f) for y, f in zip(history, fitted) if not math.isnan(f)]
    model = f"MSTL(season_length={seasons if len(seasons) > 1 else seasons[0]})"
    return model, note, [float(v) for v in out["MSTL"].to_numpy()], errors


def _bootstrap_totals(point: list[float], errors: list[float], history_hours: int, seed: int, skip: int = 0,
                      paths: int = PATHS, band: list | None = None, first_hour_of_day: int | None = None) -> list[float]:
    """Totals over hours ``skip``.. of ``paths`` bootstrap paths: the point path plus days of in-sample errors
    drawn at random, each block starting at the same hour of the day as the hour it is added to.  ``band``
    (a list) gets (hours from the start, the running totals so far, sorted) at the end of every day of the
    forecast and at its end.  ``first_hour_of_day``: the forecast's first hour as an hour of the day (UTC;
    default: as if the history began at midnight)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    errs = np.asarray(errors, dtype=float)
    n, horizon = len(errs), len(point)
    base = float(sum(point[skip:]))
    fh = (history_hours if first_hour_of_day is None else first_hour_of_day) % HOURS_PER_DAY
    day_ends = set(range((HOURS_PER_DAY - fh) % HOURS_PER_DAY or HOURS_PER_DAY, len(point), HOURS_PER_DAY)) | {
        len(point)}
    if n == 0:
        if band is not None:
            band.extend((h, [float(sum(point[skip:h]))] * paths) for h in sorted(day_ends) if h > skip)
        return [base] * paths
    if n < 2 * HOURS_PER_DAY:  # under two days of errors: single hours, drawn anywhere
        block, starts, first_hour = 1, np.arange(n), 0
    else:
        offset = (fh - n) % HOURS_PER_DAY  # the hour of the day of errs[0] (the history's last n hours)
        block = HOURS_PER_DAY
        # block starts that are at hour 0 of a day in the errors' own clock (then shifted to the path's hour)
        starts = np.arange((HOURS_PER_DAY - offset) % HOURS_PER_DAY, n - block + 1, HOURS_PER_DAY)
        first_hour = fh  # the forecast's first hour, as an hour of the day
    totals = np.zeros(paths)
    filled = 0
    while filled < horizon:
        take = min(block - (first_hour if filled == 0 else 0), horizon - filled)
        chosen = rng.choice(starts, size=paths) + (first_hour if filled == 0 else 0)
        idx = np.minimum(chosen[:, None] + np.arange(take)[None, :], n - 1)
        counted = np.arange(filled, filled + take) >= skip  # hours before ``skip`` are not in the total
        totals += (errs[idx] * counted[None, :]).sum(axis=1)
        filled += take
        if band is not None and filled in day_ends and filled > skip:
            band.append((filled, sorted(float(t) for t in totals + sum(point[skip:filled]))))
    return sorted(float(t) for t in totals + base)


def forecast_spend(history_usd: Sequence[Decimal], start: datetime, horizon_hours: int, *, seed: int = 0,
                   widen: dict[int, float] | None = None, skip_hours: int = 0) -> SpendForecast:
    """The next ``horizon_hours`` of an hourly spend series whose last hour ends at ``start``; the total and
    its intervals count the hours from ``skip_hours`` on (next month's, seen from this one).

    ``widen``: per level, the least half width of the interval relative to the total (``calibrate`` measures
    it); the distribution behind ``probability_above`` is spread to match the 80 % interval.
    """
    if not history_usd:
        raise ForecastError("no hours of spend to forecast from")
    if not 1 <= horizon_hours <= 24 * 366:
        raise ForecastError(f"the horizon must be from 1 hour to a year, got {horizon_hours} h")
    if not 0 <= skip_hours < horizon_hours:
        raise ForecastError(f"skip_hours must be from 0 to the horizon, got {skip_hours} of {horizon_hours}")
    history = [float(v) for v in history_usd][-MAX_HISTORY_HOURS:]
    model, note, point, errors = _fit(history, horizon_hours)
    point = [max(0.0, p) for p in point]  # spend is never negative
    running: list = []
    totals = _bootstrap_totals(point, errors, len(history), seed, skip_hours, band=running,
                               first_hour_of_day=start.astimezone(timezone.utc).hour)
    widen = widen or {}

    def interval(paths: list[float], centre: float) -> dict[int, tuple[Decimal, Decimal]]:
        out: dict[int, tuple[Decimal, Decimal]] = {}
        for level in LEVELS:  # in increasing order: a wider level holds the narrower one whatever its calibration
            half = widen.get(level, 0.0) * centre  # what the past misses say, relative to the total
            low, high = (_quantile(paths, (1 - level / 100) / 2), _quantile(paths, 1 - (1 - level / 100) / 2))
            low_usd, high_usd = _usd(max(0.0, min(low, centre - half))), _usd(max(low, high, centre + half))
            if out:
                inner = out[max(out)]
                low_usd, high_usd = min(low_usd, inner[0]), max(high_usd, inner[1])
            out[level] = (low_usd, high_usd)
        return out

    centre = sum(point[skip_hours:])
    intervals = interval(totals, centre)
    totals = _spread_to(totals, centre, *(float(v) for v in intervals[LEVELS[0]]))
    counted = tuple(_usd(p) for p in point[skip_hours:])  # the total is the sum of the hours shown
    band = tuple((h - skip_hours, sum(counted[:h - skip_hours], Decimal(0)),
                  interval(paths, sum(point[skip_hours:h]))) for h, paths in running)
    return SpendForecast(start + timedelta(hours=skip_hours), model, note, counted, sum(counted, Decimal(0)),
                         intervals, tuple(totals), band=band)


def _spread_to(totals: list[float], centre: float, low: float, high: float) -> list[float]:
    """The distribution behind ``probability_above``: the bootstrap's totals moved so that their median is
    the point total and their 10th and 90th percentiles the ends of the (calibrated) 80 % interval, each
    side scaled on its own (a side without spread takes a normal shape); never below 0."""
    from statistics import NormalDist

    normal = NormalDist()
    z90 = normal.inv_cdf(0.9)
    n = len(totals)
    med, q10, q90 = _quantile(totals, 0.5), _quantile(totals, 0.1), _quantile(totals, 0.9)
    out = []
    for i, t in enumerate(totals):  # sorted: the rank of each is its place
        if t >= med:
            up = (t - med) / (q90 - med) if q90 > med else max(0.0, normal.inv_cdf((i + 0.5) / n)) / z90
            out.append(centre + up * (high - centre))
        else:
            down = (med - t) / (med - q10) if med > q10 else max(0.0, -normal.inv_cdf((i + 0.5) / n)) / z90
            out.append(max(0.0, centre - down * (centre - low)))
    return sorted(out)


def straight_line_usd(history_usd: Sequence[Decimal], month_start_index: int, horizon_hours: int) -> Decimal:
    """What the budget check extrapolates today: the month's mean hour so far (the last day when the month is
    younger than a day), times the horizon."""
    since = max(0, min(month_start_index, len(history_usd) - HOURS_PER_DAY))
    hours = history_usd[since:]
    return sum(hours, Decimal(0)) / len(hours) * horizon_hours


@dataclass(frozen=True)
class Backtest:
    """Rolling-origin backtest of the total over ``horizon_hours``: one forecast per origin."""

    horizon_hours: int
    origins: int
    mape_pct: Decimal  # of the forecast total
    straight_line_mape_pct: Decimal  # of the month-to-date straight line
    coverage_pct: dict[int, Decimal]  # level -> share of origins whose actual total fell inside the interval


def backtest(series_usd: Sequence[Decimal], hour0: datetime, *, horizon_hours: int = HOURS_PER_WEEK,
             first_origin_hours: int = 2 * HOURS_PER_WEEK, step_hours: int = HOURS_PER_DAY,
             calibrated: bool = True) -> Backtest:
    """Forecast the total of the next ``horizon_hours`` from every ``step_hours`` origin after
    ``first_origin_hours`` (each origin sees only the hours before it) and compare with what happened."""
    ape, ape_line = [], []
    inside = {level: 0 for level in LEVELS}
    n = len(series_usd)
    origins = list(range(first_origin_hours, n - horizon_hours + 1, step_hours))
    if not origins:
        raise ForecastError(f"{n} h is too short for a backtest from hour {first_origin_hours} with a "
                            f"{horizon_hours} h horizon")
    for origin in origins:
        history = series_usd[:origin]
        start = hour0 + timedelta(hours=origin)
        widen = calibrate(history, start, horizon_hours) if calibrated else None
        fc = forecast_spend(history, start, horizon_hours, widen=widen)
        actual = sum(series_usd[origin:origin + horizon_hours], Decimal(0))
        month_start = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        line = straight_line_usd(history, origin - int((start - month_start).total_seconds() // 3600), horizon_hours)
        if actual > 0:
            ape.append(abs(fc.total_usd - actual) / actual)
            ape_line.append(abs(line - actual) / actual)
        for level, (low, high) in fc.interval_usd.items():
            inside[level] += low <= actual <= high
    pct = Decimal(100)
    return Backtest(horizon_hours, len(origins),
                    (sum(ape, Decimal(0)) / len(ape) * pct).quantize(Decimal("0.01")) if ape else Decimal(0),
                    (sum(ape_line, Decimal(0)) / len(ape_line) * pct).quantize(Decimal("0.01")) if ape_line else Decimal(0),
                    {level: (Decimal(k) / len(origins) * pct).quantize(Decimal("0.1")) for level, k in inside.items()})


def calibration_origins(history_hours: int, horizon_hours: int, origins: int = CALIBRATION_ORIGINS) -> list[int]:
    """The past origins a calibration forecasts from: a day apart, the last one a horizon before the end, none
    with under two days of history before it."""
    first = history_hours - horizon_hours - (origins - 1) * HOURS_PER_DAY
    return list(range(max(first, 2 * HOURS_PER_DAY), history_hours - horizon_hours + 1, HOURS_PER_DAY))


def calibrate(history_usd: Sequence[Decimal], start: datetime, horizon_hours: int, *,
              origins: int = CALIBRATION_ORIGINS, skip_hours: int = 0) -> dict[int, float]:
    """Per level, the half width of the interval relative to the total that that share of the history's own
    past totals needed (split conformal on the horizon's total): on up to ``origins`` earlier origins a day
    apart, each seeing only what came before it, each miss relative to its forecast total, and the
    conformal quantile of those (the ceil((k + 1) x level)-th smallest of k); {} when the history is too
    short for any.  Relative misses, not misses over the bootstrap's own width: a series so regular that
    the bootstrap sees no spread would make one ordinary miss look infinite (and after a step change,
    every interval for weeks)."""
    n = len(history_usd)
    points = calibration_origins(n, horizon_hours, origins)
    if not points:
        return {}
    needed: dict[int, list[float]] = {level: [] for level in LEVELS}
    for origin in points:
        fc = forecast_spend(history_usd[:origin], start - timedelta(hours=n - origin), horizon_hours,
                            skip_hours=skip_hours)
        actual = float(sum(history_usd[origin + skip_hours:origin + horizon_hours], Decimal(0)))
        centre = float(fc.total_usd)
        for level in LEVELS:
            needed[level].append(abs(actual - centre) / centre if centre > 0 else 0.0)
    return {level: sorted(r)[min(len(r), math.ceil((len(r) + 1) * level / 100)) - 1] for level, r in needed.items()}


def calibrated_forecast(history_usd: Sequence[Decimal], start: datetime, horizon_hours: int,
                        skip_hours: int = 0) -> SpendForecast:
    """``forecast_spend`` with its intervals calibrated on the history's own past origins where the history
    is long enough (its note says when it is not: then the intervals are the bootstrap's alone, likely
    too narrow)."""
    widen = calibrate(history_usd, start, horizon_hours, skip_hours=skip_hours)
    fc = forecast_spend(history_usd, start, horizon_hours, widen=widen, skip_hours=skip_hours)
    if not widen:
        needed = horizon_hours + 2 * HOURS_PER_DAY
        return replace(fc, calibration=f"not calibrated: {len(history_usd)} h of history is under the {needed} h a "
                                       f"calibration needs, so the intervals are likely too narrow")
    k = len(calibration_origins(len(history_usd), horizon_hours))
    return replace(fc, calibration=f"calibrated on {k} past forecast{'s' if k != 1 else ''} of its own history")
