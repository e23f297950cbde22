"""The library internals the worker relies on: checked at startup, each workaround doing what it says.

An upgrade of Faust, mode or aiokafka that renames or reshapes a patched internal must stop the
worker with a message naming it, never change its results silently.
"""

from __future__ import annotations

import asyncio
import re

import faust
import pytest
from faust.transport.drivers import aiokafka as driver
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from hybridspend.contracts.config import Config
from hybridspend.infra.broker import KAFKA_PROFILE, LOCAL_PROFILE
from hybridspend.streams import faust_compat
from hybridspend.streams.faust_compat import IncompatibleFramework, apply_broker_profile, check_internals, keep_fetched_records
from tests.test_spine_integration import CONFIG


def test_the_installed_libraries_have_every_internal_the_worker_patches():
    check_internals()  # raises when one is missing or changed


def test_a_patched_method_that_disappears_stops_the_worker_with_its_name_and_the_versions(monkeypatch):
    monkeypatch.delattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer")
    with pytest.raises(IncompatibleFramework) as raised:
        check_internals()
    message = str(raised.value)
    assert "AIOKafkaConsumerThread._create_worker_consumer is gone" in message
    assert "needed by streams.faust_compat.apply_broker_profile" in message
    assert re.search(r"faust-streaming \S+ \(verified: 0\.15\.3\)", message)
    assert "aiokafka" in message and "mode-streaming" in message


def test_a_patched_method_with_another_signature_stops_the_worker(monkeypatch):
    def resume(self, clear: bool = True) -> None:  # what an upgrade could make of it
        pass

    monkeypatch.setattr(FlowControlEvent, "resume", resume)
    with pytest.raises(IncompatibleFramework, match=re.escape(
            "mode.utils.queues.FlowControlEvent.resume takes (self, clear), expected (self)")):
        check_internals()


def test_an_attribute_set_from_outside_that_the_library_no_longer_reads_stops_the_worker(monkeypatch):
    from aiokafka import AIOKafkaConsumer

    async def start(self):  # a start that reads the fetch wait from somewhere else
        pass

    monkeypatch.setattr(AIOKafkaConsumer, "start", start)
    with pytest.raises(IncompatibleFramework, match=re.escape(
            "aiokafka.AIOKafkaConsumer.start no longer uses self._fetch_max_wait_ms")):
        check_internals()


def test_a_current_event_that_faust_no_longer_reads_stops_the_worker(monkeypatch):
    monkeypatch.setattr(faust, "current_event", lambda: None)
    with pytest.raises(IncompatibleFramework, match="faust.current_event\\(\\) no longer reads"):
        check_internals()


def test_the_build_of_the_app_runs_the_check(monkeypatch, tmp_path):
    from hybridspend.streams.topology import build_app

    monkeypatch.delattr(FlowControlEvent, "is_active")
    config = Config.model_validate(dict(CONFIG, state_dir=str(tmp_path)))
    with pytest.raises(IncompatibleFramework, match="FlowControlEvent.is_active is gone"):
        build_app(config, "127.0.0.1:1", LOCAL_PROFILE, app_id="compat-check")


def _worker_consumer(app: faust.App):
    """The aiokafka consumer Faust would start for ``app`` (built, not started: no broker needed)."""

    async def build():
        return app.consumer._thread._create_worker_consumer(app.transport)

    return asyncio.run(build())


def test_each_app_gets_the_fetch_wait_of_its_own_broker_profile():
    local = faust.App("compat-local", broker="kafka://127.0.0.1:1", web_enabled=False)
    kafka = faust.App("compat-kafka", broker="kafka://127.0.0.1:1", web_enabled=False)
    plain = faust.App("compat-plain", broker="kafka://127.0.0.1:1", web_enabled=False)
    apply_broker_profile(local, LOCAL_PROFILE)
    apply_broker_profile(kafka, KAFKA_PROFILE)  # the second profile in one process counts too
    assert _worker_consumer(local)._fetch_max_wait_ms == LOCAL_PROFILE.fetch_max_wait_ms == 100
    assert _worker_consumer(kafka)._fetch_max_wait_ms == KAFKA_PROFILE.fetch_max_wait_ms == 500
    assert _worker_consumer(plain)._fetch_max_wait_ms == 1500  # Faust's own, for an app without a profile
    apply_broker_profile(local, KAFKA_PROFILE)  # applied again: the latest wins, the patch is not stacked
    assert _worker_consumer(local)._fetch_max_wait_ms == 500
    assert faust_compat.fetch_max_wait_ms(local) == 500


