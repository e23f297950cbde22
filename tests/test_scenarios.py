"""Scenario tests: `hybridspend simulate` runs a month of a hybrid fleet through the real pipeline
(local broker, Faust worker subprocesses, the sink, PostgreSQL) and the decisions it prints are
checked against figures computed here by hand from the scenario file.

The scenario is contracts/examples/scenarios/hybrid-month.yaml; the numbers below come from it:
A100 assets at $30,000 per GPU over 36 months, 400 W x PUE 1.5 x $0.10/kWh, $1.00/GPU-hour upkeep,
in nodes of 8; live prices p4d $32/h on demand, $12/h spot ($14 from hour 300), p5 $64/h (Savings Plans
$41.60 for 1 year, $28.80 for 3); H100 = 3 A100.
The thresholds are the defaults: filling idle GPUs needs the dwell (3 hourly windows), a migration
24 h of evidence, a purchase or a commitment 168 h; purchases and commitments are sized by present value.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from decimal import ROUND_HALF_EVEN
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "scenarios" / "hybrid-month.yaml"
MICRO = D("0.000001")

CAPEX = D(30000) / (36 * 730)  # per A100-hour
ENERGY = D(400) / 1000 * D("1.5") * D("0.10")  # 0.06 per A100-hour at the configured (and measured) 400 W
UPKEEP = D(70080) / 8 / 8760  # 1.00 per A100-hour
A100_RATE = CAPEX + ENERGY + UPKEEP
P4D, P5 = D(32) / 8, D(64) / 8  # per GPU-hour


def simulate(*extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "simulate", str(SCENARIO), "--json", *extra],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def simulated_state(tmp_path_factory):
    """The state directory (database included) the month is simulated into."""
    return tmp_path_factory.mktemp("hybrid-month")


@pytest.fixture(scope="module")
def one_worker(simulated_state) -> dict:
    return simulate("--state-dir", str(simulated_state))


def test_the_months_onprem_focus_export_conforms_with_a_chargeback_invoice_on_every_row(one_worker, simulated_state,
                                                                                          tmp_path):
    import csv
    import io

    from tests.test_focus_export import focus_violations

    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-11",
                           "--format", "focus", "--state-dir", str(simulated_state), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "onprem-focus-2026-11.csv").read_text()
    assert focus_violations(text) == []
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {r["InvoiceId"] for r in rows} == {"chargeback-on-prem-2026-11"}


@pytest.mark.integration
def test_the_report_shows_the_options_table_each_decision_carried(one_worker, simulated_state, tmp_path):
    """The same figures in the report as in the decision (and so in Slack and simulate): its cheapest option
    by present value, to the dollar the report rounds to."""
    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-11",
                           "--format", "html", "--state-dir", str(simulated_state), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = html.unescape(next(tmp_path.glob("*.html")).read_text())
    (llm,) = by_workload(one_worker)["llm"]
    best = min(llm["options"], key=lambda o: D(o["npv_usd"]))
    assert best["label"] == "commit 1 x aws us-east-1 p5.48xlarge (savings plan 3y)"
    assert f"llm: {best['label']} (${D(best['npv_usd']):,.0f} over {llm['horizon_months']} months)" in text
    # one savings figure a year per decision, the one it carried (Slack's and simulate's monthly figure x 12)
    for workload in ("finetune", "llm", "embed"):
        (d,) = by_workload(one_worker)[workload]
        assert f"${D(d['monthly_savings_usd']) * 12:,.0f}" in text, workload


def by_workload(result: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in result["decisions"]:
        out.setdefault(d["workload"], []).append(d)
    return out


def close(value: str, expected: D, tolerance: D = D("0.000002")) -> bool:
    return abs(D(value) - expected) <= tolerance


@pytest.mark.integration
def test_cloud_workload_at_high_utilization_repatriates_into_idle_onprem_a100s(one_worker):
    (d,) = by_workload(one_worker)["embed"]
    # a p4d at 90 %: 8 GPU-hours cost $32 a window; 16 owned A100 sit idle (node 03, half of 01 and 02),
    # so it fits: the marginal cost is their energy, 8 x $0.06 = $0.48 a window (capex is sunk)
    assert (d["kind"], d["from_env"], d["to_env"], d["gpus_needed"]) == ("repatriate_fill_idle", "cloud", "onprem", 8)
    assert d["decided_at"] == "2026-11-02T03:00:00Z"  # three hourly windows: the dwell
    assert D(d["evidence_hours"]) == 3
    busy_h = 3 * 8 * D("0.9")
    assert close(d["current_usd_per_busy_gpu_hour"], (3 * 8 * P4D / busy_h).quantize(MICRO))
    assert close(d["alternative_usd_per_busy_gpu_hour"], (3 * 8 * ENERGY / busy_h).quantize(MICRO))
    assert D(d["monthly_savings_usd"]) == (3 * 8 * P4D - 3 * 8 * ENERGY) / 3 * 730  # = $23,009.60
    assert D(d["confidence"]) == 1 and d["payback_months"] is None
    # every window cost the same: the range is the point
    assert d["monthly_savings_low_usd"] == d["monthly_savings_usd"] == d["monthly_savings_high_usd"]


@pytest.mark.integration
def test_onprem_workload_falling_to_15_percent_migrates_to_cloud_exactly_24_hours_later(one_worker):
    (d,) = by_workload(one_worker)["train-vision"]
    # 4 owned A100 cost their full rate every hour; at 15 % they do 0.6 busy GPU-hours a window.
    # The cheapest cloud for that work: a p5 at $8/H100-hour, a third of an H100 per A100 -> $2.67/A100-hour
    window_usd = (4 * A100_RATE).quantize(MICRO, rounding=ROUND_HALF_EVEN)
    busy_h = 24 * 4 * D("0.15")
    alt_usd = busy_h * P5 / 3
    assert (d["kind"], d["from_env"], d["to_env"]) == ("migrate_to_cloud", "onprem", "cloud")
    assert d["alternative"] == "aws us-east-1 p5.48xlarge on_demand"
    # the drop is at hour 4; windows 4 to 27 are the 24 h of evidence a migration needs
    assert d["decided_at"] == "2026-11-03T04:00:00Z" and D(d["evidence_hours"]) == 24
    # 4 A100 of work = 4/3 H100 -> 2 GPUs, one whole p5.48xlarge (8 GPUs)
    assert (d["gpus_needed"], d["instances_needed"]) == (2, 1)
    assert D(d["utilization"]) == D("0.15")
    assert close(d["current_usd_per_busy_gpu_hour"], (24 * window_usd / busy_h).quantize(MICRO))  # $14.68
    assert close(d["alternative_usd_per_busy_gpu_hour"], (alt_usd / busy_h).quantize(MICRO))  # $2.67
    # (24 * 8.806210 - 38.4) / 24 * 730 = 5,260.53 $/month; every window the same, so the range is the point
    assert close(d["monthly_savings_usd"], ((24 * window_usd - alt_usd) / 24 * 730).quantize(MICRO), D("0.00001"))
    assert d["monthly_savings_low_usd"] == d["monthly_savings_usd"] == d["monthly_savings_high_usd"]


@pytest.mark.integration
def test_workload_oscillating_around_breakeven_for_a_month_gets_one_decision_with_its_spread(one_worker):
    decisions = by_workload(one_worker)["research"]
    # between 55 % and 80 % every 96 hours: below the breakeven less the margin (75.05 %) for about 68 h of
    # every 96 and above it for the rest, all month; the first dip to hold 24 h is the migration, and the
    # hysteresis needs 90.8 % to flip back, which it never reaches
    assert len(decisions) == 1
    (d,) = decisions
    breakeven = 4 * A100_RATE / (4 * P5 / 3)  # busy share of 4 GPUs at which the cloud costs the same
    assert d["kind"] == "migrate_to_cloud" and D(d["utilization"]) < breakeven / D("1.1")
    assert D(d["evidence_hours"]) == 24
    # its utilization moved through the 24 h of evidence: a real spread around the point estimate
    assert D(d["monthly_savings_low_usd"]) < D(d["monthly_savings_usd"]) < D(d["monthly_savings_high_usd"])


@pytest.mark.integration
def test_a_cloud_workload_the_idle_gpus_are_not_left_for_buys_whole_a100_nodes_at_hour_168(one_worker):
    (d,) = by_workload(one_worker)["finetune"]
    # 16 A100 on two p4d at 60 %: 16 idle owned A100 (the third node, half of the other two) would hold it, but
    # they are promised once: embed saves as much per GPU ($4 - $0.06) and comes first, and 16 do not fit in the
    # 8 left (batch fills those later).  Buying: 9.6 busy A100 at the 80 % target is 12, in whole nodes of 8: 2,
    # and the options table sizes the purchase to the 16 it holds every hour: 2 nodes
    assert (d["kind"], d["gpus_needed"], d["nodes_needed"]) == ("repatriate_buy_capacity", 16, 2)
    assert d["decided_at"] == "2026-11-09T00:00:00Z" and D(d["evidence_hours"]) == 168  # a week from hour 0
    busy_h = 168 * 16 * D("0.6")
    assert close(d["current_usd_per_busy_gpu_hour"], (168 * 16 * P4D / busy_h).quantize(MICRO))  # $6.67
    assert close(d["alternative_usd_per_busy_gpu_hour"], (168 * 16 * A100_RATE / busy_h).quantize(MICRO))  # $3.67
    # payback = capex / (monthly cloud - monthly on-prem opex of the 16 GPUs bought)
    # = 480,000 / ((64 - 16 * 1.06) * 730) = 480,000 / 34,339.20 = 13.98 months
    payback = 16 * D(30000) / ((16 * P4D - 16 * (ENERGY + UPKEEP)) * 730)
    assert close(d["payback_months"], payback.quantize(MICRO))
    # (64 - 16 * 2.201553) * 730 = 21,005.87 $/month in every window: the range is the point
    assert close(d["monthly_savings_usd"], ((16 * P4D - 16 * A100_RATE) * 730).quantize(MICRO))
    assert d["monthly_savings_low_usd"] == d["monthly_savings_usd"] == d["monthly_savings_high_usd"]


@pytest.mark.integration
def test_idle_owned_gpus_are_promised_once(one_worker):
    fills = [d for d in one_worker["decisions"] if d["kind"] == "repatriate_fill_idle"]
    assert sorted((d["workload"], d["gpus_needed"]) for d in fills) == [("batch", 8), ("embed", 8)]
    # 16 A100 sit idle every hour (the idle workload's GPU-hours over the month): never promised twice
    idle = next(w for w in one_worker["workloads"] if w["workload"] == "idle")
    assert sum(d["gpus_needed"] for d in fills) <= D(idle["allocated_gpu_hours"]) / 720 == 16


@pytest.mark.integration
def test_an_h100_workload_commits_for_three_years_where_that_beats_buying_over_the_horizon(one_worker):
    (d,) = by_workload(one_worker)["llm"]
    # 8 H100 on a p5 at 60 %: buying 3 A100 nodes (24 A100 do its work) costs 24 * 2.20 = $52.84 an hour, less
    # than $64 on demand; a 3-year Savings Plan costs $28.80.  Over 36 months at 8 % the purchase is
    # 720,000 + 24 * 1.06 * 730 * annuity, the plan 28.80 * 730 * annuity: commit, after the week both need
    assert (d["kind"], d["from_env"], d["to_env"]) == ("commit_in_cloud", "cloud", "cloud")
    assert d["decided_at"] == "2026-11-09T00:00:00Z" and D(d["evidence_hours"]) == 168
    assert (d["gpus_needed"], d["instances_needed"], d["nodes_needed"]) == (8, 1, None)
    assert d["alternative"] == "aws us-east-1 p5.48xlarge savings_plan_3y"
    assert D(d["monthly_savings_usd"]) == (64 - D("28.80")) * 730  # $25,696 a month
    assert close(d["alternative_usd_per_busy_gpu_hour"], D("28.80") / (8 * D("0.6")))  # $6.00
    # "did you compare with a 3-year savings plan?": its table holds both plans and the purchase
    annuity = sum(D("1.08") ** (D(-m) / 12) for m in range(1, 37))
    npv = {o["label"]: D(o["npv_usd"]) for o in d["options"]}
    assert set(npv) == {"stay (cloud, as it runs)", "commit 1 x aws us-east-1 p5.48xlarge (savings plan)",
                        "commit 1 x aws us-east-1 p5.48xlarge (savings plan 3y)", "buy 3 x dgx-a100 node (8 GPUs each)"}
    assert close(str(npv["buy 3 x dgx-a100 node (8 GPUs each)"]), 720000 + 24 * (ENERGY + UPKEEP) * 730 * annuity,
                 D("0.01"))
    assert close(str(npv["commit 1 x aws us-east-1 p5.48xlarge (savings plan 3y)"]), D("28.80") * 730 * annuity,
                 D("0.01"))
    assert min(npv, key=npv.get) == "commit 1 x aws us-east-1 p5.48xlarge (savings plan 3y)"
    assert npv["buy 3 x dgx-a100 node (8 GPUs each)"] < npv["stay (cloud, as it runs)"]


@pytest.mark.integration
def test_an_on_demand_l4_service_with_nowhere_to_move_commits_its_instance_at_hour_168(one_worker):
    (d,) = by_workload(one_worker)["serve"]
    # one g6.12xlarge (4 L4) all month at 50 %: no owned L4 and no throughput ratio to another class, so no
    # move is possible; its 3-year reserved price, $1.95 an hour against $4.60 on demand (the 1-year one is
    # $2.90), is cheaper by more than the margin every hour, and a commitment needs a week of evidence
    assert (d["kind"], d["from_env"], d["to_env"]) == ("commit_in_cloud", "cloud", "cloud")
    assert d["decided_at"] == "2026-11-09T00:00:00Z" and D(d["evidence_hours"]) == 168
    assert (d["gpus_needed"], d["instances_needed"]) == (4, 1)
    assert d["alternative"] == "aws us-east-1 g6.12xlarge reserved_3y"
    assert D(d["monthly_savings_usd"]) == (D("4.60") - D("1.95")) * 730  # $1,934.50 a month, every hour the same
    # its options answer "did you compare with a 3-year plan?": staying, and committing for 1 and for 3 years
    by_label = {o["label"]: o for o in d["options"]}
    assert set(by_label) == {"stay (cloud, as it runs)", "commit 1 x aws us-east-1 g6.12xlarge (reserved)",
                             "commit 1 x aws us-east-1 g6.12xlarge (reserved 3y)"}
    one, three = by_label["commit 1 x aws us-east-1 g6.12xlarge (reserved)"], \
        by_label["commit 1 x aws us-east-1 g6.12xlarge (reserved 3y)"]
    assert (one["term_months"], three["term_months"]) == (12, 36)
    assert (D(one["monthly_usd"]), D(three["monthly_usd"])) == (D("2.90") * 730, D("1.95") * 730)
    assert D(three["npv_usd"]) < D(one["npv_usd"]) < D(by_label["stay (cloud, as it runs)"]["npv_usd"])
    assert d["monthly_savings_low_usd"] == d["monthly_savings_usd"] == d["monthly_savings_high_usd"]
    assert d["payback_months"] is None  # nothing is paid up front


@pytest.mark.integration
def test_the_months_normal_cycles_raise_no_anomaly(one_worker):
    # a job restarting after days off, a spot price up 17 %, utilization swinging 55-80 % over four days: no news
    assert one_worker["anomalies"]["detected"] == [] and one_worker["anomalies"]["alerts_queued"] == 0


@pytest.mark.integration
def test_the_month_shows_every_kind_of_decision(one_worker):
    assert {d["kind"] for d in one_worker["decisions"]} == {
        "repatriate_fill_idle", "migrate_to_cloud", "repatriate_buy_capacity", "commit_in_cloud"}


@pytest.mark.integration
def test_no_purchase_on_less_than_a_week_and_every_figure_with_its_range(one_worker):
    for d in one_worker["decisions"]:
        assert D(d["monthly_savings_low_usd"]) <= D(d["monthly_savings_usd"]) <= D(d["monthly_savings_high_usd"])
        if d["kind"] == "repatriate_buy_capacity":
            assert D(d["evidence_hours"]) >= 168 and d["gpus_needed"] % 8 == 0


@pytest.mark.integration
def test_spot_batch_is_charged_to_the_second_and_reconciles_with_the_bill(one_worker):
    batch = next(w for w in one_worker["workloads"] if w["workload"] == "batch")
    # runs 10.5 h -> 100.25 h, then 200 h until the spot interruption at 350.3 h, 8 GPUs each
    assert D(batch["allocated_gpu_hours"]) == 8 * (D("89.75") + D("150.3"))
    (aws,) = one_worker["reconciliation"]
    # the bill is generated by the second at the published prices; the live estimate must agree within 1 %
    assert abs(D(aws["estimate_error_pct"])) < 1
    assert aws["hours_estimated_not_billed"] == 0 and aws["hours_billed_not_estimated"] == 0
    spec = yaml.safe_load(SCENARIO.read_text())
    hours = D(spec["hours"])
    expected_billed = (hours * 32 + hours * 64 + 2 * hours * 32 + D("89.75") * 12 + (300 - 200) * 12 + (D("350.3") - 300) * 14
                       + hours * D("4.60"))  # embed, llm, finetune's two p4d, batch, serve's L4
    assert D(aws["billed_usd"]).quantize(D("0.01")) == expected_billed.quantize(D("0.01"))
    assert one_worker["dead_letters"] == 0


@pytest.mark.integration
def test_rolling_windows_per_workload_and_environment_end_at_the_last_closed_window(one_worker):
    embed = {r["span"]: r for r in one_worker["rolling"] if r["workload"] == "embed"}
    for span, hours in (("1h", 1), ("24h", 24), ("7d", 168)):
        assert embed[span]["until"] == "2026-12-02T00:00:00Z"
        assert D(embed[span]["allocated_gpu_hours"]) == 8 * hours  # one p4d all month
        assert D(embed[span]["busy_gpu_hours"]) == 8 * hours * D("0.9")
        assert D(embed[span]["cost_usd"]) == 8 * hours * P4D


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_and_a_killed_worker_give_the_same_results_as_one(one_worker):
    # two workers sharing the partitions, one of them killed with SIGKILL mid-month and restarted (one run
    # for both: the month takes a minute; tests/test_stress.py draws these faults apart on a shorter scenario)
    killed = simulate("--workers", "2", "--kill-worker-at", "300")
    assert killed["cost_windows_digest"] == one_worker["cost_windows_digest"]
    assert killed["decisions"] == one_worker["decisions"]
    assert killed["reconciliation"] == one_worker["reconciliation"]
    assert killed["anomalies"] == one_worker["anomalies"]


def test_a_broken_scenario_is_refused_with_the_field_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstart: 2026-11-02T00:00:00Z\nhours: 2\n"
                   "workloads: [{name: w, runs_on: nowhere, utilization: [[0, 50]]}]\n")
    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "simulate", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "invalid scenario" in done.stderr and "'nowhere', which is neither a host nor an instance" in done.stderr
