"""The spine end to end: real broker, real Faust worker, real PostgreSQL, a local Slack receiver.

A scripted utilization drop makes an on-prem workload cross breakeven; exactly one alert arrives,
with the numbers computed by hand below; replaying every sample changes nothing.
"""

from __future__ import annotations

import time
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import namedtuple_row
import yaml

from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import GpuReading, GpuSample, InstanceEvent, WorkloadShare
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, send_watermarks
from hybridspend.infra.local import Endpoints
from hybridspend.infra.services import Services
from hybridspend.storage.db import migrate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

WINDOW_S = 600
SAMPLE_S = 60
T0_MS = 1_790_000_400_000 - 1_790_000_400_000 % (WINDOW_S * 1000)  # a window boundary in 2026

# One A100 node with one GPU, numbers chosen to be easy by hand:
#   capex  26280 / (36 * 730)        = 1.00 $/h
#   upkeep 876 / 8760                = 0.10 $/h
#   energy 500 W measured * PUE 1.0 * 0.10 $/kWh = 0.05 $/h
#   on-prem fully loaded             = 1.15 $/GPU-hour
# Cloud: p4d.24xlarge at 24 $/h for 8 GPUs = 3.00 $/GPU-hour; breakeven utilization 1.15/3 = 38 %.
CONFIG = {
    "onprem_assets": [{
        "name": "rack", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 1,
        "gpus_per_node": 1, "hosts": ["node-1"], "purchase_price_usd_per_node": 26280,
        "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1.0,
        "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 876,
    }],
    "cloud_offers": [{
        "provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
        "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 24},
    }],
    # a fast crossing: the migration needs the dwell alone here (24 h of evidence by default)
    "thresholds": {"margin_pct": 10, "dwell_windows": 2, "window_seconds": WINDOW_S, "grace_seconds": 0,
                   "evidence_hours": {"migrate_to_cloud": 0}},
    "alerts": {"routes": [{"name": "platform", "audience": "platform",
                           "slack_webhook_url": {"env": "TEST_SLACK_WEBHOOK"}}],
               # node-9 below sends one sample and goes quiet: this test is about the crossing's alert only
               "checks": {"collector_silence_minutes": None}},
}


def sample(ts_ms: int, util: float) -> GpuSample:
    return GpuSample(
        event_id=f"node-1:{ts_ms}", ts_ms=ts_ms, interval_ms=SAMPLE_S * 1000, resource="node-1",
        environment="onprem", source="test",
        gpus=[GpuReading("GPU-0", 0, "NVIDIA A100-SXM4-80GB", "A100", util, 1000, 81920, 500_000,
                         [WorkloadShare("team-a/train", "team-a")])],
    )


