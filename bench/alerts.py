"""Alert latency: from the sample that completes a crossing to the Slack message arriving.

The real pipeline runs: the Faust worker and the alerter as subprocesses, the local broker and
PostgreSQL, and a local HTTP server standing in for Slack.  Workload after workload drops from
90 % to 5 % utilization; when the tick that closes the third low window (the dwell) is published,
the clock starts; it stops when that workload's message reaches the receiver.  The first
crossing only warms the pipeline up (consumer groups joining) and is not counted.
"""

from __future__ import annotations

import http.server
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import yaml

from hybridspend.contracts.config import EXAMPLE_CONFIG, load_config
from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, send_watermarks
from hybridspend.infra.local import Endpoints
from hybridspend.infra.services import Services

WINDOW_MS = 60_000
INTERVAL_MS = 20_000
START_MS = 1_790_812_800_000


class Receiver:
    """A Slack incoming-webhook stand-in that notes when each message arrives."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for word in body.get("text", "").replace("/", " ").split():
                    if word.startswith("lat-"):
                        receiver.arrivals.setdefault(word.strip(":,()"), time.perf_counter())
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/platform"

    def close(self) -> None:
        self.server.shutdown()


def _sample(host: str, workload: str, ts: int, pct: float) -> GpuSample:
    return GpuSample(event_id=f"{host}:{ts}", ts_ms=ts, interval_ms=INTERVAL_MS, resource=host,
                     environment="onprem", source="bench", gpus=[GpuReading(
                         uuid=f"GPU-{host}", index=0, model="NVIDIA A100-SXM4-80GB", gpu_class="A100",
                         utilization_pct=pct, memory_used_mib=1, memory_total_mib=81920, power_mw=400_000,
                         workloads=[WorkloadShare(workload, "bench")])])


def run(bootstrap: str, profile, dsn: str, quick: bool, say=print) -> dict:
    from hybridspend.storage.db import migrate

    crossings = 11 if quick else 41  # the first one is a warm-up
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="hs-bench-alerts-") as tmp_name:
        tmp = Path(tmp_name)
        data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        data["state_dir"] = str(tmp)
        data["kafka"] = {"topic_prefix": f"bencha{int(time.time())}.", "topic_partitions": 4}
        # the latency of a crossing to its alert: migrations on the dwell alone (24 h of evidence by default)
        data["thresholds"] = {"window_seconds": WINDOW_MS // 1000, "grace_seconds": 0, "dwell_windows": 3,
                              "evidence_hours": {"migrate_to_cloud": 0}}
        data["alerts"] = {"routes": [{"name": "platform", "audience": "platform",
                                      "slack_webhook_url": {"env": "HYBRIDSPEND_BENCH_WEBHOOK"}}]}
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(data))
        config = load_config(config_path, {})
        topics = Topics.from_config(config.kafka)
        migrate(dsn)
        ensure_topics(bootstrap, config.kafka, topics)
        os.environ["HYBRIDSPEND_BENCH_WEBHOOK"] = receiver.url
        services = Services(config, config_path, Endpoints(bootstrap, dsn, profile, True, True))
        producer = make_producer(bootstrap, config.kafka, linger_ms=0)
        latencies: list[float] = []
        try:
            services.start("worker")
            services.start("alerter")
            hosts = [(f"dgx-a100-l{i:02d}", f"lat-{i:02d}") for i in range(crossings)]
            drop_window = {w: 5 + 4 * i for i, (_, w) in enumerate(hosts)}
            ticks_per_window = WINDOW_MS // INTERVAL_MS
            last_window = max(drop_window.values()) + 4
            for tick in range(1, last_window * ticks_per_window + 1):
                ts = START_MS + tick * INTERVAL_MS
                window = (ts - INTERVAL_MS - START_MS) // WINDOW_MS
                for host, workload in hosts:
                    pct = 5.0 if window >= drop_window[workload] else 90.0
                    producer.send(topics.gpu_samples, key=host.encode(), value=_sample(host, workload, ts, pct).encode())
                send_watermarks(producer, topics, "bench", ts)
                producer.flush()
                # this tick closes the window (ts - START) / WINDOW - 1: the third low one of a workload?
                due = [w for w, d in drop_window.items() if (ts - START_MS) == (d + 3) * WINDOW_MS]
                if not due:
                    continue
                sent = time.perf_counter()
                deadline = sent + 30
                while not all(w in receiver.arrivals for w in due):
                    if time.perf_counter() > deadline:
                        services.check()
                        raise RuntimeError(f"no alert for {due} within 30 s (logs in {services.log_dir})")
                    time.sleep(0.005)
                if "lat-00" not in due:  # the first crossing warms up the worker, the alerter and their groups
                    latencies += [receiver.arrivals[w] - sent for w in due]
        finally:
            producer.close()
            services.stop()
            receiver.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    say(f"  {len(latencies)} crossings: p50 {p50:.2f} s, p99 {p99:.2f} s, max {latencies[-1]:.2f} s")
    return {"alert_latency_p50_s": round(p50, 3), "alert_latency_p99_s": round(p99, 3), "alert_crossings": len(latencies)}
