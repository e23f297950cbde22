"""Pricing of usage windows, the counterfactual in the other environment, and breakeven decisions.

docs/design.md, "Domain model": a crossing is a sign change of ``current - alternative`` that exceeds a margin
and persists.  How long it must persist depends on what the decision commits to: filling idle
owned GPUs is cheap to reverse and needs only the dwell; a migration needs a day of evidence, and
buying hardware or committing to a cloud price for a term a week by default
(``Thresholds.evidence_hours``).  Once a move is recommended
the recommendation only flips back ("stay") when the current environment wins by the margin for
as long as the recommendation it withdraws needed, so a workload hovering around breakeven
produces at most one decision.

Every decision carries a range beside its point estimate: the 25th and 75th percentile of the
monthly savings of the windows in its evidence, each window priced as the decision is.  What it
recommends can be ordered as written: whole nodes of the owned GPU profile, sized for a target
utilization, and a whole number of cloud instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Callable, NamedTuple, Sequence

from .money import HOURS_PER_MONTH, MICRO, ZERO
from .options import BUY, COMMITMENT, HourOfDemand, PlannedOption
from .rates import COMMITMENT_TERM_MONTHS, COMMITTED_OPTIONS, CloudOffer, OnPremGpuCost, throughput_factor
from .tco import payback_months as _payback_months
from .tco import usd_per_month
from .timeunits import MS_PER_HOUR
from .usage import Usage

ONPREM = "onprem"
CLOUD = "cloud"

MIGRATE_TO_CLOUD = "migrate_to_cloud"
REPATRIATE_BUY = "repatriate_buy_capacity"
REPATRIATE_FILL_IDLE = "repatriate_fill_idle"
# a cloud workload paying on demand that should stay in the cloud but commit its steady floor for a term
COMMIT_IN_CLOUD = "commit_in_cloud"
STAY = "stay"  # a previous recommendation is withdrawn: the current environment wins again
# not a decision: half of a purchase's evidence horizon has passed with owning cheaper (platform notice)
TRENDING_REPATRIATION = "trending_repatriation"

DEFAULT_EVIDENCE_HOURS = {REPATRIATE_FILL_IDLE: Decimal(0), MIGRATE_TO_CLOUD: Decimal(24), REPATRIATE_BUY: Decimal(168),
                          COMMIT_IN_CLOUD: Decimal(168)}
DEFAULT_BUY_TARGET_UTILIZATION = Decimal("0.8")


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


def percentile(values: list[Decimal], q: Decimal) -> Decimal:
    """The ``q`` quantile (0..1) of ``values``, interpolating linearly between the closest ranks.

    With [1, 2, 3, 4] the 25th percentile is at rank (4 - 1) * 0.25 = 0.75: 1 + 0.75 * (2 - 1) = 1.75.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    if low + 1 >= len(ordered):
        return ordered[-1]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (rank - low)


def whole_units(gpus: Decimal | int, gpus_per_unit: int) -> int:
    """GPUs rounded up to whole units (nodes or instances) of ``gpus_per_unit``, in GPUs; at least one unit."""
    units = max(1, math.ceil(Decimal(gpus) / gpus_per_unit))
    return units * gpus_per_unit


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
    provider: str = ""  # where a cloud workload runs ("": not known, or several)
    purchase_option: str = ""  # how it pays there ("": not known, or several)

    @property
    def allocated_gpu_hours(self) -> Decimal:
        return Decimal(self.allocated_gpu_ms) / MS_PER_HOUR

    @property
    def busy_gpu_hours(self) -> Decimal:
        return Decimal(self.busy_gpu_ms) / MS_PER_HOUR

    @property
    def window_hours(self) -> Decimal:
        return Decimal(self.window_ms) / MS_PER_HOUR


class IdleClaim(NamedTuple):
    """One cloud workload's window as it asks for idle owned GPUs (``Market.allocate_idle``)."""

    workload: str
    gpu_class: str
    allocated_gpu_ms: int
    window_ms: int
    cost_usd: Decimal  # what the window cost where it runs


