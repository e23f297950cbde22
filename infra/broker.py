"""Kafka topics, the broker profile, and the Kafka clients built from the configuration: kafka-python's,
and for the sink a confluent-kafka consumer with kafka-python's methods (``infra.fast_consumer``).

The *broker profile* is the one place that knows how the embedded local broker (Tansu) differs
from Apache Kafka (docs/design.md, "Broker profiles"): short consumer-group timeouts so that a group forms in seconds,
and end offsets read from fetch responses, because after a batched produce Tansu lists a too-low end
offset (the last batch's base offset + 1), which would make Faust's table recovery stop early and
lose state (``streams.faust_compat.recover_to_fetched_ends``) and consumer lag read too low.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

from hybridspend.contracts.config import ConfigError, KafkaConfig
from hybridspend.contracts.topics import Topics

log = logging.getLogger(__name__)


class _SlowStepNotice(logging.Filter):
    """kafka-python 3 warns whenever one step of its internal event loop takes over 0.1 s ("Task ...
    ran for 0.117s (>0.100s threshold). It is blocking the event loop"), which a busy 2-core machine
    does all the time; it is the library's own diagnostic, with nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and "threshold). It is blocking the event loop" in record.msg)


def quiet_client_diagnostics() -> None:
    """Silence the Kafka client's internal diagnostics that mean nothing to a user (every command)."""
    selector = logging.getLogger("kafka.net.selector")
    if not any(isinstance(f, _SlowStepNotice) for f in selector.filters):
        selector.addFilter(_SlowStepNotice())



@dataclass(frozen=True)
class BrokerProfile:
    name: str  # "local" (embedded Tansu) or "kafka"
    session_timeout_ms: int
    heartbeat_interval_ms: int
    faust_producer_max_batch_size: int
    # how long a fetch may wait for data; Tansu answers a waiting fetch only when this runs out,
    # even when data arrives meanwhile (a message produced 0.3 s into a 1.5 s wait arrived 0.45 s
    # later here), so every idle consumer hop adds up to this much latency on the local broker
    # (Faust has no setting for it: streams.faust_compat.apply_broker_profile sets it per app)
    fetch_max_wait_ms: int = 500
    # the end offsets the broker lists fall short after a batched produce (Tansu): read ends from fetches
    listed_ends_short: bool = False

    @property
    def faust_settings(self) -> dict[str, Any]:
        return {
            "broker_session_timeout": self.session_timeout_ms / 1000,
            "broker_heartbeat_interval": self.heartbeat_interval_ms / 1000,
            "producer_max_batch_size": self.faust_producer_max_batch_size,
        }


LOCAL_PROFILE = BrokerProfile("local", session_timeout_ms=2000, heartbeat_interval_ms=500,
                              faust_producer_max_batch_size=16384, fetch_max_wait_ms=100, listed_ends_short=True)
KAFKA_PROFILE = BrokerProfile("kafka", session_timeout_ms=30000, heartbeat_interval_ms=3000, faust_producer_max_batch_size=16384)


def profile_named(name: str) -> BrokerProfile:
    return {"local": LOCAL_PROFILE, "kafka": KAFKA_PROFILE}[name]




def client_security(kafka: KafkaConfig) -> dict[str, Any]:
    """kafka-python / aiokafka keyword arguments for TLS and SASL (secrets resolved here, never logged)."""
    settings: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.ssl_cafile:
        settings["ssl_cafile"] = str(kafka.ssl_cafile)
    if kafka.ssl_certfile:
        settings["ssl_certfile"] = str(kafka.ssl_certfile)
    if kafka.ssl_keyfile:
        settings["ssl_keyfile"] = str(kafka.ssl_keyfile)
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.resolve() if kafka.sasl_password else None
        if not password:
            where = kafka.sasl_password.describe() if kafka.sasl_password else "not configured"
            raise ConfigError(f"kafka.sasl_password: no value ({where}); {kafka.security_protocol} needs one")
        settings.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=password,
        )
    return settings


def ensure_topics(bootstrap: str, kafka: KafkaConfig, topics: Topics, extra: dict[str, int] | None = None,
                  timeout_s: float | None = None) -> None:
    """Create every topic with its partition count; fail clearly if one exists with another count."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = {name: topics.partitions for name in topics.all()}
    wanted.update(extra or {})
    admin = connect_with_retry(
        lambda: KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hybridspend-admin",
                                 bootstrap_timeout_ms=attempt_timeout_ms(kafka), **client_security(kafka)),
        what=f"Kafka at {bootstrap}",
        timeout_s=kafka.connect_timeout_seconds if timeout_s is None else timeout_s,
    )
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, p, topics.replication_factor) for n, p in wanted.items() if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        for meta in admin.describe_topics(sorted(wanted)):
            count = len(meta["partitions"])
            if count != wanted[meta.get("name", meta.get("topic"))]:
                raise RuntimeError(
                    f"topic {meta['topic']} has {count} partitions, the configuration expects {wanted[meta['topic']]}"
                )
    finally:
        admin.close()


def attempt_timeout_ms(kafka: KafkaConfig) -> int:
    """One connection attempt's share of ``connect_timeout_seconds``: a few attempts, with backoff between."""
    return int(max(1.0, min(10.0, kafka.connect_timeout_seconds / 3)) * 1000)


