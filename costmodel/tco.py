"""Own-vs-rent arithmetic: payback, amounts scaled to a month or a year, and the `hybridspend tco` calculator.

Formulas and units: docs/design.md, "Domain model".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal

from .money import HOURS_PER_MONTH, HOURS_PER_YEAR, ONE, ZERO
from .rates import CostModelError, OnPremGpuCost


def payback_months(capex_usd: Decimal, monthly_cloud_usd: Decimal, monthly_onprem_opex_usd: Decimal) -> Decimal | None:
    """months_to_breakeven = capex needed / (monthly cloud - monthly on-prem opex).

    None when renting costs no more a month than running the owned GPUs would: buying never pays back.
    """
    margin_usd_per_month = monthly_cloud_usd - monthly_onprem_opex_usd
    return capex_usd / margin_usd_per_month if margin_usd_per_month > 0 else None


def usd_per_month(usd: Decimal, over_hours: Decimal) -> Decimal:
    """An amount spent over ``over_hours``, at the same rate for a 730-hour month."""
    if over_hours <= 0:
        raise CostModelError(f"over_hours must be > 0, got {over_hours}")
    return usd / over_hours * HOURS_PER_MONTH


def usd_per_year(usd: Decimal, over_hours: Decimal) -> Decimal:
    """An amount spent over ``over_hours``, at the same rate for an 8760-hour year."""
    if over_hours <= 0:
        raise CostModelError(f"over_hours must be > 0, got {over_hours}")
    return usd / over_hours * HOURS_PER_YEAR


def share_of_month_usd(monthly_usd: Decimal, hours: Decimal, month_hours: Decimal) -> Decimal:
    """The part of a monthly amount (a budget) that falls in ``hours`` of a month ``month_hours`` long."""
    if month_hours <= 0:
        raise CostModelError(f"month_hours must be > 0, got {month_hours}")
    return monthly_usd * hours / month_hours


def effective_usd_per_busy_gpu_hour(usd_per_gpu_hour: Decimal, utilization: Decimal) -> Decimal:
    """What one useful hour costs when only ``utilization`` of the paid hours are busy: rate / utilization."""
    if not ZERO < utilization <= ONE:
        raise CostModelError(f"utilization must be in (0, 1], got {utilization}")
    return usd_per_gpu_hour / utilization


def breakeven_utilization(onprem_usd_per_gpu_hour: Decimal, cloud_usd_per_gpu_hour: Decimal) -> Decimal:
    """u* = on-prem $/GPU-hour / cloud $/GPU-hour: below it renting the busy hours is cheaper than owning."""
    if cloud_usd_per_gpu_hour <= 0:
        raise CostModelError(f"cloud_usd_per_gpu_hour must be > 0, got {cloud_usd_per_gpu_hour}")
    return onprem_usd_per_gpu_hour / cloud_usd_per_gpu_hour


def breakeven_band(breakeven_utilization: Decimal, margin: Decimal) -> tuple[Decimal, Decimal]:
    """Utilizations within which no crossing is acted on: u* / (1 + margin) to u* * (1 + margin).

    An owned GPU's work is recommended to the cloud below the band and back above it (the hysteresis
    of ``breakeven.evaluate`` with the cloud priced for busy hours only).
    """
    return breakeven_utilization / (1 + margin), breakeven_utilization * (1 + margin)


@dataclass(frozen=True)
class TcoResult:
    capex_usd_per_gpu_hour: Decimal
    energy_usd_per_gpu_hour: Decimal
    upkeep_usd_per_gpu_hour: Decimal
    onprem_usd_per_gpu_hour: Decimal
    effective_onprem_usd_per_busy_gpu_hour: Decimal
    breakeven_utilization: Decimal
    monthly_onprem_usd: Decimal
    monthly_cloud_usd: Decimal
    monthly_onprem_opex_usd: Decimal
    months_to_breakeven: Decimal | None
    cheaper_env: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def tco(
    *,
    gpu_price_usd: Decimal,
    amortization_months: int,
    power_w: Decimal,
    pue: Decimal,
    usd_per_kwh: Decimal,
    upkeep_usd_per_year: Decimal,
    cloud_usd_per_gpu_hour: Decimal,
    utilization: Decimal,
    gpus: int = 1,
) -> TcoResult:
    """Compare owning ``gpus`` GPUs with renting them for their busy hours only."""
    if not ZERO < utilization <= ONE:
        raise CostModelError(f"utilization must be in (0, 1], got {utilization}")
    if cloud_usd_per_gpu_hour <= 0:
        raise CostModelError(f"cloud_usd_per_gpu_hour must be > 0, got {cloud_usd_per_gpu_hour}")
    if gpus <= 0:
        raise CostModelError(f"gpus must be > 0, got {gpus}")
    gpu = OnPremGpuCost(
        gpu_class="-",
        purchase_price_usd_per_gpu=gpu_price_usd,
        amortization_months=amortization_months,
        power_w=power_w,
        pue=pue,
        electricity_usd_per_kwh=usd_per_kwh,
        upkeep_usd_per_year_per_gpu=upkeep_usd_per_year,
    )
    rate = gpu.rate()
    onprem = rate.usd_per_gpu_hour
    n = Decimal(gpus)
    monthly_onprem = onprem * HOURS_PER_MONTH * n
    monthly_cloud = cloud_usd_per_gpu_hour * HOURS_PER_MONTH * utilization * n
    monthly_opex = rate.opex_usd_per_gpu_hour * HOURS_PER_MONTH * n
    months_to_breakeven = payback_months(gpu_price_usd * n, monthly_cloud, monthly_opex)
    return TcoResult(
        capex_usd_per_gpu_hour=rate.capex_usd_per_gpu_hour,
        energy_usd_per_gpu_hour=rate.energy_usd_per_gpu_hour,
        upkeep_usd_per_gpu_hour=rate.upkeep_usd_per_gpu_hour,
        onprem_usd_per_gpu_hour=onprem,
        effective_onprem_usd_per_busy_gpu_hour=onprem / utilization,
        breakeven_utilization=onprem / cloud_usd_per_gpu_hour,
        monthly_onprem_usd=monthly_onprem,
        monthly_cloud_usd=monthly_cloud,
        monthly_onprem_opex_usd=monthly_opex,
        months_to_breakeven=months_to_breakeven,
        cheaper_env="onprem" if monthly_onprem < monthly_cloud else "cloud",
    )
