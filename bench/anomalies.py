"""Anomaly detection, measured on labelled anomalies.

1. ``anomaly-month.yaml`` (20 anomalies among daily and weekly cycles) and ``hybrid-month.yaml`` (none) run
   through the real pipeline (`hybridspend simulate`): precision, recall and median detection delay per kind
   as the worker detects them, and the false alarms on the month without anomalies.
2. The choice of detector, justified by measurement: the windows of both months, read back from the
   database, go offline through the two statistical kinds ($ per busy GPU-hour per workload, spend per
   team and hour) with four detectors behind the same episode rules:

   * ``seasonal``: the worker's (anomalies.detect.SeasonalDetector: robust statistics by hour of the week);
   * ``rolling``: the same robust score against the median and MAD of the last 24 hours (no seasons);
   * ``river-gaussian``: river's ``anomaly.GaussianScorer`` over the last week (an online Gaussian), a rise
     scoring above the Gaussian equivalent of 4 spreads;
   * ``river-hst``: river's ``HalfSpaceTrees`` on the value, hour of day and day of week (min-max scaled),
     thresholded by river's ``QuantileFilter`` at its 99th percentile.

``python -m bench.anomalies`` prints both; ``hybridspend bench`` records the first in bench/results.json.
"""

from __future__ import annotations

import math
import sys
import time
from decimal import Decimal
from pathlib import Path

from hybridspend.anomalies.detect import (
    SPEND_RATE,
    USD_PER_BUSY_GPU_HOUR,
    Detected,
    Injected,
    SeasonalDetector,
    Settings,
    score_detections,
)
from hybridspend.collectors.scenario import Simulation, load_scenario, scenario_config

SCENARIOS = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "scenarios"
HOUR_MS = 3_600_000
KINDS = ("held_idle", "usd_per_busy_gpu_hour", "spend_rate", "silent")


def _series(conn) -> dict[tuple[str, str, str, str], list[tuple[int, float, float]]]:
    """(kind, subject, environment, GPU class) -> [(window start, value, what the window's excess over a baseline b costs an hour per
    unit of b)] for the two statistical kinds, from the stored cost windows, in time order."""
    out: dict[tuple[str, str], list] = {}
    rows = conn.execute(
        "SELECT workload, environment, gpu_class, team, window_start, sum(allocated_gpu_ms), sum(busy_gpu_ms),"
        "       sum(cost_usd)"
        "  FROM cost_windows WHERE basis = 'estimated' AND workload <> 'idle'"
        " GROUP BY workload, environment, gpu_class, team, window_start ORDER BY window_start").fetchall()
    teams: dict[str, dict[int, float]] = {}
    for workload, environment, gpu_class, team, start, allocated, busy, cost in rows:
        ws, allocated, busy = int(start.timestamp() * 1000), int(allocated), int(busy)
        if team:
            teams.setdefault(team, {})
            teams[team][ws] = teams[team].get(ws, 0.0) + float(cost)
        if allocated and busy and 100 * busy / allocated >= 5:  # held idle has no price per busy hour
            busy_hours = busy / HOUR_MS
            out.setdefault((USD_PER_BUSY_GPU_HOUR, workload, environment, gpu_class), []).append(
                (ws, float(cost) / busy_hours, busy_hours))
    for team, by_ws in teams.items():
        first, last = min(by_ws), max(by_ws)
        out[(SPEND_RATE, team, "", "")] = [(ws, by_ws.get(ws, 0.0), 1.0) for ws in range(first, last + HOUR_MS, HOUR_MS)]
    return out


