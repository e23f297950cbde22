"""The monthly report from a seeded month in a real PostgreSQL, against hand computations; the PDF read
back as a reader would get it (text, figures, every page drawn)."""

from __future__ import annotations

import csv
import io
import html
import re
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest
import yaml

from hybridspend.collectors.focus import FocusSummary, read_files
from hybridspend.contracts.catalog import Catalog
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import BreakevenDecision, CostLine, CostWindow
from hybridspend.reports import monthly
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_line_row, cost_window_row, decision_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
OCT1_MS = 1_790_812_800_000  # 2026-10-01 00:00 UTC
EVIL = "<b>evil</b> <!channel> & co"
UNI = "研究-<b>Ünï</b>"
LONG = "research-embedding-refresh-nightly-batch-0123456789"  # 51 characters: truncated in the table

# Per GPU-hour on-prem: capex 26280/(36*730) = 1.00, upkeep 876/8760 = 0.10, energy 0.5 kW * 1.0 * 0.10 = 0.05
CONFIG = {
    "onprem_assets": [{"name": "rack", "gpu_model": "A100", "gpu_class": "A100", "gpu_count": 2, "gpus_per_node": 1,
                       "hosts": ["n*"], "purchase_price_usd_per_node": 26280, "in_service_date": "2026-01-01",
                       "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1, "electricity_usd_per_kwh": 0.10,
                       "support_usd_per_year_per_node": 876}],
    "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
                      "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 24}}],
    "budgets": {"ml": 2000, "search": 1100},  # 3100 a month of 31 days: 100.00 a day
}


def window(workload, team, env, resource, day, alloc_h, busy_h, cost) -> CostWindow:
    start = OCT1_MS + day * DAY_MS
    return CostWindow(CostWindow.make_id(resource, workload, env, "A100", start), workload, team, False, env, "A100",
                      resource, start, DAY_MS, int(D(alloc_h) * 3_600_000), int(D(busy_h) * 3_600_000), 0, 0, 96, start,
                      start + DAY_MS, D(cost), provider="aws" if env == "cloud" else "")


def decision(workload, from_env, to_env, kind, low=None, high=None, monthly=D(100), gpus_needed=1,
             **extra) -> BreakevenDecision:
    return BreakevenDecision(f"{workload}|{kind}", workload, "t", from_env, to_env, kind, "A100", OCT1_MS,
                             OCT1_MS + DAY_MS, D(1), D(1), D("0.5"), monthly, D("0.9"), "on-prem A100", gpus_needed, "r",
                             monthly_savings_low_usd=low, monthly_savings_high_usd=high, **extra)


def billed_line(resource, day, usd) -> CostLine:
    start = OCT1_MS + day * DAY_MS
    return CostLine(f"bill-{resource}-{day}", "aws", "AWS", "acct", OCT1_MS,
                    f"arn:aws:ec2:us-east-1:1:instance/{resource}", start, start + 3_600_000, "Usage", D(usd), D(usd),
                    "AmazonEC2", "sku", "us-east-1", "p4d.24xlarge", "A100", 8, "aws-cur", "2026-10-02T00:00:00Z|1")


def seed(dsn: str) -> None:
    migrate(dsn)
    batch = Batch()
    for day in (0, 1):
        batch.add("cost_windows", cost_window_row(window("train", "ml", "onprem", "n1", day, 24, "4.8", "27.60")))
        batch.add("cost_windows", cost_window_row(window(EVIL, "search", "cloud", "i-1", day, 80, 72, "240.00")))
        batch.add("cost_windows", cost_window_row(window("idle", "", "onprem", "n2", day, 24, 0, "27.60")))
        batch.add("cost_windows", cost_window_row(window(UNI, "研究", "onprem", "n3", day, 24, "2.4", "27.60")))
    batch.add("cost_windows", cost_window_row(window(LONG, "research", "onprem", "n4", 0, 24, 20, "27.60")))
    batch.add("cost_windows", cost_window_row(window("train", "ml", "onprem", "n1", -1, 24, 12, "27.60")))  # Sep 30
    batch.add("cost_lines", cost_line_row(billed_line("i-1", 0, "230.00")))  # day 1 is not billed yet
    batch.add("decisions", decision_row(decision("train", "onprem", "cloud", "migrate_to_cloud")))
    batch.add("decisions", decision_row(decision(EVIL, "cloud", "onprem", "repatriate_buy_capacity", D(2000),
                                                 D(5000), D(3000), gpus_needed=4, nodes_needed=4,
                                                 payback_months=D("15.3"))))
    batch.add("decisions", decision_row(decision(UNI, "onprem", "cloud", "migrate_to_cloud", monthly=D(600))))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))


