"""`hybridspend tco`: hand computations to the cent on the published seed figures."""

import json
import subprocess
import sys

import pytest


def tco(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridspend.cli", "tco", *args], capture_output=True, text=True)


SEED = ["--gpu-price-usd", "30000", "--amortization-months", "36", "--power-w", "400", "--pue", "1.5",
        "--usd-per-kwh", "0.12", "--upkeep-usd-per-year", "2900", "--cloud-usd-per-gpu-hour", "4.10"]


def test_tco_json_matches_hand_computation_to_the_cent():
    proc = tco(*SEED, "--utilization", "0.7", "--gpus", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # capex 30000 / (36*730) = 1.141553; energy 400/1000*1.5*0.12 = 0.072; upkeep 2900/8760 = 0.331050
    assert round(out["capex_usd_per_gpu_hour"], 2) == 1.14
    assert out["energy_usd_per_gpu_hour"] == 0.072
    assert round(out["upkeep_usd_per_gpu_hour"], 2) == 0.33
    assert round(out["onprem_usd_per_gpu_hour"], 2) == 1.54  # 1.544603
    assert round(out["effective_onprem_usd_per_busy_gpu_hour"], 2) == 2.21  # 1.544603 / 0.7
    assert round(out["breakeven_utilization"], 4) == 0.3767  # 1.544603 / 4.10
    assert round(out["monthly_onprem_usd"], 2) == 4510.24  # 1.544603 * 730 * 4
    assert round(out["monthly_cloud_usd"], 2) == 8380.40  # 4.10 * 730 * 0.7 * 4
    assert round(out["monthly_onprem_opex_usd"], 2) == 1176.91  # (0.072 + 0.331050) * 730 * 4
    assert round(out["months_to_breakeven"], 2) == 16.66  # 120000 / (8380.40 - 1176.91)
    assert out["cheaper_env"] == "onprem"


def test_tco_table_is_readable():
    proc = tco(*SEED, "--utilization", "0.3")
    assert proc.returncode == 0
    assert "breakeven utilization" in proc.stdout and "cloud" in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("bad, message", [
    (["--amortization-months", "0"], "amortization_months must be > 0, got 0"),
    (["--amortization-months", "-12"], "amortization_months must be > 0, got -12"),
    (["--utilization", "0"], "utilization must be in (0, 1], got 0"),
    (["--utilization", "1.5"], "utilization must be in (0, 1], got 1.5"),
    (["--pue", "abc"], "--pue must be a number"),
])
def test_invalid_input_exits_non_zero_with_a_clear_message(bad, message):
    args = dict(zip(SEED[::2], SEED[1::2]))
    args["--utilization"] = "0.5"
    args.update(dict(zip(bad[::2], bad[1::2])))
    proc = tco(*[x for kv in args.items() for x in kv])
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tco_options_over_a_horizon_answer_the_savings_plan_question():
    # the seed figures for 4 GPUs busy 70 %, against a 3-year commitment at 2.46 (40 % off 4.10):
    #   on demand   4.10 x 730 x 0.7 x 4 = 8,380.40 a month; x 36 = 301,694.40
    #   commitment  2.46 x 730 x 4       = 7,183.20 a month; x 36 = 258,595.20; below on demand from month 1
    #   buy         30,000 x 4 = 120,000 up front; opex (0.072 + 2900/8760) x 730 x 4 = 1,176.9067 a month:
    #               120,000 + 36 x 1,176.9067 = 162,368.64; overtakes on demand when
    #               120,000 + 1,176.9067 m <= 8,380.40 m: m >= 16.66 -> month 17
    proc = tco(*SEED, "--utilization", "0.7", "--gpus", "4", "--horizon-months", "36", "--discount-rate-pct", "0",
               "--commitment-usd-per-gpu-hour", "2.46", "--commitment-term-months", "36", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [set(o) for o in out["options"]] == [{"option", "total_usd", "npv_usd", "breakeven_month"}] * 3
    by = {o["option"]: o for o in out["options"]}
    assert by["on_demand"]["total_usd"] == 301_694.4 and by["commitment"]["total_usd"] == 258_595.2
    assert round(by["buy"]["total_usd"], 2) == 162_368.64
    assert (by["commitment"]["breakeven_month"], by["buy"]["breakeven_month"]) == (1, 17)
    assert all(o["npv_usd"] == o["total_usd"] for o in out["options"])  # 0 %: present value is the total
    assert out["cheapest_option"] == "buy"
    # at 8 % the purchase still wins, with every present value below its total
    at8 = json.loads(tco(*SEED, "--utilization", "0.7", "--gpus", "4", "--horizon-months", "36",
                         "--commitment-usd-per-gpu-hour", "2.46", "--commitment-term-months", "36", "--json").stdout)
    assert all(o["npv_usd"] < o["total_usd"] for o in at8["options"]) and at8["cheapest_option"] == "buy"
    # a month of egress and migration work, 40,000 USD, delays the purchase's crossover:
    # 160,000 / (8,380.40 - 1,176.9067) = 22.21 -> month 23
    moved = json.loads(tco(*SEED, "--utilization", "0.7", "--gpus", "4", "--horizon-months", "36",
                           "--one-time-usd", "40000", "--json").stdout)
    assert {o["option"]: o["breakeven_month"] for o in moved["options"]}["buy"] == 23
    text = tco(*SEED, "--utilization", "0.7", "--gpus", "4", "--commitment-usd-per-gpu-hour", "2.46",
               "--commitment-term-months", "36")
    assert "options over 36 months, present values at 8% a year" in text.stdout
    assert "commitment (36-month term)" in text.stdout and "month 17" in text.stdout
    assert text.stdout.rstrip().endswith("cheapest by present value: buy")


def test_tco_without_option_flags_prints_what_it_did_and_refuses_hostile_numbers():
    plain = json.loads(tco(*SEED, "--utilization", "0.7", "--json").stdout)
    assert "options" not in plain and "cheapest_option" not in plain
    half = tco(*SEED, "--utilization", "0.7", "--commitment-usd-per-gpu-hour", "2")
    assert half.returncode == 2 and "go together" in half.stderr
    bad = tco(*SEED[:1], "1e999999999", *SEED[2:], "--utilization", "0.7")
    assert bad.returncode == 2 and "must be below 1e12" in bad.stderr and "Traceback" not in bad.stderr


def test_tco_refuses_a_commitment_term_beyond_the_horizon():
    longer = tco(*SEED, "--utilization", "0.7", "--horizon-months", "12", "--commitment-usd-per-gpu-hour", "2",
                 "--commitment-term-months", "36")
    assert longer.returncode == 2 and "must be from 1 to the horizon (12 months)" in longer.stderr
