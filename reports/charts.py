"""The report's five charts, drawn with matplotlib as SVG (inline in the HTML, vector in the PDF).

Each function takes figures already computed (by the cost model and the queries) and only draws them;
titles and numbers ("Figure N: ...") are the template's captions, so the HTML and PDF share them.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from decimal import Decimal

import matplotlib
import matplotlib.dates
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from hybridspend.reports import fonts

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac")
ENV_COLORS = {"onprem": "#4c78a8", "cloud": "#f58518"}
ENV_NAMES = {"onprem": "on-prem", "cloud": "cloud"}
WIDTH_IN = 10.5
RC = {
    "font.family": list(fonts.FAMILIES),
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",  # text as text: searchable, and far cheaper to lay out than glyph outlines
    "svg.hashsalt": "hybridspend",  # stable ids, so the same month gives the same file
}
_usd_axis = FuncFormatter(lambda v, _: f"${v:,.0f}" if v == int(v) else f"${v:,.2f}")


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_keeping_tail(text: str, limit: int) -> str:
    """Cut in the middle so that a closing "(...)" stays: two options that differ only there (a 1- and a 3-year
    term of one instance type) stay apart."""
    tail = text[text.rfind(" ("):] if text.endswith(")") and " (" in text else ""
    if len(text) <= limit or not tail or len(tail) > limit // 2:
        return short(text, limit)
    return text[: limit - len(tail) - 1] + "…" + tail


def class_colors(classes: list[str]) -> dict[str, str]:
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(sorted(set(classes)))}


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    # inline in HTML: drop the XML prolog and let CSS size it (the viewBox keeps the proportions)
    text = text[text.index("<svg"):]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', text, count=1)


def _figure(height_in: float, **kwargs) -> Figure:
    fonts.register_with_matplotlib()
    return Figure(figsize=(WIDTH_IN, height_in), layout="constrained", **kwargs)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _days(ax, days: list[datetime], month_label: str) -> None:
    ax.set_xlabel(f"day of {month_label} (UTC)")
    if days:
        ax.set_xlim(0.4, max(d.day for d in days) + 0.6)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=16))


def breakeven(owned_curves: list[tuple[str, list[float], list[float]]],
              cloud_lines: list[tuple[str, str, float]],
              crossings: list[tuple[str, float]],
              points: list[tuple[str, str, str, float, float, bool]]) -> str:
    """$ per busy GPU-hour against utilization.

    owned_curves: (gpu_class, utilizations, $/busy GPU-hour); cloud_lines: (label, gpu_class, $/GPU-hour);
    crossings: (gpu_class, breakeven utilization); points: (label, environment, gpu_class, utilization,
    $/busy GPU-hour, recommended to move).
    """
    with matplotlib.rc_context(RC):
        fig = _figure(5.4)
        ax = fig.add_subplot()
        colors = class_colors([c for c, _, _ in owned_curves] + [c for _, c, _ in cloud_lines]
                              + [p[2] for p in points])
        top = max([price for _, _, price in cloud_lines] + [min(ys) for _, _, ys in owned_curves] + [1.0]) * 2.6
        for gpu_class, xs, ys in owned_curves:
            ax.plot(xs, ys, color=colors[gpu_class], linewidth=2, label=f"owned {gpu_class}: rate ÷ utilization")
        last_label_y = None
        for label, gpu_class, price in sorted(cloud_lines, key=lambda line: line[2]):
            ax.axhline(price, color=colors[gpu_class], linestyle="--", linewidth=1.2)
            close = last_label_y is not None and price - last_label_y < top * 0.045
            ax.text(0.995, price, f"{label} ${price:,.2f} ", color=colors[gpu_class], fontsize=7.5,
                    va="bottom" if close else "top", ha="right", transform=ax.get_yaxis_transform())
            last_label_y = price if not close else price + top * 0.045
        for gpu_class, u_star in crossings:
            ax.axvline(u_star, color=colors[gpu_class], linestyle=":", linewidth=1.3)
            ax.text(u_star, top * 0.985, f" breakeven {gpu_class}: {u_star:.0%}", va="top", ha="left", fontsize=8,
                    color=colors[gpu_class], fontweight="bold")
        clipped = 0
        for env, marker in (("onprem", "o"), ("cloud", "s")):
            mine = [p for p in points if p[1] == env]
            if not mine:
                continue
            ys = [min(p[4], top * 0.985) for p in mine]
            clipped += sum(1 for p in mine if p[4] > top * 0.985)
            ax.scatter([p[3] for p in mine], ys, marker=marker, s=[50 if p[5] else 18 for p in mine],
                       c=[colors[p[2]] for p in mine], edgecolors=["#111" if p[5] else "none" for p in mine],
                       linewidths=1.0, alpha=0.85, zorder=3, label=f"workload on {ENV_NAMES.get(env, env)}")
        labelled: list[tuple[float, float]] = []
        for label, _, _, u, y, _ in sorted((p for p in points if p[5]), key=lambda p: -p[4]):
            y = min(y, top * 0.985)
            if len(labelled) == 6 or any(abs(u - lu) < 0.08 and abs(y - ly) < top * 0.05 for lu, ly in labelled):
                continue  # keep the labels legible: the largest, and only where there is room
            labelled.append((u, y))
            left = u > 0.75
            ax.annotate(short(label, 22), (u, y), xytext=(-6 if left else 6, 5), textcoords="offset points",
                        ha="right" if left else "left", fontsize=7.5, color="#111")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, top)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(_usd_axis)
        ax.set_xlabel("utilization (busy GPU-hours ÷ allocated GPU-hours)")
        ax.set_ylabel("$ per busy GPU-hour")
        fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=4)
        if clipped:
            ax.text(0.995, 0.995, f"{clipped} workload(s) above ${top:,.0f} drawn at the top edge", ha="right",
                    va="top", transform=ax.transAxes, fontsize=7.5, color="#555")
        return _svg(fig)


def daily_spend(days: list[datetime], by_env: dict[str, list[float]], daily_budget_usd: float | None,
                month_label: str) -> str:
    """Stacked bars of the workloads' spend per day and environment, with the daily share of the budgets."""
    with matplotlib.rc_context(RC):
        fig = _figure(2.4)
        ax = fig.add_subplot()
        if not days:
            _message(ax, "no spend recorded this month")
            return _svg(fig)
        x = [d.day for d in days]
        bottom = [0.0] * len(days)
        for env in sorted(by_env, key=lambda e: (e != "onprem", e)):
            ax.bar(x, by_env[env], bottom=bottom, color=ENV_COLORS.get(env, "#999"), width=0.8,
                   label=ENV_NAMES.get(env, env))
            bottom = [b + v for b, v in zip(bottom, by_env[env])]
        if daily_budget_usd is not None:
            ax.axhline(daily_budget_usd, color="#e45756", linestyle="--", linewidth=1.4,
                       label=f"budget ${daily_budget_usd:,.0f} a day")
        _days(ax, days, month_label)
        ax.set_ylabel("$ per day")
        ax.yaxis.set_major_formatter(_usd_axis)
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=3, bbox_to_anchor=(0, 1.12))
        return _svg(fig)


