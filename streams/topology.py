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
from collections import defaultdict

import faust

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
from infra.broker import BrokerProfile, client_security

from .faust_compat import (
    DurableTable,
    apply_broker_profile,
    check_internals,
    commit_only_applied,
    highwater,
    keep_fetched_records,
    log_starts,
    on_behalf_of,
    read_again_from,
    replay_instead_of_drop,
)
from .processing import DecisionProcessor, PartitionClock, ResourceState, UsageProcessor, WorkloadState

log = logging.getLogger(__name__)

BATCH_MAX = 5000
BATCH_WITHIN_S = 0.2
STREAM_BUFFER = 4 * BATCH_MAX
REWIND_PATIENCE = 4 * STREAM_BUFFER  # records skipped past a gap before it is taken as real (not in the log)
REWIND_AGAIN_S = 5.0  # a gap still there this long after a seek: seek again
STALL_S = 15.0  # a partition's table behind its log, without progress, this long: read again
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


def build_app(config: Config, bootstrap: str, profile: BrokerProfile, app_id: str | None = None) -> faust.App:
    topics = Topics.from_config(config.kafka)
    app_id = app_id or topics.group("worker")  # also names the tables' changelog topics
    partitions = topics.partitions
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
        topic_partitions=partitions,
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
    keep_fetched_records(app)
    applied = commit_only_applied(app)  # (topic, partition) -> next offset the tables hold durably
    # the agents apply each record once in offset order: Faust need not drop what it thinks was read
    replay_instead_of_drop(app, (topics.gpu_samples, topics.instance_events, topics.cost_windows))

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
        await follow_prices(config, bootstrap, topics.prices, partitions, prices, prices_ready)

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

    rewinding: dict[tuple[str, int], list] = {}  # (topic, partition) -> [table's next offset, last seek, skipped]

    first_offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> where its log begins

    def forget_first_offsets(sender, revoked, **kwargs) -> None:  # retention may move them meanwhile
        for tp in revoked:
            first_offsets.pop((tp.topic, tp.partition), None)

    app.on_partitions_revoked.connect(forget_first_offsets, weak=False)

    async def learn_first_offsets(events) -> None:
        """Where the logs of the batch's partitions begin (one request for those not known yet)."""
        wanted = {(e.message.topic, e.message.partition) for e in events} - first_offsets.keys()
        if wanted:
            first_offsets.update(await log_starts(app, wanted))

    def in_order(clock: PartitionClock, event) -> bool:
        """Apply each record once and in offset order: the partition's clock (in the table) knows the next one.

        A restarted worker replays from the committed offsets, which may be behind the tables
        (they are never ahead: ``commit_only_applied``): those records are skipped here.  Should
        the consumer still start past records the tables never applied (Faust's own read offset
        after a failed seek in a rebalance), the records after the gap are skipped and the
        consumer is sent back to the table's position (``rewind``), so none is lost.  Only
        records that are not in the log at all (after ``REWIND_PATIENCE`` skipped, e.g. deleted
        by retention) leave the gap for good, logged as an error.  A partition the tables never
        applied a record of expects the first record of its log: Faust skips the records it fetched
        for a partition while a rebalance holds the flow, and aiokafka seeks such a partition, never
        committed, nowhere, so its first record delivered can be any, and the records before it
        would never be applied.
        """
        msg = event.message
        place = clock.take(msg.topic, msg.offset, first_offsets.get((msg.topic, msg.partition)))
        if place == "gap":
            expected = clock.offsets[msg.topic]
            state = rewinding.get((msg.topic, msg.partition))
            if state is None or state[0] != expected:
                state = rewinding[(msg.topic, msg.partition)] = [expected, None, 0]
            state[2] += 1
            if state[2] <= REWIND_PATIENCE:
                return False
            log.error("%s[%d]: offset %d delivered, but the records before it from %d are not in the log", msg.topic,
                      msg.partition, msg.offset, expected)
            clock.offsets[msg.topic] = msg.offset + 1
            place = "next"
        if place == "next":
            rewinding.pop((msg.topic, msg.partition), None)
        return place == "next"

    async def rewind() -> None:
        """Send the consumer back to the tables' position where records were skipped (again if it did not take)."""
        now = time.monotonic()
        for (topic, part), state in list(rewinding.items()):
            if state[1] is None or now - state[1] > REWIND_AGAIN_S:
                log.warning("%s[%d]: the consumer is past offset %d, which the tables have not applied: "
                            "reading again from there", topic, part, state[0])
                state[1] = now
                if not await read_again_from(app, topic, part, state[0]):
                    del rewinding[(topic, part)]  # no longer ours: its new owner starts from the tables

    stalled_since: dict[tuple[str, int], tuple[int, float]] = {}  # (topic, partition) -> (table's offset, since)

    @app.timer(REWIND_AGAIN_S)
    async def read_what_never_came() -> None:
        """Records in the log that the agents never got, with nothing after them to show the gap
        (``in_order``): when a partition's table has stayed behind its log for ``STALL_S``, the
        consumer reads again from the table's position (a busy agent only skips them as replays)."""
        if not app.flow_control.is_active():
            return  # a rebalance or recovery is under way
        now = time.monotonic()
        for tp in app.consumer.assignment():
            table = resource_windows if tp.topic in input_topics else (
                workload_windows if tp.topic == topics.cost_windows else None)
            if table is None:
                continue
            expected = PartitionClock.from_dict(table.get(_clock_key(tp.partition))).offsets.get(tp.topic, 0)
            end = highwater(app, tp.topic, tp.partition)
            if end is None or expected >= end:
                stalled_since.pop((tp.topic, tp.partition), None)
                continue
            since = stalled_since.get((tp.topic, tp.partition))
            if since is None or since[0] != expected:
                stalled_since[(tp.topic, tp.partition)] = (expected, now)
            elif now - since[1] > STALL_S:
                log.warning("%s[%d]: the tables stopped at offset %d of %d for %.0f s: reading again from there",
                            tp.topic, tp.partition, expected, end, now - since[1])
                stalled_since[(tp.topic, tp.partition)] = (expected, now)
                await read_again_from(app, tp.topic, tp.partition, expected)

    @app.agent(inputs)
    async def account_usage(stream):
        await prices_ready.wait()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await learn_first_offsets(events)
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
                partition_event[part] = event  # its clock moved on, even if the event is dead-lettered
                try:
                    if is_watermark(event.value):
                        if clock.advance(event.message.topic, Watermark.decode(event.value).ts_ms):
                            input_advanced_at[(part, event.message.topic)] = now
                        continue
                    replaced: list[str] = []
                    if event.message.topic == topics.instance_events:
                        ev = InstanceEvent.decode(event.value)
                        resource, ts_ms = ev.instance_id, ev.ts_ms
                    else:
                        ev, replaced = GpuSample.decode_replacing_labels(event.value)
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
                    await reject(event, exc)  # one dead letter an event: what stopped it
                    continue
                if replaced:  # its costs were kept under the replaced names; the original payload is kept here
                    await reject(event, EventError("labels replaced, costs kept: " + "; ".join(replaced)))
                key_event[resource] = event
                if clock.advance(event.message.topic, ts_ms):
                    input_advanced_at[(part, event.message.topic)] = now
                clock.open.add(resource)
            out: list[CostWindow] = []
            idle: dict[int, list] = defaultdict(list)
            marks: dict[int, int] = {}
            for part, part_event in partition_event.items():
                clock = clocks[part]
                # the input topics are not ordered among themselves: the partition is as far as the slower
                # one, unless that one has been silent for a while (no cloud collector marking it) with
                # nothing of it left unread
                stale = {t for t in clock.sources if now - input_advanced_at.setdefault((part, t), now) > IDLE_SOURCE_S
                         and clock.applied_through(t, highwater(app, t, part))}
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
                pending = not all(clocks[part].applied_through(t, highwater(app, t, part)) for t in input_topics)
                mark = Watermark(f"usage|{part}|{marks[part]}", f"usage|{part}", max(0, marks[part] - grace_ms),
                                 idle[part], pending=pending).encode()
                sends.extend(cost_windows.send(key=None, value=mark, partition=q) for q in range(partitions))
            await rewind()
            await deliver(sends)
            for resource, state in states.items():
                _table_set(resource_windows, resource, state.to_dict(), key_event[resource])
            for part, part_event in partition_event.items():
                _table_set(resource_windows, _clock_key(part), clocks[part].to_dict(), part_event)
            await resource_windows.changelog_written()
            for part, clock in clocks.items():  # only now may the batch's offsets be committed (replays too)
                for t in input_topics:
                    if t in clock.offsets:
                        applied[(t, part)] = clock.offsets[t]

    @app.agent(cost_windows)
    async def decide(stream):
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await learn_first_offsets(events)
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
                # the upstream partitions stop holding each other back only at the end of the data (see all_quiet)
                caught_up = clock.applied_through(topics.cost_windows, highwater(app, topics.cost_windows, part))
                silent = {s for s in clock.sources if now - source_advanced_at.setdefault((part, s), now) > IDLE_SOURCE_S}
                stale = set(clock.sources) if clock.all_quiet(silent, caught_up) else set()
                waited_out = caught_up and now - source_advanced_at.setdefault((part, "*"), now) > MISSING_SOURCE_S
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
            await rewind()
            await deliver([decisions.send(key=d.workload.encode(), value=d.encode()) for d in out])
            for workload, state in states.items():
                _table_set(workload_windows, workload, state.to_dict(), key_event[workload])
            for part, part_event in partition_event.items():
                _table_set(workload_windows, _clock_key(part), clocks[part].to_dict(), part_event)
            await workload_windows.changelog_written()
            for part, clock in clocks.items():
                if topics.cost_windows in clock.offsets:
                    applied[(topics.cost_windows, part)] = clock.offsets[topics.cost_windows]

    app.hybridspend_topics = topics  # type: ignore[attr-defined]
    return app
