"""Every place the worker relies on a private internal of Faust, mode or aiokafka, in one module.

Each workaround below names the upstream issue it works around.  ``check_internals()`` runs
before a worker builds its app: every internal patched or called here must still exist with the
parameters it was verified with, or the worker refuses to start with a message naming what
changed and the versions it was verified against, instead of silently changing results after an
upgrade.  ``pyproject.toml`` bounds the three libraries at the versions verified
(``VERIFIED_VERSIONS``).

What is patched, and why:

* ``apply_broker_profile``: Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``
  fixed (``AIOKafkaConsumerThread._create_worker_consumer``); the consumer's wait is set per app
  from the broker profile.
* ``keep_fetched_records``: mode's ``FlowControlEvent.resume`` clears Faust's stream queues even
  when flow was not suspended, dropping records already fetched after a rebalance.
* ``on_behalf_of``: a batched agent has no current event (``faust.streams._current_event``),
  which Faust needs to pick a table write's changelog partition.
* ``DurableTable``: ``Collection.send_changelog``'s futures are kept so that an agent can wait
  for its changelog writes.
* ``highwater``: how far each input partition's log goes, from Faust's consumer (a public
  method, checked too, because the idle rule of the agents rests on it).
* ``log_starts``: the first offset of a partition's log, from Faust's consumer (a public method,
  checked too: a partition the tables never applied expects its first record).
* ``read_again_from``: Faust's ``Consumer.seek_wait``, which must also reset Faust's own read
  offset, or the records read again are dropped as already read.
* ``replay_instead_of_drop``: Faust drops every record below its own read offset, which a record
  fetched before a seek and delivered after it sets past the seek: the records the seek brings
  back are dropped and the seek never takes.  The agents' inputs are delivered whole instead;
  their partition clocks skip what they applied.
* ``recover_to_fetched_ends``: on the local broker, table recovery reads each changelog to the end a
  fetch gives, not the too-low end offset the broker lists after a batched produce.
* ``commit_only_applied``: Faust commits what its streams acknowledged, and a stream also
  acknowledges the records it skips during a rebalance; the offsets committed are set from the
  tables' durably written positions instead.

The price reader (``streams.topology.follow_prices``) once forced aiokafka's metadata through its
private client (``_client.force_metadata_update()``); it now uses only public aiokafka API.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import faust

from hybridspend.infra.broker import BrokerProfile

# the versions every internal below was read and tested against (upper bounds in pyproject.toml)
log = logging.getLogger(__name__)

VERIFIED_VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class IncompatibleFramework(RuntimeError):
    """An internal the worker patches is missing or has changed (the libraries were upgraded)."""


@dataclass(frozen=True)
class Internal:
    """A private attribute of a library that this module relies on, and how it must look."""

    name: str  # dotted path, as shown in the error
    resolve: Callable[[], Any]  # returns the attribute (raises AttributeError/ImportError when gone)
    parameters: tuple[str, ...] | None  # expected parameter names of a callable (None: not a callable)
    used_by: str  # the workaround here that needs it
    source_mentions: str = ""  # a name its source must still use (an attribute set from outside)


def _driver():
    from faust.transport.drivers import aiokafka as driver

    return driver


def _flow_control_event():
    from mode.utils.queues import FlowControlEvent

    return FlowControlEvent


def _aiokafka_consumer():
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer


def _base_consumer_init():
    from faust.transport.consumer import Consumer

    return Consumer.__init__  # where _read_offset is made (the driver's Consumer delegates to it)


def _current_event_var():
    from faust import streams

    return streams._current_event


INTERNALS: tuple[Internal, ...] = (
    Internal("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer",
             lambda: _driver().AIOKafkaConsumerThread._create_worker_consumer, ("self", "transport"),
             "apply_broker_profile"),
    Internal("aiokafka.AIOKafkaConsumer.start", lambda: _aiokafka_consumer().start, ("self",),
             "apply_broker_profile", source_mentions="self._fetch_max_wait_ms"),
    Internal("mode.utils.queues.FlowControlEvent.resume", lambda: _flow_control_event().resume, ("self",),
             "keep_fetched_records"),
    Internal("mode.utils.queues.FlowControlEvent.is_active", lambda: _flow_control_event().is_active, ("self",),
             "keep_fetched_records"),
    Internal("faust.streams._current_event", _current_event_var, None, "on_behalf_of"),
    Internal("faust.tables.base.Collection.send_changelog", lambda: faust.Table.send_changelog,
             ("self", "partition", "key", "value", "key_serializer", "value_serializer"), "DurableTable"),
    Internal("faust.transport.consumer.Consumer.highwater",
             lambda: _driver().Consumer.highwater, ("self", "tp"), "highwater"),
    Internal("faust.transport.consumer.Consumer.earliest_offsets",
             lambda: _driver().Consumer.earliest_offsets, ("self", "partitions"), "log_starts"),
    Internal("faust.transport.consumer.Consumer.assignment",
             lambda: _driver().Consumer.assignment, ("self",), "read_again_from"),
    Internal("faust.transport.consumer.Consumer.seek_wait",
             lambda: _driver().Consumer.seek_wait, ("self", "partitions"), "read_again_from"),
    Internal("faust.transport.consumer.Consumer._filter_committable_offsets",
             lambda: _driver().Consumer._filter_committable_offsets, ("self", "tps"), "commit_only_applied",
             source_mentions="self._should_commit(tp, offset)"),
    Internal("faust.transport.consumer.Consumer._filter_tps_with_pending_acks",
             lambda: _driver().Consumer._filter_tps_with_pending_acks, ("self", "topics"), "commit_only_applied"),
    Internal("faust.streams.Stream._py_aiter", lambda: faust.Stream._py_aiter, ("self",), "commit_only_applied",
             source_mentions="value is skipped_value"),
    Internal("faust.transport.consumer.Consumer.__init__", _base_consumer_init,
             ("self", "transport", "callback", "on_partitions_revoked", "on_partitions_assigned", "commit_interval",
              "commit_livelock_soft_timeout", "loop", "kwargs"),
             "replay_instead_of_drop", source_mentions="self._read_offset = defaultdict(lambda: None)"),
    Internal("faust.transport.consumer.Consumer._drain_messages", lambda: _driver().Consumer._drain_messages,
             ("self", "fetcher"), "replay_instead_of_drop",
             source_mentions="get_read_offset = self._read_offset.__getitem__"),
    Internal("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._seek_wait",
             lambda: _driver().AIOKafkaConsumerThread._seek_wait, ("self", "consumer", "partitions"),
             "read_again_from", source_mentions="_read_offset[tp] = offset"),
    Internal("faust.tables.recovery.Recovery._seek_offsets", lambda: _recovery()._seek_offsets,
             ("self", "consumer", "tps", "offsets", "title"), "clamp_recovery_seeks"),
    Internal("faust.tables.recovery.Recovery._build_highwaters", lambda: _recovery()._build_highwaters,
             ("self", "consumer", "tps", "destination", "title"), "recover_to_fetched_ends"),
)


def _recovery():
    from faust.tables.recovery import Recovery

    return Recovery


def clamp_recovery_seeks() -> None:
    """Faust's table recovery starts each changelog partition it has no offset for at (its earliest offset
    - 1), and turns -1 into 0; a broker that answers -1 for the earliest offset (the local broker, while a
    partition moves in a rebalance) makes it -2, aiokafka refuses to seek there and the worker crashes
    in the middle of a rebalance ("Offset must be a positive integer", seen with two workers and one
    killed); it also answers none at all there, and the comparison crashed the worker instead.  Any
    offset below -1, or none, is read as -1: the changelog from its start, which only reads more."""
    recovery = _recovery()
    original = recovery._seek_offsets
    if getattr(original, "hybridspend_clamped", False):
        return

    async def _seek_offsets(self, consumer, tps, offsets, title):
        for tp in tps:
            if offsets[tp] is None or offsets[tp] < -1:
                offsets[tp] = -1
        return await original(self, consumer, tps, offsets, title)

    _seek_offsets.hybridspend_clamped = True
    recovery._seek_offsets = _seek_offsets


def recover_to_fetched_ends(app: faust.App, profile: BrokerProfile) -> None:
    """Table recovery reads each changelog partition to the end its fetch responses give, where the
    broker's listed end offsets fall short of it (``BrokerProfile.listed_ends_short``).

    Faust reads a changelog up to the end offset the broker lists (``Recovery._build_highwaters``,
    ListOffsets).  After a batched produce the local broker lists the last batch's base offset + 1
    (docs/design.md, "Broker profiles"): recovery stopped before the rest of that batch and the
    tables lost those writes on a restart, which is why its changelogs were once produced one
    record per request.  A fetch response's high watermark is right: each partition is fetched
    from its listed end - 1 (the start of its last batch) and the higher of the two ends is read
    to.  No upstream issue: the broker, not Faust, is wrong.
    """
    recovery = _recovery()
    if not getattr(recovery._build_highwaters, "hybridspend_fetched_ends", False):
        original = recovery._build_highwaters
        _original_build_highwaters.cache = original

        async def _build_highwaters(self, consumer, tps, destination, title):
            await original(self, consumer, tps, destination, title)
            if tps and _listed_ends_short.get(self.app):
                listed = {tp: destination.get(tp, -1) + 1 for tp in tps}
                for attempt in range(1, FETCHED_END_ATTEMPTS + 1):
                    try:  # bounded well inside the broker_request_timeout Faust gives this step
                        ends = await asyncio.wait_for(fetched_ends(_bootstrap(self.app), listed), FETCHED_END_TIMEOUT_S)
                    except (Exception, asyncio.TimeoutError) as exc:
                        ends = {}
                        log.warning("%s changelogs: their ends not fetched (attempt %d of %d): %r", title, attempt,
                                    FETCHED_END_ATTEMPTS, exc)
                    if len(ends) == len(listed):
                        break
                else:  # reading to the listed ends would lose the rest of each last batch: crash, be restarted
                    raise RuntimeError(f"{title} changelogs: their ends could not be fetched; recovering to the ends "
                                       "the broker lists would lose table writes")
                for tp, end in ends.items():
                    if end - 1 > destination.get(tp, -1):
                        log.info("%s changelog %s[%d]: read to %d, beyond the end offset the broker lists (%d)",
                                 title, tp.topic, tp.partition, end, destination.get(tp, -1) + 1)
                        destination[tp] = end - 1

        _build_highwaters.hybridspend_fetched_ends = True
        recovery._build_highwaters = _build_highwaters
    _listed_ends_short[app] = profile.listed_ends_short


_listed_ends_short: "weakref.WeakKeyDictionary[faust.App, bool]" = weakref.WeakKeyDictionary()
FETCHED_END_ATTEMPTS = 3
FETCHED_END_TIMEOUT_S = 15.0  # each; Faust allows the whole step broker_request_timeout (90 s)


def _original_build_highwaters():
    """Faust's own ``Recovery._build_highwaters`` (before ``recover_to_fetched_ends``)."""
    return getattr(_original_build_highwaters, "cache", None) or _recovery()._build_highwaters


