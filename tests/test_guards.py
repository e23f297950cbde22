"""The worker's per-partition guards without a broker, driven by recorded sequences of deliveries."""

from hybridspend.streams.guards import OffsetGuard, Seek, Silence, StallWatch
from hybridspend.streams.processing import PartitionClock

SAMPLES = "gpu-samples"


def deliver(guard: OffsetGuard, clock: PartitionClock, offsets, partition: int = 1, topic: str = SAMPLES) -> list[int]:
    """The offsets the agent applies, of those the consumer delivers in this order."""
    return [o for o in offsets if guard.admit(clock, topic, partition, o).apply]


def test_each_record_is_applied_once_and_in_order_replays_are_skipped():
    guard, clock = OffsetGuard(), PartitionClock(offsets={SAMPLES: 5})
    # a restarted worker replays from its committed offset 2, behind its tables (at 5)
    assert deliver(guard, clock, range(2, 9)) == [5, 6, 7, 8]
    assert clock.offsets[SAMPLES] == 9
    assert guard.seeks_due(now_s=0.0) == []


def test_seed_5_a_new_owner_delivered_past_records_its_tables_never_applied_is_sent_back():
    """Seed 5 (docs/decisions/0002-records-lost-after-rapid-rebalances.md): the tables at 268, the consumer at 348."""
    guard, clock = OffsetGuard(), PartitionClock(offsets={SAMPLES: 268})
    assert deliver(guard, clock, range(348, 400)) == []  # past a gap: nothing applied
    assert guard.seeks_due(now_s=100.0) == [Seek(SAMPLES, 1, 268)]
    assert guard.seeks_due(now_s=102.0) == []  # the seek is given time to take
    # it did not take: more records past the gap, and after REWIND_AGAIN_S a second seek
    assert deliver(guard, clock, range(400, 410)) == []
    assert guard.seeks_due(now_s=105.5) == [Seek(SAMPLES, 1, 268)]
    # it took: the records come again from 268, then those delivered before are applied once
    assert deliver(guard, clock, range(268, 410)) == list(range(268, 410))
    assert guard.rewinding == {} and guard.seeks_due(now_s=200.0) == []


def test_a_partition_never_applied_expects_the_first_record_of_its_log():
    """Seed 10041 (docs/decisions/0004-decisions-made-late.md): first delivered at offset 21 of a log starting at 0."""
    guard, clock = OffsetGuard(), PartitionClock()
    assert guard.unknown_starts([("cost-windows", 3)]) == {("cost-windows", 3)}
    guard.learn_starts({("cost-windows", 3): 0})
    assert guard.unknown_starts([("cost-windows", 3)]) == set()
    assert deliver(guard, clock, range(21, 30), partition=3, topic="cost-windows") == []
    assert guard.seeks_due(now_s=0.0) == [Seek("cost-windows", 3, 0)]
    assert deliver(guard, clock, range(0, 30), partition=3, topic="cost-windows") == list(range(30))


def test_without_a_known_log_start_the_first_record_delivered_is_taken():
    guard, clock = OffsetGuard(), PartitionClock()
    assert deliver(guard, clock, [7, 8]) == [7, 8]
    guard.learn_starts({(SAMPLES, 1): 0})
    guard.forget([(SAMPLES, 1)])  # revoked: retention may move the log start before it comes back
    assert guard.unknown_starts([(SAMPLES, 1)]) == {(SAMPLES, 1)}


def test_records_not_in_the_log_leave_the_gap_after_patience_and_say_where_it_began():
    guard, clock = OffsetGuard(patience=3), PartitionClock(offsets={SAMPLES: 10})
    admissions = [guard.admit(clock, SAMPLES, 1, o) for o in (20, 21, 22, 23, 24)]
    assert [a.apply for a in admissions] == [False, False, False, True, True]
    assert admissions[3].lost_from == 10 and admissions[4].lost_from is None
    assert clock.offsets[SAMPLES] == 25 and guard.rewinding == {}


def test_a_partition_assigned_elsewhere_is_no_longer_sought():
    guard, clock = OffsetGuard(), PartitionClock(offsets={SAMPLES: 3})
    deliver(guard, clock, [9])
    assert guard.seeks_due(now_s=0.0) == [Seek(SAMPLES, 1, 3)]
    guard.not_ours(SAMPLES, 1)
    assert guard.seeks_due(now_s=60.0) == []


def test_a_new_gap_further_on_counts_its_skipped_records_afresh():
    guard, clock = OffsetGuard(patience=2), PartitionClock(offsets={SAMPLES: 0})
    assert deliver(guard, clock, [5, 6]) == []  # gap from 0: two skipped
    assert deliver(guard, clock, [0, 1, 2]) == [0, 1, 2]  # the seek took; the gap is closed
    assert deliver(guard, clock, [9, 10]) == []  # a new gap from 3: patience starts again
    assert guard.rewinding[(SAMPLES, 1)].expected == 3


def test_seed_121_a_gap_at_the_end_of_a_partition_is_found_only_by_the_stall_watch():
    """Seed 121 (docs/decisions/0003-the-tail-stall-of-a-restarted-worker.md): the tables at offset 21 of
    instance-events[3], the log's end at 25, and nothing more delivered: records a rebalance held
    back were skipped by Faust and nothing after them shows the gap, so ``OffsetGuard`` never sees
    it.  This is the case the timer (``read_what_never_came``) is kept for."""
    guard, clock = OffsetGuard(), PartitionClock(offsets={"instance-events": 0})
    assert deliver(guard, clock, range(0, 21), partition=3, topic="instance-events") == list(range(21))
    assert guard.seeks_due(now_s=0.0) == []  # no later record: no gap to see
    stalls = StallWatch(stall_s=15.0)
    checks = [stalls.check("instance-events", 3, clock.offsets["instance-events"], 25, t) for t in (0, 5, 10, 15, 20)]
    assert checks == [None, None, None, None, 20.0]  # behind, without progress, for more than 15 s: read again
    assert stalls.check("instance-events", 3, 21, 25, 25.0) is None  # the clock restarted at the seek
    assert stalls.check("instance-events", 3, 21, 25, 35.5) == 15.5  # still there: again


def test_the_stall_watch_forgets_a_partition_that_moves_or_catches_up():
    stalls = StallWatch(stall_s=15.0)
    assert stalls.check(SAMPLES, 0, 10, 20, 0.0) is None
    assert stalls.check(SAMPLES, 0, 12, 20, 14.0) is None  # progress: its clock restarts
    assert stalls.check(SAMPLES, 0, 12, 20, 28.0) is None
    assert stalls.check(SAMPLES, 0, 12, 20, 29.5) == 15.5
    assert stalls.check(SAMPLES, 0, 20, 20, 30.0) is None and stalls.behind == {}  # caught up
    assert stalls.check(SAMPLES, 0, 20, None, 99.0) is None  # the log's end not known yet


def test_an_input_is_silent_only_after_it_stopped_advancing_for_the_given_time():
    silence = Silence()
    assert silence.silent(0, ["a", "b"], now_s=100.0, over_s=30.0) == set()  # first seen: counts from now
    silence.advanced(0, "a", 120.0)
    assert silence.silent(0, ["a", "b"], now_s=131.0, over_s=30.0) == {"b"}
    assert silence.silent(1, ["a"], now_s=131.0, over_s=30.0) == set()  # per partition
    assert silence.silent_for(0, "a", 150.5) == 30.5
