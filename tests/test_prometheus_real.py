"""A real Prometheus (Debian's package) scrapes dcgm-exporter pages, and `collect prometheus` reads
the readings back exactly as `collect dcgm` reads them from the pages themselves."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from hybridspend.collectors.dcgm import DcgmCollector, UrlList
from hybridspend.collectors.prometheus import PrometheusCollector
from hybridspend.infra.checkpoint import Checkpoint
from hybridspend.infra.local import free_port
from tests.conftest import wait_until
from tests.test_dcgm_collector import Recorder, config, exporters  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian's prometheus package; .ci/run installs it)")


@contextlib.contextmanager
def prometheus_scraping(state: Path, jobs: dict[str, tuple[str, str]]) -> Iterator[str]:
    """A real Prometheus scraping every second: job name -> (host:port, metrics path); its URL."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
                           for job, (target, path) in jobs.items()]}))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={state / 'prometheus.yml'}",
                             f"--storage.tsdb.path={state / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(state / "prometheus.log").open("wb"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def real_prometheus(tmp_path: Path, exporters):  # noqa: F811
    target = urllib.parse.urlsplit(exporters.url).netloc
    with prometheus_scraping(tmp_path / "prometheus", {f"dcgm-{name}": (target, f"/{name}/metrics")
                                                       for name in ("a100", "h100")}) as url:
        yield url


def _query(url: str, promql: str) -> list:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                    timeout=5) as r:
            return json.loads(r.read())["data"]["result"]
    except OSError:
        return []  # not listening yet


def _comparable(events) -> dict:
    """Per node, each reading's figures (energy aside: the collectors see different counter histories)."""
    return {e.resource: sorted((g.uuid, g.index, g.model, g.gpu_class, g.utilization_pct, g.memory_used_mib,
                                g.memory_total_mib, g.power_mw, tuple(sorted((w.workload, w.team) for w in g.workloads)),
                                g.parent_uuid, g.mig_profile, g.compute_fraction) for g in e.gpus) for e in events}


@needs_prometheus
def test_collect_prometheus_reads_back_what_collect_dcgm_reads_from_the_pages(real_prometheus, exporters,  # noqa: F811
                                                                              tmp_path):
    def scraped():
        return len(_query(real_prometheus, 'count by (job) (DCGM_FI_DEV_POWER_USAGE)')) == 2

    wait_until(scraped, 60, "Prometheus to scrape both exporter pages", interval_s=0.5)
    # every step of the range read below has a sample behind it: four scrapes of every series
    wait_until(lambda: float(_query(real_prometheus, "min(count_over_time(DCGM_FI_DEV_POWER_USAGE[5s]))")[0]["value"][1])
               >= 4, 60, "four scrapes of every series", interval_s=0.5)
    direct = Recorder()
    DcgmCollector(UrlList([f"{exporters.url}/a100/metrics", f"{exporters.url}/h100/metrics"]), direct,
                  config().resolve_workload, 30, 5).poll_once()
    through = Recorder()
    collector = PrometheusCollector(real_prometheus, through, Checkpoint(tmp_path / "prom.json"),
                                    config().resolve_workload, step_s=1, lookback_s=3, delay_s=1)
    report = collector.poll_once()
    assert report.errors == [] and through.events, report.summary()
    newest = max(e.ts_ms for e in through.events)
    latest = [e for e in through.events if e.ts_ms == newest]
    assert _comparable(latest) == _comparable(direct.events)
    assert set(_comparable(latest)) == {"dgx-a100-01", "hgx-h100-01"}  # both host-label spellings


@pytest.mark.slow
@needs_prometheus
def test_a_real_prometheus_scrapes_the_services_and_a_collector_while_the_pipeline_runs(tmp_path, broker, database,
                                                                                       topic_prefix, exporters):  # noqa: F811
    import os
    import sys

    from hybridspend.infra.broker import make_producer, send_watermarks
    from tests.test_metrics import SAMPLE_S, T0_MS, metrics_port, metrics_ports, sample, services_serving_metrics

    config, topics, services = services_serving_metrics(tmp_path, broker, database, topic_prefix)
    producer = make_producer(broker.bootstrap, config.kafka)
    collector_log = tmp_path / "collector.log"
    collector = subprocess.Popen(  # a dcgm collector polling every second, serving its own metrics
        [sys.executable, "-m", "hybridspend.cli", "collect", "dcgm", "--url", f"{exporters.url}/h100/metrics",
         "--interval", "1", "--metrics-port", "0", "--config", str(tmp_path / "config.yaml")],
        env={**os.environ, "HYBRIDSPEND__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap},
        stdout=subprocess.DEVNULL, stderr=collector_log.open("wb"))
    try:
        ports = metrics_ports(services)
        ports["collector"] = wait_until(lambda: metrics_port(collector_log), 60, "the collector's metrics port")
        for i in range(1, 32):  # 31 one-minute samples: windows close, the sink stores them
            producer.send(topics.gpu_samples, key=b"node-1", value=sample(T0_MS + i * SAMPLE_S * 1000).encode())
        send_watermarks(producer, topics, "test", T0_MS + 31 * SAMPLE_S * 1000)
        producer.flush()
        jobs = {f"hybridspend-{name}": (f"127.0.0.1:{port}", "/metrics") for name, port in ports.items()}
        with prometheus_scraping(tmp_path / "prometheus", jobs) as url:
            wait_until(lambda: {r["metric"]["job"] for r in _query(url, "up == 1")} == set(jobs), 60,
                       "Prometheus to scrape all three services")

            def stored_as_prometheus_sees_it():
                services.check()
                got = _query(url, 'hybridspend_events_out_total{job="hybridspend-sink", stream="gpu_samples"}')
                return got and float(got[0]["value"][1]) >= 31  # and the collector's

            wait_until(stored_as_prometheus_sees_it, 120, "the sink's 31 stored samples in Prometheus")

            def worker_counted():  # the worker exports its counts on a timer
                got = _query(url, f'hybridspend_events_in_total{{job="hybridspend-worker", stream="{topics.gpu_samples}"}}')
                return got and float(got[0]["value"][1]) >= 31

            wait_until(worker_counted, 60, "the worker's 31 samples read, in Prometheus")
            wait_until(lambda: _query(url, 'hybridspend_alert_outbox_pending{job="hybridspend-alerter"}'), 60,
                       "the alerter's outbox gauge in Prometheus")

            def collector_polled():
                got = _query(url, 'hybridspend_collector_polls_total{job="hybridspend-collector", collector="dcgm",'
                                  ' outcome="ok"}')
                return got and float(got[0]["value"][1]) >= 2

            wait_until(collector_polled, 60, "the collector's good polls in Prometheus")
        promtool = shutil.which("promtool")  # from the same Debian package
        for name, port in ports.items():  # every service's page passes Prometheus's own lint
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            check = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True)
            assert check.returncode == 0, (name, check.stdout.decode() + check.stderr.decode())
    finally:
        collector.terminate()
        collector.wait(timeout=30)
        producer.close()
        services.stop()
