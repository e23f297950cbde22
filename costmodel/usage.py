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

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Iterable, NamedTuple

from .sharing import IDLE, Charge, GpuSlice, split_gpu
from .timeunits import MS_PER_HOUR

IDLE_WORKLOAD = IDLE[0]


class LateSample(ValueError):
    """A sample for a window that was already closed; the message says which."""


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


class AttributedGpu(NamedTuple):
    """One GPU (or one MIG instance of it) in one sample, already attributed to its workloads."""

    gpu_class: str
    utilization_pct: float  # 0..100, average over the sample interval
    power_mw: int | None  # measured draw of the physical GPU in milliwatts, None when not supported
    workloads: tuple[tuple[str, str], ...]  # (workload, team) pairs sharing the GPU; empty = idle
    gpu: str = ""  # the physical GPU of a MIG instance (its instances are split together); "" = a whole GPU
    compute_fraction: Fraction | float = 1  # a MIG instance's share of the physical GPU's compute
    energy_mj: int | None = None  # energy of the physical GPU over the interval, when metered (else power)
    measured_pct: tuple[float | None, ...] = ()  # per workload, its measured share of the GPU's work


def gpu_charges(interval_ms: int, gpus: Iterable[AttributedGpu]) -> list[tuple[str, Charge]]:
    """Each physical GPU's charges, with its class: a whole GPU alone, a MIG GPU's instances together.

    Energy is the metered ``energy_mj`` when present, else measured power over the interval.
    Raise SharingError when the readings of one GPU cannot be split.
    """
    groups: dict[object, list[AttributedGpu]] = {}
    for n, gpu in enumerate(gpus):
        groups.setdefault(("mig", gpu.gpu) if gpu.gpu else n, []).append(gpu)
    out: list[tuple[str, Charge]] = []
    for readings in groups.values():
        first = readings[0]
        energy = next((r.energy_mj for r in readings if r.energy_mj is not None), None)
        if energy is None:
            power_mw = next((r.power_mw for r in readings if r.power_mw is not None), None)
            energy = None if power_mw is None else power_mw * interval_ms // 1000
        slices = [GpuSlice(r.compute_fraction, r.utilization_pct, r.workloads, r.measured_pct) for r in readings]
        out += [(first.gpu_class, charge) for charge in split_gpu(interval_ms, slices, energy)]
    return out


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
    closed_through_ms: int = 0  # windows ending at or before this instant were closed and emitted

    def add_sample(
        self,
        *,
        ts_ms: int,
        interval_ms: int,
        window_ms: int,
        environment: str,
        resource: str,
        gpus: Iterable[AttributedGpu],
    ) -> bool:
        """Add one sample; return False when it is a replay of one already counted."""
        if ts_ms <= self.last_ts_ms:
            return False
        start_ms = ts_ms - interval_ms
        if start_ms < self.closed_through_ms:
            # its window was already emitted: adding to a fresh one would replace the emitted total downstream
            raise LateSample(f"late sample: the window ending {self.closed_through_ms} ms was closed before "
                             f"this sample for [{start_ms}, {ts_ms}) arrived (raise thresholds.grace_seconds)")
        charges = gpu_charges(interval_ms, gpus)  # raises before anything is counted
        self.last_ts_ms, self.last_start_ms = ts_ms, start_ms
        ws = window_start_ms(start_ms, window_ms)
        for gpu_class, charge in charges:
            workload, team = charge.owner
            key = UsageKey(ws, workload, team, environment, gpu_class, resource)
            usage = self.open.get(key)
            if usage is None:
                usage = self.open[key] = Usage(first_ms=start_ms)
            usage.allocated_gpu_ms += charge.allocated_gpu_ms
            usage.busy_gpu_ms += charge.busy_gpu_ms
            if charge.energy_mj is not None:
                usage.metered_gpu_ms += charge.allocated_gpu_ms
                usage.energy_mj += charge.energy_mj
            usage.sample_count += 1
            usage.last_ms = max(usage.last_ms, ts_ms)
        return True

    def close(self, watermark_ms: int, window_ms: int) -> list[tuple[UsageKey, Usage]]:
        """Remove and return the windows that end at or before the watermark."""
        closed = [(k, u) for k, u in self.open.items() if k.window_start_ms + window_ms <= watermark_ms]
        for key, _ in closed:
            del self.open[key]
        closed.sort()
        self.closed_through_ms = max(self.closed_through_ms, watermark_ms - watermark_ms % window_ms)
        return closed

    def to_dict(self) -> dict:
        return {"last_ts_ms": self.last_ts_ms, "last_start_ms": self.last_start_ms,
                "closed_through_ms": self.closed_through_ms,
                "open": [[*k, u.to_list()] for k, u in self.open.items()]}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ResourceWindows":
        if not data:
            return cls()
        return cls(
            last_ts_ms=int(data["last_ts_ms"]),
            last_start_ms=int(data["last_start_ms"]),
            open={UsageKey(*row[:6]): Usage.from_list(row[6]) for row in data["open"]},
            closed_through_ms=int(data.get("closed_through_ms", 0)),
        )


