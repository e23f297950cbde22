"""Commit in the cloud: a workload paying on demand told to commit its steady floor, hand-computed."""

from __future__ import annotations

from decimal import Decimal as D

from hybridspend.alerts.slack import decision_message
from hybridspend.contracts.config import load_config
from hybridspend.costmodel import COMMIT_IN_CLOUD, CrossingState, Market, Thresholds, WorkloadWindow, evaluate
from hybridspend.costmodel.money import micro
from hybridspend.costmodel.options import annuity_factor
from hybridspend.costmodel.rates import CloudOffer, OnPremGpuCost
from hybridspend.costmodel.timeunits import MS_PER_HOUR

# one p5-like instance: 8 GPUs, $64 an hour on demand ($8 a GPU-hour), $40 reserved ($5)
P5 = CloudOffer("aws", "us-east-1", "p5.48xlarge", "H100", 8, {"on_demand": D(64), "reserved": D(40)})
THRESHOLDS = Thresholds(D("0.10"), 3, evidence_hours={COMMIT_IN_CLOUD: D(3)})


def cloud_hour(hour: int, gpus: int, purchase_option: str = "on_demand", provider: str = "aws") -> WorkloadWindow:
    """An hour of `serve` holding ``gpus`` H100s on demand at $8 a GPU-hour, 70 % busy."""
    return WorkloadWindow("serve", "web", "cloud", "H100", hour * MS_PER_HOUR, MS_PER_HOUR, gpus * MS_PER_HOUR,
                          gpus * MS_PER_HOUR * 7 // 10, D(8) * gpus, D(1), provider, purchase_option)


def decide(market: Market, hours: list[WorkloadWindow]):
    state, decisions = CrossingState(), []
    for w in hours:
        d = evaluate(state, w, market.alternative(w), THRESHOLDS)
        if d is not None:
            decisions.append(d)
    return decisions


def test_a_steady_on_demand_workload_commits_what_it_holds():
    (d,) = decide(Market(onprem={}, offers=(P5,), throughput={}), [cloud_hour(h, 8) for h in range(3)])
    assert (d.kind, d.from_env, d.to_env) == (COMMIT_IN_CLOUD, "cloud", "cloud")
    assert (d.instances_needed, d.gpus_needed, d.nodes_needed, d.payback_months) == (1, 8, None, None)
    # $64 an hour on demand against $40 committed, 3 hours: (192 - 120) / 3 h * 730 h = $17,520 a month
    assert d.monthly_savings_usd == D(17520)
    assert d.monthly_savings_low_usd == d.monthly_savings_high_usd == D(17520)
    assert d.alternative_label == "aws us-east-1 p5.48xlarge reserved"
    assert "committing 1 × p5.48xlarge" in d.reason


def test_a_bursty_workload_commits_only_its_floor_and_leaves_the_burst_on_demand():
    # 16, 8 and 24 GPUs: one instance is held every hour; the rest stays at $8 a GPU-hour
    (d,) = decide(Market(onprem={}, offers=(P5,), throughput={}), [cloud_hour(0, 16), cloud_hour(1, 8),
                                                                   cloud_hour(2, 24)])
    assert (d.instances_needed, d.gpus_needed) == (1, 8)
    # committed: 3 h x $40; on demand above it: (8 + 0 + 16) GPU-hours x $8 = $192; now: 48 GPU-hours x $8 = $384
    # (384 - 312) / 3 h * 730 h = $17,520 a month, the steady case's: only the floor saves
    assert d.monthly_savings_usd == D(17520)
    # per hour: 128 - 104, 64 - 40, 192 - 168: $24 in every hour
    assert d.monthly_savings_low_usd == d.monthly_savings_high_usd == D(17520)


def test_nothing_to_commit_when_not_one_whole_instance_is_held_through_the_evidence():
    assert decide(Market(onprem={}, offers=(P5,), throughput={}), [cloud_hour(0, 8), cloud_hour(1, 4),
                                                                   cloud_hour(2, 8)]) == []


def test_only_a_workload_paying_on_demand_at_the_offers_provider_is_told_to_commit():
    market = Market(onprem={}, offers=(P5,), throughput={})
    assert market.alternative(cloud_hour(0, 8, purchase_option="spot")) is None
    assert market.alternative(cloud_hour(0, 8, purchase_option="reserved")) is None
    assert market.alternative(cloud_hour(0, 8, provider="gcp")) is None  # another provider's price is a move
    assert market.alternative(cloud_hour(0, 8, provider="")) is None  # several providers, or not known


def test_buying_wins_over_committing_where_it_costs_less_and_the_other_way_round():
    def owned(price_per_gpu: int) -> OnPremGpuCost:
        return OnPremGpuCost("H100", D(price_per_gpu), 36, D(700), D("1.2"), D("0.10"), D(0))

    hour = cloud_hour(0, 8)
    # bought: 8 x 0.7 / 0.8 busy -> 7 GPUs, 8 in whole nodes of 8; an owned GPU-hour: price / (36 x 730) + energy
    cheap = Market(onprem={"H100": owned(20_000)}, offers=(P5,), throughput={}, gpus_per_node={"H100": 8})
    assert cheap.alternative(hour).kind == "repatriate_buy_capacity"  # 8 x ~$0.85 < 8 x $5
    dear = Market(onprem={"H100": owned(200_000)}, offers=(P5,), throughput={}, gpus_per_node={"H100": 8})
    assert dear.alternative(hour).kind == COMMIT_IN_CLOUD  # 8 x ~$7.69 > 8 x $5


def test_the_decision_reads_as_a_commitment_in_slack_and_routes_to_finance(tmp_path):
    from hybridspend.alerts.alerter import routes_for
    from hybridspend.contracts.events import BreakevenDecision

    (d,) = decide(Market(onprem={}, offers=(P5,), throughput={}), [cloud_hour(h, 8) for h in range(3)])
    event = BreakevenDecision(d.decision_id, d.workload, d.team, d.from_env, d.to_env, d.kind, d.gpu_class,
                              d.window_start_ms, d.window_end_ms, d.current_usd_per_busy_gpu_hour,
                              d.alternative_usd_per_busy_gpu_hour, d.utilization, d.monthly_savings_usd,
                              d.confidence, d.alternative_label, d.gpus_needed, d.reason,
                              instances_needed=d.instances_needed)
    assert decision_message(event)["text"].startswith("Commit in the cloud: serve (cloud), saves about $17,520.00/month")
    config = tmp_path / "config.yaml"
    config.write_text("alerts:\n  routes:\n    - {name: finance, audience: finance, slack_webhook_url: {env: F},"
                      " min_monthly_savings_usd: 1000}\n"
                      "    - {name: platform, audience: platform, slack_webhook_url: {env: P}}\n")
    assert [r.name for r in routes_for(load_config(config, {}), event)] == ["finance", "platform"]


def test_the_decision_agent_commits_a_workload_whose_cost_windows_say_it_pays_on_demand():
    """The stream's own path (``DecisionProcessor``): cost windows carry the provider and purchase option of
    each resource; a table value written before they did reads them as not known."""
    from hybridspend.streams.processing import WorkloadState

    decision = decide_in_the_stream([{
        "provider": "aws", "region": "us-east-1", "instance_type": "p5.48xlarge", "gpu_model": "NVIDIA H100",
        "gpu_class": "H100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 64, "reserved": 40}}],
        round_trip=True)
    assert (decision.kind, decision.instances_needed, decision.monthly_savings_usd) == (COMMIT_IN_CLOUD, 1, D(17520))
    # its options over 36 months (no owned profile: the default horizon) at 8 %: staying pays $64 x 730 a month,
    # committing one instance $40 x 730, from month 1 cheaper; nothing to buy (no owned profile)
    assert (decision.horizon_months, decision.discount_rate_pct) == (36, D(8))
    stay, commit = decision.options
    annuity = annuity_factor(36, D("0.08"))
    assert (stay.option, stay.monthly_usd, stay.total_usd, stay.breakeven_month) == ("stay", D(46720), D(1681920), 1)
    assert stay.npv_usd == micro(D(46720) * annuity)
    assert (commit.label, commit.quantity, commit.unit) == ("commit 1 x aws us-east-1 p5.48xlarge (reserved)", 1,
                                                            "p5.48xlarge")
    assert (commit.upfront_usd, commit.monthly_usd, commit.total_usd) == (0, D(29200), D(1051200))
    assert commit.npv_usd == micro(D(29200) * annuity) and commit.breakeven_month == 1
    text = decision_message(decision)["blocks"][-1]["text"]["text"]
    assert text.splitlines() == [
        "*Options over 36 months* (present value at 8% a year)",
        f"• commit 1 x aws us-east-1 p5.48xlarge (reserved): ${commit.npv_usd:,.2f} ($0.00 up front, $29,200.00 a "
        "month, overtakes staying in month 1)",
        f"• stay (cloud, as it runs): ${stay.npv_usd:,.2f} ($0.00 up front, $46,720.00 a month)"]
    old = {"open": {"cloud|H100|0": {"i-1": [1, 1, "1", 0, 1, 3600000]}}, "crossing": {}, "team": "",
           "allow_spot": False, "closed_through_ms": {}}
    (window,) = WorkloadState.from_dict(old).open["cloud|H100|0"].values()
    assert (window.provider, window.purchase_option) == ("", "")


def test_once_the_commitment_is_made_it_is_not_withdrawn_as_a_stay():
    """After the recommendation the workload pays a committed price: nothing is left to weigh that against
    (its offer's committed price is what it pays), and no "stay" withdraws the commitment."""
    market = Market(onprem={}, offers=(P5,), throughput={})
    state = CrossingState()
    decisions = [evaluate(state, w, market.alternative(w), THRESHOLDS) for w in [cloud_hour(h, 8) for h in range(3)]]
    assert [d.kind for d in decisions if d] == [COMMIT_IN_CLOUD] and state.moved
    committed = [cloud_hour(h, 8, purchase_option="reserved") for h in range(3, 12)]
    assert [evaluate(state, w, market.alternative(w), THRESHOLDS) for w in committed] == [None] * 9
    assert not state.moved


def test_an_options_table_of_many_offers_is_cut_to_what_the_contract_carries_and_decodes():
    from hybridspend.contracts.events import MAX_OPTIONS, BreakevenDecision

    offers = [{"provider": "aws", "region": f"region-{i}", "instance_type": "p5.48xlarge", "gpu_model": "H100",
               "gpu_class": "H100", "gpus_per_instance": 8,
               "usd_per_hour": {"on_demand": 64, "reserved": 40 + i, "savings_plan": 41 + i, "reserved_3y": 30 + i,
                                "savings_plan_3y": 31 + i}} for i in range(20)]
    decision = decide_in_the_stream(offers)
    # 20 offers x 4 committed prices + staying = 81 rows priced; staying and the 63 cheapest are carried
    assert len(decision.options) == MAX_OPTIONS and decision.options[0].option == "stay"
    assert "commit 1 x aws region-0 p5.48xlarge (reserved 3y)" in [o.label for o in decision.options]
    assert BreakevenDecision.decode(decision.encode()) == decision


def test_a_commitment_whose_term_outlasts_the_horizon_is_not_an_option():
    from hybridspend.costmodel.options import HourOfDemand, plan_workload

    offer = CloudOffer("aws", "us-east-1", "p5.48xlarge", "H100", 8, {"on_demand": D(64), "reserved": D(40),
                                                                         "reserved_3y": D(30)})
    hours = [HourOfDemand(D(8), D(6), D(64))] * 24

    def labels(horizon):
        return [o.label for o in plan_workload(environment="cloud", gpu_class="H100", hours=hours, offers=[offer],
                                               gpu_costs=[], horizon_months=horizon, annual_rate=D(0))]
    assert labels(12) == ["stay (cloud, as it runs)", "commit 1 x aws us-east-1 p5.48xlarge (reserved)"]
    assert labels(36)[-1] == "commit 1 x aws us-east-1 p5.48xlarge (reserved 3y)"


def test_a_decision_whose_options_lack_their_terms_or_amounts_is_refused_with_the_reason():
    import json

    import pytest

    from hybridspend.contracts.events import BreakevenDecision, EventError
    from tests.test_event_contracts import EXAMPLES

    good = json.loads(EXAMPLES["BreakevenDecision"].encode())
    no_horizon = dict(good, horizon_months=None)
    with pytest.raises(EventError, match="needs its horizon_months and discount_rate_pct"):
        BreakevenDecision.decode(json.dumps(no_horizon))
    no_amount = dict(good, options=[{k: v for k, v in good["options"][0].items() if k != "npv_usd"}])
    with pytest.raises(EventError, match="npv_usd"):
        BreakevenDecision.decode(json.dumps(no_amount))


def through_the_stream(config: dict, hours: int, *, workload: str = "serve", gpu_class: str = "H100",
                       instance_type: str = "p5.48xlarge", usd_per_hour: D = D(64), busy_gpus: int = 5,
                       round_trip: bool = False) -> list:
    """``hours`` on-demand hours of ``workload`` (one 8-GPU instance at ``usd_per_hour``) through the stream's
    ``DecisionProcessor`` configured with ``config``: the decisions it makes, trending notices left out."""
    from hybridspend.contracts.config import Config
    from hybridspend.contracts.events import CostWindow, Watermark
    from hybridspend.streams.processing import DecisionProcessor, PartitionClock, WorkloadState

    decider, state, clock = DecisionProcessor(Config.model_validate(config)), WorkloadState(), PartitionClock()
    for hour in range(hours):
        start = hour * MS_PER_HOUR
        decider.add(state, CostWindow(f"w{hour}", workload, "web", False, "cloud", gpu_class, "i-1", start,
                                      MS_PER_HOUR, 8 * MS_PER_HOUR, busy_gpus * MS_PER_HOUR, 8 * MS_PER_HOUR, 0, 60,
                                      start, start + MS_PER_HOUR, usd_per_hour, "estimated", "aws", instance_type,
                                      "on_demand"))
    if round_trip:
        state = WorkloadState.from_dict(state.to_dict())  # through the table's form
    decider.on_watermark(clock, Watermark("m", "usage|0", hours * MS_PER_HOUR))
    return [d for d in decider.close(workload, state, hours * MS_PER_HOUR, clock) if d.kind != "trending_repatriation"]


def decide_in_the_stream(offers: list[dict], round_trip: bool = False):
    """Three on-demand hours of `serve` (one p5 at $64 an hour) with ``offers`` configured and a commitment's
    evidence of 3 hours: the decision the stream makes."""
    (decision,) = through_the_stream({"cloud_offers": offers, "thresholds": {
        "window_seconds": 3600, "evidence_hours": {"commit_in_cloud": 3}}}, 3, round_trip=round_trip)
    return decision


def decide_buy_or_commit(node_price_usd: int):
    """168 on-demand hours of `train` (one p4d, 8 A100 at $4 a GPU-hour, half busy), with one owned A100 node
    profile at ``node_price_usd`` and a 3-year reservation at $2.30 a GPU-hour: the decision the stream makes
    and the cheapest buy and commitment rows of its table."""
    (decision,) = through_the_stream({
        "onprem_assets": [{
            "name": "dgx", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 8,
            "gpus_per_node": 8, "hosts": ["dgx-*"], "purchase_price_usd_per_node": node_price_usd,
            "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 400, "pue": 1.5,
            "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 70_080}],  # $1 a GPU-hour
        "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge",
                          "gpu_model": "A100", "gpu_class": "A100", "gpus_per_instance": 8,
                          "usd_per_hour": {"on_demand": 32, "reserved_3y": D("18.40")}}],
        "thresholds": {"window_seconds": 3600}}, 168, workload="train", gpu_class="A100",
        instance_type="p4d.24xlarge", usd_per_hour=D(32), busy_gpus=4)
    best = {kind: min(o.npv_usd for o in decision.options if o.option == kind) for kind in ("buy", "commitment")}
    return decision, best


def test_buying_or_committing_is_chosen_by_present_value_not_by_the_cheaper_hour():
    # a node at $240,000: owned, a GPU-hour costs 240,000 / 8 / (36 x 730) + 0.06 + 1 = $2.20, less than the $2.30
    # reserved, so buying is the cheaper hour.  Over 36 months at 8 % a year the purchase is paid up front:
    # buy 240,000 + 8 x 1.06 x 730 x annuity(36) against commit 8 x 2.30 x 730 x annuity(36), and committing wins
    annuity = annuity_factor(36, D("0.08"))
    decision, best = decide_buy_or_commit(240_000)
    assert best["buy"] == micro(240_000 + 8 * D("1.06") * 730 * annuity)
    assert best["commitment"] == micro(8 * D("2.30") * 730 * annuity)
    assert best["commitment"] < best["buy"]
    assert decision.kind == COMMIT_IN_CLOUD and decision.instances_needed == 1
    assert decision.alternative_label == "aws us-east-1 p4d.24xlarge reserved_3y"
    # at $150,000 a node buying is cheaper over the horizon too: the decision buys
    decision, best = decide_buy_or_commit(150_000)
    assert best["buy"] < best["commitment"]
    assert decision.kind == "repatriate_buy_capacity" and decision.nodes_needed == 1


def test_a_term_past_the_horizon_gives_way_to_the_one_within_it():
    # over 24 months a 3-year reservation would be paid past the horizon: the 1-year one is committed instead
    (d,) = through_the_stream({
        "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p5.48xlarge", "gpu_model": "H100",
                          "gpu_class": "H100", "gpus_per_instance": 8,
                          "usd_per_hour": {"on_demand": 64, "reserved": 40, "reserved_3y": 30}}],
        "thresholds": {"window_seconds": 3600, "horizon_months": 24, "evidence_hours": {"commit_in_cloud": 3}}}, 3)
    assert d.kind == COMMIT_IN_CLOUD and d.alternative_label == "aws us-east-1 p5.48xlarge reserved"
    assert d.monthly_savings_usd == (64 - 40) * 730
    assert {o.label for o in d.options} == {"stay (cloud, as it runs)", "commit 1 x aws us-east-1 p5.48xlarge (reserved)"}


def test_a_purchase_takes_its_quantity_from_the_row_of_its_own_owned_class():
    from hybridspend.costmodel.breakeven import REPATRIATE_BUY, Alternative, _table_row
    from hybridspend.costmodel.options import BUY, OptionResult, PlannedOption

    def row(label, gpu_class, quantity, npv):
        return PlannedOption(label, OptionResult(BUY, quantity, "node", None, D(0), D(0), D(0), D(npv), None), gpu_class)

    table = [row("buy 1 x hgx-h100 node (8 GPUs each)", "H100", 1, 100),  # cheaper, but of another class
             row("buy 3 x dgx-a100 node (8 GPUs each)", "A100", 3, 200)]
    a100 = Alternative("onprem", REPATRIATE_BUY, D(1), D(1), "on-prem A100", 24, unit="node", unit_name="A100 node",
                       gpus_per_unit=8, gpu_class="A100")
    assert _table_row(table, a100).result.quantity == 3
