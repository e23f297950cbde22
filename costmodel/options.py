"""Options over a horizon: what each way of running a workload pays month by month, its total, its
present value and the month it overtakes staying as it runs.

Cash-flow convention, the same everywhere:

    purchases and one-time costs        at month 0
    every monthly amount                at the end of months 1..H
    discount factor of month m          (1 + r) ** (-m / 12)       r: the annual cost of capital
    a month                             730 hours

    total_usd        = upfront_usd + sum(monthly_usd[1..H])
    npv_usd          = upfront_usd + sum(monthly_usd[m] * (1 + r) ** (-m / 12), m = 1..H)
    breakeven_month  = the first m in 1..H at which the option's undiscounted cumulative cost is at
                       most the baseline's (staying as it runs); None if none

Sizing to the demand floor (``size_to_demand``): a commitment or a purchase covers a whole number of
units (instances, nodes) every hour, used or not; demand above what is covered runs at the current
price.  The quantity chosen is the one, from 0 to what covers the peak, with the lowest present
value against the workload's hourly demand profile repeated over the horizon: a bursty workload
gets its floor covered and its burst left where it runs, a steady one gets all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Mapping, Sequence

from .money import HOURS_PER_MONTH, ZERO
from .rates import COMMITMENT_TERM_MONTHS, COMMITTED_OPTIONS, CostModelError, throughput_factor

ON_DEMAND = "on_demand"
MAX_UNITS = 10_000  # instances or nodes one sizing considers (a peak of 80,000 GPUs in 8-GPU units)
COMMITMENT = "commitment"
BUY = "buy"
FILL_IDLE = "fill_idle"


def discount_factor(month: int, annual_rate: Decimal) -> Decimal:
    """(1 + r) ** (-m / 12): what a dollar paid at the end of month ``m`` is worth at month 0."""
    if annual_rate <= -1:
        raise CostModelError(f"annual_rate must be > -1 (a fraction, 0.08 for 8 %), got {annual_rate}")
    return (1 + annual_rate) ** (Decimal(-month) / 12)


def annuity_factor(horizon_months: int, annual_rate: Decimal) -> Decimal:
    """The present value of 1 USD paid at the end of each of months 1..H."""
    return sum((discount_factor(m, annual_rate) for m in range(1, horizon_months + 1)), ZERO)


@dataclass(frozen=True)
class CashFlows:
    """One option's payments: ``upfront_usd`` at month 0, ``monthly_usd`` at the end of each of
    months 1..H (the same every month: demand is the measured profile, repeated)."""

    option: str
    upfront_usd: Decimal
    monthly_usd: Decimal
    horizon_months: int
    quantity: int | None = None  # units covered (instances committed, nodes bought); None: not sized
    unit: str = ""
    term_months: int | None = None  # a commitment's term; it renews at the same rate within the horizon

    def cumulative_usd(self, month: int) -> Decimal:
        """Undiscounted, through the end of ``month``."""
        return self.upfront_usd + self.monthly_usd * month

    @property
    def total_usd(self) -> Decimal:
        return self.cumulative_usd(self.horizon_months)

    def npv_usd(self, annual_rate: Decimal) -> Decimal:
        return self.upfront_usd + self.monthly_usd * annuity_factor(self.horizon_months, annual_rate)

    def breakeven_month(self, baseline: CashFlows) -> int | None:
        """The first month 1..H at which this option has cost at most ``baseline``, or None."""
        for month in range(1, self.horizon_months + 1):
            if self.cumulative_usd(month) <= baseline.cumulative_usd(month):
                return month
        return None


@dataclass(frozen=True)
class OptionResult:
    option: str
    quantity: int | None
    unit: str
    term_months: int | None
    upfront_usd: Decimal
    monthly_usd: Decimal
    total_usd: Decimal
    npv_usd: Decimal
    breakeven_month: int | None


def compare(options: Sequence[CashFlows], baseline: CashFlows, annual_rate: Decimal) -> list[OptionResult]:
    """Each option's horizon total, present value and breakeven month against ``baseline``."""
    horizons = {o.horizon_months for o in options} | {baseline.horizon_months}
    if len(horizons) != 1:
        raise CostModelError(f"options over different horizons cannot be compared: {sorted(horizons)} months")
    return [OptionResult(o.option, o.quantity, o.unit, o.term_months, o.upfront_usd, o.monthly_usd, o.total_usd,
                         o.npv_usd(annual_rate), o.breakeven_month(baseline)) for o in options]


