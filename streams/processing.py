"""What the Faust agents do with each batch, as plain code: decode, call the domain, encode.

The agents in ``streams.topology`` only move events and table values in and out of these
processors, so every rule here is testable without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from costmodel import (
    CrossingState,
    IDLE_WORKLOAD,
    GpuReading,
    ResourceWindows,
    Usage,
    UsageKey,
    WorkloadWindow,
    evaluate,
    price_cloud_usage,
    price_onprem_usage,
)
from costmodel.money import micro
from hybridspend.config import Config
from hybridspend.events import BreakevenDecision, CostWindow, EventError, GpuSample


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass
class ResourceState:
    """Table value of the usage agent, one per resource (host or instance)."""

    windows: ResourceWindows = field(default_factory=ResourceWindows)
    environment: str = "onprem"
    provider: str = ""
    region: str = ""
    instance_type: str = ""
    purchase_option: str = ""
    allow_spot: dict[str, bool] = field(default_factory=dict)  # workload -> policy seen in samples

    def to_dict(self) -> dict:
        return {
            "windows": self.windows.to_dict(),
            "meta": [self.environment, self.provider, self.region, self.instance_type, self.purchase_option],
            "allow_spot": self.allow_spot,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "ResourceState":
        if not data:
            return cls()
        env, provider, region, itype, option = data["meta"]
        return cls(ResourceWindows.from_dict(data["windows"]), env, provider, region, itype, option,
                   dict(data.get("allow_spot", {})))


class UsageProcessor:
    """GPU samples -> per-resource usage windows -> priced cost windows."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.window_ms = config.thresholds.window_seconds * 1000

    def add(self, state: ResourceState, sample: GpuSample) -> bool:
        """Count a sample; raise EventError when it cannot be priced; False for a replay."""
        if sample.environment == "onprem":
            if self.config.asset_for_host(sample.resource) is None:
                raise EventError(f"no on-prem asset profile matches host {sample.resource!r}")
        else:
            offer = self.config.offer_for(sample.provider, sample.region, sample.instance_type)
            if offer is None or offer.offer().usd_per_gpu_hour(sample.purchase_option or "on_demand") is None:
                raise EventError(
                    f"no price for {sample.provider} {sample.region} {sample.instance_type} "
                    f"{sample.purchase_option or 'on_demand'}"
                )
        state.environment = sample.environment
        state.provider, state.region = sample.provider, sample.region
        state.instance_type, state.purchase_option = sample.instance_type, sample.purchase_option or (
            "on_demand" if sample.environment == "cloud" else ""
        )
        readings = []
        for gpu in sample.gpus:
            for share in gpu.workloads:
                state.allow_spot[share.workload] = share.allow_spot
            readings.append(
                GpuReading(gpu.gpu_class, gpu.utilization_pct, gpu.power_mw,
                           tuple((s.workload, s.team) for s in gpu.workloads))
            )
        return state.windows.add_sample(
            ts_ms=sample.ts_ms, interval_ms=sample.interval_ms, window_ms=self.window_ms,
            environment=sample.environment, resource=sample.resource, gpus=readings,
        )

    def close(self, state: ResourceState, watermark_ms: int) -> list[CostWindow]:
        return [self.price(state, key, usage) for key, usage in state.windows.close(watermark_ms, self.window_ms)]

    def price(self, state: ResourceState, key: UsageKey, usage: Usage) -> CostWindow:
        if key.environment == "onprem":
            asset = self.config.asset_for_host(key.resource)
            assert asset is not None  # checked when the sample was added
            cost = price_onprem_usage(usage, asset.gpu_cost(), _utc(key.window_start_ms))
        else:
            offer = self.config.offer_for(state.provider, state.region, state.instance_type)
            assert offer is not None
            rate = offer.offer().usd_per_gpu_hour(state.purchase_option or "on_demand")
            assert rate is not None
            cost = price_cloud_usage(usage, rate)
        return CostWindow(
            event_id=CostWindow.make_id(key.resource, key.workload, key.environment, key.gpu_class, key.window_start_ms),
            workload=key.workload, team=key.team, allow_spot=state.allow_spot.get(key.workload, False),
            environment=key.environment, gpu_class=key.gpu_class, resource=key.resource,
            window_start_ms=key.window_start_ms, window_ms=self.window_ms,
            allocated_gpu_ms=usage.allocated_gpu_ms, busy_gpu_ms=usage.busy_gpu_ms,
            metered_gpu_ms=usage.metered_gpu_ms, energy_mj=usage.energy_mj, sample_count=usage.sample_count,
            first_ms=usage.first_ms, last_ms=usage.last_ms, cost_usd=micro(cost),
            provider=state.provider if key.environment == "cloud" else "",
            instance_type=state.instance_type if key.environment == "cloud" else "",
            purchase_option=state.purchase_option if key.environment == "cloud" else "",
        )