@pytest.fixture(scope="module")
def written(postgres_server, tmp_path_factory):
    """The seeded month's report in every format, written once for the tests of this module."""
    admin_dsn, _ = postgres_server
    name = f"t_report_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    tmp_path = tmp_path_factory.mktemp("report")
    seed(dsn)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG, allow_unicode=True))
    config = load_config(tmp_path / "c.yaml", {})
    with psycopg.connect(dsn) as conn:
        report = monthly.build(conn, config, "2026-10")
        paths = monthly.write(conn, report, list(monthly.FORMATS), tmp_path / "out")
    yield report, {p.name: p for p in paths}
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_monthly_report_figures_equal_hand_computations(written):
    report, by_name = written
    rows = {w.workload: w for w in report.workloads}
    assert report.days_with_data == 2 and report.idle_usd == D("55.20") and report.idle_gpu_hours == 48

    train = rows["train"]  # 48 GPU-hours at 20 % busy: 55.20 on-prem; cloud for the 9.6 busy hours 9.6 * 3 = 28.80
    assert (train.allocated_gpu_hours, train.busy_gpu_hours, train.cost_usd) == (48, D("9.6"), D("55.20"))
    assert train.usd_per_busy_gpu_hour == D("5.75") and train.alternative_usd == D("28.80")
    assert train.recommendation.startswith("migrate to cloud") and train.days_with_data == 2
    # the month still holds the move ((55.20 - 28.80) * 8760 / 48 = $4,818 a year at its own prices); the savings
    # shown are the decision's ($100 a month: 12 months of 730 hours), the figure Slack and the dashboard show
    assert train.annualized_savings_usd == D(1200)

    evil = rows[EVIL]  # 160 GPU-hours in the cloud, 480.00; owned: ceil(160/48) = 4 GPUs * 48 h * 1.15 = 220.80
    assert evil.alternative_usd == D("220.80")
    assert evil.annualized_savings_usd == D(36000)  # the decision's $3,000 a month (the month: (480 - 220.80) * 182.5)
    # what the decision recommends buying, with its payback
    assert evil.recommendation == "repatriate by buying 4 A100 GPUs (4 nodes) (payback 15.3 months)"
    # the decision's monthly range 2000..5000, a year of 8760 / 730 = 12 months
    assert (evil.annualized_savings_low_usd, evil.annualized_savings_high_usd) == (D(24000), D(60000))
    assert evil.billed_usd == D("230.00") and evil.basis == "billed"  # day 0 billed, day 1 not yet

    uni = rows[UNI]  # 48 h at 10 % busy, 55.20; cloud 4.8 busy h * 3 = 14.40: the month holds it
    assert uni.annualized_savings_usd == D(7200) and uni.recommended  # the decision's $600 a month
    assert [w.workload for w in report.recommended] == [EVIL, UNI, "train"]
    assert rows[LONG].recommendation == "stay" and rows[LONG].days_with_data == 1

    # u* = 1.15 / (24 / 8) = 0.3833; the band is u* / 1.1 .. u* * 1.1 (10 % margin)
    u_star = D("1.15") / 3
    assert report.breakeven.breakeven == {"A100": u_star}
    assert report.bands[("train", "onprem")] == (u_star / D("1.1"), u_star, u_star * D("1.1"))
    assert report.daily_budget_usd == 100  # 3100 * 24 / (31 * 24)
    # day 0: estimated 240 against 230 billed; day 1: 240, not billed yet
    assert [(d.day, e, b) for d, e, b in report.cloud_daily] == [(1, D("240.00"), D("230.00")), (2, D("240.00"), None)]
    # October: on-prem 55.20 (train) + 55.20 (idle) + 55.20 (UNI) + 27.60 (LONG) = 193.20, cloud 480; September 27.60
    assert report.overview.spend_by_env == {"onprem": D("193.20"), "cloud": D("480.00")}
    changes = monthly.changes(report)
    assert changes[0] == "GPU spend $673, up 2339% from $28 in 2026-09."  # 673.20 / 27.60 - 1 = 23.39
    assert any(c.startswith("3 new workload(s)") for c in changes)

    with by_name["gpu-spend-2026-10.csv"].open() as f:
        table = {r["workload"]: r for r in csv.DictReader(f)}
    assert table["train"]["annualized_savings_usd"] == "1200.00"
    assert table[EVIL]["annualized_savings_low_usd"] == "24000.00"
    md = by_name["gpu-spend-2026-10.md"].read_text()
    assert "## Assumptions" in md and "$1.15 per GPU-hour fully loaded" in md

    # the on-prem FOCUS rows load back through the FOCUS reader with the same money
    summary = FocusSummary()
    lines = list(read_files([by_name["onprem-focus-2026-10.csv"]], Catalog(), "v", summary))
    assert summary.rows_rejected == 0
    assert sum(line.billed_cost_usd for line in lines) == D("193.20")


