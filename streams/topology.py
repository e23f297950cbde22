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
  partition, carrying the owned capacity that sat idle in the windows it closed.
* ``decide`` gathers each workload's windows from all resources (``workload-windows``), closes
  a window once every upstream partition's watermark has passed it, compares it with the
  other environment (migrate to the cheapest allowed offer; repatriate into idle owned GPUs
  at their marginal cost, or by buying GPUs) and emits a decision once a crossing has lasted
  the dwell.

Both agents take batches and write each table key once per batch, because every table update
is a changelog write (DESIGN.md §4).  Outputs are acknowledged by the broker before the tables
move on, and the tables' changelog before the batch's offsets can be committed, so a worker
killed at any point replays into the same results.  Per-partition
progress lives in the tables too (``~clock|N`` keys: event time and the next offset of each
input), so a restarted worker resumes it and skips the records its tables already hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict

import faust
from faust.streams import _current_event

from contracts.config import Config
from contracts.events import (
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
from contracts.topics import Topics
from costmodel import IDLE_WORKLOAD, PriceBook
from infra.broker import BrokerProfile, apply_fetch_wait_to_faust, client_security

from .processing import DecisionProcessor, PartitionClock, ResourceState, UsageProcessor, WorkloadState

log = logging.getLogger(__name__)

BATCH_MAX = 5000
BATCH_WITHIN_S = 0.2
STREAM_BUFFER = 4 * BATCH_MAX
IDLE_SOURCE_S = 30.0  # an upstream partition silent this long (wall clock) stops holding windows open


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


async def follow_prices(config: Config, bootstrap: str, topic: str, book: PriceBook, ready: asyncio.Event) -> None:
    """Read every partition of the price topic into ``book`` (each worker keeps all prices).

    ``ready`` is set once the topic has been read to its end, so windows are not priced from
    the configuration while live prices are still being loaded.
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
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or
                                                              await _wait_partitions(consumer, topic))]
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


async def _wait_partitions(consumer, topic: str) -> set[int]:
    for _ in range(100):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return found
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")


class DurableTable(faust.Table):
    """A table whose changelog writes can be awaited.

    Faust buffers them, and flushing its producer gives up after 0.1 s without progress, so a
    write could still be in that buffer when the batch's offsets are committed: a worker killed
    then would recover a table older than its offsets and lose the events in between.
    """

    def send_changelog(self, *args, **kwargs):
        fut = super().send_changelog(*args, **kwargs)
        self.__dict__.setdefault("_unacknowledged", []).append(fut)
        return fut

    async def changelog_written(self) -> None:
        """Until the broker has every changelog write made so far."""
        futures = self.__dict__.pop("_unacknowledged", [])
        if futures:
            await asyncio.gather(*futures)


def _keep_fetched_records(app: faust.App) -> None:
    """Faust clears the stream queues whenever flow control resumes, even when it was not suspended.

    After a rebalance (a restarted worker, a second worker) it resumes the stream partitions,
    seeks them to the committed offsets, then resumes flow control once more: records fetched in
    between were cleared while the consumer counted them as read, and were never delivered (seen
    with SIGKILL: hours of samples lost).  Queues are cleared only when flow really resumes.
    """
    flow_control = app.flow_control
    resume = flow_control.resume

    def resume_if_suspended() -> None:
        if not flow_control.is_active():
            resume()

    flow_control.resume = resume_if_suspended  # type: ignore[method-assign]


def _table_set(table, key: str, value: dict, event) -> None:
    """Write a table key on behalf of ``event`` (batched agents have no current event).

    Faust sends the changelog record to the partition of the current event; setting it to an
    event of the key's own partition keeps the table co-partitioned with its source topic.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.reset(token)


def _clock_key(partition: int) -> str:
    return f"~clock|{partition}"


def build_app(config: Config, bootstrap: str, profile: BrokerProfile, app_id: str | None = None) -> faust.App:
    topics = Topics.from_config(config.kafka)
    app_id = app_id or topics.group("worker")  # also names the tables' changelog topics
    partitions = topics.partitions
    apply_fetch_wait_to_faust(profile)
    app = faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        broker_credentials=_credentials(config),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_cleanup_interval=3600.0,
        # a batch must fit in the stream buffer: with Faust's default 4096 a batch of BATCH_MAX never
        # fills and every take waits its full `within`
        stream_buffer_maxsize=STREAM_BUFFER,
        consumer_max_fetch_size=4 * 1024**2,
        Table=DurableTable,
        **profile.faust_settings,
    )

    _keep_fetched_records(app)

    def topic(name: str):
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions)

    input_topics = (topics.gpu_samples, topics.instance_events)
    inputs = app.topic(*input_topics, key_type=bytes, value_type=bytes, partitions=partitions)
    cost_windows = topic(topics.cost_windows)
    live_spend = topic(topics.live_spend)
    decisions = topic(topics.decisions)
    dead_letter = topic(topics.dead_letter)

    resource_windows = app.Table("resource-windows", default=dict, partitions=partitions)
    workload_windows = app.Table("workload-windows", default=dict, partitions=partitions)

    prices = PriceBook()
    prices_ready = asyncio.Event()
    usage = UsageProcessor(config, prices)
    decider = DecisionProcessor(config, prices)
    grace_ms = config.thresholds.grace_seconds * 1000
    window_ms = config.thresholds.window_seconds * 1000
    swept_through: dict[int, int] = {}  # per input partition: the window boundary quiet resources were closed to
    # wall clock of the last advance of each (partition, input topic) and (partition, upstream source)
    input_advanced_at: dict[tuple[int, str], float] = {}
    source_advanced_at: dict[tuple[int, str], float] = {}

    @app.task
    async def load_prices() -> None:
        await follow_prices(config, bootstrap, topics.prices, prices, prices_ready)

    async def reject(event, exc: Exception) -> None:
        """Bad input, or a bug on one event: keep the event in the dead-letter topic with the reason."""
        if isinstance(exc, EventError):
            reason = str(exc)
        else:  # a bug must not stop the stream
            log.exception("unexpected error on %s[%d]@%d", event.message.topic, event.message.partition,
                          event.message.offset, exc_info=exc)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        msg = event.message
        letter = DeadLetter.of(topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason,
                               payload=msg.value, ts_ms=int(time.time() * 1000))
        await dead_letter.send(key=msg.topic.encode(), value=letter.encode())

    async def deliver(sends) -> None:
        """Wait until the broker has every output of the batch (before the tables move on)."""
        futures = [await s for s in sends]
        await asyncio.gather(*futures)

    def in_order(clock: PartitionClock, event) -> bool:
        """Apply each record once: the partition's clock (in the table) knows the next offset.

        A restarted worker replays from the committed offsets, which may be behind the tables:
        those records are skipped here.  Records missing before the one delivered would mean the
        consumer lost some (see ``_keep_fetched_records``): that is logged as an error, loudly.
        """
        msg = event.message
        place = clock.take(msg.topic, msg.offset)
        if place == "gap":
            log.error("%s[%d]: offset %d delivered, but the records before it from %d never were", msg.topic,
                      msg.partition, msg.offset, clock.offsets[msg.topic])
            clock.offsets[msg.topic] = msg.offset + 1
        return place != "applied"

    @app.agent(inputs)
    async def account_usage(stream):
        await prices_ready.wait()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            now = time.monotonic()
            states: dict[str, ResourceState] = {}
            key_event: dict[str, object] = {}  # an event of each key's partition
            live: list[LiveSpend] = []
            partition_event: dict[int, object] = {}
            clocks: dict[int, PartitionClock] = {}
            for event in events:
                part = event.message.partition
                clock = clocks.get(part)
                if clock is None:
                    clock = clocks[part] = PartitionClock.from_dict(resource_windows.get(_clock_key(part)))
                    for topic in input_topics:  # a topic not read yet holds the partition back (until stale)
                        clock.sources.setdefault(topic, 0)
                if not in_order(clock, event):
                    continue
                try:
                    if is_watermark(event.value):
                        if clock.advance(event.message.topic, Watermark.decode(event.value).ts_ms):
                            input_advanced_at[(part, event.message.topic)] = now
                        partition_event[part] = event
                        continue
                    if event.message.topic == topics.instance_events:
                        ev = InstanceEvent.decode(event.value)
                        resource, ts_ms = ev.instance_id, ev.ts_ms
                    else:
                        ev = GpuSample.decode(event.value)
                        resource, ts_ms = ev.resource, ev.ts_ms - ev.interval_ms
                    if event.key is not None and event.key.decode("utf-8", "replace") != resource:
                        raise EventError(f"key {event.key!r:.60} does not match resource {resource!r}")
                    state = states.get(resource) or ResourceState.from_dict(resource_windows.get(resource))
                    # raises before changing anything when the event cannot be priced
                    if isinstance(ev, InstanceEvent):
                        if usage.add_instance_event(state, ev):
                            live.append(usage.live_spend(state, ev))
                    else:
                        usage.add(state, ev)
                    states[resource] = state
                except Exception as exc:
                    await reject(event, exc)
                    continue
                key_event[resource] = partition_event[part] = event
                if clock.advance(event.message.topic, ts_ms):
                    input_advanced_at[(part, event.message.topic)] = now
                clock.open.add(resource)
            out: list[CostWindow] = []
            idle: dict[int, list] = defaultdict(list)
            marks: dict[int, int] = {}
            for part, part_event in partition_event.items():
                clock = clocks[part]
                # the input topics are not ordered among themselves: the partition is as far as the slower
                # one, unless that one has been silent for a while (no cloud collector marking it)
                stale = {t for t in clock.sources if now - input_advanced_at.setdefault((part, t), now) > IDLE_SOURCE_S}
                marks[part] = clock.watermark(1, stale) or 0
                watermark = marks[part] - grace_ms
                boundary = watermark - watermark % window_ms
                in_batch = {r for r, e in key_event.items() if e.message.partition == part}
                # quiet resources can only close a window when the watermark crossed a window boundary
                sweep = boundary > swept_through.get(part, -1)
                swept_through[part] = max(boundary, swept_through.get(part, -1))
                for resource in sorted(clock.open | in_batch if sweep else in_batch):
                    state = states.get(resource)
                    if state is None:
                        state = ResourceState.from_dict(resource_windows.get(resource))
                    closed = usage.close(state, resource, watermark)
                    if closed or resource in states:
                        states[resource] = state
                        key_event.setdefault(resource, part_event)
                    out.extend(closed)
                    idle[part].extend([cw.window_start_ms, cw.gpu_class, cw.resource, cw.allocated_gpu_ms]
                                      for cw in closed if cw.workload == IDLE_WORKLOAD)
                    if state.windows.open or (state.rental and (state.rental.by_window or state.rental.running_since_ms)):
                        clock.open.add(resource)
                    else:
                        clock.open.discard(resource)
            sends = [cost_windows.send(key=cw.workload.encode(), value=cw.encode()) for cw in out]
            sends.extend(live_spend.send(key=ls.instance_id.encode(), value=ls.encode()) for ls in live)
            for part in partition_event:
                mark = Watermark(f"usage|{part}|{marks[part]}", f"usage|{part}", max(0, marks[part] - grace_ms),
                                 idle[part]).encode()
                sends.extend(cost_windows.send(key=None, value=mark, partition=q) for q in range(partitions))
            await deliver(sends)
            for resource, state in states.items():
                _table_set(resource_windows, resource, state.to_dict(), key_event[resource])
            for part, part_event in partition_event.items():
                _table_set(resource_windows, _clock_key(part), clocks[part].to_dict(), part_event)
            await resource_windows.changelog_written()  # before the batch's offsets can be committed

    @app.agent(cost_windows)
    async def decide(stream):
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            states: dict[str, WorkloadState] = {}
            key_event: dict[str, object] = {}
            partition_event: dict[int, object] = {}
            clocks: dict[int, PartitionClock] = {}
            now = time.monotonic()
            for event in events:
                part = event.message.partition
                clock = clocks.get(part) or clocks.setdefault(
                    part, PartitionClock.from_dict(workload_windows.get(_clock_key(part))))
                if not in_order(clock, event):
                    continue
                partition_event[part] = event
                try:
                    if is_watermark(event.value):
                        wm = Watermark.decode(event.value)
                        if wm.ts_ms > clock.sources.get(wm.source, -1):
                            source_advanced_at[(part, wm.source)] = now
                        decider.on_watermark(clock, wm)
                        continue
                    cw = CostWindow.decode(event.value)
                    state = states.get(cw.workload) or WorkloadState.from_dict(workload_windows.get(cw.workload))
                    if decider.add(state, cw):
                        states[cw.workload] = state
                        key_event[cw.workload] = event
                        clock.open.add(cw.workload)
                except Exception as exc:
                    await reject(event, exc)
            out = []
            for part, part_event in partition_event.items():
                clock = clocks[part]
                stale = {s for s in clock.sources if now - source_advanced_at.setdefault((part, s), now) > IDLE_SOURCE_S}
                waited_out = now - source_advanced_at.setdefault((part, "*"), now) > IDLE_SOURCE_S
                watermark = clock.watermark(partitions, stale, waited_out)
                if watermark is None:
                    continue
                for workload in sorted(clock.open):
                    state = states.get(workload)
                    if state is None:
                        state = states[workload] = WorkloadState.from_dict(workload_windows.get(workload))
                        key_event[workload] = part_event
                    out.extend(decider.close(workload, state, watermark, clock))
                    if not state.open:
                        clock.open.discard(workload)
                decider.forget_idle(clock, watermark)
            await deliver([decisions.send(key=d.workload.encode(), value=d.encode()) for d in out])
            for workload, state in states.items():
                _table_set(workload_windows, workload, state.to_dict(), key_event[workload])
            for part, part_event in partition_event.items():
                _table_set(workload_windows, _clock_key(part), clocks[part].to_dict(), part_event)
            await workload_windows.changelog_written()

    app.hybridspend_topics = topics  # type: ignore[attr-defined]
    return app
