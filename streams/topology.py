"""The Faust topology on one screen: topics, tables, agents.

    gpu-samples ─┐ (key: resource)                        prices (every worker reads all of them)
                 ├─ usage ──> cost-windows (key: workload) ──> decide ──> decisions (key: workload)
    instance- ───┘   │           + watermarks to every partition
    events           ├─> live-spend (key: instance id)
                     └─> dead-letter (with the reason)

* ``usage`` joins the two co-partitioned input topics by resource.  Per resource (the
  ``resource-windows`` table) it keeps the open event-time windows of the GPU samples and, for
  cloud instances, the rented time from their state changes (a spot interruption ends it at
  the reclaim second); each state change also goes out at once to ``live-spend`` (what the
  instance costs per hour from then on).  It closes a window once the resource (an owned host,
  whose samples are in order) or its partition less ``grace`` has moved past it, prices it
  (owned GPUs: capex + energy + upkeep; cloud: the live price in force at the window's start,
  else the configured offer) and emits it keyed by workload.
  After each batch it sends a watermark per input partition to every ``cost-windows``
  partition, carrying the owned capacity that sat idle in the windows it closed and the cloud
  windows it closed (every claim on that capacity).
* ``decide`` gathers each workload's windows from all resources (``workload-windows``), closes
  a window once every upstream partition's watermark has passed it, compares it with the
  other environment (migrate to the cheapest allowed offer; repatriate into idle owned GPUs
  at their marginal cost, each idle GPU promised to one workload however the workloads are
  partitioned, or by buying GPUs or committing) and emits a decision once a crossing has lasted
  the dwell.

Both agents take batches and write each table key once per batch, because every table update
is a changelog write (docs/design.md, "Throughput").  Outputs are acknowledged by the broker before the tables
move on, and the tables' changelog before the batch's offsets can be committed: the committed
offset of each partition is the position its tables hold (``commit_only_applied``), never what
Faust's streams acknowledged, so a worker killed or rebalanced at any point replays into the
same results.  Per-partition
progress lives in the tables too (``~clock|N`` keys: event time and the next offset of each
input), so a restarted worker resumes it and skips the records its tables already hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import faust

from hybridspend.contracts.config import Config
from hybridspend.contracts.events import (
    Anomaly,
    CostWindow,
    DeadLetter,
    EventError,
    GpuSample,
    InstanceEvent,
    LiveSpend,
    PriceUpdate,
    Watermark,
    is_watermark,
)
from hybridspend.contracts.topics import Topics
from hybridspend.costmodel import IDLE_WORKLOAD, PriceBook
from hybridspend.costmodel.money import MICRO
from hybridspend.costmodel.timeunits import utc_from_ms
from hybridspend.infra.broker import BrokerProfile, client_security

from .faust_compat import (
    DurableTable,
    apply_broker_profile,
    check_internals,
    clamp_recovery_seeks,
    commit_only_applied,
    highwater,
    keep_fetched_records,
    log_starts,
    on_behalf_of,
    read_again_from,
    replay_instead_of_drop,
)
from .guards import BATCH_MAX, REWIND_AGAIN_S, STREAM_BUFFER, OffsetGuard, Silence, StallWatch
from . import watch
from .processing import (PRICE_HISTORY_MS, DecisionProcessor, PartitionClock, ResourceState, UsageProcessor,
                         WorkloadState)
from .watch import TeamState

log = logging.getLogger(__name__)

BATCH_WITHIN_S = 0.2
IDLE_SOURCE_S = 30.0  # an upstream partition silent this long (wall clock) stops holding windows open
# an upstream partition that never reported holds a decision partition's windows open this long (wall
# clock) before the others close them without it: nothing says it has nothing to send (a worker slow to
# start, or held back by a rebalance), and a window closed without a resource's cost is decided wrong
MISSING_SOURCE_S = 300.0


def _ssl_context(config: Config):
    sec = client_security(config.kafka)
    if sec["security_protocol"] not in ("SSL", "SASL_SSL"):
        return None
    import ssl

    context = ssl.create_default_context(cafile=sec.get("ssl_cafile"))
    if sec.get("ssl_certfile"):
        context.load_cert_chain(sec["ssl_certfile"], sec.get("ssl_keyfile"))
    return context


def _credentials(config: Config):
    sec = client_security(config.kafka)
    proto = sec["security_protocol"]
    if proto == "PLAINTEXT":
        return None
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec["sasl_plain_username"], password=sec["sasl_plain_password"],
            ssl_context=_ssl_context(config), mechanism=sec["sasl_mechanism"],
        )
    return faust.SSLCredentials(_ssl_context(config))


async def follow_prices(config: Config, bootstrap: str, topic: str, partitions: int, book: PriceBook,
                        ready: asyncio.Event) -> None:
    """Read every partition of the price topic into ``book`` (each worker keeps all prices).

    ``ready`` is set once the topic has been read to its end, so windows are not priced from
    the configuration while live prices are still being loaded.  The topic has the configured
    partition count (``ensure_topics`` creates and checks every topic before a worker starts).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    sec = client_security(config.kafka)
    options = {"security_protocol": sec["security_protocol"]}
    if sec["security_protocol"] != "PLAINTEXT":
        options.update(ssl_context=_ssl_context(config))
    if sec["security_protocol"].startswith("SASL"):
        options.update(sasl_mechanism=sec["sasl_mechanism"], sasl_plain_username=sec["sasl_plain_username"],
                       sasl_plain_password=sec["sasl_plain_password"])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        await _wait_for_topic(consumer, topic)
        partitions = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for rec in records:
                    try:
                        p = PriceUpdate.decode(rec.value)
                    except EventError as exc:  # the sink dead-letters it; here it is only skipped
                        log.warning("price %s[%d]@%d skipped: %s", rec.topic, rec.partition, rec.offset, exc)
                        continue
                    book.update(p.provider, p.region, p.instance_type, p.purchase_option, p.ts_ms, p.usd_per_hour)
            if not ready.is_set() and not batches:
                positions = [await consumer.position(tp) for tp in partitions]
                if all(pos >= end[tp] for pos, tp in zip(positions, partitions)):
                    ready.set()
    finally:
        await consumer.stop()


