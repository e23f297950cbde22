"""Slack messages for breakeven decisions (pure: builds Block Kit payloads, no I/O).

Workload and team names come from users' clusters.  They are escaped for Slack's mrkdwn
(``&``, ``<``, ``>``), so a label such as ``<!channel>`` or ``<https://evil|click>`` shows as
text and can neither ping a channel nor become a link.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote

from hybridspend.contracts.events import BreakevenDecision
from hybridspend.costmodel.money import range_text

ENV_NAMES = {"onprem": "on-prem", "cloud": "cloud"}
KIND_TITLES = {
    "migrate_to_cloud": "Migrate to cloud",
    "repatriate_buy_capacity": "Repatriate (buy capacity)",
    "repatriate_fill_idle": "Repatriate (fill idle capacity)",
    "commit_in_cloud": "Commit in the cloud",
    "stay": "Stay: earlier recommendation withdrawn",
    "trending_repatriation": "Trending toward repatriation",
}


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn gives meaning to."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: str) -> str:
    """For plain_text fields (never parsed for mentions): show angle brackets as look-alikes anyway."""
    return text.replace("<", "‹").replace(">", "›")


def _usd(amount: Decimal | None, suffix: str = "") -> str:
    return "n/a" if amount is None else f"${amount:,.2f}{suffix}"


def _pct(ratio: Decimal) -> str:
    return f"{ratio * 100:.0f}%"


def _range(d: BreakevenDecision) -> str:
    """The savings range as ' ($low to $high)', or '' for events written before ranges existed."""
    text = range_text(d.monthly_savings_low_usd, d.monthly_savings_high_usd, _usd)
    return f" ({text})" if text else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _order(d: BreakevenDecision) -> str:
    """What would be ordered: GPUs, and the whole nodes or instances they come in."""
    if d.nodes_needed is not None:
        return f"{d.gpus_needed} ({_plural(d.nodes_needed, 'node')})"
    if d.instances_needed is not None:
        return f"{d.gpus_needed} ({_plural(d.instances_needed, 'instance')})"
    return str(d.gpus_needed)


def _evidence(d: BreakevenDecision) -> str:
    return "" if d.evidence_hours is None else f", {d.evidence_hours.normalize():f} h of evidence"


def options_text(d: BreakevenDecision, most: int = 6) -> str:
    """The decision's options table, cheapest present value first: what each costs over the horizon."""
    rows = sorted(d.options, key=lambda o: o.npv_usd)[:most]
    lines = [f"*Options over {d.horizon_months} months* (present value at {d.discount_rate_pct.normalize():f}% a year)"]
    for o in rows:
        overtakes = "" if o.option == "stay" else (
            f", overtakes staying in month {o.breakeven_month}" if o.breakeven_month is not None else ", never cheaper")
        lines.append(f"• {escape(o.label)}: {_usd(o.npv_usd)} ({_usd(o.upfront_usd)} up front, "
                     f"{_usd(o.monthly_usd)} a month{overtakes})")
    return "\n".join(lines)


def decision_message(d: BreakevenDecision, dashboard_url: str | None = None) -> dict:
    """A Slack message (``text`` fallback + ``blocks``) for one decision."""
    title = KIND_TITLES.get(d.kind, d.kind)
    move = f"{ENV_NAMES[d.from_env]} → {ENV_NAMES[d.to_env]}" if d.from_env != d.to_env else ENV_NAMES[d.from_env]
    workload = escape(d.workload)
    text = (
        f"{title}: {workload} ({move}), saves about {_usd(d.monthly_savings_usd, '/month')}{_range(d)} — "
        f"{_usd(d.current_usd_per_busy_gpu_hour)} vs {_usd(d.alternative_usd_per_busy_gpu_hour)} "
        f"per busy GPU-hour at {_pct(d.utilization)} utilization"
    )
    fields = [
        ("Workload", f"`{workload}`"),
        ("Team", escape(d.team) or "—"),
        ("Move", move),
        ("GPU class", escape(d.gpu_class)),
        (f"Now ({ENV_NAMES[d.from_env]})", f"{_usd(d.current_usd_per_busy_gpu_hour)} per busy GPU-hour"),
        ("Alternative", f"{_usd(d.alternative_usd_per_busy_gpu_hour)} per busy GPU-hour\n{escape(d.alternative_label)}"),
        ("Utilization", _pct(d.utilization)),
        ("Est. savings", _usd(d.monthly_savings_usd, " / month") + _range(d)),
        ("Confidence", f"{_pct(d.confidence)} ({d.basis}){_evidence(d)}"),
        ("GPUs needed", _order(d)),
    ]
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(f"{title}: {d.workload}")[:150], "emoji": False}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(d.reason)}},
    ]
    if d.options:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": options_text(d)[:3000]}})
    if dashboard_url:
        link = f"{dashboard_url.rstrip('/')}/d/hybridspend-breakeven?var-workload={quote(d.workload, safe='')}"
        blocks.append(
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"}, "url": link}
            ]}
        )
    return {"text": text, "blocks": blocks}


def notice_message(n, dashboard_url: str | None = None) -> dict:
    """A Slack message for a budget, spend-rate, idle-capacity or collector-silence notice."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(n.title)[:150], "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(n.text)}},
    ]
    if n.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{escape(k)}*\n{escape(v)}"} for k, v in n.fields]})
    if dashboard_url:
        board = "hybridspend-spend" if n.audience == "finance" else "hybridspend-fleet"
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"},
             "url": f"{dashboard_url.rstrip('/')}/d/{board}"}]})
    return {"text": escape(n.text), "blocks": blocks}
