"""Decisions scaled to what they commit: an evidence horizon per kind, savings as a range, and
recommendations in units that can be ordered (whole nodes, whole instances).

The pure-domain tests feed hourly windows to ``evaluate`` as the decision agent does, with the
configuration's defaults (fill idle: the dwell alone, migrate: 24 h, buy: 168 h, 80 % target
utilization of bought GPUs).  Figures of the market below:

    owned A100: capex 30000 / (36 * 730) = 1.141552 $/h, energy 0.4 kW * 1.5 * 0.10 = 0.06 $/h,
                upkeep 8760 / 8760 = 1.00 $/h  ->  RATE = 2.201552 $/GPU-hour, opex 1.06 $/GPU-hour
    cloud:      p4d (8 A100) $32/h = $4/A100-hour; p5 (8 H100) $64/h = $8/H100-hour; H100 = 3 A100
"""

from __future__ import annotations

import json
from datetime import date
from decimal import ROUND_HALF_EVEN
from decimal import Decimal as D

import psycopg
import pytest

from hybridspend.alerts.alerter import routes_for
from hybridspend.alerts.slack import decision_message
from hybridspend.contracts.config import EXAMPLE_CONFIG, Config, ConfigError, load_config
from hybridspend.contracts.events import BreakevenDecision
from hybridspend.costmodel import (
    MIGRATE_TO_CLOUD,
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    STAY,
    TRENDING_REPATRIATION,
    CloudOffer,
    CrossingState,
    Market,
    OnPremGpuCost,
    Thresholds,
    WorkloadWindow,
    evaluate,
)
from hybridspend.costmodel.breakeven import percentile
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, decision_row, decision_rows, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

HOUR_MS = 3_600_000
MICRO = D("0.000001")
RATE = D(30000) / (36 * 730) + D("0.06") + D(1)
OPEX = D("0.06") + D(1)
DEFAULTS = Config().thresholds.domain()  # what a user gets without configuring anything


def micro(x: D) -> D:
    return x.quantize(MICRO, rounding=ROUND_HALF_EVEN)


def market() -> Market:
    a100 = OnPremGpuCost("A100", D(30000), 36, D(400), D("1.5"), D("0.10"), D(8760), date(2026, 1, 1))
    p4d = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D(32)})
    p5 = CloudOffer("aws", "us-east-1", "p5.48xlarge", "H100", 8, {"on_demand": D(64)})
    return Market(onprem={"A100": a100}, offers=(p4d, p5), throughput={"A100": D(1), "H100": D(3)},
                  gpus_per_node={"A100": 8})


def hour_window(env: str, hour: int, gpus: int, utilization: D, cost: D, gpu_class: str = "A100") -> WorkloadWindow:
    return WorkloadWindow("w", "t", env, gpu_class, hour * HOUR_MS, HOUR_MS, gpus * HOUR_MS,
                          int(gpus * HOUR_MS * utilization), cost, D(1))


