"""The sink stores each record exactly once: its offsets live in the database with the rows.

A real ``hybridspend sink`` killed with SIGKILL at random points loses and doubles nothing; a
consumer group whose Kafka offsets were reset reads on from the stored offsets; and a replay that
slips past them (the stored offsets deleted as well) is dead-lettered with its reason, not counted.
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
import yaml

from hybridspend.contracts.config import KafkaConfig, load_config
from hybridspend.contracts.events import CostWindow, GpuReading, GpuSample
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, make_sink_consumer
from hybridspend.infra.local import Endpoints
from hybridspend.infra.services import Services
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import (
    Batch,
    OffsetsMoved,
    Sink,
    StoredOffsets,
    gpu_sample_rows,
    sink_topics,
    write_batch,
)
from hybridspend.storage.timeseries import POSTGRESQL, Partitions
from tests.conftest import wait_until

pytestmark = pytest.mark.integration  # a real broker, a real PostgreSQL, real sink processes

# the sink drops raw samples past their retention by the wall clock: the samples are dated two days
# before today (120,000 one-second samples end before yesterday is over), whatever today is
T0 = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
T0_MS = int(T0.timestamp() * 1000)
GPUS = 4


def samples(first: int, count: int, gpus: int = GPUS) -> list[GpuSample]:
    """``count`` one-second samples of ``gpus`` GPUs each, over three hosts in turn (120,000 of them
    stay within two days: few partitions to create while the test reads)."""
    return [GpuSample(f"s{i}", T0_MS + i * 1000, 1000, f"node-{i % 3}", "onprem", "test",
                      [GpuReading(f"GPU-{i % 3}-{g}", g, "A100", "A100", 50.0, 10, 80, 300_000, [])
                       for g in range(gpus)])
            for i in range(first, first + count)]


def windows(first: int, count: int) -> list[CostWindow]:
    """``count`` cost windows; window i costs i micro-dollars plus $1."""
    return [CostWindow(
        event_id=CostWindow.make_id("node-0", "train", "onprem", "A100", T0_MS + i * 900_000), workload="train",
        team="ml", allow_spot=False, environment="onprem", gpu_class="A100", resource="node-0",
        window_start_ms=T0_MS + i * 900_000, window_ms=900_000, allocated_gpu_ms=900_000, busy_gpu_ms=450_000,
        metered_gpu_ms=900_000, energy_mj=1000, sample_count=15, first_ms=T0_MS + i * 900_000,
        last_ms=T0_MS + (i + 1) * 900_000, cost_usd=D(1) + D(i) / 10**6) for i in range(first, first + count)]


def produce(bootstrap: str, topics: Topics, gpu_samples: list[GpuSample], cost_windows: list[CostWindow]) -> None:
    producer = make_producer(bootstrap, KafkaConfig(), linger_ms=20)
    for s in gpu_samples:
        producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
    for w in cost_windows:
        producer.send(topics.cost_windows, key=w.workload.encode(), value=w.encode())
    producer.flush()
    producer.close()


def totals(dsn: str) -> tuple:
    """(GPU-sample rows, their utilization sum, cost windows, their cost, dead letters)."""
    for attempt in range(5):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return conn.execute(
                    "SELECT (SELECT count(*) FROM gpu_samples), (SELECT sum(utilization_pct) FROM gpu_samples),"
                    " (SELECT count(*) FROM cost_windows), (SELECT sum(cost_usd) FROM cost_windows),"
                    " (SELECT count(*) FROM dead_letters)").fetchone()
        except psycopg.errors.DeadlockDetected:
            # the sink creating a partition while this reads both tables: PostgreSQL aborts one
            # side (the sink retries its batch); read again
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def expected(n_samples: int, n_windows: int, gpus: int = GPUS) -> tuple:
    # every GPU row at 50 %; window i costs 1 + i / 10^6: n + (0 + 1 + ... + (n-1)) / 10^6
    return (n_samples * gpus, n_samples * gpus * 50.0, n_windows,
            n_windows + D(n_windows * (n_windows - 1) // 2) / 10**6 if n_windows else None, 0)


def reset_kafka_offsets(bootstrap: str, profile, group: str, topics: Topics) -> None:
    """What an operator's `kafka-consumer-groups --reset-offsets --to-earliest` does: the group's
    committed offsets back to 0."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    parts = [TopicPartition(t, p) for t in (topics.gpu_samples, topics.cost_windows) for p in range(topics.partitions)]
    consumer.assign(parts)
    consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in parts})
    consumer.close()