@dataclass(frozen=True)
class Alternative:
    """The cheapest way to run one window's work in the other environment.

    ``gpus_needed`` is in ``gpus_per_unit`` steps for what is ordered in units: whole nodes to buy
    (``unit`` "node"), whole instances to rent (``unit`` "instance"); idle owned GPUs are counted
    one by one (``unit`` "GPU").
    """

    environment: str
    kind: str
    cost_usd: Decimal
    usd_per_gpu_hour: Decimal  # price of one GPU-hour of the alternative's own class
    label: str
    gpus_needed: int
    capex_usd_per_gpu: Decimal = ZERO  # purchase price of one GPU (buy capacity only)
    opex_usd_per_gpu_hour: Decimal = ZERO  # what one bought GPU costs to run (energy + upkeep)
    unit: str = "GPU"
    unit_name: str = ""  # what one unit is called when ordered: "p5.48xlarge", "A100 node"
    gpus_per_unit: int = 1
    gpu_class: str = ""  # the class of the GPUs it runs on, when owned (fill idle, buy)
    factor: Decimal = Decimal(1)  # GPUs of ``gpu_class`` per GPU of the workload's class (throughput)
    option: str = ""  # the purchase option it rents at (migrate, commit)
    # the other long-term option of the same window (buying or committing), weighed by present value once the
    # evidence is complete: the decision is the cheaper over the horizon, not the cheaper this hour
    other: Alternative | None = None

    @property
    def capex_usd(self) -> Decimal:
        return self.capex_usd_per_gpu * self.gpus_needed

    def units(self, gpus: int) -> int:
        return math.ceil(Decimal(gpus) / self.gpus_per_unit)

    def payback_months(self, current_usd_per_hour: Decimal, gpus: int | None = None) -> Decimal | None:
        """months_to_breakeven = capex needed / (monthly cloud - monthly on-prem opex)
        (docs/design.md, "Domain model"), for ``gpus`` bought (default: this window's ``gpus_needed``)."""
        if self.kind != REPATRIATE_BUY:
            return None
        n = self.gpus_needed if gpus is None else gpus
        return _payback_months(self.capex_usd_per_gpu * n, current_usd_per_hour * HOURS_PER_MONTH,
                               self.opex_usd_per_gpu_hour * n * HOURS_PER_MONTH)