@dataclass
class WorkloadState:
    """Table value of the decision agent, one per workload: open windows and hysteresis states."""

    # "env|class|window_start" -> resource -> [allocated_ms, busy_ms, cost_usd, first_ms, last_ms, window_ms]
    open: dict[str, dict[str, list]] = field(default_factory=dict)
    crossing: dict[str, CrossingState] = field(default_factory=dict)  # "env|class" -> state
    team: str = ""
    allow_spot: bool = False
    closed_through_ms: dict[str, int] = field(default_factory=dict)  # "env|class" -> last closed window start

    def to_dict(self) -> dict:
        return {
            "open": self.open,
            "crossing": {k: v.to_dict() for k, v in self.crossing.items()},
            "team": self.team,
            "allow_spot": self.allow_spot,
            "closed_through_ms": self.closed_through_ms,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "WorkloadState":
        if not data:
            return cls()
        return cls(
            open=data["open"],
            crossing={k: CrossingState.from_dict(v) for k, v in data["crossing"].items()},
            team=data["team"],
            allow_spot=data["allow_spot"],
            closed_through_ms=dict(data["closed_through_ms"]),
        )


class DecisionProcessor:
    """Cost windows of one workload (all resources) -> closed workload windows -> decisions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.market = config.market()
        self.thresholds = config.thresholds.domain()
        self.grace_ms = config.thresholds.grace_seconds * 1000

    def add(self, state: WorkloadState, cw: CostWindow) -> bool:
        """Record a resource's window; replays overwrite; windows already closed are ignored."""
        subject = f"{cw.environment}|{cw.gpu_class}"
        if cw.workload == IDLE_WORKLOAD:
            return False  # idle capacity is a cost of its own (stored by the sink), never a workload to move
        if cw.window_start_ms <= state.closed_through_ms.get(subject, -1):
            return False
        state.team = cw.team
        state.allow_spot = cw.allow_spot
        key = f"{subject}|{cw.window_start_ms}"
        state.open.setdefault(key, {})[cw.resource] = [
            cw.allocated_gpu_ms, cw.busy_gpu_ms, str(cw.cost_usd), cw.first_ms, cw.last_ms, cw.window_ms,
        ]
        return True

    def close(self, workload: str, state: WorkloadState, watermark_ms: int) -> list[BreakevenDecision]:
        """Close windows that ended at least ``grace`` before the watermark, in event-time order."""
        ready = []
        for key, resources in state.open.items():
            env, gpu_class, start = key.rsplit("|", 2)
            window_ms = next(iter(resources.values()))[5]
            if int(start) + window_ms + self.grace_ms <= watermark_ms:
                ready.append((int(start), env, gpu_class, key, window_ms))
        decisions = []
        for start, env, gpu_class, key, window_ms in sorted(ready):
            resources = state.open.pop(key)
            subject = f"{env}|{gpu_class}"
            state.closed_through_ms[subject] = max(state.closed_through_ms.get(subject, -1), start)
            coverage = sum(
                (min(Decimal(1), Decimal(r[4] - r[3]) / window_ms) for r in resources.values()), Decimal(0)
            ) / len(resources)
            window = WorkloadWindow(
                workload=workload, team=state.team, environment=env, gpu_class=gpu_class,
                window_start_ms=start, window_ms=window_ms,
                allocated_gpu_ms=sum(r[0] for r in resources.values()),
                busy_gpu_ms=sum(r[1] for r in resources.values()),
                cost_usd=sum((Decimal(r[2]) for r in resources.values()), Decimal(0)),
                coverage=coverage,
            )
            crossing = state.crossing.setdefault(subject, CrossingState())
            decision = evaluate(crossing, window, self.market.alternative(window, state.allow_spot), self.thresholds)
            if decision is not None:
                decisions.append(
                    BreakevenDecision(
                        event_id=decision.decision_id, workload=decision.workload, team=decision.team,
                        from_env=decision.from_env, to_env=decision.to_env, kind=decision.kind,
                        gpu_class=decision.gpu_class, window_start_ms=decision.window_start_ms,
                        window_end_ms=decision.window_end_ms,
                        current_usd_per_busy_gpu_hour=_opt_micro(decision.current_usd_per_busy_gpu_hour),
                        alternative_usd_per_busy_gpu_hour=_opt_micro(decision.alternative_usd_per_busy_gpu_hour),
                        utilization=micro(decision.utilization), monthly_savings_usd=micro(decision.monthly_savings_usd),
                        confidence=micro(decision.confidence), alternative_label=decision.alternative_label,
                        gpus_needed=decision.gpus_needed, reason=decision.reason,
                    )
                )
        return decisions


def _opt_micro(value: Decimal | None) -> Decimal | None:
    return None if value is None else micro(value)