def _sink(broker, dsn: str, topics: Topics) -> Sink:
    consumer = make_sink_consumer(broker.bootstrap, KafkaConfig(), broker.profile, topics.group("sink"),
                                  sink_topics(topics), fetch_max_wait_ms=100)
    return Sink(consumer, dsn, topics, say=lambda m: None)


def _drain(sink: Sink, until, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "the sink did not catch up in time"
        sink.run_once(timeout_ms=200)


def test_reset_kafka_offsets_are_overruled_by_the_stored_ones_and_a_replay_past_them_is_dead_lettered(
        broker, database, topic_prefix):
    migrate(database)
    topics = Topics(topic_prefix, 2)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    produce(broker.bootstrap, topics, samples(0, 300), windows(0, 40))
    first = expected(300, 40)  # 1200 GPU rows, 40 windows
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: totals(database) == first)
        assert sink.records_read == 340
    finally:
        sink.consumer.close()
        sink.close()
    with psycopg.connect(database) as conn:  # every record read is stored with its offset
        assert conn.execute("SELECT sum(next_offset) FROM sink_offsets WHERE group_id = %s",
                            (topics.group("sink"),)).fetchone()[0] == 340

    # an operator resets the group's Kafka offsets: the sink starts from its stored ones, reading only what is new
    reset_kafka_offsets(broker.bootstrap, broker.profile, topics.group("sink"), topics)
    produce(broker.bootstrap, topics, samples(300, 10), windows(40, 2))
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: totals(database) == expected(310, 42))
        assert sink.records_read == 12
    finally:
        sink.consumer.close()
        sink.close()

    # the stored offsets deleted as well: everything is read again; the windows are upserted unchanged,
    # and each GPU-sample row (append-only, COPYed straight in) collides with its stored copy
    reset_kafka_offsets(broker.bootstrap, broker.profile, topics.group("sink"), topics)
    with psycopg.connect(database) as conn:
        conn.execute("DELETE FROM sink_offsets")
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: sink.records_read >= 352 and totals(database)[4] == 310 * GPUS)
    finally:
        sink.consumer.close()
        sink.close()
    rows, util, n_windows, cost, letters = totals(database)
    assert (rows, util, n_windows, cost) == expected(310, 42)[:4]  # nothing counted twice
    assert letters == 310 * GPUS  # every replayed GPU row, once
    with psycopg.connect(database) as conn:
        reason, table = conn.execute("SELECT reason, source_topic FROM dead_letters WHERE reason LIKE %s",
                                     ("%resource=node-1, gpu_uuid=GPU-1-2%",)).fetchone()
    assert table == "gpu_samples"
    assert reason.startswith(f"sink: duplicate gpu_samples row (ts={T0:%Y-%m-%d}T00:0")
    assert "already stored, so this copy is not stored again" in reason and "were they reset?" in reason


@pytest.mark.slow
def test_a_sink_killed_at_random_points_never_loses_or_doubles_a_row(broker, database, topic_prefix, tmp_path: Path):
    migrate(database)
    cfg = {"state_dir": str(tmp_path / "state"), "kafka": {"topic_prefix": topic_prefix, "topic_partitions": 2}}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    services = Services(config, config_path, Endpoints(broker.bootstrap, database, broker.profile, True, True))
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    n_samples = n_windows = 0
    mid_stream = 0  # kills that left a round partly stored
    try:
        for round_ in range(4):
            chunk = 12_000  # one GPU each: three polls of at most 5000 records, three transactions
            produce(broker.bootstrap, topics, samples(n_samples, chunk, gpus=1), windows(n_windows, 50))
            before = totals(database)[0]
            n_samples, n_windows = n_samples + chunk, n_windows + 50
            want = expected(n_samples, n_windows, gpus=1)
            services.start("sink")
            if round_ % 2:  # any time: starting up, joining the group, or writing
                time.sleep(rng.uniform(0.5, 6.0))
            else:  # while it writes
                wait_until(lambda before=before: totals(database)[0] > before, 60, "the first rows of the round",
                           interval_s=0.05)
                time.sleep(rng.uniform(0, 0.1))
            services.procs["sink"].kill()  # SIGKILL: no clean-up of any kind
            services.procs["sink"].wait()
            mid_stream += before < totals(database)[0] < want[0]
            services.start("sink")
            wait_until(lambda want=want: totals(database)[0] >= want[0] and totals(database)[2] >= want[2], 120,
                       f"round {round_} stored (seed {seed})")
            assert totals(database) == want, f"round {round_}, seed {seed}"
            services.procs["sink"].kill()
            services.procs["sink"].wait()
        assert mid_stream >= 1, f"no kill landed between two batches of a round (seed {seed})"
        with psycopg.connect(database) as conn:
            stored = conn.execute("SELECT sum(next_offset) FROM sink_offsets WHERE group_id = %s",
                                  (topics.group("sink"),)).fetchone()[0]
        assert stored == n_samples + n_windows  # 48,000 samples + 200 windows, each read and stored once
    finally:
        services.stop()


