"""The stream processors without a broker: what closes when for a rented cloud instance, and
which records a partition applies.

A cloud instance's samples and its state changes travel on two topics that are read in no fixed
order, so a worker may read hours of an instance's samples before the stop between them (a
fresh worker catching up does).  Those windows must wait for the instance events; closed on the
samples alone, the instance would be charged as running through its stop.
"""

from __future__ import annotations

from hybridspend.contracts.config import Config
from hybridspend.contracts.events import EventError, GpuReading, GpuSample, InstanceEvent, Watermark, WorkloadShare
from hybridspend.streams.processing import DecisionProcessor, PartitionClock, ResourceState, UsageProcessor
from tests.test_spine_integration import CONFIG, T0_MS, WINDOW_S

WINDOW_MS = WINDOW_S * 1000
GPUS = 8  # a p4d.24xlarge, $24 an hour in CONFIG: $3 per GPU-hour


def change(ts_ms: int, state: str) -> InstanceEvent:
    return InstanceEvent(event_id=f"i-1|{ts_ms}", ts_ms=ts_ms, provider="aws", region="us-east-1", account="1",
                         instance_id="i-1", instance_type="p4d.24xlarge", state=state, purchase_option="on_demand",
                         workload="team-b/serve", team="team-b")


def sample(ts_ms: int) -> GpuSample:
    gpus = [GpuReading(f"GPU-{i}", i, "A100", "A100", 50.0, 1, 2, None, [WorkloadShare("team-b/serve", "team-b")])
            for i in range(GPUS)]
    return GpuSample(f"i-1:{ts_ms}", ts_ms, 60_000, "i-1", "cloud", "test", gpus, provider="aws", region="us-east-1",
                     instance_type="p4d.24xlarge", purchase_option="on_demand")


