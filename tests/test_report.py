"""The monthly report from a seeded month in a real PostgreSQL, against hand computations."""

from __future__ import annotations

import csv
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import psycopg
import yaml

from collectors.focus import FocusSummary, read_files
from contracts.catalog import Catalog
from contracts.config import load_config
from contracts.events import BreakevenDecision, CostWindow
from reports import monthly
from storage.db import migrate
from storage.sink import Batch, cost_window_row, decision_row, write_batch
from storage.timeseries import POSTGRESQL, Partitions

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
OCT1_MS = 1_790_812_800_000  # 2026-10-01 00:00 UTC
EVIL = "<b>evil</b> <!channel> & co"

# Per GPU-hour on-prem: capex 26280/(36*730) = 1.00, upkeep 876/8760 = 0.10, energy 0.5 kW * 1.0 * 0.10 = 0.05
CONFIG = {
    "onprem_assets": [{"name": "rack", "gpu_model": "A100", "gpu_class": "A100", "gpu_count": 2, "gpus_per_node": 1,
                       "hosts": ["n*"], "purchase_price_usd_per_node": 26280, "in_service_date": "2026-01-01",
                       "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1, "electricity_usd_per_kwh": 0.10,
                       "support_usd_per_year_per_node": 876}],
    "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
                      "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 24}}],
}


def window(workload, team, env, resource, day, alloc_h, busy_h, cost) -> CostWindow:
    start = OCT1_MS + day * DAY_MS
    return CostWindow(CostWindow.make_id(resource, workload, env, "A100", start), workload, team, False, env, "A100",
                      resource, start, DAY_MS, int(D(alloc_h) * 3_600_000), int(D(busy_h) * 3_600_000), 0, 0, 96, start,
                      start + DAY_MS, D(cost))


def decision(workload, from_env, to_env, kind) -> BreakevenDecision:
    return BreakevenDecision(f"{workload}|{kind}", workload, "t", from_env, to_env, kind, "A100", OCT1_MS,
                             OCT1_MS + DAY_MS, D(1), D(1), D("0.5"), D(100), D("0.9"), "x", 1, "r")


def seed(dsn: str) -> None:
    migrate(dsn)
    batch = Batch()
    for day in (0, 1):
        batch.add("cost_windows", cost_window_row(window("train", "ml", "onprem", "n1", day, 24, "4.8", "27.60")))
        batch.add("cost_windows", cost_window_row(window(EVIL, "search", "cloud", "i-1", day, 80, 72, "240.00")))
        batch.add("cost_windows", cost_window_row(window("idle", "", "onprem", "n2", day, 24, 0, "27.60")))
    batch.add("decisions", decision_row(decision("train", "onprem", "cloud", "migrate_to_cloud")))
    batch.add("decisions", decision_row(decision(EVIL, "cloud", "onprem", "repatriate_buy_capacity")))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))


def test_monthly_report_figures_equal_hand_computations(tmp_path, database):
    seed(database)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    config = load_config(tmp_path / "c.yaml", {})
    with psycopg.connect(database) as conn:
        report = monthly.build(conn, config, "2026-10")
        paths = monthly.write(conn, report, list(monthly.FORMATS), tmp_path / "out")
    rows = {w.workload: w for w in report.workloads}
    assert report.days_with_data == 2 and report.idle_usd == D("55.20") and report.idle_gpu_hours == 48

    train = rows["train"]  # 48 GPU-hours at 20 % busy: 55.20 on-prem; cloud for the 9.6 busy hours 9.6 * 3 = 28.80
    assert (train.allocated_gpu_hours, train.busy_gpu_hours, train.cost_usd) == (48, D("9.6"), D("55.20"))
    assert train.usd_per_busy_gpu_hour == D("5.75") and train.alternative_usd == D("28.80")
    assert train.recommendation.startswith("migrate to cloud")
    assert train.annualized_savings_usd == D("4818")  # (55.20 - 28.80) * 8760 / 48

    evil = rows[EVIL]  # 160 GPU-hours in the cloud, 480.00; owned: ceil(160/48) = 4 GPUs * 48 h * 1.15 = 220.80
    assert evil.alternative_usd == D("220.80")
    assert evil.annualized_savings_usd == D("47304")  # (480 - 220.80) * 182.5
    # payback: 4 * 26280 = 105120 / (480 * 730/48 - 4 * 0.15 * 730) = 105120 / 6862 = 15.3 months
    assert evil.recommendation == "repatriate by buying 4 A100 GPUs (payback 15.3 months)"

    by_name = {p.name: p for p in paths}
    page = by_name["gpu-spend-2026-10.html"].read_text()
    assert EVIL not in page and "&lt;b&gt;evil&lt;/b&gt; &lt;!channel&gt; &amp; co" in page and "<svg" in page
    with by_name["gpu-spend-2026-10.csv"].open() as f:
        assert {r["workload"]: r["annualized_savings_usd"] for r in csv.DictReader(f)}["train"] == "4818.00"
    md = by_name["gpu-spend-2026-10.md"].read_text()
    assert "## Assumptions" in md and "$1.15 per GPU-hour fully loaded" in md

    # the PDF opens, with its four sections on their own pages, the figures and the hostile name as text
    from pypdf import PdfReader

    pdf = PdfReader(by_name["gpu-spend-2026-10.pdf"])
    pages = [page.extract_text() for page in pdf.pages]
    assert len(pages) == 4
    assert pages[0].startswith("GPU spend and placement - 2026-10") and "$4,818.00 a year" in pages[0]
    assert pages[1].startswith("Workloads") and "$5.75" in pages[1] and "<b>evil</b> <!channel> & co" in pages[1]
    assert pages[2].startswith("Charts") and "Utilization per workload" in pages[2]
    assert pages[3].startswith("Assumptions") and "$1.15 per GPU-hour fully loaded" in pages[3]

    # the on-prem FOCUS rows load back through the FOCUS reader with the same money
    summary = FocusSummary()
    lines = list(read_files([by_name["onprem-focus-2026-10.csv"]], Catalog(), "v", summary))
    assert summary.rows_rejected == 0 and len(lines) == 4  # train and idle, two days each
    assert sum(line.billed_cost_usd for line in lines) == D("110.40")
    assert {line.extra["x_Workload"] for line in lines} == {"train", "idle"}


def test_report_command_reads_the_embedded_database_and_rejects_bad_input(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-13",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--month must be YYYY-MM" in bad.stderr and "Traceback" not in bad.stderr
    fmt = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-10",
                          "--format", "pdf,xls", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert fmt.returncode == 2 and "unknown xls" in fmt.stderr
