"""What the Faust agents do with each batch, as plain code: decode, call the domain, encode.

The agents in ``streams.topology`` only move events and table values in and out of these
processors, so every rule here is testable without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import NamedTuple

import logging

from hybridspend.contracts.config import Config
from hybridspend.contracts.events import (
    MAX_LABEL_LEN,
    MAX_OPTIONS,
    Anomaly,
    BreakevenDecision,
    CostWindow,
    DecisionOption,
    EventError,
    GpuSample,
    InstanceEvent,
    LiveSpend,
    Watermark,
)
from hybridspend.contracts.plans import plan_for
from hybridspend.costmodel import (
    IDLE_WORKLOAD,
    REPATRIATE_FILL_IDLE,
    Alternative,
    AttributedGpu,
    CostModelError,
    CrossingState,
    IdleClaim,
    LateSample,
    Market,
    PriceBook,
    Rental,
    ResourceWindows,
    Usage,
    UsageKey,
    WorkloadWindow,
    add_rented_time,
    evaluate,
    price_cloud_usage,
    price_onprem_usage,
)
from hybridspend.costmodel.money import MICRO, micro
from hybridspend.costmodel.sharing import SharingError, apportion_micro
from hybridspend.costmodel.rates import discounted_usd_per_gpu_hour
from hybridspend.costmodel.timeunits import utc_from_ms

from .watch import FORGET_SILENT_MS, FORGET_WORKLOAD_MS, WorkloadWatch, team_partition

log = logging.getLogger(__name__)

# What the worker forgets, in event time (docs/consistency.md, "What the worker forgets"): each rule is decided
# from event times alone and is invisible to every input that is not that late, so one worker or several, killed
# or not, emit the same.
# A resource (host, instance) with nothing open, not running and nothing seen for a week of its partition's event
# time is deleted from the table: the week a silent host is kept (watch.FORGET_SILENT_MS).  Its windows were all
# closed and its instance stopped; if it comes back it starts as a new resource.
RETIRE_RESOURCE_MS = FORGET_SILENT_MS
# a workload's spot policy comes with its samples; a window of rented time a day after the workload's last sample
# on the instance is no longer evidence of it (False, as for a workload never seen), so a policy a day old is
# forgotten: a host keeps those of the workloads it ran in the last day, not of every pod or job it ever ran
POLICY_TTL_MS = 24 * 3_600_000
# the worker's price book keeps, per instance type and purchase option, the prices in force over the five weeks
# before the least advanced of its input partitions' clocks (and the one in force then): a window is priced at its
# start, and no window starts that far behind the clock it closes on (a partition lagging the others by five weeks
# of event time would be priced at the oldest price kept)
PRICE_HISTORY_MS = FORGET_WORKLOAD_MS

@dataclass
class ResourceState:
    """Table value of the usage agent, one per resource (host or instance)."""

    windows: ResourceWindows = field(default_factory=ResourceWindows)
    environment: str = "onprem"
    provider: str = ""
    region: str = ""
    instance_type: str = ""
    purchase_option: str = ""
    # workload -> [policy seen in its samples, the end of the latest of them]: a policy is kept a day (POLICY_TTL_MS)
    allow_spot: dict[str, list] = field(default_factory=dict)
    rental: Rental | None = None  # cloud instances whose state events were seen
    owner: tuple[str, str, str] = ("", "", "")  # (workload, team, gpu class) of the instance, from its events

    def to_dict(self) -> dict:
        return {
            "windows": self.windows.to_dict(),
            "meta": [self.environment, self.provider, self.region, self.instance_type, self.purchase_option],
            "allow_spot": self.allow_spot,
            "rental": self.rental.to_list() if self.rental else None,
            "owner": list(self.owner),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "ResourceState":
        if not data:
            return cls()
        env, provider, region, itype, option = data["meta"]
        rental = data.get("rental")
        windows = ResourceWindows.from_dict(data["windows"])
        # an older table value holds the policies alone: seen at the resource's latest sample
        allow_spot = {w: list(v) if isinstance(v, list) else [bool(v), windows.last_ts_ms]
                      for w, v in data.get("allow_spot", {}).items()}
        return cls(windows, env, provider, region, itype, option, allow_spot,
                   Rental.from_list(rental) if rental else None,
                   tuple(data.get("owner") or ("", "", "")))  # type: ignore[arg-type]

    def allows_spot(self, workload: str, window_start_ms: int) -> bool:
        """The workload's spot policy for its window: as its samples said, unless the latest of them ended a day
        (``POLICY_TTL_MS``) or more before the window (rented time no sample of it covered)."""
        seen = self.allow_spot.get(workload)
        return bool(seen and seen[0] and window_start_ms < seen[1] + POLICY_TTL_MS)

    def forget_policies(self) -> None:
        """Drop the policies no window still to close can read: windows closed from now on start at or after
        ``closed_through_ms``, and a policy a day older than its window is not read (``allows_spot``)."""
        cutoff = self.windows.closed_through_ms - POLICY_TTL_MS
        for workload in [w for w, (_, seen_ms) in self.allow_spot.items() if seen_ms <= cutoff]:
            del self.allow_spot[workload]

    def dormant(self) -> bool:
        """Nothing open, nothing running: the resource could be forgotten (``PartitionClock.dormant``)."""
        return not self.windows.open and (self.rental is None or (
            not self.rental.by_window and self.rental.running_since_ms is None))

    def last_activity_ms(self) -> int:
        """The latest event time anything of the resource reached: its samples, its closed windows, its rental."""
        latest = max(self.windows.last_ts_ms, self.windows.closed_through_ms)
        if self.rental is not None:
            latest = max(latest, self.rental.last_event_ms, self.rental.accounted_ms)
        return latest

    def complete_through_ms(self, partition_watermark_ms: int) -> int:
        """Event time up to which this resource's windows are complete.

        An owned host's samples arrive in order, so everything before its latest sample is
        complete.  A cloud instance's state changes travel on another topic, in no order relative
        to its samples: its windows wait for the partition's watermark, which covers both topics.
        Closed on the samples alone, an instance whose stop was not read yet would be charged on,
        and one whose start was not read yet would lose the rented time its samples do not cover.
        """
        if self.environment == "cloud" or self.rental is not None:
            return partition_watermark_ms
        return max(self.windows.last_start_ms, partition_watermark_ms)


class UsageProcessor:
    """GPU samples and instance state changes -> per-resource usage windows -> priced cost windows."""

    def __init__(self, config: Config, prices: PriceBook | None = None) -> None:
        self.config = config
        self.catalog = config.catalog()
        self.prices = prices if prices is not None else PriceBook()
        self.window_ms = config.thresholds.window_seconds * 1000

    def cloud_usd_per_gpu_hour(self, provider: str, region: str, instance_type: str, option: str,
                               at_ms: int) -> Decimal | None:
        """Live price in force at ``at_ms`` (with the configured contract discount), else the configured offer."""
        offer = self.config.offer_for(provider, region, instance_type)
        live = self.prices.usd_per_hour(provider, region, instance_type, option, at_ms)
        if live is not None:
            known = self.catalog.get(provider, instance_type)
            gpus = offer.gpus_per_instance if offer else (known.gpus if known else 0)
            if gpus:
                return discounted_usd_per_gpu_hour(live, offer.discount_pct if offer else Decimal(0), gpus)
        return offer.offer().usd_per_gpu_hour(option) if offer else None

    def _check_priceable(self, provider: str, region: str, instance_type: str, option: str, at_ms: int) -> None:
        if self.cloud_usd_per_gpu_hour(provider, region, instance_type, option, at_ms) is None:
            raise EventError(f"no price for {provider} {region} {instance_type} {option}")

    def add(self, state: ResourceState, sample: GpuSample) -> bool:
        """Count a sample; raise EventError when it cannot be priced; False for a replay."""
        option = sample.purchase_option or ("on_demand" if sample.environment == "cloud" else "")
        if sample.environment == "onprem":
            if self.config.asset_for_host(sample.resource) is None:
                raise EventError(f"no on-prem asset profile matches host {sample.resource!r}")
        else:
            self._check_priceable(sample.provider, sample.region, sample.instance_type, option, sample.ts_ms)
        state.environment = sample.environment
        state.provider, state.region = sample.provider, sample.region
        state.instance_type, state.purchase_option = sample.instance_type, option
        readings = []
        for gpu in sample.gpus:
            for share in gpu.workloads:
                state.allow_spot[share.workload] = [share.allow_spot, sample.ts_ms]
            readings.append(
                AttributedGpu(gpu.gpu_class, gpu.utilization_pct, gpu.power_mw,
                           tuple((s.workload, s.team) for s in gpu.workloads), gpu.parent_uuid,
                           gpu.compute_fraction, gpu.energy_mj, tuple(s.utilization_pct for s in gpu.workloads))
            )
        try:
            return state.windows.add_sample(
                ts_ms=sample.ts_ms, interval_ms=sample.interval_ms, window_ms=self.window_ms,
                environment=sample.environment, resource=sample.resource, gpus=readings,
            )
        except SharingError as exc:
            raise EventError(f"{sample.resource}: {exc}") from None
        except LateSample as exc:
            raise EventError(str(exc)) from None

    def add_instance_event(self, state: ResourceState, event: InstanceEvent) -> bool:
        """Follow a cloud instance's state: its rented time is what the provider bills."""
        known = self.catalog.get(event.provider, event.instance_type)
        offer = self.config.offer_for(event.provider, event.region, event.instance_type)
        if known is None and offer is None:
            raise EventError(f"{event.provider} instance type {event.instance_type!r} is not a known GPU type "
                             "(add it under gpu_instance_types)")
        self._check_priceable(event.provider, event.region, event.instance_type, event.purchase_option, event.ts_ms)
        gpus, gpu_class = (offer.gpus_per_instance, offer.gpu_class) if offer else (known.gpus, known.gpu_class)
        if state.rental is None:
            state.rental = Rental(gpus=gpus)
        # the instance's events travel apart from its samples: windows the samples already closed stay closed
        state.rental.not_before(state.windows.closed_through_ms)
        if not state.rental.on_event(event.ts_ms, event.state, self.window_ms):
            return False
        state.environment = "cloud"
        state.provider, state.region = event.provider, event.region
        state.instance_type, state.purchase_option = event.instance_type, event.purchase_option
        state.owner = (event.workload, event.team, gpu_class)
        return True

    def live_spend(self, state: ResourceState, event: InstanceEvent) -> LiveSpend:
        """What the instance costs from ``event`` on (after ``add_instance_event`` took it)."""
        rental = state.rental
        assert rental is not None
        workload, team, gpu_class = state.owner
        running = rental.running_since_ms is not None
        rate = self.cloud_usd_per_gpu_hour(event.provider, event.region, event.instance_type, event.purchase_option,
                                           event.ts_ms)
        assert rate is not None  # checked when the event was added
        return LiveSpend(
            event_id=f"{event.instance_id}|{event.ts_ms}", ts_ms=event.ts_ms, instance_id=event.instance_id,
            provider=event.provider, region=event.region, instance_type=event.instance_type,
            purchase_option=event.purchase_option, workload=workload, team=team, gpu_class=gpu_class,
            gpus=rental.gpus, state=("reclaiming" if rental.reclaim_at_ms else "running") if running else "stopped",
            usd_per_hour=micro(rate * rental.gpus) if running else Decimal(0),
            running_since_ms=rental.running_since_ms, ends_at_ms=rental.reclaim_at_ms,
        )

    def close(self, state: ResourceState, resource: str, partition_watermark_ms: int) -> list[CostWindow]:
        """The resource's windows that are complete at the partition's watermark, priced."""
        watermark_ms = state.complete_through_ms(partition_watermark_ms)
        closed = state.windows.close(watermark_ms, self.window_ms)
        if state.rental is not None:
            workload, team, gpu_class = state.owner
            owner = UsageKey(0, workload, team, "cloud", gpu_class, resource)
            closed = add_rented_time(closed, state.rental.close(watermark_ms, self.window_ms), owner)
        # the rows of one window are the resource's GPUs split among workloads and idle: round them together,
        # so that they add up to the resource's cost to the micro-dollar
        exact = [self.exact_cost(state, key, usage) for key, usage in closed]
        rows_of_window: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(closed):
            rows_of_window.setdefault(key.window_start_ms, []).append(i)
        costs = [Decimal(0)] * len(closed)
        for rows in rows_of_window.values():
            for i, cost in zip(rows, apportion_micro([exact[i] for i in rows])):
                costs[i] = cost
        out = [self.cost_window(state, key, usage, cost) for (key, usage), cost in zip(closed, costs)]
        state.forget_policies()
        return out

    def close_in(self, clock: "PartitionClock", state: ResourceState, resource: str,
                 partition_watermark_ms: int) -> list[CostWindow]:
        """``close``, and the resource's place in its partition's clock: open, or dormant (nothing open, nothing
        running) until it comes back or is forgotten (``PartitionClock.retired_resources``)."""
        closed = self.close(state, resource, partition_watermark_ms)
        if not state.dormant():
            clock.open.add(resource)
        else:
            clock.open.discard(resource)
            clock.dormant[resource] = [state.last_activity_ms(),
                                       int(state.environment == "cloud" or state.rental is not None)]
        return closed

    def exact_cost(self, state: ResourceState, key: UsageKey, usage: Usage) -> Decimal:
        if key.environment == "onprem":
            asset = self.config.asset_for_host(key.resource)
            assert asset is not None  # checked when the sample was added
            return price_onprem_usage(usage, asset.gpu_cost(), utc_from_ms(key.window_start_ms))
        rate = self.cloud_usd_per_gpu_hour(state.provider, state.region, state.instance_type,
                                           state.purchase_option or "on_demand", key.window_start_ms)
        assert rate is not None  # checked when the sample or instance event was added
        return price_cloud_usage(usage, rate)

    def cost_window(self, state: ResourceState, key: UsageKey, usage: Usage, cost_usd: Decimal) -> CostWindow:
        return CostWindow(
            event_id=CostWindow.make_id(key.resource, key.workload, key.environment, key.gpu_class, key.window_start_ms),
            workload=key.workload, team=key.team, allow_spot=state.allows_spot(key.workload, key.window_start_ms),
            environment=key.environment, gpu_class=key.gpu_class, resource=key.resource,
            window_start_ms=key.window_start_ms, window_ms=self.window_ms,
            allocated_gpu_ms=usage.allocated_gpu_ms, busy_gpu_ms=usage.busy_gpu_ms,
            metered_gpu_ms=usage.metered_gpu_ms, energy_mj=usage.energy_mj, sample_count=usage.sample_count,
            first_ms=usage.first_ms, last_ms=usage.last_ms, cost_usd=cost_usd,
            provider=state.provider if key.environment == "cloud" else "",
            instance_type=state.instance_type if key.environment == "cloud" else "",
            purchase_option=state.purchase_option if key.environment == "cloud" else "",
        )


