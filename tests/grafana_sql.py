"""Expand a panel's SQL the way Grafana's PostgreSQL datasource does, so it can run on a real server.

Template variables are interpolated first (multi-value: each value single-quoted with quotes
doubled, joined by commas, as Grafana's default SQL formatting does), then ``$__interval``, then
the macros of the PostgreSQL datasource (``$__timeFilter``, ``$__timeFrom``, ``$__timeTo``,
``$__timeGroup``, ``$__timeGroupAlias``).
"""

from __future__ import annotations

import re
from datetime import datetime

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(interval: str) -> float:
    m = re.fullmatch(r"\s*'?(\d+)(ms|s|m|h|d|w)'?\s*", interval)
    if not m:
        raise ValueError(f"not a Grafana interval: {interval!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rfc3339(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(sql: str, *, time_from: datetime, time_to: datetime, interval: str,
           variables: dict[str, list[str]]) -> str:
    def variable(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name.startswith("__"):
            return m.group(0)
        if name not in variables:
            raise KeyError(f"unknown template variable ${name}")
        return ",".join(quote(v) for v in variables[name])

    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)(?!\()", variable, sql)
    sql = sql.replace("$__interval_ms", str(int(seconds(interval) * 1000))).replace("$__interval", interval)

    def macro(m: re.Match) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name in ("timeGroup", "timeGroupAlias"):
            step = int(seconds(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return group + (' AS "time"' if name == "timeGroupAlias" else "")
        raise KeyError(f"macro $__{name} is not one Grafana's PostgreSQL datasource knows")

    return re.sub(r"\$__(\w+)\(([^()]*)\)", macro, sql)