def connect_with_retry(factory, *, what: str, timeout_s: float = 30, first_delay_s: float = 0.2):
    """Call ``factory`` until it succeeds, backing off; raise a clear error after ``timeout_s``."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return factory()
        except (KafkaError, OSError, ValueError) as exc:
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"cannot reach {what} after {attempt} attempts: {exc}") from None
            log.warning("cannot reach %s (attempt %d): %s; retrying in %.1fs", what, attempt, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def make_producer(bootstrap: str, kafka: KafkaConfig, timeout_s: float | None = None, **overrides: Any):
    from kafka import KafkaProducer

    settings = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        retries=10,
        client_id="hybridspend",
        bootstrap_timeout_ms=attempt_timeout_ms(kafka),
        **client_security(kafka),
    )
    settings.update(overrides)
    return connect_with_retry(lambda: KafkaProducer(**settings), what=f"Kafka at {bootstrap}",
                              timeout_s=kafka.connect_timeout_seconds if timeout_s is None else timeout_s)


WATERMARK_EVERY_MS = 60_000  # how often collectors mark every partition with their clock


def send_watermarks(producer, topics: Topics, source: str, ts_ms: int,
                    logical_topics: tuple[str, ...] = ("gpu-samples", "instance-events")) -> None:
    """Tell every partition of the input topics that ``source`` has sent everything before ``ts_ms``.

    The stream closes windows on event time per partition; a partition that carries no data
    would otherwise hold every decision back (see ``streams.topology``).
    """
    from hybridspend.contracts.events import Watermark

    mark = Watermark(f"{source}|{ts_ms}", source, ts_ms).encode()
    for logical in logical_topics:
        for partition in range(topics.partitions):
            producer.send(topics.name(logical), value=mark, partition=partition)


def _consumer_settings(bootstrap: str, kafka: KafkaConfig, profile: BrokerProfile, group_id: str,
                       **overrides: Any) -> dict[str, Any]:
    """A group consumer's settings, in kafka-python's names (``infra.fast_consumer`` maps them for librdkafka)."""
    settings = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=profile.session_timeout_ms,
        heartbeat_interval_ms=profile.heartbeat_interval_ms,
        fetch_max_wait_ms=profile.fetch_max_wait_ms,
        max_poll_records=2000,
        client_id=group_id,
        **client_security(kafka),
    )
    settings.update(overrides)
    return settings


def make_consumer(bootstrap: str, kafka: KafkaConfig, profile: BrokerProfile, group_id: str, topics: list[str],
                  timeout_s: float | None = None, **overrides: Any):
    from kafka import KafkaConsumer

    settings = _consumer_settings(bootstrap, kafka, profile, group_id,
                                  **{"bootstrap_timeout_ms": attempt_timeout_ms(kafka), **overrides})
    consumer = connect_with_retry(lambda: KafkaConsumer(**settings), what=f"Kafka at {bootstrap}",
                                  timeout_s=kafka.connect_timeout_seconds if timeout_s is None else timeout_s)
    consumer.subscribe(topics)
    return consumer


def make_sink_consumer(bootstrap: str, kafka: KafkaConfig, profile: BrokerProfile, group_id: str, topics: list[str],
                       timeout_s: float | None = None, **overrides: Any):
    """The sink's consumer: ``make_consumer``'s settings on confluent-kafka (librdkafka), which reads
    the sink's records two to three times as fast as kafka-python here (``infra.fast_consumer``)."""
    from hybridspend.infra.fast_consumer import FastConsumer

    settings = _consumer_settings(bootstrap, kafka, profile, group_id, **overrides)
    consumer = connect_with_retry(lambda: FastConsumer(settings, connect_timeout_ms=attempt_timeout_ms(kafka)),
                                  what=f"Kafka at {bootstrap}",
                                  timeout_s=kafka.connect_timeout_seconds if timeout_s is None else timeout_s)
    consumer.subscribe(topics)
    return consumer