class ResourceWindow(NamedTuple):
    """One resource's share of a workload's open window (a plain list in the table's JSON)."""

    allocated_gpu_ms: int
    busy_gpu_ms: int
    cost_usd: str  # exact, as text
    first_ms: int
    last_ms: int
    window_ms: int
    provider: str = ""  # a cloud resource's provider and purchase option (older table values have neither)
    purchase_option: str = ""


@dataclass
class WorkloadState:
    """Table value of the decision agent, one per workload: open windows and hysteresis states (each with
    the windows of its current streak, at most the longest evidence horizon)."""

    open: dict[str, dict[str, ResourceWindow]] = field(default_factory=dict)  # "env|class|start" -> resource ->
    crossing: dict[str, CrossingState] = field(default_factory=dict)  # "env|class" -> state
    team: str = ""
    allow_spot: bool = False
    closed_through_ms: dict[str, int] = field(default_factory=dict)  # "env|class" -> last closed window start
    watch: dict[str, WorkloadWatch] = field(default_factory=dict)  # "env|class" -> its anomaly detectors

    def to_dict(self) -> dict:
        return {
            "open": {key: {r: list(w) for r, w in resources.items()} for key, resources in self.open.items()},
            "crossing": {k: v.to_dict() for k, v in self.crossing.items()},
            "team": self.team,
            "allow_spot": self.allow_spot,
            "closed_through_ms": self.closed_through_ms,
            "watch": {k: v.to_dict() for k, v in self.watch.items()},
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> "WorkloadState":
        if not data:
            return cls()
        return cls(
            open={key: {r: ResourceWindow(*w) for r, w in resources.items()}
                  for key, resources in data["open"].items()},
            crossing={k: CrossingState.from_dict(v) for k, v in data["crossing"].items()},
            team=data["team"],
            allow_spot=data["allow_spot"],
            closed_through_ms=dict(data["closed_through_ms"]),
            watch={k: WorkloadWatch.from_dict(v) for k, v in data.get("watch", {}).items()},
        )

    def last_closed_ms(self) -> int | None:
        """The start of the latest window closed, in any environment and GPU class (None: none yet)."""
        return max(self.closed_through_ms.values(), default=None)

    def gone_by(self, at_ms: int) -> bool:
        """Whether the workload is gone at ``at_ms`` (a window's start, or a watermark a window beyond it):
        nothing open and no window closed in the ``FORGET_WORKLOAD_MS`` before."""
        last = self.last_closed_ms()
        return not self.open and last is not None and at_ms >= last + FORGET_WORKLOAD_MS


@dataclass
class PartitionClock:
    """Per partition of a consumed topic: event-time progress and what it must remember across restarts.

    ``sources`` holds the event time reached by every input: for the usage agent, each input
    topic (samples, instance events); for the decision agent, each upstream usage partition.
    ``open`` lists the keys with open windows; ``idle`` (decision agent) the idle owned capacity
    the upstream partitions reported.  ``offsets`` is the next record expected from each input
    topic's partition: the tables, not the consumer's committed offsets, say what was applied.
    ``pending`` (decision agent): the upstream sources whose latest watermark said they still had
    input to read.  ``cloud`` (decision agent): every cloud workload's windows, the claims on idle
    owned capacity that every decision partition weighs alike.
    """

    open: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)  # upstream source (or input topic) -> its event time
    idle: dict[str, int] = field(default_factory=dict)  # "window_start|gpu_class|resource" -> idle GPU-ms
    offsets: dict[str, int] = field(default_factory=dict)  # input topic -> next offset to apply
    pending: set[str] = field(default_factory=set)
    # "window_start|resource|gpu_class|workload" -> [allocated GPU-ms, cost in micro-dollars]
    cloud: dict[str, list[int]] = field(default_factory=dict)
    # decision agent, the teams whose spend this partition judges (streams.watch): "window_start|team|resource|
    # workload" -> [window ms, cost in micro-dollars], and every such team seen
    spend: dict[str, list[int]] = field(default_factory=dict)
    teams: set[str] = field(default_factory=set)
    # usage agent, on-prem hosts: host -> [end of its latest sample, its cost in micro-dollars an hour], and the
    # silent ones: host -> [silent since, detected at]
    seen: dict[str, list[int]] = field(default_factory=dict)
    silent: dict[str, list[int]] = field(default_factory=dict)
    silence_checked_ms: int = 0  # the samples' event time the silent hosts were last looked for at
    # the keys of the partition's table with nothing open (resources, workloads), until they are forgotten:
    # key -> [the event time of their last activity, 1 for a cloud resource (its instance events count too)]
    dormant: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"open": sorted(self.open), "sources": self.sources, "idle": self.idle, "offsets": self.offsets,
                "pending": sorted(self.pending), "cloud": self.cloud, "spend": self.spend,
                "teams": sorted(self.teams), "seen": self.seen, "silent": self.silent,
                "silence_checked_ms": self.silence_checked_ms, "dormant": self.dormant}

    @classmethod
    def from_dict(cls, data: dict | None) -> "PartitionClock":
        if not data:
            return cls()
        return cls(set(data["open"]), dict(data["sources"]), dict(data["idle"]), dict(data.get("offsets", {})),
                   set(data.get("pending", ())), dict(data.get("cloud", {})), dict(data.get("spend", {})),
                   set(data.get("teams", ())), {k: list(v) for k, v in data.get("seen", {}).items()},
                   {k: list(v) for k, v in data.get("silent", {}).items()}, data.get("silence_checked_ms", 0),
                   {k: list(v) for k, v in data.get("dormant", {}).items()})

    def retired_resources(self, samples_topic: str) -> list[str]:
        """The dormant resources of a usage partition to forget now (``RETIRE_RESOURCE_MS``), removed from
        ``dormant``.  An owned host is judged by the samples' event time; a cloud resource by the slower of the
        partition's inputs that ever moved, so that neither input can still bring it anything that old."""
        samples_ms = self.sources.get(samples_topic, 0)
        moved = [ts for ts in self.sources.values() if ts > 0]
        cloud_ms = min(moved) if moved else 0
        gone = sorted(key for key, (last_ms, cloud) in self.dormant.items()
                      if last_ms + RETIRE_RESOURCE_MS <= (cloud_ms if cloud else samples_ms))
        for key in gone:
            del self.dormant[key]
        return gone

    def take(self, topic: str, offset: int, log_start: int | None = None) -> str:
        """Where the record at ``offset`` of ``topic`` (this partition) stands: ``"next"`` (counted
        now, apply it), ``"applied"`` (a replay after a restart: skip it) or ``"gap"`` (records
        before it never arrived; ``offsets[topic]`` is the first of them).  For a topic this
        partition never applied a record of, the first record expected is ``log_start``, where
        its log begins (None: whichever comes first)."""
        expected = self.offsets.get(topic, log_start)
        if expected is not None and offset != expected:
            if offset > expected and topic not in self.offsets:
                self.offsets[topic] = expected  # the gap starts at the log's start
            return "applied" if offset < expected else "gap"
        self.offsets[topic] = offset + 1
        return "next"

    def advance(self, source: str, ts_ms: int) -> bool:
        if ts_ms <= self.sources.get(source, -1):
            return False
        self.sources[source] = ts_ms
        return True

    def applied_through(self, topic: str, highwater: int | None) -> bool:
        """Whether every record of ``topic`` (this partition) below ``highwater``, the end of its log
        as last seen by the consumer (None: not known), has been applied.

        Only such an input may be counted as stale: one with records still unread is silent
        because the worker is (paused, rebalancing, starved of CPU), and closing windows past it
        would make the totals depend on that timing.
        """
        return highwater is not None and self.offsets.get(topic, 0) >= highwater

    def all_quiet(self, silent: set[str], caught_up: bool) -> bool:
        """Whether the upstream sources may stop holding each other back (decision agent): every one
        silent for a while, none with input left to read when it last reported, and every record
        of this partition applied (``caught_up``): the end of the data, not a worker that is down,
        rebalancing or slow, whose windows would then be left out of decisions already made.
        """
        return caught_up and bool(self.sources) and silent >= self.sources.keys() and not self.pending

    def watermark(self, expected_sources: int, stale: set[str] = frozenset(), waited_out: bool = False) -> int | None:
        """The event time before which every upstream source is complete (None: still waiting).

        Until ``expected_sources`` have reported, nothing closes unless ``waited_out``; sources in
        ``stale`` (silent for a while, in wall-clock time) do not hold the others back.
        """
        if not self.sources or (len(self.sources) < expected_sources and not waited_out):
            return None
        live = [ts for source, ts in self.sources.items() if source not in stale]
        return min(live) if live else max(self.sources.values())