def _pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [page.extract_text() for page in PdfReader(path).pages]


def test_html_and_pdf_come_from_one_template_and_keep_every_character(written):
    report, by_name = written
    page = by_name["gpu-spend-2026-10.html"].read_text()
    assert EVIL not in page and "&lt;b&gt;evil&lt;/b&gt; &lt;!channel&gt; &amp; co" in page and "<svg" in page
    assert "研究-&lt;b&gt;Ünï&lt;/b&gt;" in page
    # a long name is cut in the table, whole in the title attribute
    cut = LONG[:monthly.NAME_CHARS - 1] + "…"
    assert f'title="{LONG}"' in page and f">{cut}</td>" in page
    assert '<td class="num">$5.75</td>' in page  # numbers are right-aligned cells

    pages = _pdf_pages(by_name["gpu-spend-2026-10.pdf"])
    text = "\n".join(pages)
    assert UNI in text and "<!channel>" in text and EVIL in text and "研究" in text
    assert cut in text and LONG not in text
    # page 1 is the executive summary: spend, idle, the moves with their evidence, what changed
    first = " ".join(pages[0].split())  # cells wrap: compare words
    for part in ("GPU spend and placement — 2026-10", "Total GPU spend", "$673", "Idle owned capacity", "$55",
                 "Recommended moves", "$36,000 decision's range: $24,000 to $60,000",
                 "2 days of data, billed, decision confidence 90%",
                 "What changed since last month", "up 2339% from $28 in 2026-09"):
        assert part in first, part
    # every page has the header (month) and the footer (page numbers)
    for n, body in enumerate(pages, start=1):
        assert "2026-10" in body and f"page {n} of {len(pages)}" in body
    # seven figures, numbered in order, with the same titles as in the HTML
    html_titles = [html.unescape(t) for t in re.findall(r"<figcaption>(.*?)</figcaption>", page)]
    assert [t.split(":")[0] for t in html_titles] == [f"Figure {n}" for n in range(1, 8)]
    assert [t for t in html_titles if t in text] == html_titles
    assert re.findall(r"Figure \d:", text) == [f"Figure {n}:" for n in range(1, 8)]
    # next month's forecast: the table (all teams first) and Figure 7, from the month's hours
    assert [f.scope for f in report.next_month][0] == "all teams" and "Next month's forecast" in text
    whole = report.next_month[0]
    assert whole.interval_usd[95][0] <= whole.interval_usd[80][0] <= whole.total_usd <= whole.interval_usd[80][1]
    assert len(whole.daily_usd) == 30 and sum((v for _, v in whole.daily_usd), D(0)) <= whole.total_usd
    assert "## Next month's forecast" in by_name["gpu-spend-2026-10.md"].read_text()
    assert "Figure 1: What does a useful GPU-hour cost" in pages[1]  # the why, on page 2
    assert "$240 against $230 billed" in text
    # the same table rows: every workload's name as the table shows it
    shown = [html.unescape(n) for n in re.findall(r'<td class="name" title="[^"]*">(.*?)</td>', page)]
    assert len(shown) == len(report.workloads) + len(report.recommended)  # the summary's moves, then the table
    assert all(name in text for name in shown)