def utilization_bands(series: list[tuple[str, list[datetime], list[float | None], tuple[float, float, float] | None]],
                      month_label: str) -> str:
    """Small multiples: each workload's daily utilization with its breakeven band (low, u*, high)."""
    with matplotlib.rc_context(RC):
        if not series:
            fig = _figure(1.6)
            _message(fig.add_subplot(), "no move is recommended this month")
            return _svg(fig)
        cols = min(3, len(series))
        rows = (len(series) + cols - 1) // cols
        fig = _figure(1.35 * rows + 0.35)
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        for ax in axes.flat[len(series):]:
            ax.set_visible(False)
        for ax, (title, days, utilization, band) in zip(axes.flat, series):
            if band is not None:
                low, u_star, high = band
                ax.axhspan(low, high, color="#bbbbbb", alpha=0.35, linewidth=0)
                ax.axhline(u_star, color="#666", linestyle=":", linewidth=1)
                ax.text(0.99, u_star, f"u* {u_star:.0%}", transform=ax.get_yaxis_transform(), ha="right",
                        va="bottom", fontsize=7, color="#444")
            xs = [d.day for d, u in zip(days, utilization) if u is not None]
            ys = [u for u in utilization if u is not None]
            ax.plot(xs, ys, color="#4c78a8", marker="o", markersize=2.5, linewidth=1.4)
            ax.set_title(title, loc="left")
            ax.set_ylim(0, 1.05)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            _days(ax, days, month_label)
            ax.set_xlabel("")
        fig.supxlabel(f"day of {month_label} (UTC); grey band: breakeven ± margin", fontsize=8)
        return _svg(fig)


def idle_cost(days: list[datetime], by_class: dict[str, list[float]], month_label: str) -> str:
    """Stacked bars of what idle owned GPUs cost per day, by GPU class."""
    with matplotlib.rc_context(RC):
        fig = _figure(2.7)
        ax = fig.add_subplot()
        if not days:
            _message(ax, "no idle owned capacity recorded this month")
            return _svg(fig)
        colors = class_colors(list(by_class))
        x = [d.day for d in days]
        bottom = [0.0] * len(days)
        for gpu_class in sorted(by_class):
            ax.bar(x, by_class[gpu_class], bottom=bottom, color=colors[gpu_class], width=0.8,
                   label=f"idle {gpu_class}")
            bottom = [b + v for b, v in zip(bottom, by_class[gpu_class])]
        _days(ax, days, month_label)
        ax.set_ylabel("$ per day")
        ax.yaxis.set_major_formatter(_usd_axis)
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=4, bbox_to_anchor=(0, 1.12))
        return _svg(fig)