def run(windows, idle_gpus=None, thresholds=DEFAULTS, state=None, round_trip=False):
    """Feed the windows in order; return {hour: decision}.  ``round_trip``: the state goes through
    JSON between windows, as it does through the stream's table."""
    state = state or CrossingState()
    out = {}
    for w in windows:
        if round_trip:
            state = CrossingState.from_dict(json.loads(json.dumps(state.to_dict())))
        d = evaluate(state, w, market().alternative(w, idle_gpus=idle_gpus), thresholds)
        assert len(state.recent) <= thresholds.max_windows(HOUR_MS)  # bounded by the longest horizon
        if d is not None:
            out[w.window_start_ms // HOUR_MS] = d
    return out


def test_a_utilization_drop_recommends_migrating_exactly_24_hours_after_it_starts():
    # 4 owned A100 at 85 % for hours 0-3, then 10, 15, 20, 15 % in turn from hour 4
    cost = micro(4 * RATE)  # 4 * 2.201552 = 8.806210 a window, busy or not
    cycle = [D("0.10"), D("0.15"), D("0.20"), D("0.15")]
    util = [D("0.85")] * 4 + [cycle[i % 4] for i in range(40)]
    decisions = run([hour_window("onprem", h, 4, u, cost) for h, u in enumerate(util)], round_trip=True)

    # the crossing holds from window 4; 24 one-hour windows complete the evidence with window 27
    assert list(decisions) == [27]
    d = decisions[27]
    assert d.kind == MIGRATE_TO_CLOUD and d.window_start_ms == 4 * HOUR_MS and d.window_end_ms == 28 * HOUR_MS
    assert d.evidence_hours == 24
    # the cheapest cloud: a p5 at $8 per H100-hour = 8/3 per A100-hour of work; 4 A100 = 4/3 H100 -> 2 GPUs,
    # one p5.48xlarge of 8
    assert (d.gpus_needed, d.instances_needed, d.nodes_needed) == (2, 1, None)
    # cloud cost of a window: 4 GPU-hours * u * 8/3: u=0.10 -> 1.066667, 0.15 -> 1.6, 0.20 -> 2.133333 (micro)
    alt = {D("0.10"): D("1.066667"), D("0.15"): D("1.6"), D("0.20"): D("2.133333")}
    # 6 windows at 10 %, 12 at 15 %, 6 at 20 %: 6 * 1.066667 + 12 * 1.6 + 6 * 2.133333 = 38.4
    assert d.monthly_savings_usd == (24 * cost - D("38.4")) / 24 * 730  # = 5,260.53 $/month
    saving = {u: (cost - a) * 730 for u, a in alt.items()}  # each window's month: (cost - cloud) * 730
    # sorted ascending: 6 at 20 %, 12 at 15 %, 6 at 10 %; the 25th percentile at rank 23 * 0.25 = 5.75 lies
    # between the last 20 % window and the first 15 % one, the 75th at rank 17.25 between 15 % and 10 %
    assert d.monthly_savings_low_usd == saving[D("0.20")] + D("0.75") * (saving[D("0.15")] - saving[D("0.20")])
    assert d.monthly_savings_high_usd == saving[D("0.15")] + D("0.25") * (saving[D("0.10")] - saving[D("0.15")])
    # $5,163.20 < $5,260.53 < $5,357.87
    assert d.monthly_savings_low_usd < d.monthly_savings_usd < d.monthly_savings_high_usd


def test_a_cloud_workload_recommends_buying_exactly_at_hour_168_in_whole_nodes():
    # 8 H100 on a p5 at 60 % busy: $64 a window.  Its work is 8 * 0.6 * 3 = 14.4 busy A100; at the 80 % target
    # utilization 14.4 / 0.8 = 18 A100, in nodes of 8: 3 nodes, 24 GPUs, owned every hour: 24 * RATE = 52.84
    # a window, cheaper than 64 by more than the 10 % margin
    windows = [hour_window("cloud", h, 8, D("0.6"), D(64), "H100") for h in range(200)]
    decisions = run(windows, round_trip=True)

    # half the horizon (84 h, window 83) gives the platform its trending notice; the purchase waits for 168 h
    assert list(decisions) == [83, 167]
    trend, d = decisions[83], decisions[167]
    assert trend.kind == TRENDING_REPATRIATION and trend.evidence_hours == 84
    assert "a purchase is recommended once this holds for 168 h" in trend.reason
    assert d.kind == REPATRIATE_BUY and (d.from_env, d.to_env) == ("cloud", "onprem")
    assert d.window_start_ms == 0 and d.window_end_ms == 168 * HOUR_MS and d.evidence_hours == 168
    assert (d.gpus_needed, d.nodes_needed, d.instances_needed) == (24, 3, None)
    # payback for the 24 GPUs really bought (not the 18 the work needs):
    # 24 * 30000 / ((64 - 24 * 1.06) * 730) = 720000 / (38.56 * 730) = 720000 / 28148.8 = 25.58 months
    assert d.payback_months == D(720000) / ((64 - 24 * OPEX) * 730)
    assert "buying 3 A100 nodes (24 GPUs), payback 25.6 months" in d.reason
    # every window costs the same: the range is the point, (64 - 24 * RATE) * 730 = 8,148.80 $/month
    assert d.monthly_savings_usd == (168 * 64 - 168 * 24 * RATE) / 168 * 730
    assert d.monthly_savings_low_usd == d.monthly_savings_usd == d.monthly_savings_high_usd
    # per busy GPU-hour: 168 * 24 * RATE over 168 * 4.8 busy H100-hours = 5 * RATE
    assert d.alternative_usd_per_busy_gpu_hour == 168 * 24 * RATE / (168 * D("4.8"))


def test_filling_idle_owned_gpus_still_needs_only_the_dwell():
    # a p4d (8 A100) at 90 %: $32 a window; 16 owned A100 sit idle, so it fits at their energy, 8 * 0.06
    windows = [hour_window("cloud", h, 8, D("0.9"), D(32)) for h in range(10)]
    decisions = run(windows, idle_gpus={"A100": D(16)})
    assert list(decisions) == [2]  # three windows: the dwell
    d = decisions[2]
    assert d.kind == REPATRIATE_FILL_IDLE and d.evidence_hours == 3 and d.window_end_ms == 3 * HOUR_MS
    assert (d.gpus_needed, d.nodes_needed, d.instances_needed, d.payback_months) == (8, None, None, None)
    # (32 - 0.48) * 730 = 23,009.60 $/month in every window
    assert d.monthly_savings_low_usd == d.monthly_savings_usd == d.monthly_savings_high_usd == D("23009.60")


def test_a_streak_of_one_kind_is_not_evidence_for_another():
    # 8 H100 on a p5 at 60 %: idle owned A100 hold it for the first 100 hours (24 needed, 24 idle), then none
    windows = [hour_window("cloud", h, 8, D("0.6"), D(64), "H100") for h in range(300)]

    def kinds(thresholds):
        state, out = CrossingState(), {}
        for w in windows:
            idle = {"A100": D(24)} if w.window_start_ms < 100 * HOUR_MS else {}
            d = evaluate(state, w, market().alternative(w, idle_gpus=idle), thresholds)
            if d is not None:
                out[w.window_start_ms // HOUR_MS] = d.kind
        return out

    # by default fill idle is decided at the dwell (window 2); when the idle GPUs are gone (hour 100) it is
    # withdrawn after the dwell it needed (windows 100-102), and buying gathers its own week from hour 103
    decided = kinds(DEFAULTS)
    assert decided == {2: REPATRIATE_FILL_IDLE, 102: STAY, 186: TRENDING_REPATRIATION, 270: REPATRIATE_BUY}
    # when filling idle GPUs needs more evidence than they were idle for, the 100 hours of that streak do not
    # count toward buying: the purchase's 168 h start at hour 100 (notice at 100 + 83, decision at 100 + 167)
    slow_fill = Thresholds(evidence_hours={**DEFAULTS.evidence_hours, REPATRIATE_FILL_IDLE: D(200)})
    assert kinds(slow_fill) == {183: TRENDING_REPATRIATION, 267: REPATRIATE_BUY}


def test_a_withdrawal_needs_as_long_as_the_recommendation_it_withdraws():
    cost = micro(4 * RATE)
    util = [D("0.15")] * 24 + [D("0.95")] * 40
    decisions = run([hour_window("onprem", h, 4, u, cost) for h, u in enumerate(util)])
    # migrate at window 23 (24 h); back at 95 % the cloud costs 4 * 0.95 * 8/3 = 10.13 > 8.81 * 1.1 = 9.69,
    # so on-prem wins by the margin from window 24: the withdrawal needs 24 h too, complete with window 47
    assert {h: d.kind for h, d in decisions.items()} == {23: MIGRATE_TO_CLOUD, 47: STAY}
    assert decisions[47].evidence_hours == 24 and "(migrate to cloud) is withdrawn" in decisions[47].reason
    stay = decisions[47]
    assert stay.monthly_savings_low_usd <= stay.monthly_savings_usd <= stay.monthly_savings_high_usd


def test_a_skewed_spread_widens_the_range_to_hold_the_point_estimate():
    # fill idle over 5 windows (dwell 5): four at $4.48, one at $104.48; idle energy 0.48 a window
    th = Thresholds(margin=D("0.10"), dwell_windows=5, evidence_hours={})
    costs = [D("4.48")] * 4 + [D("104.48")]
    decisions = run([hour_window("cloud", h, 8, D("0.9"), c) for h, c in enumerate(costs)],
                    idle_gpus={"A100": D(8)}, thresholds=th)
    d = decisions[4]
    # per window: 4 * 730 = 2920 four times, 104 * 730 = 75920 once; both quartiles are 2920, the mean is
    # (4 * 2920 + 75920) / 5 = 17520: the range is widened to [2920, 17520]
    assert d.monthly_savings_usd == D(17520)
    assert (d.monthly_savings_low_usd, d.monthly_savings_high_usd) == (D(2920), D(17520))


def test_percentiles_interpolate_between_the_closest_ranks():
    values = [D(4), D(1), D(3), D(2)]
    # sorted 1 2 3 4: rank 3 * 0.25 = 0.75 -> 1 + 0.75 * (2 - 1) = 1.75; rank 2.25 -> 3.25
    assert percentile(values, D("0.25")) == D("1.75") and percentile(values, D("0.75")) == D("3.25")
    assert percentile([D(7)], D("0.25")) == D(7)


def test_an_older_table_value_keeps_its_recommendation_and_restarts_its_streak():
    old = {"moved": True, "recent": [["1", "2", 3, 4, 5]], "recent_coverage": ["1"], "last_window_start_ms": 7}
    state = CrossingState.from_dict(old)
    assert state.moved and state.recent == [] and state.last_window_start_ms == 7


# -- configuration ------------------------------------------------------------------------------


def test_configuration_defaults_are_the_documented_horizons_and_headroom():
    t = Config().thresholds
    assert (t.evidence_hours.repatriate_fill_idle, t.evidence_hours.migrate_to_cloud,
            t.evidence_hours.repatriate_buy_capacity, t.evidence_hours.commit_in_cloud,
            t.buy_target_utilization_pct) == (0, 24, 168, 168, 80)
    assert Config().market().buy_target_utilization == D("0.8")
    example = load_config(EXAMPLE_CONFIG, {})  # the example fleet: nodes of 8
    assert example.market().gpus_per_node == {"A100": 8, "H100": 8}
    assert example.thresholds.domain().evidence_hours == {
        REPATRIATE_FILL_IDLE: 0, MIGRATE_TO_CLOUD: 24, REPATRIATE_BUY: 168, "commit_in_cloud": 168}


def test_an_evidence_horizon_too_long_for_the_window_is_refused_with_the_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("thresholds: {window_seconds: 60, evidence_hours: {repatriate_buy_capacity: 720}}\n")
    with pytest.raises(ConfigError, match=r"evidence_hours.repatriate_buy_capacity \(720 h\) is 43200 windows "
                                          r"of 60 s; at most 20000 are kept"):
        load_config(path, {})
    path.write_text("thresholds: {buy_target_utilization_pct: 0}\n")
    with pytest.raises(ConfigError, match="buy_target_utilization_pct"):
        load_config(path, {})


# -- the event, the alert and its routes, the row ---------------------------------------------------


def buy_decision(**changes) -> BreakevenDecision:
    fields = dict(
        event_id="llm|cloud|repatriate_buy_capacity|1", workload="llm", team="ml", from_env="cloud",
        to_env="onprem", kind=REPATRIATE_BUY, gpu_class="H100", window_start_ms=0, window_end_ms=168 * HOUR_MS,
        current_usd_per_busy_gpu_hour=D("13.333333"), alternative_usd_per_busy_gpu_hour=D("11.00776"),
        utilization=D("0.6"), monthly_savings_usd=D("8152.8"), confidence=D(1), alternative_label="on-prem A100",
        gpus_needed=24, reason="r", payback_months=D("25.58"), monthly_savings_low_usd=D("7900"),
        monthly_savings_high_usd=D("8400"), evidence_hours=D(168), nodes_needed=3)
    fields.update(changes)
    return BreakevenDecision(**fields)


def test_a_decision_event_round_trips_and_one_without_the_new_fields_still_decodes():
    d = buy_decision()
    assert BreakevenDecision.decode(d.encode()) == d
    old = {k: v for k, v in d.to_dict().items()
           if k not in ("monthly_savings_low_usd", "monthly_savings_high_usd", "evidence_hours", "nodes_needed",
                        "instances_needed")}
    decoded = BreakevenDecision.decode(json.dumps(old, default=str))
    assert decoded.monthly_savings_low_usd is None and decoded.nodes_needed is None
    assert decoded.monthly_savings_usd == D("8152.8")


def test_the_alert_shows_the_range_the_evidence_and_the_nodes():
    msg = decision_message(buy_decision())
    assert msg["text"].startswith("Repatriate (buy capacity): llm (cloud → on-prem), "
                                  "saves about $8,152.80/month ($7,900.00 to $8,400.00) — ")
    flat = json.dumps(msg, ensure_ascii=False)
    assert "24 (3 nodes)" in flat and "168 h of evidence" in flat
    assert all(len(b.get("fields", [])) <= 10 for b in msg["blocks"])  # Slack's limit per section
    trend = decision_message(buy_decision(kind=TRENDING_REPATRIATION, evidence_hours=D(84)))
    assert trend["text"].startswith("Trending toward repatriation: llm")


def routed(decision: BreakevenDecision) -> list[str]:
    config = Config.model_validate({"alerts": {"routes": [
        {"name": "finance", "audience": "finance", "slack_webhook_url": {"env": "F"}, "min_monthly_savings_usd": 1000},
        {"name": "platform", "audience": "platform", "slack_webhook_url": {"env": "P"}}]}})
    return [r.name for r in routes_for(config, decision)]


def test_finance_gets_a_purchase_only_once_it_met_its_horizon_and_never_the_trending_notice():
    assert routed(buy_decision()) == ["finance", "platform"]
    assert routed(buy_decision(evidence_hours=D(167))) == ["platform"]
    assert routed(buy_decision(evidence_hours=None)) == ["platform"]  # an event from before horizons
    assert routed(buy_decision(kind=TRENDING_REPATRIATION, evidence_hours=D(84))) == ["platform"]
    migrate = buy_decision(kind=MIGRATE_TO_CLOUD, from_env="onprem", to_env="cloud", evidence_hours=D(24))
    assert routed(migrate) == ["finance", "platform"]


def test_the_trending_notice_is_an_alert_not_a_stored_decision():
    assert decision_rows(buy_decision(kind=TRENDING_REPATRIATION)) == []
    stored = buy_decision()
    assert decision_rows(stored) == [decision_row(stored)]


@pytest.mark.integration
def test_the_range_columns_are_stored_and_shown_in_the_decision_log(database):
    migrate(database)
    batch = Batch()
    batch.add("decisions", decision_row(buy_decision()))
    with psycopg.connect(database) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
        row = conn.execute(
            "SELECT monthly_savings_low_usd, monthly_savings_usd, monthly_savings_high_usd, evidence_hours,"
            " gpus_needed, nodes_needed, instances_needed, alerts_delivered FROM decision_log").fetchone()
    assert row == (D("7900"), D("8152.8"), D("8400"), D(168), 24, 3, None, 0)