@dataclass(frozen=True)
class Market:
    """What each GPU class costs in each environment (pure data).

    ``gpus_per_node``: GPUs in one node of the owned profile of each class (bought in whole nodes;
    1 when not given).  ``buy_target_utilization``: how busy bought GPUs should run; capacity to buy
    is the work's busy GPUs divided by it (0.8: 25 % headroom).
    """

    onprem: dict[str, OnPremGpuCost]  # by GPU class
    offers: tuple[CloudOffer, ...]
    throughput: dict[str, Decimal]
    purchase_options: tuple[str, ...] = ("on_demand",)
    fill_idle_includes_upkeep: bool = False  # marginal cost of idle owned GPUs: energy (+ upkeep)
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    buy_target_utilization: Decimal = DEFAULT_BUY_TARGET_UTILIZATION

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
        self, window: WorkloadWindow, allow_spot: bool = False, idle_gpus: dict[str, Decimal] | None = None,
        max_term_months: int | None = None,
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
            # the cloud is rented only for the busy hours (docs/design.md, "Domain model"; `tco`)
            cost = window.busy_gpu_hours * factor * price
            gpus = math.ceil(window.allocated_gpu_ms * factor / window.window_ms) if window.window_ms else 0
            return Alternative(
                environment=CLOUD,
                kind=MIGRATE_TO_CLOUD,
                cost_usd=cost,
                usd_per_gpu_hour=price,
                label=f"{offer.provider} {offer.region} {offer.instance_type} {option}",
                gpus_needed=gpus,
                unit="instance",
                unit_name=offer.instance_type,
                gpus_per_unit=offer.gpus_per_instance,
            )
        fill = self._fill_idle(window, idle_gpus or {})
        if fill is not None:
            return fill
        buy, commit = self._buy(window), self._commit(window, max_term_months)
        best = _cheaper(buy, commit)
        if buy is not None and commit is not None:
            best = replace(best, other=commit if best is buy else buy)
        return best

    def _candidates(self, gpu_class: str):
        for onprem_class, gpu in sorted(self.onprem.items()):
            if onprem_class == gpu_class or (gpu_class in self.throughput and onprem_class in self.throughput):
                yield gpu, throughput_factor(gpu_class, onprem_class, self.throughput)

    def fill_idle_usd_per_gpu_hour(self, gpu: OnPremGpuCost) -> Decimal:
        """What one idle owned GPU-hour costs when a workload fills it: energy (+ upkeep); its capex is sunk."""
        rate = gpu.rate()
        return rate.energy_usd_per_gpu_hour + (rate.upkeep_usd_per_gpu_hour if self.fill_idle_includes_upkeep
                                               else ZERO)

    def allocate_idle(self, idle_gpus: dict[str, Decimal], claims: Sequence[IdleClaim],
                      margin: Decimal) -> dict[tuple[str, str], dict[str, Decimal]]:
        """Idle owned capacity promised once: which cloud workloads of one window fill which idle GPUs.

        ``idle_gpus``: owned GPUs (GPU-equivalents) of each class that sat idle through the window;
        ``claims``: every cloud workload's window (GPUs held and what they cost).  A claim asks for the
        GPUs it held, times the throughput factor, in each owned class it can run on, and only where
        running there at the marginal cost beats what it pays by ``margin`` (a crossing).  Claims are
        granted whole, in order of savings per GPU (then workload and class, so every worker grants the
        same), while the class has the GPUs left; a workload granted once takes nothing more, and one
        that no longer fits gets nothing here (its next-best option, buying or committing).

        Returns (workload, its GPU class) -> {owned class: GPUs granted}.
        """
        asks = []
        for claim in claims:
            if claim.window_ms <= 0 or claim.allocated_gpu_ms <= 0:
                continue
            for gpu, factor in self._candidates(claim.gpu_class):
                needed = Decimal(claim.allocated_gpu_ms) * factor / claim.window_ms
                cost = _hours(claim.allocated_gpu_ms) * factor * self.fill_idle_usd_per_gpu_hour(gpu)
                if claim.cost_usd > cost * (1 + margin):
                    asks.append((-(claim.cost_usd - cost) / needed, claim.workload, claim.gpu_class, gpu.gpu_class,
                                 needed))
        left = dict(idle_gpus)
        granted: dict[tuple[str, str], dict[str, Decimal]] = {}
        for _, workload, gpu_class, owned_class, needed in sorted(asks):
            if (workload, gpu_class) in granted or left.get(owned_class, ZERO) < needed:
                continue
            left[owned_class] -= needed
            granted[(workload, gpu_class)] = {owned_class: needed}
        return granted

    def _fill_idle(self, window: WorkloadWindow, idle_gpus: dict[str, Decimal]) -> Alternative | None:
        best: Alternative | None = None
        for gpu, factor in self._candidates(window.gpu_class):
            needed = Decimal(window.allocated_gpu_ms) * factor / window.window_ms if window.window_ms else ZERO
            if needed <= 0 or idle_gpus.get(gpu.gpu_class, ZERO) < needed:
                continue
            marginal = self.fill_idle_usd_per_gpu_hour(gpu)
            cost = window.allocated_gpu_hours * factor * marginal
            if best is None or cost < best.cost_usd:
                best = Alternative(
                    environment=ONPREM, kind=REPATRIATE_FILL_IDLE, cost_usd=cost, usd_per_gpu_hour=marginal,
                    label=f"idle on-prem {gpu.gpu_class}", gpus_needed=math.ceil(needed), gpu_class=gpu.gpu_class,
                    factor=factor,
                )
        return best

    def _commit(self, window: WorkloadWindow, max_term_months: int | None = None) -> Alternative | None:
        """Stay in the cloud on a committed price (``COMMITTED_OPTIONS``) of an offer of the workload's class at
        its own provider (another provider's is a move), for every GPU-hour it holds: only for a workload
        paying on demand (spot is cheaper still, a committed one has committed)."""
        if window.environment != CLOUD or window.purchase_option != "on_demand" or not window.provider:
            return None
        best: Alternative | None = None
        for offer in self.offers:
            if offer.gpu_class != window.gpu_class or offer.provider != window.provider:
                continue
            whole = window.allocated_gpu_ms // window.window_ms // offer.gpus_per_instance if window.window_ms else 0
            if whole == 0:
                continue  # not one whole instance held: nothing to commit
            for option in COMMITTED_OPTIONS:
                price = offer.usd_per_gpu_hour(option)
                if price is None or (max_term_months is not None and COMMITMENT_TERM_MONTHS[option] > max_term_months):
                    continue  # a term past the horizon is paid beyond it: not an option (as in the options table)
                cost = _committed_window_usd(window.allocated_gpu_ms, window.window_ms, window.cost_usd,
                                             whole * offer.gpus_per_instance, price)
                if best is not None and cost >= best.cost_usd:
                    continue
                best = Alternative(
                    environment=CLOUD, kind=COMMIT_IN_CLOUD, cost_usd=cost,
                    usd_per_gpu_hour=price, label=f"{offer.provider} {offer.region} {offer.instance_type} {option}",
                    gpus_needed=math.ceil(window.allocated_gpu_ms / window.window_ms) if window.window_ms else 0,
                    unit="instance", unit_name=offer.instance_type, gpus_per_unit=offer.gpus_per_instance,
                    option=option,
                )
        return best

    def _buy(self, window: WorkloadWindow) -> Alternative | None:
        found_onprem = self.cheapest_onprem(window.gpu_class)
        if found_onprem is None:
            return None
        gpu, factor = found_onprem
        # bought GPUs are sized for the work (busy GPU-equivalents) at the target utilization and come
        # in whole nodes; they cost every hour of the window; new capacity is not depreciated, so its
        # capex is charged (rate at no date)
        per_node = self.gpus_per_node.get(gpu.gpu_class, 1)
        busy_gpus = Decimal(window.busy_gpu_ms) * factor / window.window_ms if window.window_ms else ZERO
        gpus = whole_units(busy_gpus / self.buy_target_utilization, per_node)
        rate = gpu.rate()
        return Alternative(
            environment=ONPREM,
            kind=REPATRIATE_BUY,
            cost_usd=Decimal(gpus) * window.window_hours * rate.usd_per_gpu_hour,
            usd_per_gpu_hour=rate.usd_per_gpu_hour,
            label=f"on-prem {gpu.gpu_class}",
            gpus_needed=gpus,
            capex_usd_per_gpu=gpu.purchase_price_usd_per_gpu,
            opex_usd_per_gpu_hour=rate.opex_usd_per_gpu_hour,
            unit="node",
            unit_name=f"{gpu.gpu_class} node",
            gpus_per_unit=per_node,
            gpu_class=gpu.gpu_class,
            factor=factor,
        )


