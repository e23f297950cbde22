"""Event-time usage windows: GPU samples in, busy/allocated GPU-time and energy per window out.

Usage is counted in integers (GPU-milliseconds, millijoules) so that sums are exact and
independent of the order in which samples arrive: a replay, or two workers splitting the
partitions, gives bit-identical totals.

A sample taken at ``ts`` describes the interval ``[ts - interval, ts)`` (NVML reports the
average over the last sample period); it is assigned, whole, to the window holding the
start of that interval.  Collectors align their ticks on the interval, so with a window that
is a multiple of the interval nothing straddles a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, NamedTuple

MS_PER_HOUR = 3_600_000
IDLE_WORKLOAD = "idle"


class UsageKey(NamedTuple):
    window_start_ms: int
    workload: str
    team: str
    environment: str  # "onprem" | "cloud"
    gpu_class: str
    resource: str  # host name (on-prem) or instance id (cloud)


@dataclass(slots=True)
class Usage:
    allocated_gpu_ms: int = 0
    busy_gpu_ms: int = 0
    metered_gpu_ms: int = 0  # allocated time for which power was measured
    energy_mj: int = 0  # measured energy over metered_gpu_ms, millijoules
    sample_count: int = 0
    first_ms: int = 0  # earliest covered instant in the window
    last_ms: int = 0  # latest covered instant in the window

    @property
    def allocated_gpu_hours(self) -> Decimal:
        return Decimal(self.allocated_gpu_ms) / MS_PER_HOUR

    @property
    def busy_gpu_hours(self) -> Decimal:
        return Decimal(self.busy_gpu_ms) / MS_PER_HOUR

    @property
    def unmetered_gpu_hours(self) -> Decimal:
        return Decimal(self.allocated_gpu_ms - self.metered_gpu_ms) / MS_PER_HOUR

    @property
    def energy_kwh(self) -> Decimal:
        return Decimal(self.energy_mj) / 3_600_000_000

    def merge(self, other: "Usage") -> None:
        if other.sample_count and (not self.sample_count or other.first_ms < self.first_ms):
            self.first_ms = other.first_ms
        self.last_ms = max(self.last_ms, other.last_ms)
        self.allocated_gpu_ms += other.allocated_gpu_ms
        self.busy_gpu_ms += other.busy_gpu_ms
        self.metered_gpu_ms += other.metered_gpu_ms
        self.energy_mj += other.energy_mj
        self.sample_count += other.sample_count

    def to_list(self) -> list[int]:
        return [
            self.allocated_gpu_ms,
            self.busy_gpu_ms,
            self.metered_gpu_ms,
            self.energy_mj,
            self.sample_count,
            self.first_ms,
            self.last_ms,
        ]

    @classmethod
    def from_list(cls, values: list[int]) -> "Usage":
        return cls(*values)


class GpuReading(NamedTuple):
    """One GPU in one sample, already attributed to its workloads."""

    gpu_class: str
    utilization_pct: float  # 0..100, average over the sample interval
    power_mw: int | None  # measured draw in milliwatts, None when not supported
    workloads: tuple[tuple[str, str], ...]  # (workload, team) pairs sharing the GPU; empty = idle


def window_start_ms(ts_ms: int, window_ms: int) -> int:
    return ts_ms - ts_ms % window_ms


@dataclass
class ResourceWindows:
    """Open windows of one resource (host or instance); the state a stream keeps per key.

    ``last_ts_ms`` makes adding idempotent: a resource's samples arrive in order in one
    partition, so a sample at or before the last one seen is a replay and is ignored.
    """

    last_ts_ms: int = 0
    last_start_ms: int = 0  # start of the latest interval: earlier windows are complete
    open: dict[UsageKey, Usage] = field(default_factory=dict)

    def add_sample(
        self,
        *,
        ts_ms: int,
        interval_ms: int,
        window_ms: int,
        environment: str,
        resource: str,
        gpus: Iterable[GpuReading],
    ) -> bool:
        """Add one sample; return False when it is a replay of one already counted."""
        if ts_ms <= self.last_ts_ms:
            return False
        start_ms = ts_ms - interval_ms
        self.last_ts_ms, self.last_start_ms = ts_ms, start_ms
        ws = window_start_ms(start_ms, window_ms)
        for gpu in gpus:
            owners = gpu.workloads or ((IDLE_WORKLOAD, ""),)
            share = len(owners)
            alloc_ms = interval_ms // share
            busy_ms = round(interval_ms * min(max(gpu.utilization_pct, 0.0), 100.0) / 100) // share
            for workload, team in owners:
                key = UsageKey(ws, workload, team, environment, gpu.gpu_class, resource)
                usage = self.open.get(key)
                if usage is None:
                    usage = self.open[key] = Usage(first_ms=start_ms)
                usage.allocated_gpu_ms += alloc_ms
                # an idle GPU serves nobody: its busy time is zero by definition
                usage.busy_gpu_ms += busy_ms if gpu.workloads else 0
                if gpu.power_mw is not None:
                    usage.metered_gpu_ms += alloc_ms
                    usage.energy_mj += gpu.power_mw * alloc_ms // 1000
                usage.sample_count += 1
                usage.last_ms = max(usage.last_ms, ts_ms)
        return True

    def close(self, watermark_ms: int, window_ms: int) -> list[tuple[UsageKey, Usage]]:
        """Remove and return the windows that end at or before the watermark."""
        closed = [(k, u) for k, u in self.open.items() if k.window_start_ms + window_ms <= watermark_ms]
        for key, _ in closed:
            del self.open[key]
        closed.sort()
        return closed

    def to_dict(self) -> dict:
        return {"last_ts_ms": self.last_ts_ms, "last_start_ms": self.last_start_ms, "open": [[*k, u.to_list()] for k, u in self.open.items()]}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ResourceWindows":
        if not data:
            return cls()
        return cls(
            last_ts_ms=int(data["last_ts_ms"]),
            last_start_ms=int(data["last_start_ms"]),
            open={UsageKey(*row[:6]): Usage.from_list(row[6]) for row in data["open"]},
        )
