"""The Faust topology on one screen: topics, tables, agents.

    gpu-samples (key: resource) --usage--> cost-windows (key: workload) --decide--> decisions (key: workload)
                     \\                                 \\
                      +--> dead-letter                  +--> dead-letter

* ``usage`` keeps the open event-time windows of each resource in the ``resource-windows``
  table, closes a window once the resource's samples have moved past it (or the partition's
  event time has moved ``grace`` past it), prices it and emits a cost window re-keyed by workload.
* ``decide`` gathers each workload's cost windows from all resources in the ``workload-windows``
  table, closes them ``grace`` after their end, compares them with the alternative environment
  and emits a decision when a crossing has persisted for the dwell.

Both agents take batches (``take_events``) and update each table key once per batch, because
every table update is a changelog write (DESIGN.md §4).  Malformed events go to ``dead-letter``
with the reason; the worker never crashes on input.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict

import faust
from faust.streams import _current_event

from hybridspend.broker import BrokerProfile, Topics, client_security
from hybridspend.config import Config
from hybridspend.events import CostWindow, DeadLetter, EventError, GpuSample

from .processing import DecisionProcessor, ResourceState, UsageProcessor, WorkloadState

log = logging.getLogger(__name__)

BATCH_MAX = 5000
BATCH_WITHIN_S = 0.2


def _credentials(config: Config):
    sec = client_security(config.kafka)
    proto = sec["security_protocol"]
    if proto == "PLAINTEXT":
        return None
    import ssl

    context = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=sec.get("ssl_cafile"))
        if sec.get("ssl_certfile"):
            context.load_cert_chain(sec["ssl_certfile"], sec.get("ssl_keyfile"))
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec["sasl_plain_username"], password=sec["sasl_plain_password"],
            ssl_context=context, mechanism=sec["sasl_mechanism"],
        )
    return faust.SSLCredentials(context)


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


def build_app(config: Config, bootstrap: str, profile: BrokerProfile, app_id: str = "hybridspend") -> faust.App:
    topics = Topics.from_config(config.kafka)
    partitions = topics.partitions
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
        **profile.faust_settings,
    )

    samples = app.topic(topics.gpu_samples, key_type=bytes, value_type=bytes, partitions=partitions)
    cost_windows = app.topic(topics.cost_windows, key_type=bytes, value_type=bytes, partitions=partitions)
    decisions = app.topic(topics.decisions, key_type=bytes, value_type=bytes, partitions=partitions)
    dead_letter = app.topic(topics.dead_letter, key_type=bytes, value_type=bytes, partitions=partitions)

    resource_windows = app.Table("resource-windows", default=dict, partitions=partitions)
    workload_windows = app.Table("workload-windows", default=dict, partitions=partitions)

    usage = UsageProcessor(config)
    decider = DecisionProcessor(config)
    grace_ms = config.thresholds.grace_seconds * 1000
    # per partition: the latest event time seen, and the resources that still have open windows
    partition_time_ms: dict[int, int] = defaultdict(int)
    open_resources: dict[int, set[str]] = defaultdict(set)
    workload_time_ms: dict[int, int] = defaultdict(int)
    open_workloads: dict[int, set[str]] = defaultdict(set)

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

    @app.agent(samples)
    async def account_usage(stream):
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            states: dict[str, ResourceState] = {}
            key_event: dict[str, object] = {}  # an event of each key's partition
            partition_event: dict[int, object] = {}
            for event in events:
                try:
                    sample = GpuSample.decode(event.value)
                    if event.key is not None and event.key.decode("utf-8", "replace") != sample.resource:
                        raise EventError(f"key {event.key!r:.60} does not match resource {sample.resource!r}")
                    state = states.get(sample.resource) or ResourceState.from_dict(
                        resource_windows.get(sample.resource))
                    usage.add(state, sample)  # raises before changing anything when the sample is unpriceable
                    states[sample.resource] = state
                except Exception as exc:
                    await reject(event, exc)
                    continue
                part = event.message.partition
                key_event[sample.resource] = partition_event[part] = event
                partition_time_ms[part] = max(partition_time_ms[part], sample.ts_ms - sample.interval_ms)
                open_resources[part].add(sample.resource)
            out: list[CostWindow] = []
            for resource, state in states.items():
                # the resource's own samples arrive in order: everything before the start of its
                # latest interval is complete
                out.extend(usage.close(state, state.windows.last_start_ms))
                _table_set(resource_windows, resource, state.to_dict(), key_event[resource])
            for part, part_event in partition_event.items():  # resources that went quiet
                watermark = partition_time_ms[part] - grace_ms
                for resource in list(open_resources[part]):
                    if resource in states:
                        continue
                    state = ResourceState.from_dict(resource_windows.get(resource))
                    closed = usage.close(state, watermark)
                    if closed:
                        out.extend(closed)
                        _table_set(resource_windows, resource, state.to_dict(), part_event)
                    if not state.windows.open:
                        open_resources[part].discard(resource)
            for cw in out:
                await cost_windows.send(key=cw.workload.encode(), value=cw.encode())

    @app.agent(cost_windows)
    async def decide(stream):
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            states: dict[str, WorkloadState] = {}
            key_event: dict[str, object] = {}
            partition_event: dict[int, object] = {}
            for event in events:
                try:
                    cw = CostWindow.decode(event.value)
                    state = states.get(cw.workload) or WorkloadState.from_dict(workload_windows.get(cw.workload))
                    decider.add(state, cw)
                    states[cw.workload] = state
                except Exception as exc:
                    await reject(event, exc)
                    continue
                part = event.message.partition
                key_event[cw.workload] = partition_event[part] = event
                workload_time_ms[part] = max(workload_time_ms[part], cw.window_start_ms + cw.window_ms)
                open_workloads[part].add(cw.workload)
            for part, part_event in partition_event.items():
                for workload in list(open_workloads[part]):
                    state = states.get(workload)
                    if state is None:
                        state = states[workload] = WorkloadState.from_dict(workload_windows.get(workload))
                        key_event[workload] = part_event
                    for decision in decider.close(workload, state, workload_time_ms[part]):
                        await decisions.send(key=workload.encode(), value=decision.encode())
                    if not state.open:
                        open_workloads[part].discard(workload)
            for workload, state in states.items():
                _table_set(workload_windows, workload, state.to_dict(), key_event[workload])

    app.hybridspend_topics = topics  # type: ignore[attr-defined]
    return app

