"""The Prometheus collector against a local server implementing /api/v1/query_range over scripted dcgm series."""

from __future__ import annotations

import json

import pytest

from hybridspend.collectors.prometheus import PrometheusCollector
from hybridspend.contracts.events import GpuSample
from hybridspend.cli import main
from hybridspend.infra.checkpoint import Checkpoint
from tests.test_dcgm_collector import Recorder, config

pytestmark = pytest.mark.integration  # a local HTTP server

STEP_S = 30
T_END = 1_790_000_100  # s; the newest step published is (T_END - 60 s delay) rounded down to 30 s = 1_790_000_040
A100 = {"gpu": "0", "UUID": "GPU-a0", "modelName": "NVIDIA A100-SXM4-80GB", "Hostname": "dgx-a100-01",
        "instance": "10.0.0.5:9400", "job": "dcgm", "namespace": "ml-train-bert", "pod": "bert-0"}
MIG = {"gpu": "0", "UUID": "GPU-h0", "modelName": "NVIDIA H100 80GB HBM3", "instance": "hgx-h100-01:9400",
       "job": "dcgm", "GPU_I_ID": "1", "GPU_I_PROFILE": "3g.40gb", "namespace": "research-llm", "pod": "llm-0"}


def energy_mj(t: float) -> float:
    """300 W from t = 1_789_999_000 s: 9,000,000 mJ a 30 s step; the counter restarts at 1_790_000_070 s."""
    if t >= 1_790_000_070:
        return 300_000 * (t - 1_790_000_070) + 1_500_000
    return 1_000_000 + 300_000 * (t - 1_789_999_000)


SERIES = {  # metric -> [(labels, value at t)]
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": [(A100, lambda t: 0.5), (MIG, lambda t: 0.25)],
    "DCGM_FI_DEV_POWER_USAGE": [(A100, lambda t: 300.0), ({k: v for k, v in MIG.items() if not k.startswith("GPU_I")
                                                           and k not in ("namespace", "pod")}, lambda t: 200.0)],
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": [(A100, energy_mj)],
}


def query_range(params: dict) -> tuple[int, str]:
    query, start, end = params["query"][0], float(params["start"][0]), float(params["end"][0])
    step = float(params["step"][0].rstrip("s"))
    metric = query.split("{")[0]
    if metric == "DCGM_FI_DEV_FB_FREE" and FAIL["on"]:
        return 422, json.dumps({"status": "error", "errorType": "execution", "error": "query timed out"})
    result = []
    for labels, value in SERIES.get(metric, []):
        times = [start + k * step for k in range(int((end - start) / step) + 1)]
        result.append({"metric": {"__name__": metric, **labels}, "values": [[t, str(value(t))] for t in times]})
    return 200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


FAIL = {"on": False}


@pytest.fixture
def prometheus(http_pages):
    FAIL["on"] = False
    http_pages.handlers["/api/v1/query_range"] = query_range
    return http_pages


def collector(url, rec, checkpoint, now) -> PrometheusCollector:
    return PrometheusCollector(url, rec, checkpoint, config().resolve_workload, step_s=STEP_S, lookback_s=150,
                               delay_s=60, clock=lambda: now["t"])


def test_reads_the_dcgm_series_since_the_checkpoint_and_restarts_where_it_stopped(prometheus, tmp_path):
    rec, now = Recorder(), {"t": T_END}
    checkpoint = Checkpoint(tmp_path / "prometheus.json")
    report = collector(prometheus.url, rec, checkpoint, now).poll_once()
    # newest step 1_790_000_040; 150 s back -> steps 1_789_999_920 ... 1_790_000_040 after the primer at _890: 5
    # steps, 2 nodes each
    ticks = sorted({e.ts_ms for e in rec.events})
    assert ticks == [t * 1000 for t in range(1_789_999_920, 1_790_000_041, 30)]
    assert report.errors == [] and report.sent == {"gpu samples": 10}
    assert checkpoint.get(f"prometheus:{prometheus.url}") == 1_790_000_040_000
    a100 = [e for e in rec.events if e.resource == "dgx-a100-01"]
    h100 = [e for e in rec.events if e.resource == "hgx-h100-01"]  # the node from Prometheus's instance label
    assert len(a100) == len(h100) == 5 and all(e.source == "prometheus" for e in rec.events)
    (g,) = a100[0].gpus
    assert (g.uuid, g.utilization_pct, g.power_mw, g.energy_mj) == ("GPU-a0", 50.0, 300_000, 9_000_000)
    assert [(w.workload, w.team) for w in g.workloads] == [("ml-train-bert", "ml-platform")]
    (m,) = h100[0].gpus
    assert (m.uuid, m.parent_uuid, m.mig_profile, m.compute_fraction, m.utilization_pct, m.power_mw) == \
        ("MIG-GPU-h0/1", "GPU-h0", "3g.40gb", 3 / 7, 25.0, 200_000)
    assert GpuSample.decode(h100[0].encode()) == h100[0]

    # 90 s later, a restarted collector (new object, same checkpoint file) reads only the 3 new steps
    now["t"] += 90
    rec2 = Recorder()
    collector(prometheus.url, rec2, Checkpoint(tmp_path / "prometheus.json"), now).poll_once()
    assert sorted({e.ts_ms for e in rec2.events}) == [1_790_000_070_000, 1_790_000_100_000, 1_790_000_130_000]
    energy = [e.gpus[0].energy_mj for e in sorted(rec2.events, key=lambda e: e.ts_ms) if e.resource == "dgx-a100-01"]
    # the counter restarted at _070: 1,500,000 mJ since; then 9,000,000 a step again
    assert energy == [1_500_000, 9_000_000, 9_000_000]


def test_a_failing_query_is_reported_and_the_checkpoint_stays(prometheus, tmp_path):
    FAIL["on"] = True
    rec, checkpoint = Recorder(), Checkpoint(tmp_path / "prometheus.json")
    report = collector(prometheus.url, rec, checkpoint, {"t": T_END}).poll_once()
    assert rec.events == [] and not report.ok
    assert report.errors == [f"{prometheus.url}: DCGM_FI_DEV_FB_FREE: HTTP 422 "
                             '{"status": "error", "errorType": "execution", "error": "query timed out"}']
    assert checkpoint.get(f"prometheus:{prometheus.url}") is None


def test_dry_run_prints_json_lines_and_keeps_its_own_checkpoint(prometheus, tmp_path, capsys):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("collectors:\n  prometheus:\n    lookback_seconds: 60\n    delay_seconds: 0\n")
    rc = main(["collect", "prometheus", "--config", str(config_file), "--state-dir", str(tmp_path),
               "--url", prometheus.url, "--once", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0
    events = [GpuSample.decode(line) for line in out.splitlines()]
    assert len(events) == 4 and {e.resource for e in events} == {"dgx-a100-01", "hgx-h100-01"}  # 2 steps x 2 nodes
    assert "prometheus: sent 4 gpu samples; 0 problem(s)" in err
    assert (tmp_path / "checkpoints" / "prometheus-dry-run.json").exists()
    assert not (tmp_path / "checkpoints" / "prometheus.json").exists()