def _cheaper(a: Alternative | None, b: Alternative | None) -> Alternative | None:
    """The cheaper of two alternatives for the same window (the first on a tie), either may be None."""
    if a is None or b is None:
        return a or b
    return b if b.cost_usd < a.cost_usd else a


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
    monthly_savings_low_usd: Decimal | None = None  # 25th percentile of the evidence's windows (or the point)
    monthly_savings_high_usd: Decimal | None = None  # 75th percentile (or the point)
    evidence_hours: Decimal = ZERO  # hours of consecutive windows the crossing held
    nodes_needed: int | None = None  # buy capacity: whole nodes of the owned profile
    instances_needed: int | None = None  # migration: whole instances of the chosen type
    options: tuple[PlannedOption, ...] = ()  # every option over a horizon, from the evidence's hours (a planner)

    @property
    def decision_id(self) -> str:
        return f"{self.workload}|{self.from_env}|{self.kind}|{self.window_end_ms}"


@dataclass(frozen=True)
class Thresholds:
    """When a crossing becomes a decision.

    ``evidence_hours``: per decision kind, how many hours of consecutive windows the crossing
    must hold (and at least ``dwell_windows`` of them); a kind not listed needs the dwell alone.
    A withdrawal ("stay") needs what the recommendation it withdraws needed.
    """

    margin: Decimal = Decimal("0.10")
    dwell_windows: int = 3
    evidence_hours: dict[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_EVIDENCE_HOURS))

    def evidence_ms(self, kind: str) -> int:
        return int(self.evidence_hours.get(kind, ZERO) * MS_PER_HOUR)

    def max_windows(self, window_ms: int) -> int:
        """The most windows any decision needs: what a stream keeps per workload."""
        longest = max((self.evidence_ms(k) for k in self.evidence_hours), default=0)
        return max(self.dwell_windows, -(-longest // window_ms) if window_ms else 0)


class EvidenceWindow(NamedTuple):
    """One window of a streak, as the table keeps it (amounts in micro-dollars, the storage
    precision; a plain list of integers in the table's JSON)."""

    cost_umicro: int  # where the workload runs
    alternative_umicro: int  # in the other environment
    busy_gpu_ms: int
    allocated_gpu_ms: int
    window_ms: int
    coverage_umicro: int
    gpus_needed: int


@dataclass
class CrossingState:
    """Per (workload, environment) hysteresis state, small enough for a table value.

    ``recent`` holds the consecutive windows on the current streak, at most what the longest
    evidence horizon needs.  Before a move is recommended the streak is of one alternative kind
    (``streak_kind``).
    """

    moved: bool = False  # a move to the other environment is currently recommended
    moved_kind: str = ""  # the kind of that recommendation (what a "stay" withdraws)
    streak_kind: str = ""
    recent: list[EvidenceWindow] = field(default_factory=list)
    trend_sent: bool = False  # the trending notice of the current streak was emitted
    last_window_start_ms: int = -1

    def to_dict(self) -> dict:
        return {
            "moved": self.moved,
            "moved_kind": self.moved_kind,
            "streak_kind": self.streak_kind,
            "recent": [list(w) for w in self.recent],
            "trend_sent": self.trend_sent,
            "last_window_start_ms": self.last_window_start_ms,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "CrossingState":
        if not data:
            return cls()
        if "streak_kind" not in data:  # an older table value: keep the recommendation, restart the streak
            return cls(moved=bool(data["moved"]), last_window_start_ms=int(data["last_window_start_ms"]))
        return cls(
            moved=bool(data["moved"]),
            moved_kind=str(data["moved_kind"]),
            streak_kind=str(data["streak_kind"]),
            recent=[EvidenceWindow(*map(int, r)) for r in data["recent"]],
            trend_sent=bool(data["trend_sent"]),
            last_window_start_ms=int(data["last_window_start_ms"]),
        )

    def reset_streak(self, kind: str = "") -> None:
        self.recent.clear()
        self.streak_kind = kind
        self.trend_sent = False


def _fmt_usd(amount: Decimal | None) -> str:
    return "n/a" if amount is None else f"${amount:,.2f}"


def _hours(ms: int) -> Decimal:
    return Decimal(ms) / MS_PER_HOUR


def _fmt_range(low: Decimal, high: Decimal) -> str:
    if low == high:
        return "the same savings in every window"
    return f"savings {_fmt_usd(low)} to {_fmt_usd(high)} a month across the windows"


def _fmt_hours(hours: Decimal) -> str:
    return f"{hours.quantize(Decimal('0.01')).normalize():f} h"


def _umicro(amount: Decimal) -> int:
    return int((amount / MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))


def _usd(umicro: int) -> Decimal:
    return Decimal(umicro) * MICRO


def _evidence(recent: list[EvidenceWindow], dwell_windows: int, evidence_ms: int) -> list[EvidenceWindow] | None:
    """The fewest trailing windows that make at least the dwell and span the horizon, or None."""
    span_ms = 0
    for n, entry in enumerate(reversed(recent), start=1):
        span_ms += entry.window_ms
        if n >= dwell_windows and span_ms >= evidence_ms:
            return recent[-n:]
    return None


Planner = Callable[[list[HourOfDemand]], Sequence[PlannedOption]]  # the options for hours of demand


def evaluate(
    state: CrossingState,
    window: WorkloadWindow,
    alternative: Alternative | None,
    thresholds: Thresholds,
    planner: Planner | None = None,
) -> Decision | None:
    """Feed one closed window; return a decision when a crossing has held for its evidence horizon.

    Windows must arrive in event-time order; an older or repeated window is ignored, which
    makes replays harmless.  Before a purchase is recommended, a trending notice (kind
    ``TRENDING_REPATRIATION``) is returned once per streak when half its horizon has passed.
    A recommendation carries the options ``planner`` prices for the evidence's hours (every option
    over a horizon: staying, committing, buying, moving; ``costmodel.options.plan_workload``).
    """
    if window.window_start_ms <= state.last_window_start_ms:
        return None
    if window.window_start_ms != state.last_window_start_ms + window.window_ms:
        # a gap (no usage in between) breaks the streak: "consecutive" means consecutive
        state.reset_streak()
    state.last_window_start_ms = window.window_start_ms
    if state.moved and state.moved_kind == COMMIT_IN_CLOUD and window.purchase_option in COMMITTED_OPTIONS:
        state.moved, state.moved_kind = False, ""  # the commitment was made: what it pays now is the baseline
        state.reset_streak()
    if alternative is None or window.allocated_gpu_ms == 0:
        state.reset_streak()
        return None
    current, alt = window.cost_usd, alternative.cost_usd
    one_plus = 1 + thresholds.margin
    if not state.moved:
        crossing = current > alt * one_plus  # the other environment is cheaper by the margin
        if _family(alternative.kind) != _family(state.streak_kind):
            state.reset_streak(alternative.kind)  # evidence for one kind of move is not evidence for another
    else:
        # the current environment is cheaper again, or the idle GPUs it was told to fill are gone (busy again,
        # or promised to a workload that saves more per GPU: ``Market.allocate_idle``)
        crossing = alt > current * one_plus or _lost_capacity(state, alternative)
    if not crossing:
        state.reset_streak(state.streak_kind)
        return None
    sized = alternative.other if alternative.other and alternative.other.kind == REPATRIATE_BUY else alternative
    state.recent.append(EvidenceWindow(_umicro(current), _umicro(alt), window.busy_gpu_ms, window.allocated_gpu_ms,
                                       window.window_ms, _umicro(window.coverage), sized.gpus_needed))
    del state.recent[:-thresholds.max_windows(window.window_ms)]

    if state.moved:
        kind = state.moved_kind or alternative.kind
        evidence = _evidence(state.recent, thresholds.dwell_windows, thresholds.evidence_ms(kind))
        if evidence is None:
            return None
        return _withdrawal(state, window, alternative, thresholds, evidence)

    kind = alternative.kind
    evidence_ms = thresholds.evidence_ms(kind)
    decision = _best_recommendation(state, window, alternative, thresholds, planner)
    if decision is not None:
        state.moved, state.moved_kind = True, decision.kind
        state.reset_streak()
        return decision
    if kind == REPATRIATE_BUY and not state.trend_sent and evidence_ms > 0:
        half = _evidence(state.recent, thresholds.dwell_windows, evidence_ms // 2)
        if half is not None:
            notice = _recommendation(window, alternative, thresholds, half, TRENDING_REPATRIATION)
            if notice is not None:
                state.trend_sent = True
            return notice
    return None


def _family(kind: str) -> str:
    """Buying and committing are one streak: both answer "keep this capacity for years", and the
    evidence of one is the evidence of the other (each recomputes what it would have cost from it)."""
    return REPATRIATE_BUY if kind == COMMIT_IN_CLOUD else kind


def _best_recommendation(state: CrossingState, window: WorkloadWindow, alternative: Alternative,
                         thresholds: Thresholds, planner: Planner | None) -> Decision | None:
    """The recommendation whose evidence is complete; of buying and committing, the one with the lower present
    value over the horizon (the cheapest row of its kind in its options table), else the cheaper this window."""
    made = []
    for candidate in (alternative, alternative.other):
        if candidate is None:
            continue
        evidence = _evidence(state.recent, thresholds.dwell_windows, thresholds.evidence_ms(candidate.kind))
        if evidence is not None:
            decision = _recommendation(window, candidate, thresholds, evidence, candidate.kind, planner)
            if decision is not None:
                row = _table_row(decision.options, candidate)
                made.append((row.result.npv_usd if row is not None else Decimal("Infinity"), len(made), decision))
    return min(made)[2] if made else None


@dataclass(frozen=True)
class _Totals:
    current_usd: Decimal
    alternative_usd: Decimal
    busy_gpu_ms: int
    allocated_gpu_ms: int
    span_ms: int
    confidence: Decimal
    gpus_needed: int

    @classmethod
    def of(cls, evidence: list[EvidenceWindow]) -> "_Totals":
        return cls(
            current_usd=_usd(sum(e.cost_umicro for e in evidence)),
            alternative_usd=_usd(sum(e.alternative_umicro for e in evidence)),
            busy_gpu_ms=sum(e.busy_gpu_ms for e in evidence),
            allocated_gpu_ms=sum(e.allocated_gpu_ms for e in evidence),
            span_ms=sum(e.window_ms for e in evidence),
            confidence=_usd(sum(e.coverage_umicro for e in evidence)) / len(evidence),
            gpus_needed=max(e.gpus_needed for e in evidence),
        )

    @property
    def utilization(self) -> Decimal:
        return Decimal(self.busy_gpu_ms) / Decimal(self.allocated_gpu_ms) if self.allocated_gpu_ms else ZERO

    def per_busy_hour(self, usd: Decimal) -> Decimal | None:
        return usd / _hours(self.busy_gpu_ms) if self.busy_gpu_ms else None


def _monthly(usd: Decimal, ms: int) -> Decimal:
    return usd_per_month(usd, _hours(ms))


def _savings_range(per_window: list[Decimal], point: Decimal) -> tuple[Decimal, Decimal]:
    """25th and 75th percentile of the windows' monthly savings, widened to hold the point estimate
    (a skewed spread can put the mean outside the quartiles)."""
    low, high = percentile(per_window, Decimal("0.25")), percentile(per_window, Decimal("0.75"))
    return min(low, point), max(high, point)


def _recommendation(window: WorkloadWindow, alternative: Alternative, thresholds: Thresholds,
                    evidence: list[EvidenceWindow], kind: str, planner: Planner | None = None) -> Decision | None:
    t = _Totals.of(evidence)
    gpus = t.gpus_needed
    alt_total = t.alternative_usd
    per_window_alt = [_usd(e.alternative_umicro) for e in evidence]
    table = tuple(planner([_hour_of(e) for e in evidence])) if planner else ()
    uncovered_usd = ZERO  # what stays where it runs beside what is bought (buy capacity)
    if alternative.kind in (REPATRIATE_BUY, COMMIT_IN_CLOUD):
        # what would really be bought or committed: the quantity its options table sized to the demand floor by
        # present value (else: buying enough whole nodes for the busiest window at the target utilization,
        # committing the whole instances every window held), paid every hour; what the workload holds above it
        # stays where it runs, at what it pays there now
        row = _table_row(table, alternative)
        if row is not None and row.result.quantity:
            gpus = row.result.quantity * alternative.gpus_per_unit
        elif table:
            return None  # over the horizon no quantity of it beats staying: the windows crossed, the years do not
        elif alternative.kind == COMMIT_IN_CLOUD:
            floor_gpus = min(Decimal(e.allocated_gpu_ms) / e.window_ms for e in evidence)
            gpus = int(floor_gpus // alternative.gpus_per_unit) * alternative.gpus_per_unit
        if gpus == 0:
            return None  # not one whole unit held through the evidence: nothing steady to commit
        above = [_uncovered_usd(e, Decimal(gpus) / alternative.factor) for e in evidence]
        per_window_alt = [gpus * _hours(e.window_ms) * alternative.usd_per_gpu_hour + a for e, a in zip(evidence, above)]
        uncovered_usd = sum(above, ZERO)
        alt_total = gpus * _hours(t.span_ms) * alternative.usd_per_gpu_hour + uncovered_usd
        if not t.current_usd > alt_total * (1 + thresholds.margin):
            return None  # the windows crossed one by one, but not against what would really be bought or committed
    monthly_savings = _monthly(t.current_usd - alt_total, t.span_ms)
    low, high = _savings_range(
        [_monthly(_usd(e.cost_umicro) - a, e.window_ms) for e, a in zip(evidence, per_window_alt)], monthly_savings)
    payback = alternative.payback_months((t.current_usd - uncovered_usd) / _hours(t.span_ms), gpus)
    units = alternative.units(gpus)
    order = {
        MIGRATE_TO_CLOUD: f"renting {units} × {alternative.unit_name} ({alternative.gpus_per_unit} GPUs each)",
        REPATRIATE_FILL_IDLE: f"running it on {gpus} owned GPU{' that sits' if gpus == 1 else 's that sit'} idle "
                              f"(energy only: their capex is sunk)",
        REPATRIATE_BUY: f"buying {units} {alternative.unit_name}{'s' if units != 1 else ''} ({gpus} GPUs)"
                        + (f", payback {payback:.1f} months," if payback is not None else ""),
        COMMIT_IN_CLOUD: f"committing {units} × {alternative.unit_name} ({alternative.gpus_per_unit} GPUs each, sized "
                         f"to the floor of its demand) and leaving the rest on demand",
    }.get(alternative.kind, "the other environment")
    hours = _hours(t.span_ms)
    cur_rate, alt_rate = t.per_busy_hour(t.current_usd), t.per_busy_hour(alt_total)
    observed = (
        f"{window.workload} ran at {t.utilization:.0%} utilization on {window.environment} {window.gpu_class} "
        f"for {_fmt_hours(hours)} ({len(evidence)} windows); a busy GPU-hour cost {_fmt_usd(cur_rate)} there against "
        f"{_fmt_usd(alt_rate)} with {alternative.label}, so {order} is cheaper by more than the "
        f"{thresholds.margin:.0%} margin ({_fmt_range(low, high)})."
    )
    if kind == TRENDING_REPATRIATION:
        required = _hours(thresholds.evidence_ms(REPATRIATE_BUY))
        observed += f" Trending toward repatriation: a purchase is recommended once this holds for {_fmt_hours(required)}."
    return Decision(
        workload=window.workload,
        team=window.team,
        from_env=window.environment,
        to_env=alternative.environment,
        kind=kind,
        window_start_ms=window.window_start_ms + window.window_ms - t.span_ms,
        window_end_ms=window.window_start_ms + window.window_ms,
        current_usd_per_busy_gpu_hour=cur_rate,
        alternative_usd_per_busy_gpu_hour=alt_rate,
        utilization=t.utilization,
        monthly_savings_usd=monthly_savings,
        confidence=t.confidence,
        gpu_class=window.gpu_class,
        alternative_label=alternative.label,
        gpus_needed=gpus,
        reason=observed,
        payback_months=payback,
        monthly_savings_low_usd=low,
        monthly_savings_high_usd=high,
        evidence_hours=hours,
        nodes_needed=units if alternative.kind == REPATRIATE_BUY else None,
        instances_needed=units if alternative.kind in (MIGRATE_TO_CLOUD, COMMIT_IN_CLOUD) else None,
        options=table if kind != TRENDING_REPATRIATION else (),
    )


def _table_row(table: Sequence[PlannedOption], alternative: Alternative) -> PlannedOption | None:
    """The row of ``alternative``'s options table that is ``alternative`` (buying nodes of its owned class,
    committing its offer at its purchase option), the cheapest by present value; None when there is none."""
    if alternative.kind == REPATRIATE_BUY:
        each = f"({alternative.gpus_per_unit} GPU{'s' if alternative.gpus_per_unit != 1 else ''} each)"
        rows = [o for o in table if o.result.option == BUY and o.gpu_class == alternative.gpu_class
                and o.label.endswith(each)]
    elif alternative.kind == COMMIT_IN_CLOUD:
        name = alternative.label.removesuffix(f" {alternative.option}")
        rows = [o for o in table if o.result.option == COMMITMENT
                and o.label.endswith(f" x {name} ({alternative.option.replace('_', ' ')})")]
    else:
        rows = []
    return min(rows, key=lambda o: o.result.npv_usd) if rows else None


def _hour_of(e: EvidenceWindow) -> HourOfDemand:
    """A window of the evidence as an hour of demand: GPUs held and busy on average, and its cost per hour."""
    return HourOfDemand(Decimal(e.allocated_gpu_ms) / e.window_ms, Decimal(e.busy_gpu_ms) / e.window_ms,
                        _usd(e.cost_umicro) * MS_PER_HOUR / e.window_ms)


def _committed_window_usd(allocated_gpu_ms: int, window_ms: int, cost_usd: Decimal, gpus: int,
                          usd_per_gpu_hour: Decimal) -> Decimal:
    """One window with ``gpus`` committed at ``usd_per_gpu_hour`` (every hour), the GPU-hours it held above
    them at what an allocated GPU-hour cost it in that window (``cost_usd`` over what it held)."""
    committed_gpu_hours = gpus * _hours(window_ms)
    held_gpu_hours = _hours(allocated_gpu_ms)
    above = max(ZERO, held_gpu_hours - committed_gpu_hours)
    return committed_gpu_hours * usd_per_gpu_hour + (above * cost_usd / held_gpu_hours if above else ZERO)


def _uncovered_usd(e: EvidenceWindow, covered_gpus: Decimal) -> Decimal:
    """What a window's GPU-hours above ``covered_gpus`` (GPUs of the workload's class bought or committed) cost
    where it runs: their share of what it paid."""
    held_gpu_hours = _hours(e.allocated_gpu_ms)
    above = held_gpu_hours - covered_gpus * _hours(e.window_ms)
    return above * _usd(e.cost_umicro) / held_gpu_hours if above > 0 else ZERO


def _lost_capacity(state: CrossingState, alternative: Alternative) -> bool:
    """Whether the idle owned GPUs a standing fill-idle recommendation promised are no longer its to fill."""
    return state.moved_kind == REPATRIATE_FILL_IDLE and alternative.kind != REPATRIATE_FILL_IDLE


def _withdrawal(state: CrossingState, window: WorkloadWindow, alternative: Alternative, thresholds: Thresholds,
                evidence: list[EvidenceWindow]) -> Decision:
    t = _Totals.of(evidence)
    lost = _lost_capacity(state, alternative)
    withdrawn = state.moved_kind or alternative.kind
    state.moved, state.moved_kind = False, ""
    state.reset_streak()
    # what staying saves against the alternative (nothing, when the alternative is cheaper but the GPUs are gone)
    per_window = [max(ZERO, _usd(e.alternative_umicro - e.cost_umicro)) if lost else
                  _usd(e.alternative_umicro - e.cost_umicro) for e in evidence]
    monthly_savings = _monthly(sum(per_window, ZERO), t.span_ms)
    low, high = _savings_range([_monthly(s, e.window_ms) for s, e in zip(per_window, evidence)], monthly_savings)
    cur_rate, alt_rate = t.per_busy_hour(t.current_usd), t.per_busy_hour(t.alternative_usd)
    hours = _hours(t.span_ms)
    if lost:
        reason = (
            f"the idle owned GPUs {window.workload} was to fill are no longer free for it (busy again, promised "
            f"to a workload that saves more per GPU, or no longer worth filling at what it pays) for "
            f"{_fmt_hours(hours)}: the earlier recommendation "
            f"(repatriate fill idle) is withdrawn; it stays on {window.environment} "
            f"({_fmt_usd(cur_rate)} per busy GPU-hour) while its next option, {alternative.label} "
            f"({_fmt_usd(alt_rate)}), gathers its own evidence."
        )
    else:
        reason = (
            f"{window.workload} is back at {t.utilization:.0%} utilization for {_fmt_hours(hours)}; staying on "
            f"{window.environment} ({_fmt_usd(cur_rate)} per busy GPU-hour) is cheaper than "
            f"{alternative.label} ({_fmt_usd(alt_rate)}) again: the earlier recommendation "
            f"({withdrawn.replace('_', ' ')}) is withdrawn."
        )
    return Decision(
        workload=window.workload,
        team=window.team,
        from_env=window.environment,
        to_env=window.environment,
        kind=STAY,
        window_start_ms=window.window_start_ms + window.window_ms - t.span_ms,
        window_end_ms=window.window_start_ms + window.window_ms,
        current_usd_per_busy_gpu_hour=cur_rate,
        alternative_usd_per_busy_gpu_hour=alt_rate,
        utilization=t.utilization,
        monthly_savings_usd=monthly_savings,
        confidence=t.confidence,
        gpu_class=window.gpu_class,
        alternative_label=alternative.label,
        gpus_needed=alternative.gpus_needed,
        reason=reason,
        monthly_savings_low_usd=low,
        monthly_savings_high_usd=high,
        evidence_hours=hours,
    )
