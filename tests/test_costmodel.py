"""The pure cost model, checked against hand arithmetic and the published figures in docs/design.md, "Domain model"."""

from datetime import date, datetime, timezone
from decimal import Decimal as D

import pytest

from hybridspend.costmodel import (
    CloudOffer,
    CostModelError,
    CrossingState,
    AttributedGpu,
    Market,
    OnPremGpuCost,
    ResourceWindows,
    Thresholds,
    WorkloadWindow,
    evaluate,
    price_onprem_usage,
    tco,
)
from hybridspend.costmodel.money import cents

HOUR_MS = 3_600_000


def a100(**overrides) -> OnPremGpuCost:
    params = dict(
        gpu_class="A100",
        purchase_price_usd_per_gpu=D(30000),
        amortization_months=36,
        power_w=D(400),
        pue=D("1.5"),
        electricity_usd_per_kwh=D("0.12"),
        upkeep_usd_per_year_per_gpu=D(2900),
    )
    params.update(overrides)
    return OnPremGpuCost(**params)


def test_onprem_rate_is_capex_plus_energy_plus_upkeep():
    rate = a100().rate()
    # capex 30000 / (36 * 730) = 1.141552...; energy 400/1000 * 1.5 * 0.12 = 0.072; upkeep 2900/8760 = 0.331050...
    assert rate.capex_usd_per_gpu_hour == D(30000) / D(26280)
    assert rate.energy_usd_per_gpu_hour == D("0.072")
    assert rate.upkeep_usd_per_gpu_hour == D(2900) / D(8760)
    assert cents(rate.usd_per_gpu_hour) == D("1.54")


def test_capex_stops_after_amortization_unless_configured():
    gpu = a100(in_service_date=date(2022, 1, 15))
    assert gpu.capex_usd_per_gpu_hour(datetime(2024, 12, 1, tzinfo=timezone.utc)) > 0  # month 34
    assert gpu.capex_usd_per_gpu_hour(datetime(2025, 1, 15, tzinfo=timezone.utc)) == 0  # month 36
    kept = a100(in_service_date=date(2022, 1, 15), capex_after_amortization=True)
    assert kept.capex_usd_per_gpu_hour(datetime(2026, 1, 1, tzinfo=timezone.utc)) > 0


def test_published_4x_a100_box_cloud_12k_vs_onprem_4_5k_a_month():
    result = tco(
        gpu_price_usd=D(30000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900),
        cloud_usd_per_gpu_hour=D("4.10"), utilization=D(1), gpus=4,
    )
    # on-prem: 1.544602 $/h * 730 * 4 = 4510.24; cloud: 4.10 * 730 * 1.0 * 4 = 11972.00
    assert cents(result.monthly_onprem_usd) == D("4510.24")
    assert result.monthly_cloud_usd == D("11972.00")
    assert abs(result.monthly_onprem_usd - 4500) / 4500 < D("0.01")
    assert abs(result.monthly_cloud_usd - 12000) / 12000 < D("0.01")
    assert result.cheaper_env == "onprem"


def test_published_8_gpu_instance_16h_a_day_5_days_a_week_costs_133k_a_year():
    # $32/h per 8-GPU instance = $4/GPU-h; 80 busy hours of 168 in a week
    result = tco(
        gpu_price_usd=D(30000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900),
        cloud_usd_per_gpu_hour=D(4), utilization=D(80) / D(168), gpus=8,
    )
    yearly = result.monthly_cloud_usd * 12
    # 4 * 730 * (80/168) * 8 * 12 = 133,485.71 (52 weeks * 80 h * $32 = 133,120)
    assert cents(yearly) == D("133485.71")
    assert abs(yearly - 133000) / 133000 < D("0.01")
    assert abs(yearly * 3 - 400000) / 400000 < D("0.01")


@pytest.mark.parametrize("utilization", [D("0.5"), D("0.7")])
def test_steady_workloads_break_even_in_18_to_36_months(utilization):
    result = tco(
        gpu_price_usd=D(40000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900),
        cloud_usd_per_gpu_hour=D("4.10"), utilization=utilization,
    )
    # u=0.7: 40000 / (4.10*730*0.7 - 0.403050*730) = 40000 / (2095.10 - 294.23) = 22.2 months
    # u=0.5: 40000 / (1496.50 - 294.23) = 33.3 months
    assert 18 <= result.months_to_breakeven <= 36


