"""Idle owned capacity is promised once (issue 23, item 4): fill-idle recommendations draw from one pool
per GPU class, in order of savings per GPU, however the workloads are spread over partitions."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridspend.contracts.config import Config
from hybridspend.contracts.events import CostWindow, Watermark
from hybridspend.costmodel import (
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    STAY,
    CloudOffer,
    CrossingState,
    IdleClaim,
    Market,
    OnPremGpuCost,
    Thresholds,
    WorkloadWindow,
    evaluate,
)
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.streams.processing import DecisionProcessor, PartitionClock, WorkloadState

A100 = OnPremGpuCost("A100", D(30000), 36, D(400), D("1.5"), D("0.10"), D(8760), date(2026, 1, 1))
ENERGY = D("0.06")  # 400 W x 1.5 x $0.10/kWh: what an idle A100 costs a workload that fills it, per hour
MARKET = Market(onprem={"A100": A100, "L4": OnPremGpuCost("L4", D(3000), 36, D(72), D("1.5"), D("0.10"), D(500),
                                                          date(2026, 1, 1))},
                offers=(CloudOffer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, {"on_demand": D(32)}),),
                throughput={"A100": D(1), "H100": D(3), "L4": D("0.25")}, gpus_per_node={"A100": 8})
MARGIN = D("0.10")


def claim(workload: str, gpus: int, usd_per_gpu_hour: D, gpu_class: str = "A100") -> IdleClaim:
    return IdleClaim(workload, gpu_class, gpus * MS_PER_HOUR, MS_PER_HOUR, usd_per_gpu_hour * gpus)


def test_one_idle_node_goes_to_the_workload_that_saves_most_per_gpu_and_no_more():
    # the case: one idle 8-GPU node, three 8-GPU cloud workloads, each cheaper on it
    claims = [claim("a", 8, D(4)), claim("b", 8, D(5)), claim("c", 8, D("4.5"))]
    assert MARKET.allocate_idle({"A100": D(8)}, claims, MARGIN) == {("b", "A100"): {"A100": D(8)}}
    # two idle nodes: b, then c ($4.50 - $0.06 a GPU-hour saved against a's $3.94)
    assert MARKET.allocate_idle({"A100": D(16)}, claims, MARGIN) == {("b", "A100"): {"A100": D(8)},
                                                                     ("c", "A100"): {"A100": D(8)}}


def test_a_claim_that_does_not_fit_leaves_the_gpus_to_the_next_one_that_does():
    claims = [claim("big", 16, D(9)), claim("small", 4, D(2))]
    assert MARKET.allocate_idle({"A100": D(8)}, claims, MARGIN) == {("small", "A100"): {"A100": D(4)}}


def test_a_claim_that_would_not_cross_the_margin_takes_nothing():
    # $0.065 a GPU-hour against $0.06 of energy: cheaper, but not by 10 %
    assert MARKET.allocate_idle({"A100": D(8)}, [claim("thrifty", 8, D("0.065"))], MARGIN) == {}


def test_other_classes_are_weighed_through_the_throughput_table():
    # 2 H100 are 6 A100-equivalents (throughput 3 : 1)
    assert MARKET.allocate_idle({"A100": D(6)}, [claim("llm", 2, D(8), "H100")], MARGIN) == {
        ("llm", "H100"): {"A100": D(6)}}
    assert MARKET.allocate_idle({"A100": D(5)}, [claim("llm", 2, D(8), "H100")], MARGIN) == {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idle=st.dictionaries(st.sampled_from(["A100", "L4"]), st.integers(0, 64).map(D), max_size=2),
       asks=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.sampled_from(["A100", "H100", "L4"]),
                               st.integers(0, 40), st.integers(0, 20)), max_size=12))
def test_the_gpus_promised_never_exceed_the_idle_gpus_of_their_class(idle, asks):
    claims = [claim(w, gpus, D(price), c) for w, c, gpus, price in asks]
    granted = MARKET.allocate_idle(idle, claims, MARGIN)
    for owned_class in ("A100", "L4"):
        promised = sum((g.get(owned_class, D(0)) for g in granted.values()), D(0))
        assert promised <= idle.get(owned_class, D(0))
    for (workload, gpu_class), grant in granted.items():
        assert len(grant) == 1  # one workload, one class of owned GPUs
        assert any(c.workload == workload and c.gpu_class == gpu_class for c in claims)


def window(workload: str, hour: int, gpus: int, usd_per_gpu_hour: D) -> WorkloadWindow:
    return WorkloadWindow(workload, "t", "cloud", "A100", hour * MS_PER_HOUR, MS_PER_HOUR, gpus * MS_PER_HOUR,
                          gpus * MS_PER_HOUR * 9 // 10, usd_per_gpu_hour * gpus, D(1))


def test_a_fill_idle_recommendation_is_withdrawn_when_its_gpus_go_to_a_workload_that_saves_more():
    # `a` holds the idle node alone for 3 hours; from hour 3 `b` ($5 a GPU-hour) claims it too and wins it
    state, decisions = CrossingState(), {}
    for hour in range(8):
        claims = [claim("a", 8, D(4))] + ([claim("b", 8, D(5))] if hour >= 3 else [])
        grant = MARKET.allocate_idle({"A100": D(8)}, claims, MARGIN).get(("a", "A100"), {})
        w = window("a", hour, 8, D(4))
        d = evaluate(state, w, MARKET.alternative(w, idle_gpus=grant), Thresholds())
        if d is not None:
            decisions[hour] = d
    assert {h: d.kind for h, d in decisions.items()} == {2: REPATRIATE_FILL_IDLE, 5: STAY}
    stay = decisions[5]
    assert "no longer free for it" in stay.reason and "(repatriate fill idle) is withdrawn" in stay.reason
    # buying is cheaper than $4 a GPU-hour, so staying saves nothing against it: never a negative saving
    assert stay.monthly_savings_usd == stay.monthly_savings_low_usd == stay.monthly_savings_high_usd == 0
    assert MARKET.alternative(window("a", 5, 8, D(4)), idle_gpus={}).kind == REPATRIATE_BUY


CONFIG = Config.model_validate({
    "onprem_assets": [{
        "name": "dgx", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 8,
        "gpus_per_node": 8, "hosts": ["dgx-*"], "purchase_price_usd_per_node": 240_000,
        "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 400, "pue": 1.5,
        "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 70_080}],
    "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
                      "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 40}}],
    "thresholds": {"window_seconds": 3600},
})
PRICES = {"a": D(4), "b": D(5), "c": D("4.5")}  # $ per GPU-hour each pays on demand


def cost_window(workload: str, hour: int) -> CostWindow:
    start = hour * MS_PER_HOUR
    return CostWindow(f"{workload}{hour}", workload, "t", False, "cloud", "A100", f"i-{workload}", start, MS_PER_HOUR,
                      8 * MS_PER_HOUR, 7 * MS_PER_HOUR, 8 * MS_PER_HOUR, 0, 60, start, start + MS_PER_HOUR,
                      PRICES[workload] * 8, "estimated", "aws", "p4d.24xlarge", "on_demand")


def test_the_stream_promises_one_idle_node_once_however_the_workloads_are_partitioned():
    """Three cloud workloads on three decision partitions, one idle 8-GPU node: every partition sees the same
    watermarks (the idle node and every cloud window), so exactly one workload is told to fill it."""
    decider = DecisionProcessor(CONFIG)
    clocks = {w: PartitionClock() for w in PRICES}  # one partition per workload
    states = {w: WorkloadState() for w in PRICES}
    decided = []
    for hour in range(6):
        start = hour * MS_PER_HOUR
        mark = Watermark(f"m{hour}", "usage|0", start + MS_PER_HOUR, [(start, "A100", "dgx-1", 8 * MS_PER_HOUR)],
                         cloud=[(start, w, "A100", f"i-{w}", 8 * MS_PER_HOUR, int(PRICES[w] * 8 * 1_000_000))
                                for w in PRICES])
        mark = Watermark.decode(mark.encode())  # as it travels
        for w in PRICES:
            decider.add(states[w], cost_window(w, hour))
            decider.on_watermark(clocks[w], mark)
            decided += decider.close(w, states[w], start + MS_PER_HOUR, clocks[w])
            decider.forget_idle(clocks[w], start + MS_PER_HOUR)  # as the decide agent does after closing
            clocks[w] = PartitionClock.from_dict(clocks[w].to_dict())  # through the table
    fills = [d for d in decided if d.kind == REPATRIATE_FILL_IDLE]
    assert [(d.workload, d.gpus_needed) for d in fills] == [("b", 8)]
    assert all(not c.cloud and not c.idle for c in clocks.values())  # forgotten once the windows closed
