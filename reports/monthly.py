"""The monthly repatriation / migration report for finance.

Reads the month from the query layer (rollups, decision log), prices each workload's month in the
other environment with the pure cost model, and writes Markdown, CSV, HTML (with SVG charts), PDF and a
FOCUS-shaped CSV of the on-prem costs (custom columns prefixed ``x_``) that finance tools can load
beside the cloud bill.  Every label from users' clusters is escaped in HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

import psycopg

from contracts.config import Config
from costmodel import MIGRATE_TO_CLOUD, REPATRIATE_BUY, STAY, Market, WorkloadWindow
from costmodel.money import cents
from storage.queries import WorkloadSummary

MS_PER_HOUR = 3_600_000
FORMATS = ("md", "csv", "html", "pdf", "focus")


@dataclass(frozen=True)
class WorkloadMonth(WorkloadSummary):  # cost_usd: estimated from live samples
    billed_usd: Decimal | None
    alternative_usd: Decimal | None
    alternative_label: str
    recommendation: str
    annualized_savings_usd: Decimal
    confidence: str


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    start: datetime
    end: datetime
    workloads: list[WorkloadMonth]
    idle_gpu_hours: Decimal
    idle_usd: Decimal
    assumptions: list[tuple[str, str]]
    daily: list[tuple[datetime, str, Decimal, Decimal]]  # day, environment, cost, busy GPU-hours
    days_with_data: int


def month_bounds(month: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--month must be YYYY-MM, got {month!r}") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _recommend(row: dict, decision: dict | None, market: Market, observed_ms: int) -> tuple:
    """(alternative $, label, recommendation, annualized savings $) for one workload's month.

    The other environment is priced over the hours the month has data for (owned GPUs cost every
    one of them); savings are annualized from those hours (8760 a year).
    """
    window = WorkloadWindow(
        workload=row["workload"], team=row["team"], environment=row["environment"], gpu_class=row["gpu_class"],
        window_start_ms=0, window_ms=observed_ms, allocated_gpu_ms=row["allocated_gpu_ms"],
        busy_gpu_ms=row["busy_gpu_ms"], cost_usd=row["estimated_usd"], coverage=Decimal(1))
    alternative = market.alternative(window, allow_spot=False)
    if alternative is None:
        return None, "no matching offer or asset", "stay", Decimal(0)
    savings = (row["estimated_usd"] - alternative.cost_usd) * Decimal(8760 * MS_PER_HOUR) / observed_ms
    kind = decision["kind"] if decision is not None else STAY
    if kind != STAY and savings <= 0:
        return (alternative.cost_usd, alternative.label,
                f"stay (the in-month {kind.replace('_', ' ')} decision does not hold over the month)", Decimal(0))
    if kind == MIGRATE_TO_CLOUD:
        text = f"migrate to cloud ({alternative.label})"
    elif kind == REPATRIATE_BUY:
        months = _payback_months(alternative, row, market, observed_ms)
        text = f"repatriate by buying {alternative.gpus_needed} {alternative.label.removeprefix('on-prem ')} GPUs" + (
            f" (payback {months:.1f} months)" if months is not None else "")
    elif kind == "repatriate_fill_idle":
        text = "repatriate by filling idle capacity"
    else:
        text = "stay"
        savings = Decimal(0)
    return alternative.cost_usd, alternative.label, text, savings


def _payback_months(alternative, row, market: Market, observed_ms: int) -> Decimal | None:
    """months_to_breakeven = capex needed / (monthly cloud - monthly on-prem opex), DESIGN.md §2."""
    gpu = market.onprem.get(alternative.label.removeprefix("on-prem "))
    if gpu is None:
        return None
    monthly_cloud = row["estimated_usd"] * 730 * MS_PER_HOUR / observed_ms
    monthly_opex = gpu.rate().opex_usd_per_gpu_hour * 730 * alternative.gpus_needed
    margin = monthly_cloud - monthly_opex
    capex = gpu.purchase_price_usd_per_gpu * alternative.gpus_needed
    return capex / margin if margin > 0 else None


def build(conn: psycopg.Connection, config: Config, month: str) -> MonthlyReport:
    start, end = month_bounds(month)
    market = config.market()
    days = conn.execute("SELECT count(DISTINCT bucket) FROM cost_daily WHERE bucket >= %s AND bucket < %s",
                        (start, end)).fetchone()[0]
    observed_ms = max(1, days) * 24 * MS_PER_HOUR
    cur = conn.execute(
        """
        WITH billed AS (
            SELECT workload, environment, sum(billed_usd) AS billed_usd FROM estimate_vs_billed_daily
             WHERE day >= %(start)s AND day < %(end)s GROUP BY 1, 2
        )
        SELECT c.workload, max(c.team) AS team, c.environment, c.gpu_class,
               sum(c.allocated_gpu_ms) AS allocated_gpu_ms, sum(c.busy_gpu_ms) AS busy_gpu_ms,
               coalesce(sum(c.cost_usd), 0) AS estimated_usd, max(b.billed_usd) AS billed_usd
          FROM cost_daily c
          LEFT JOIN billed b ON b.workload = c.workload AND b.environment = c.environment
         WHERE c.basis = 'estimated' AND c.bucket >= %(start)s AND c.bucket < %(end)s AND c.workload <> 'idle'
         GROUP BY c.workload, c.environment, c.gpu_class
         ORDER BY estimated_usd DESC, c.workload
        """, {"start": start, "end": end})
    names = [c.name for c in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    decisions = {
        (r[0], r[1]): {"kind": r[2], "confidence": r[3]}
        for r in conn.execute(
            """SELECT DISTINCT ON (workload, from_env) workload, from_env, kind, confidence FROM decision_log
                WHERE decided_at >= %s AND decided_at < %s ORDER BY workload, from_env, decided_at DESC""",
            (start, end))
    }
    workloads = []
    for row in rows:
        row["allocated_gpu_ms"] = int(row["allocated_gpu_ms"] or 0)
        row["busy_gpu_ms"] = int(row["busy_gpu_ms"] or 0)
        decision = decisions.get((row["workload"], row["environment"]))
        alt, label, text, savings = _recommend(row, decision, market, observed_ms)
        confidence = "billed" if row["billed_usd"] is not None else "estimated"
        if decision is not None:
            confidence += f", decision confidence {Decimal(decision['confidence']):.0%}"
        workloads.append(WorkloadMonth(
            workload=row["workload"], team=row["team"], environment=row["environment"], gpu_class=row["gpu_class"],
            allocated_gpu_hours=Decimal(row["allocated_gpu_ms"]) / MS_PER_HOUR,
            busy_gpu_hours=Decimal(row["busy_gpu_ms"]) / MS_PER_HOUR, cost_usd=row["estimated_usd"],
            billed_usd=row["billed_usd"], alternative_usd=alt, alternative_label=label, recommendation=text,
            annualized_savings_usd=savings, confidence=confidence))
    idle_hours, idle_usd = conn.execute(
        "SELECT coalesce(sum(idle_gpu_hours), 0), coalesce(sum(idle_cost_usd), 0) FROM idle_cost_daily"
        " WHERE day >= %s AND day < %s", (start, end)).fetchone()
    daily = conn.execute(
        """SELECT bucket, environment, sum(cost_usd), sum(busy_gpu_ms) / 3600000.0 FROM cost_daily
            WHERE basis = 'estimated' AND workload <> 'idle' AND bucket >= %s AND bucket < %s
            GROUP BY 1, 2 ORDER BY 1, 2""", (start, end)).fetchall()
    return MonthlyReport(month, start, end, workloads, Decimal(idle_hours), Decimal(idle_usd),
                         assumptions(config), daily, days)


def assumptions(config: Config) -> list[tuple[str, str]]:
    out = []
    for asset in config.onprem_assets:
        rate = asset.gpu_cost().rate()
        out.append((f"on-prem {asset.name} ({asset.gpu_count} x {asset.gpu_model})",
                    f"${asset.purchase_price_usd_per_node:,} per node of {asset.gpus_per_node}, "
                    f"{asset.amortization_months} months from {asset.in_service_date}, {asset.power_w_per_gpu} W, "
                    f"PUE {asset.pue}, ${asset.electricity_usd_per_kwh}/kWh; "
                    f"${cents(rate.usd_per_gpu_hour)} per GPU-hour fully loaded"))
    for offer in config.cloud_offers:
        prices = ", ".join(f"{k} ${v}" for k, v in offer.usd_per_hour.items())
        out.append((f"cloud {offer.provider} {offer.region} {offer.instance_type}",
                    f"{offer.gpus_per_instance} x {offer.gpu_model}; {prices} per instance-hour"
                    + (f"; {offer.discount_pct}% contract discount" if offer.discount_pct else "")))
    t = config.thresholds
    out.append(("breakeven rules", f"margin {t.margin_pct}%, dwell {t.dwell_windows} windows of {t.window_seconds} s; "
                                   f"migration priced at {', '.join(t.migration_purchase_options)}"))
    out.append(("GPU throughput", ", ".join(f"{k} {v}" for k, v in sorted(config.gpu_throughput.items())) or "none"))
    out.append(("calendar", "730 hours a month, 8760 a year; the other environment is priced over the days of "
                             "the month that have data, and savings are annualized from them"))
    return out


# -- renderers --------------------------------------------------------------------------------------


def _usd(v: Decimal | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


def _pct(v: Decimal | None) -> str:
    return "—" if v is None else f"{v:.0%}"


COLUMNS = ("workload", "team", "environment", "gpu_class", "allocated_gpu_hours", "busy_gpu_hours", "utilization",
           "estimated_usd", "billed_usd", "usd_per_busy_gpu_hour", "alternative_usd", "alternative",
           "recommendation", "annualized_savings_usd", "confidence")


def _row(w: WorkloadMonth) -> list:
    return [w.workload, w.team, w.environment, w.gpu_class, f"{w.allocated_gpu_hours:.3f}", f"{w.busy_gpu_hours:.3f}",
            "" if w.utilization is None else f"{w.utilization:.4f}", f"{w.cost_usd:.2f}",
            "" if w.billed_usd is None else f"{w.billed_usd:.2f}",
            "" if w.usd_per_busy_gpu_hour is None else f"{w.usd_per_busy_gpu_hour:.4f}",
            "" if w.alternative_usd is None else f"{w.alternative_usd:.2f}", w.alternative_label, w.recommendation,
            f"{w.annualized_savings_usd:.2f}", w.confidence]


def render_csv(report: MonthlyReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for w in report.workloads:
        writer.writerow(_row(w))
    return out.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(report: MonthlyReport) -> str:
    total = sum((w.cost_usd for w in report.workloads), Decimal(0))
    savings = sum((w.annualized_savings_usd for w in report.workloads), Decimal(0))
    lines = [f"# GPU spend and placement — {report.month}", "",
             f"Total estimated GPU spend {_usd(total)}; idle on-prem capacity {report.idle_gpu_hours:,.1f} GPU-hours "
             f"costing {_usd(report.idle_usd)}; recommended moves save {_usd(savings)} a year "
             f"(from {report.days_with_data} day(s) of data).", "",
             "## Workloads", "",
             "| workload | team | where | GPU | GPU-h | busy | cost | billed | $/busy GPU-h | other env | recommendation | savings/yr | confidence |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for w in report.workloads:
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            w.workload, w.team, w.environment, w.gpu_class, f"{w.allocated_gpu_hours:,.1f}", _pct(w.utilization),
            _usd(w.cost_usd), _usd(w.billed_usd), _usd(w.usd_per_busy_gpu_hour), _usd(w.alternative_usd),
            w.recommendation, _usd(w.annualized_savings_usd), w.confidence)) + " |")
    movers = sorted(report.workloads, key=lambda w: w.annualized_savings_usd, reverse=True)[:5]
    lines += ["", "## Top movers", ""] + [f"- {_md_cell(w.workload)}: {w.recommendation}, "
                                          f"{_usd(w.annualized_savings_usd)} a year" for w in movers
                                          if w.annualized_savings_usd > 0]
    lines += ["", "## Utilization distribution", ""] + [f"- {band}: {n} workload(s)" for band, n in _bands(report)]
    lines += ["", "## Assumptions", ""] + [f"- **{k}**: {v}" for k, v in report.assumptions]
    return "\n".join(lines) + "\n"


def _bands(report: MonthlyReport) -> list[tuple[str, int]]:
    labels = ("below 25 %", "25–50 %", "50–75 %", "75 % and above")
    counts = [0, 0, 0, 0]
    for w in report.workloads:
        if w.utilization is not None:
            counts[min(3, int(w.utilization * 4))] += 1
    return list(zip(labels, counts))


def _svg_bars(title: str, items: list[tuple[str, Decimal]], unit: str) -> str:
    if not items:
        return ""
    width, bar_h = 640, 18
    top = max((v for _, v in items), default=Decimal(1)) or Decimal(1)
    rows = []
    for i, (label, value) in enumerate(items):
        w = int(Decimal(360) * value / top) if top > 0 else 0
        y = 24 + i * (bar_h + 6)
        rows.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(label[:40])}</text>'
                    f'<rect x="250" y="{y}" width="{max(w, 1)}" height="{bar_h}" fill="#4c78a8"/>'
                    f'<text x="{255 + w}" y="{y + 13}" font-size="12">{html.escape(unit.format(value))}</text>')
    height = 30 + len(items) * (bar_h + 6)
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}"><text x="0" y="14" font-size="14" font-weight="bold">'
            f'{html.escape(title)}</text>{"".join(rows)}</svg></figure>')


def render_html(report: MonthlyReport) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ("workload", "team", "where", "GPU", "GPU-h", "busy", "cost", "billed",
                                                 "$/busy GPU-h", "other env", "recommendation", "savings/yr",
                                                 "confidence"))
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
            w.workload, w.team, w.environment, w.gpu_class, f"{w.allocated_gpu_hours:,.1f}", _pct(w.utilization),
            _usd(w.cost_usd), _usd(w.billed_usd), _usd(w.usd_per_busy_gpu_hour), _usd(w.alternative_usd),
            w.recommendation, _usd(w.annualized_savings_usd), w.confidence)) + "</tr>"
        for w in report.workloads)
    per_env: dict[str, list[Decimal]] = {}
    for _, env, cost, busy in report.daily:
        per_env.setdefault(env, [Decimal(0), Decimal(0)])
        per_env[env][0] += Decimal(cost)
        per_env[env][1] += Decimal(busy)
    env_chart = _svg_bars("Cost per busy GPU-hour by environment, this month",
                          [(env, c / b) for env, (c, b) in sorted(per_env.items()) if b], "${:,.2f}")
    util_chart = _svg_bars("Utilization per workload", [(f"{w.workload} ({w.environment})", w.utilization * 100)
                                                        for w in report.workloads if w.utilization is not None],
                           "{:.0f} %")
    assumptions = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report.assumptions)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>GPU spend {e(report.month)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style></head><body>"
            f"<h1>GPU spend and placement — {e(report.month)}</h1>"
            f"<p>Idle on-prem capacity: {report.idle_gpu_hours:,.1f} GPU-hours costing {e(_usd(report.idle_usd))}.</p>"
            f"<h2>Workloads</h2><table><tr>{head}</tr>{body}</table>"
            f"<h2>Charts</h2>{env_chart}{util_chart}<h2>Assumptions</h2><ul>{assumptions}</ul></body></html>")


FOCUS_COLUMNS = ("BillingAccountId", "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "ChargeCategory",
                 "ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "EffectiveCost", "ProviderName",
                 "ServiceName", "ResourceType", "ConsumedQuantity", "ConsumedUnit", "Tags",
                 "x_Workload", "x_Team", "x_GpuClass", "x_BusyGpuHours", "x_AllocatedGpuHours")


def render_focus(conn: psycopg.Connection, report: MonthlyReport) -> str:
    """On-prem cost per workload and day as FOCUS-shaped rows (custom columns prefixed x_)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FOCUS_COLUMNS)
    rows = conn.execute(
        """SELECT bucket, workload, team, gpu_class, cost_usd, allocated_gpu_ms, busy_gpu_ms FROM cost_daily
            WHERE environment = 'onprem' AND basis = 'estimated' AND bucket >= %s AND bucket < %s
            ORDER BY bucket, workload, gpu_class""", (report.start, report.end)).fetchall()
    fmt = "%Y-%m-%d %H:%M:%S"
    for day, workload, team, gpu_class, cost, alloc_ms, busy_ms in rows:
        day_end = day + timedelta(days=1)
        writer.writerow([
            "on-prem", "USD", report.start.strftime(fmt), report.end.strftime(fmt), "Usage", day.strftime(fmt),
            day_end.strftime(fmt), f"{cost:.6f}", f"{cost:.6f}", "On-premises", "GPU compute", "GPU",
            f"{Decimal(alloc_ms) / MS_PER_HOUR:.6f}", "GPU-Hours",
            json.dumps({"workload": workload, "team": team}),
            workload, team, gpu_class, f"{Decimal(busy_ms) / MS_PER_HOUR:.6f}", f"{Decimal(alloc_ms) / MS_PER_HOUR:.6f}",
        ])
    return out.getvalue()



