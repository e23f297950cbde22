"""Streaming anomaly detection: the seasonal detectors (anomalies/detect.py), the worker's use of them
(streams/watch.py through the decision processor), the alerter's routing and its one alert per episode.

Hand-checked cases: one held-idle episode, one price jump, one spend surge, one silent host; the
month-long measurement (precision, recall, delay) is tests/test_anomaly_scenario.py.
"""

from __future__ import annotations

from decimal import Decimal as D

import psycopg
import pytest
import yaml

from hybridspend.alerts.alerter import Alerter
from hybridspend.anomalies.detect import (
    Detected,
    HeldIdle,
    Injected,
    Seasonal,
    SeasonalDetector,
    Settings,
    score_detections,
)
from hybridspend.contracts.config import Config, load_config
from hybridspend.contracts.events import Anomaly, CostWindow, Watermark
from hybridspend.storage.db import migrate
from hybridspend.streams.processing import DecisionProcessor, PartitionClock, WorkloadState
from hybridspend.streams.watch import TeamState, returned, silence_findings, team_partition

HOUR = 3_600_000
MONDAY = 1_791_158_400_000  # 2026-10-05 00:00 UTC, a Monday
SETTINGS = Settings()


def test_the_hour_of_the_week_starts_on_monday_utc():
    assert Seasonal().slot(MONDAY // HOUR) == "0"
    assert Seasonal().slot(MONDAY // HOUR + 6 * 24 + 23) == "167"  # Sunday 23:00
    quarters = Seasonal(per_hour=4)  # windows of 15 minutes or less: a slot per quarter of an hour
    assert quarters.slot(MONDAY // (HOUR // 4) + 1) == "1" and quarters.slot(MONDAY // (HOUR // 4) - 1) == "671"


def test_quarter_hour_windows_keep_a_baseline_per_quarter():
    d = SeasonalDetector()
    # a cron job spends $400 in the first quarter of every hour, nothing in the other three: no anomaly
    found = []
    for q in range(4 * 24 * 15):
        v = 400.0 if q % 4 == 0 else 0.0
        found += d.observe("spend_rate", MONDAY + q * HOUR // 4, HOUR // 4, v, lambda c, v=v: D(str(round(v - c, 6))),
                           SETTINGS, min_spread=1.0)
    assert found == []
    assert len(d.series.week) == 672  # 168 hours x 4 quarters, whatever the window


def flat(detector: SeasonalDetector, hours: int, value, start: int = MONDAY):
    """``value(hour)`` fed hourly from ``start``: every finding."""
    found = []
    for h in range(hours):
        v = value(h)
        for f in detector.observe("spend_rate", start + h * HOUR, HOUR, v, lambda c, v=v: D(str(round(v - c, 6))),
                                  SETTINGS):
            found.append((h, f))
    return found


def test_nothing_is_judged_in_the_first_week_then_a_rise_of_the_same_hour_is():
    d = SeasonalDetector()
    assert flat(d, 168, lambda h: 100.0 if h % 24 == 12 else 10.0) == []  # even a 10x jump every noon: warm-up
    # week 2, Monday 12:00: the same hour last week was 100, the upper quartile of the last days' 12:00 too
    assert flat(d, 13, lambda h: 100.0 if h % 24 == 12 else 10.0, start=MONDAY + 168 * HOUR) == []
    (h, f), = flat(d, 1, lambda h: 20.0, start=MONDAY + 181 * HOUR)  # Monday 13:00 at 20 against 10
    b = 10.0  # spread at least 10 % of it: score (20 - 10) / 1 = 10
    assert f.state == "open" and f.episode.baseline == b and f.episode.score == pytest.approx(10)
    assert f.episode.usd_so_far == D(10) and f.episode.usd_per_day == D(240)  # $10 more an hour, a day of it


def test_a_weekday_only_cycle_is_no_anomaly_on_the_weekend_or_on_monday():
    d = SeasonalDetector()
    office = lambda h: 50.0 if (h // 24) % 7 < 5 and 8 <= h % 24 < 20 else 5.0  # noqa: E731
    assert flat(d, 5 * 168, office) == []


def test_an_episode_ends_after_two_normal_windows_and_a_lasting_one_is_a_new_level():
    d = SeasonalDetector()
    flat(d, 2 * 168, lambda h: 10.0)
    found = flat(d, 10, lambda h: 30.0 if h < 3 else 10.0, start=MONDAY + 2 * 168 * HOUR)
    assert [(h, f.state) for h, f in found] == [(0, "open"), (4, "closed")]
    assert found[1][1].ended_ms == MONDAY + 2 * 168 * HOUR + 3 * HOUR  # the end of its last anomalous window
    assert found[1][1].episode.usd_so_far == D(60)  # 3 hours at $20 more
    step = flat(d, 30, lambda h: 30.0, start=MONDAY + 3 * 168 * HOUR)
    assert [(h, f.state, f.new_level) for h, f in step] == [(0, "open", False), (23, "closed", True)]
    assert all(v[1:] == [30.0] for v in d.series.week.values())  # the baseline starts again, from the new level


def test_a_window_missing_from_an_episode_neither_ends_it_nor_teaches_the_baseline():
    d = SeasonalDetector()
    flat(d, 2 * 168, lambda h: 10.0)
    start = MONDAY + 2 * 168 * HOUR
    found = flat(d, 2, lambda h: 40.0, start=start)  # anomalous...
    found += flat(d, 2, lambda h: 40.0, start=start + 3 * HOUR)  # ...an hour without a window, anomalous again
    assert [f.state for _, f in found] == ["open"]
    assert all(v[-1] == 10.0 for v in d.series.week.values())  # 40 was never learnt
    # a day without windows: the workload stopped, the episode ended where it was last seen
    (_, closed), = flat(d, 1, lambda h: 10.0, start=start + 30 * HOUR)
    assert closed.state == "closed" and closed.ended_ms == start + 5 * HOUR and closed.basis == "it stopped"


def test_one_held_idle_episode_by_hand():
    idle, s = HeldIdle(), Settings(held_idle_utilization_pct=5, held_idle_minutes=90)
    # 8 GPUs an hour at $4 a GPU-hour: 50 % busy, then 2 % for three hours, then busy again
    windows = [(4, D(32)), (0.16, D(32)), (0.16, D(32)), (0.16, D(32)), (4, D(32))]
    out = [idle.observe(MONDAY + n * HOUR, HOUR, 8 * HOUR, int(busy * HOUR), cost, s)
           for n, (busy, cost) in enumerate(windows)]
    assert out[0] == [] and out[1] == []  # an hour idle is not yet 90 minutes
    (opened,) = out[2]
    assert opened.state == "open" and opened.episode.start_ms == MONDAY + HOUR
    assert opened.episode.detected_ms == MONDAY + 3 * HOUR and opened.episode.usd_so_far == D(64)
    assert opened.episode.usd_per_day == D(768) and opened.episode.observed == pytest.approx(2.0)
    assert out[3] == []  # still the same episode
    (closed,) = out[4]
    assert closed.state == "closed" and closed.ended_ms == MONDAY + 4 * HOUR and closed.episode.usd_so_far == D(96)


def test_rented_time_no_sample_saw_is_no_evidence_of_idleness():
    idle = HeldIdle()
    # a spot instance reclaimed 18 minutes into the window: rented time, no sample, nothing busy
    assert idle.observe(MONDAY, HOUR, 8 * 18 * 60_000, 0, D("3.6"), SETTINGS, observed_ms=0) == []
    assert idle.since_ms is None


def test_a_workload_that_stops_while_held_idle_ends_its_episode_where_it_was_last_seen():
    idle = HeldIdle()
    assert [f.state for f in idle.observe(MONDAY, HOUR, 8 * HOUR, 0, D(32), SETTINGS)] == ["open"]
    # gone for a day, back idle: the first episode ended at its last window, the streak starts again
    found = idle.observe(MONDAY + 25 * HOUR, HOUR, 8 * HOUR, 0, D(32), SETTINGS)
    assert [(f.state, f.ended_ms) for f in found] == [("closed", MONDAY + HOUR), ("open", None)]
    assert found[1].episode.start_ms == MONDAY + 25 * HOUR and found[1].episode.usd_so_far == D(32)


CONFIG = {"cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge",
                            "gpu_model": "A100", "gpu_class": "A100", "gpus_per_instance": 8,
                            "usd_per_hour": {"on_demand": 32}}],
          "thresholds": {"window_seconds": 3600}}


def window(hour: int, cost_usd: D, busy_gpus: float = 4.8, workload: str = "train", team: str = "ml") -> CostWindow:
    start = MONDAY + hour * HOUR
    return CostWindow(f"w{hour}", workload, team, False, "cloud", "A100", "i-1", start, HOUR, 8 * HOUR,
                      int(busy_gpus * HOUR), 8 * HOUR, 0, 3, start, start + HOUR, cost_usd, "estimated", "aws",
                      "p4d.24xlarge", "on_demand")


def stream(windows: list[CostWindow], decider: DecisionProcessor | None = None,
           state: WorkloadState | None = None) -> list[Anomaly]:
    """The windows through the decision processor, closed hour by hour (the state through its table form)."""
    decider = decider or DecisionProcessor(Config.model_validate(CONFIG))
    state = state or WorkloadState()
    out: list[Anomaly] = []
    for w in windows:
        decider.add(state, w)
        decider.close(w.workload, state, w.window_start_ms + HOUR, None, out)
        state = WorkloadState.from_dict(state.to_dict())
    return out


def test_one_price_jump_by_hand():
    # 8 days at $32 an hour, 60 % busy: $6.666667 per busy GPU-hour; then the price rises to $48
    steady = [window(h, D(32)) for h in range(8 * 24)]
    (a,) = stream(steady + [window(8 * 24, D(48))])
    assert (a.kind, a.state, a.subject) == ("usd_per_busy_gpu_hour", "open", "train|cloud|A100")
    assert a.baseline == D("6.666667") and a.observed == D("10.000000")
    assert abs(a.score - 5) < D("0.00001")  # (10 - 6.67) / (10 % of 6.67): the week's hours never varied
    # the excess: $3.33 on each of 4.8 busy GPU-hours, $16 an hour, $384 a day
    assert a.usd_so_far == D("16.000000") and a.usd_per_day_at_stake == D("384.000000")
    assert a.start_ms == MONDAY + 192 * HOUR and a.detected_ms == MONDAY + 193 * HOUR
    assert "pays $10.00 per busy cloud A100 GPU-hour against $6.67 expected" in a.reason


def test_a_held_idle_workload_is_one_episode_and_its_price_is_not_judged_meanwhile():
    steady = [window(h, D(32)) for h in range(8 * 24)]
    idle = [window(192 + h, D(32), busy_gpus=0.08) for h in range(3)]  # 1 % busy
    out = stream(steady + idle + [window(195, D(32))])
    assert [(a.kind, a.state) for a in out] == [("held_idle", "open"), ("held_idle", "closed")]
    assert out[0].usd_so_far == D(32) and out[1].usd_so_far == D(96) and out[1].ended_ms == MONDAY + 195 * HOUR


@pytest.mark.parametrize("team", ["ml", "ml|gpu"])  # keys are split on "|": a team's name may hold one
def test_a_team_surge_is_judged_once_on_the_teams_partition(team):
    config = Config.model_validate(CONFIG)
    owner = team_partition(team, 4)
    deciders = [DecisionProcessor(config) for _ in range(4)]
    clocks, teams = [PartitionClock() for _ in range(4)], [{} for _ in range(4)]
    found: list[list[Anomaly]] = [[] for _ in range(4)]
    for hour in range(8 * 24 + 3):
        start = MONDAY + hour * HOUR
        cost_umicro = 64_000_000 if hour == 8 * 24 else 32_000_000  # two instances for an hour
        mark = Watermark(f"m{hour}", "usage|0", start + HOUR, spend=[(start, team, "i-1", "train", HOUR, cost_umicro)])
        for p in range(4):
            deciders[p].on_watermark(clocks[p], mark, p, 4)
            found[p] += deciders[p].judge_teams(clocks[p], start + HOUR,
                                                lambda t, p=p: teams[p].get(t) or TeamState(),
                                                lambda t, state, p=p: teams[p].__setitem__(t, state))
            deciders[p].forget_idle(clocks[p], start + HOUR)
            teams[p] = {t: TeamState.from_dict(s.to_dict()) for t, s in teams[p].items()}
    assert all(not found[p] and not clocks[p].spend for p in range(4) if p != owner)
    assert [(a.kind, a.state, a.subject) for a in found[owner]] == [("spend_rate", "open", team),
                                                                    ("spend_rate", "closed", team)]
    assert found[owner][0].observed == D(64) and found[owner][0].baseline == D(32)
    assert found[owner][0].usd_per_day_at_stake == D(768)
    assert not clocks[owner].spend  # the windows judged are forgotten


def hours_of_spend(state: TeamState, spend: dict[int, float], through_hour: int) -> list[Anomaly]:
    """``spend`` (hour -> $) judged up to ``through_hour``, the watermark moving an hour at a time."""
    out = []
    for h in range(through_hour):
        out += state.judge("ml", {MONDAY + k * HOUR: int(v * 1_000_000) for k, v in spend.items() if k <= h},
                           MONDAY, HOUR, MONDAY + (h + 1) * HOUR, SETTINGS)
    return out


def test_a_team_that_usually_spends_nothing_is_judged_on_a_dollar_spread():
    state = TeamState()
    (a,) = hours_of_spend(state, {200: 10.0}, 201)  # nothing for 8 days, then $10 an hour
    assert (a.state, a.baseline, a.observed, a.score) == ("open", 0, 10, 10)  # 10 over the $1 floor


def test_a_week_without_spend_keeps_the_team_on_the_windows_grid():
    state = TeamState()
    state.judge("ml", {MONDAY: 5_000_000}, MONDAY, HOUR, MONDAY + HOUR, SETTINGS)
    state.judge("ml", {}, MONDAY, HOUR, MONDAY + 20 * 24 * HOUR + 12_345, SETTINGS)  # a watermark off the grid
    assert (state.closed_through_ms - MONDAY) % HOUR == 0
    assert state.closed_through_ms == MONDAY + 20 * 24 * HOUR - HOUR  # through the last complete window


def test_an_episode_of_a_very_long_name_keeps_its_ids_within_a_label():
    from hybridspend.streams.watch import episode_id_of

    long = episode_id_of("held_idle", "w" * 300 + "|cloud|A100", MONDAY)
    assert len(long + "|closed") <= 253 and long.startswith("held_idle|sha256:")
    assert long == episode_id_of("held_idle", "w" * 300 + "|cloud|A100", MONDAY)  # the same on every worker
    assert episode_id_of("held_idle", "train|cloud|A100", MONDAY) == f"held_idle|train|cloud|A100|{MONDAY}"


def test_a_silent_host_opens_one_episode_and_closes_when_its_samples_return():
    seen, silent = {"node-1": [MONDAY, 17_400_000], "node-2": [MONDAY + 30 * 60_000, 0]}, {}
    assert silence_findings(seen, silent, MONDAY + 5 * 60_000, SETTINGS) == []  # 5 minutes: not yet 10
    (a,) = silence_findings(seen, silent, MONDAY + 30 * 60_000, SETTINGS)
    assert (a.kind, a.state, a.subject, a.start_ms) == ("silent", "open", "node-1", MONDAY)
    assert a.observed == D(30) and a.usd_per_day_at_stake == D("417.600000")  # $17.40 an hour unaccounted
    seen["node-2"][0] = MONDAY + HOUR  # node-2 keeps reporting
    assert silence_findings(seen, silent, MONDAY + HOUR, SETTINGS) == []  # node-1: one episode, however long
    back = returned("node-1", seen, silent, MONDAY + 2 * HOUR, SETTINGS)
    assert back.state == "closed" and back.ended_ms == MONDAY + 2 * HOUR and back.usd_so_far == D("34.800000")


def test_scoring_counts_a_detection_of_another_subject_or_kind_as_a_false_alarm():
    injected = [Injected("held_idle", "train", 0, 3 * HOUR), Injected("held_idle", "llm", 10 * HOUR, 12 * HOUR)]
    detected = [Detected("held_idle", "train", 0, 2 * HOUR, 3 * HOUR), Detected("held_idle", "serve", 0, HOUR, None),
                Detected("spend_rate", "ml", 0, HOUR, None)]
    k = score_detections(injected, detected, HOUR)
    assert k["held_idle"]["precision"] == 0.5 and k["held_idle"]["recall"] == 0.5
    assert k["held_idle"]["median_delay_windows"] == 2 and k["held_idle"]["missed"] == [f"llm@{10 * HOUR}"]
    assert k["spend_rate"]["precision"] == 0.0 and k["spend_rate"]["recall"] is None


def anomaly(usd_per_day: str, state: str = "open") -> Anomaly:
    episode = Anomaly.make_episode_id("held_idle", "train|cloud|A100", MONDAY)
    return Anomaly(f"{episode}|{state}", episode, "held_idle", state, "train|cloud|A100", MONDAY, MONDAY + HOUR,
                   D(1), D(5), D("0.5"), "utilization_pct", D(32), D(usd_per_day), "<@U1> held idle",
                   MONDAY + 2 * HOUR if state == "closed" else None, "train", "ml", "A100", "cloud")


@pytest.mark.integration
def test_the_alerter_sends_an_episode_once_to_platform_and_to_finance_above_the_threshold(tmp_path, database):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"anomalies": {"finance_usd_per_day": 500}, "alerts": {
        "routes": [{"name": "fin", "audience": "finance"}, {"name": "ops", "audience": "platform"}]}}))
    migrate(database)
    alerter = Alerter(load_config(path, {}), database, say=lambda m: None)
    big = anomaly("768")
    assert alerter.enqueue_anomalies([big, big, anomaly("768", "closed")]) == 2  # one per route, the end not sent
    assert alerter.enqueue_anomalies([big]) == 0  # read again after a restart: nothing new
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT route, subject, payload->>'text' FROM alert_outbox ORDER BY route").fetchall()
    assert [(r, s) for r, s, _ in rows] == [("fin", big.episode_id), ("ops", big.episode_id)]
    assert "&lt;@U1&gt;" in rows[0][2]  # a label from a user's cluster is escaped, never a mention
    small = Anomaly(**{**{f: getattr(big, f) for f in big.__struct_fields__}, "episode_id": "held_idle|x|1",
                       "event_id": "held_idle|x|1|open", "usd_per_day_at_stake": D(100)})
    assert alerter.enqueue_anomalies([small]) == 1  # platform only


def test_the_anomaly_contract_refuses_a_closed_episode_without_its_end():
    from hybridspend.contracts.events import EventError

    payload = anomaly("1").encode().replace(b'"state":"open"', b'"state":"closed"')
    with pytest.raises(EventError, match="ended_ms"):
        Anomaly.decode(payload)
    assert Anomaly.decode(anomaly("1", "closed").encode()).ended_ms == MONDAY + 2 * HOUR
