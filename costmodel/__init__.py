"""The pure cost model of hybridspend: rates, usage windows, counterfactuals, breakeven decisions.

No I/O and no framework imports: every function here can be tested with nothing running.
"""

from .breakeven import (
    CLOUD,
    MIGRATE_TO_CLOUD,
    ONPREM,
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    STAY,
    Alternative,
    CrossingState,
    Decision,
    Market,
    Thresholds,
    WorkloadWindow,
    evaluate,
    price_cloud_usage,
    price_onprem_usage,
)
from .money import HOURS_PER_MONTH, HOURS_PER_YEAR, dec, micro
from .rates import PURCHASE_OPTIONS, CloudOffer, CostModelError, OnPremGpuCost, OnPremRate, PriceBook, throughput_factor
from .tco import TcoResult, tco
from .usage import IDLE_WORKLOAD, GpuReading, LateSample, Rental, ResourceWindows, Usage, UsageKey, add_rented_time

__all__ = [name for name in dir() if not name.startswith("_")]