class TopicIds:
    """The id of each topic's current log, as the cluster names it (KIP-516, Kafka 2.8+; Tansu has
    them): a topic deleted and created again under its name, or created anew by a broker that
    lost its data, gets a new id.  Asked through an admin client made from a consumer's settings."""

    def __init__(self, consumer_config: dict[str, Any]) -> None:
        self.config = consumer_config
        self.admin = None

    def __call__(self, topics: Iterable[str]) -> dict[str, str]:
        """topic -> id, for the topics the cluster knows and gives an id (none from older brokers)."""
        from kafka import KafkaAdminClient

        if self.admin is None:
            settings = {k: v for k, v in self.config.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
            self.admin = KafkaAdminClient(**{**settings, "client_id": f"{settings.get('client_id')}-ids"})
        ids = {}
        for meta in self.admin.describe_topics(sorted(set(topics))):
            topic_id = str(meta.get("topic_id") or "")
            if meta.get("error_code") == 0 and topic_id.strip("0-"):  # the all-zero id means none
                ids[meta["name"]] = topic_id
        return ids

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None


class LagProbe:
    """Consumer lag of the pipeline's consumer groups (end offset - committed offset, per partition)."""

    def __init__(self, bootstrap: str, kafka: KafkaConfig, groups: list[str], fetch_ends: bool = True) -> None:
        """``fetch_ends``: read each log's end from a fetch too (``log_ends``); where the broker lists them right
        (``BrokerProfile.listed_ends_short`` false: Kafka) that fetch only costs a round and READ rights."""
        from kafka import KafkaAdminClient, KafkaConsumer

        self.groups = groups
        self.fetch_ends = fetch_ends
        security = client_security(kafka)
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hybridspend-lag", **security)
        # no group, so nothing to auto-commit (kafka-python warns otherwise, on every start)
        self.offsets = KafkaConsumer(bootstrap_servers=bootstrap, client_id="hybridspend-lag",
                                     enable_auto_commit=False, **security)
        # fetches each log's end (``log_ends``); its own: an assigned consumer asks metadata for its assignment only
        self.fetcher = KafkaConsumer(bootstrap_servers=bootstrap, client_id="hybridspend-lag-ends",
                                     enable_auto_commit=False, fetch_max_wait_ms=10, **security)

    def __call__(self) -> list[tuple[str, str, int, int]]:
        rows = []
        for group in self.groups:
            committed = self._committed(group)
            if not committed:
                continue
            ends = self.log_ends(list(committed))
            for tp, meta in committed.items():
                if meta.offset >= 0:
                    rows.append((group, tp.topic, tp.partition, max(0, ends.get(tp, meta.offset) - meta.offset)))
        return rows

    def behind(self, group: str, topics: set[str]) -> int:
        """The records of ``topics`` that ``group`` has not committed, over every partition: one it
        never committed counts whole (``__call__`` sees only the partitions a group committed)."""
        from kafka import TopicPartition

        parts = [TopicPartition(t, p) for t in sorted(topics) for p in sorted(self.offsets.partitions_for_topic(t) or ())]
        ends = self.log_ends(parts)
        committed = {tp: meta.offset for tp, meta in self._committed(group).items()}
        return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())

    def committed_total(self, group: str, topics: set[str]) -> int:
        """The sum of ``group``'s committed offsets over every partition of ``topics``: on fresh topics,
        the number of their records the group has finished with (exact, unlike the broker's end
        offsets on the local broker: DESIGN.md §5)."""
        return sum(meta.offset for tp, meta in self._committed(group).items()
                   if tp.topic in topics and meta.offset > 0)

    def log_ends(self, parts: list, timeout_s: float = 5.0) -> dict:
        """The end of each partition's log: the higher of the end offset the broker lists and the high
        watermark of a fetch from just below it (after a batched produce the local broker lists the
        last batch's base offset + 1: docs/design.md, "Broker profiles")."""
        ends = self.offsets.end_offsets(parts)
        fetched = [tp for tp in parts if tp in ends]
        if not fetched or not self.fetch_ends:
            return ends
        self.fetcher.unsubscribe()  # no high watermark left from an earlier call
        self.fetcher.assign(fetched)
        for tp in fetched:
            self.fetcher.seek(tp, max(0, ends[tp] - 1))
        deadline = time.monotonic() + timeout_s
        while any(self.fetcher.highwater(tp) is None for tp in fetched) and time.monotonic() < deadline:
            self.fetcher.poll(timeout_ms=100)
        for tp in fetched:
            ends[tp] = max(ends[tp], self.fetcher.highwater(tp) or 0)
        return ends

    def _committed(self, group: str) -> dict:
        if hasattr(self.admin, "list_group_offsets"):  # kafka-python 3
            return self.admin.list_group_offsets({group: None}).get(group, {})
        return self.admin.list_consumer_group_offsets(group)  # kafka-python 2

    def close(self) -> None:
        self.admin.close()
        self.offsets.close()
        self.fetcher.close()