def test_a_rented_instance_waits_for_its_state_changes_before_its_windows_close():
    usage = UsageProcessor(Config.model_validate(CONFIG))
    state = ResourceState()
    stop_ms, restart_ms = T0_MS + WINDOW_MS, T0_MS + 4 * WINDOW_MS
    usage.add_instance_event(state, change(T0_MS, "running"))
    # window 0 sampled; stopped through windows 1-3; window 4 sampled again after a restart
    for ts in [*range(T0_MS + 60_000, stop_ms + 1, 60_000), *range(restart_ms + 60_000, restart_ms + WINDOW_MS + 1, 60_000)]:
        usage.add(state, sample(ts))
    # the samples are through window 4, the instance events (stop, restart) not read yet
    assert usage.close(state, "i-1", T0_MS) == []
    usage.add_instance_event(state, change(stop_ms, "stopped"))
    usage.add_instance_event(state, change(restart_ms, "running"))
    windows = usage.close(state, "i-1", restart_ms + WINDOW_MS)
    assert [(w.window_start_ms - T0_MS) // WINDOW_MS for w in windows] == [0, 4]  # nothing while it was stopped
    assert all(w.allocated_gpu_ms == GPUS * WINDOW_MS and w.busy_gpu_ms == GPUS * WINDOW_MS // 2 for w in windows)
    assert sum(w.cost_usd for w in windows) == 2 * GPUS * 3 * WINDOW_S / 3600  # $3 per GPU-hour, 2 windows


def test_an_instance_whose_start_is_not_read_yet_keeps_its_windows_open():
    usage = UsageProcessor(Config.model_validate(CONFIG))
    state = ResourceState()
    for ts in range(T0_MS + 60_000, T0_MS + WINDOW_MS + 60_001, 60_000):  # one sample into window 1
        usage.add(state, sample(ts))
    assert usage.close(state, "i-1", 0) == []  # its start (a minute before the first sample) may be on its way
    usage.add_instance_event(state, change(T0_MS - 60_000, "running"))
    before, first = usage.close(state, "i-1", T0_MS + WINDOW_MS)
    assert first.window_start_ms == T0_MS and first.sample_count == 10 * GPUS
    assert first.allocated_gpu_ms == GPUS * WINDOW_MS
    # the minute it ran before its first sample is rented time too, charged as allocated
    assert before.window_start_ms == T0_MS - WINDOW_MS and before.sample_count == 0
    assert before.allocated_gpu_ms == GPUS * 60_000 and before.busy_gpu_ms == 0


def test_an_owned_host_closes_on_its_own_samples():
    usage = UsageProcessor(Config.model_validate(CONFIG))
    state = ResourceState()
    for ts in range(T0_MS + 60_000, T0_MS + WINDOW_MS + 60_001, 60_000):
        s = sample(ts)
        s.resource, s.environment, s.provider, s.region, s.instance_type, s.purchase_option = \
            "node-1", "onprem", "", "", "", ""
        usage.add(state, s)
    # nothing else describes an owned host: its samples are in order, so window 0 is complete
    (w,) = usage.close(state, "node-1", 0)
    assert w.window_start_ms == T0_MS and w.sample_count == 10 * GPUS


def test_the_partition_clock_applies_each_record_once_and_in_order():
    clock = PartitionClock()
    assert clock.take("t", 40) == "next"  # nothing applied yet: wherever the consumer starts
    assert clock.take("t", 41) == "next"
    restored = PartitionClock.from_dict(clock.to_dict())  # what a restarted worker recovers
    assert restored.take("t", 40) == "applied"  # committed offsets behind the table: a replay
    assert restored.take("t", 44) == "gap" and restored.offsets["t"] == 42  # 42 and 43 never came
    assert restored.take("t", 42) == "next" and restored.take("u", 7) == "next"  # each topic on its own


def test_a_partition_never_applied_expects_the_first_record_of_its_log():
    # Faust skipped offsets 0-20 of a decision partition while a rebalance held the flow, and
    # nothing seeks a partition never committed back: its first record delivered was 21
    clock = PartitionClock()
    assert clock.take("t", 21, log_start=0) == "gap" and clock.offsets["t"] == 0  # the consumer is sent back
    assert clock.take("t", 22, log_start=None) == "gap"  # still expecting 0, whatever is said now
    assert [clock.take("t", o) for o in (0, 1)] == ["next", "next"]
    trimmed = PartitionClock()  # retention deleted the oldest records: the log begins at 7
    assert trimmed.take("t", 7, log_start=7) == "next" and trimmed.take("t", 8) == "next"
    unknown = PartitionClock()  # the broker did not say where its log begins: whichever record comes first
    assert unknown.take("t", 40, log_start=None) == "next"


GS, IE = "t.gpu-samples", "t.instance-events"  # a partition's two input topics


def host_sample(ts_ms: int) -> GpuSample:
    s = sample(ts_ms)
    s.resource, s.environment, s.provider, s.region, s.instance_type, s.purchase_option = \
        "node-1", "onprem", "", "", "", ""
    return s


def replay(paused: bool) -> tuple[list, list[int]]:
    """What a worker emits from one partition's log, read in three batches as the agent does.

    The log: windows 0 and 1 of an owned host's samples (10 each) and, on the instance-events
    topic, one watermark three windows ahead.  Batch 1 reads window 0's samples, batch 2 the
    instance-events watermark, batch 3 window 1's samples; at the end every input is read.
    ``paused``: the worker stalled for longer than the idle time before batch 2 (a rebalance, a
    busy machine), so the samples topic looks silent then although 10 of its records are unread.
    """
    usage = UsageProcessor(Config.model_validate(CONFIG))
    clock, state = PartitionClock(), ResourceState()
    samples = [host_sample(T0_MS + i * 60_000) for i in range(1, 21)]
    highwater = {GS: len(samples), IE: 1}  # the end of each topic's log, as the consumer last saw it
    batches = [[(GS, i) for i in range(10)], [(IE, 0)], [(GS, i) for i in range(10, 20)]]
    closed, late = [], []
    for number, batch in enumerate(batches, 1):
        clock.sources.setdefault(GS, 0), clock.sources.setdefault(IE, 0)
        for topic, offset in batch:
            assert clock.take(topic, offset) == "next"
            if topic == IE:
                clock.advance(IE, T0_MS + 3 * WINDOW_MS)
                continue
            try:
                usage.add(state, samples[offset])
            except EventError:
                late.append(offset)  # the agent dead-letters it
                continue
            clock.advance(GS, samples[offset].ts_ms - samples[offset].interval_ms)
        silent = {GS} if paused and number == 2 else set()  # no progress for longer than the idle time
        stale = {t for t in silent if clock.applied_through(t, highwater[t])}
        closed += usage.close(state, "node-1", clock.watermark(1, stale))
    # everything read and every input quiet: the partition is as far as its furthest input
    stale = {t for t in (GS, IE) if clock.applied_through(t, highwater[t])}
    closed += usage.close(state, "node-1", clock.watermark(1, stale))
    return closed, late


def test_a_stalled_worker_closes_no_window_past_records_it_has_not_read():
    # Closed on wall-clock silence alone, the stalled worker took the samples topic as idle, moved
    # the partition to the instance-events watermark (window 3) and closed windows 0-2: window 1's
    # samples, still unread, then came late and were dead-lettered.  A topic with unread records
    # is never idle, so the stall changes nothing.
    assert not PartitionClock(offsets={GS: 10}).applied_through(GS, 20)  # 10 records unread
    assert PartitionClock(offsets={GS: 20}).applied_through(GS, 20)
    assert PartitionClock().applied_through(IE, 0)  # an empty log (no cloud collector): nothing to wait for
    assert not PartitionClock().applied_through(IE, None)  # not fetched yet: unknown, so not idle
    stalled, late = replay(paused=True)
    assert late == []
    steady, _ = replay(paused=False)
    assert stalled == steady
    assert [(w.window_start_ms - T0_MS) // WINDOW_MS for w in stalled] == [0, 1]
    assert all(w.sample_count == 10 * GPUS for w in stalled)  # 10 samples of 8 GPUs each


def test_upstream_partitions_stop_holding_decisions_back_only_at_the_end_of_the_data():
    # the decision agent's partition hears from two usage partitions: usage|0 at hour 5, usage|1 at hour 2
    hour = 3_600_000
    decider = DecisionProcessor(Config.model_validate(CONFIG))
    clock = PartitionClock()
    decider.on_watermark(clock, Watermark("a", "usage|0", 5 * hour))
    decider.on_watermark(clock, Watermark("b", "usage|1", 2 * hour, pending=True))  # it had input left to read
    everyone = {"usage|0", "usage|1"}
    # usage|1's worker was killed (or is rebalancing, or starved of CPU) with input left: silence is no end
    assert not clock.all_quiet(everyone, caught_up=True)
    assert clock.watermark(2, set()) == 2 * hour  # its windows will come: decisions wait for them
    # one partition silent while the other moves on: its worker is away, not its data
    decider.on_watermark(clock, Watermark("c", "usage|1", 2 * hour))
    assert not clock.all_quiet({"usage|1"}, caught_up=True)
    # records of this partition still unread may be those watermarks
    assert not clock.all_quiet(everyone, caught_up=False)
    # everything read, every source silent and done: the end of the data, the windows close
    assert clock.all_quiet(everyone, caught_up=True)
    assert clock.watermark(2, everyone) == 5 * hour
    restored = PartitionClock.from_dict(clock.to_dict())  # the flags survive a rebalance
    decider.on_watermark(restored, Watermark("d", "usage|0", 6 * hour, pending=True))
    assert PartitionClock.from_dict(restored.to_dict()).pending == {"usage|0"}