def cheapest(results: Sequence[OptionResult]) -> OptionResult:
    """The option with the lowest present value (the first listed on a tie)."""
    return min(results, key=lambda r: r.npv_usd)


def _check_horizon(horizon_months: int) -> None:
    if not 1 <= horizon_months <= 600:
        raise CostModelError(f"horizon_months must be from 1 to 600, got {horizon_months}")


def size_to_demand(
    *,
    option: str,
    unit: str,
    demand_gpus_by_hour: Sequence[Decimal],
    gpus_per_unit: int,
    upfront_usd_per_unit: Decimal,
    covered_usd_per_unit_hour: Decimal,
    uncovered_usd_per_gpu_hour: Decimal,
    horizon_months: int,
    annual_rate: Decimal,
    term_months: int | None = None,
    one_time_usd: Decimal = ZERO,
    ongoing_usd_per_month: Decimal = ZERO,
) -> CashFlows:
    """The quantity of units, from 0 to what covers the peak, with the lowest present value.

    Every hour, ``q`` units cost ``q * covered_usd_per_unit_hour`` (used or not) and the demand
    above ``q * gpus_per_unit`` GPUs costs ``uncovered_usd_per_gpu_hour`` each; a month is the
    profile's mean hour x 730.  ``q`` units also pay ``q * upfront_usd_per_unit`` and, when
    ``q > 0``, ``one_time_usd`` (moving the workload) at month 0 and ``ongoing_usd_per_month`` (data
    left behind, read out) every month.  On a tie the smaller quantity wins.
    """
    _check_horizon(horizon_months)
    if not demand_gpus_by_hour:
        raise CostModelError("demand_gpus_by_hour is empty: no measured hours to size against")
    if gpus_per_unit <= 0:
        raise CostModelError(f"gpus_per_unit must be > 0, got {gpus_per_unit}")
    if any(d < 0 for d in demand_gpus_by_hour):
        raise CostModelError("demand_gpus_by_hour must be >= 0 every hour")
    hours = Decimal(len(demand_gpus_by_hour))
    peak = max(demand_gpus_by_hour)
    most = math.ceil(peak / gpus_per_unit)  # units that cover the peak
    if most > MAX_UNITS:
        raise CostModelError(f"a peak of {peak} GPUs is {most} units of {gpus_per_unit}: more than {MAX_UNITS} to size")
    annuity = annuity_factor(horizon_months, annual_rate)
    best: CashFlows | None = None
    best_pv = ZERO
    for quantity in range(most + 1):
        covered_gpus = quantity * gpus_per_unit
        uncovered_gpu_hours = sum((d - covered_gpus for d in demand_gpus_by_hour if d > covered_gpus), ZERO)
        monthly = (quantity * covered_usd_per_unit_hour
                   + uncovered_gpu_hours / hours * uncovered_usd_per_gpu_hour) * HOURS_PER_MONTH \
            + (ongoing_usd_per_month if quantity else ZERO)
        upfront = quantity * upfront_usd_per_unit + (one_time_usd if quantity else ZERO)
        pv = upfront + monthly * annuity
        if best is None or pv < best_pv:
            best, best_pv = CashFlows(option, upfront, monthly, horizon_months, quantity, unit, term_months), pv
    assert best is not None
    return best


@dataclass(frozen=True)
class CalculatorOptions:
    """The `hybridspend tco` options table: ``gpus`` GPUs busy ``utilization`` of the hours."""

    results: list[OptionResult]
    cheapest: OptionResult