def test_reserved_discount_pushes_breakeven_out_and_spot_makes_cloud_win():
    common = dict(
        gpu_price_usd=D(40000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900), utilization=D("0.7"),
    )
    on_demand = tco(cloud_usd_per_gpu_hour=D("4.10"), **common)
    reserved = tco(cloud_usd_per_gpu_hour=D("4.10") * D("0.5"), **common)  # 50 % commitment discount
    spot = tco(cloud_usd_per_gpu_hour=D("4.10") * D("0.3"), **common)  # spot 70 % cheaper
    assert reserved.months_to_breakeven > 36 > on_demand.months_to_breakeven
    assert spot.cheaper_env == "cloud"
    assert spot.breakeven_utilization > 1  # owning never wins against that spot price


def test_breakeven_utilization_in_the_60_to_70_percent_band_for_committed_prices():
    result = tco(
        gpu_price_usd=D(40000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900),
        cloud_usd_per_gpu_hour=D("3.00"), utilization=D("0.5"),
    )
    # on-prem 40000/26280 + 0.072 + 0.331050 = 1.925112 $/h; u* = 1.925112 / 3.00 = 0.6417
    assert D("0.60") <= result.breakeven_utilization <= D("0.70")
    assert result.cheaper_env == "cloud"  # 50 % busy is below u*


def test_monthly_figures_are_hourly_times_730_once():
    # opencost#3781 charged on-prem GPUs 730x too much; the monthly figure is hourly * 730, once
    result = tco(
        gpu_price_usd=D(0), amortization_months=1, power_w=D(0), pue=D(1),
        usd_per_kwh=D(0), upkeep_usd_per_year=D(8760), cloud_usd_per_gpu_hour=D(1), utilization=D(1),
    )
    assert result.onprem_usd_per_gpu_hour == D(1)
    assert result.monthly_onprem_usd == D(730)


def test_months_to_breakeven_is_none_when_cloud_costs_no_more_than_opex():
    result = tco(
        gpu_price_usd=D(10000), amortization_months=36, power_w=D(700), pue=D(2),
        usd_per_kwh=D("0.30"), upkeep_usd_per_year=D(8760),
        cloud_usd_per_gpu_hour=D("1.00"), utilization=D("0.5"),
    )
    assert result.months_to_breakeven is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("amortization_months", 0, "amortization_months must be > 0, got 0"),
        ("amortization_months", -3, "amortization_months must be > 0, got -3"),
        ("utilization", D(0), "utilization must be in (0, 1], got 0"),
        ("utilization", D("1.2"), "utilization must be in (0, 1], got 1.2"),
        ("pue", D("0.9"), "pue must be >= 1, got 0.9"),
    ],
)
def test_invalid_inputs_name_the_field_and_value(field, value, message):
    params = dict(
        gpu_price_usd=D(30000), amortization_months=36, power_w=D(400), pue=D("1.5"),
        usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900),
        cloud_usd_per_gpu_hour=D("4.10"), utilization=D("0.5"),
    )
    params[field] = value
    with pytest.raises(CostModelError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        tco(**params)


def _reading(util, power_mw=None, workloads=(("train", "ml"),)):
    return AttributedGpu("A100", util, power_mw, workloads)


def test_usage_windows_count_busy_and_allocated_time_exactly_and_ignore_replays():
    state = ResourceWindows()
    window_ms = 15 * 60_000
    base = 1_700_000_100_000 - 1_700_000_100_000 % window_ms
    for i in range(1, 16):  # 15 one-minute samples fill one window
        ts = base + i * 60_000
        assert state.add_sample(
            ts_ms=ts, interval_ms=60_000, window_ms=window_ms, environment="onprem", resource="n1",
            gpus=[_reading(50.0, 300_000), _reading(100.0, None, ())],
        )
    # a replay of an already counted sample is ignored
    assert not state.add_sample(
        ts_ms=base + 60_000, interval_ms=60_000, window_ms=window_ms, environment="onprem", resource="n1",
        gpus=[_reading(50.0, 300_000)],
    )
    assert state.close(base + window_ms - 1, window_ms) == []
    closed = dict((k.workload, u) for k, u in state.close(base + window_ms, window_ms))
    train, idle = closed["train"], closed["idle"]
    assert train.allocated_gpu_ms == 15 * 60_000  # 0.25 GPU-hours
    assert train.busy_gpu_ms == 15 * 30_000  # 50 %
    assert train.energy_mj == 15 * 300_000 * 60  # 300 W for 15 minutes = 0.075 kWh
    assert train.energy_kwh == D("0.075")
    assert idle.busy_gpu_ms == 0 and idle.allocated_gpu_ms == 15 * 60_000 and idle.metered_gpu_ms == 0


def test_resource_windows_survive_a_round_trip_through_their_table_form():
    state = ResourceWindows()
    state.add_sample(ts_ms=120_000, interval_ms=60_000, window_ms=900_000, environment="cloud",
                     resource="i-1", gpus=[_reading(75.0, 250_000, (("a", "t"), ("b", "t")))])
    again = ResourceWindows.from_dict(state.to_dict())
    assert again == state
    shared = {k.workload: u for k, u in again.open.items()}
    assert shared["a"].allocated_gpu_ms == 30_000 and shared["a"].busy_gpu_ms == 22_500


def test_onprem_usage_priced_with_measured_energy_and_configured_power_for_the_rest():
    state = ResourceWindows()
    state.add_sample(ts_ms=HOUR_MS, interval_ms=HOUR_MS, window_ms=HOUR_MS, environment="onprem",
                     resource="n1", gpus=[_reading(100.0, 200_000), _reading(100.0, None)])
    (_, usage), = state.close(2 * HOUR_MS, HOUR_MS)
    cost = price_onprem_usage(usage, a100(), datetime(2026, 1, 1, tzinfo=timezone.utc))
    # 2 GPU-hours * (1.141553 + 0.331050) + 0.2 kWh * 0.18 + 1 h * 0.4 kW * 0.18
    expected = 2 * (D(30000) / 26280 + D(2900) / 8760) + D("0.036") + D("0.072")
    assert cost == expected


def market(**overrides) -> Market:
    offer = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8,
                       {"on_demand": D("32.7726"), "spot": D("12.00")})
    h100 = CloudOffer("aws", "us-east-1", "p5.48xlarge", "H100", 8, {"on_demand": D("98.32")})
    return Market(onprem={"A100": a100()}, offers=(offer, h100),
                  throughput={"A100": D(1), "H100": D(3)}, **overrides)


