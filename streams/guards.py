"""What the agents guard per input partition, without a broker: pure state machines, unit-tested.

The agents in ``streams.topology`` apply each record once and in offset order; the tables hold
the next offset of every input partition (``PartitionClock.offsets``), and the committed offsets
follow the tables (``streams.faust_compat.commit_only_applied``).  Faust's consumer does not always
deliver that order: after a rebalance it may start past records the tables never applied, and
records it fetched while a rebalance held the flow are skipped without reaching the agent.  These
classes say what to do about it; the agents do it (seek, log, close windows):

* ``OffsetGuard``: whether a delivered record is the next one, a replay or past a gap, and which
  partitions the consumer must be sent back on (``seeks_due``).
* ``StallWatch``: a partition whose tables have stayed behind the end of its log without progress
  (a gap at the end, with no later record to show it).
* ``Silence``: how long each input of a partition has gone without advancing its event time.

Times are in seconds of a monotonic clock the caller passes in, so the tests choose them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

from .processing import PartitionClock

BATCH_MAX = 5000
STREAM_BUFFER = 4 * BATCH_MAX
REWIND_PATIENCE = 4 * STREAM_BUFFER  # records skipped past a gap before it is taken as real (not in the log)
REWIND_AGAIN_S = 5.0  # a gap still there this long after a seek: seek again
STALL_S = 15.0  # a partition's table behind its log, without progress, this long: read again


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Seek(NamedTuple):
    """Send the consumer of ``topic``'s ``partition`` back to ``offset`` (the tables' position)."""

    topic: str
    partition: int
    offset: int


@dataclass
class Rewind:
    """A partition delivered past records its tables never applied, waiting for them to come again."""

    expected: int  # the tables' next offset: the first record missing
    skipped: int = 0  # records delivered past the gap (and skipped) since it opened
    last_seek_s: float | None = None  # when the consumer was last sent back (None: not yet)


class OffsetGuard:
    """Apply each record once and in offset order, whatever the consumer delivers.

    A restarted worker replays from the committed offsets, which may be behind the tables (never
    ahead): those records are skipped as applied.  Should the consumer start past records the
    tables never applied (Faust's own read offset after a failed seek in a rebalance), the records
    after the gap are skipped and the partition is due a seek back to the tables' position
    (``seeks_due``, again every ``again_s`` while the gap stays), so none is lost.  Only records
    that are not in the log at all (``patience`` records skipped past the gap, e.g. deleted by
    retention) leave the gap for good (``admit`` returns it as ``lost``).

    A partition the tables never applied a record of expects the first record of its log
    (``log_starts``): Faust skips the records it fetched for a partition while a rebalance holds
    the flow, and aiokafka seeks such a partition, never committed, nowhere, so its first record
    delivered can be any, and the records before it would never be applied.
    """

    def __init__(self, patience: int = REWIND_PATIENCE, again_s: float = REWIND_AGAIN_S) -> None:
        self.patience = patience
        self.again_s = again_s
        self.rewinding: dict[TopicPartition, Rewind] = {}
        self.log_starts: dict[TopicPartition, int] = {}

    def unknown_starts(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The partitions among ``tps`` whose log start is still to be looked up."""
        return {TopicPartition(*tp) for tp in tps} - self.log_starts.keys()

    def learn_starts(self, found: dict) -> None:
        self.log_starts.update({TopicPartition(*tp): offset for tp, offset in found.items()})

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions no longer this worker's: their log start may move before they come back."""
        for tp in tps:
            self.log_starts.pop(TopicPartition(*tp), None)

    def admit(self, clock: PartitionClock, topic: str, partition: int, offset: int) -> "Admission":
        """Whether to apply the record at ``offset``: it is the next one (``clock`` counts it now)."""
        tp = TopicPartition(topic, partition)
        place = clock.take(topic, offset, self.log_starts.get(tp))
        if place == "gap":
            expected = clock.offsets[topic]
            rewind = self.rewinding.get(tp)
            if rewind is None or rewind.expected != expected:
                rewind = self.rewinding[tp] = Rewind(expected)
            rewind.skipped += 1
            if rewind.skipped <= self.patience:
                return Admission(False)
            clock.offsets[topic] = offset + 1  # not in the log: the gap stays
            del self.rewinding[tp]
            return Admission(True, lost_from=expected)
        if place == "next":
            self.rewinding.pop(tp, None)
        return Admission(place == "next")

    def seeks_due(self, now_s: float) -> list[Seek]:
        """The partitions to send back to their tables' position now (first seek, or one that did not take)."""
        due = []
        for tp, rewind in self.rewinding.items():
            if rewind.last_seek_s is None or now_s - rewind.last_seek_s > self.again_s:
                rewind.last_seek_s = now_s
                due.append(Seek(tp.topic, tp.partition, rewind.expected))
        return due

    def not_ours(self, topic: str, partition: int) -> None:
        """A seek found the partition assigned elsewhere: its new owner starts from the tables."""
        self.rewinding.pop(TopicPartition(topic, partition), None)


class Admission(NamedTuple):
    apply: bool
    lost_from: int | None = None  # records from this offset up to the admitted one are not in the log


@dataclass
class _Behind:
    expected: int
    since_s: float


class StallWatch:
    """A partition's tables behind the end of its log, with no progress for ``stall_s``: read again.

    A gap after the last record of a partition has no later record to show it (``OffsetGuard``
    sees only what is delivered): records Faust fetched while a rebalance held the flow are
    skipped without reaching the agent, and when they were the last ones the partition waits for
    them forever.  ``check`` is called on a timer with the tables' next offset and the log's end.
    """

    def __init__(self, stall_s: float = STALL_S) -> None:
        self.stall_s = stall_s
        self.behind: dict[TopicPartition, _Behind] = {}

    def check(self, topic: str, partition: int, expected: int, end: int | None, now_s: float) -> float | None:
        """Seconds the tables have stood still behind the log's ``end`` when that is over ``stall_s``
        (then the clock restarts, so the next seek waits as long), else None."""
        tp = TopicPartition(topic, partition)
        if end is None or expected >= end:
            self.behind.pop(tp, None)
            return None
        behind = self.behind.get(tp)
        if behind is None or behind.expected != expected:
            self.behind[tp] = _Behind(expected, now_s)
            return None
        if now_s - behind.since_s <= self.stall_s:
            return None
        stood_s, behind.since_s = now_s - behind.since_s, now_s
        return stood_s


class Silence:
    """When each input of each partition last advanced its event time (seconds, monotonic).

    An input first seen counts as advancing then, so a new input is never silent at once.
    """

    def __init__(self) -> None:
        self.advanced_at: dict[tuple[int, str], float] = {}

    def advanced(self, partition: int, source: str, now_s: float) -> None:
        self.advanced_at[(partition, source)] = now_s

    def silent_for(self, partition: int, source: str, now_s: float) -> float:
        return now_s - self.advanced_at.setdefault((partition, source), now_s)

    def silent(self, partition: int, sources: Iterable[str], now_s: float, over_s: float) -> set[str]:
        """The ``sources`` of ``partition`` that have not advanced for more than ``over_s``."""
        return {s for s in sources if self.silent_for(partition, s, now_s) > over_s}