def calculator_options(
    *,
    gpus: int,
    utilization: Decimal,
    cloud_usd_per_gpu_hour: Decimal,
    gpu_price_usd: Decimal,
    opex_usd_per_gpu_hour: Decimal,
    horizon_months: int,
    annual_rate: Decimal,
    commitment_usd_per_gpu_hour: Decimal | None = None,
    commitment_term_months: int | None = None,
    one_time_usd: Decimal = ZERO,
) -> CalculatorOptions:
    """On-demand pays C x 730 x X x N a month (busy hours only); a commitment K x 730 x N (all N
    GPUs, all hours); buying P x N at month 0 plus (energy + upkeep) x 730 x N a month, and the
    one-time cost O of moving at month 0."""
    _check_horizon(horizon_months)
    n = Decimal(gpus)
    stay = CashFlows(ON_DEMAND, ZERO, cloud_usd_per_gpu_hour * HOURS_PER_MONTH * utilization * n, horizon_months)
    options = [stay]
    if commitment_usd_per_gpu_hour is not None:
        options.append(CashFlows(COMMITMENT, ZERO, commitment_usd_per_gpu_hour * HOURS_PER_MONTH * n, horizon_months,
                                 gpus, "GPU", commitment_term_months))
    options.append(CashFlows(BUY, gpu_price_usd * n + one_time_usd, opex_usd_per_gpu_hour * HOURS_PER_MONTH * n,
                             horizon_months, gpus, "GPU"))
    results = compare(options, stay, annual_rate)
    return CalculatorOptions(results, cheapest(results))


@dataclass(frozen=True)
class HourOfDemand:
    """One measured hour of a workload where it runs: GPU-equivalents allocated and busy (GPU-ms
    over the hour's ms), and what the hour cost."""

    allocated_gpus: Decimal
    busy_gpus: Decimal
    cost_usd: Decimal


@dataclass(frozen=True)
class PlannedOption:
    label: str  # what it is, for a person: "commit 1 x p5.48xlarge (reserved)", "buy 2 nodes of dgx-a100"
    result: OptionResult
    gpu_class: str = ""  # a purchase: the class of the owned GPUs bought ("" otherwise, or not known)