def window(env, busy_ms, alloc_ms, cost, start, gpu_class="A100", window_ms=HOUR_MS):
    return WorkloadWindow("train", "ml", env, gpu_class, start, window_ms, alloc_ms, busy_ms, cost, D(1))


def test_onprem_alternative_is_cheapest_cloud_for_busy_hours_normalized_by_throughput():
    alt = market().alternative(window("onprem", HOUR_MS, 8 * HOUR_MS, D(10), 0))
    # p5: 98.32/8 = 12.29 per H100-hour, 1/3 H100 per A100 -> 4.0967 per A100-hour,
    # p4d: 32.7726/8 = 4.096575 per A100-hour -> p4d is (barely) cheaper; 1 busy A100-hour
    assert alt.label == "aws us-east-1 p4d.24xlarge on_demand"
    assert alt.cost_usd == D("4.096575")
    with_spot = market().alternative(window("onprem", HOUR_MS, 8 * HOUR_MS, D(10), 0), allow_spot=True)
    assert with_spot.cost_usd == D("1.5") and with_spot.label.endswith("spot")


def test_cloud_h100_alternative_buys_three_a100s_per_h100():
    # bought GPUs sized to run fully busy (target utilization 1): one busy H100 -> 3 A100
    alt = market(buy_target_utilization=D(1)).alternative(
        window("cloud", HOUR_MS, HOUR_MS, D("12.29"), 0, gpu_class="H100"))
    assert alt.gpus_needed == 3
    assert alt.cost_usd == 3 * (D(30000) / 26280 + D("0.072") + D(2900) / 8760)