def script() -> list[GpuSample]:
    """Windows 0-2 at 80 % busy, windows 3-5 at 20 %, one sample into window 6 to close window 5."""
    out = []
    for i in range(1, 6 * (WINDOW_S // SAMPLE_S) + 2):
        ts = T0_MS + i * SAMPLE_S * 1000
        window = (ts - SAMPLE_S * 1000 - T0_MS) // (WINDOW_S * 1000)
        out.append(sample(ts, 80.0 if window < 3 else 20.0))
    return out


def test_utilization_drop_crosses_breakeven_and_alerts_once(tmp_path: Path, broker, database, slack, topic_prefix,
                                                            monkeypatch):
    cfg = dict(CONFIG, state_dir=str(tmp_path / "state"),
               kafka={"topic_prefix": topic_prefix, "topic_partitions": 2})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url + "/hooks/platform")
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    migrate(database)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    endpoints = Endpoints(broker.bootstrap, database, broker.profile, True, True)
    services = Services(config, config_path, endpoints)
    for name in ("worker", "sink", "alerter"):
        services.start(name)
    producer = make_producer(broker.bootstrap, config.kafka)
    try:
        # malformed input goes to the dead-letter topic with its reason; the worker goes on
        producer.send(topics.gpu_samples, key=b"node-1", value=b"{not json")
        unknown_host = sample(T0_MS + 60_000, 50.0)
        unknown_host.resource = "node-9"
        producer.send(topics.gpu_samples, key=b"node-9", value=unknown_host.encode())
        for s in script():
            producer.send(topics.gpu_samples, key=b"node-1", value=s.encode())
        send_watermarks(producer, topics, "test", s.ts_ms)  # the other partition has no samples
        producer.flush()

        posts = slack.wait_for(1, timeout_s=90)
        services.check()
        assert len(posts) == 1, posts
        body = posts[0]["body"]
        assert posts[0]["path"] == "/hooks/platform"
        # Windows 3 and 4 (the dwell) at 20 % busy, each 1/6 allocated GPU-hour, 1/30 busy GPU-hour:
        #   on-prem cost per window 1.15 / 6 = 0.191667 (micro-dollars), two windows 0.383334
        #   cloud for the busy hours 3.00 / 30 = 0.10 per window, two windows 0.20
        #   per busy GPU-hour: 0.383334 / (2/30) = 5.75 on-prem vs 0.20 / (2/30) = 3.00 cloud
        #   monthly savings: (0.383334 - 0.20) / (2/6 h) * 730 = 401.50
        assert "Migrate to cloud: team-a/train" in body["text"]
        assert "$5.75 vs $3.00 per busy GPU-hour at 20% utilization" in body["text"]
        assert "$401.50/month" in body["text"]

        with psycopg.connect(database) as conn:
            row = wait_until(lambda: conn.execute(
                "SELECT kind, from_env, to_env, utilization, monthly_savings_usd, current_usd_per_busy_gpu_hour,"
                " alternative_usd_per_busy_gpu_hour, decided_at FROM decisions").fetchall(), what="decision row")
            assert len(row) == 1
            kind, from_env, to_env, util, savings, cur, alt, decided_at = row[0]
            assert (kind, from_env, to_env) == ("migrate_to_cloud", "onprem", "cloud")
            assert util == D("0.2")
            assert abs(savings - D("401.50")) < D("0.01")
            assert abs(cur - D("5.75")) < D("0.0001") and alt == D("3")
            assert int(decided_at.timestamp() * 1000) == T0_MS + 5 * WINDOW_S * 1000  # end of window 4
            low, high, hours, instances = conn.execute(
                "SELECT monthly_savings_low_usd, monthly_savings_high_usd, evidence_hours, instances_needed"
                " FROM decisions").fetchone()
            # both windows of the evidence cost the same: the range is the point; two 10-minute windows = 1/3 h;
            # one A100 of work is one p4d.24xlarge (8 GPUs)
            assert low == high == savings and hours == D("0.333333") and instances == 1

            def totals(windows: int = 6):
                """Rows and sums of the cost windows 0 .. windows - 1."""
                return conn.cursor(row_factory=namedtuple_row).execute(
                    "SELECT count(*) AS rows, sum(cost_usd) AS cost_usd, sum(busy_gpu_ms) AS busy_gpu_ms,"
                    " sum(allocated_gpu_ms) AS allocated_gpu_ms FROM cost_windows"
                    " WHERE window_start < to_timestamp(%s / 1000.0)", (T0_MS + windows * WINDOW_S * 1000,)).fetchone()

            letters = wait_until(lambda: conn.execute(
                "SELECT reason FROM dead_letters ORDER BY reason").fetchall(), what="dead letters")
            assert len(letters) == 2
            assert letters[0][0] == "no on-prem asset profile matches host 'node-9'"  # only the worker prices
            # one row per bad source record, whichever consumer (worker or sink) reported it first
            assert "not JSON: Expecting property name" in letters[1][0]

            # windows 0..5 are closed: 6 rows; 3 at 80 % and 3 at 20 % busy
            first = wait_until(lambda: (t := totals()).rows == 6 and t, what="six cost windows")
            assert first.cost_usd == 6 * D("0.191667")
            assert first.busy_gpu_ms == 3 * 10 * 48_000 + 3 * 10 * 12_000  # busy GPU-ms: 10 samples a window
            assert first.allocated_gpu_ms == 6 * 600_000  # one GPU, six 10-minute windows = 1 GPU-hour

            # replaying every sample changes nothing: no money added, no second decision, no second alert.
            # A sentinel sample after the replay, on the same partition, goes into window 7 and closes window 6:
            # once window 6 is stored, the worker has read every replayed sample before it.
            for s in script():
                producer.send(topics.gpu_samples, key=b"node-1", value=s.encode())
            sentinel = sample(s.ts_ms + WINDOW_S * 1000, 20.0)
            producer.send(topics.gpu_samples, key=b"node-1", value=sentinel.encode())
            producer.flush()
            wait_until(lambda: conn.commit() or totals(windows=7).rows == 7, what="the sentinel's window 6")
            services.check()
            assert totals() == first
            assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NOT NULL").fetchone()[0] == 1
        assert len(slack.posts) == 1
    finally:
        producer.close()
        services.stop()


def test_a_cloud_instance_costs_live_seconds_after_each_state_change(tmp_path: Path, broker, database, topic_prefix):
    """Cost windows close with the event time; the live spend of an instance must not wait for them."""
    offers = [dict(CONFIG["cloud_offers"][0], usd_per_hour={"on_demand": 24, "spot": 9})]
    cfg = dict(CONFIG, cloud_offers=offers, state_dir=str(tmp_path / "state"),
               kafka={"topic_prefix": topic_prefix, "topic_partitions": 2})
    cfg.pop("alerts")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    migrate(database)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    services = Services(config, config_path, Endpoints(broker.bootstrap, database, broker.profile, True, True))
    for name in ("worker", "sink"):
        services.start(name)
    producer = make_producer(broker.bootstrap, config.kafka)

    def change(instance: str, ts_ms: int, state: str, option: str) -> float:
        event = InstanceEvent(event_id=f"{instance}|{ts_ms}", ts_ms=ts_ms, provider="aws", region="us-east-1",
                              account="1", instance_id=instance, instance_type="p4d.24xlarge", state=state,
                              purchase_option=option, workload="team-b/serve", team="team-b")
        producer.send(topics.instance_events, key=instance.encode(), value=event.encode())
        producer.flush()
        return time.monotonic()

    try:
        with psycopg.connect(database, autocommit=True) as conn:
            def live(instance: str, state: str):
                return conn.execute("SELECT state, usd_per_hour, running_since, ends_at FROM live_instances"
                                    " WHERE instance_id = %s AND state = %s", (instance, state)).fetchone()

            change("i-od", T0_MS, "running", "on_demand")
            wait_until(lambda: live("i-od", "running"), 120, "the worker to start and price the first instance")
            # the worker is up: from now on each change must be live within seconds
            sent = change("i-spot", T0_MS + 60_000, "running", "spot")
            state, usd_per_hour, since, ends = wait_until(lambda: live("i-spot", "running"), 30, "spot start")
            start_latency_s = time.monotonic() - sent
            assert usd_per_hour == D(9) and int(since.timestamp() * 1000) == T0_MS + 60_000 and ends is None
            ((instances, spend),) = conn.execute(
                "SELECT count(*), sum(usd_per_hour) FROM live_instances WHERE state = 'running'").fetchall()
            assert (instances, spend) == (2, D(33))  # $24 + $9 an hour, before any window of theirs closed
            assert conn.execute("SELECT count(*) FROM cost_windows").fetchone()[0] == 0

            sent = change("i-spot", T0_MS + 300_000, "spot_interruption_warning", "spot")
            _, usd_per_hour, _, ends = wait_until(lambda: live("i-spot", "reclaiming"), 30, "spot warning")
            warning_latency_s = time.monotonic() - sent
            assert usd_per_hour == D(9) and int(ends.timestamp() * 1000) == T0_MS + 420_000  # reclaimed 2 min later

            sent = change("i-od", T0_MS + 400_000, "stopped", "on_demand")
            _, usd_per_hour, since, _ = wait_until(lambda: live("i-od", "stopped"), 30, "stop")
            stop_latency_s = time.monotonic() - sent
            assert usd_per_hour == 0 and since is None
            # a replayed start changes nothing: the instance stays stopped.  A sentinel after it on the same
            # partition, a spot warning, is stored with its own time: a stopped instance stays "stopped" (had
            # the replay started it again, the warning would have made it "reclaiming")
            change("i-od", T0_MS, "running", "on_demand")
            change("i-od", T0_MS + 450_000, "spot_interruption_warning", "on_demand")
            changed_at = wait_until(lambda: conn.execute(
                "SELECT changed_at FROM live_instances WHERE instance_id = 'i-od'"
                " AND changed_at = to_timestamp(%s / 1000.0)", (T0_MS + 450_000,)).fetchone(), 30, "the sentinel")
            assert changed_at and live("i-od", "stopped") and not live("i-od", "running")
            assert max(start_latency_s, warning_latency_s, stop_latency_s) < 10, \
                (start_latency_s, warning_latency_s, stop_latency_s)
            services.check()
    finally:
        producer.close()
        services.stop()
