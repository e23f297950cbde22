"""Publishing events from a command (ingest, collectors run once) to Kafka.

With a configured Kafka, events go there and the deployed sink stores them.  On embedded
defaults there is no sink running, so the command starts the local broker and database itself,
publishes, and drains what it sent into the local database with an in-process sink before it
stops them: later commands (reports, dashboards) find the data.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from hybridspend.contracts.config import Config
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, make_sink_consumer
from hybridspend.infra.local import running_services
from hybridspend.infra.publish import Publisher
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Sink


@contextlib.contextmanager
def publishing(config: Config, logical_topics: list[str], say: Callable[[str], None]) -> Iterator[Publisher]:
    topics = Topics.from_config(config.kafka)
    if config.kafka.bootstrap_servers:
        ensure_topics(config.kafka.bootstrap_servers, config.kafka, topics)
        producer = make_producer(config.kafka.bootstrap_servers, config.kafka)
        try:
            yield Publisher(producer, topics)
            producer.flush()
        finally:
            producer.close()
        return

    with running_services(config, say=say) as endpoints:
        migrate(endpoints.dsn)
        ensure_topics(endpoints.bootstrap, config.kafka, topics)
        producer = make_producer(endpoints.bootstrap, config.kafka)
        publisher = Publisher(producer, topics, watermarks=False)  # no worker here: the sink stores what was sent
        try:
            yield publisher
            producer.flush()
        finally:
            producer.close()
        consumer = make_sink_consumer(endpoints.bootstrap, config.kafka, endpoints.profile, topics.group("sink"),
                                      [topics.name(t) for t in logical_topics], fetch_max_wait_ms=100)
        sink = Sink(consumer, endpoints.dsn, topics)
        try:
            deadline = time.monotonic() + 300
            while sink.records_read < publisher.sent:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stored {sink.records_read} of {publisher.sent} events in time; run again")
                sink.run_once(timeout_ms=500)
        finally:
            consumer.close()
            sink.close()
        say(f"stored {sink.rows_written} rows in the local database ({config.state_dir / 'pgdata'})")