def test_crossing_needs_margin_and_dwell_then_withdraws_with_hysteresis():
    state, th, alt_cost = CrossingState(), Thresholds(D("0.10"), 3, evidence_hours={}), D(10)  # the dwell alone
    from hybridspend.costmodel import Alternative
    alt = Alternative("cloud", "migrate_to_cloud", alt_cost, D(4), "aws", 1)
    costs = [D(11), D(12), D(12), D("10.5"), D(12), D(12), D(12)]
    decisions = []
    for i, cost in enumerate(costs):
        w = window("onprem", HOUR_MS // 2, HOUR_MS, cost, i * HOUR_MS)
        d = evaluate(state, w, alt, th)
        decisions.append(d)
    # window 0: 11 > 10*1.1? no (equal margin is not a crossing); 1,2 cross; 3 is within the margin -> reset;
    # 4,5,6 cross for three windows -> one decision at window 6
    assert [d is not None for d in decisions] == [False] * 6 + [True]
    d = decisions[-1]
    assert d.kind == "migrate_to_cloud" and d.window_start_ms == 4 * HOUR_MS and d.window_end_ms == 7 * HOUR_MS
    # 3 windows: current 36, alternative 30 over 3 h -> (36 - 30) / 3 * 730 = 1460 $/month
    assert d.monthly_savings_usd == D(1460)
    assert d.current_usd_per_busy_gpu_hour == D(24) and d.utilization == D("0.5")
    # replaying an old window changes nothing
    assert evaluate(state, window("onprem", 1, 1, D(99), 5 * HOUR_MS), alt, th) is None
    # back below the alternative by the margin for three windows -> one "stay"
    later = [evaluate(state, window("onprem", 1000, 1000, D(8), (7 + i) * HOUR_MS), alt, th) for i in range(3)]
    assert [d is not None for d in later] == [False, False, True]
    assert later[-1].kind == "stay"


def test_cloud_workload_fits_into_idle_owned_gpus_at_marginal_cost_else_buys_with_payback():
    from hybridspend.costmodel import REPATRIATE_FILL_IDLE

    w = window("cloud", 7 * HOUR_MS, 8 * HOUR_MS, D("32.7726"), 0)  # a p4d (8 A100) for one hour
    fill = market().alternative(w, idle_gpus={"A100": D(8)})
    # 8 idle A100 hold it: energy only, 0.4 kW * 1.5 PUE * $0.12 = $0.072 per GPU-hour (capex sunk, upkeep not marginal)
    assert fill.kind == REPATRIATE_FILL_IDLE and fill.gpus_needed == 8
    assert fill.cost_usd == 8 * D("0.072") and fill.payback_months(D("32.7726")) is None
    # 7.5 idle GPUs are not enough: buy for 7 busy GPUs at the 80 % target utilization, 7 / 0.8 = 8.75 -> 9
    # (nodes of one GPU in this market), full rate, payback = capex / (monthly cloud - monthly opex)
    buy = market().alternative(w, idle_gpus={"A100": D("7.5")})
    assert buy.kind == "repatriate_buy_capacity" and buy.gpus_needed == 9
    assert buy.capex_usd == 9 * D(30000)
    opex = D("0.072") + D(2900) / 8760
    assert buy.payback_months(D("32.7726")) == D(270000) / ((D("32.7726") - 9 * opex) * 730)
    # an H100 workload needs three A100s per H100: 8 H100 -> 24 A100, so 8 idle ones do not hold it;
    # its one busy H100-hour is 3 busy A100-hours: 3 / 0.8 = 3.75 -> buy 4
    h100 = market().alternative(window("cloud", HOUR_MS, 8 * HOUR_MS, D("98.32"), 0, gpu_class="H100"),
                                idle_gpus={"A100": D(8)})
    assert h100.kind == "repatriate_buy_capacity" and h100.gpus_needed == 4


def test_rental_ends_at_the_stop_or_two_minutes_after_a_spot_warning():
    from hybridspend.costmodel import Rental

    r = Rental(gpus=8)
    assert r.on_event(30 * 60_000, "running", HOUR_MS)
    assert not r.on_event(30 * 60_000, "running", HOUR_MS)  # a replay
    assert r.close(HOUR_MS, HOUR_MS) == {0: 8 * 30 * 60_000}  # half an hour of 8 GPUs in window 0
    r.on_event(HOUR_MS + 10 * 60_000, "spot_interruption_warning", HOUR_MS)
    # no termination event ever arrives: the instance is reclaimed 120 s after the warning
    assert r.close(3 * HOUR_MS, HOUR_MS) == {HOUR_MS: 8 * (10 * 60_000 + 120_000)}
    assert r.running_since_ms is None
    s = Rental(gpus=1)
    s.on_event(0, "running", HOUR_MS)
    s.on_event(HOUR_MS + 1_500, "stopped", HOUR_MS)  # billed by the second (here, by the millisecond)
    assert s.close(10 * HOUR_MS, HOUR_MS) == {0: HOUR_MS, HOUR_MS: 1_500}
    assert Rental.from_list(s.to_list()) == s


def test_rented_time_without_samples_is_charged_to_the_instance_owner_as_allocated_time():
    from hybridspend.costmodel import Usage, UsageKey, add_rented_time

    sampled = [(UsageKey(0, "embed", "search", "cloud", "A100", "i-1"), Usage(allocated_gpu_ms=600, busy_gpu_ms=300))]
    owner = UsageKey(0, "embed", "search", "cloud", "A100", "i-1")
    merged = add_rented_time(sampled, {0: 1000, HOUR_MS: 400}, owner)
    assert [(k.window_start_ms, u.allocated_gpu_ms, u.busy_gpu_ms) for k, u in merged] == [(0, 1000, 300),
                                                                                           (HOUR_MS, 400, 0)]
    # samples that cover more than the rented time (a late start event) are kept as they are
    assert add_rented_time(sampled, {0: 500}, owner)[0][1].allocated_gpu_ms == 600


def test_price_book_prices_a_window_at_the_price_in_force_when_it_started():
    from hybridspend.costmodel import PriceBook

    book = PriceBook()
    assert book.usd_per_hour("aws", "us-east-1", "p4d.24xlarge", "spot", 0) is None
    book.update("aws", "us-east-1", "p4d.24xlarge", "spot", 10 * HOUR_MS, D(14))
    book.update("aws", "us-east-1", "p4d.24xlarge", "spot", 0, D(12))  # arrives late, applies from 0
    assert not book.update("aws", "us-east-1", "p4d.24xlarge", "spot", 0, D(12))
    assert not book.update("aws", "us-east-1", "p4d.24xlarge", "spot", 5 * HOUR_MS, D(12))  # a refresh, same price
    assert book.version == 2
    assert book.usd_per_hour("aws", "us-east-1", "p4d.24xlarge", "spot", 9 * HOUR_MS) == D(12)
    assert book.usd_per_hour("aws", "us-east-1", "p4d.24xlarge", "spot", 10 * HOUR_MS) == D(14)
    offer = book.apply(market().offers[0], 5 * HOUR_MS)
    assert offer.usd_per_hour == {"on_demand": D("32.7726"), "spot": D(12)}


def test_a_sample_for_a_closed_window_is_refused_not_folded_into_a_new_one():
    from hybridspend.costmodel import LateSample

    state = ResourceWindows()
    args = dict(interval_ms=60_000, window_ms=HOUR_MS, environment="onprem", resource="n1", gpus=[_reading(50)])
    state.add_sample(ts_ms=60_000, **args)
    state.close(HOUR_MS, HOUR_MS)  # the partition's watermark passed window 0 while this resource was quiet
    with pytest.raises(LateSample, match="late sample"):
        state.add_sample(ts_ms=30 * 60_000, **args)  # [0:29, 0:30) arrives after window 0 was emitted
    assert state.add_sample(ts_ms=HOUR_MS + 60_000, **args)
    assert ResourceWindows.from_dict(state.to_dict()).closed_through_ms == HOUR_MS


def test_an_instance_event_arriving_after_its_samples_closed_windows_does_not_reopen_them():
    from hybridspend.costmodel import Rental

    r = Rental(gpus=8)
    r.not_before(2 * HOUR_MS)  # the samples already closed windows 0 and 1
    r.on_event(0, "running", HOUR_MS)  # the start event, read late from its own topic
    assert r.close(3 * HOUR_MS, HOUR_MS) == {2 * HOUR_MS: 8 * HOUR_MS}  # only window 2 is rented time to add


# -- money and calendar formulas: payback, discounted per-GPU price, month and year scaling --------


def test_payback_is_capex_over_the_monthly_margin_of_cloud_over_onprem_opex():
    from hybridspend.costmodel import payback_months

    # 8 A100s at $30,000 = $240,000 of capex; cloud $18,000 a month vs $2,000 of energy and upkeep:
    # 240,000 / (18,000 - 2,000) = 15 months
    assert payback_months(D(240_000), D(18_000), D(2_000)) == D(15)
    # a margin of zero or less never pays back
    assert payback_months(D(240_000), D(2_000), D(2_000)) is None
    assert payback_months(D(240_000), D(1_000), D(2_000)) is None


def test_tco_payback_goes_through_the_same_formula():
    from hybridspend.costmodel import payback_months

    result = tco(gpu_price_usd=D(30000), amortization_months=36, power_w=D(400), pue=D("1.5"),
                 usd_per_kwh=D("0.12"), upkeep_usd_per_year=D(2900), cloud_usd_per_gpu_hour=D("4.10"),
                 utilization=D("0.7"), gpus=8)
    # monthly cloud = 4.10 * 730 * 0.7 * 8 = 16,760.80; opex per GPU-hour = 0.4 kW * 1.5 * 0.12 + 2900 / 8760
    # = 0.072 + 0.331050... = 0.403050..., a month of 8 GPUs: 0.403050... * 730 * 8 = 2,353.81
    assert result.monthly_cloud_usd == D("16760.800")
    assert result.months_to_breakeven == payback_months(D(240_000), result.monthly_cloud_usd,
                                                        result.monthly_onprem_opex_usd)
    # 240,000 / (16,760.80 - 2,353.81) = 240,000 / 14,406.99 = 16.66 months
    assert cents(result.months_to_breakeven) == D("16.66")


def test_discounted_per_gpu_price_is_instance_price_less_discount_over_its_gpus():
    from hybridspend.costmodel import discounted_usd_per_gpu_hour

    # p4d.24xlarge at $32.7726 an hour, 8 GPUs, 20 % contract discount: 32.7726 * 0.8 / 8 = 3.27726
    assert discounted_usd_per_gpu_hour(D("32.7726"), D(20), 8) == D("3.27726")
    # no discount: 32.7726 / 8 = 4.096575
    assert discounted_usd_per_gpu_hour(D("32.7726"), D(0), 8) == D("4.096575")
    # the offer's own per-GPU price is the same formula
    offer = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D("32.7726")}, D(20))
    assert offer.usd_per_gpu_hour("on_demand") == D("3.27726")
    with pytest.raises(CostModelError, match="gpus_per_instance must be > 0, got 0"):
        discounted_usd_per_gpu_hour(D(1), D(0), 0)
    with pytest.raises(CostModelError, match=r"discount_pct must be in \[0, 100\), got 100"):
        discounted_usd_per_gpu_hour(D(1), D(100), 8)


