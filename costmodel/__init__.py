"""The pure cost model of hybridspend: rates, usage windows, counterfactuals, breakeven decisions.

No I/O and no framework imports: every function here can be tested with nothing running.
"""

from .breakeven import (
    CLOUD,
    COMMIT_IN_CLOUD,
    DEFAULT_BUY_TARGET_UTILIZATION,
    DEFAULT_EVIDENCE_HOURS,
    MIGRATE_TO_CLOUD,
    ONPREM,
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    STAY,
    TRENDING_REPATRIATION,
    Alternative,
    CrossingState,
    Decision,
    IdleClaim,
    Market,
    Thresholds,
    WorkloadWindow,
    evaluate,
    price_cloud_usage,
    price_onprem_usage,
)
from .money import HOURS_PER_MONTH, HOURS_PER_YEAR, calendar_month_hours, dec, micro, month_forecast_usd
from .rates import (
    COMMITTED_OPTIONS,
    PURCHASE_OPTIONS,
    CloudOffer,
    CostModelError,
    OnPremGpuCost,
    OnPremRate,
    PriceBook,
    discounted_usd_per_gpu_hour,
    effective_usd_per_hour,
    throughput_factor,
)
from .tco import TcoResult, payback_months, tco, usd_per_month, usd_per_year
from .usage import IDLE_WORKLOAD, AttributedGpu, LateSample, Rental, ResourceWindows, Usage, UsageKey, add_rented_time

__all__ = [name for name in dir() if not name.startswith("_")]
