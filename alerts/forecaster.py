"""Each budgeted team's month, forecast off the alerter's loop.

A forecast takes seconds (statsforecast's MSTL, calibrated on the series' own past), far longer than an
alert may wait, so it runs in a thread with its own database connection, at most once per hour of event
time; the budget check reads the latest finished ones and draws the straight line for a team that has
none yet.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg

from hybridspend.forecasting.spend import HOURS_PER_DAY, ForecastError, calibrated_forecast
from hybridspend.storage import queries

from .checks import BudgetForecast

log = logging.getLogger(__name__)

HISTORY = timedelta(days=182)


def team_month_forecast(conn: psycopg.Connection, team: str, budget_usd: Decimal,
                        now: datetime) -> BudgetForecast | None:
    """The month of ``team`` as of ``now`` (event time): its whole hours so far and the rest forecast; None with
    under a day of history or no hour of the month left."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    month = hour.replace(day=1, hour=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    rest_h = int((next_month - hour).total_seconds() // 3600)
    first, hours = queries.hourly_spend(conn, hour - HISTORY, hour, team)
    if first is None or len(hours) < HOURS_PER_DAY or rest_h == 0:
        return None
    so_far = sum(hours[max(0, int((month - first).total_seconds() // 3600)):], Decimal(0))
    fc = calibrated_forecast(hours, hour, rest_h)
    low, high = fc.interval_usd[80]
    band = (queries.ForecastPoint(hour, so_far, so_far, so_far, so_far, so_far),) + tuple(  # from where it stands
        queries.ForecastPoint(hour + timedelta(hours=h), so_far + point, so_far + levels[80][0],
                              so_far + levels[80][1], so_far + levels[95][0], so_far + levels[95][1])
        for h, point, levels in fc.band)
    return BudgetForecast(so_far + fc.total_usd, so_far + low, so_far + high,
                          fc.probability_above(budget_usd - so_far), f"{fc.model}, {fc.calibration}", band)


class BudgetForecaster:
    """Forecasts the budgeted teams' months in a background thread; ``latest`` is what has finished."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._latest: tuple[datetime | None, dict[str, BudgetForecast]] = (None, {})  # (their hour, forecasts)
        self._hour: datetime | None = None  # the event hour the running (or latest) forecasts are of
        self._thread: threading.Thread | None = None

    def latest(self, now: datetime) -> dict[str, BudgetForecast]:
        """The latest finished forecasts, if they are of ``now``'s month (a month's forecast never speaks for
        the next one: the straight line stands in until this month's are done)."""
        hour, forecasts = self._latest
        if hour is None or (hour.year, hour.month) != (now.year, now.month):
            return {}
        return dict(forecasts)

    def request(self, now: datetime, budgets: list[tuple[str, Decimal]]) -> None:
        """Start forecasting ``budgets`` (team, budget) as of ``now`` unless that hour is done or running."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        if hour == self._hour or (self._thread is not None and self._thread.is_alive()) or not budgets:
            return
        self._hour = hour
        self._thread = threading.Thread(target=self._run, args=(now, list(budgets)), name="budget-forecasts",
                                        daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    @staticmethod
    def _store(conn: psycopg.Connection, team: str, now: datetime, fc: BudgetForecast) -> None:
        """For Grafana's band; a failure to store it leaves the notice its forecast."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        try:
            queries.store_month_forecast(conn, team, hour.replace(day=1, hour=0), hour, list(fc.band),
                                         fc.overrun_probability, fc.model)
        except psycopg.OperationalError:
            raise  # the database went away: the outer handler says so
        except psycopg.Error as exc:
            log.warning("budget forecast of %s not stored for the dashboards: %s", team, str(exc).splitlines()[0])

    def _run(self, now: datetime, budgets: list[tuple[str, Decimal]]) -> None:
        out = {}
        try:
            with psycopg.connect(self.dsn, connect_timeout=10, autocommit=True) as conn:
                for team, budget in budgets:
                    try:
                        fc = team_month_forecast(conn, team, budget, now)
                    except psycopg.Error:
                        raise
                    except ForecastError as exc:
                        log.warning("budget forecast of %s: %s", team, exc)
                        continue
                    except Exception:  # one team's failure leaves the others theirs
                        log.exception("budget forecast of %s failed; the straight line stands in for it", team)
                        continue
                    if fc is not None:
                        out[team] = fc
                        self._store(conn, team, now, fc)
        except psycopg.Error as exc:
            log.warning("budget forecasts: database unavailable (%s); the straight line stands in",
                        str(exc).splitlines()[0])
            self._latest = (None, {})
            self._hour = None  # try again at the next check
            return
        self._latest = (now.replace(minute=0, second=0, microsecond=0), out)