def estimated_vs_billed(days: list[datetime], estimated: list[float | None], billed: list[float | None],
                        month_label: str) -> str:
    """Cloud cost per day as estimated live against the provider's bill (gaps: not billed yet)."""
    with matplotlib.rc_context(RC):
        fig = _figure(2.7)
        ax = fig.add_subplot()
        if not days:
            _message(ax, "no cloud cost recorded this month")
            return _svg(fig)
        x = [d.day for d in days]
        ax.bar([v - 0.2 for v in x], [e or 0 for e in estimated], width=0.4, color="#f58518",
               label="estimated live (instances × price)")
        ax.bar([v + 0.2 for v in x], [b or 0 for b in billed], width=0.4, color="#4c78a8", label="billed")
        for v, b in zip(x, billed):
            if b is None:
                ax.text(v + 0.2, 0, " not billed yet", rotation=90, ha="center", va="bottom", fontsize=6.5,
                        color="#4c78a8")
        _days(ax, days, month_label)
        ax.set_ylabel("$ per day")
        ax.yaxis.set_major_formatter(_usd_axis)
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=3, bbox_to_anchor=(0, 1.12))
        return _svg(fig)


def as_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


HORIZON_PANELS = 4  # recommended workloads drawn over the horizon, largest savings first


def options_over_horizon(panels: list[tuple[str, int, list[tuple[str, float, float, int | None]]]]) -> str:
    """Cumulative cost of each option month by month, one panel a workload, the month each overtakes
    staying marked.  panels: (title, horizon months, [(option label, up front $, $ a month, crossover
    month or None)]); the first option of a panel is staying as it runs."""
    with matplotlib.rc_context(RC):
        shown = panels[:HORIZON_PANELS]
        fig = _figure(2.6 * max(1, (len(shown) + 1) // 2) + 0.6)
        if not shown:
            _message(fig.add_subplot(), "no recommended move this month: nothing to compare over a horizon")
            return _svg(fig)
        axes = list(fig.subplots(max(1, (len(shown) + 1) // 2), 2 if len(shown) > 1 else 1, squeeze=False).flat)
        for ax, (title, horizon, options) in zip(axes, shown):
            months = list(range(horizon + 1))
            for i, (label, upfront, monthly, crossover) in enumerate(options):
                color = "#555" if i == 0 else PALETTE[(i - 1) % len(PALETTE)]
                ax.plot(months, [upfront + monthly * m for m in months], color=color, linewidth=2 if i == 0 else 1.4,
                        linestyle="--" if i == 0 else "-", label=short_keeping_tail(label, 46))
                if i and crossover is not None:
                    y = upfront + monthly * crossover
                    ax.scatter([crossover], [y], color=color, s=22, zorder=3)
                    ax.annotate(f"month {crossover}", (crossover, y), xytext=(4, 4), textcoords="offset points",
                                fontsize=7, color=color, bbox={"boxstyle": "round,pad=0.1", "fc": "white",
                                                               "ec": "none", "alpha": 0.85})
            ax.set_title(short(title, 48), fontsize=9, loc="left")
            ax.set_xlim(0, horizon)
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(_usd_axis)
            ax.set_xlabel("months from now")
            ax.legend(fontsize=6.5, frameon=False, loc="upper left")
        for ax in axes[len(shown):]:
            ax.set_visible(False)
        return _svg(fig)


def spend_forecast(actual: list[tuple[datetime, float]], forecast: list[tuple[datetime, float]],
                   bands: dict[int, tuple[float, float]], label: str) -> str:
    """Daily spend of the month (bars) and next month's forecast per day (line), with the forecast total's
    intervals (``bands``: level -> (low, high) as a share of the point total) shaded around the line."""
    with matplotlib.rc_context(RC):
        fig = _figure(2.4)
        ax = fig.add_subplot()
        if not actual and not forecast:
            _message(ax, "no spend recorded: nothing to forecast from")
            return _svg(fig)
        ax.bar([d for d, _ in actual], [v for _, v in actual], width=0.8, color="#4c78a8", label=f"{label}, actual")
        if forecast:
            days, values = [d for d, _ in forecast], [v for _, v in forecast]
            for level, alpha in ((95, 0.15), (80, 0.3)):
                if level in bands:
                    low, high = bands[level]
                    ax.fill_between(days, [v * low for v in values], [v * high for v in values], color="#f58518",
                                    alpha=alpha, linewidth=0, label=f"{level} % interval of the month's total")
            ax.plot(days, values, color="#f58518", linewidth=1.6, label="forecast")
        ax.set_ylabel("$ per day")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(_usd_axis)
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%b %d"))
        ax.legend(loc="upper left", fontsize=7.5, frameon=False, ncols=4, bbox_to_anchor=(0, 1.14))
        return _svg(fig)
