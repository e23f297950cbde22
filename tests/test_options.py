"""Options over a horizon: hand-computed totals, present values, crossover months and sizing."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridspend.costmodel.options import (
    BUY,
    COMMITMENT,
    ON_DEMAND,
    CashFlows,
    annuity_factor,
    calculator_options,
    discount_factor,
    size_to_demand,
)
from hybridspend.costmodel.rates import CostModelError


def _annuity_closed_form(months: int, annual_rate: D) -> D:
    # v = (1 + r)^(-1/12); sum of v^m for m = 1..H = v (1 - v^H) / (1 - v)
    v = (1 + annual_rate) ** (D(-1) / 12)
    return v * (1 - v ** months) / (1 - v)


def _by(results):
    return {r.option: r for r in results}


def test_cheap_power_and_high_utilization_make_buying_the_cheapest_and_it_overtakes_in_month_19():
    # 8 GPUs busy 60 %: on-demand 4 x 730 x 0.6 x 8 = 14,016 a month; a commitment at 2.00 pays
    # 2 x 730 x 8 = 11,680 a month; buying pays 30,000 x 8 = 240,000 at month 0 and opex
    # 0.20 x 730 x 8 = 1,168 a month.  Over 36 months: 504,576; 420,480; 240,000 + 42,048 = 282,048.
    # Buying overtakes when 240,000 + 1,168 m <= 14,016 m: m >= 18.68, so month 19.
    table = calculator_options(gpus=8, utilization=D("0.6"), cloud_usd_per_gpu_hour=D(4), gpu_price_usd=D(30_000),
                               opex_usd_per_gpu_hour=D("0.2"), horizon_months=36, annual_rate=D(0),
                               commitment_usd_per_gpu_hour=D(2), commitment_term_months=36)
    by = _by(table.results)
    assert [r.option for r in table.results] == [ON_DEMAND, COMMITMENT, BUY]
    assert (by[ON_DEMAND].total_usd, by[COMMITMENT].total_usd, by[BUY].total_usd) == (504_576, 420_480, 282_048)
    assert (by[ON_DEMAND].breakeven_month, by[COMMITMENT].breakeven_month, by[BUY].breakeven_month) == (1, 1, 19)
    assert table.cheapest.option == BUY and by[BUY].npv_usd == 282_048  # at 0 % the present value is the total


def test_a_steady_workload_with_costly_ownership_is_cheapest_on_a_3_year_commitment_at_8_percent():
    # busy every hour: on-demand 4 x 730 x 8 = 23,360 a month; commitment 2.40 x 730 x 8 = 14,016;
    # buying 60,000 x 8 = 480,000 up front and 1.00 x 730 x 8 = 5,840 a month.
    # At 8 %: A = sum (1.08)^(-m/12), m = 1..36 (about 32.04); present values 23,360 A, 14,016 A and
    # 480,000 + 5,840 A: the commitment's is the lowest.
    table = calculator_options(gpus=8, utilization=D(1), cloud_usd_per_gpu_hour=D(4), gpu_price_usd=D(60_000),
                               opex_usd_per_gpu_hour=D(1), horizon_months=36, annual_rate=D("0.08"),
                               commitment_usd_per_gpu_hour=D("2.4"), commitment_term_months=36)
    a = _annuity_closed_form(36, D("0.08"))
    assert abs(annuity_factor(36, D("0.08")) - a) < D("1e-20") and D(32) < a < D("32.1")
    by = _by(table.results)
    for option, expected in ((ON_DEMAND, 23_360 * a), (COMMITMENT, 14_016 * a), (BUY, 480_000 + 5_840 * a)):
        assert abs(by[option].npv_usd - expected) < D("1e-12")
    assert table.cheapest.option == COMMITMENT
    assert (by[COMMITMENT].total_usd, by[BUY].total_usd) == (504_576, 690_240)  # 14,016 x 36; 480,000 + 210,240


def test_moving_the_data_delays_payback_by_a_computed_number_of_months():
    # the first case's purchase, plus 51,392 USD of egress and migration work at month 0:
    # 291,392 / (14,016 - 1,168) = 22.68 -> month 23 instead of 19: four months later
    args = dict(gpus=8, utilization=D("0.6"), cloud_usd_per_gpu_hour=D(4), gpu_price_usd=D(30_000),
                opex_usd_per_gpu_hour=D("0.2"), horizon_months=36, annual_rate=D(0))
    before = _by(calculator_options(**args).results)[BUY]
    after = _by(calculator_options(**args, one_time_usd=D(51_392)).results)[BUY]
    assert (before.breakeven_month, after.breakeven_month) == (19, 23)
    assert after.total_usd - before.total_usd == 51_392 and after.upfront_usd == 291_392


def test_a_bursty_workload_commits_only_its_floor():
    # 16 hours a day at 8 GPUs, 8 hours at 24; units of 8 GPUs committed at 2.40 each (19.20 a unit-hour),
    # the rest on demand at 4.00.  The mean hour costs, by units committed:
    #   0: (16 x 8 + 8 x 24) / 24 x 4       = 53.33
    #   1: 19.20 + (8 x 16) / 24 x 4         = 40.53   <- the floor
    #   2: 38.40 + (8 x 8) / 24 x 4          = 49.07
    #   3: 57.60                             = 57.60
    demand = [D(8)] * 16 + [D(24)] * 8
    flows = size_to_demand(option=COMMITMENT, unit="instance", demand_gpus_by_hour=demand, gpus_per_unit=8,
                           upfront_usd_per_unit=D(0), covered_usd_per_unit_hour=D("19.2"),
                           uncovered_usd_per_gpu_hour=D(4), horizon_months=36, annual_rate=D("0.08"), term_months=36)
    assert (flows.quantity, flows.unit, flows.upfront_usd) == (1, "instance", 0)
    assert flows.monthly_usd == (D("19.2") + D(128) / 24 * 4) * 730  # 88,768 / 3 = 29,589.33 a month
    # a steady 24 GPUs commits all three units
    steady = size_to_demand(option=COMMITMENT, unit="instance", demand_gpus_by_hour=[D(24)] * 24, gpus_per_unit=8,
                            upfront_usd_per_unit=D(0), covered_usd_per_unit_hour=D("19.2"),
                            uncovered_usd_per_gpu_hour=D(4), horizon_months=36, annual_rate=D("0.08"))
    assert steady.quantity == 3 and steady.monthly_usd == D("57.6") * 730


def test_a_purchase_is_sized_by_present_value_upfront_included():
    # one node of 8 GPUs for 240,000 USD, opex 1,168 a month; demand 8 GPUs every hour at 4.00 on demand:
    # staying pays 23,360 a month.  Over 6 months at 0 %: 140,160 staying, 247,008 buying: buy nothing.
    # Over 36 months: 840,960 staying, 282,048 buying: buy the node.
    args = dict(option=BUY, unit="node", demand_gpus_by_hour=[D(8)] * 24, gpus_per_unit=8,
                upfront_usd_per_unit=D(240_000), covered_usd_per_unit_hour=D("1.6"), uncovered_usd_per_gpu_hour=D(4),
                annual_rate=D(0))
    assert size_to_demand(horizon_months=6, **args).quantity == 0
    bought = size_to_demand(horizon_months=36, **args)
    assert bought.quantity == 1 and bought.total_usd == 282_048


def test_discounting_and_bad_inputs():
    assert discount_factor(12, D("0.08")) * D("1.08") == 1  # a year out is worth 1 / 1.08
    assert discount_factor(0, D("0.08")) == 1
    with pytest.raises(CostModelError, match="horizon_months must be from 1 to 600, got 0"):
        calculator_options(gpus=1, utilization=D(1), cloud_usd_per_gpu_hour=D(1), gpu_price_usd=D(1),
                           opex_usd_per_gpu_hour=D(0), horizon_months=0, annual_rate=D(0))
    with pytest.raises(CostModelError, match="no measured hours"):
        size_to_demand(option=BUY, unit="node", demand_gpus_by_hour=[], gpus_per_unit=8, upfront_usd_per_unit=D(1),
                       covered_usd_per_unit_hour=D(1), uncovered_usd_per_gpu_hour=D(1), horizon_months=12,
                       annual_rate=D(0))
    flows = CashFlows(BUY, D(100), D(10), 12)
    assert flows.cumulative_usd(0) == 100 and flows.total_usd == 220


_money = st.decimals(min_value=0, max_value=100, places=2)


@settings(max_examples=200, deadline=2000)
@given(demand=st.lists(st.integers(min_value=0, max_value=40).map(D), min_size=1, max_size=48),
       gpus_per_unit=st.sampled_from([1, 4, 8]), upfront=st.decimals(min_value=0, max_value=500_000, places=0),
       covered=_money, uncovered=_money, horizon=st.integers(min_value=1, max_value=60),
       rate=st.decimals(min_value=0, max_value=D("0.2"), places=3))
def test_the_chosen_quantity_is_never_worse_than_none_or_the_peak(demand, gpus_per_unit, upfront, covered, uncovered,
                                                                  horizon, rate):
    def pv(quantity: int) -> D:  # the same cash flows, computed apart
        covered_gpus = quantity * gpus_per_unit
        hourly = quantity * covered + sum(max(d - covered_gpus, D(0)) for d in demand) / len(demand) * uncovered
        return quantity * upfront + hourly * 730 * annuity_factor(horizon, rate)

    chosen = size_to_demand(option=COMMITMENT, unit="u", demand_gpus_by_hour=demand, gpus_per_unit=gpus_per_unit,
                            upfront_usd_per_unit=upfront, covered_usd_per_unit_hour=covered,
                            uncovered_usd_per_gpu_hour=uncovered, horizon_months=horizon, annual_rate=rate)
    peak_units = -(-int(max(demand)) // gpus_per_unit)
    assert 0 <= chosen.quantity <= peak_units
    tolerance = D("1e-15") * (1 + pv(0) + pv(peak_units))
    assert chosen.npv_usd(rate) <= pv(0) + tolerance and chosen.npv_usd(rate) <= pv(peak_units) + tolerance
    assert abs(chosen.npv_usd(rate) - pv(chosen.quantity)) <= tolerance


def test_a_cloud_workloads_plan_prices_staying_committing_its_floor_and_buying_nodes():
    from hybridspend.costmodel.options import HourOfDemand, plan_workload
    from hybridspend.costmodel.rates import CloudOffer, OnPremGpuCost

    # 24 measured hours: 8 A100s allocated for 16 of them, 16 for the other 8, at 4.00 per allocated
    # GPU-hour: (16 x 32 + 8 x 64) / 24 = 42.67 an hour, x 730 = 31,146.67 a month staying.
    hours = [HourOfDemand(D(8), D(6), D(32))] * 16 + [HourOfDemand(D(16), D(12), D(64))] * 8
    offer = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D(32), "reserved": D("19.2")})
    # a node of 8 A100s: 200,000 up front; energy 0.5 kW x 1.0 x 0.10 = 0.05 and upkeep 876 / 8760 = 0.10
    # a GPU-hour: 1.20 a node-hour
    node = OnPremGpuCost("A100", D(25_000), 36, D(500), D(1), D("0.1"), D(876))
    options = plan_workload(environment="cloud", gpu_class="A100", hours=hours, offers=[offer],
                            gpu_costs=[("dgx", 8, D(200_000), node)], horizon_months=36, annual_rate=D(0))
    stay, commit, buy = (o.result for o in options)
    assert [o.label for o in options] == ["stay (cloud, as it runs)", "commit 1 x aws us-east-1 p4d.24xlarge (reserved)",
                                          "buy 2 x dgx node (8 GPUs each)"]
    assert stay.monthly_usd == D(1024) / 24 * 730
    # committing one instance (the 8-GPU floor) at 19.20 an hour; the other 8 GPUs for 8 hours at 4.00:
    # 19.20 + 8 x 8 / 24 x 4 = 29.87 an hour; two instances would pay 38.40 every hour
    assert commit.quantity == 1 and commit.monthly_usd == (D("19.2") + D(64) / 24 * 4) * 730
    # two nodes cover the peak: 400,000 + 2 x 1.20 x 730 x 36 = 463,072, against one node and the burst
    # rented, 200,000 + (9.60 + 8 x 8 / 24 x 4) x 730 x 36 = 511,856, and none, 31,146.67 x 36 = 1,121,280
    assert buy.quantity == 2 and buy.total_usd == 400_000 + D("2.4") * 730 * 36
    # 400,000 + 1,752 m <= 31,146.67 m from m = 400,000 / 29,394.67 = 13.61: month 14
    assert buy.breakeven_month == 14


def test_an_onprem_workloads_plan_prices_moving_with_the_one_time_cost():
    from hybridspend.costmodel.options import HourOfDemand, plan_workload
    from hybridspend.costmodel.rates import CloudOffer

    # 8 owned A100s, 2 busy every hour, costing 9.20 an hour: staying is 6,716 a month.  Moving rents
    # the busy GPU-hours: 2 x 4.00 x 730 = 5,840 a month, plus 20,000 of egress and work at month 0;
    # committing whole 8-GPU instances for 2 busy GPUs never pays (19.20 an hour > 8.00).
    hours = [HourOfDemand(D(8), D(2), D("9.2"))] * 24
    offer = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D(32), "reserved": D("19.2")})
    options = plan_workload(environment="onprem", gpu_class="A100", hours=hours, offers=[offer], gpu_costs=[],
                            horizon_months=36, annual_rate=D(0), one_time_usd=D(20_000))
    assert [o.label for o in options] == ["stay (onprem, as it runs)", "move to aws us-east-1 p4d.24xlarge on demand"]
    stay, move = (o.result for o in options)
    assert (stay.monthly_usd, move.monthly_usd, move.upfront_usd) == (D("6716"), D(5840), D(20_000))
    # 20,000 + 5,840 m <= 6,716 m from m = 22.83: month 23
    assert move.breakeven_month == 23 and move.total_usd == 20_000 + 5840 * 36


def test_a_cloud_workload_commits_only_at_its_own_provider_and_nothing_committed_is_no_option():
    from hybridspend.costmodel.options import HourOfDemand, plan_workload
    from hybridspend.costmodel.rates import CloudOffer

    hours = [HourOfDemand(D(8), D(6), D(32))] * 24
    aws = CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D(32), "reserved": D("19.2")})
    gcp = CloudOffer("gcp", "us-central1", "a2-highgpu-8g", "A100", 8, {"committed_use": D(10)})
    dear = CloudOffer("aws", "us-west-2", "p4d.24xlarge", "A100", 8, {"reserved": D(40)})  # dearer than staying
    options = plan_workload(environment="cloud", gpu_class="A100", hours=hours, offers=[aws, gcp, dear],
                            gpu_costs=[], horizon_months=12, annual_rate=D(0), provider="aws")
    # GCP's committed use would be a move (with egress), not a commitment; committing 0 at 40.00 is staying
    assert [o.label for o in options] == ["stay (cloud, as it runs)", "commit 1 x aws us-east-1 p4d.24xlarge (reserved)"]


def test_with_a_throughput_table_a_plan_weighs_other_classes_as_the_stream_does():
    """H100 = 3 A100 of work: an H100 cloud workload may buy A100 nodes, an A100 workload move to an H100 offer."""
    from hybridspend.costmodel.options import HourOfDemand, plan_workload
    from hybridspend.costmodel.rates import CloudOffer, OnPremGpuCost

    throughput = {"A100": D(1), "H100": D(3)}
    a100 = OnPremGpuCost("A100", D(30_000), 36, D(400), D("1.5"), D("0.10"), D(8760))  # $0.06 energy, $1 upkeep
    llm = [HourOfDemand(D(8), D("4.8"), D(64))] * 24  # one p5 at 60 %, $8 an H100-hour
    options = plan_workload(environment="cloud", gpu_class="H100", hours=llm, offers=[],
                            gpu_costs=[("dgx-a100", 8, D(240_000), a100)], horizon_months=36, annual_rate=D("0.08"),
                            throughput=throughput)
    assert [o.label for o in options] == ["stay (cloud, as it runs)", "buy 3 x dgx-a100 node (8 GPUs each)"]
    buy = options[1].result
    # 8 H100 = 24 A100 of work every hour: three nodes cover it, each $1.06 x 8 an hour to run
    assert (buy.quantity, buy.upfront_usd, buy.monthly_usd) == (3, D(720_000), 3 * 8 * D("1.06") * 730)
    # without the table an H100 workload has no A100 to buy
    assert len(plan_workload(environment="cloud", gpu_class="H100", hours=llm, offers=[],
                             gpu_costs=[("dgx-a100", 8, D(240_000), a100)], horizon_months=36,
                             annual_rate=D("0.08"))) == 1
    p5 = CloudOffer("aws", "us-east-1", "p5.48xlarge", "H100", 8, {"on_demand": D(64)})
    vision = [HourOfDemand(D(4), D("0.6"), D("8.81"))] * 24  # 4 owned A100 at 15 %
    stay, move = (o.result for o in plan_workload(environment="onprem", gpu_class="A100", hours=vision, offers=[p5],
                                                  gpu_costs=[], horizon_months=36, annual_rate=D(0),
                                                  throughput=throughput))
    # 0.6 busy A100 = 0.2 busy H100 an hour at $8: $1.60 an hour
    assert move.monthly_usd == D("0.6") / 3 * 8 * 730