class _Rolling:
    """Robust score against the last 24 hours, no seasons."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def judge(self, ws: int, value: float, settings: Settings) -> tuple[bool, float]:
        recent = self.values[-24:]
        if len(recent) < 24:
            return False, 0.0
        med = sorted(recent)[12]
        spread = max(1.4826 * sorted(abs(v - med) for v in recent)[12], settings.min_relative_change * abs(med))
        return spread > 0 and value > med and (value - med) / spread >= settings.score_threshold, med

    def learn(self, ws: int, value: float) -> None:
        self.values.append(value)


class _RiverGaussian:
    THRESHOLD = math.erf(4 / math.sqrt(2))  # 2 |CDF - 0.5| of 4 standard deviations

    def __init__(self) -> None:
        from river import anomaly

        self.model = anomaly.GaussianScorer(window_size=168, grace_period=168)
        self.seen: list[float] = []

    def judge(self, ws: int, value: float, settings: Settings) -> tuple[bool, float]:
        mean = sum(self.seen[-168:]) / len(self.seen[-168:]) if self.seen else 0.0
        try:
            score = self.model.score_one(None, value)
        except (TypeError, ZeroDivisionError):  # a window of equal values: no variance (river takes its root)
            score = 1.0 if len(self.seen) >= 168 and value != mean else 0.0
        return value > mean and score >= self.THRESHOLD, mean

    def learn(self, ws: int, value: float) -> None:
        self.model.learn_one(None, value)
        self.seen.append(value)


class _RiverHalfSpaceTrees:
    def __init__(self) -> None:
        from river import anomaly, compose, preprocessing

        self.model = anomaly.QuantileFilter(
            compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42, window_size=168)), q=0.99)
        self.seen: list[float] = []
        self.n = 0

    @staticmethod
    def _features(ws: int, value: float) -> dict:
        hour = ws // HOUR_MS
        return {"value": value, "hour": (hour % 24) / 24, "weekday": ((hour // 24 + 3) % 7) / 7}

    def judge(self, ws: int, value: float, settings: Settings) -> tuple[bool, float]:
        x = self._features(ws, value)
        if self.n < 168:
            return False, 0.0
        mean = sum(self.seen[-168:]) / len(self.seen[-168:])
        return value > mean and self.model.classify(self.model.score_one(x)), mean

    def learn(self, ws: int, value: float) -> None:
        self.model.learn_one(self._features(ws, value))
        self.seen.append(value)
        self.n += 1


def _episodes(kind: str, subject: str, windows: list, make, settings: Settings) -> list[Detected]:
    """The episodes ``make()``'s detector finds in one series, under the worker's rules: an episode opens on
    an anomalous window worth ``min_usd_per_hour``, ends after ``clear_windows`` normal ones; anomalous
    values are not learnt."""
    if make is None:  # the worker's own detector, rules included
        d, out = SeasonalDetector(), []
        for ws, value, per_unit in windows:
            for f in d.observe(kind, ws, HOUR_MS, value, lambda c, v=value, u=per_unit: Decimal(str((v - c) * u)),
                               settings, min_spread=float(settings.min_usd_per_hour) if kind == SPEND_RATE else 0.0):
                if f.state == "open":
                    out.append(Detected(kind, subject, f.episode.start_ms, f.episode.detected_ms, None))
        return out
    detector, out, open_since, normal = make(), [], None, 0
    for ws, value, per_unit in windows:
        anomalous, center = detector.judge(ws, value, settings)
        anomalous = anomalous and (value - center) * per_unit >= float(settings.min_usd_per_hour)
        if anomalous:
            normal = 0
            if open_since is None:
                open_since = ws
                out.append(Detected(kind, subject, ws, ws + HOUR_MS, None))
            continue
        detector.learn(ws, value)
        if open_since is not None:
            normal += 1
            if normal >= settings.clear_windows:
                open_since, normal = None, 0
    return out


METHODS = {"seasonal": None, "rolling": _Rolling, "river-gaussian": _RiverGaussian,
           "river-hst": _RiverHalfSpaceTrees}


def _simulate(name: str, say) -> tuple[dict, list[Injected], dict]:
    from hybridspend.contracts.config import Config
    from hybridspend.simulate import run_scenario

    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    series: dict = {}
    started = time.perf_counter()
    result = run_scenario(scenario, on_settled=lambda conn: series.update(_series(conn)))
    say(f"anomalies: simulated {name} in {time.perf_counter() - started:.0f} s")
    config = Config.model_validate(scenario_config(scenario, Path("/nonexistent")))
    return result, Simulation(scenario, config.catalog()).injected(), series


def run(quick: bool = False, say=print, compare: bool = False) -> dict:
    """The detection figures (two month-long simulations: ``quick`` changes nothing, there is no shorter
    month with as many anomalies); ``compare`` adds the comparison of detectors."""
    settings = Settings()
    figures: dict = {}
    offline: dict[str, dict] = {}
    for name in ("anomaly-month", "hybrid-month"):
        result, injected, series = _simulate(name, say)
        a = result["anomalies"]
        if name == "anomaly-month":
            by_kind = [a["by_kind"].get(kind, {}) for kind in KINDS]
            figures["anomaly_min_precision"] = min(k.get("precision") or 0.0 for k in by_kind)
            figures["anomaly_min_recall"] = min(k.get("recall") or 0.0 for k in by_kind)
            figures["anomaly_max_median_delay_windows"] = max(k.get("median_delay_windows") or 99.0 for k in by_kind)
            for kind in KINDS:
                k = a["by_kind"].get(kind, {})
                figures[f"anomaly_{kind}_precision"] = k.get("precision") or 0.0
                figures[f"anomaly_{kind}_recall"] = k.get("recall") or 0.0
                figures[f"anomaly_{kind}_median_delay_windows"] = k.get("median_delay_windows") or 0.0
                say(f"anomalies {kind}: {k.get('injected')} put in, precision {k.get('precision')}, recall "
                    f"{k.get('recall')}, median delay {k.get('median_delay_windows')} windows")
        else:
            figures["anomaly_false_alarms_hybrid_month"] = len(a["detected"])
            say(f"anomalies: {len(a['detected'])} on hybrid-month's normal cycles")
        if compare:
            windows = sum(len(w) for w in series.values())
            for method, make in METHODS.items():
                started = time.perf_counter()
                found = [d for (kind, subject, *_), w in sorted(series.items())
                         for d in _episodes(kind, subject, w, make, settings)]
                us_per_window = (time.perf_counter() - started) / windows * 1e6
                stat = [i for i in injected if i.kind in (SPEND_RATE, USD_PER_BUSY_GPU_HOUR)]
                offline.setdefault(method, {})[name] = (score_detections(stat, found, HOUR_MS), len(found),
                                                        us_per_window)
    if compare:
        say("\noffline, the same windows through each detector (statistical kinds):")
        say(f"  {'detector':<16} {'kind':<22} {'precision':>9} {'recall':>7} {'delay':>6}  {'µs/window':>9}"
            f"   episodes on hybrid-month (false alarms)")
        for method, by_name in offline.items():
            scores, _, us = by_name["anomaly-month"]
            _, false_alarms, _ = by_name["hybrid-month"]
            for kind in (USD_PER_BUSY_GPU_HOUR, SPEND_RATE):
                k = scores.get(kind, {})
                say(f"  {method:<16} {kind:<22} {k.get('precision') or 0:>9.2f} {k.get('recall') or 0:>7.2f} "
                    f"{k.get('median_delay_windows') or 0:>6.1f}  {us:>9.0f}   {false_alarms}")
    return figures


if __name__ == "__main__":
    run("--quick" in sys.argv, compare=True)
