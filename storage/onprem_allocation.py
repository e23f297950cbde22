"""How each owned node's cost splits among its workloads and idle, per UTC day (read query).

The FOCUS export (``reports/focus_export.py``) turns these rows into allocated charges: one
origin charge per node, GPU class and day, split by workload, with the idle GPU time as the
unallocated remainder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg


@dataclass(frozen=True)
class NodeDayShare:
    """One workload's (or idle's) share of one owned node's GPUs for one UTC day."""

    day: datetime
    resource: str  # the node (host name)
    gpu_class: str
    workload: str
    team: str
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int
    cost_usd: Decimal


def onprem_node_day_shares(conn: psycopg.Connection, start: datetime, end: datetime) -> list[NodeDayShare]:
    """Estimated on-prem cost windows starting in [start, end), summed per day, node, GPU class and workload."""
    rows = conn.execute(
        """
        SELECT date_bin(INTERVAL '1 day', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day,
               resource, gpu_class, workload, max(team), sum(allocated_gpu_ms), sum(busy_gpu_ms),
               sum(energy_mj), sum(cost_usd)
          FROM cost_windows
         WHERE environment = 'onprem' AND basis = 'estimated' AND window_start >= %s AND window_start < %s
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2, 3, 4
        """, (start, end)).fetchall()
    return [NodeDayShare(day, resource, gpu_class, workload, team or "", int(alloc), int(busy), int(energy), cost)
            for day, resource, gpu_class, workload, team, alloc, busy, energy, cost in rows]


def onprem_cost_usd(conn: psycopg.Connection, start: datetime, end: datetime) -> Decimal:
    """Total estimated on-prem cost of the cost windows starting in [start, end)."""
    return conn.execute(
        "SELECT coalesce(sum(cost_usd), 0) FROM cost_windows"
        " WHERE environment = 'onprem' AND basis = 'estimated' AND window_start >= %s AND window_start < %s",
        (start, end)).fetchone()[0]
