"""OpenCost custom pricing: our fully loaded on-prem GPU price out, OpenCost's GPU rows in."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml

from hybridspend.contracts.config import load_config
from hybridspend.reports import opencost

ROOT = Path(__file__).resolve().parents[1]

# Per GPU-hour: capex 52560/2 = 26280 / (36 * 730) = 1.00; upkeep 1752/2 = 876 / 8760 = 0.10;
# energy 0.5 kW * 1.0 * 0.10 = 0.05; fully loaded 1.15 while amortizing, 0.15 after.
CONFIG = {
    "onprem_assets": [
        {"name": "rack-a100", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 4,
         "gpus_per_node": 2, "hosts": ["n*"], "purchase_price_usd_per_node": 52560, "in_service_date": "2026-01-01",
         "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1, "electricity_usd_per_kwh": 0.10,
         "support_usd_per_year_per_node": 1752},
        # bought on Jan 31 for one month: capex ends on Mar 1 (February has no 31st); energy 0.2 * 1.5 * 0.2 = 0.06,
        # capex 1460 / 730 = 2.00, no upkeep: 2.06, then 0.06
        {"name": "L4_box", "gpu_model": "NVIDIA L4", "gpu_class": "L4", "gpu_count": 1, "gpus_per_node": 1,
         "hosts": ["l4-*"], "purchase_price_usd_per_node": 1460, "in_service_date": "2026-01-31",
         "amortization_months": 1, "power_w_per_gpu": 200, "pue": 1.5, "electricity_usd_per_kwh": 0.2},
    ],
}


def config(tmp_path, data=CONFIG):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    return load_config(tmp_path / "c.yaml", {})


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc)


def test_export_prices_each_profile_at_its_fully_loaded_rate_until_capex_ends(tmp_path):
    rows = opencost.export_rows(config(tmp_path), at("2026-02-15"))
    text = opencost.render_csv(rows)
    assert text.splitlines()[0] == "EndTimestamp,InstanceID,Region,AssetClass,InstanceIDField,InstanceType," \
                                   "MarketPriceHourly,Version"
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [(r["AssetClass"], r["InstanceID"], r["MarketPriceHourly"]) for r in parsed] == [
        ("node", "rack-a100", "0"), ("gpu", "rack-a100", "1.150000"),  # 1.00 + 0.05 + 0.10
        ("node", "L4_box", "0"), ("gpu", "L4_box", "2.060000")]          # 2.00 + 0.06
    gpu = parsed[1]
    # OpenCost reads the GPU type from this node label and matches its value to InstanceID; no region
    assert (gpu["InstanceIDField"], gpu["Region"], gpu["InstanceType"]) == (
        "hybridspend.io/asset-profile", "", "NVIDIA A100-SXM4-80GB")
    assert parsed[0]["InstanceIDField"] == "metadata.labels.hybridspend.io/asset-profile"
    # the rate holds until capex ends: 2026-01-01 + 36 months; Jan 31 + 1 month -> Mar 1
    assert [r["EndTimestamp"] for r in parsed] == ["2029-01-01 00:00:00 UTC"] * 2 + ["2026-03-01 00:00:00 UTC"] * 2

    later = opencost.export_rows(config(tmp_path), at("2026-03-01"), node_rows=False)
    assert [(r.instance_id, r.market_price_hourly, r.end_timestamp) for r in later] == [
        ("rack-a100", "1.150000", "2029-01-01 00:00:00 UTC"), ("L4_box", "0.060000", "")]  # L4: energy only


def test_capex_end_is_the_first_day_the_cost_model_charges_no_capex(tmp_path):
    l4 = config(tmp_path).onprem_assets[1].gpu_cost()
    assert l4.capex_ends_on() == date(2026, 3, 1)
    assert l4.capex_usd_per_gpu_hour(at("2026-02-28")) == 2 and l4.capex_usd_per_gpu_hour(at("2026-03-01")) == 0


def test_export_refuses_names_opencost_cannot_match(tmp_path):
    bad = {"onprem_assets": [dict(CONFIG["onprem_assets"][0], name="rack a100")]}
    with pytest.raises(opencost.OpenCostError, match="'rack a100'.*Kubernetes label value"):
        opencost.export_rows(config(tmp_path, bad), at("2026-02-15"))
    twins = {"onprem_assets": [CONFIG["onprem_assets"][0], dict(CONFIG["onprem_assets"][0], name="RACK-A100",
                                                                  hosts=["m*"])]}
    with pytest.raises(opencost.OpenCostError, match="differ only in case"):
        opencost.export_rows(config(tmp_path, twins), at("2026-02-15"))


OPENCOST_CSV = """\
EndTimestamp,InstanceID,Region,AssetClass,InstanceIDField,InstanceType,MarketPriceHourly,Version
# on-prem cluster priced by hand
2024-01-01 00:00:00 UTC,node-1,,node,metadata.name,bare-metal,0.40,
,standard,,pv,spec.storageClassName,,0.00005,
,NVIDIA-A100-SXM4-80GB,,gpu,nvidia.com/gpu.product,,0.95,
,nvidia-h100-80gb-hbm3,us-east,gpu,nvidia.com/gpu.product,NVIDIA H100 80GB HBM3,2.5,
"""


def test_import_turns_gpu_rows_into_flat_rate_profiles_that_cost_exactly_that(tmp_path):
    rows = opencost.parse_csv(OPENCOST_CSV)
    imported = opencost.import_profiles(rows, date(2026, 11, 1), gpus_per_node=4, nodes=2)
    text = opencost.profiles_yaml(imported, "prices.csv", opencost.skipped_classes(rows))
    assert "FLAT RATES" in text and "# flat rate $0.95 per GPU-hour" in text
    assert "Not imported (hybridspend prices GPUs): 1 node row(s), 1 pv row(s)." in text
    loaded = config(tmp_path, yaml.safe_load(text))  # the printed section is a valid configuration
    a100, h100 = loaded.onprem_assets
    assert (a100.name, a100.gpu_class, a100.gpu_count, a100.gpus_per_node) == ("nvidia-a100-sxm4-80gb", "A100", 8, 4)
    assert (h100.name, h100.gpu_class, h100.gpu_model) == ("nvidia-h100-80gb-hbm3-us-east", "H100",
                                                          "NVIDIA H100 80GB HBM3")
    # 0.95 * 8760 * 4 = 33288 a year per node; / 4 GPUs / 8760 h = 0.95 per GPU-hour, whatever the day
    assert a100.support_usd_per_year_per_node == 33288
    for asset, flat in ((a100, D("0.95")), (h100, D("2.5"))):
        for day in ("2026-11-01", "2031-01-01"):
            assert asset.gpu_cost().rate(at(day)).usd_per_gpu_hour == flat


def test_export_then_import_keeps_the_price(tmp_path):
    rows = opencost.parse_csv(opencost.render_csv(opencost.export_rows(config(tmp_path), at("2026-02-15"))))
    imported = opencost.import_profiles(rows, date(2026, 2, 15), gpus_per_node=2)
    assert [(i.profile.name, i.profile.gpu_cost().rate().usd_per_gpu_hour) for i in imported] == [
        ("rack-a100", D("1.15")), ("l4-box", D("2.06"))]


def test_import_rejects_what_it_cannot_read():
    with pytest.raises(opencost.OpenCostError, match="missing column.*MarketPriceHourly"):
        opencost.parse_csv("InstanceID,AssetClass\nx,gpu\n", "x.csv")
    rows = opencost.parse_csv(OPENCOST_CSV.replace("0.95", "cheap"))
    with pytest.raises(opencost.OpenCostError, match=r"line 5 \(NVIDIA-A100-SXM4-80GB\): MarketPriceHourly.*'cheap'"):
        opencost.import_profiles(rows, date(2026, 11, 1))
    with pytest.raises(opencost.OpenCostError, match="no GPU rows"):
        opencost.import_profiles(opencost.parse_csv(OPENCOST_CSV.splitlines()[0] + "\n"), date(2026, 11, 1))


def test_pricing_commands(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "prices" / "opencost.csv"
    run = subprocess.run([sys.executable, "-m", "hybridspend.cli", "pricing", "export-opencost", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(out), "--at", "2026-02-15"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "rack-a100: $1.150000 per GPU-hour (capex 1.000000 + energy 0.050000 + upkeep 0.100000)" in run.stdout
    assert ",gpu,hybridspend.io/asset-profile,NVIDIA A100-SXM4-80GB,1.150000," in out.read_text()
    back = subprocess.run([sys.executable, "-m", "hybridspend.cli", "pricing", "import-opencost", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert back.returncode == 0 and "name: \"rack-a100\"" in back.stdout
    bad = subprocess.run([sys.executable, "-m", "hybridspend.cli", "pricing", "import-opencost",
                          str(tmp_path / "missing.csv")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr


def test_hostile_pricing_files_are_clear_errors_and_what_is_imported_loads_back(tmp_path):
    import time

    header = OPENCOST_CSV.splitlines()[0]
    gpu_row = next(line for line in OPENCOST_CSV.splitlines() if ",gpu," in line.lower())
    for price in ("1e999999", "1e6", "-1", "inf"):
        rows = opencost.parse_csv(OPENCOST_CSV.replace("0.95", price))
        with pytest.raises(opencost.OpenCostError, match=r"MarketPriceHourly must be a number from 0 to below 1e6"):
            opencost.import_profiles(rows, date(2026, 11, 1))
    with pytest.raises(opencost.OpenCostError, match="not an OpenCost pricing CSV: field larger than field limit"):
        opencost.parse_csv(header + "\n" + gpu_row.replace(",", ',"' + "x" * 200_000 + '",', 1) + "\n", "big.csv")
    # a DEL and a newline-looking escape in the region: the printed section still loads
    rows = opencost.parse_csv(OPENCOST_CSV.replace("us-east", "us-\x7feast\\n"))
    text = opencost.profiles_yaml(opencost.import_profiles(rows, date(2026, 11, 1)), "p.csv", {})
    assert config(tmp_path, yaml.safe_load(text)).onprem_assets
    # 10,000 copies of one InstanceID: distinct names, in linear time
    many = opencost.parse_csv(header + "\n" + "\n".join([gpu_row] * 10_000) + "\n")
    started = time.monotonic()
    names = [i.profile.name for i in opencost.import_profiles(many, date(2026, 11, 1))]
    assert time.monotonic() - started < 20  # the quadratic search for a free name took 70 s
    assert len(set(names)) == 10_000 and names[1] == names[0] + "-2" and names[-1] == names[0] + "-10000"


def test_a_binary_pricing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    run = subprocess.run([sys.executable, "-m", "hybridspend.cli", "pricing", "import-opencost", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "not a UTF-8 text file" in run.stderr and "Traceback" not in run.stderr