def test_a_reservation_spreads_its_upfront_fee_over_the_8760_hours_of_a_year():
    from hybridspend.costmodel import effective_usd_per_hour

    # $30.10 an hour plus $8,760 upfront: 30.10 + 8760 / 8760 = 31.10 an hour
    assert effective_usd_per_hour(D("30.10"), D(8760)) == D("31.10")
    # three years: 30.10 + 26,280 / (8760 * 3) = 31.10
    assert effective_usd_per_hour(D("30.10"), D(26_280), term_years=3) == D("31.10")


def test_amounts_scale_to_a_730_hour_month_and_an_8760_hour_year():
    from hybridspend.costmodel import usd_per_month, usd_per_year

    # $2,400 over 10 days (240 h) is $10 an hour: 7,300 a month, 87,600 a year
    assert usd_per_month(D(2400), D(240)) == D(7300)
    assert usd_per_year(D(2400), D(240)) == D(87600)
    with pytest.raises(CostModelError, match="over_hours must be > 0, got 0"):
        usd_per_month(D(1), D(0))


def test_month_forecast_extrapolates_month_to_date_spend_over_the_calendar_month():
    from hybridspend.costmodel import calendar_month_hours, month_forecast_usd

    assert calendar_month_hours(datetime(2026, 11, 5, tzinfo=timezone.utc)) == D(720)  # 30 days * 24
    assert calendar_month_hours(datetime(2026, 12, 5, tzinfo=timezone.utc)) == D(744)  # 31 days * 24
    # $1,000 spent by 2026-11-06 00:00 UTC: 5 days = 120 h elapsed; 1,000 / 120 * 720 = 6,000
    assert month_forecast_usd(D(1000), datetime(2026, 11, 6, tzinfo=timezone.utc)) == D(6000)
    # $90 by 2026-12-01 12:00:00.5: 12.000138... h; the half second counts exactly
    at = datetime(2026, 12, 1, 12, 0, 0, 500_000, tzinfo=timezone.utc)
    assert month_forecast_usd(D(90), at) == D(90) / (D("43200.5") / 3600) * 744
    assert month_forecast_usd(D(90), datetime(2026, 12, 1, tzinfo=timezone.utc)) is None  # nothing elapsed yet


def test_a_savings_range_whose_ends_are_equal_says_so():
    from hybridspend.costmodel.money import range_text

    usd = lambda v: f"${v:,.2f}"  # noqa: E731
    assert range_text(D("572.79"), D("572.79"), usd) == "the same in every window"
    assert range_text(D("500"), D("650.5"), usd) == "$500.00 to $650.50"
    assert range_text(None, D(1), usd) is None