def test_a_sink_that_lost_its_partitions_cannot_write_over_the_new_owner(database):
    migrate(database)

    def batch(first: int, next_offset: int) -> Batch:
        b = Batch()
        for s in samples(first, 10):
            for row in gpu_sample_rows(s):
                b.add("gpu_samples", row)
        b.offsets[("t.gpu-samples", 0)] = next_offset
        return b

    partitions = Partitions(POSTGRESQL)
    old_owner, new_owner = StoredOffsets("sink", {}), StoredOffsets("sink", {})
    with psycopg.connect(database) as conn:
        write_batch(conn, batch(0, 10), POSTGRESQL, partitions, old_owner)  # offsets 0-9
        old_owner.seen[("t.gpu-samples", 0)] = 10
        # a rebalance: the new owner reads the stored offset and writes offsets 10-19
        new_owner.seen.update(new_owner.load(conn))
        conn.commit()
        write_batch(conn, batch(10, 20), POSTGRESQL, partitions, new_owner)
        # the old owner, not told yet, writes what it had polled after offset 9: refused, nothing stored
        with pytest.raises(OffsetsMoved, match=r"t.gpu-samples\[0\]: stored offset 20, this sink saw 10"):
            write_batch(conn, batch(10, 20), POSTGRESQL, partitions, old_owner)
        assert conn.execute("SELECT count(*), min(next_offset) FROM gpu_samples, sink_offsets").fetchone() == \
            (20 * GPUS, 20)  # 20 samples of 4 GPUs, stored once


def test_a_recreated_topic_longer_than_the_stored_offset_is_read_from_its_start(broker, database, topic_prefix,
                                                                              caplog):
    """The stored offsets carry the id of the log they count in: a new log under the same name is
    read whole, even when it is already past the offset stored against the old one."""
    from kafka import KafkaAdminClient

    migrate(database)
    topics = Topics(topic_prefix, 1)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    produce(broker.bootstrap, topics, samples(0, 30), [])
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: totals(database)[0] == 30 * GPUS)
    finally:
        sink.consumer.close()
        sink.close()
    with psycopg.connect(database) as conn:
        (old_id,) = conn.execute("SELECT topic_id FROM sink_offsets WHERE topic = %s AND next_offset = 30",
                                 (topics.gpu_samples,)).fetchone()
    assert old_id

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.delete_topics([topics.gpu_samples])
        wait_until(lambda: topics.gpu_samples not in admin.list_topics(), 30, "the topic deleted")
    finally:
        admin.close()
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    produce(broker.bootstrap, topics, samples(100, 45), [])  # 45 records: past the stored offset 30
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: totals(database)[0] == 75 * GPUS)
        sink.run_once(timeout_ms=500)  # nothing more comes
    finally:
        sink.consumer.close()
        sink.close()
    assert totals(database) == expected(75, 0)  # all 45 new samples, none of the old read twice
    assert re.search(r"the stored offset 30 counts in the topic's log " + old_id + r", the topic is now \S+",
                     caplog.text)
    with psycopg.connect(database) as conn:
        new_id, next_offset = conn.execute("SELECT topic_id, next_offset FROM sink_offsets WHERE topic = %s",
                                           (topics.gpu_samples,)).fetchone()
    assert (next_offset, new_id != old_id) == (45, True)


def test_copies_of_a_gpu_sample_row_in_one_batch_or_already_stored_are_dead_lettered_once_each(database):
    """Append-only rows are not keyed as they come: the database's unique key finds the copies."""
    migrate(database)
    sink = Sink(None, database, Topics("t.", 1))
    try:
        first = Batch()
        first.extend("gpu_samples", gpu_sample_rows(samples(0, 1)[0]))
        assert sink.write_durably(first)
        again = Batch()  # sample 0 once more (stored already), sample 1 twice in this batch
        for s in (samples(0, 1)[0], samples(1, 1)[0], samples(1, 1)[0]):
            again.extend("gpu_samples", gpu_sample_rows(s))
        assert sink.write_durably(again)
    finally:
        sink.close()
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM gpu_samples").fetchone() == (2 * GPUS,)
        letters = [r for (r,) in conn.execute("SELECT reason FROM dead_letters ORDER BY reason")]
    assert len(letters) == 2 * GPUS  # sample 0's copy and sample 1's second copy, every GPU
    assert all(r.startswith(f"sink: duplicate gpu_samples row (ts={T0:%Y-%m-%d}T00:00:0") for r in letters)
    assert sum("00:00:01" in r for r in letters) == GPUS  # sample 1: its first copy stored, the second refused
    assert sink.rejected == 2 * GPUS and sink.rows_written == 2 * GPUS


