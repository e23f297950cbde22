"""The sink's confluent-kafka consumer (``infra.fast_consumer``) against the real local broker.

It answers as kafka-python's consumer does where the sink relies on it: records grouped by
partition, seeks, the log's end, commits of only what ``poll`` returned (librdkafka prefetches far
ahead), rebalances reported to the sink's listener, and the security settings under librdkafka's
names.  Two sinks in one group share the partitions, each placed on the offsets stored with the rows.
"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException

from hybridspend.contracts.config import KafkaConfig
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import LOCAL_PROFILE, client_security, ensure_topics, make_producer, make_sink_consumer
from hybridspend.infra.fast_consumer import (ConsumerRebalanceListener, FastConsumer, Record, TopicPartition,
                                             librdkafka_settings)
from hybridspend.infra.local import free_port
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Sink, sink_topics
from tests.test_sink_exactly_once import expected, produce, reset_kafka_offsets, samples, totals


def _produce(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = make_producer(bootstrap, KafkaConfig(), linger_ms=5)
    for value in values:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def _poll_until(consumer, count: int, max_records: int | None = None, timeout_s: float = 30) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"read {len(records)} of {count} records"
        for tp, recs in consumer.poll(timeout_ms=200, max_records=max_records).items():
            assert all((r.topic, r.partition) == tp for r in recs)
            records.extend(recs)
    return records


def _committed(bootstrap: str, group: str) -> dict:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {tp: meta.offset for tp, meta in admin.list_group_offsets({group: None}).get(group, {}).items()}
    finally:
        admin.close()


def test_security_settings_reach_librdkafka_under_its_names(monkeypatch, tmp_path):
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ca.write_bytes(cert.read_bytes())
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret-kafka-pw")
    kafka = KafkaConfig(bootstrap_servers="kafka.internal:9093", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="hybridspend",
                        sasl_password={"env": "TEST_KAFKA_PASSWORD"}, ssl_cafile=ca, ssl_certfile=cert,
                        ssl_keyfile=key)
    conf = librdkafka_settings(client_security(kafka))
    assert conf == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "hybridspend",
        "sasl.password": "s3cret-kafka-pw", "ssl.ca.location": str(ca), "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key)}
    # librdkafka checks every name and value, and loads the certificate and key, when it makes a client
    Consumer({**conf, "bootstrap.servers": kafka.bootstrap_servers, "group.id": "g"}).close()
    with pytest.raises(KafkaException, match="ssl.certificate.location"):
        Consumer({**conf, "ssl.certificate.location": str(tmp_path / "missing.pem"),
                  "bootstrap.servers": kafka.bootstrap_servers, "group.id": "g"})
    plain = librdkafka_settings(client_security(KafkaConfig()))
    assert plain == {"security.protocol": "PLAINTEXT"}
    with pytest.raises(ValueError, match="no confluent-kafka .librdkafka. setting for ssl_crlfile"):
        librdkafka_settings({**client_security(kafka), "ssl_crlfile": "crl.pem"})  # never dropped silently


def test_an_unreachable_broker_is_named_after_the_attempts():
    with pytest.raises(ConnectionError, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+ after \d+ attempts"):
        make_sink_consumer(f"127.0.0.1:{free_port()}", KafkaConfig(connect_timeout_seconds=1.5), LOCAL_PROFILE,
                           "g", ["x.t"])


@pytest.mark.integration
def test_poll_seek_end_offsets_and_commit_answer_as_kafka_python_does(broker, topic_prefix):
    topic = f"{topic_prefix}raw"
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    ensure_topics(broker.bootstrap, KafkaConfig(), Topics(topic_prefix, 1), extra={topic: 2})
    _produce(broker.bootstrap, topic, [b"a%d" % i for i in range(100)], partition=0)
    _produce(broker.bootstrap, topic, [b"b%d" % i for i in range(30)], partition=1)
    group = f"{topic_prefix}g"
    consumer = make_sink_consumer(broker.bootstrap, KafkaConfig(), broker.profile, group, [topic])
    try:
        assert consumer.subscription() == {topic}
        # seeks right after the poll that assigned the partitions, as the sink places them: librdkafka
        # may not fetch them yet (it seeks only a partition it fetches), and the seek must hold anyway
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no assignment"
            consumer.poll(timeout_ms=20, max_records=1)
        assert consumer.assignment() == {p0, p1}
        consumer.seek(p0, 95)
        consumer.seek_to_beginning(p1)
        read = _poll_until(consumer, 35)
        assert [(r.partition, r.offset, r.value) for r in read if r.partition == 0] == \
            [(0, o, b"a%d" % o) for o in range(95, 100)]
        assert [r.offset for r in read if r.partition == 1] == list(range(30))  # in order, once

        consumer.seek_to_beginning()
        first = _poll_until(consumer, 10, max_records=10)
        assert len(first) == 10
        # librdkafka has fetched ahead by now; a commit covers only what poll returned
        consumer.commit()
        polled = {}
        for r in first:
            polled[TopicPartition(r.topic, r.partition)] = r.offset + 1
        assert _committed(broker.bootstrap, group) == polled
        rest = _poll_until(consumer, 120)
        assert sorted(r.value for r in first + rest) == sorted([b"a%d" % i for i in range(100)] +
                                                               [b"b%d" % i for i in range(30)])
        assert [r.offset for r in first + rest if r.partition == 0] == list(range(100))
        consumer.commit()
        assert _committed(broker.bootstrap, group) == {p0: 100, p1: 30}
        # Tansu may report the end of a batched produce short (DESIGN.md §5): at most the records' end
        ends = consumer.end_offsets([p0, p1])
        assert 0 < ends[p0] <= 100 and 0 < ends[p1] <= 30
    finally:
        consumer.close()
        consumer.close()  # closing twice is harmless (the CLI and the tests both close)


@pytest.mark.integration
def test_a_listener_seeks_the_partitions_it_is_given_before_they_are_fetched(broker, topic_prefix):
    """Seeking inside ``on_partitions_assigned`` (kafka-python's way to start from stored offsets):
    librdkafka seeks only a partition it already fetches, so the adapter assigns them again at the offsets."""
    topic = f"{topic_prefix}raw"
    ensure_topics(broker.bootstrap, KafkaConfig(), Topics(topic_prefix, 1), extra={topic: 2})
    _produce(broker.bootstrap, topic, [b"a%d" % i for i in range(50)], partition=0)
    _produce(broker.bootstrap, topic, [b"b%d" % i for i in range(20)], partition=1)
    consumer = make_sink_consumer(broker.bootstrap, KafkaConfig(), broker.profile, f"{topic_prefix}g", [topic])

    class FromStored(ConsumerRebalanceListener):
        given: list = []

        def on_partitions_revoked(self, revoked) -> None:
            pass

        def on_partitions_assigned(self, assigned) -> None:
            self.given.append(set(assigned))
            for tp in assigned:
                consumer.seek(tp, {0: 40, 1: 15}[tp.partition])

    try:
        consumer.unsubscribe()
        consumer.subscribe([topic], listener=FromStored())
        read = _poll_until(consumer, 15)
        assert FromStored.given == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
        assert sorted((r.partition, r.offset) for r in read) == [(0, o) for o in range(40, 50)] + \
            [(1, o) for o in range(15, 20)]
    finally:
        consumer.close()


@pytest.mark.integration
def test_two_sinks_in_one_group_share_the_partitions_each_placed_on_the_stored_offsets(broker, database,
                                                                                     topic_prefix):
    """Two sinks share a group whose Kafka offsets were reset to 0 (by an operator, while none ran):
    the first takes both partitions, the second joins and takes one over (a rebalance), and each is
    placed on the offset stored with the rows, so what comes next is stored once (a replay from
    Kafka's offsets would be dead-lettered as duplicates)."""
    migrate(database)
    topics = Topics(topic_prefix, 2)
    ensure_topics(broker.bootstrap, KafkaConfig(), topics)
    produce(broker.bootstrap, topics, samples(0, 200), [])
    group = topics.group("sink")

    def sink() -> Sink:
        return Sink(make_sink_consumer(broker.bootstrap, KafkaConfig(), broker.profile, group, sink_topics(topics),
                                       fetch_max_wait_ms=100), database, topics, say=lambda m: None)

    def run_until(condition, what: str, *sinks: Sink) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {totals(database)}"
            for s in sinks:
                s.run_once(timeout_ms=100)

    def partitions(s: Sink) -> set[int]:
        return {tp.partition for tp in s.consumer.assignment() if tp.topic == topics.gpu_samples}

    earlier = sink()
    try:
        run_until(lambda: totals(database) == expected(200, 0), "the first 200 samples stored", earlier)
    finally:
        earlier.consumer.close()
        earlier.close()
    reset_kafka_offsets(broker.bootstrap, broker.profile, group, topics)  # only the stored offsets are right now
    first, second = sink(), None
    try:
        run_until(lambda: partitions(first) == {0, 1} and not first.unplaced, "the first sink placed", first)
        second = sink()
        run_until(lambda: len(partitions(first)) == len(partitions(second)) == 1 and not first.unplaced
                  and not second.unplaced, "the partitions shared", first, second)
        assert partitions(first) | partitions(second) == {0, 1}
        produce(broker.bootstrap, topics, samples(200, 100), [])
        run_until(lambda: totals(database) == expected(300, 0), "the next 100 samples stored", first, second)
        assert first.records_read > 0 and second.records_read > 0  # each read its own partition
        assert first.records_read + second.records_read == 100  # each new record once, none of the first 200
    finally:
        for s in (first, second):
            if s is not None:
                s.consumer.close()
                s.close()
    assert totals(database) == expected(300, 0)  # every sample once, no dead letters
    with psycopg.connect(database) as conn:
        stored = conn.execute("SELECT sum(next_offset) FROM sink_offsets WHERE group_id = %s AND topic = %s",
                              (group, topics.gpu_samples)).fetchone()[0]
    assert stored == 300


def test_fast_consumer_refuses_a_kafka_python_setting_it_cannot_map():
    with pytest.raises(ValueError, match="no confluent-kafka .librdkafka. setting for isolation_level"):
        FastConsumer({"bootstrap_servers": "127.0.0.1:1", "isolation_level": "read_committed"})
