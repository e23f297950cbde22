"""The sink's Kafka consumer: confluent-kafka (librdkafka, in C) behind the few kafka-python methods the sink uses.

Reading the benchmark's 8,100 GPU-sample records (22 MB) from the local broker took kafka-python
0.62 s (median of six; 0.27 s of CPU), aiokafka 0.36 s (0.12 s) and confluent-kafka through this
class 0.26 s (0.05 s) on 2 shared cores (docs/performance.md).  librdkafka also fetches in its own
threads, ahead of the application, so the next batch is read while the sink's transaction runs.  Exactly-once does not change: what it
prefetched reaches the sink only through ``poll``, a seek or a rebalance discards it, and the
offsets the sink stores and commits are those of the records ``poll`` returned.

``FastConsumer`` takes kafka-python's setting names (``config`` keeps them, for the kafka-python
admin client that ``TopicIds`` makes from it) and answers with kafka-python's types: ``poll``
returns ``{TopicPartition: [Record]}`` (records with ``.topic .partition .offset .key .value``),
rebalances reach a ``ConsumerRebalanceListener``, and a commit the group refuses raises
``CommitFailedError``.  kafka-python remains the collectors' producer and the admin client.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as Part
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError

__all__ = ["CommitFailedError", "ConsumerRebalanceListener", "FastConsumer", "Record", "TopicPartition",
           "librdkafka_settings"]

log = logging.getLogger(__name__)

# kafka-python's names for the settings the sink's consumer is made with -> librdkafka's
SETTING_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "group_id": "group.id",
    "client_id": "client.id",
    "enable_auto_commit": "enable.auto.commit",
    "auto_offset_reset": "auto.offset.reset",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    # TLS and SASL (``broker.client_security``): same values, other names
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
}
# kafka-python settings with no librdkafka setting: what they do is done here
OWN_SETTINGS = {"max_poll_records", "bootstrap_timeout_ms"}


def librdkafka_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """librdkafka's configuration for kafka-python-named ``settings``; a setting with no mapping is
    refused (a security setting added to ``client_security`` must be mapped here, not dropped)."""
    unknown = sorted(set(settings) - set(SETTING_NAMES) - OWN_SETTINGS)
    if unknown:
        raise ValueError(f"no confluent-kafka (librdkafka) setting for {', '.join(unknown)}")
    conf = {SETTING_NAMES[k]: v for k, v in settings.items() if k in SETTING_NAMES and v is not None}
    if "bootstrap.servers" in conf and not isinstance(conf["bootstrap.servers"], str):
        conf["bootstrap.servers"] = ",".join(conf["bootstrap.servers"])
    return conf


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class FastConsumer:
    """A group consumer on librdkafka with the kafka-python methods the sink calls."""

    def __init__(self, settings: dict[str, Any], connect_timeout_ms: int = 10_000) -> None:
        self.config = dict(settings)  # kafka-python's names: TopicIds makes an admin client from them
        self.max_poll_records = int(settings.get("max_poll_records", 500))
        conf = librdkafka_settings(settings)
        conf.setdefault("enable.auto.commit", False)
        conf.update({
            "enable.auto.offset.store": False,  # ``commit`` commits what ``poll`` returned, nothing else
            "partition.assignment.strategy": "range,roundrobin",  # eager, as kafka-python's: whole assignments
            "logger": logging.getLogger("hybridspend.librdkafka"),
            "log.connection.close": False,  # the broker closing an idle connection is no news
        })
        self._consumer = Consumer(conf)
        self._closed = False
        self._topics: set[str] = set()
        self._listener: ConsumerRebalanceListener | None = None
        self._joining = False  # librdkafka told of the subscription (at the first poll after subscribe)
        # (topic, partition) -> where the application reads on: after what poll returned, or where it sought
        # (OFFSET_BEGINNING included); a partition not here reads from the group's committed offset
        self._positions: dict[tuple[str, int], int] = {}
        try:  # librdkafka connects lazily: ask for the cluster's metadata so that an unreachable broker fails here
            self._consumer.list_topics(timeout=connect_timeout_ms / 1000)
        except KafkaException as exc:
            self.close()
            raise ConnectionError(str(exc.args[0])) from None

    # -- group membership ------------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None) -> None:
        """Join the group for ``topics`` at the next ``poll``, as kafka-python does (librdkafka would
        join at once, and a subscription replaced before its join completed would leave a member
        behind on a broker without KIP-394, as Tansu: a second rebalance once its session expires)."""
        if self._joining:
            self.unsubscribe()
        self._topics = set(topics)
        self._listener = listener

    def _join(self) -> None:
        self._consumer.subscribe(sorted(self._topics), on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)
        self._joining = True

    def unsubscribe(self) -> None:
        if self._joining:
            self._consumer.unsubscribe()
            self._joining = False
        self._topics = set()
        self._positions.clear()

    def subscription(self) -> set[str]:
        return set(self._topics)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.assign([Part(tp.topic, tp.partition) for tp in partitions])

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(p.topic, p.partition) for p in self._consumer.assignment()}

    def _assigned(self, consumer, partitions) -> None:
        # called inside poll, as kafka-python calls its listener: assigned from Kafka's committed
        # offsets; the listener may move them (the sink seeks to its stored offsets after the poll)
        consumer.assign(partitions)
        if self._listener is not None:
            self._listener.on_partitions_assigned({TopicPartition(p.topic, p.partition) for p in partitions})

    def _revoked(self, consumer, partitions) -> None:
        revoked = {TopicPartition(p.topic, p.partition) for p in partitions}
        for tp in revoked:
            self._positions.pop(tp, None)
        if self._listener is not None:
            self._listener.on_partitions_revoked(revoked)
        consumer.unassign()

    # -- reading ---------------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        """What has arrived, at most ``max_records``, waiting up to ``timeout_ms`` for the first
        record only (librdkafka's own ``consume`` waits until it has them all or the time is up)."""
        consumer = self._consumer
        if self._topics and not self._joining:
            self._join()
        limit = max_records or self.max_poll_records
        messages = consumer.consume(limit, 0)
        if not messages and timeout_ms > 0:
            messages = consumer.consume(1, timeout_ms / 1000)
            if messages and limit > 1:
                messages += consumer.consume(limit - 1, 0)
        polled: dict[tuple[str, int], list[Record]] = {}
        for m in messages:
            if m.error() is not None:
                self._error(m.error())
                continue
            topic, partition = m.topic(), m.partition()
            records = polled.get((topic, partition))
            if records is None:
                records = polled[(topic, partition)] = []
            records.append(Record(topic, partition, m.offset(), m.key(), m.value()))
        out = {}
        for (topic, partition), records in polled.items():
            self._positions[(topic, partition)] = records[-1].offset + 1
            out[TopicPartition(topic, partition)] = records
        return out

    @staticmethod
    def _error(err) -> None:
        if err.fatal():
            raise KafkaException(err)
        log.warning("kafka consumer: %s", err.str())

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (what was fetched ahead from elsewhere is dropped)."""
        self._positions[(tp.topic, tp.partition)] = offset
        try:
            self._consumer.seek(Part(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError._STATE, KafkaError._PREV_IN_PROGRESS):
                raise
            # just assigned, its fetcher not started (librdkafka still asks the group for its committed
            # offset), or stopping: librdkafka seeks only a partition it fetches, so the whole
            # assignment is made again, each partition from where poll or a seek left it
            self._consumer.assign([Part(p.topic, p.partition, self._positions.get((p.topic, p.partition),
                                                                                 OFFSET_INVALID))
                                   for p in self._consumer.assignment()])

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or self.assignment():
            self.seek(tp, OFFSET_BEGINNING)

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int]:
        """The log end offset (high watermark) of each partition, asked of the broker."""
        return {tp: self._consumer.get_watermark_offsets(Part(tp.topic, tp.partition), timeout=timeout_s,
                                                         cached=False)[1]
                for tp in partitions}

    # -- committing ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Commit, synchronously, the position after the last record ``poll`` returned (or the
        offset sought since) of every assigned partition; ``CommitFailedError`` when the group
        refuses it (it rebalanced: the partitions may be another member's now)."""
        assigned = {(p.topic, p.partition) for p in self._consumer.assignment()}
        offsets = [Part(t, p, o) for (t, p), o in self._positions.items() if (t, p) in assigned and o >= 0]
        if not offsets:
            return
        try:
            answered = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise CommitFailedError(str(exc.args[0])) from None
        failed = [p for p in answered or () if p.error is not None]
        if failed:
            raise CommitFailedError("; ".join(f"{p.topic}[{p.partition}]: {p.error.str()}" for p in failed))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