def _bootstrap(app: faust.App) -> str:
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


async def fetched_ends(bootstrap: str, listed: dict, timeout_s: float = 10.0) -> dict:
    """The end of each partition's log from a fetch response's high watermark, fetching each from the
    start of its last batch (``listed`` - 1, ``listed``: the end the broker lists); tp -> end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    parts = {TopicPartition(tp.topic, tp.partition): tp for tp, end in listed.items() }
    if not parts:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=10, request_timeout_ms=5000)
    try:
        await consumer.start()  # inside: a start cancelled or failed halfway is stopped too
        consumer.assign(list(parts))
        for part, tp in parts.items():
            consumer.seek(part, max(0, listed[tp] - 1))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(consumer.highwater(p) is None for p in parts):
            if asyncio.get_running_loop().time() > deadline:
                break  # those not fetched are left out
            await consumer.getmany(timeout_ms=100)
        return {tp: consumer.highwater(part) for part, tp in parts.items() if consumer.highwater(part) is not None}
    finally:
        await consumer.stop()


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _problem(internal: Internal) -> str | None:
    try:
        found = internal.resolve()
    except (AttributeError, ImportError) as exc:
        return f"{internal.name} is gone ({exc})"
    if internal.parameters is None:
        return None
    try:
        names = tuple(inspect.signature(found).parameters)
    except (TypeError, ValueError):
        return f"{internal.name} is no longer a function with a signature"
    if names != internal.parameters:
        return f"{internal.name} takes ({', '.join(names)}), expected ({', '.join(internal.parameters)})"
    if internal.source_mentions:
        try:
            source = inspect.getsource(found)
        except (OSError, TypeError):
            return f"{internal.name}: its source cannot be read to find {internal.source_mentions}"
        if internal.source_mentions not in source:
            return f"{internal.name} no longer uses {internal.source_mentions}"
    return None


def check_internals(internals: tuple[Internal, ...] = INTERNALS) -> None:
    """Raise ``IncompatibleFramework`` naming every patched internal that is missing or changed.

    A Faust, mode or aiokafka release may rename or reshape them; the workarounds would then do
    nothing, or the wrong thing, and the worker's results would change without an error.
    """
    problems = [(internal, p) for internal in internals if (p := _problem(internal)) is not None]
    if not problems:
        _check_current_event()
        return
    versions = ", ".join(f"{pkg} {_installed(pkg)} (verified: {VERIFIED_VERSIONS[pkg]})" for pkg in VERIFIED_VERSIONS)
    lines = "\n".join(f"  - {problem} (needed by streams.faust_compat.{internal.used_by})"
                      for internal, problem in problems)
    raise IncompatibleFramework(
        f"the stream worker relies on library internals that changed:\n{lines}\n"
        f"installed: {versions}.\nInstall the verified versions (pyproject.toml), or re-verify each workaround in "
        "streams/faust_compat.py against the new release and update VERIFIED_VERSIONS.")


def _check_current_event() -> None:
    """``faust.current_event()`` must return what ``on_behalf_of`` sets, or table writes go to the wrong partition."""
    marker = _Marker()
    with on_behalf_of(marker):
        if faust.current_event() is not marker:
            raise IncompatibleFramework(
                "faust.current_event() no longer reads faust.streams._current_event: batched table writes would "
                f"pick the wrong changelog partition (installed faust-streaming {_installed('faust-streaming')}, "
                f"verified {VERIFIED_VERSIONS['faust-streaming']})")


class _Marker:
    pass


# -- fetch wait (broker profile) -------------------------------------------------------------------

_fetch_max_wait_ms: "weakref.WeakKeyDictionary[faust.App, int]" = weakref.WeakKeyDictionary()
_original_create_worker_consumer: Callable | None = None


def apply_broker_profile(app: faust.App, profile: BrokerProfile) -> None:
    """Give ``app``'s aiokafka consumer the profile's fetch wait (Faust fixes it at 1,500 ms).

    Faust exposes every other consumer setting but not this one, and no upstream issue asks for
    it (none found in faust-streaming/faust).  On Kafka, which answers a fetch as soon as data
    arrives, it matters little; Tansu holds a waiting fetch to its end, so on the local broker it
    is most of the alert latency.  The profile is kept per app: two apps in one process (tests,
    benchmarks) each get their own; an app without a profile keeps Faust's value.  Where the
    broker lists short end offsets, table recovery reads to fetched ones (``recover_to_fetched_ends``).
    The other profile settings are ordinary Faust settings (``BrokerProfile.faust_settings``).
    """
    global _original_create_worker_consumer
    driver = _driver()
    if _original_create_worker_consumer is None:
        _original_create_worker_consumer = driver.AIOKafkaConsumerThread._create_worker_consumer
        original = _original_create_worker_consumer

        def _create_worker_consumer(self, transport):
            consumer = original(self, transport)
            wait_ms = _fetch_max_wait_ms.get(self.app)
            if wait_ms is not None:
                consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
            return consumer

        driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    _fetch_max_wait_ms[app] = profile.fetch_max_wait_ms
    recover_to_fetched_ends(app, profile)


def fetch_max_wait_ms(app: faust.App) -> int | None:
    """The fetch wait ``apply_broker_profile`` set for ``app`` (None: Faust's own)."""
    return _fetch_max_wait_ms.get(app)


# -- flow control ----------------------------------------------------------------------------------


def keep_fetched_records(app: faust.App) -> None:
    """Clear Faust's stream queues only when flow control really resumes from a suspension.

    mode's ``FlowControlEvent.resume`` always clears the queues.  After a rebalance (a restarted
    worker, a second worker) Faust resumes the stream partitions, seeks them to the committed
    offsets, then resumes flow control once more: records fetched in between were cleared while
    the consumer counted them as read, and were never delivered (seen with SIGKILL: hours of
    samples lost).  Upstream, faust-streaming/faust#216 (fixed by #217) and #253 reordered
    recovery around this clearing ("when the app flow_control resumes it clears all queues",
    #253); no upstream issue reports the clearing on a resume without a suspension.
    """
    flow_control = app.flow_control
    resume = flow_control.resume

    def resume_if_suspended() -> None:
        if not flow_control.is_active():
            resume()

    flow_control.resume = resume_if_suspended  # type: ignore[method-assign]


# -- table writes from batched agents --------------------------------------------------------------


@contextlib.contextmanager
def on_behalf_of(event) -> Iterator[None]:
    """Make ``event`` Faust's current event while writing a table key.

    Faust sends a table's changelog record to the partition of the current event, and an agent
    that takes batches (``take_events``) has none: faust-streaming/faust#497 ("Writing into Table
    with Stream.take() not allowed", open) and #300.  Setting it to an event of the key's own
    partition keeps the table co-partitioned with its source topic.
    """
    from faust.streams import _current_event

    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class DurableTable(faust.Table):
    """A table whose changelog writes can be awaited.

    Faust buffers them, and flushing its producer before a commit (faust-streaming/faust#273)
    gives up after 0.1 s without progress, so a write could still be in that buffer when the
    batch's offsets are committed: a worker killed then would recover a table older than its
    offsets and lose the events in between.  No upstream issue reports the give-up; the agents
    wait on the futures of their own writes instead.
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


# -- how far the log goes --------------------------------------------------------------------------


def highwater(app: faust.App, topic: str, partition: int) -> int | None:
    """The next offset the broker will give ``topic``'s ``partition``, as of the consumer's last fetch.

    None when unknown (not fetched yet, or no longer assigned after a rebalance).
    """
    from faust.types import TP

    try:
        return app.consumer.highwater(TP(topic, partition))
    except (AssertionError, KeyError, AttributeError):
        return None


async def log_starts(app: faust.App, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The first offset still in each ``(topic, partition)`` (0 unless retention deleted the oldest
    records), in one request; those the broker does not say are left out."""
    from faust.types import TP

    if not partitions:
        return {}
    try:
        found = await app.consumer.earliest_offsets(*(TP(t, p) for t, p in partitions))
    except Exception as exc:  # a check, not a requirement: the agents accept the first record then
        log.warning("the first offsets of %d partitions not read (%s)", len(partitions), exc)
        return {}
    return {(tp.topic, tp.partition): offset for tp, offset in found.items() if offset is not None}


async def read_again_from(app: faust.App, topic: str, partition: int, offset: int) -> bool:
    """Send ``app``'s consumer back to ``offset`` of ``topic``'s ``partition``; False when it is not assigned.

    After some rebalances the consumer starts past records the tables never applied: Faust's
    seek to the committed offsets fails while the assignment changes again ("exception
    performing seek when flow not active"), its fetcher goes on from where it was, and Faust
    counts the offsets it jumped over as done (its gap tracking, faust-streaming/faust#216,
    #221 and #253 are in this area; none reports this case).  ``seek_wait`` runs the seek in the
    consumer's own thread and resets Faust's read offset, so the records come again.
    """
    from aiokafka.errors import IllegalStateError
    from faust.types import TP

    try:
        await app.consumer.seek_wait({TP(topic, partition): offset})
    except (IllegalStateError, AssertionError, KeyError, asyncio.TimeoutError):
        return False
    return True


# -- records brought back by a seek ------------------------------------------------------------------

_replayed_topics: "weakref.WeakKeyDictionary[faust.App, frozenset[str]]" = weakref.WeakKeyDictionary()
_original_consumer_init: Callable | None = None


class ReadOffsets(dict):
    """Faust's ``Consumer._read_offset`` that reads as "nothing read yet" for ``replayed`` topics.

    Faust reads it only in ``Consumer._drain_messages``, to drop every record below it; seeks and
    delivered records write it (the rest of Faust's use: ``defaultdict(lambda: None)``)."""

    def __init__(self, replayed: frozenset[str]) -> None:
        super().__init__()
        self.replayed = replayed

    def __getitem__(self, tp):
        return None if tp.topic in self.replayed else dict.get(self, tp)


def replay_instead_of_drop(app: faust.App, topics) -> None:
    """Deliver every record of ``topics`` the fetcher returns, even below Faust's read offset.

    ``Consumer._drain_messages`` drops a record whose offset is below ``_read_offset[tp]``, and
    sets that read offset, unconditionally, after each record it delivered.  A record fetched
    before a seek back (``perform_seek`` after recovery, ``seek_wait`` from ``read_again_from``)
    and still waiting to be delivered (on flow control, or a full stream buffer) is delivered
    after the seek and sets the read offset past the seek's target; the records the seek brings
    back are then dropped as already read, only at Faust's debug level ("DROPPED MESSAGE ROFF"),
    and the seek never takes.  That was the tail stall of a restarted worker: its fetcher at the
    end of the log, its tables behind, until a timer sent it back to a partition that had gone
    quiet.  No upstream issue reports it (faust-streaming/faust#216, #221 and #253 are about
    gaps and commits around rebalances).  The agents apply each record once, in offset order
    (``PartitionClock.take``), so a record delivered twice is skipped as applied and one after a
    gap sends the consumer back: for their topics Faust's drop is not needed.  Changelog topics
    keep Faust's rule: table recovery counts the records it reads.
    """
    global _original_consumer_init
    driver = _driver()
    if _original_consumer_init is None:
        _original_consumer_init = original = driver.Consumer.__init__

        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            replayed = _replayed_topics.get(self.app)
            if replayed is not None:
                offsets = ReadOffsets(replayed)
                offsets.update(self._read_offset)
                self._read_offset = offsets

        driver.Consumer.__init__ = __init__
    _replayed_topics[app] = frozenset(topics)


# -- offset commits --------------------------------------------------------------------------------

_applied_offsets: "weakref.WeakKeyDictionary[faust.App, dict[tuple[str, int], int]]" = weakref.WeakKeyDictionary()
_original_filter_committable_offsets: Callable | None = None


def commit_only_applied(app: faust.App) -> dict[tuple[str, int], int]:
    """Commit, for each partition, the next offset its tables applied and durably changelogged.

    Returns the mapping ``(topic, partition) -> next offset`` that the agents fill in once a
    batch's changelog writes are acknowledged; a partition without an entry is not committed.

    Faust commits the offsets its streams acknowledged (``Consumer._acked``), and a stream also
    acknowledges every record it skips (``Stream._py_aiter``: "we want to ack the filtered out
    message"), which includes the records it drops because flow control is suspended or their
    generation is stale (faust-streaming/faust#221, fixed by #223 by skipping them) during a
    rebalance.  ``Consumer.on_partitions_revoked`` also forgets each partition's committed offset
    before the streams are drained and committed (``wait_empty``), so the "gap at the head"
    check of ``_new_offset`` no longer holds back those acknowledgements: the revoke commits
    offsets past records no table applied, and the partition's next owner starts after them
    (seen under rapid rebalances: up to 80 samples lost).  Upstream reports of the same family:
    faust-streaming/faust#312 (wrong offset with a gap in acks), robinhood/faust#604 (offsets
    skipped on rebalance despite manual acks); none is fixed for this case.  The tables already
    know what was applied (``PartitionClock.offsets``), so the committed offset is taken from
    there, and no acknowledgement can move it past an unapplied record.  Faust also commits only
    partitions with acknowledgements since the last rebalance (``_filter_tps_with_pending_acks``);
    a partition whose tables are ahead of its committed offset is committed too, or one whose
    last records were applied just before a rebalance would stay uncommitted.
    """
    global _original_filter_committable_offsets
    driver = _driver()
    if _original_filter_committable_offsets is None:
        _original_filter_committable_offsets = driver.Consumer._filter_committable_offsets
        original = _original_filter_committable_offsets

        def _filter_committable_offsets(self, tps):
            applied = _applied_offsets.get(self.app)
            if applied is None:  # an app that does not track its tables' positions
                return original(self, tps)
            return committable_offsets(self, tps, applied)

        driver.Consumer._filter_committable_offsets = _filter_committable_offsets
        original_tps = driver.Consumer._filter_tps_with_pending_acks

        def _filter_tps_with_pending_acks(self, topics=None):
            applied = _applied_offsets.get(self.app)
            if applied is None:
                return original_tps(self, topics)
            # also a partition with no acknowledgement since the last rebalance: its tables may be ahead
            from faust.types import TP

            tps = set(self._acked) | {TP(t, p) for t, p in applied}
            return (tp for tp in tps if topics is None or tp in topics or tp.topic in topics)

        driver.Consumer._filter_tps_with_pending_acks = _filter_tps_with_pending_acks
    applied = _applied_offsets.setdefault(app, {})

    def forget(sender, revoked, **kwargs) -> None:  # a later owner's tables may be further on
        for tp in revoked:
            applied.pop((tp.topic, tp.partition), None)

    app.on_partitions_revoked.connect(forget, weak=False)
    return applied


def committable_offsets(consumer, tps, applied: dict[tuple[str, int], int]) -> dict:
    """The offsets ``consumer`` may commit: each partition's applied position, when it moved on.

    Faust's record of acknowledged offsets below that position is dropped (only memory: it no
    longer decides what is committed).
    """
    out = {}
    for tp in tps:
        offset = applied.get((tp.topic, tp.partition))
        if offset is None:
            continue
        acked = consumer._acked.get(tp)
        if acked:
            done = [o for o in acked if o < offset]
            if done:
                consumer._acked[tp] = [o for o in acked if o >= offset]
                consumer._acked_index[tp].difference_update(done)
        if consumer._should_commit(tp, offset):
            out[tp] = offset
    return out
