"""Prometheus /metrics of the worker, sink and alerter, scraped from the running services."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import namedtuple
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import BreakevenDecision, GpuReading, GpuSample, WorkloadShare
from hybridspend.contracts.topics import Topics
from hybridspend.infra import metrics
from hybridspend.infra.broker import ensure_topics, make_producer, send_watermarks
from hybridspend.infra.local import Endpoints
from hybridspend.infra.services import Services
from hybridspend.storage.db import migrate
from hybridspend.streams.metrics import lag_by_topic
from tests.conftest import eventually, wait_until

WINDOW_S = 600
SAMPLE_S = 60
T0_MS = 1_790_000_400_000 - 1_790_000_400_000 % (WINDOW_S * 1000)

# One A100 node with one GPU. Per GPU-hour: capex 438000 / (600 * 730) = 1.00 (amortizing until 2076, so
# the test does not depend on today's date), upkeep 876 / 8760 = 0.10, energy 0.5 kW * 1.0 * 0.10 = 0.05:
# fully loaded 1.15. Cloud: 24 $/h for 8 GPUs = 3.00 per GPU-hour; breakeven utilization 1.15 / 3 = 0.38333.
CONFIG = {
    "onprem_assets": [{
        "name": "rack", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 1,
        "gpus_per_node": 1, "hosts": ["node-1"], "purchase_price_usd_per_node": 438000,
        "in_service_date": "2026-01-01", "amortization_months": 600, "power_w_per_gpu": 500, "pue": 1.0,
        "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 876,
    }],
    "cloud_offers": [{
        "provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
        "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 24},
    }],
    "thresholds": {"window_seconds": WINDOW_S, "grace_seconds": 0},
    # the alerter refreshes its figures with the checks, every second here
    "alerts": {"checks": {"interval_seconds": 1, "collector_silence_minutes": None}},
}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped, name: str, **labels) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def metrics_port(log: Path) -> int | None:
    found = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", log.read_text(errors="replace")) \
        if log.exists() else None
    return int(found.group(1)) if found else None


def sample(ts_ms: int) -> GpuSample:
    return GpuSample(event_id=f"node-1:{ts_ms}", ts_ms=ts_ms, interval_ms=SAMPLE_S * 1000, resource="node-1",
                     environment="onprem", source="test",
                     gpus=[GpuReading("GPU-0", 0, "NVIDIA A100-SXM4-80GB", "A100", 80.0, 1000, 81920, 500_000,
                                      [WorkloadShare("team-a/train", "team-a")])])


SERVICES = ("worker", "sink", "alerter")


def services_serving_metrics(tmp_path, broker, database, topic_prefix):
    """The worker, sink and alerter started with ``--metrics-port 0`` on their own topics:
    (config, topics, services); ``metrics_ports(services)`` waits for the ports they print."""
    cfg = dict(CONFIG, state_dir=str(tmp_path / "state"), kafka={"topic_prefix": topic_prefix, "topic_partitions": 2})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    migrate(database)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    services = Services(config, config_path, Endpoints(broker.bootstrap, database, broker.profile, True, True))
    for name in SERVICES:
        services.start(name, "--metrics-port", "0")
    return config, topics, services


def metrics_ports(services) -> dict[str, int]:
    return {name: wait_until(lambda log=services.log_dir / f"{name}.log": metrics_port(log), 60, f"{name} metrics port")
            for name in SERVICES}


@pytest.mark.slow
@pytest.mark.integration
def test_every_service_serves_its_metrics(tmp_path, broker, database, topic_prefix):
    config, topics, services = services_serving_metrics(tmp_path, broker, database, topic_prefix)
    producer = make_producer(broker.bootstrap, config.kafka)
    try:
        ports = metrics_ports(services)
        producer.send(topics.gpu_samples, key=b"node-1", value=b"{not json")
        # 31 samples at 80 % busy: windows 0-2 close (the 31st sample is in window 3)
        for i in range(1, 3 * (WINDOW_S // SAMPLE_S) + 2):
            producer.send(topics.gpu_samples, key=b"node-1", value=sample(T0_MS + i * SAMPLE_S * 1000).encode())
        last_ms = T0_MS + 31 * SAMPLE_S * 1000
        send_watermarks(producer, topics, "test", last_ms)
        decision = BreakevenDecision(
            event_id="d1", workload="team-b/infer", team="team-b", from_env="cloud", to_env="onprem",
            kind="repatriate_buy_capacity", gpu_class="A100", window_start_ms=T0_MS, window_end_ms=T0_MS + 600_000,
            current_usd_per_busy_gpu_hour=D(3), alternative_usd_per_busy_gpu_hour=D("1.15"), utilization=D("0.9"),
            monthly_savings_usd=D(100), confidence=D(1), alternative_label="on-prem A100", gpus_needed=1, reason="r")
        producer.send(topics.decisions, key=b"team-b/infer", value=decision.encode())
        producer.flush()

        def sink_stored():
            services.check()
            s = scrape(ports["sink"])
            assert value(s, "hybridspend_events_out_total", service="sink", stream="gpu_samples") == 31
            assert value(s, "hybridspend_events_out_total", service="sink", stream="cost_windows") == 3
            assert value(s, "hybridspend_events_out_total", service="sink", stream="decisions") == 1
            # 31 samples and the malformed record; the watermarks carry no data and are not counted
            assert value(s, "hybridspend_events_in_total", service="sink", stream=topics.gpu_samples) == 32
            return s

        s = eventually(sink_stored, 120)
        with psycopg.connect(database) as conn:
            reason = conn.execute("SELECT reason FROM dead_letters WHERE source_topic = %s",
                                  (topics.gpu_samples,)).fetchone()[0]
        assert value(s, "hybridspend_dead_letters_total", source_topic=topics.gpu_samples,
                     reason=metrics.reason_kind(reason)) == 1
        assert value(s, "hybridspend_window_close_delay_seconds_count") == 3
        age = value(s, "hybridspend_source_last_event_age_seconds", source="gpu-samples/onprem")
        assert age is not None and abs(age - (time.time() - last_ms / 1000)) < 120  # the newest sample's event time

        def alerter_published():
            services.check()
            a = scrape(ports["alerter"])
            # 1.00 + 0.05 + 0.10 per GPU-hour
            assert value(a, "node_gpu_hourly_cost", node="node-1", instance_type="rack", provider="onprem") == 1.15
            assert value(a, "hybridspend_breakeven_utilization", gpu_class="A100") == pytest.approx(1.15 / 3)
            # three windows of 1/6 GPU-hour at 1.15 (0.191667 each, micro-dollars) = 0.575001, over 3 * 0.8 / 6
            # = 0.4 busy GPU-hours: 1.4375025 per busy GPU-hour
            assert value(a, "hybridspend_workload_usd_per_busy_gpu_hour", workload="team-a/train",
                         environment="onprem") == pytest.approx(1.4375025, abs=1e-9)
            state = {labels["hybridspend_recommendation"]: v for (name, fs), v in a.items()
                     if name == "hybridspend_recommendation" and (labels := dict(fs))["workload"] == "team-b/infer"}
            assert state["repatriate_buy_capacity"] == 1 and sum(state.values()) == 1
            assert value(a, "hybridspend_events_in_total", service="alerter", stream=topics.decisions) == 1
            assert value(a, "hybridspend_alert_outbox_pending") == 0  # the console delivers at once
            return a

        eventually(alerter_published, 60)

        def worker_counted():
            services.check()
            w = scrape(ports["worker"])
            # the 31 samples, the malformed record and the watermarks
            assert (value(w, "hybridspend_events_in_total", service="worker", stream=topics.gpu_samples) or 0) >= 32
            assert (value(w, "hybridspend_events_out_total", service="worker", stream=topics.cost_windows) or 0) >= 3
            assert value(w, "hybridspend_consumer_lag_records", group=topics.group("worker"),
                         topic=topics.gpu_samples) == 0
            return w

        eventually(worker_counted, 60)
    finally:
        producer.close()
        services.stop()


TP = namedtuple("TP", "topic partition")


def test_lag_sums_partitions_and_never_goes_negative():
    end = {TP("a", 0): 10, TP("a", 1): 5, TP("b", 0): 7, TP("c", 0): 4}
    read = {TP("a", 0): 4, TP("a", 1): 9}  # a/1: a highwater mark below what was read (Tansu): 0, not -5
    committed = {TP("b", 0): 3}
    # a: 10 - (4 + 1) = 5, + 0; b: 7 - 3 = 4 (nothing read yet: from the commit); c: nothing read or committed: 4
    assert lag_by_topic(end, read, committed) == {"a": 5, "b": 4, "c": 4}


def test_label_values_stay_bounded():
    label = metrics.BoundedLabel(2)
    assert [label(v) for v in ("x", "y", "z", "x", "w")] == ["x", "y", "other", "x", "other"]
    # a reason's values do not make new label values
    assert metrics.reason_kind("gpu_sample.v1: 'power_mw' must be >= 0, got -5") == \
        metrics.reason_kind("gpu_sample.v1: 'power_mw' must be >= 0, got -70000") == \
        "gpu_sample.v1: 'power_mw' must be >= N"


def test_the_metrics_server_listens_on_this_machine_only_unless_told_otherwise(monkeypatch):
    from hybridspend.cli import build_parser
    from hybridspend.infra import metrics

    monkeypatch.delenv("HYBRIDSPEND_METRICS_HOST", raising=False)
    args = build_parser().parse_args(["sink", "--metrics-port", "0"])
    assert args.metrics_host == "127.0.0.1"
    port = metrics.serve(0, args.metrics_host)
    try:
        assert metrics._servers[port].server_address[0] == "127.0.0.1"
    finally:
        metrics.stop(port)
    monkeypatch.setenv("HYBRIDSPEND_METRICS_HOST", "0.0.0.0")  # what the container image sets
    assert build_parser().parse_args(["sink", "--metrics-port", "0"]).metrics_host == "0.0.0.0"
    assert "HYBRIDSPEND_METRICS_HOST=0.0.0.0" in (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
