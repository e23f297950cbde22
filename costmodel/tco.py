"""Own-vs-rent calculator behind `hybridspend tco` (DESIGN.md §2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal

from .money import HOURS_PER_MONTH, ONE, ZERO
from .rates import CostModelError, OnPremGpuCost


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
    monthly_margin = monthly_cloud - monthly_opex
    months_to_breakeven = gpu_price_usd * n / monthly_margin if monthly_margin > 0 else None
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
