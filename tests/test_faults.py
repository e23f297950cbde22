"""Fault tests: garbage on the input topics, a broker that is not there when a collector starts.

(The other faults have their tests beside the code they break: a worker killed with SIGKILL in
test_scenarios.py, the database down for 60 s in test_storage.py, Slack down in
test_alerts_delivery.py, duplicated, restated and out-of-order billing in test_focus.py and
test_aws_collector.py.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import CostWindow, DeadLetter
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_consumer, make_producer, send_watermarks
from hybridspend.infra.local import Endpoints
from hybridspend.infra.services import Services
from tests.test_focus import focus_row, write_csv
from tests.test_spine_integration import CONFIG, T0_MS, sample

MALFORMED = 10_000

_text = st.text(max_size=30)
_junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
                  st.dictionaries(_text, st.integers(), max_size=2))


def _valid_sample(ts: int) -> dict:
    return json.loads(sample(ts, 50.0).encode())


BREAKAGES = ("drop", "junk_field", "environment", "utilization", "control", "schema", "key", "gpus", "host")


@st.composite
def _broken_sample(draw, how: str) -> tuple[bytes, bytes]:
    """A real sample with one thing wrong (of the kind `how`) that the worker must notice."""
    d = _valid_sample(T0_MS + draw(st.integers(1, 10**6)) * 1000)
    key = b"node-1"
    if how == "drop":
        del d[draw(st.sampled_from(["event_id", "ts_ms", "resource", "environment", "gpus"]))]
    elif how == "junk_field":
        d[draw(st.sampled_from(["ts_ms", "interval_ms", "resource", "environment"]))] = draw(_junk)
    elif how == "environment":
        d["environment"] = draw(_text.filter(lambda t: t not in ("onprem", "cloud")))
    elif how == "utilization":
        d["gpus"][0]["utilization_pct"] = draw(st.one_of(st.floats(max_value=-0.001), st.floats(min_value=100.001),
                                                         _text, st.none()))
    elif how == "control":
        d["resource"] = "node-1" + draw(st.sampled_from(["\x00", "\n", "\x1b[31m", "\x7f"]))
    elif how == "schema":
        d["schema"] = draw(_text.filter(lambda t: t != "gpu_sample.v1"))
    elif how == "key":
        key = draw(st.binary(min_size=1, max_size=20).filter(lambda k: k != b"node-1"))
    elif how == "gpus":
        d["gpus"] = draw(st.one_of(st.none(), _text, st.lists(_junk, min_size=1, max_size=2)))
    else:  # well formed, but no asset profile prices this host
        d["resource"] = key_text = "rogue-" + draw(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True))
        key = key_text.encode()
    return key, json.dumps(d, allow_nan=True).encode()


# Each kind of garbage is drawn in turn, so every kind is in the 10,000 whatever hypothesis draws
# inside it (left to one_of, a run could miss a kind and the reasons checked below with it).
MALFORMED_KINDS = (
    st.tuples(st.just(b"node-1"), st.binary(max_size=200)),  # not JSON (or not an object)
    st.tuples(st.just(b"node-1"), st.recursive(st.none() | st.integers() | _text, lambda c: st.lists(c, max_size=3)
                                               | st.dictionaries(_text, c, max_size=3), max_leaves=8)
              .map(lambda v: json.dumps(v).encode())),
    *(_broken_sample(how) for how in BREAKAGES),
)


def _a_worker(tmp_path: Path, broker, database, topic_prefix: str):
    """A real worker on its own topics: (config, topics, services)."""
    cfg = dict(CONFIG, state_dir=str(tmp_path / "state"), kafka={"topic_prefix": topic_prefix, "topic_partitions": 2})
    cfg.pop("alerts")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    services = Services(config, config_path, Endpoints(broker.bootstrap, database, broker.profile, True, True))
    services.start("worker")
    return config, topics, services


def _letters_and_windows(broker, config, topics, services, group: str, letters_wanted: int, timeout_s: float):
    """The dead letters and cost windows the worker produced, read until ``letters_wanted`` letters and a
    window arrived (or the time ran out), checking the worker stays alive."""
    consumer = make_consumer(broker.bootstrap, config.kafka, broker.profile, group,
                             [topics.dead_letter, topics.cost_windows])
    letters, windows = [], []
    deadline = time.monotonic() + timeout_s
    while (len(letters) < letters_wanted or not windows) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            for rec in records:
                if rec.topic == topics.dead_letter:
                    letters.append(DeadLetter.decode(rec.value))
                elif not rec.value.startswith(b'{"schema":"watermark'):
                    windows.append(CostWindow.decode(rec.value))
        services.check()  # the worker is alive
    consumer.close()
    return letters, windows


@pytest.mark.slow
@pytest.mark.integration
def test_ten_thousand_malformed_events_all_dead_lettered_and_the_worker_keeps_going(tmp_path: Path, broker, database,
                                                                                   topic_prefix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        # 550 drawn (drawing is slow), sent again and again: each copy is a record of its own to dead-letter
        drawn = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)].example() for i in range(50 * len(MALFORMED_KINDS))]
    events = [drawn[i % len(drawn)] for i in range(MALFORMED)]
    config, topics, services = _a_worker(tmp_path, broker, database, topic_prefix)
    producer = make_producer(broker.bootstrap, config.kafka, linger_ms=20)
    try:
        for key, value in events:
            producer.send(topics.gpu_samples, key=key, value=value)
        # then good samples: a window of them, and the clock moved past it
        good = [sample(T0_MS + i * 60_000, 40.0) for i in range(1, 12)]
        for s in good:
            producer.send(topics.gpu_samples, key=b"node-1", value=s.encode())
        send_watermarks(producer, topics, "test", good[-1].ts_ms)
        producer.flush()

        letters, windows = _letters_and_windows(broker, config, topics, services, f"check-{topic_prefix}",
                                                MALFORMED, 240)
        assert len(letters) == MALFORMED  # every one, once
        assert all(letter.reason and letter.source_topic == topics.gpu_samples for letter in letters)
        assert len({(letter.partition, letter.offset) for letter in letters}) == MALFORMED
        # the good samples after the garbage were still counted: 10 samples at 40 % in window 0
        (w,) = [w for w in windows if w.window_start_ms == T0_MS]
        assert w.workload == "team-a/train" and w.busy_gpu_ms == 10 * 24_000
        reasons = " ".join(letter.reason for letter in letters)
        for expected in ("not JSON", "unsupported schema", "missing field", "does not match resource",
                         "no on-prem asset profile matches host"):
            assert expected in reasons
        assert "internal error" not in reasons  # each was refused for what is wrong with it, not by a crash
    finally:
        producer.close()
        services.stop()


def test_broker_unreachable_when_a_collector_starts_is_a_clear_error_after_retries(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bill = tmp_path / "bill.csv"
    write_csv(bill, [focus_row(BilledCost="1", EffectiveCost="1")])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "kafka": {"bootstrap_servers": f"127.0.0.1:{port}",
                                                "connect_timeout_seconds": 3}}))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hybridspend.cli", "ingest", "focus", str(bill), "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert f"hybridspend: error: cannot reach Kafka at 127.0.0.1:{port} after" in done.stderr
    assert "retrying in" in done.stderr  # it tried again, with backoff, before giving up
    assert "Traceback" not in done.stderr
    assert elapsed < 30  # the configured 3 s of retries, not a hang or a crash loop


@pytest.mark.integration
def test_a_hostile_workload_label_is_replaced_and_the_nodes_costs_kept(tmp_path: Path, broker, database,
                                                                       topic_prefix):
    """Any process on a GPU node can set HYBRIDSPEND_WORKLOAD: a name with an escape sequence or 300
    characters long must not dead-letter the node's sample (every GPU, workload and idle cost of it)."""
    from hybridspend.contracts.events import WorkloadShare

    config, topics, services = _a_worker(tmp_path, broker, database, topic_prefix)
    producer = make_producer(broker.bootstrap, config.kafka, linger_ms=20)
    hostile = "team-a/\x1b[31mtrain"
    try:
        good = [sample(T0_MS + i * 60_000, 40.0) for i in range(1, 12)]
        for s in good:
            s.gpus[0].workloads = [WorkloadShare(hostile, "team-a")]  # encoding does not check; decoding does
            producer.send(topics.gpu_samples, key=b"node-1", value=s.encode())
        send_watermarks(producer, topics, "test", good[-1].ts_ms)
        producer.flush()
        letters, windows = _letters_and_windows(broker, config, topics, services, f"check-{topic_prefix}", 11, 120)
        # 10 samples in window 0 at 40 % busy, charged to the replaced name: the costs are all there
        (w,) = [w for w in windows if w.window_start_ms == T0_MS]
        assert w.workload.startswith("invalid-label:") and w.busy_gpu_ms == 10 * 24_000 and w.cost_usd > 0
        # and each sample's original is kept once, with what was replaced and why
        assert len(letters) == 11 and len({(x.partition, x.offset) for x in letters}) == 11
        assert all(x.reason.startswith("labels replaced, costs kept: gpus[0].workloads[0].workload (control"
                                       " characters) -> invalid-label:") for x in letters)
    finally:
        producer.close()
        services.stop()