def test_flow_control_keeps_fetched_records_unless_it_resumes_from_a_suspension():
    app = faust.App("compat-flow", broker="kafka://127.0.0.1:1", web_enabled=False)
    keep_fetched_records(app)
    flow = app.flow_control
    queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()  # Faust starts suspended: a real resume clears, as upstream
    queue.put_nowait("fetched before a rebalance")
    flow.resume()  # resumed again after the seek to the committed offsets: nothing suspended, keep it
    assert queue.qsize() == 1
    flow.suspend()
    flow.resume()  # a real suspension: what was queued is dropped, as upstream
    assert queue.qsize() == 0


def test_faust_writes_its_data_directory_under_the_state_directory(tmp_path):
    from hybridspend.streams.topology import build_app

    config = Config.model_validate(dict(CONFIG, state_dir=str(tmp_path / "state")))
    app = build_app(config, "127.0.0.1:1", LOCAL_PROFILE, app_id="compat-datadir")
    assert app.conf.datadir.resolve() == (tmp_path / "state" / "faust" / "compat-datadir").resolve()
    assert faust_compat.fetch_max_wait_ms(app) == LOCAL_PROFILE.fetch_max_wait_ms


def _consumer_after_a_revoke(app: faust.App, tp, acked: list[int]):
    """Faust's consumer as ``Consumer.on_partitions_revoked`` leaves a partition: its committed offset
    forgotten, then the records the stream skipped while the rebalance held the flow acknowledged."""
    from collections import defaultdict

    from intervaltree import IntervalTree

    consumer = driver.Consumer.__new__(driver.Consumer)  # the real class, not started
    consumer.app = app
    consumer._acked, consumer._acked_index = defaultdict(list), defaultdict(set)
    consumer._committed_offset, consumer._gap = defaultdict(lambda: None), defaultdict(IntervalTree)
    consumer._acked[tp].extend(acked)
    consumer._acked_index[tp].update(acked)
    return consumer


def test_a_rebalance_commits_what_the_tables_applied_not_what_the_stream_skipped():
    from faust.types import TP

    original = faust_compat._original_filter_committable_offsets or driver.Consumer._filter_committable_offsets
    app = faust.App("compat-commit", broker="kafka://127.0.0.1:1", web_enabled=False)
    applied = faust_compat.commit_only_applied(app)
    tp = TP("hybridspend.gpu-samples", 1)
    # the tables applied and changelogged offsets 0..267 (next: 268); the stream skipped and
    # acknowledged 268..347 (80 records) while flow control was suspended for the rebalance
    applied[(tp.topic, tp.partition)] = 268
    skipped = list(range(268, 348))
    # Faust's own rule commits past all 80: the next owner would start at 348 (the loss)
    assert original(_consumer_after_a_revoke(app, tp, skipped), [tp]) == {tp: 348}
    consumer = _consumer_after_a_revoke(app, tp, skipped)
    assert consumer._filter_committable_offsets([tp]) == {tp: 268}
    # once the tables applied them (next: 348), those offsets are committed
    applied[(tp.topic, tp.partition)] = 348
    assert consumer._filter_committable_offsets([tp]) == {tp: 348}
    assert consumer._acked[tp] == [] and not consumer._acked_index[tp]
    # a partition whose tables report nothing is not committed at all
    other = TP("hybridspend.gpu-samples", 0)
    assert _consumer_after_a_revoke(app, other, [0, 1, 2])._filter_committable_offsets([other]) == {}
    # after a revoke the partition's new owner decides: this worker no longer commits it
    asyncio.run(app.on_partitions_revoked.send({tp}))
    assert (tp.topic, tp.partition) not in applied


