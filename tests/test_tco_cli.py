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
