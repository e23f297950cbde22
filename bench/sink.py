"""Sink throughput: GPU-sample rows from Kafka into PostgreSQL, beside a raw COPY of the same rows.

Both write into the same (partitioned) ``gpu_samples`` table of a fresh database on the same
embedded PostgreSQL, with the same binary COPY.  The sink figure includes everything it does in
production: consume, decode and validate, build the rows, COPY them, store its offsets in the
same transaction, commit the Kafka offsets.  The raw COPY gets the rows ready-made.

Two more figures bound what any sink of these messages can reach beside that COPY: reading the
same records with the same consumer (the sink's: confluent-kafka, ``infra.broker.make_sink_consumer``)
and doing nothing else, and reading them and validating each (decoding it into its event, which a
sink must do to dead-letter a bad one).  Their ratios to the raw COPY are the ceilings of
``sink_ratio`` were building and writing the rows free.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg

from hybridspend.collectors.sim import demo_fleet
from hybridspend.contracts.config import KafkaConfig
from hybridspend.contracts.events import GpuSample
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, make_sink_consumer
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Sink, copy_rows, gpu_sample_rows
from hybridspend.storage.timeseries import POSTGRESQL, Partitions


def _samples(messages: int):
    fleet = demo_fleet(seed=1)
    # yesterday: the sink applies its retention by the wall clock, and would drop a fixed day once it aged out
    day = int((datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                                       microsecond=0).timestamp() * 1000)
    out = []
    for ts, samples, _ in fleet.run_day(day):
        out.extend(samples)
        if len(out) >= messages:
            return out[:messages]
    return out


def run(bootstrap: str, profile, admin_dsn: str, quick: bool, say=print) -> dict:
    messages = 2_000 if quick else 12_000
    samples = _samples(messages)
    rows = [row for s in samples for row in gpu_sample_rows(s)]
    kafka = KafkaConfig(topic_prefix=f"bench{int(time.time())}.")
    topics = Topics.from_config(kafka)
    ensure_topics(bootstrap, kafka, topics)
    producer = make_producer(bootstrap, kafka, linger_ms=50, batch_size=256 * 1024)
    for s in samples:
        producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
    producer.flush()
    producer.close()

    results = {}
    read_s, read_validate_s = _read_and_validate(bootstrap, kafka, profile, topics.gpu_samples, len(samples))
    for label in ("raw_copy", "sink"):
        dsn = _fresh_database(admin_dsn, f"bench_{label}")
        migrate(dsn)
        with psycopg.connect(dsn) as conn:  # partitions exist before timing, for both
            Partitions(POSTGRESQL).ensure(conn, "gpu_samples", {r[0] for r in rows})
            conn.commit()
        if label == "raw_copy":
            with psycopg.connect(dsn) as conn:
                start = time.perf_counter()
                copy_rows(conn, "gpu_samples", "gpu_samples", rows)
                conn.commit()
                elapsed = time.perf_counter() - start
        else:
            consumer = make_sink_consumer(bootstrap, kafka, profile, "bench-sink", [topics.gpu_samples],
                                          fetch_max_wait_ms=100, max_partition_fetch_bytes=8 * 1024 * 1024)
            sink = Sink(consumer, dsn, topics, max_records=5000)
            # join the group and place its partitions (startup, once per assignment) before starting the clock
            while not consumer.assignment():
                consumer.poll(timeout_ms=100, max_records=1)
            sink.place()  # nothing stored yet: it learns the topics' ids and stays where it is
            consumer.seek_to_beginning()  # last: the consumer fetches ahead from here, on the clock
            start = time.perf_counter()
            while sink.records_read < len(samples):
                sink.run_once(timeout_ms=500)
            elapsed = time.perf_counter() - start
            consumer.close()
            sink.close()
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM gpu_samples").fetchone()[0]
        assert stored == len(rows), f"{label}: {stored} rows stored, expected {len(rows)}"
        results[f"{label}_rows_per_s"] = len(rows) / elapsed
        say(f"  {label:<9} {len(rows):>7} rows in {elapsed:6.2f} s = {len(rows) / elapsed:>9,.0f} rows/s")
    raw_copy_s = len(rows) / results["raw_copy_rows_per_s"]
    say(f"  {'read only':<9} {len(rows):>7} rows in {read_s:6.2f} s; reading and validating "
        f"{read_validate_s:6.2f} s (confluent-kafka, {len(samples)} records)")
    figures = {
        "sink_rows_per_s": round(results["sink_rows_per_s"]),
        "raw_copy_rows_per_s": round(results["raw_copy_rows_per_s"]),
        "sink_ratio": round(results["sink_rows_per_s"] / results["raw_copy_rows_per_s"], 3),
        "sink_read_only_ratio": round(raw_copy_s / read_s, 3),
        "sink_read_validate_ratio": round(raw_copy_s / read_validate_s, 3),
    }
    return figures


def _read_and_validate(bootstrap: str, kafka: KafkaConfig, profile, topic: str, count: int) -> tuple[float, float]:
    """Seconds to read ``count`` records with the sink's consumer and settings, doing nothing else; and
    seconds to read and decode them.  Two passes, each timed whole: the consumer fetches ahead in its
    own threads while the caller decodes, so the time spent inside ``poll`` alone would undercount."""
    consumer = make_sink_consumer(bootstrap, kafka, profile, "bench-read", [topic],
                                  fetch_max_wait_ms=100, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        while not consumer.assignment():
            consumer.poll(timeout_ms=100, max_records=1)
        passes = []
        for validate in (False, True):
            consumer.seek_to_beginning()
            seen = 0
            start = time.perf_counter()
            while seen < count:
                for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                    if validate:
                        for record in records:
                            GpuSample.decode(record.value)
                    seen += len(records)
            passes.append(time.perf_counter() - start)
        return passes[0], passes[1]
    finally:
        consumer.close()


def _fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