def test_no_pdf_page_is_blank(written, tmp_path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm is not installed (Debian's poppler-utils; .ci/run installs it)")
    from PIL import Image

    _, by_name = written
    pdf = by_name["gpu-spend-2026-10.pdf"]
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    images = sorted(tmp_path.glob("page-*.png"))
    assert len(images) == len(_pdf_pages(pdf)) >= 5
    for image in images:
        gray = Image.open(image).convert("L")
        inked = sum(gray.histogram()[:200])  # pixels clearly darker than the white page
        assert inked > gray.width * gray.height * 0.01, f"{image.name} is (nearly) blank"


def test_report_command_reads_the_embedded_database_and_rejects_bad_input(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-13",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--month must be YYYY-MM" in bad.stderr and "Traceback" not in bad.stderr
    fmt = subprocess.run([sys.executable, "-m", "hybridspend.cli", "report", "monthly", "--month", "2026-10",
                          "--format", "pdf,xls", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert fmt.returncode == 2 and "unknown xls" in fmt.stderr


def test_a_hostile_name_cannot_become_a_formula_in_the_finance_csv():
    from datetime import datetime, timezone

    hostile = ['=HYPERLINK("http://x","y")', "+cmd|'/C calc'!A0", "-2+3", "@SUM(A1)", "\tx"]
    workloads = [monthly.WorkloadMonth(
        workload=name, team=name, environment="cloud", gpu_class="A100", allocated_gpu_hours=D(10),
        busy_gpu_hours=D(5), cost_usd=D("-12.50"), billed_usd=None, alternative_usd=None, alternative_label=name,
        recommendation="stay", annualized_savings_usd=D(0), confidence="estimated") for name in hostile]
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    report = monthly.MonthlyReport("2026-10", start, start, workloads, D(0), D(0), [], [], 1)
    rows = list(csv.DictReader(io.StringIO(monthly.render_csv(report))))
    for name, row in zip(hostile, rows):
        for column in ("workload", "team", "alternative"):
            assert row[column] == "'" + name  # shown as text, the name still readable after the apostrophe
        assert row["estimated_usd"] == "-12.50"  # numbers are numbers: a negative amount is not escaped
    assert monthly.spreadsheet_text("train") == "train"


def test_option_labels_that_differ_only_in_their_term_stay_apart_in_a_legend():
    from hybridspend.reports.charts import short_keeping_tail

    one, three = (short_keeping_tail(f"commit 1 x aws us-east-1 p5.48xlarge ({term})", 46)
                  for term in ("savings plan", "savings plan 3y"))
    assert one != three and one.endswith("… (savings plan)") and three.endswith("… (savings plan 3y)")
    assert len(three) == 46 and short_keeping_tail("stay (cloud, as it runs)", 46) == "stay (cloud, as it runs)"


# -- what makes the report fast gives what the slower ways gave -----------------------------------------------


def test_the_months_cloud_reconciliation_is_the_daily_views_rows_for_the_month(database):
    """The report reads the reconciliation through the range function (the month's windows and lines only):
    the view's rows for the month's days, with windows and lines of the days around it stored too, a day's
    resource shared by two workloads (the one that ran most of it owns it) and a resource billed only."""
    from datetime import datetime, timezone

    from hybridspend.storage import report_queries

    migrate(database)
    batch = Batch()
    for day in (-1, 0, 1, 30, 31):  # Sep 30, Oct 1, Oct 2, Oct 31, Nov 1
        batch.add("cost_windows", cost_window_row(window(EVIL, "search", "cloud", "i-1", day, 80, 72, "240.00")))
        batch.add("cost_windows", cost_window_row(window("train", "ml", "cloud", "i-1", day, 8, 8, "24.00")))
        batch.add("cost_windows", cost_window_row(window("train", "ml", "cloud", "i-2", day, 16, 8, "48.00")))
        batch.add("cost_windows", cost_window_row(window("infer", "ml", "onprem", "n1", day, 24, 8, "27.60")))
        if day != 1:
            batch.add("cost_lines", cost_line_row(billed_line("i-1", day, "250.00")))
        batch.add("cost_lines", cost_line_row(billed_line("i-9", day, "9.99")))  # billed, never seen live
    with psycopg.connect(database) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))
        start, end = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc)
        view = conn.execute("SELECT day, workload, estimated_usd, billed_usd FROM estimate_vs_billed_daily"
                            " WHERE day >= %s AND day < %s ORDER BY day, workload", (start, end)).fetchall()
        read = report_queries.cloud_estimate_vs_billed(conn, start, end)
    assert [tuple(r.values()) for r in read] == view
    # each day: i-1 (its owner ran 80 of its 88 GPU-hours), i-2 and the bill of i-9; Oct 2 is not billed yet
    assert [(r["day"].day, r["workload"]) for r in read] == [
        (d, w) for d in (1, 2, 31) for w in sorted([EVIL, "train", "unattributed"])]
    assert [(r["estimated_usd"], r["billed_usd"]) for r in read if r["day"].day == 2] == [
        (D("264.00"), None), (D("48.00"), None), (None, D("9.99"))]


def test_the_focus_rows_are_the_fields_csv_writes(database):
    """The FOCUS export writes its lines itself, each origin charge's fields quoted once: read back and
    written again by ``csv.writer``, the file is the same, whatever the names hold (quotes, commas, line
    breaks, percent signs)."""
    from datetime import datetime, timezone

    from hybridspend.reports import focus_export
    from hybridspend.storage.onprem_allocation import NodeDayShare

    day = datetime(2026, 10, 1, tzinfo=timezone.utc)
    names = ['say "hi"', "a,b", "two\nlines", "100%", "%s", "%(x)s", "idle", ""]
    shares = [NodeDayShare(day, f"node-{i % 3}%", "A100", name, name, 3_600_000 * (i + 1), 1_234_567 * i,
                           400 * 3_600_000 * (i + 1), D("2.3214") * (i + 1)) for i, name in enumerate(names)]
    text = focus_export.render_csv(focus_export.focus_rows(shares, day, day.replace(month=11)))
    rows = list(csv.reader(io.StringIO(text)))
    again = io.StringIO()
    csv.writer(again, lineterminator="\n").writerows(rows)
    assert again.getvalue() == text and len(rows) == len(names) + 1
    read = list(csv.DictReader(io.StringIO(text)))
    by_node = [(i % 3, name) for i, name in enumerate(names)]  # one origin charge a node, in order of appearance
    by_node.sort(key=lambda n: n[0])
    assert [(r["ResourceId"], r["x_Workload"], r["x_Team"]) for r in read] == [
        (f"node-{n}%", name, name) for n, name in by_node]
    assert [r["AllocatedResourceId"] for r in read] == [name if name != "idle" else "" for _, name in by_node]


def test_the_pdf_draws_a_chart_given_as_an_image_as_it_draws_it_inline(tmp_path):
    """The PDF gets the charts as SVG images, not inline SVG (a fraction of the layout time): the page comes
    out the same, pixel for pixel, and with the same text."""
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        pytest.skip("pdftoppm and pdftotext are not installed (Debian's poppler-utils; .ci/run installs it)")
    from datetime import datetime, timezone

    from weasyprint import CSS, HTML
    from weasyprint.text.fonts import FontConfiguration

    from hybridspend.reports import charts, fonts, pdf

    days = [datetime(2026, 10, d, tzinfo=timezone.utc) for d in range(1, 8)]
    svg = charts.daily_spend(days, {"onprem": [5.0] * 7, "cloud": [1.0, 2, 3, 4, 5, 6, 7]}, 9.5, f"October {UNI}")
    page = (f"<html><head><style>figure svg {{ display: block; width: 100%; height: auto; }}</style></head><body>"
            f"<p>{html.escape(EVIL)}</p><figure>{svg}<p>after</p></figure></body></html>")
    assert pdf.charts_as_images(page).count('<img class="chart" src="data:image/svg+xml;base64,') == 1
    font_config = FontConfiguration()
    inline = HTML(string=page).write_pdf(stylesheets=[CSS(string=fonts.font_face_css(), font_config=font_config)],
                                         font_config=font_config)
    for name, data in (("inline", inline), ("image", pdf.pdf_from_html(page))):
        (tmp_path / f"{name}.pdf").write_bytes(data)
        subprocess.run(["pdftoppm", "-r", "100", "-png", str(tmp_path / f"{name}.pdf"), str(tmp_path / name)],
                       check=True)
    assert (tmp_path / "inline-1.png").read_bytes() == (tmp_path / "image-1.png").read_bytes()
    text = [subprocess.run(["pdftotext", "-layout", str(tmp_path / f"{name}.pdf"), "-"], capture_output=True,
                           check=True).stdout for name in ("inline", "image")]
    assert text[0] == text[1] and "October" in text[0].decode()
