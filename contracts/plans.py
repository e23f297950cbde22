"""One workload's options over a horizon, priced from the configuration as `hybridspend plan`, the
monthly report's Figure 6 and the stream's decisions all price them (``costmodel.options.plan_workload``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from hybridspend.costmodel.options import HourOfDemand, PlannedOption, cheapest, plan_workload
from hybridspend.costmodel.rates import CloudOffer

from .config import Config


@dataclass(frozen=True)
class Plan:
    horizon_months: int
    discount_rate_pct: Decimal
    one_time_move_usd: Decimal
    options: list[PlannedOption]

    @property
    def cheapest(self) -> PlannedOption:
        best = cheapest([o.result for o in self.options])
        return next(o for o in self.options if o.result is best)


def plan_for(config: Config, workload: str, environment: str, gpu_class: str, hours: Sequence[HourOfDemand],
             provider: str = "", *, horizon_months: int | None = None, discount_rate_pct: Decimal | None = None,
             one_time_usd: Decimal | None = None, offers: Sequence[CloudOffer] | None = None,
             fill_idle: tuple[str, Decimal] | None = None) -> Plan:
    """The options with the configured horizon, cost of capital and move costs (``moves``), each
    overridable; ``provider`` is where a cloud workload runs ("" on-prem); ``offers``: the cloud offers
    with the prices in force (default: as configured); ``fill_idle``: the idle owned GPUs promised to it
    (class, $ per GPU-hour at the margin)."""
    horizon = horizon_months or config.thresholds.horizon_for(config.onprem_assets, gpu_class)
    rate_pct = discount_rate_pct if discount_rate_pct is not None else config.thresholds.discount_rate_pct
    cloud = provider if environment == "cloud" else None
    one_time = one_time_usd if one_time_usd is not None else config.moves.one_time_usd(workload, cloud)
    options = plan_workload(
        environment=environment, gpu_class=gpu_class, hours=hours,
        offers=offers if offers is not None else [o.offer() for o in config.cloud_offers],
        gpu_costs=[(a.name, a.gpus_per_node, a.purchase_price_usd_per_node, a.gpu_cost()) for a in config.onprem_assets],
        horizon_months=horizon, annual_rate=rate_pct / 100, one_time_usd=one_time,
        ongoing_usd_per_month=config.moves.ongoing_usd_per_month(workload, cloud), provider=cloud or "",
        throughput=config.gpu_throughput, fill_idle=fill_idle)
    return Plan(horizon, rate_pct, one_time, options)
