"""Splitting one physical GPU's time, energy and cost among the workloads that share it.

A physical GPU over one sample interval is a fixed quantity: ``interval_ms`` of GPU-time and the
energy it drew.  It is shared three ways, all handled here with integer arithmetic so that the
parts add up exactly to the whole (largest-remainder apportionment):

- **whole GPU**: one reading; its workloads split it by their measured share of the GPU's work
  (per-process utilization) when known, else equally (by allocation: each holds one replica);
- **MIG**: one reading per instance with ``compute_fraction`` (compute slices / 7 on A100 and
  H100); an instance gets that share of the GPU's time, and the unpartitioned remainder is idle;
- **idle**: a GPU or instance that nobody holds is charged to the idle bucket, never spread.

Energy follows allocated time.  Costs priced per row are then rounded to micro-dollars with
``apportion_micro`` so that the rows of one resource and window add up to the micro-dollar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Sequence

from .money import MICRO, micro

IDLE = ("idle", "")
MIG_SLICES = {"A30": 4}  # compute slices of a full GPU where it is not 7 (A100, H100, H200, B200: 7)
_MIG_PROFILE = re.compile(r"(?:^|\.)(\d+)g\.", re.IGNORECASE)


class SharingError(ValueError):
    """Readings of one GPU that cannot be split (fractions above 1, a whole GPU read twice)."""


def exact_fraction(value: float | Fraction) -> Fraction:
    """A compute fraction as the exact ratio it stands for: 0.42857142857142855 -> 3/7."""
    return Fraction(value).limit_denominator(64)


def mig_compute_fraction(profile: str, gpu_class: str) -> Fraction:
    """'3g.40gb' on an A100 -> 3/7; '2g.12gb' on an A30 -> 2/4; '1c.3g.40gb' (a compute instance of a 3g GPU
    instance) -> 3/7: the GPU instance holds those slices."""
    m = _MIG_PROFILE.search(profile)
    if not m:
        raise SharingError(f"MIG profile {profile!r} does not name its compute slices (like '3g.40gb')")
    total = MIG_SLICES.get(gpu_class.upper(), 7)
    slices = int(m.group(1))
    if not 0 < slices <= total:
        raise SharingError(f"MIG profile {profile!r}: {slices} slices on a {gpu_class} with {total}")
    return Fraction(slices, total)


def apportion(total: int, weights: Sequence[int | Fraction]) -> list[int]:
    """``total`` split in proportion to ``weights`` (non-negative, not all zero); the parts sum to ``total``.

    Each part is the floor of its exact quota; the units left go to the largest remainders, ties to the
    earlier weight, so the result is deterministic.
    """
    exact = [Fraction(w) for w in weights]
    weight_sum = sum(exact, Fraction(0))
    if weight_sum <= 0 or any(w < 0 for w in exact):
        raise SharingError(f"cannot apportion {total} by weights {list(weights)}")
    quotas = [total * w / weight_sum for w in exact]
    parts = [q.numerator // q.denominator for q in quotas]
    left = total - sum(parts)
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - parts[i]), i))
    for i in by_remainder[:left]:
        parts[i] += 1
    return parts


def apportion_micro(amounts: Sequence[Decimal]) -> list[Decimal]:
    """Round each amount to micro-dollars so that the rounded amounts add up to the rounded total."""
    if not amounts:
        return []
    total_micros = int(micro(sum(amounts, Decimal(0))) / MICRO)
    floors = [int((a / MICRO).to_integral_value(rounding=ROUND_FLOOR)) for a in amounts]
    remainders = [a / MICRO - f for a, f in zip(amounts, floors)]
    left = total_micros - sum(floors)  # 0 <= left <= len(amounts): the floors lose less than 1 each
    parts = list(floors)
    for i in sorted(range(len(amounts)), key=lambda i: (-remainders[i], i))[:left]:
        parts[i] += 1
    return [Decimal(p) * MICRO for p in parts]


@dataclass(frozen=True)
class GpuSlice:
    """One reading of a physical GPU: the whole GPU (fraction 1) or one MIG instance."""

    compute_fraction: Fraction | float  # 1 for a whole GPU; a float is taken as the ratio it stands for (3/7)
    utilization_pct: float  # of this slice, 0..100
    owners: tuple[tuple[str, str], ...]  # (workload, team); empty: nobody holds it
    measured_pct: tuple[float | None, ...] = ()  # per owner, its measured share of the GPU's work, when known


@dataclass(frozen=True)
class Charge:
    """What one owner (or idle) is charged for its part of one physical GPU over one interval."""

    owner: tuple[str, str]
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int | None  # None: no energy measured for this GPU


def _owner_weights(s: GpuSlice) -> list[Fraction]:
    measured = s.measured_pct
    if len(measured) == len(s.owners) and all(m is not None for m in measured):
        weights = [Fraction(m).limit_denominator(10**6) for m in measured if m is not None]
        if sum(weights) > 0:
            return weights
    return [Fraction(1)] * len(s.owners)  # by allocation: each holder has the same share


def _whole_gpu_charge(interval_ms: int, s: GpuSlice, energy_mj: int | None) -> Charge:
    """A whole GPU held by one workload or by nobody: what ``split_gpu`` gives it, without the splitting."""
    energy = None if energy_mj is None else (energy_mj if interval_ms else 0)
    if not s.owners:
        return Charge(IDLE, interval_ms, 0, energy)
    busy_ms = round(interval_ms * min(max(s.utilization_pct, 0.0), 100.0) / 100)
    return Charge(s.owners[0], interval_ms, busy_ms, energy)


def split_gpu(interval_ms: int, slices: Sequence[GpuSlice], energy_mj: int | None) -> list[Charge]:
    """Charges for one physical GPU over ``interval_ms``; allocated time sums to ``interval_ms`` and energy
    to ``energy_mj`` exactly.  Raise SharingError when the readings cannot be one GPU."""
    if not slices:
        raise SharingError("a GPU without readings")
    if len(slices) == 1 and slices[0].compute_fraction == 1 and len(slices[0].owners) <= 1:
        return [_whole_gpu_charge(interval_ms, slices[0], energy_mj)]  # most GPUs: nothing to split
    return _split_slices(interval_ms, slices, energy_mj)


def _split_slices(interval_ms: int, slices: Sequence[GpuSlice], energy_mj: int | None) -> list[Charge]:
    fractions = [exact_fraction(s.compute_fraction) for s in slices]
    if any(not 0 < f <= 1 for f in fractions):
        raise SharingError(f"compute fractions must be in (0, 1], got {[str(f) for f in fractions]}")
    if len(slices) > 1 and any(f == 1 for f in fractions):
        raise SharingError(f"a whole GPU read together with {len(slices) - 1} other reading(s) of it")
    spare = 1 - sum(fractions, Fraction(0))
    if spare < 0:
        raise SharingError(f"MIG instances add up to {sum(fractions)} of the GPU, more than all of it")
    allocated = apportion(interval_ms, [*fractions, spare])
    charges: list[Charge] = []
    for s, alloc_ms in zip(slices, allocated):
        if not s.owners:
            charges.append(Charge(IDLE, alloc_ms, 0, None))  # an idle GPU serves nobody: zero busy time
            continue
        busy_ms = round(alloc_ms * min(max(s.utilization_pct, 0.0), 100.0) / 100)
        weights = _owner_weights(s)
        for owner, a_ms, b_ms in zip(s.owners, apportion(alloc_ms, weights), apportion(busy_ms, weights)):
            charges.append(Charge(owner, a_ms, b_ms, None))
    if allocated[-1]:
        charges.append(Charge(IDLE, allocated[-1], 0, None))  # the unpartitioned remainder of a MIG GPU
    if energy_mj is None:
        return charges
    energies = apportion(energy_mj, [c.allocated_gpu_ms for c in charges]) if interval_ms else [0] * len(charges)
    return [Charge(c.owner, c.allocated_gpu_ms, c.busy_gpu_ms, e) for c, e in zip(charges, energies)]