def _latin1(text: str) -> str:
    """The PDF's core fonts are Latin-1: dashes become hyphens, anything else outside it a '?'."""
    text = text.replace("—", "-").replace("–", "-").replace("‹", "<").replace("›", ">")
    return text.encode("latin-1", "replace").decode("latin-1")


def render_pdf(report: MonthlyReport) -> bytes:
    """The report as PDF: summary, workloads, charts, assumptions (each section starts a page)."""
    from fpdf import FPDF

    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.set_title(_latin1(f"GPU spend and placement {report.month}"))

    def heading(text: str) -> None:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 10, _latin1(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10)

    def para(text: str) -> None:
        pdf.multi_cell(0, 5, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    total = sum((w.cost_usd for w in report.workloads), Decimal(0))
    savings = sum((w.annualized_savings_usd for w in report.workloads), Decimal(0))
    heading(f"GPU spend and placement - {report.month}")
    para(f"Total estimated GPU spend {_usd(total)}; idle on-prem capacity {report.idle_gpu_hours:,.1f} GPU-hours "
         f"costing {_usd(report.idle_usd)}; recommended moves save {_usd(savings)} a year (from "
         f"{report.days_with_data} day(s) of data).")
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Top movers", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for w in sorted(report.workloads, key=lambda w: w.annualized_savings_usd, reverse=True)[:5]:
        if w.annualized_savings_usd > 0:
            para(f"- {w.workload}: {w.recommendation}, {_usd(w.annualized_savings_usd)} a year")
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Utilization distribution", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for band, n in _bands(report):
        para(f"- {band}: {n} workload(s)")

    heading("Workloads")
    pdf.set_font("Helvetica", size=7)
    widths = (40, 22, 14, 12, 17, 11, 20, 20, 17, 20, 52, 20, 27)
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=4) as table:
        table.row(["workload", "team", "where", "GPU", "GPU-h", "busy", "cost", "billed", "$/busy GPU-h",
                   "other env", "recommendation", "savings/yr", "confidence"])
        for w in report.workloads:
            table.row([_latin1(str(x)) for x in (
                w.workload, w.team, w.environment, w.gpu_class, f"{w.allocated_gpu_hours:,.1f}", _pct(w.utilization),
                _usd(w.cost_usd), _usd(w.billed_usd), _usd(w.usd_per_busy_gpu_hour), _usd(w.alternative_usd),
                w.recommendation, _usd(w.annualized_savings_usd), w.confidence)])

    heading("Charts")
    per_env: dict[str, list[Decimal]] = {}
    for _, env, cost, busy in report.daily:
        acc = per_env.setdefault(env, [Decimal(0), Decimal(0)])
        acc[0] += Decimal(cost)
        acc[1] += Decimal(busy)
    charts = [("Cost per busy GPU-hour by environment, this month",
               [(env, c / b) for env, (c, b) in sorted(per_env.items()) if b], "${:,.2f}"),
              ("Utilization per workload", [(f"{w.workload} ({w.environment})", w.utilization * 100)
                                            for w in report.workloads if w.utilization is not None][:30], "{:.0f} %")]
    for title, items, unit in charts:
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 8, _latin1(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=8)
        top = max((v for _, v in items), default=Decimal(1)) or Decimal(1)
        for label, value in items:
            y = pdf.get_y()
            pdf.cell(80, 5, _latin1(label[:48]))
            width = float(Decimal(150) * value / top) if top > 0 else 0.0
            pdf.set_fill_color(76, 120, 168)
            pdf.rect(pdf.l_margin + 82, y + 0.8, max(width, 0.3), 3.4, style="F")
            pdf.set_xy(pdf.l_margin + 84 + width, y)
            pdf.cell(30, 5, _latin1(unit.format(value)), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)

    heading("Assumptions")
    for key, value in report.assumptions:
        para(f"{key}: {value}")
    return bytes(pdf.output())


def write(conn: psycopg.Connection, report: MonthlyReport, formats: list[str], out_dir: Path,
          progress: Callable[[str], None] = lambda m: None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    names = {"md": "gpu-spend-{}.md", "csv": "gpu-spend-{}.csv", "html": "gpu-spend-{}.html",
             "pdf": "gpu-spend-{}.pdf", "focus": "onprem-focus-{}.csv"}
    for i, fmt in enumerate(formats, start=1):
        if fmt not in names:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        filled = 20 * (i - 1) // len(formats)
        progress(f"  [{'#' * filled}{'.' * (20 - filled)}] {i - 1}/{len(formats)} writing {fmt}")
        path = out_dir / names[fmt].format(report.month)
        if fmt == "pdf":
            path.write_bytes(render_pdf(report))
        else:
            path.write_text({"md": render_md, "csv": render_csv, "html": render_html}[fmt](report)
                            if fmt != "focus" else render_focus(conn, report))
        written.append(path)
    progress(f"  [{'#' * 20}] {len(formats)}/{len(formats)} done")
    return written
