"""Spend forecasts (issue 24, item 1): hand-checked series, the fallbacks and what the output says about them,
the rolling-origin backtest, and `hybridspend forecast` against a real PostgreSQL."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest
import yaml

from hybridspend.contracts.events import CostWindow
from hybridspend.forecasting.spend import (
    HOURS_PER_WEEK,
    ForecastError,
    backtest,
    calibrated_forecast,
    forecast_spend,
    straight_line_usd,
)
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_window_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 10, 5, tzinfo=timezone.utc)  # a Monday


def office_hours(hour: int) -> D:
    """$10 an hour at night and on weekends, $30 from 08:00 to 20:00 on weekdays."""
    weekday = (hour // 24) % 7 < 5
    return D(30) if weekday and 8 <= hour % 24 < 20 else D(10)


def test_a_series_with_daily_and_weekly_cycles_is_forecast_on_both():
    history = [office_hours(h) for h in range(3 * HOURS_PER_WEEK)]
    fc = forecast_spend(history, START + timedelta(weeks=3), HOURS_PER_WEEK)
    assert fc.model == "MSTL(season_length=[24, 168])" and fc.note == "daily and weekly seasonality"
    actual = sum((office_hours(h) for h in range(3 * HOURS_PER_WEEK, 4 * HOURS_PER_WEEK)), D(0))  # $2,880
    assert abs(fc.total_usd - actual) / actual < D("0.01")
    # Monday 10:00 and Saturday 10:00 of the next week, to the dollar
    assert abs(fc.point_usd[10] - 30) < 1 and abs(fc.point_usd[5 * 24 + 10] - 10) < 1
    for low, high in fc.interval_usd.values():
        assert low <= fc.total_usd <= high
    assert fc.interval_usd[95][0] <= fc.interval_usd[80][0] and fc.interval_usd[80][1] <= fc.interval_usd[95][1]


def test_short_histories_fall_back_and_say_so():
    four_days = [office_hours(h) for h in range(96)]
    fc = forecast_spend(four_days, START + timedelta(days=4), 24)
    assert fc.model == "MSTL(season_length=24)"
    assert fc.note == "daily seasonality only: 96 h of history is under the two weeks a weekly season needs"
    day = [D(4), D(6)] * 15  # 30 hours: too short for any season, the mean hour ($5), flat
    fc = forecast_spend(day, START + timedelta(hours=30), 10)
    assert fc.model == "mean hour" and fc.point_usd == (D(5),) * 10 and fc.total_usd == 50
    assert fc.note.startswith("30 h of history is too short for a daily season")
    hours = forecast_spend([D(1), D(3), D(2), D(2), D(2)], START, 30)  # under a day: single hours are drawn
    assert hours.total_usd == 60 and hours.interval_usd[95][0] <= 60 <= hours.interval_usd[95][1]
    with pytest.raises(ForecastError, match="no hours of spend"):
        forecast_spend([], START, 10)
    with pytest.raises(ForecastError, match="from 1 hour to a year"):
        forecast_spend(day, START, 0)


def test_the_probability_of_exceeding_an_amount_falls_as_the_amount_rises():
    rng = random.Random(3)
    history = [office_hours(h) + D(rng.randint(-3, 3)) for h in range(3 * HOURS_PER_WEEK)]
    fc = forecast_spend(history, START + timedelta(weeks=3), 48)
    assert fc.probability_above(D(0)) == 1 and fc.probability_above(fc.total_usd * 2) == 0
    low, high = fc.interval_usd[80]
    assert fc.probability_above(low) >= D("0.89") and fc.probability_above(high) <= D("0.11")
    assert fc.probability_above(low) >= fc.probability_above(fc.total_usd) >= fc.probability_above(high)


def test_the_chance_of_exceeding_an_amount_agrees_with_the_interval_even_on_a_growing_series():
    rng = random.Random(3)  # spend growing 20 % a month, with a daily cycle and noise: in-sample errors lean one way
    hours = [D(str(round((60 + 20 * math.sin(h / 24 * 2 * math.pi)) * (1 + 0.2 * h / 720) + rng.gauss(0, 3), 2)))
             for h in range(24 * 35)]
    fc = calibrated_forecast(hours, datetime(2026, 11, 5, 13, tzinfo=timezone.utc), 24 * 10)
    low, high = fc.interval_usd[80]
    assert fc.probability_above(high) == D("0.1") and fc.probability_above(low) == D("0.9")
    assert fc.probability_above(fc.total_usd) == D("0.5")
    # the band's points are the ends of the forecast's days (it starts at 13:00 UTC) and its end
    assert [h for h, *_ in fc.band][:2] == [11, 35] and fc.band[-1][0] == 240


def test_next_months_total_counts_only_its_own_hours():
    history = [office_hours(h) for h in range(3 * HOURS_PER_WEEK)]
    both = forecast_spend(history, START + timedelta(weeks=3), 2 * HOURS_PER_WEEK)
    second = forecast_spend(history, START + timedelta(weeks=3), 2 * HOURS_PER_WEEK, skip_hours=HOURS_PER_WEEK)
    assert second.start == START + timedelta(weeks=4) and len(second.point_usd) == HOURS_PER_WEEK
    assert second.total_usd == sum(both.point_usd[HOURS_PER_WEEK:], D(0))


def test_the_straight_line_extrapolates_the_months_mean_hour():
    # 10 hours of the month at $3 after 5 of the month before at $100: 3 x 24
    assert straight_line_usd([D(100)] * 5 + [D(3)] * 10 + [D(3)] * 14, 5, 24) == 72


def weekly_series(weeks: int, seed: int = 7) -> list[D]:
    """Office hours with noise, and a step up of $15 an hour from the middle on."""
    rng = random.Random(seed)
    n = weeks * HOURS_PER_WEEK
    return [max(D(0), office_hours(h) + (D(15) if h >= n // 2 else D(0)) + D(str(round(rng.gauss(0, 3), 2))))
            for h in range(n)]


@pytest.mark.slow
def test_the_backtest_beats_the_straight_line_on_weekly_cycles():
    bt = backtest(weekly_series(5), START, horizon_hours=HOURS_PER_WEEK, step_hours=48)
    assert bt.origins == 8  # hours 336, 384, ..., 672: two weeks of history, then every 2 days to a week before the end
    assert bt.mape_pct < bt.straight_line_mape_pct
    assert set(bt.coverage_pct) == {80, 95} and all(0 <= c <= 100 for c in bt.coverage_pct.values())


def test_a_calibrated_forecast_widens_its_intervals_or_says_it_could_not():
    series = weekly_series(4)
    short = calibrated_forecast(series[:200], START + timedelta(hours=200), HOURS_PER_WEEK)
    assert short.calibration.startswith("not calibrated: 200 h of history is under the 216 h a calibration needs")
    plain = forecast_spend(series, START + timedelta(weeks=4), 24)
    calibrated = calibrated_forecast(series, START + timedelta(weeks=4), 24)
    assert calibrated.total_usd == plain.total_usd
    def width(fc):
        return fc.interval_usd[80][1] - fc.interval_usd[80][0]

    assert width(calibrated) >= width(plain) > 0


def _windows(weeks: int) -> list[CostWindow]:
    out = []
    for hour in range(weeks * HOURS_PER_WEEK):
        start = START + timedelta(hours=hour)
        ms = int(start.timestamp() * 1000)
        for team, usd in (("ml", office_hours(hour)), ("search", D(5))):
            out.append(CostWindow(
                event_id=CostWindow.make_id(f"n-{team}", team, "onprem", "A100", ms), workload=f"{team}-job",
                team=team, environment="onprem", gpu_class="A100", resource=f"n-{team}", window_start_ms=ms,
                window_ms=3_600_000, allocated_gpu_ms=3_600_000, busy_gpu_ms=1_800_000, metered_gpu_ms=3_600_000,
                energy_mj=0, sample_count=60, first_ms=ms, last_ms=ms + 3_600_000, cost_usd=usd))
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_forecast_reads_the_stored_hours_and_weighs_the_budget(tmp_path, database):
    migrate(database)
    batch = Batch()
    for w in _windows(3):  # 2026-10-05 to 2026-10-26, Monday to Monday
        batch.add("cost_windows", cost_window_row(w))
    with psycopg.connect(database) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"database": {"dsn": database},
                                                     "budgets": {"ml": 5000, "search": 100_000}}))

    def forecast(*args):
        return subprocess.run([sys.executable, "-m", "hybridspend.cli", "forecast", "--at", "2026-10-26", *args,
                               "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, cwd=ROOT,
                              timeout=300)

    done = forecast("--team", "ml", "--json")
    assert done.returncode == 0, done.stderr
    (ml,) = json.loads(done.stdout)["forecasts"]
    assert (ml["scope"], ml["history_hours"], ml["month"]) == ("ml", 3 * HOURS_PER_WEEK, "2026-10")
    assert ml["model"] == "MSTL(season_length=[24, 168])"
    # October so far: three weeks of office hours, 3 x (5 x (12 x 30 + 12 x 10) + 2 x 24 x 10) = $8,640
    assert D(ml["month_to_date_usd"]) == 8640
    rest = ml["rest_of_month"]  # 2026-10-26 00:00 to November: 6 days, Monday to Saturday
    assert (rest["from"], rest["hours"]) == ("2026-10-26T00:00:00Z", 144)
    expected = sum((office_hours(h) for h in range(3 * HOURS_PER_WEEK, 3 * HOURS_PER_WEEK + 144)), D(0))  # $2,640
    assert abs(D(rest["total_usd"]) - expected) / expected < D("0.02")
    assert D(ml["month_total_usd"]) == D(ml["month_to_date_usd"]) + D(rest["total_usd"])
    # 8,640 + ~2,640 against a budget of 5,000: certain to be exceeded
    assert D(ml["budget_overrun_probability"]) == 1
    assert ml["next_month"]["month"] == "2026-11" and ml["next_month"]["hours"] == 30 * 24
    # a month ahead needs more than three weeks to calibrate; the rest of this one had 8 past origins
    assert ml["next_month"]["calibration"].startswith("not calibrated: 504 h of history is under the")
    assert rest["calibration"] == "calibrated on 8 past forecasts of its own history"

    text = forecast()
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("total: 504 h of hourly spend, MSTL(season_length=[24, 168])")
    assert "search: 504 h" in text.stdout and "budget $100,000: 0% likely to be exceeded this month" in text.stdout

    # the alerter's budget check: the same month, forecast in its background thread
    from hybridspend.alerts.forecaster import BudgetForecaster

    forecaster = BudgetForecaster(database)
    at = datetime(2026, 10, 26, tzinfo=timezone.utc)
    forecaster.request(at, [("ml", D(5000)), ("search", D(100_000)), ("nobody", D(1))])
    forecaster.wait(120)
    latest = forecaster.latest(at)
    assert forecaster.latest(datetime(2026, 11, 1, tzinfo=timezone.utc)) == {}  # never for another month
    assert set(latest) == {"ml", "search"}  # a team without a day of history gets the straight line
    assert latest["ml"].total_usd == D(ml["month_total_usd"]) and latest["ml"].overrun_probability == 1
    assert latest["ml"].low_usd == D(ml["month_total_intervals_usd"]["80"][0])
    assert latest["search"].overrun_probability == 0
    # what Grafana's band draws: stored as forecast, from month to date at the hour to the month's total, day by day
    with psycopg.connect(database) as conn:
        band = conn.execute("SELECT at, spend_usd, low_80_usd, high_80_usd, overrun_probability FROM spend_forecasts"
                            " WHERE team = 'ml' AND month = '2026-10-01' ORDER BY at").fetchall()
    assert band[0][:4] == (at, D(8640), D(8640), D(8640)) and len(band) == 1 + 6  # now, then the end of each day
    assert band[-1][0] == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert band[-1][1:] == (latest["ml"].total_usd, latest["ml"].low_usd, latest["ml"].high_usd, D(1))
    assert all(low <= spend <= high for _, spend, low, high, _ in band)
    forecaster.request(at + timedelta(minutes=30), [("ml", D(5000))])  # the same hour: nothing new to compute
    assert forecaster._thread is not None and not forecaster._thread.is_alive()

    missing = forecast("--team", "nobody")
    assert missing.returncode != 0 and "no spend of team 'nobody'" in missing.stderr
    assert not math.isnan(float(ml["next_month"]["total_usd"]))
