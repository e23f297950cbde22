"""Scenario files: a described situation, run through the real pipeline (`hybridspend simulate`).

A scenario names the fleet (on-prem hosts, cloud instances with their starts, stops and spot
interruptions), the workloads with utilization timelines, the live prices, and optionally the
provider's bill.  ``Simulation`` turns it into the events the collectors would publish, in event
time (pure: ``ticks()``, ``instance_events()``, ``price_updates()``, ``bill()``);
``hybridspend.simulate.run_scenario`` starts the local stack, feeds them through the Faust
workers and the sink, and reads back the decisions, the estimate-vs-billed reconciliation and
the totals.

The format is documented in docs/scenarios.md; ``examples/scenarios/`` has
complete ones.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from hybridspend.contracts.config import ConfigError, StrictModel, format_validation_errors
from hybridspend.anomalies.detect import Injected
from hybridspend.contracts.events import CostLine, GpuReading, GpuSample, InstanceEvent, PriceUpdate, WorkloadShare
from hybridspend.costmodel.timeunits import MS_PER_HOUR



class Host(StrictModel):
    name: str = Field(min_length=1, description="host name; must match an on-prem asset profile's hosts")
    gpu_model: str = "NVIDIA A100-SXM4-80GB"
    gpu_class: str = Field(min_length=1)
    gpus: int = Field(gt=0)
    idle_power_w: Decimal = Field(default=Decimal(60), ge=0)
    busy_power_w: Decimal = Field(default=Decimal(400), ge=0, description="draw at 100 % utilization")


class Instance(StrictModel):
    id: str = Field(min_length=1)
    provider: str = "aws"
    region: str = "us-east-1"
    account: str = "123456789012"
    instance_type: str = Field(min_length=1)
    purchase_option: str = "on_demand"
    workload: str = Field(min_length=1, description="the workload its tags name")
    team: str = ""
    runs: list[tuple[float, float]] = Field(min_length=1, description="[start hour, stop hour] periods")
    interrupted_at: float | None = Field(default=None, description="hour of a spot interruption (ends its run)")


class Oscillation(StrictModel):
    low: float = Field(ge=0, le=100)
    high: float = Field(ge=0, le=100)
    period_hours: float = Field(gt=0)


class Workload(StrictModel):
    name: str = Field(min_length=1)
    team: str = ""
    runs_on: str = Field(min_length=1, description="a host name or an instance id")
    gpus: int | None = Field(default=None, gt=0, description="GPUs it occupies (the first N); default all")
    allow_spot: bool = False
    utilization: list[tuple[float, float]] = Field(
        default_factory=list, description="[hour, percent] steps: the percent holds from that hour on")
    oscillate: Oscillation | None = None
    noise_pct: float = Field(default=0, ge=0, description="gaussian noise on every sample (seeded)")

    @model_validator(mode="after")
    def _one_timeline(self) -> "Workload":
        if bool(self.utilization) == (self.oscillate is not None):
            raise ValueError("give exactly one of 'utilization' (steps) or 'oscillate'")
        for hour, pct in self.utilization:
            if not 0 <= pct <= 100:
                raise ValueError(f"utilization at hour {hour} must be in [0, 100], got {pct}")
        return self

    def pct_at(self, hour: float) -> float:
        if self.oscillate is not None:
            o = self.oscillate
            return o.low + (o.high - o.low) * (1 + math.sin(2 * math.pi * hour / o.period_hours)) / 2
        pct = 0.0
        for start, value in sorted(self.utilization):
            if hour >= start:
                pct = value
        return pct


INJECTION_DEFAULTS = {"held_idle": 1.0, "usd_per_busy_gpu_hour": 3.0, "spend_rate": 1.0, "silent": 0.0}


class Injection(StrictModel):
    """An anomaly put into the scenario, to measure the detection (``simulate --json``: precision, recall, delay).

    * ``held_idle``: the workload ``target`` keeps its GPUs busy at ``magnitude`` % (default 1);
    * ``usd_per_busy_gpu_hour``: its utilization divided by ``magnitude`` (default 3: a useful hour costs 3x);
    * ``spend_rate``: ``magnitude`` more instances like the one it runs on (default 1: its spend doubles); the
      anomaly is its team's;
    * ``silent``: the host ``target`` sends no samples.
    """

    kind: Literal["held_idle", "usd_per_busy_gpu_hour", "spend_rate", "silent"]
    target: str = Field(min_length=1, description="a workload (a host for silent)")
    start: float = Field(ge=0, description="hour it starts")
    end: float = Field(gt=0, description="hour it ends")
    magnitude: float | None = Field(default=None, ge=0)

    @property
    def size(self) -> float:
        return INJECTION_DEFAULTS[self.kind] if self.magnitude is None else self.magnitude

    def active(self, hour: float) -> bool:
        return self.start <= hour < self.end


class ScenarioPrice(StrictModel):
    provider: str
    region: str
    instance_type: str
    purchase_option: str = "on_demand"
    usd_per_hour: Decimal = Field(ge=0, description="per instance")
    at: float = Field(default=0, description="hour it takes effect")


class Scenario(StrictModel):
    name: str = Field(min_length=1)
    start: datetime = Field(description="UTC start of simulated time")
    hours: float = Field(gt=0, le=24 * 62)
    sample_interval_seconds: int = Field(default=300, gt=0)
    seed: int = 1
    config: dict[str, Any] = Field(default_factory=dict, description="configuration sections, as in config.yaml")
    hosts: list[Host] = []
    instances: list[Instance] = []
    workloads: list[Workload] = []
    prices: list[ScenarioPrice] = []
    billed: str | None = Field(default=None, description="'from_instances': bill every instance-second at its price")
    anomalies: list[Injection] = Field(default_factory=list, description="anomalies put in, to measure detection")

    @model_validator(mode="after")
    def _consistent(self) -> "Scenario":
        if self.start.tzinfo is None:
            raise ValueError("start must carry a time zone (UTC), e.g. 2026-11-02T00:00:00Z")
        places = {h.name: h.gpus for h in self.hosts} | {i.id: None for i in self.instances}
        for wl in self.workloads:
            if wl.runs_on not in places:
                raise ValueError(f"workload {wl.name!r} runs on {wl.runs_on!r}, which is neither a host nor an instance")
        if self.billed not in (None, "from_instances"):
            raise ValueError(f"billed must be 'from_instances' or absent, got {self.billed!r}")
        for key in ("kafka", "database", "state_dir"):
            if key in self.config:
                raise ValueError(f"config.{key} is set by `hybridspend simulate` itself")
        instances = {i.id for i in self.instances}
        workloads = {wl.name: wl for wl in self.workloads}
        for n, inj in enumerate(self.anomalies):
            where = f"anomalies[{n}] ({inj.kind} {inj.target!r})"
            if not inj.start < inj.end <= self.hours:
                raise ValueError(f"{where}: needs start < end <= hours ({self.hours:g})")
            if inj.kind == "silent":
                if inj.target not in {h.name for h in self.hosts}:
                    raise ValueError(f"{where}: target must be a host")
            elif inj.target not in workloads:
                raise ValueError(f"{where}: target must be a workload")
            elif inj.kind == "spend_rate" and workloads[inj.target].runs_on not in instances:
                raise ValueError(f"{where}: the workload must run on an instance (more of them is the surge)")
            if inj.kind == "spend_rate" and inj.size != int(inj.size):
                raise ValueError(f"{where}: magnitude is a whole number of instances")
        return self

    @property
    def start_ms(self) -> int:
        return int(self.start.astimezone(timezone.utc).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.hours * MS_PER_HOUR)


def load_scenario(path: str | Path) -> Scenario:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the scenario ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(str(path), exc, "scenario")) from None


@dataclass
class Published:
    """One tick of the scenario: what the collectors would send, in order."""

    ts_ms: int
    instance_events: list[InstanceEvent]
    samples: list[GpuSample]


class Simulation:
    """The scenario's events, deterministic from its seed (pure: no I/O)."""

    def __init__(self, scenario: Scenario, catalog) -> None:
        self.s = _with_surges(scenario)
        self.catalog = catalog
        self.interval_ms = scenario.sample_interval_seconds * 1000
        self.rng = random.Random(scenario.seed)

    def _hours(self, ts_ms: int) -> float:
        return (ts_ms - self.s.start_ms) / MS_PER_HOUR

    def running_until(self, inst: Instance) -> list[tuple[int, int]]:
        """The instance's running periods in ms, a spot interruption ending its run."""
        out = []
        for start_h, stop_h in inst.runs:
            stop = min(stop_h, self.s.hours)
            if inst.interrupted_at is not None and start_h <= inst.interrupted_at < stop:
                stop = inst.interrupted_at
            out.append((self.s.start_ms + int(start_h * MS_PER_HOUR), self.s.start_ms + int(stop * MS_PER_HOUR)))
        return out

    def instance_events(self) -> list[InstanceEvent]:
        out = []
        for inst in self.s.instances:
            for (start_ms, stop_ms), (_, stop_h) in zip(self.running_until(inst), inst.runs):
                changes = [(start_ms, "running")]
                interrupted = inst.interrupted_at is not None and start_ms < self.s.start_ms + int(
                    inst.interrupted_at * MS_PER_HOUR) <= stop_ms
                if interrupted:
                    changes += [(stop_ms - 120_000, "spot_interruption_warning"), (stop_ms, "terminated")]
                elif stop_h <= self.s.hours:
                    changes.append((stop_ms, "stopped"))
                for ts, state in changes:
                    out.append(InstanceEvent(
                        event_id=f"scenario:{inst.id}:{state}:{ts}", ts_ms=ts, provider=inst.provider,
                        region=inst.region, account=inst.account, instance_id=inst.id,
                        instance_type=inst.instance_type, state=state, purchase_option=inst.purchase_option,
                        workload=inst.workload, team=inst.team,
                    ))
        return sorted(out, key=lambda e: (e.ts_ms, e.instance_id))

    def _sample(self, ts_ms: int, resource: str, gpu_model: str, gpu_class: str, gpus: int, env: str,
                idle_w: Decimal, busy_w: Decimal, inst: Instance | None) -> GpuSample:
        hour = self._hours(ts_ms - self.interval_ms)
        owners: dict[int, Workload] = {}
        for wl in self.s.workloads:
            if wl.runs_on == resource:
                free = [g for g in range(gpus) if g not in owners]
                for g in free[: wl.gpus or gpus]:
                    owners[g] = wl
        readings = []
        for index in range(gpus):
            wl = owners.get(index)
            pct = 0.0
            if wl is not None:
                pct = wl.pct_at(hour) + (self.rng.gauss(0, wl.noise_pct) if wl.noise_pct else 0.0)
                for inj in self.s.anomalies:
                    if inj.target == wl.name and inj.active(hour):
                        pct = inj.size if inj.kind == "held_idle" else (
                            pct / inj.size if inj.kind == "usd_per_busy_gpu_hour" and inj.size else pct)
                pct = float(round(min(100.0, max(0.0, pct)), 1))
            power_w = idle_w + (busy_w - idle_w) * Decimal(str(pct)) / 100
            readings.append(GpuReading(
                uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{resource}/{index}")), index=index, model=gpu_model,
                gpu_class=gpu_class, utilization_pct=pct, memory_used_mib=0, memory_total_mib=81920,
                power_mw=int(power_w * 1000),
                workloads=[WorkloadShare(wl.name, wl.team, wl.allow_spot)] if wl else [],
            ))
        return GpuSample(
            event_id=f"scenario:{resource}:{ts_ms}", ts_ms=ts_ms, interval_ms=self.interval_ms, resource=resource,
            environment=env, source="scenario", gpus=readings,
            provider=inst.provider if inst else "", region=inst.region if inst else "",
            instance_type=inst.instance_type if inst else "", purchase_option=inst.purchase_option if inst else "",
        )

    def ticks(self) -> Iterator[Published]:
        events = self.instance_events()  # sorted by time
        next_event = 0
        periods = {inst.id: self.running_until(inst) for inst in self.s.instances}
        ts = self.s.start_ms
        while ts <= self.s.end_ms:
            batch = []
            while next_event < len(events) and events[next_event].ts_ms <= ts:
                batch.append(events[next_event])
                next_event += 1
            samples = []
            if ts > self.s.start_ms:
                for host in self.s.hosts:
                    if any(inj.kind == "silent" and inj.target == host.name and inj.active(self._hours(ts - self.interval_ms))
                           for inj in self.s.anomalies):
                        continue
                    samples.append(self._sample(ts, host.name, host.gpu_model, host.gpu_class, host.gpus, "onprem",
                                                host.idle_power_w, host.busy_power_w, None))
                for inst in self.s.instances:
                    # a sample describes [ts - interval, ts): sent when the instance ran all of it
                    if any(start <= ts - self.interval_ms and ts <= stop for start, stop in periods[inst.id]):
                        known = self.catalog.get(inst.provider, inst.instance_type)
                        if known is None:
                            raise ConfigError(f"instance {inst.id}: {inst.provider} {inst.instance_type} is not a "
                                              "known GPU instance type (add it under config.gpu_instance_types)")
                        samples.append(self._sample(ts, inst.id, known.gpu_model, known.gpu_class, known.gpus,
                                                    "cloud", Decimal(60), Decimal(400), inst))
            yield Published(ts, batch, samples)
            ts += self.interval_ms

    def injected(self) -> list[Injected]:
        """The anomalies put in, by the subject the worker reports them under: the workload, its team (spend
        rate) or the host (silent)."""
        teams = {wl.name: wl.team for wl in self.s.workloads}
        hour_ms = lambda h: self.s.start_ms + int(h * MS_PER_HOUR)  # noqa: E731
        return [Injected(inj.kind, teams[inj.target] if inj.kind == "spend_rate" else inj.target,
                         hour_ms(inj.start), hour_ms(inj.end)) for inj in self.s.anomalies]

    def price_updates(self) -> list[PriceUpdate]:
        return [
            PriceUpdate(event_id=f"scenario:{p.provider}:{p.region}:{p.instance_type}:{p.purchase_option}:{p.at}",
                        ts_ms=self.s.start_ms + int(p.at * MS_PER_HOUR), provider=p.provider, region=p.region,
                        instance_type=p.instance_type, purchase_option=p.purchase_option,
                        usd_per_hour=p.usd_per_hour, source="scenario")
            for p in self.s.prices
        ]

    def price_at(self, inst: Instance, ts_ms: int, config) -> Decimal:
        price = None
        for p in sorted(self.s.prices, key=lambda p: p.at):
            if (p.provider, p.region, p.instance_type, p.purchase_option) == (
                    inst.provider, inst.region, inst.instance_type, inst.purchase_option) and \
                    self.s.start_ms + int(p.at * MS_PER_HOUR) <= ts_ms:
                price = p.usd_per_hour
        if price is None:
            offer = config.offer_for(inst.provider, inst.region, inst.instance_type)
            price = offer.usd_per_hour.get(inst.purchase_option) if offer else None
        if price is None:
            raise ConfigError(f"instance {inst.id}: no price for {inst.instance_type} {inst.purchase_option}")
        return price

    def bill(self, config, export_version: str) -> list[CostLine]:
        """The provider's bill: one line per instance and hour, every running second at its price."""
        lines = []
        for inst in self.s.instances:
            known = self.catalog.get(inst.provider, inst.instance_type)
            for start_ms, stop_ms in self.running_until(inst):
                hour_ms = start_ms - (start_ms - self.s.start_ms) % MS_PER_HOUR
                while hour_ms < stop_ms:
                    lo, hi = max(hour_ms, start_ms), min(hour_ms + MS_PER_HOUR, stop_ms)
                    cost = self.price_at(inst, lo, config) * Decimal(hi - lo) / MS_PER_HOUR
                    period = datetime.fromtimestamp(hour_ms / 1000, tz=timezone.utc).replace(
                        day=1, hour=0, minute=0, second=0)
                    lines.append(CostLine(
                        event_id=f"scenario-bill:{inst.id}:{hour_ms}:{lo}", provider=inst.provider,
                        provider_name=inst.provider.upper(), billing_account=inst.account,
                        billing_period_start_ms=int(period.timestamp() * 1000),
                        resource_id=f"arn:aws:ec2:{inst.region}:{inst.account}:instance/{inst.id}"
                        if inst.provider == "aws" else inst.id,
                        charge_period_start_ms=hour_ms, charge_period_end_ms=hour_ms + MS_PER_HOUR,
                        charge_category="Usage", billed_cost_usd=cost, effective_cost_usd=cost,
                        service="compute", sku=inst.instance_type, region=inst.region,
                        instance_type=inst.instance_type, gpu_class=known.gpu_class if known else "",
                        gpus=known.gpus if known else 0, source="scenario", export_version=export_version,
                        tags={"workload": inst.workload, "team": inst.team},
                    ))
                    hour_ms += MS_PER_HOUR
        return lines


def _with_surges(scenario: Scenario) -> Scenario:
    """The scenario with its spend surges as instances: copies of the workload's instance, running through them."""
    instances, workloads = list(scenario.instances), list(scenario.workloads)
    by_id = {i.id: i for i in scenario.instances}
    for n, inj in enumerate(scenario.anomalies):
        if inj.kind != "spend_rate":
            continue
        wl = next(w for w in scenario.workloads if w.name == inj.target)
        for k in range(int(inj.size)):
            copy_id = f"{wl.runs_on}-surge{n}-{k}"
            instances.append(by_id[wl.runs_on].model_copy(update={"id": copy_id, "runs": [(inj.start, inj.end)],
                                                                  "interrupted_at": None}))
            workloads.append(wl.model_copy(update={"runs_on": copy_id}))
    return scenario.model_copy(update={"instances": instances, "workloads": workloads})


def scenario_config(scenario: Scenario, state_dir: Path) -> dict[str, Any]:
    """The configuration the pipeline runs with: the scenario's sections on embedded defaults."""
    data = dict(scenario.config)
    data["state_dir"] = str(state_dir)
    return data


def iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%SZ")