SPOT_NOTICE_MS = 120_000  # a spot instance is reclaimed two minutes after its interruption warning


@dataclass
class Rental:
    """Rented GPU-time of one cloud instance, from its state changes (billed by the second while running).

    ``by_window`` holds rented GPU-ms per window start until the window is closed.  Events of one
    instance arrive in order in one partition; an event at or before the last one seen is a replay.
    """

    gpus: int
    running_since_ms: int | None = None
    reclaim_at_ms: int | None = None  # spot interruption warning received: the instance stops then
    accounted_ms: int = 0  # rented time before this instant is already in by_window
    last_event_ms: int = -1
    by_window: dict[int, int] = field(default_factory=dict)

    def on_event(self, ts_ms: int, state: str, window_ms: int) -> bool:
        if ts_ms <= self.last_event_ms:
            return False
        self.last_event_ms = ts_ms
        if state == "running":
            self.accrue(ts_ms, window_ms)
            if self.running_since_ms is None:
                self.running_since_ms = ts_ms
                self.accounted_ms = max(self.accounted_ms, ts_ms)
                self.reclaim_at_ms = None
        elif state == "spot_interruption_warning":
            self.accrue(ts_ms, window_ms)
            if self.running_since_ms is not None:
                self.reclaim_at_ms = ts_ms + SPOT_NOTICE_MS
        else:  # stopped, terminated: the cost ends here (or at the reclaim instant, whichever is first)
            self.accrue(ts_ms, window_ms)
            self.running_since_ms = self.reclaim_at_ms = None
        return True

    def not_before(self, ms: int) -> None:
        """Windows before ``ms`` were already emitted from the samples: rented time there is accounted."""
        self.accounted_ms = max(self.accounted_ms, ms)

    def accrue(self, until_ms: int, window_ms: int) -> None:
        """Count the running time up to ``until_ms`` into its windows."""
        if self.running_since_ms is None:
            return
        end = until_ms if self.reclaim_at_ms is None else min(until_ms, self.reclaim_at_ms)
        t = max(self.accounted_ms, self.running_since_ms)
        while t < end:
            ws = window_start_ms(t, window_ms)
            step = min(end, ws + window_ms) - t
            self.by_window[ws] = self.by_window.get(ws, 0) + step * self.gpus
            t += step
        self.accounted_ms = max(self.accounted_ms, end)
        if self.reclaim_at_ms is not None and until_ms >= self.reclaim_at_ms:
            self.running_since_ms = self.reclaim_at_ms = None  # reclaimed

    def close(self, watermark_ms: int, window_ms: int) -> dict[int, int]:
        """Accrue to the watermark; remove and return rented GPU-ms of the windows that end by it."""
        self.accrue(watermark_ms, window_ms)
        closed = {ws: ms for ws, ms in self.by_window.items() if ws + window_ms <= watermark_ms}
        for ws in closed:
            del self.by_window[ws]
        return closed

    def to_list(self) -> list:
        return [self.gpus, self.running_since_ms, self.reclaim_at_ms, self.accounted_ms, self.last_event_ms,
                [[ws, ms] for ws, ms in self.by_window.items()]]

    @classmethod
    def from_list(cls, values: list) -> "Rental":
        gpus, since, reclaim, accounted, last, windows = values
        return cls(gpus, since, reclaim, accounted, last, {int(ws): int(ms) for ws, ms in windows})


def add_rented_time(closed: list[tuple[UsageKey, Usage]], rented: dict[int, int],
                    owner: UsageKey) -> list[tuple[UsageKey, Usage]]:
    """Merge an instance's rented GPU-ms into its sampled usage windows.

    The provider bills every second the instance runs; samples may not cover all of it (the
    collector started late, the instance was reclaimed between two samples).  Rented time that
    samples do not account for is charged to the instance's owner as allocated, not busy, time.
    """
    merged = dict(closed)
    for ws, rented_ms in rented.items():
        sampled_ms = sum(u.allocated_gpu_ms for k, u in closed if k.window_start_ms == ws)
        uncovered_ms = rented_ms - sampled_ms
        if uncovered_ms <= 0:
            continue
        key = owner._replace(window_start_ms=ws)
        usage = merged[key] = dataclasses.replace(merged.get(key) or Usage(first_ms=ws, last_ms=ws))
        usage.allocated_gpu_ms += uncovered_ms
    return sorted(merged.items())