class DecisionProcessor:
    """Cost windows of one workload (all resources) -> closed workload windows -> decisions.

    Windows close on the watermark that upstream partitions report, so a workload's window is
    decided only once every resource that could add to it has moved past it: one worker or two,
    fast or slow, the same windows are compared.
    """

    def __init__(self, config: Config, prices: PriceBook | None = None) -> None:
        self.config = config
        self.prices = prices if prices is not None else PriceBook()
        self._base_market = config.market()
        self._markets: dict[tuple, Market] = {}
        self.thresholds = config.thresholds.domain()
        self.window_ms = config.thresholds.window_seconds * 1000
        # (window start, claims, idle entries) -> (the clock, its claims, their grants): a window's allocation,
        # made once for all the cloud workloads a partition closes in it
        self._grants: dict[tuple, tuple] = {}
        self.watching = config.anomalies.enabled
        self.anomaly_settings = config.anomalies.settings(config.alerts.checks.collector_silence_minutes)

    def market_at(self, at_ms: int) -> Market:
        """The configured market with the live prices in force at ``at_ms``."""
        offers = tuple(self.prices.apply(o, at_ms) for o in self._base_market.offers)
        key = tuple((o.provider, o.region, o.instance_type, tuple(sorted(o.usd_per_hour.items()))) for o in offers)
        market = self._markets.get(key)
        if market is None:
            if len(self._markets) > 1000:
                self._markets.clear()
            market = self._markets[key] = replace(self._base_market, offers=offers)
        return market

    def add(self, state: WorkloadState, cw: CostWindow, anomalies: list[Anomaly] | None = None) -> bool:
        """Record a resource's window; replays overwrite; windows already closed are ignored.  A window of a
        workload gone for ``FORGET_WORKLOAD_MS`` starts it again as a new one (``retire``: what that ends goes to
        ``anomalies``), whether or not its table value was deleted meanwhile (``retired_workloads``)."""
        subject = f"{cw.environment}|{cw.gpu_class}"
        if cw.workload == IDLE_WORKLOAD:
            return False  # idle capacity is a cost of its own (stored by the sink), never a workload to move
        if state.gone_by(cw.window_start_ms):
            ended = self.retire(cw.workload, state)
            if anomalies is not None:
                anomalies.extend(ended)
        if cw.window_start_ms <= state.closed_through_ms.get(subject, -1):
            return False
        state.team = cw.team
        state.allow_spot = cw.allow_spot
        key = f"{subject}|{cw.window_start_ms}"
        state.open.setdefault(key, {})[cw.resource] = ResourceWindow(
            cw.allocated_gpu_ms, cw.busy_gpu_ms, str(cw.cost_usd), cw.first_ms, cw.last_ms, cw.window_ms,
            cw.provider or "", cw.purchase_option or "")
        return True

    def retire(self, workload: str, state: WorkloadState) -> list[Anomaly]:
        """Forget a gone workload (``WorkloadState.gone_by``): ``state`` becomes a new workload's, and the episodes
        it had under way end where they were last seen (what its next window would have said, had it come)."""
        ended = []
        if self.watching:
            for subject, watch in sorted(state.watch.items()):
                env, gpu_class = subject.split("|", 1)
                ended.extend(watch.forget(workload, state.team, env, gpu_class))
        fresh = WorkloadState()
        state.open, state.crossing, state.team, state.allow_spot = fresh.open, fresh.crossing, fresh.team, False
        state.closed_through_ms, state.watch = fresh.closed_through_ms, fresh.watch
        return ended

    def retired_workloads(self, clock: PartitionClock, watermark_ms: int) -> list[str]:
        """The dormant workloads of a decision partition gone by ``watermark_ms`` (removed from ``dormant``).
        A window beyond them: any window of theirs still to come starts after ``FORGET_WORKLOAD_MS``, so ``add``
        would start them again anyway, and deleting them now changes nothing but the table's size."""
        gone = sorted(w for w, (last_ms, _) in clock.dormant.items()
                      if last_ms + FORGET_WORKLOAD_MS + self.window_ms <= watermark_ms)
        for workload in gone:
            del clock.dormant[workload]
        return gone

    def on_watermark(self, clock: PartitionClock, wm: Watermark, partition: int = 0, partitions: int = 1) -> None:
        clock.advance(wm.source, wm.ts_ms)
        (clock.pending.add if wm.pending else clock.pending.discard)(wm.source)
        for ws, gpu_class, resource, idle_ms in wm.idle or ():
            clock.idle[f"{ws}|{gpu_class}|{resource}"] = idle_ms
        for ws, workload, gpu_class, resource, allocated_ms, cost_umicro in wm.cloud or ():
            clock.cloud[f"{ws}|{resource}|{gpu_class}|{workload}"] = [allocated_ms, cost_umicro]
        if self.watching:
            for ws, team, resource, workload, window_ms, cost_umicro in wm.spend or ():
                if team and team_partition(team, partitions) == partition:  # the key only needs to be unique
                    clock.spend[f"{ws}|{len(team)}|{team}|{len(resource)}|{resource}|{workload}"] = [
                        window_ms, cost_umicro, team]
                    clock.teams.add(team)

    def idle_gpus(self, clock: PartitionClock, window_start_ms: int) -> dict[str, Decimal]:
        """Owned GPUs (GPU-equivalents) of each class that sat idle through the window."""
        idle: dict[str, Decimal] = {}
        for key, idle_ms in clock.idle.items():
            ws, gpu_class, _ = key.split("|", 2)
            if int(ws) == window_start_ms:
                idle[gpu_class] = idle.get(gpu_class, Decimal(0)) + Decimal(idle_ms) / self.window_ms
        return idle

    def idle_granted(self, clock: PartitionClock, window: WorkloadWindow, market: Market) -> dict[str, Decimal]:
        """The idle owned GPUs the window's workload may fill: the window's idle capacity promised once among
        every cloud workload's claim on it (``Market.allocate_idle``), the same on every partition.  The
        allocation of a window is made once for all the workloads a partition closes in it."""
        own_key, own = (window.workload, window.gpu_class), [window.allocated_gpu_ms, int(window.cost_usd / MICRO)]
        key = (window.window_start_ms, len(clock.cloud), len(clock.idle))
        cached = self._grants.get(key)
        if cached is None or cached[0] is not clock or cached[1].get(own_key) != own:
            claims = self._claims(clock, window.window_start_ms)
            # the window itself, as this partition closed it (an upstream worker of an older version sends none)
            claims[own_key] = own
            grants = market.allocate_idle(
                self.idle_gpus(clock, window.window_start_ms),
                [IdleClaim(w, c, a, window.window_ms, Decimal(u) * MICRO) for (w, c), (a, u) in sorted(claims.items())],
                self.thresholds.margin)
            if len(self._grants) > 64:
                self._grants.clear()
            cached = self._grants[key] = (clock, claims, grants)
        return cached[2].get(own_key, {})

    @staticmethod
    def _claims(clock: PartitionClock, window_start_ms: int) -> dict[tuple[str, str], list[int]]:
        """Every cloud workload's claim in the window, summed over its resources: [allocated GPU-ms, micro-dollars]."""
        claims: dict[tuple[str, str], list[int]] = {}
        for key, (allocated_ms, cost_umicro) in clock.cloud.items():
            ws, _, gpu_class, workload = key.split("|", 3)
            if int(ws) == window_start_ms:
                claim = claims.setdefault((workload, gpu_class), [0, 0])
                claim[0] += allocated_ms
                claim[1] += cost_umicro
        return claims

    def forget_idle(self, clock: PartitionClock, watermark_ms: int) -> None:
        for table in (clock.idle, clock.cloud, clock.spend):
            for key in [k for k in table if int(k.split("|", 1)[0]) + self.window_ms <= watermark_ms]:
                del table[key]

    def judge_teams(self, clock: PartitionClock, watermark_ms: int, team_state, changed,
                    retired=None) -> list[Anomaly]:
        """The spend of this partition's teams in every window the watermark completed (``team_state(team)``:
        the team's ``TeamState``; ``changed(team, state)`` for those it moved on, ``retired(team)`` for those
        forgotten: their table value is deleted); call before ``forget_idle``."""
        if not self.watching:
            return []
        by_team: dict[str, dict[int, int]] = {}
        waiting: set[str] = set()  # teams with spend in windows not complete yet
        for key, (_, cost_umicro, team) in clock.spend.items():
            ws = int(key.split("|", 1)[0])
            if ws + self.window_ms <= watermark_ms:
                spent = by_team.setdefault(team, {})
                spent[ws] = spent.get(ws, 0) + cost_umicro
            else:
                waiting.add(team)
        out = []
        for team in sorted(clock.teams):
            spent = by_team.get(team, {})
            state = team_state(team)
            before = state.closed_through_ms
            out.extend(state.judge(team, spent, min(spent, default=None), self.window_ms, watermark_ms,
                                   self.anomaly_settings))
            if state.retired:  # spent nothing for weeks: forgotten, judged as a new team when it spends again
                if retired is not None:
                    retired(team)
                if team not in waiting:
                    clock.teams.discard(team)
            elif state.closed_through_ms != before:
                changed(team, state)
        return out

    def close(self, workload: str, state: WorkloadState, watermark_ms: int,
              clock: PartitionClock | None = None, anomalies: list[Anomaly] | None = None) -> list[BreakevenDecision]:
        """Close the windows that end by the watermark, in event-time order; the anomalies they show go to
        ``anomalies``."""
        ready = []
        for key, resources in state.open.items():
            env, gpu_class, start = key.rsplit("|", 2)
            window_ms = next(iter(resources.values())).window_ms
            if int(start) + window_ms <= watermark_ms:
                ready.append((int(start), env, gpu_class, key, window_ms))
        decisions = []
        for start, env, gpu_class, key, window_ms in sorted(ready):
            resources = state.open.pop(key)
            subject = f"{env}|{gpu_class}"
            state.closed_through_ms[subject] = max(state.closed_through_ms.get(subject, -1), start)
            coverage = sum(
                (min(Decimal(1), Decimal(r.last_ms - r.first_ms) / window_ms) for r in resources.values()), Decimal(0)
            ) / len(resources)
            window = WorkloadWindow(
                workload=workload, team=state.team, environment=env, gpu_class=gpu_class,
                window_start_ms=start, window_ms=window_ms,
                allocated_gpu_ms=sum(r.allocated_gpu_ms for r in resources.values()),
                busy_gpu_ms=sum(r.busy_gpu_ms for r in resources.values()),
                cost_usd=sum((Decimal(r.cost_usd) for r in resources.values()), Decimal(0)),
                coverage=coverage,
                provider=_the_one({r.provider for r in resources.values()}),
                purchase_option=_the_one({r.purchase_option for r in resources.values()}),
            )
            crossing = state.crossing.setdefault(subject, CrossingState())
            market = self.market_at(start)
            idle = self.idle_granted(clock, window, market) if clock is not None and env == "cloud" else None
            alternative = market.alternative(
                window, state.allow_spot, idle, self.config.thresholds.horizon_for(self.config.onprem_assets, gpu_class))
            decision = evaluate(crossing, window, alternative, self.thresholds, self._planner(window, market, alternative))
            if decision is not None:
                decisions.append(self._event(decision))
            if anomalies is not None and self.watching:
                anomalies.extend(state.watch.setdefault(subject, WorkloadWatch()).judge(window, self.anomaly_settings))
        if clock is not None and not state.open:  # dormant until it comes back or is forgotten (retired_workloads)
            clock.open.discard(workload)
            last_ms = state.last_closed_ms()
            if last_ms is not None:
                clock.dormant[workload] = [last_ms, 0]
        return decisions

    def _planner(self, window: WorkloadWindow, market: Market, alternative: Alternative | None):
        """The options of the window's workload for hours of demand (``contracts.plans.plan_for``), at the
        prices in force, with the idle owned GPUs promised to it; none when they cannot be priced (an absurd
        peak), never a stopped stream."""
        fill = None
        if alternative is not None and alternative.kind == REPATRIATE_FILL_IDLE:
            fill = (alternative.gpu_class, alternative.usd_per_gpu_hour)

        def plan(hours):
            try:
                return plan_for(self.config, window.workload, window.environment, window.gpu_class, hours,
                                window.provider, offers=market.offers, fill_idle=fill).options
            except CostModelError as exc:
                log.warning("%s: no options table: %s", window.workload, exc)
                return []
        return plan

    def _event(self, decision) -> BreakevenDecision:
        th = self.config.thresholds
        # at most MAX_OPTIONS rows: staying and the cheapest others by present value, in their own order
        kept = set(sorted(range(1, len(decision.options)),
                          key=lambda i: (decision.options[i].result.npv_usd, i))[:MAX_OPTIONS - 1]) | {0}
        options = [DecisionOption(
            label=o.label[:MAX_LABEL_LEN], option=o.result.option, quantity=o.result.quantity,
            unit=o.result.unit[:MAX_LABEL_LEN], term_months=o.result.term_months,
            upfront_usd=micro(o.result.upfront_usd), monthly_usd=micro(o.result.monthly_usd),
            total_usd=micro(o.result.total_usd), npv_usd=micro(o.result.npv_usd),
            breakeven_month=o.result.breakeven_month)
            for i, o in enumerate(decision.options) if i in kept]
        return BreakevenDecision(
            event_id=decision.decision_id, workload=decision.workload, team=decision.team,
            from_env=decision.from_env, to_env=decision.to_env, kind=decision.kind,
            gpu_class=decision.gpu_class, window_start_ms=decision.window_start_ms,
            window_end_ms=decision.window_end_ms,
            current_usd_per_busy_gpu_hour=_opt_micro(decision.current_usd_per_busy_gpu_hour),
            alternative_usd_per_busy_gpu_hour=_opt_micro(decision.alternative_usd_per_busy_gpu_hour),
            utilization=micro(decision.utilization), monthly_savings_usd=micro(decision.monthly_savings_usd),
            confidence=micro(decision.confidence), alternative_label=decision.alternative_label,
            gpus_needed=decision.gpus_needed, reason=decision.reason,
            payback_months=_opt_micro(decision.payback_months),
            monthly_savings_low_usd=_opt_micro(decision.monthly_savings_low_usd),
            monthly_savings_high_usd=_opt_micro(decision.monthly_savings_high_usd),
            evidence_hours=micro(decision.evidence_hours), nodes_needed=decision.nodes_needed,
            instances_needed=decision.instances_needed, options=options,
            horizon_months=th.horizon_for(self.config.onprem_assets, decision.gpu_class) if options else None,
            discount_rate_pct=th.discount_rate_pct if options else None,
        )


def _the_one(values: set[str]) -> str:
    """The value all of a window's resources share, else "" (several, or not known)."""
    return next(iter(values)) if len(values) == 1 else ""


def _opt_micro(value: Decimal | None) -> Decimal | None:
    return None if value is None else micro(value)
