"""A simulated hybrid fleet for the demo and the tests, deterministic from a seed.

On-prem nodes with diurnal utilization (and a workload whose utilization collapses at midday),
cloud GPU instances that start, stop and get spot-interrupted.  It produces the same events as
the real collectors (GPU samples, instance events) in event time; the caller decides how fast
simulated time runs against the wall clock.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterator

from hybridspend.contracts.events import GpuReading, GpuSample, InstanceEvent, WorkloadShare
from hybridspend.costmodel.timeunits import MS_PER_DAY, MS_PER_HOUR



@dataclass(frozen=True)
class SimWorkload:
    name: str
    team: str
    gpus: tuple[int, ...]  # GPU indexes it occupies on its resource
    base_pct: float  # mean utilization
    diurnal_pct: float = 0.0  # amplitude of the daily swing (peak at 14:00 UTC)
    drop_at_h: float | None = None  # hour of the day when utilization collapses
    drop_to_pct: float = 0.0
    allow_spot: bool = False


@dataclass(frozen=True)
class SimNode:
    resource: str
    model: str
    gpu_class: str
    gpu_count: int
    workloads: tuple[SimWorkload, ...]
    idle_power_w: float = 60.0
    max_power_w: float = 400.0
    environment: str = "onprem"
    provider: str = ""
    region: str = ""
    instance_type: str = ""
    purchase_option: str = ""
    runs: tuple[tuple[float, float], ...] = ((0.0, 24.0),)  # (start h, stop h) periods it runs
    interrupted_at_h: float | None = None  # spot interruption (ends the run at that hour)


@dataclass
class SimFleet:
    nodes: list[SimNode]
    seed: int = 42
    interval_ms: int = 60_000
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _utilization(self, wl: SimWorkload, hour: float) -> float:
        util = wl.base_pct + wl.diurnal_pct * math.sin((hour - 8.0) / 24.0 * 2 * math.pi)
        if wl.drop_at_h is not None and hour >= wl.drop_at_h:
            util = wl.drop_to_pct
        util += self._rng.gauss(0.0, 3.0)
        return float(round(min(100.0, max(0.0, util))))

    @staticmethod
    def _running(node: SimNode, hour: float) -> bool:
        for start, stop in node.runs:
            end = stop
            if node.interrupted_at_h is not None and start <= node.interrupted_at_h < stop:
                end = node.interrupted_at_h
            if start <= hour < end:
                return True
        return False

    def samples_at(self, ts_ms: int, day_start_ms: int) -> list[GpuSample]:
        """Every running node's sample for the interval ending at ts_ms."""
        hour = ((ts_ms - self.interval_ms) - day_start_ms) / MS_PER_HOUR % 24
        out = []
        for node in self.nodes:
            if not self._running(node, hour):
                continue
            owners: dict[int, SimWorkload] = {g: wl for wl in node.workloads for g in wl.gpus}
            utils = {wl.name: self._utilization(wl, hour) for wl in node.workloads}
            gpus = []
            for index in range(node.gpu_count):
                wl = owners.get(index)
                util = utils[wl.name] if wl else 0.0
                power_w = node.idle_power_w + (node.max_power_w - node.idle_power_w) * util / 100
                gpus.append(GpuReading(
                    uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node.resource}/{index}")),
                    index=index, model=node.model, gpu_class=node.gpu_class, utilization_pct=util,
                    memory_used_mib=int(60000 * util / 100), memory_total_mib=81920,
                    power_mw=int(power_w * 1000),
                    workloads=[WorkloadShare(wl.name, wl.team, wl.allow_spot)] if wl else [],
                ))
            out.append(GpuSample(
                event_id=f"sim:{node.resource}:{ts_ms}", ts_ms=ts_ms, interval_ms=self.interval_ms,
                resource=node.resource, environment=node.environment, source="sim", gpus=gpus,
                provider=node.provider, region=node.region, instance_type=node.instance_type,
                purchase_option=node.purchase_option,
            ))
        return out

    def instance_events_between(self, start_ms: int, end_ms: int, day_start_ms: int) -> list[InstanceEvent]:
        """Cloud instance state changes with event time in [start_ms, end_ms)."""
        out = []
        for node in self.nodes:
            if node.environment != "cloud":
                continue
            wl = node.workloads[0] if node.workloads else None
            changes: list[tuple[float, str]] = []
            for run_start, run_stop in node.runs:
                changes.append((run_start, "running"))
                if node.interrupted_at_h is not None and run_start <= node.interrupted_at_h < run_stop:
                    changes.append((node.interrupted_at_h - 2 / 60, "spot_interruption_warning"))
                    changes.append((node.interrupted_at_h, "terminated"))
                elif run_stop < 24:
                    changes.append((run_stop, "stopped"))
            for hour, state in changes:
                ts = day_start_ms + int(hour * MS_PER_HOUR)
                if start_ms <= ts < end_ms:
                    out.append(InstanceEvent(
                        event_id=f"sim:{node.resource}:{state}:{ts}", ts_ms=ts, provider=node.provider,
                        region=node.region, account="123456789012" if node.provider == "aws" else "demo-project",
                        instance_id=node.resource, instance_type=node.instance_type, state=state,
                        purchase_option=node.purchase_option, workload=wl.name if wl else "unattributed",
                        team=wl.team if wl else "",
                    ))
        return sorted(out, key=lambda e: (e.ts_ms, e.instance_id))

    def focus_bill(self, day_start_ms: int, hours: float, price_usd_per_hour) -> list[dict[str, str]]:
        """The provider's bill for the cloud instances: FOCUS rows, one per instance and running hour.

        ``price_usd_per_hour(node)`` is the instance's hourly price; a partial hour (a start, a
        stop, a spot interruption) is billed by the second, as EC2 and Compute Engine do.
        """
        rows = []
        day = datetime.fromtimestamp(day_start_ms / 1000, tz=timezone.utc)
        for node in self.nodes:
            if node.environment != "cloud":
                continue
            price = price_usd_per_hour(node)
            for hour in range(int(hours)):
                running_s = sum(60 for minute in range(60) if self._running(node, hour + minute / 60))
                if not running_s:
                    continue
                start = day + timedelta(hours=hour)
                cost = (price * running_s / 3600).quantize(Decimal("0.0000000001"))
                wl = node.workloads[0]
                rows.append({
                    "BillingAccountId": "123456789012" if node.provider == "aws" else "01ABCD-234567-89EFGH",
                    "BillingCurrency": "USD", "BillingPeriodStart": day.replace(day=1).strftime("%Y-%m-%d 00:00:00"),
                    "ChargePeriodStart": start.strftime("%Y-%m-%d %H:%M:%S"),
                    "ChargePeriodEnd": (start + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
                    "ChargeCategory": "Usage", "BilledCost": str(cost), "EffectiveCost": str(cost),
                    "ProviderName": "AWS" if node.provider == "aws" else "Google Cloud",
                    "ResourceId": node.resource, "RegionId": node.region, "SkuId": f"{node.instance_type}",
                    "ChargeDescription": f"{node.purchase_option} {node.instance_type} instance hour",
                    "ServiceName": "Amazon Elastic Compute Cloud" if node.provider == "aws" else "Compute Engine",
                    "Tags": json.dumps({"workload": wl.name, "team": wl.team}),
                    "x_PurchaseOption": node.purchase_option,
                })
        return rows

    def run_day(self, day_start_ms: int) -> Iterator[tuple[int, list[GpuSample], list[InstanceEvent]]]:
        """Yield (ts_ms, samples, instance events) for every tick of one simulated day."""
        previous = day_start_ms
        for tick in range(1, MS_PER_DAY // self.interval_ms + 1):
            ts = day_start_ms + tick * self.interval_ms
            yield ts, self.samples_at(ts, day_start_ms), self.instance_events_between(previous, ts, day_start_ms)
            previous = ts


def demo_fleet(seed: int = 42, interval_ms: int = 60_000) -> SimFleet:
    """The fleet of the example configuration (hosts and instance types match its profiles and offers)."""
    a100 = "NVIDIA A100-SXM4-80GB"
    nodes = [
        SimNode("dgx-a100-01", a100, "A100", 8, (
            SimWorkload("ml-train-llm", "ml-platform", tuple(range(8)), base_pct=90),
        )),
        SimNode("dgx-a100-02", a100, "A100", 8, (
            # a vision team's training job whose data pipeline breaks at noon: its 4 GPUs idle at 15 %
            SimWorkload("ml-train-vision", "ml-platform", (0, 1, 2, 3), base_pct=85, drop_at_h=12.0, drop_to_pct=15),
        )),  # GPUs 4-7: idle capacity
        SimNode("hgx-h100-01", "NVIDIA H100 80GB HBM3", "H100", 8, (
            SimWorkload("inference-chat", "product", tuple(range(8)), base_pct=60, diurnal_pct=30),
        ), idle_power_w=90, max_power_w=650),
        SimNode("i-0a1b2c3d4e5f60001", "NVIDIA A100-SXM4-40GB", "A100", 8, (
            SimWorkload("ml-batch-embed", "search", tuple(range(8)), base_pct=88),
        ), environment="cloud", provider="aws", region="us-east-1", instance_type="p4d.24xlarge",
            purchase_option="on_demand"),
        SimNode("gce-research-sweep-1", "NVIDIA A100-SXM4-40GB", "A100", 8, (
            SimWorkload("research-sweep", "research", tuple(range(8)), base_pct=60, allow_spot=True),
        ), environment="cloud", provider="gcp", region="us-central1", instance_type="a2-highgpu-8g",
            purchase_option="spot", runs=((2.0, 9.5), (10.0, 18.0)), interrupted_at_h=9.0),
        SimNode("i-0a1b2c3d4e5f60002", "NVIDIA L4", "L4", 1, (
            SimWorkload("inference-small", "product", (0,), base_pct=45, diurnal_pct=25),
        ), environment="cloud", provider="aws", region="us-east-1", instance_type="g6.xlarge",
            purchase_option="on_demand", idle_power_w=16, max_power_w=72),
    ]
    return SimFleet(nodes, seed=seed, interval_ms=interval_ms)