async def _wait_for_topic(consumer, topic: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while topic not in await consumer.topics():
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} does not exist after {timeout_s:.0f} s "
                               "(the commands that start the pipeline create every topic first)")
        await asyncio.sleep(0.1)


def _table_set(table, key: str, value: dict, event) -> None:
    """Write a table key on behalf of ``event``, an event of the key's partition (see ``on_behalf_of``)."""
    with on_behalf_of(event):
        table[key] = value


def _clock_key(partition: int) -> str:
    return f"~clock|{partition}"


def _team_key(team: str) -> str:
    """A team's spend detector in the decision agent's table: a control character no workload name (a label)
    can hold keeps it apart from the workloads' keys."""
    return f"\x1fteam|{team}"


@dataclass
class _Batch:
    """What one batch of an agent changed: written to its table at the batch's end, after its outputs."""

    now_s: float  # monotonic, when the batch was taken
    states: dict[str, object] = field(default_factory=dict)  # key -> its new state
    key_event: dict[str, object] = field(default_factory=dict)  # key -> an event of the key's partition
    partition_event: dict[int, object] = field(default_factory=dict)  # partition -> an event of it applied now
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    retired: dict[str, object] = field(default_factory=dict)  # key forgotten -> an event of the key's partition

    def retire(self, key: str, event) -> None:
        """Delete ``key`` from the table at the batch's end (a tombstone in its changelog)."""
        self.states.pop(key, None)
        self.key_event.pop(key, None)
        self.retired[key] = event