def test_stored_offsets_past_the_end_of_a_recreated_log_read_it_from_the_start(broker, database, topic_prefix,
                                                                              caplog):
    """The local broker keeps nothing across restarts while the database keeps the stored offsets."""
    migrate(database)
    topics = Topics(topic_prefix, 1)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    with psycopg.connect(database) as conn:  # what a sink stored before the broker lost its data
        conn.execute("INSERT INTO sink_offsets (group_id, topic, partition, next_offset) VALUES (%s, %s, 0, 10000)",
                     (topics.group("sink"), topics.gpu_samples))
    produce(broker.bootstrap, topics, samples(0, 50), [])
    sink = _sink(broker, database, topics)
    try:
        _drain(sink, lambda: totals(database)[0] == 50 * GPUS)
    finally:
        sink.consumer.close()
        sink.close()
    assert totals(database) == expected(50, 0)
    # (the end Tansu reports may be below 50 after batched produce: docs/design.md, "Broker profiles")
    assert re.search(r"the stored offset 10000 is past the end of the log \(\d+\): the topic was recreated",
                     caplog.text)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT next_offset FROM sink_offsets WHERE topic = %s",
                            (topics.gpu_samples,)).fetchone() == (50,)


def test_records_decoded_while_their_rows_are_copied_are_stored_and_dead_lettered_as_before(database):
    """The sink decodes GPU-sample records while their rows are COPYed (``Batch.defer``, ``copy_streamed``),
    in the batch's one transaction: a row of a day with no partition yet ends the COPY, its partition
    is created and a second COPY takes the rest; a record that does not decode is dead-lettered with
    the batch; a batch holding stored samples is written again carefully, decoded whole."""
    from types import SimpleNamespace

    migrate(database)
    topics = Topics("t.", 1)
    sink = Sink(None, database, topics)
    day = 86_400  # samples are one second apart from T0, midnight: sample 86,400 opens the next day

    def records(payloads: list[bytes]) -> list:
        return [SimpleNamespace(topic=topics.gpu_samples, partition=0, offset=i, value=v)
                for i, v in enumerate(payloads)]

    payloads = [s.encode() for s in samples(day - 10, 20)]
    payloads.insert(5, b'{"schema":"gpu_sample.v1","event_id":"x"}')
    first = sink.decode(records(payloads), defer=True)
    assert sink.rejected == 0  # nothing decoded yet
    try:
        assert sink.write_durably(first)
        assert sink.rejected == 1 and sink.rows_written == 20 * GPUS + 1
        with psycopg.connect(database) as conn:
            parts = {r for (r,) in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'gpu_samples'::regclass")}
        assert parts == {f"gpu_samples_p{T0 + timedelta(days=d):%Y%m%d}" for d in (0, 1)} <= sink.partitions.known
        assert totals(database) == (20 * GPUS, 20 * GPUS * 50.0, 0, None, 1)

        # 10 stored samples and 10 new ones, the new ones opening a third day: refused as a whole (a
        # stored key), written again carefully; the partition created in the refused transaction is
        # created again
        again = sink.decode(records([s.encode() for s in samples(2 * day, 10) + samples(day, 10)]), defer=True)
        assert sink.write_durably(again)
        assert sink.rows_written == 30 * GPUS + 1 and sink.rejected == 1 + 10 * GPUS
    finally:
        sink.close()
    assert totals(database)[0] == 30 * GPUS and totals(database)[4] == 1 + 10 * GPUS
    with psycopg.connect(database) as conn:
        assert conn.execute(f"SELECT count(*) FROM gpu_samples_p{T0 + timedelta(days=2):%Y%m%d}").fetchone() == \
            (10 * GPUS,)
        (reason,) = conn.execute("SELECT reason FROM dead_letters WHERE source_topic = %s",
                                 (topics.gpu_samples,)).fetchone()
    assert reason.startswith("sink: ")


def test_the_cyclic_garbage_collector_runs_again_after_a_batch_whatever_happened():
    import gc

    from hybridspend.storage.sink import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(psycopg.OperationalError):
        with cyclic_gc_paused():
            raise psycopg.OperationalError("the database went away")
    assert gc.isenabled()
    gc.disable()  # paused by someone else: left as it was
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