def test_an_app_without_table_positions_keeps_fausts_commit_rule():
    from faust.types import TP

    faust_compat.commit_only_applied(faust.App("compat-commit-a", broker="kafka://127.0.0.1:1", web_enabled=False))
    plain = faust.App("compat-commit-plain", broker="kafka://127.0.0.1:1", web_enabled=False)
    tp = TP("t", 0)
    assert _consumer_after_a_revoke(plain, tp, [5, 6, 7])._filter_committable_offsets([tp]) == {tp: 8}


def test_a_stream_that_no_longer_acks_skipped_records_is_noticed(monkeypatch):
    def _py_aiter(self):  # what a fixed release could look like: the check names the internal
        yield None

    monkeypatch.setattr(faust.Stream, "_py_aiter", _py_aiter)
    with pytest.raises(IncompatibleFramework, match=r"Stream\._py_aiter no longer uses value is skipped_value"):
        check_internals()


def test_a_partition_whose_tables_moved_on_is_committed_without_acknowledgements_since_the_rebalance():
    from faust.types import TP

    app = faust.App("compat-commit-quiet", broker="kafka://127.0.0.1:1", web_enabled=False)
    applied = faust_compat.commit_only_applied(app)
    quiet, busy = TP("hybridspend.instance-events", 3), TP("hybridspend.gpu-samples", 3)
    # a revoke forgot every acknowledgement; only `busy` was acknowledged since; the tables of both moved on
    consumer = _consumer_after_a_revoke(app, busy, [10, 11])
    applied[(quiet.topic, quiet.partition)] = 26
    applied[(busy.topic, busy.partition)] = 12
    tps = set(consumer._filter_tps_with_pending_acks())
    assert tps == {quiet, busy}
    assert consumer._filter_committable_offsets(tps) == {quiet: 26, busy: 12}
    assert set(consumer._filter_tps_with_pending_acks({"hybridspend.gpu-samples"})) == {busy}


class _Record:
    def __init__(self, tp, offset: int) -> None:
        self.tp, self.topic, self.partition, self.offset = tp, tp.topic, tp.partition, offset
        self.key = self.value = b""


def _drain_with_a_seek_while_a_record_waits(app: faust.App) -> list[int]:
    """Faust's real ``Consumer._drain_messages`` over a fetcher that returns offsets 25-29 of a
    partition whose tables hold offset 21: while record 25 waits to be delivered (on flow
    control, a full stream buffer), the consumer is sent back to 21 (``perform_seek`` after
    recovery, ``seek_wait`` from ``read_again_from``: both set the fetch position and Faust's read
    offset).  Returns the offsets delivered."""
    from faust.types import TP
    from mode import Service

    async def run() -> list[int]:
        consumer = app.consumer
        tp = TP("hybridspend.instance-events", 3)
        position, log_end, fetches, delivered = [25], 30, [], []
        fetcher = Service()

        async def getmany(timeout):
            start, position[0] = position[0], log_end  # drained: the position moves to the batch's end
            fetches.append(start)
            if start == log_end:
                await asyncio.sleep(0.01)
                if len(fetches) > 3:
                    await fetcher.stop()
                return
            for offset in range(start, log_end):
                yield tp, _Record(tp, offset)

        async def callback(message):
            delivered.append(message.offset)
            if message.offset == 25 and len(fetches) == 1:
                position[0] = 21  # the seek, while record 25 is still being delivered
                consumer._read_offset[tp] = 21

        consumer.callback, consumer.getmany, consumer._commit_every = callback, getmany, None
        await fetcher.start()
        await asyncio.wait_for(consumer._drain_messages(fetcher), 10)
        return delivered

    return asyncio.run(run())