def plan_workload(
    *,
    environment: str,
    gpu_class: str,
    hours: Sequence[HourOfDemand],
    offers: Sequence,
    gpu_costs: Sequence[tuple[str, int, Decimal, object]],
    horizon_months: int,
    annual_rate: Decimal,
    one_time_usd: Decimal = ZERO,
    ongoing_usd_per_month: Decimal = ZERO,
    provider: str = "",
    throughput: Mapping[str, Decimal] | None = None,
    fill_idle: tuple[str, Decimal] | None = None,
) -> list[PlannedOption]:
    """Every option for one workload of one GPU class, from its measured hours repeated over the
    horizon; the first is staying as it runs (the baseline).  An option that covers nothing
    (0 instances committed, 0 nodes bought) is staying by another name and is left out.

    - in the cloud: stay; commit whole instances of each offer of the class with a committed price
      at the workload's own ``provider`` (another provider's is a move, not a commitment), sized to
      the demand floor (allocated GPUs; the rest at what an allocated GPU-hour costs now);
      buy whole nodes of each owned profile of the class (its price up front, plus ``one_time_usd``;
      energy and upkeep every hour, plus ``ongoing_usd_per_month`` for data left in the cloud).
    - on-prem: stay; move to each offer on demand (busy hours only) and committed (sized to the busy
      GPUs, the rest on demand), with ``one_time_usd`` up front.

    - in the cloud, with ``fill_idle`` (owned GPU class, $ per owned GPU-hour at the margin: energy, and
      upkeep where configured) when idle owned GPUs were promised to it: run on them, the GPUs it holds
      every hour (times the throughput factor) at that price, plus the one-time and ongoing move costs.

    ``offers`` are ``costmodel.rates.CloudOffer``; ``gpu_costs`` are (profile name, GPUs per node,
    purchase price per node, ``OnPremGpuCost``).  With a ``throughput`` table, a move or a purchase may
    be of another class, as the stream's ``Market`` weighs them: the demand in GPUs of that class is
    the workload's times ``throughput_factor`` (a commitment in the cloud stays of the workload's class).
    """
    if not hours:
        raise CostModelError("no measured hours to plan from")
    n = Decimal(len(hours))
    stay = CashFlows("stay", ZERO, sum((h.cost_usd for h in hours), ZERO) / n * HOURS_PER_MONTH, horizon_months)
    planned: list[tuple[str, CashFlows]] = [(f"stay ({environment}, as it runs)", stay)]
    bought_class: dict[int, str] = {}  # index in ``planned`` -> the owned class a purchase buys
    allocated_gpu_hours = sum((h.allocated_gpus for h in hours), ZERO)
    now_usd_per_gpu_hour = stay.monthly_usd / HOURS_PER_MONTH * n / allocated_gpu_hours if allocated_gpu_hours else ZERO
    allocated = [h.allocated_gpus for h in hours]
    busy = [h.busy_gpus for h in hours]
    def factor(other_class: str) -> Decimal | None:  # GPUs of other_class per GPU of the workload's class
        if other_class == gpu_class:
            return Decimal(1)
        if throughput and gpu_class in throughput and other_class in throughput:
            return throughput_factor(gpu_class, other_class, dict(throughput))
        return None

    for offer in offers:
        f = factor(offer.gpu_class) if environment != "cloud" else (
            Decimal(1) if offer.gpu_class == gpu_class and (not provider or offer.provider == provider) else None)
        if f is None:
            continue
        name = f"{offer.provider} {offer.region} {offer.instance_type}"
        on_demand = offer.usd_per_gpu_hour("on_demand")
        if environment != "cloud" and on_demand is not None:
            planned.append((f"move to {name} on demand", CashFlows(
                ON_DEMAND, one_time_usd, sum(busy, ZERO) / n * f * on_demand * HOURS_PER_MONTH, horizon_months)))
        for option in COMMITTED_OPTIONS:
            per_gpu = offer.usd_per_gpu_hour(option)
            if per_gpu is None or COMMITMENT_TERM_MONTHS[option] > horizon_months:
                continue  # a term past the horizon would be paid beyond it (`tco` refuses it alike)
            demand, uncovered = (allocated, now_usd_per_gpu_hour) if environment == "cloud" else (
                [b * f for b in busy], on_demand)
            if uncovered is None:
                continue
            flows = size_to_demand(option=COMMITMENT, unit=offer.instance_type, demand_gpus_by_hour=demand,
                                   gpus_per_unit=offer.gpus_per_instance, upfront_usd_per_unit=ZERO,
                                   covered_usd_per_unit_hour=per_gpu * offer.gpus_per_instance,
                                   uncovered_usd_per_gpu_hour=uncovered, horizon_months=horizon_months,
                                   annual_rate=annual_rate, term_months=COMMITMENT_TERM_MONTHS[option])
            if not flows.quantity:
                continue  # nothing committed: staying (in the cloud) or the on-demand move (from owned)
            committed = f"commit {flows.quantity} x {name} ({option.replace('_', ' ')})"
            if environment == "cloud":
                planned.append((committed, flows))
            else:
                planned.append((f"move and {committed}", replace(flows, upfront_usd=flows.upfront_usd + one_time_usd)))
    if environment == "cloud" and fill_idle is not None and factor(fill_idle[0]) is not None:
        owned_class, usd_per_gpu_hour = fill_idle
        f = factor(owned_class)
        peak = math.ceil(max(allocated) * f)
        planned.append((f"fill {peak} idle owned {owned_class} GPU{'s' if peak != 1 else ''}", CashFlows(
            FILL_IDLE, one_time_usd, sum(allocated, ZERO) / n * f * usd_per_gpu_hour * HOURS_PER_MONTH
            + ongoing_usd_per_month, horizon_months, peak, "GPU")))
    if environment == "cloud":
        for profile, gpus_per_node, price_per_node, gpu in gpu_costs:
            f = factor(gpu.gpu_class)
            if f is None:
                continue
            opex = (gpu.energy_usd_per_gpu_hour() + gpu.upkeep_usd_per_gpu_hour()) * gpus_per_node
            flows = size_to_demand(option=BUY, unit=f"{profile} node", demand_gpus_by_hour=[a * f for a in allocated],
                                   gpus_per_unit=gpus_per_node, upfront_usd_per_unit=price_per_node,
                                   covered_usd_per_unit_hour=opex, uncovered_usd_per_gpu_hour=now_usd_per_gpu_hour / f,
                                   horizon_months=horizon_months, annual_rate=annual_rate, one_time_usd=one_time_usd,
                                   ongoing_usd_per_month=ongoing_usd_per_month)
            if flows.quantity:
                bought_class[len(planned)] = gpu.gpu_class
                planned.append((f"buy {flows.quantity} x {profile} node ({gpus_per_node} GPU"
                                f"{'s' if gpus_per_node != 1 else ''} each)", flows))
    results = compare([flows for _, flows in planned], stay, annual_rate)
    return [PlannedOption(label, result, bought_class.get(i, ""))
            for i, ((label, _), result) in enumerate(zip(planned, results))]
