"""Spend forecasts, backtested: each scenario runs through the real pipeline (`hybridspend simulate`), its
hourly spend (all teams, idle owned capacity included) is read back from the database, and a rolling-origin
backtest forecasts the next week's total from every second day after the first two weeks (``--quick``:
every fourth), each origin seeing only the hours before it.

Figures per scenario: the mean absolute percentage error of the forecast total and of the straight line the
budget check draws today (the month's mean hour so far, times the horizon), and the share of origins whose
actual total fell inside the 80 % and 95 % intervals (their target: within 5 points of nominal).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from hybridspend.contracts.config import Config
from hybridspend.forecasting.spend import HOURS_PER_DAY, HOURS_PER_WEEK, backtest
from hybridspend.infra.local import local_database
from hybridspend.storage.queries import hourly_spend

SCENARIOS = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "scenarios"
NAMES = ("hybrid-month", "weekly-cycles")


def _series(scenario: Path, state: Path) -> tuple[datetime, list]:
    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "simulate", str(scenario), "--json",
                           "--state-dir", str(state)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"simulate {scenario.name} failed: {done.stderr[-2000:]}")
    with local_database(Config(state_dir=state)) as dsn, psycopg.connect(dsn) as conn:
        first, hours = hourly_spend(conn, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))
    # up to the last hour with spend: the simulation ends there, the hours after it are not "no spend"
    while hours and hours[-1] == 0:
        hours.pop()
    return first, hours


def run(quick: bool, say=print) -> dict:
    figures = {}
    for name in NAMES:
        with tempfile.TemporaryDirectory(prefix="hs-bench-forecast-") as tmp:
            first, hours = _series(SCENARIOS / f"{name}.yaml", Path(tmp))
        started = time.perf_counter()
        bt = backtest(hours, first, horizon_hours=HOURS_PER_WEEK, step_hours=(4 if quick else 2) * HOURS_PER_DAY)
        key = name.replace("-", "_")
        figures.update({
            f"forecast_{key}_mape_pct": float(bt.mape_pct),
            f"forecast_{key}_straight_line_mape_pct": float(bt.straight_line_mape_pct),
            f"forecast_{key}_coverage_80_pct": float(bt.coverage_pct[80]),
            f"forecast_{key}_coverage_95_pct": float(bt.coverage_pct[95]),
            f"forecast_{key}_mape_ratio": float(bt.mape_pct / bt.straight_line_mape_pct)
            if bt.straight_line_mape_pct else 0.0,
        })
        say(f"forecast {name}: {len(hours)} h, {bt.origins} origins, next week's total: MAPE {bt.mape_pct} % "
            f"(straight line {bt.straight_line_mape_pct} %), inside the 80 % interval {bt.coverage_pct[80]} %, "
            f"the 95 % {bt.coverage_pct[95]} % ({time.perf_counter() - started:.0f} s)")
    return figures


if __name__ == "__main__":
    run("--quick" in sys.argv)
