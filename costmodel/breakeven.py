"""Pricing of usage windows, the counterfactual in the other environment, and breakeven decisions.

DESIGN.md §2: a crossing is a sign change of ``current - alternative`` that exceeds a margin
and persists for a dwell time (consecutive windows).  Once a move is recommended the
recommendation only flips back when the current environment wins by the margin for the same
dwell, so a workload hovering around breakeven produces at most one decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from .money import HOURS_PER_MONTH, ZERO
from .rates import CloudOffer, OnPremGpuCost, throughput_factor
from .usage import MS_PER_HOUR, Usage

ONPREM = "onprem"
CLOUD = "cloud"

MIGRATE_TO_CLOUD = "migrate_to_cloud"
REPATRIATE_BUY = "repatriate_buy_capacity"
REPATRIATE_FILL_IDLE = "repatriate_fill_idle"
STAY = "stay"  # a previous recommendation is withdrawn: the current environment wins again


def price_onprem_usage(usage: Usage, gpu: OnPremGpuCost, at: datetime) -> Decimal:
    """Fully loaded cost of owned GPU-time: capex + upkeep by the hour, energy as measured.

    Allocated time without a power reading is charged at the profile's configured power.
    """
    rate = gpu.rate(at)
    fixed = (rate.capex_usd_per_gpu_hour + rate.upkeep_usd_per_gpu_hour) * usage.allocated_gpu_hours
    measured = usage.energy_kwh * gpu.energy_usd_per_kwh_at_meter()
    configured = gpu.energy_usd_per_gpu_hour() * usage.unmetered_gpu_hours
    return fixed + measured + configured


def price_cloud_usage(usage: Usage, usd_per_gpu_hour: Decimal) -> Decimal:
    """Rented GPU-time costs its price for every allocated hour, busy or not."""
    return usage.allocated_gpu_hours * usd_per_gpu_hour


@dataclass(frozen=True)
class WorkloadWindow:
    """One closed event-time window of one workload in one environment (all its resources)."""

    workload: str
    team: str
    environment: str
    gpu_class: str
    window_start_ms: int
    window_ms: int
    allocated_gpu_ms: int
    busy_gpu_ms: int
    cost_usd: Decimal
    coverage: Decimal  # fraction of the window covered by samples, 0..1

    @property
    def allocated_gpu_hours(self) -> Decimal:
        return Decimal(self.allocated_gpu_ms) / MS_PER_HOUR

    @property
    def busy_gpu_hours(self) -> Decimal:
        return Decimal(self.busy_gpu_ms) / MS_PER_HOUR

    @property
    def window_hours(self) -> Decimal:
        return Decimal(self.window_ms) / MS_PER_HOUR


@dataclass(frozen=True)
class Alternative:
    environment: str
    kind: str
    cost_usd: Decimal
    usd_per_gpu_hour: Decimal  # price of one GPU-hour of the alternative's own class
    label: str
    gpus_needed: int
    capex_usd: Decimal = ZERO  # GPUs to buy (buy capacity only)
    opex_usd_per_hour: Decimal = ZERO  # what those GPUs cost to run once bought (energy + upkeep)

    def payback_months(self, current_usd_per_hour: Decimal) -> Decimal | None:
        """months_to_breakeven = capex needed / (monthly cloud - monthly on-prem opex), DESIGN.md §2."""
        if self.kind != REPATRIATE_BUY:
            return None
        margin = (current_usd_per_hour - self.opex_usd_per_hour) * HOURS_PER_MONTH
        return self.capex_usd / margin if margin > 0 else None


@dataclass(frozen=True)
class Market:
    """What each GPU class costs in each environment (pure data)."""

    onprem: dict[str, OnPremGpuCost]  # by GPU class
    offers: tuple[CloudOffer, ...]
    throughput: dict[str, Decimal]
    purchase_options: tuple[str, ...] = ("on_demand",)
    fill_idle_includes_upkeep: bool = False  # marginal cost of idle owned GPUs: energy (+ upkeep)

    def cheapest_cloud(
        self, gpu_class: str, allow_spot: bool
    ) -> tuple[CloudOffer, str, Decimal, Decimal] | None:
        """(offer, purchase option, $/GPU-hour of the offer, GPUs needed per GPU of ``gpu_class``)."""
        options = self.purchase_options + (("spot",) if allow_spot else ())
        best: tuple[Decimal, CloudOffer, str, Decimal, Decimal] | None = None
        for offer in self.offers:
            if offer.gpu_class != gpu_class and (
                gpu_class not in self.throughput or offer.gpu_class not in self.throughput
            ):
                continue
            factor = throughput_factor(gpu_class, offer.gpu_class, self.throughput)
            for option in options:
                price = offer.usd_per_gpu_hour(option)
                if price is None:
                    continue
                normalized = price * factor
                if best is None or normalized < best[0]:
                    best = (normalized, offer, option, price, factor)
        if best is None:
            return None
        return best[1], best[2], best[3], best[4]

    def cheapest_onprem(self, gpu_class: str) -> tuple[OnPremGpuCost, Decimal] | None:
        """(owned GPU profile, GPUs needed per GPU of ``gpu_class``), cheapest by normalized full cost."""
        best: tuple[Decimal, OnPremGpuCost, Decimal] | None = None
        for gpu, factor in self._candidates(gpu_class):
            normalized = gpu.rate().usd_per_gpu_hour * factor
            if best is None or normalized < best[0]:
                best = (normalized, gpu, factor)
        if best is None:
            return None
        return best[1], best[2]

    def alternative(
        self, window: WorkloadWindow, allow_spot: bool = False, idle_gpus: dict[str, Decimal] | None = None
    ) -> Alternative | None:
        """The cheapest way to run ``window``'s work in the other environment.

        ``idle_gpus``: owned GPUs of each class that sat idle through the window (GPU-equivalents).
        A cloud workload whose GPUs fit into idle owned capacity is priced at the marginal cost
        of that capacity (its capex is sunk); otherwise at the full cost of buying GPUs.
        """
        if window.environment == ONPREM:
            found = self.cheapest_cloud(window.gpu_class, allow_spot)
            if found is None:
                return None
            offer, option, price, factor = found
            # the cloud is rented only for the busy hours (DESIGN.md §2, `tco`)
            cost = window.busy_gpu_hours * factor * price
            gpus = math.ceil(window.allocated_gpu_ms * factor / window.window_ms) if window.window_ms else 0
            return Alternative(
                environment=CLOUD,
                kind=MIGRATE_TO_CLOUD,
                cost_usd=cost,
                usd_per_gpu_hour=price,
                label=f"{offer.provider} {offer.region} {offer.instance_type} {option}",
                gpus_needed=gpus,
            )
        return self._fill_idle(window, idle_gpus or {}) or self._buy(window)

    def _candidates(self, gpu_class: str):
        for onprem_class, gpu in sorted(self.onprem.items()):
            if onprem_class == gpu_class or (gpu_class in self.throughput and onprem_class in self.throughput):
                yield gpu, throughput_factor(gpu_class, onprem_class, self.throughput)

    def _fill_idle(self, window: WorkloadWindow, idle_gpus: dict[str, Decimal]) -> Alternative | None:
        best: Alternative | None = None
        for gpu, factor in self._candidates(window.gpu_class):
            needed = Decimal(window.allocated_gpu_ms) * factor / window.window_ms if window.window_ms else ZERO
            if needed <= 0 or idle_gpus.get(gpu.gpu_class, ZERO) < needed:
                continue
            rate = gpu.rate()
            marginal = rate.energy_usd_per_gpu_hour + (rate.upkeep_usd_per_gpu_hour if self.fill_idle_includes_upkeep
                                                       else ZERO)
            cost = window.allocated_gpu_hours * factor * marginal
            if best is None or cost < best.cost_usd:
                best = Alternative(
                    environment=ONPREM, kind=REPATRIATE_FILL_IDLE, cost_usd=cost, usd_per_gpu_hour=marginal,
                    label=f"idle on-prem {gpu.gpu_class}", gpus_needed=math.ceil(needed),
                )
        return best

    def _buy(self, window: WorkloadWindow) -> Alternative | None:
        found_onprem = self.cheapest_onprem(window.gpu_class)
        if found_onprem is None:
            return None
        gpu, factor = found_onprem
        # owned GPUs cost every hour of the window, however long the instance ran in it;
        # new capacity is not depreciated, so its capex is charged (rate at no date)
        gpus = max(1, math.ceil(window.allocated_gpu_ms * factor / window.window_ms))
        rate = gpu.rate()
        return Alternative(
            environment=ONPREM,
            kind=REPATRIATE_BUY,
            cost_usd=Decimal(gpus) * window.window_hours * rate.usd_per_gpu_hour,
            usd_per_gpu_hour=rate.usd_per_gpu_hour,
            label=f"on-prem {gpu.gpu_class}",
            gpus_needed=gpus,
            capex_usd=gpu.purchase_price_usd_per_gpu * gpus,
            opex_usd_per_hour=rate.opex_usd_per_gpu_hour * gpus,
        )


@dataclass(frozen=True)
class Decision:
    workload: str
    team: str
    from_env: str
    to_env: str
    kind: str
    window_start_ms: int
    window_end_ms: int
    current_usd_per_busy_gpu_hour: Decimal | None
    alternative_usd_per_busy_gpu_hour: Decimal | None
    utilization: Decimal
    monthly_savings_usd: Decimal
    confidence: Decimal
    gpu_class: str
    alternative_label: str
    gpus_needed: int
    reason: str
    payback_months: Decimal | None = None

    @property
    def decision_id(self) -> str:
        return f"{self.workload}|{self.from_env}|{self.kind}|{self.window_end_ms}"


@dataclass(frozen=True)
class Thresholds:
    margin: Decimal = Decimal("0.10")
    dwell_windows: int = 3


@dataclass
class CrossingState:
    """Per (workload, environment) hysteresis state, small enough for a table value."""

    moved: bool = False  # a move to the other environment is currently recommended
    recent: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    # last comparisons on the streak: (cost_usd, alternative_cost_usd, busy_gpu_ms, allocated_gpu_ms, window_ms)
    recent_coverage: list[str] = field(default_factory=list)
    last_window_start_ms: int = -1

    def to_dict(self) -> dict:
        return {
            "moved": self.moved,
            "recent": self.recent,
            "recent_coverage": self.recent_coverage,
            "last_window_start_ms": self.last_window_start_ms,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "CrossingState":
        if not data:
            return cls()
        return cls(
            moved=bool(data["moved"]),
            recent=[tuple(r) for r in data["recent"]],
            recent_coverage=list(data["recent_coverage"]),
            last_window_start_ms=int(data["last_window_start_ms"]),
        )


def _fmt_usd(amount: Decimal | None) -> str:
    return "n/a" if amount is None else f"${amount:,.2f}"


def evaluate(
    state: CrossingState,
    window: WorkloadWindow,
    alternative: Alternative | None,
    thresholds: Thresholds,
) -> Decision | None:
    """Feed one closed window; return a decision when a crossing has persisted for the dwell.

    Windows must arrive in event-time order; an older or repeated window is ignored, which
    makes replays harmless.
    """
    if window.window_start_ms <= state.last_window_start_ms:
        return None
    if window.window_start_ms != state.last_window_start_ms + window.window_ms:
        # a gap (no usage in between) breaks the streak: "consecutive" means consecutive
        state.recent.clear()
        state.recent_coverage.clear()
    state.last_window_start_ms = window.window_start_ms
    if alternative is None or window.allocated_gpu_ms == 0:
        state.recent.clear()
        state.recent_coverage.clear()
        return None
    current, alt = window.cost_usd, alternative.cost_usd
    one_plus = 1 + thresholds.margin
    if not state.moved:
        crossing = current > alt * one_plus  # the other environment is cheaper by the margin
    else:
        crossing = alt > current * one_plus  # the current environment is cheaper again
    if not crossing:
        state.recent.clear()
        state.recent_coverage.clear()
        return None
    state.recent.append(
        (str(current), str(alt), window.busy_gpu_ms, window.allocated_gpu_ms, window.window_ms)
    )
    state.recent_coverage.append(str(window.coverage))
    if len(state.recent) < thresholds.dwell_windows:
        return None

    total_current = sum((Decimal(r[0]) for r in state.recent), ZERO)
    total_alt = sum((Decimal(r[1]) for r in state.recent), ZERO)
    busy_ms = sum(r[2] for r in state.recent)
    alloc_ms = sum(r[3] for r in state.recent)
    span_ms = sum(r[4] for r in state.recent)
    busy_h = Decimal(busy_ms) / MS_PER_HOUR
    span_h = Decimal(span_ms) / MS_PER_HOUR
    utilization = Decimal(busy_ms) / Decimal(alloc_ms) if alloc_ms else ZERO
    confidence = sum((Decimal(c) for c in state.recent_coverage), ZERO) / len(state.recent_coverage)
    n = len(state.recent)
    first_start = window.window_start_ms - (n - 1) * window.window_ms
    state.recent.clear()
    state.recent_coverage.clear()
    cur_rate = total_current / busy_h if busy_h else None
    alt_rate = total_alt / busy_h if busy_h else None

    if not state.moved:
        state.moved = True
        monthly_savings = (total_current - total_alt) / span_h * HOURS_PER_MONTH
        kind, from_env, to_env = alternative.kind, window.environment, alternative.environment
        payback = alternative.payback_months(total_current / span_h)
        cheaper = {
            MIGRATE_TO_CLOUD: "renting in the cloud",
            REPATRIATE_FILL_IDLE: "running it on owned GPUs that sit idle (energy only: their capex is sunk)",
            REPATRIATE_BUY: f"buying {alternative.gpus_needed} GPUs"
            + (f" (payback {payback:.1f} months)" if payback is not None else ""),
        }.get(kind, "the other environment")
        reason = (
            f"{window.workload} ran at {utilization:.0%} utilization on {window.environment} "
            f"{window.gpu_class} for {n} windows; a busy GPU-hour cost {_fmt_usd(cur_rate)} there "
            f"against {_fmt_usd(alt_rate)} with {alternative.label}, so {cheaper} is cheaper "
            f"by more than the {thresholds.margin:.0%} margin."
        )
    else:
        state.moved = False
        monthly_savings = (total_alt - total_current) / span_h * HOURS_PER_MONTH
        kind, from_env, to_env = STAY, window.environment, window.environment
        payback = None
        reason = (
            f"{window.workload} is back at {utilization:.0%} utilization; staying on "
            f"{window.environment} ({_fmt_usd(cur_rate)} per busy GPU-hour) is cheaper than "
            f"{alternative.label} ({_fmt_usd(alt_rate)}) again: the earlier recommendation is withdrawn."
        )
    return Decision(
        workload=window.workload,
        team=window.team,
        from_env=from_env,
        to_env=to_env,
        kind=kind,
        window_start_ms=first_start,
        window_end_ms=window.window_start_ms + window.window_ms,
        current_usd_per_busy_gpu_hour=cur_rate,
        alternative_usd_per_busy_gpu_hour=alt_rate,
        utilization=utilization,
        monthly_savings_usd=monthly_savings,
        confidence=confidence,
        gpu_class=window.gpu_class,
        alternative_label=alternative.label,
        gpus_needed=alternative.gpus_needed,
        reason=reason,
        payback_months=payback,
    )


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