class Pipeline:
    """The state the two agents share and the agents themselves; ``build_app`` registers them on the app.

    Per input partition the tables hold a ``PartitionClock`` (``~clock|N`` keys); what the worker
    only needs while it runs (offset order, stalls, silent inputs) lives in ``streams.guards``.
    """

    def __init__(self, app: faust.App, config: Config, bootstrap: str, topics: Topics) -> None:
        self.app, self.config, self.bootstrap, self.topics = app, config, bootstrap, topics
        self.partitions = topics.partitions
        self.input_topics = (topics.gpu_samples, topics.instance_events)
        self.inputs = app.topic(*self.input_topics, key_type=bytes, value_type=bytes, partitions=self.partitions)
        self.cost_windows = self._topic(topics.cost_windows)
        self.live_spend = self._topic(topics.live_spend)
        self.decisions = self._topic(topics.decisions)
        self.anomalies = self._topic(topics.anomalies)
        self.dead_letter = self._topic(topics.dead_letter)
        self.resource_windows = app.Table("resource-windows", default=dict, partitions=self.partitions)
        self.workload_windows = app.Table("workload-windows", default=dict, partitions=self.partitions)
        self.prices = PriceBook()
        self.prices_ready = asyncio.Event()
        self.usage = UsageProcessor(config, self.prices)
        self.decider = DecisionProcessor(config, self.prices)
        self.grace_ms = config.thresholds.grace_seconds * 1000
        self.window_ms = config.thresholds.window_seconds * 1000
        self.applied: dict[tuple[str, int], int] = {}  # set by build_app: what the commits may cover
        self.guard = OffsetGuard()
        self.stalls = StallWatch()
        self.input_silence = Silence()  # per (input partition, input topic)
        self.source_silence = Silence()  # per (decision partition, upstream usage partition)
        self.swept_through: dict[int, int] = {}  # per input partition: the window boundary quiet resources closed to
        self.retired_through: dict[int, int] = {}  # per decision partition: the window boundary gone workloads were
        # last looked for at (in memory: a restarted worker looks again, which changes nothing)
        self.owned_rates: dict[tuple[str, int], int] = {}  # (host, epoch day) -> micro-dollars an owned GPU-hour

    def _topic(self, name: str):
        return self.app.topic(name, key_type=bytes, value_type=bytes, partitions=self.partitions)

    # -- shared by both agents --------------------------------------------------------------------

    async def load_prices(self) -> None:
        await follow_prices(self.config, self.bootstrap, self.topics.prices, self.partitions, self.prices,
                            self.prices_ready)

    async def reject(self, event, exc: Exception) -> None:
        """Bad input, or a bug on one event: keep the event in the dead-letter topic with the reason."""
        msg = event.message
        if isinstance(exc, EventError):
            reason = str(exc)
        else:  # a bug must not stop the stream
            log.exception("unexpected error on %s[%d]@%d", msg.topic, msg.partition, msg.offset, exc_info=exc)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        letter = DeadLetter.of(topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason,
                               payload=msg.value, ts_ms=int(time.time() * 1000))
        await self.dead_letter.send(key=msg.topic.encode(), value=letter.encode())

    def _anomaly_sends(self, batch: _Batch) -> list:
        return [self.anomalies.send(key=a.subject.encode(), value=a.encode()) for a in batch.anomalies]

    def forget_log_starts(self, sender, revoked, **kwargs) -> None:  # retention may move them meanwhile
        self.guard.forget((tp.topic, tp.partition) for tp in revoked)

    async def _take(self, events) -> _Batch:
        """A new batch: the log starts of its partitions known (one request for those not known yet)."""
        wanted = self.guard.unknown_starts((e.message.topic, e.message.partition) for e in events)
        if wanted:
            self.guard.learn_starts(await log_starts(self.app, wanted))
        return _Batch(time.monotonic())

    def in_order(self, clock: PartitionClock, event) -> bool:
        """Whether to apply ``event``: the next record of its partition (``OffsetGuard.admit``)."""
        msg = event.message
        admission = self.guard.admit(clock, msg.topic, msg.partition, msg.offset)
        if admission.lost_from is not None:
            log.error("%s[%d]: offset %d delivered, but the records before it from %d are not in the log",
                      msg.topic, msg.partition, msg.offset, admission.lost_from)
        return admission.apply

    async def rewind(self) -> None:
        """Send the consumer back to the tables' position where records were skipped (again if it did not take)."""
        for seek in self.guard.seeks_due(time.monotonic()):
            log.warning("%s[%d]: the consumer is past offset %d, which the tables have not applied: "
                        "reading again from there", *seek)
            if not await read_again_from(self.app, *seek):
                self.guard.not_ours(seek.topic, seek.partition)

    async def read_what_never_came(self) -> None:
        """On a timer: a partition whose tables stayed behind its log (``StallWatch``) is read again."""
        if not self.app.flow_control.is_active():
            return  # a rebalance or recovery is under way
        now = time.monotonic()
        for tp in self.app.consumer.assignment():
            table = self.resource_windows if tp.topic in self.input_topics else (
                self.workload_windows if tp.topic == self.topics.cost_windows else None)
            if table is None:
                continue
            expected = PartitionClock.from_dict(table.get(_clock_key(tp.partition))).offsets.get(tp.topic, 0)
            end = highwater(self.app, tp.topic, tp.partition)
            stood_s = self.stalls.check(tp.topic, tp.partition, expected, end, now)
            if stood_s is not None:
                log.warning("%s[%d]: the tables stopped at offset %d of %d for %.0f s: reading again from there",
                            tp.topic, tp.partition, expected, end, stood_s)
                await read_again_from(self.app, tp.topic, tp.partition, expected)

    async def _finish(self, batch: _Batch, table, topics: tuple[str, ...], sends) -> None:
        """Outputs acknowledged, then the table written and its changelog acknowledged, then the offsets
        the commits may cover moved on (replays too)."""
        await self.rewind()
        futures = [await s for s in sends]
        await asyncio.gather(*futures)
        for key, state in batch.states.items():
            _table_set(table, key, state.to_dict(), batch.key_event[key])
        for key, event in batch.retired.items():
            if key in table:  # a key never written (its every record dead-lettered) has nothing to delete
                with on_behalf_of(event):
                    del table[key]
        for part, part_event in batch.partition_event.items():
            _table_set(table, _clock_key(part), batch.clocks[part].to_dict(), part_event)
        await table.changelog_written()
        for part, clock in batch.clocks.items():
            for t in topics:
                if t in clock.offsets:
                    self.applied[(t, part)] = clock.offsets[t]

    # -- usage: samples and instance events -> cost windows ----------------------------------------

    async def account_usage(self, stream) -> None:
        await self.prices_ready.wait()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            batch = await self._take(events)
            live: list[LiveSpend] = []
            for event in events:
                part = event.message.partition
                clock = batch.clocks.get(part)
                if clock is None:
                    clock = batch.clocks[part] = PartitionClock.from_dict(self.resource_windows.get(_clock_key(part)))
                    for t in self.input_topics:  # a topic not read yet holds the partition back (until stale)
                        clock.sources.setdefault(t, 0)
                if self.in_order(clock, event):
                    batch.partition_event[part] = event  # its clock moved on, even if the event is dead-lettered
                    await self._apply_input(batch, clock, event, live)
            out, marks = self._close_resources(batch)
            sends = [self.cost_windows.send(key=cw.workload.encode(), value=cw.encode()) for cw in out]
            sends.extend(self.live_spend.send(key=ls.instance_id.encode(), value=ls.encode()) for ls in live)
            for mark in marks:
                sends.extend(self.cost_windows.send(key=None, value=mark, partition=q) for q in range(self.partitions))
            sends.extend(self._anomaly_sends(batch))
            await self._finish(batch, self.resource_windows, self.input_topics, sends)

    async def _apply_input(self, batch: _Batch, clock: PartitionClock, event, live: list[LiveSpend]) -> None:
        """One sample, instance event or watermark of an input partition, into its resource's state."""
        part, topic = event.message.partition, event.message.topic
        try:
            if is_watermark(event.value):
                if clock.advance(topic, Watermark.decode(event.value).ts_ms):
                    self.input_silence.advanced(part, topic, batch.now_s)
                    self._check_silence(batch, clock, topic)
                return
            replaced: list[str] = []
            if topic == self.topics.instance_events:
                ev = InstanceEvent.decode(event.value)
                resource, ts_ms = ev.instance_id, ev.ts_ms
            else:
                ev, replaced = GpuSample.decode_replacing_labels(event.value)
                resource, ts_ms = ev.resource, ev.ts_ms - ev.interval_ms
            if event.key is not None and event.key.decode("utf-8", "replace") != resource:
                raise EventError(f"key {event.key!r:.60} does not match resource {resource!r}")
            state = batch.states.get(resource) or ResourceState.from_dict(self.resource_windows.get(resource))
            # raises before changing anything when the event cannot be priced
            if isinstance(ev, InstanceEvent):
                if self.usage.add_instance_event(state, ev):
                    live.append(self.usage.live_spend(state, ev))
            else:
                self.usage.add(state, ev)
            batch.states[resource] = state
        except Exception as exc:
            await self.reject(event, exc)  # one dead letter an event: what stopped it
            return
        if replaced:  # its costs were kept under the replaced names; the original payload is kept here
            await self.reject(event, EventError("labels replaced, costs kept: " + "; ".join(replaced)))
        if isinstance(ev, GpuSample) and ev.environment == "onprem" and self.decider.watching and \
                self.decider.anomaly_settings.silence_minutes is not None:
            try:  # its costs are kept whatever happens here
                self._sample_seen(batch, clock, resource, ev)
            except Exception:
                log.exception("%s: the silence check failed on a sample of %s", topic, resource)
        batch.key_event[resource] = event
        if clock.advance(topic, ts_ms):
            self.input_silence.advanced(part, topic, batch.now_s)
            self._check_silence(batch, clock, topic)
        clock.open.add(resource)
        clock.dormant.pop(resource, None)

    def _check_silence(self, batch: _Batch, clock: PartitionClock, topic: str) -> None:
        """The partition's samples moved on (event time): at most once a minute of it, the hosts left behind are
        silent.  Checked record by record, in offset order, so that a replay in other batches finds the same."""
        now_ms = clock.sources.get(topic, 0)
        if topic != self.topics.gpu_samples or not self.decider.watching or now_ms < clock.silence_checked_ms + 60_000:
            return
        clock.silence_checked_ms = now_ms
        batch.anomalies.extend(watch.silence_findings(clock.seen, clock.silent, now_ms, self.decider.anomaly_settings))

    def _sample_seen(self, batch: _Batch, clock: PartitionClock, host: str, sample: GpuSample) -> None:
        """An on-prem host's sample: it is not silent (any more); what its GPUs cost an hour, owned, is what its
        silence would leave unaccounted."""
        back = watch.returned(host, clock.seen, clock.silent, sample.ts_ms - sample.interval_ms,
                              self.decider.anomaly_settings)
        if back is not None:
            batch.anomalies.append(back)
        gpus = len({g.parent_uuid or g.uuid for g in sample.gpus})  # MIG instances count as their GPU
        last_ms = max(clock.seen.get(host, [0])[0], sample.ts_ms)
        clock.seen[host] = [last_ms, self._umicro_per_gpu_hour(host, sample.ts_ms) * gpus]

    def _umicro_per_gpu_hour(self, host: str, at_ms: int) -> int:
        """An owned GPU of ``host`` an hour on the day of ``at_ms``, in micro-dollars (capex until it is
        depreciated, energy at the configured power, upkeep)."""
        key = (host, at_ms // 86_400_000)
        rate = self.owned_rates.get(key)
        if rate is None:
            asset = self.config.asset_for_host(host)
            rate = int(asset.gpu_cost().rate(utc_from_ms(at_ms)).usd_per_gpu_hour / MICRO) if asset is not None else 0
            if len(self.owned_rates) > 100_000:
                self.owned_rates.clear()
            self.owned_rates[key] = rate
        return rate

    def _close_resources(self, batch: _Batch) -> tuple[list[CostWindow], list[bytes]]:
        """Close the windows each partition's watermark passed; the cost windows and a watermark per partition.

        The input topics are not ordered among themselves: a partition is as far as the slower one,
        unless that one has been silent for a while (no cloud collector marking it) with nothing of
        it left unread.  The watermark sent on carries the owned capacity that sat idle and every cloud
        window closed (the claims on it).
        """
        out: list[CostWindow] = []
        marks = []
        for part, part_event in batch.partition_event.items():
            clock = batch.clocks[part]
            stale = {t for t in self.input_silence.silent(part, clock.sources, batch.now_s, IDLE_SOURCE_S)
                     if clock.applied_through(t, highwater(self.app, t, part))}
            mark_ms = clock.watermark(1, stale) or 0
            watermark = mark_ms - self.grace_ms
            idle, cloud, spend = [], [], []
            resources, swept = self._resources_to_close(batch, part, watermark)
            for resource in resources:
                state = batch.states.get(resource)
                if state is None:
                    state = ResourceState.from_dict(self.resource_windows.get(resource))
                closed = self.usage.close_in(clock, state, resource, watermark)
                if closed or resource in batch.states:
                    batch.states[resource] = state
                    batch.key_event.setdefault(resource, part_event)
                out.extend(closed)
                # owned GPUs no workload held (a rented GPU no workload held is not capacity to fill), and every
                # cloud workload's window: the claims on them
                idle.extend([cw.window_start_ms, cw.gpu_class, cw.resource, cw.allocated_gpu_ms]
                            for cw in closed if cw.workload == IDLE_WORKLOAD and cw.environment == "onprem")
                cloud.extend([cw.window_start_ms, cw.workload, cw.gpu_class, cw.resource, cw.allocated_gpu_ms,
                              int(cw.cost_usd / MICRO)] for cw in closed
                             if cw.environment == "cloud" and cw.workload != IDLE_WORKLOAD)
                if self.decider.watching:
                    spend.extend([cw.window_start_ms, cw.team, cw.resource, cw.workload, cw.window_ms,
                                  int(cw.cost_usd / MICRO)] for cw in closed if cw.workload != IDLE_WORKLOAD and cw.team)
            if swept:  # at most once a window: hosts and instances gone for a week are forgotten, and old prices
                for resource in clock.retired_resources(self.topics.gpu_samples):
                    batch.retire(resource, part_event)
                # partitions revoked since stay in swept_through: that only keeps more prices
                self.prices.forget_before(min(self.swept_through.values()) - PRICE_HISTORY_MS)
            pending = not all(clock.applied_through(t, highwater(self.app, t, part)) for t in self.input_topics)
            marks.append(Watermark(f"usage|{part}|{mark_ms}", f"usage|{part}", max(0, watermark), idle,
                                   pending=pending, cloud=cloud, spend=spend).encode())
        return out, marks

    def _resources_to_close(self, batch: _Batch, part: int, watermark_ms: int) -> tuple[list[str], bool]:
        """The resources of the batch in ``part``, and its quiet ones when the watermark crossed a window boundary
        (then True)."""
        boundary = watermark_ms - watermark_ms % self.window_ms
        in_batch = {r for r, e in batch.key_event.items() if e.message.partition == part}
        sweep = boundary > self.swept_through.get(part, -1)
        self.swept_through[part] = max(boundary, self.swept_through.get(part, -1))
        return sorted(batch.clocks[part].open | in_batch if sweep else in_batch), sweep

    # -- decide: cost windows -> decisions ---------------------------------------------------------

    async def decide(self, stream) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            batch = await self._take(events)
            for event in events:
                part = event.message.partition
                clock = batch.clocks.get(part) or batch.clocks.setdefault(
                    part, PartitionClock.from_dict(self.workload_windows.get(_clock_key(part))))
                if self.in_order(clock, event):
                    batch.partition_event[part] = event
                    await self._apply_cost_window(batch, clock, event)
            out = []
            for part, part_event in batch.partition_event.items():
                out.extend(self._close_workloads(batch, part, part_event))
            sends = [self.decisions.send(key=d.workload.encode(), value=d.encode()) for d in out]
            sends.extend(self._anomaly_sends(batch))
            await self._finish(batch, self.workload_windows, (self.topics.cost_windows,), sends)

    async def _apply_cost_window(self, batch: _Batch, clock: PartitionClock, event) -> None:
        part = event.message.partition
        try:
            if is_watermark(event.value):
                wm = Watermark.decode(event.value)
                if wm.ts_ms > clock.sources.get(wm.source, -1):
                    self.source_silence.advanced(part, wm.source, batch.now_s)
                self.decider.on_watermark(clock, wm, part, self.partitions)
                return
            cw = CostWindow.decode(event.value)
            state = batch.states.get(cw.workload) or WorkloadState.from_dict(self.workload_windows.get(cw.workload))
            if self.decider.add(state, cw, batch.anomalies):
                batch.states[cw.workload] = state
                batch.key_event[cw.workload] = event
                batch.retired.pop(cw.workload, None)
                clock.open.add(cw.workload)
                clock.dormant.pop(cw.workload, None)
        except Exception as exc:
            await self.reject(event, exc)

    def _close_workloads(self, batch: _Batch, part: int, part_event) -> list:
        """Decide the workload windows every upstream partition's watermark has passed.

        The upstream partitions stop holding each other back only at the end of the data
        (``PartitionClock.all_quiet``), or, for one that never reported, after ``MISSING_SOURCE_S``.
        """
        clock, now = batch.clocks[part], batch.now_s
        caught_up = clock.applied_through(self.topics.cost_windows,
                                          highwater(self.app, self.topics.cost_windows, part))
        silent = self.source_silence.silent(part, clock.sources, now, IDLE_SOURCE_S)
        stale = set(clock.sources) if clock.all_quiet(silent, caught_up) else set()
        waited_out = caught_up and self.source_silence.silent_for(part, "*", now) > MISSING_SOURCE_S
        watermark = clock.watermark(self.partitions, stale, waited_out)
        if watermark is None:
            return []
        out = []
        for workload in sorted(clock.open):
            state = batch.states.get(workload)
            if state is None:
                state = batch.states[workload] = WorkloadState.from_dict(self.workload_windows.get(workload))
                batch.key_event[workload] = part_event
            out.extend(self.decider.close(workload, state, watermark, clock, batch.anomalies))

        def team_state(team: str) -> TeamState:
            state = batch.states.get(_team_key(team))
            return state if state is not None else TeamState.from_dict(self.workload_windows.get(_team_key(team)))

        def changed(team: str, state: TeamState) -> None:  # written at the batch's end, like the workloads
            batch.states[_team_key(team)] = state
            batch.key_event[_team_key(team)] = part_event

        def retired(team: str) -> None:
            batch.retire(_team_key(team), part_event)
        batch.anomalies.extend(self.decider.judge_teams(clock, watermark, team_state, changed, retired))
        self.decider.forget_idle(clock, watermark)
        boundary = watermark - watermark % self.window_ms
        if boundary > self.retired_through.get(part, -1):  # at most once a window: workloads gone for weeks
            self.retired_through[part] = boundary
            for workload in self.decider.retired_workloads(clock, watermark):
                state = batch.states.get(workload) or WorkloadState.from_dict(self.workload_windows.get(workload))
                batch.anomalies.extend(self.decider.retire(workload, state))
                batch.retire(workload, part_event)
        return out


def build_app(config: Config, bootstrap: str, profile: BrokerProfile, app_id: str | None = None) -> faust.App:
    """The worker's Faust app: its settings, Faust's behaviour fixed where exactly-once needs it, the agents."""
    topics = Topics.from_config(config.kafka)
    app_id = app_id or topics.group("worker")  # also names the tables' changelog topics
    check_internals()
    faust_dir = config.state_dir / "faust"  # Faust's own files (it creates only the last level)
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        broker_credentials=_credentials(config),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(faust_dir / app_id),  # never the working directory
        table_cleanup_interval=3600.0,
        # a batch must fit in the stream buffer: with Faust's default 4096 a batch of BATCH_MAX never
        # fills and every take waits its full `within`
        stream_buffer_maxsize=STREAM_BUFFER,
        consumer_max_fetch_size=4 * 1024**2,
        Table=DurableTable,
        **profile.faust_settings,
    )
    apply_broker_profile(app, profile)
    clamp_recovery_seeks()
    keep_fetched_records(app)
    pipeline = Pipeline(app, config, bootstrap, topics)
    pipeline.applied = commit_only_applied(app)  # (topic, partition) -> next offset the tables hold durably
    # the agents apply each record once in offset order: Faust need not drop what it thinks was read
    replay_instead_of_drop(app, (topics.gpu_samples, topics.instance_events, topics.cost_windows))
    app.on_partitions_revoked.connect(pipeline.forget_log_starts, weak=False)
    app.task(pipeline.load_prices)
    app.timer(REWIND_AGAIN_S)(pipeline.read_what_never_came)
    app.agent(pipeline.inputs, name="account_usage")(pipeline.account_usage)
    app.agent(pipeline.cost_windows, name="decide")(pipeline.decide)
    # a batch writes a table key for each resource or workload it touched, and waits for those writes
    # (DurableTable.changelog_written): Faust's own limit of 100 buffered writes only paused the batch
    # midway, one write at a time, with a warning each time ("producer buffer full")
    app.producer.buffer.max_messages = STREAM_BUFFER
    app.hybridspend_topics = topics  # type: ignore[attr-defined]
    return app
