"""A real Prometheus (Debian's package) scrapes dcgm-exporter pages, and `collect prometheus` reads
the readings back exactly as `collect dcgm` reads them from the pages themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from collectors.dcgm import DcgmCollector, UrlList
from collectors.prometheus import PrometheusCollector
from infra.checkpoint import Checkpoint
from infra.local import free_port
from tests.conftest import wait_until
from tests.test_dcgm_collector import Recorder, config, exporters  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def real_prometheus(tmp_path: Path, exporters):  # noqa: F811
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian's prometheus package; .ci/run installs it)")
    target = urllib.parse.urlsplit(exporters.url).netloc
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": f"dcgm-{name}", "metrics_path": f"/{name}/metrics",
                            "static_configs": [{"targets": [target]}]} for name in ("a100", "h100")]}))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def _comparable(events) -> dict:
    """Per node, each reading's figures (energy aside: the collectors see different counter histories)."""
    return {e.resource: sorted((g.uuid, g.index, g.model, g.gpu_class, g.utilization_pct, g.memory_used_mib,
                                g.memory_total_mib, g.power_mw, tuple(sorted((w.workload, w.team) for w in g.workloads)),
                                g.parent_uuid, g.mig_profile, g.compute_fraction) for g in e.gpus) for e in events}


def test_collect_prometheus_reads_back_what_collect_dcgm_reads_from_the_pages(real_prometheus, exporters,  # noqa: F811
                                                                              tmp_path):
    def scraped():
        try:
            return len(_query(real_prometheus, 'count by (job) (DCGM_FI_DEV_POWER_USAGE)')) == 2
        except OSError:
            return False  # not listening yet

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