def test_records_a_seek_brings_back_are_delivered_not_dropped_as_already_read():
    plain = faust.App("compat-drop-plain", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    # Faust's rule: record 25, delivered after the seek, sets the read offset past it; 21-24 are
    # fetched again and dropped as read, and the fetcher is at the end of the log (the tail stall)
    assert set(range(21, 30)) - set(_drain_with_a_seek_while_a_record_waits(plain)) == {21, 22, 23, 24}

    app = faust.App("compat-drop", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    faust_compat.replay_instead_of_drop(app, ["hybridspend.instance-events"])
    delivered = _drain_with_a_seek_while_a_record_waits(app)
    # the batch fetched before the seek, then everything from 21: the tables skip 25-29 as a gap
    # the first time (PartitionClock.take) and apply them in order the second
    assert delivered == [*range(25, 30), *range(21, 30)]

    other = faust.App("compat-drop-other", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    faust_compat.replay_instead_of_drop(other, ["hybridspend.gpu-samples"])  # not this topic: Faust's rule
    assert 21 not in _drain_with_a_seek_while_a_record_waits(other)


def test_a_drain_loop_that_no_longer_reads_the_read_offset_is_noticed(monkeypatch):
    async def _drain_messages(self, fetcher):  # a release that changed how it drops records
        return None

    monkeypatch.setattr(driver.Consumer, "_drain_messages", _drain_messages)
    with pytest.raises(IncompatibleFramework, match=r"_drain_messages no longer uses get_read_offset"):
        check_internals()


def test_table_recovery_never_seeks_a_changelog_below_its_start():
    import asyncio
    from collections import Counter

    from faust.types import TP

    from hybridspend.streams.faust_compat import _recovery, clamp_recovery_seeks

    clamp_recovery_seeks()
    clamp_recovery_seeks()  # once is enough: a second call changes nothing

    class Consumer:
        async def seek_wait(self, offsets):
            self.offsets = offsets

    consumer = Consumer()
    tps = {TP("w-changelog", 0), TP("w-changelog", 1), TP("w-changelog", 2), TP("w-changelog", 3)}
    # the earliest offset the broker gave as -1, less Faust's own 1: -2, which aiokafka refuses; or none at all
    offsets = Counter({TP("w-changelog", 0): -2, TP("w-changelog", 1): -1, TP("w-changelog", 2): 7,
                       TP("w-changelog", 3): None})
    asyncio.run(_recovery()._seek_offsets(object(), consumer, tps, offsets, "active"))
    assert consumer.offsets == {TP("w-changelog", 0): 0, TP("w-changelog", 1): 0, TP("w-changelog", 2): 7,
                                TP("w-changelog", 3): 0}


@pytest.mark.integration
def test_table_recovery_and_consumer_lag_read_a_batched_log_to_its_end(broker, topic_prefix):
    """After a batched produce the local broker lists the last batch's base offset + 1 as the end: recovery read
    only that far and lost the rest of the batch on a restart, and lag read too low.  Both read to the end a fetch
    gives (on Kafka, where the listed end is right, the two agree)."""
    import logging
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer
    from faust.types import TP
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from hybridspend.contracts.config import KafkaConfig
    from hybridspend.infra.broker import LagProbe

    topic = f"{topic_prefix}changelog"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200, batch_size=1 << 20)
    for i in range(30):  # two batches on partition 0 (flushed between), one on partition 1
        producer.send(topic, key=b"k%d" % i, value=b"v", partition=0 if i < 20 else 1)
        if i == 9:
            producer.flush()
    producer.flush()
    producer.close()
    truth = {TP(topic, 0): 20, TP(topic, 1): 10}

    class Highwaters:  # Faust's consumer's method, answered by aiokafka from the broker's listed end offsets
        async def highwaters(self, *tps):
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
            await consumer.start()
            try:
                from aiokafka import TopicPartition
                ends = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
                return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}
            finally:
                await consumer.stop()

    app = faust.App(f"{topic_prefix}app", broker=f"kafka://{broker.bootstrap}")
    apply_broker_profile(app, broker.profile)
    recovery = SimpleNamespace(app=app, log=logging.getLogger("test"), _highwater_logtable=lambda *a, **k: "")
    listed, read_to = {}, {}
    asyncio.run(faust_compat._original_build_highwaters()(recovery, Highwaters(), set(truth), listed, "active"))
    asyncio.run(faust_compat._recovery()._build_highwaters(recovery, Highwaters(), set(truth), read_to, "active"))
    assert {tp: hw + 1 for tp, hw in read_to.items()} == truth  # Faust's highwater is the end - 1
    if broker.profile.listed_ends_short:
        assert {tp: hw + 1 for tp, hw in listed.items()} != truth  # the broker's own answer fell short
    probe = LagProbe(broker.bootstrap, KafkaConfig(), [])
    try:
        from kafka import TopicPartition
        ends = probe.log_ends([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        assert {TP(tp.topic, tp.partition): end for tp, end in ends.items()} == truth
    finally:
        probe.close()
