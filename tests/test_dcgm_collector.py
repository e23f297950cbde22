"""The dcgm-exporter collector against a local HTTP server serving exporter pages written from the documented
metric set: whole GPUs, MIG instances, a time-sliced GPU, both host label spellings, a garbage page."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml

from hybridspend.collectors.dcgm import DcgmCollector, UrlList
from hybridspend.contracts.config import Config
from hybridspend.contracts.events import GpuSample
from hybridspend.cli import main
from hybridspend.streams.processing import ResourceState, UsageProcessor

pytestmark = pytest.mark.integration  # a local HTTP server

EXAMPLE = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "fleet.yaml"
T0 = 1_790_000_010.0  # seconds; a 30 s tick boundary is 1_790_000_010_000 ms
TICK_MS = 1_790_000_010_000


def config() -> Config:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["workloads"].insert(0, {"match": {"slurm_job_id": "*"}, "workload": "slurm-{slurm_job_id}", "team": "hpc"})
    return Config.model_validate(data)


A100 = 'modelName="NVIDIA A100-SXM4-80GB",Hostname="dgx-a100-01"'
# An A100 node, older exporter ("Hostname"): GPU 0 runs a pod (profiling metric present), GPU 1 is free,
# GPU 2 is time-sliced between three pods (legacy pod labels; the exporter repeats the GPU's values for each).
WHOLE_AND_SHARED = f"""\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} 93
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-a1",device="nvidia1",{A100}}} 0
DCGM_FI_DEV_GPU_UTIL{{gpu="2",UUID="GPU-a2",device="nvidia2",{A100},container_name="nb",pod_namespace="research-nlp",pod_name="nb-1"}} 60
DCGM_FI_DEV_GPU_UTIL{{gpu="2",UUID="GPU-a2",device="nvidia2",{A100},container_name="nb",pod_namespace="research-nlp",pod_name="nb-2"}} 60
DCGM_FI_DEV_GPU_UTIL{{gpu="2",UUID="GPU-a2",device="nvidia2",{A100},container_name="srv",pod_namespace="search",pod_name="ranker-7"}} 60
# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} 0.875
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} 40960
DCGM_FI_DEV_FB_USED{{gpu="1",UUID="GPU-a1",device="nvidia1",{A100}}} 0
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} 40960
DCGM_FI_DEV_FB_FREE{{gpu="1",UUID="GPU-a1",device="nvidia1",{A100}}} 81920
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} 312.5
DCGM_FI_DEV_POWER_USAGE{{gpu="1",UUID="GPU-a1",device="nvidia1",{A100}}} 61
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="0",UUID="GPU-a0",device="nvidia0",{A100},container="trainer",namespace="ml-train-bert",pod="bert-0"}} {{e0}}
"""

H100 = 'modelName="NVIDIA H100 80GB HBM3",hostname="hgx-h100-01"'
# An H100 node, newer exporter ("hostname"): GPU 0 in MIG mode with a 3g.40gb instance running a pod and a
# 2g.20gb instance nobody uses (2 of 7 slices not partitioned); GPU 1 runs a Slurm job.
MIG = f"""\
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-h0",device="nvidia0",{H100},GPU_I_PROFILE="3g.40gb",GPU_I_ID="1",container="llm",namespace="research-llm",pod="llm-0"}} 0.5
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-h0",device="nvidia0",{H100},GPU_I_PROFILE="2g.20gb",GPU_I_ID="5"}} 0
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="1",UUID="GPU-h1",device="nvidia1",{H100},hpc_job="4242"}} 1
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{gpu="0",UUID="GPU-h0",device="nvidia0",{H100},GPU_I_PROFILE="3g.40gb",GPU_I_ID="1",container="llm",namespace="research-llm",pod="llm-0"}} 30000
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{{gpu="0",UUID="GPU-h0",device="nvidia0",{H100}}} 350
DCGM_FI_DEV_POWER_USAGE{{gpu="1",UUID="GPU-h1",device="nvidia1",{H100},hpc_job="4242"}} 600
"""

GARBAGE = "<html><body>502 Bad Gateway</body></html>\n"


class Recorder:
    """A publisher (infra.publish's surface) that keeps what it was given."""

    def __init__(self):
        self.events, self.flushes, self.marks = [], 0, []

    def send(self, topic, key, event):
        assert topic == "gpu-samples" and key == event.resource
        self.events.append(event)

    def watermark(self, source, ts_ms, logical_topics=("gpu-samples",)):
        self.marks.append((source, ts_ms))
        return False

    def flush(self):
        self.flushes += 1


@pytest.fixture
def exporters(http_pages):
    http_pages.pages["/a100/metrics"] = (200, WHOLE_AND_SHARED.replace("{e0}", "1000000"))
    http_pages.pages["/h100/metrics"] = (200, MIG)
    http_pages.pages["/garbage/metrics"] = (200, GARBAGE)
    http_pages.pages["/down/metrics"] = (500, "exporter crashed")
    return http_pages


def collector(urls, publisher, clock, **kw) -> DcgmCollector:
    return DcgmCollector(UrlList(urls, kw.pop("path", None)), publisher, config().resolve_workload, 30, 5,
                         clock=clock, **kw)


def test_exporter_pages_become_one_sample_per_node_with_whole_mig_and_time_sliced_gpus(exporters):
    rec = Recorder()
    report = collector([f"{exporters.url}/a100/metrics", f"{exporters.url}/h100/metrics"], rec, lambda: T0).poll_once()
    assert report.errors == [] and report.sent == {"gpu samples": 2} and rec.flushes == 1
    a100, h100 = sorted(rec.events, key=lambda e: e.resource)
    assert (a100.resource, a100.ts_ms, a100.interval_ms, a100.source, a100.environment) == \
        ("dgx-a100-01", TICK_MS, 30_000, "dcgm", "onprem")
    g0, g1, g2 = a100.gpus
    # the profiling metric wins over the coarse one: 0.875 * 100 = 87.5 %, not 93
    assert (g0.uuid, g0.utilization_pct, g0.power_mw, g0.memory_used_mib, g0.memory_total_mib, g0.gpu_class) == \
        ("GPU-a0", 87.5, 312_500, 40960, 81920, "A100")
    assert [(w.workload, w.team) for w in g0.workloads] == [("ml-train-bert", "ml-platform")]
    assert g0.energy_mj is None  # first scrape: no previous counter value
    assert (g1.utilization_pct, g1.workloads, g1.power_mw) == (0.0, [], 61_000)  # free and unused: idle
    # time-sliced: one reading (never the GPU three times), one share per pod, legacy labels understood
    assert g2.uuid == "GPU-a2" and g2.utilization_pct == 60.0
    assert [(w.workload, w.team, w.allow_spot) for w in g2.workloads] == [
        ("research-nlp", "research", True), ("research-nlp", "research", True), ("search", "search", False)]
    m1, m5, h1 = h100.gpus  # "hostname" (new spelling) understood
    assert (m1.uuid, m1.parent_uuid, m1.mig_profile, m1.compute_fraction, m1.utilization_pct) == \
        ("MIG-GPU-h0/1", "GPU-h0", "3g.40gb", 3 / 7, 50.0)
    assert [w.workload for w in m1.workloads] == ["research-llm"] and m1.power_mw == 350_000  # the GPU's power
    assert (m5.mig_profile, m5.compute_fraction, m5.workloads) == ("2g.20gb", 2 / 7, [])
    assert (h1.uuid, h1.compute_fraction, h1.utilization_pct) == ("GPU-h1", 1.0, 100.0)
    assert [(w.workload, w.team) for w in h1.workloads] == [("slurm-4242", "hpc")]
    for event in rec.events:
        assert GpuSample.decode(event.encode()) == event


def test_energy_comes_from_the_counter_and_a_counter_reset_counts_from_the_new_value(exporters):
    rec, now = Recorder(), {"t": T0}
    col = collector([f"{exporters.url}/a100/metrics"], rec, lambda: now["t"])
    col.poll_once()
    for t, counter, expected in [
        (T0 + 30, "10000000", 9_000_000),  # 10,000,000 - 1,000,000 mJ drawn in the 30 s tick (300 W)
        (T0 + 60, "2500000", 2_500_000),  # dropped: the counter restarted (driver reload); 2,500,000 since
        (T0 + 120, "5000000", None),  # a tick was missed: the increase spans 60 s, so power x interval is used
    ]:
        exporters.pages["/a100/metrics"] = (200, WHOLE_AND_SHARED.replace("{e0}", counter))
        now["t"] = t
        col.poll_once()
        assert rec.events[-1].gpus[0].energy_mj == expected


def test_a_failing_or_garbage_page_is_reported_and_the_other_endpoints_go_on(exporters):
    rec = Recorder()
    urls = [f"{exporters.url}/garbage/metrics", f"{exporters.url}/down/metrics", "http://127.0.0.1:9/metrics",
            f"{exporters.url}/h100/metrics"]
    report = collector(urls, rec, lambda: T0).poll_once()
    assert [e.resource for e in rec.events] == ["hgx-h100-01"]
    assert report.ok and report.sent == {"gpu samples": 1} and len(report.errors) == 3
    garbage, down, refused = report.errors
    assert garbage.startswith(f"{urls[0]}: not a Prometheus text page")
    assert down == f"{urls[1]}: HTTP 500 Internal Server Error"
    assert refused.startswith(f"{urls[2]}: cannot read")


def test_the_url_file_is_read_again_when_it_changes(exporters, tmp_path):
    urls = tmp_path / "exporters.txt"
    urls.write_text(f"# the A100 rack\n{exporters.url}/a100/metrics\n")
    rec, now = Recorder(), {"t": T0}
    col = collector([], rec, lambda: now["t"], path=urls)
    col.poll_once()
    urls.write_text(f"{exporters.url}/a100/metrics\n\n{exporters.url}/h100/metrics\n")
    now["t"] += 30
    col.poll_once()
    assert [e.resource for e in rec.events] == ["dgx-a100-01", "dgx-a100-01", "hgx-h100-01"]
    urls.unlink()  # gone: reported, the last list is kept
    now["t"] += 30
    report = col.poll_once()
    assert len(rec.events) == 5 and "URL file" in report.errors[0]
    now["t"] += 10  # the same 30 s interval again: sampled already, nothing sent
    assert col.poll_once().sent == {} and len(rec.events) == 5


def test_dry_run_prints_each_event_as_one_json_line_and_needs_no_broker(exporters, capsys, tmp_path):
    rc = main(["collect", "dcgm", "--state-dir", str(tmp_path), "--url", f"{exporters.url}/h100/metrics",
               "--url", f"{exporters.url}/garbage/metrics", "--once", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0
    (line,) = out.splitlines()
    event = json.loads(line)
    assert list(event)[:8] == ["schema", "event_id", "ts_ms", "interval_ms", "resource", "environment", "source",
                               "gpus"]
    assert (event["schema"], event["resource"], event["source"]) == ("gpu_sample.v1", "hgx-h100-01", "dcgm")
    assert event["gpus"][0] == {
        "uuid": "MIG-GPU-h0/1", "index": 0, "model": "NVIDIA H100 80GB HBM3", "gpu_class": "H100",
        "utilization_pct": 50.0, "memory_used_mib": 30000, "memory_total_mib": 30000, "power_mw": 350000,
        "workloads": [{"workload": "research-llm", "team": "research", "allow_spot": True, "utilization_pct": None}],
        "energy_mj": None, "parent_uuid": "GPU-h0", "mig_profile": "3g.40gb", "compute_fraction": 3 / 7,
    }
    assert GpuSample.decode(line).resource == "hgx-h100-01"
    assert "dcgm: sent 1 gpu samples; 1 problem(s)" in err and "not a Prometheus text page" in err


def test_mig_and_shared_costs_from_an_exporter_page_match_hand_computations(exporters):
    rec = Recorder()
    collector([f"{exporters.url}/h100/metrics", f"{exporters.url}/a100/metrics"], rec, lambda: T0).poll_once()
    usage = UsageProcessor(config())
    rows = {}
    for sample in rec.events:
        state = ResourceState()
        usage.add(state, sample)
        rows.update({(r.resource, r.workload): r for r in usage.close(state, sample.resource, TICK_MS + 3_600_000)})
    # H100 (hgx-h100): capex 320000/8 / (48 * 730) = 1.141552511 $/h; upkeep 32000/8 / 8760 = 0.456621005 $/h;
    # energy 350 W * 1.4 * 0.12 $/kWh = 0.0588 $/h.  One 30 s tick = 1/120 h.
    # GPU 0: the 3g instance gets 3/7 of 30 s = 12857.14 -> 12857 ms, the 2g instance 8571.43 -> 8572 ms (largest
    # remainder), 2 unpartitioned slices 8571 ms; energy 350 W * 30 s = 10,500,000 mJ split the same way.
    llm = rows[("hgx-h100-01", "research-llm")]
    assert (llm.allocated_gpu_ms, llm.busy_gpu_ms, llm.energy_mj) == (12857, 6428, 4_499_950)  # 6428.5 rounds half to even
    h100_fixed = D(40000) / (48 * 730) + D(4000) / 8760
    assert llm.cost_usd == round(h100_fixed * D(12857) / 3_600_000 + D("4.49995") / 3600 * D("0.168"), 6)  # kJ / 3600 = kWh
    idle = rows[("hgx-h100-01", "idle")]
    assert idle.allocated_gpu_ms == 8572 + 8571  # the empty instance and the unpartitioned slices
    # GPU 1 (Slurm job, whole GPU, 600 W but no energy counter): 30,000 ms, 18,000,000 mJ
    job = rows[("hgx-h100-01", "slurm-4242")]
    assert (job.allocated_gpu_ms, job.busy_gpu_ms, job.energy_mj) == (30_000, 30_000, 18_000_000)
    # the node's rows add up to its two GPUs' cost: 2 * fixed * 30 s + (10.5 + 18) kJ at 0.168 $/kWh
    node_cost = h100_fixed * 2 * D(30_000) / 3_600_000 + D("28.5") / 3600 * D("0.168")
    assert sum(r.cost_usd for (res, _), r in rows.items() if res == "hgx-h100-01") == round(node_cost, 6)
    # the time-sliced A100 (no power on its page: configured 400 W): 30 s split by allocation, 2 pods of
    # research-nlp and 1 of search -> 20,000 and 10,000 ms; 60 % busy -> 12,000 and 6,000 ms
    nlp, search = rows[("dgx-a100-01", "research-nlp")], rows[("dgx-a100-01", "search")]
    assert (nlp.allocated_gpu_ms, nlp.busy_gpu_ms, nlp.metered_gpu_ms) == (20_000, 12_000, 0)
    assert (search.allocated_gpu_ms, search.busy_gpu_ms) == (10_000, 6_000)


# -- through the real pipeline: exporter page -> collector -> broker -> Faust worker -> sink -> PostgreSQL ---------

PIPE_WINDOW_S, PIPE_TICK_S = 600, 60
PIPE_T0_MS = 1_790_000_400_000 - 1_790_000_400_000 % (PIPE_WINDOW_S * 1000)
H100_NODE = 'modelName="NVIDIA H100 80GB HBM3",Hostname="mig-node-1"'
# GPU 0 in MIG mode: a 3g.40gb instance (team-a, 50 % active), a 1g.10gb instance (team-b, 100 %), 3 slices not
# partitioned; 700 W.  GPU 1 time-sliced among three pods (team-a, team-b twice), 90 % busy, 500 W.
PIPELINE_PAGE = f"""\
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-m0",{H100_NODE},GPU_I_PROFILE="3g.40gb",GPU_I_ID="1",namespace="team-a",pod="a-0"}} 0.5
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-m0",{H100_NODE},GPU_I_PROFILE="1g.10gb",GPU_I_ID="9",namespace="team-b",pod="b-0"}} 1
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-m1",{H100_NODE},namespace="team-a",pod="a-1"}} 90
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-m1",{H100_NODE},namespace="team-b",pod="b-1"}} 90
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-m1",{H100_NODE},namespace="team-b",pod="b-2"}} 90
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{{gpu="0",UUID="GPU-m0",{H100_NODE}}} 700
DCGM_FI_DEV_POWER_USAGE{{gpu="1",UUID="GPU-m1",{H100_NODE},namespace="team-a",pod="a-1"}} 500
"""
# 2 H100 at 183,960 $ each over 36 months = 183960 / (36 * 730) = 7.00 $/GPU-hour capex, no upkeep; PUE 1, 0.10 $/kWh
PIPELINE_CONFIG = {
    "onprem_assets": [{
        "name": "mig-rack", "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_class": "H100", "gpu_count": 2,
        "gpus_per_node": 2, "hosts": ["mig-node-*"], "purchase_price_usd_per_node": 367920,
        "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 600, "pue": 1.0,
        "electricity_usd_per_kwh": 0.10,
    }],
    "workloads": [{"match": {"k8s_namespace": "*"}, "workload": "{k8s_namespace}", "team": "{k8s_namespace}"}],
    "thresholds": {"margin_pct": 10, "dwell_windows": 2, "window_seconds": PIPE_WINDOW_S, "grace_seconds": 0},
    "alerts": {"checks": {"collector_silence_minutes": None}},
}


def test_mig_and_time_sliced_costs_through_the_real_pipeline_match_hand_computations(
        tmp_path, http_pages, broker, database, topic_prefix):
    import psycopg

    from hybridspend.contracts.config import load_config
    from hybridspend.contracts.topics import Topics
    from hybridspend.infra.broker import ensure_topics, make_producer
    from hybridspend.infra.local import Endpoints
    from hybridspend.infra.publish import Publisher
    from hybridspend.infra.services import Services
    from hybridspend.storage.db import migrate
    from tests.conftest import wait_until

    http_pages.pages["/metrics"] = (200, PIPELINE_PAGE)
    cfg = dict(PIPELINE_CONFIG, state_dir=str(tmp_path / "state"),
               kafka={"topic_prefix": topic_prefix, "topic_partitions": 2})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    cfg_loaded = load_config(config_path, {})
    topics = Topics.from_config(cfg_loaded.kafka)
    migrate(database)
    ensure_topics(broker.bootstrap, cfg_loaded.kafka, topics)
    services = Services(cfg_loaded, config_path, Endpoints(broker.bootstrap, database, broker.profile, True, True))
    for name in ("worker", "sink"):
        services.start(name)
    producer = make_producer(broker.bootstrap, cfg_loaded.kafka)
    publisher = Publisher(producer, topics)
    now = {"t": 0.0}
    col = DcgmCollector(UrlList([f"{http_pages.url}/metrics"]), publisher, cfg_loaded.resolve_workload,
                        PIPE_TICK_S, 5, clock=lambda: now["t"])
    try:
        # ticks 1..10 fill window 0; tick 11 starts window 1 and closes window 0
        for i in range(1, 12):
            now["t"] = PIPE_T0_MS / 1000 + i * PIPE_TICK_S
            assert col.poll_once().sent["gpu samples"] == 1
        with psycopg.connect(database) as conn:
            def rows():
                conn.commit()
                return conn.execute(
                    "SELECT workload, allocated_gpu_ms, busy_gpu_ms, energy_mj, cost_usd FROM cost_windows"
                    " WHERE resource = 'mig-node-1' AND window_start = to_timestamp(%s / 1000.0) ORDER BY workload",
                    (PIPE_T0_MS,)).fetchall()
            got = wait_until(lambda: services.check() or (len(r := rows()) == 3 and r), 120, "window 0's cost rows")
            stored = wait_until(lambda: conn.commit() or conn.execute(
                "SELECT gpu_uuid, parent_gpu_uuid, mig_profile, compute_fraction, workloads FROM gpu_samples"
                " WHERE resource = 'mig-node-1' AND ts = to_timestamp(%s / 1000.0) ORDER BY gpu_uuid",
                (PIPE_T0_MS + PIPE_TICK_S * 1000,)).fetchall(), what="the raw samples")
    finally:
        producer.close()
        services.stop()
    # Per 60 s tick.  GPU 0 (MIG): 3/7 of 60,000 ms = 25714.29, 1/7 = 8571.43, 3 free slices 25714.29 -> 25714,
    # 8572 (largest remainder), 25714; busy 50 % of 25714 = 12857 and 100 % of 8572; 700 W * 60 s = 42,000,000 mJ
    # split by time -> 17,999,800 / 6,000,400 / 17,999,800.
    # GPU 1 (time-sliced, by allocation, 3 pods): 20,000 ms each; 90 % busy -> 18,000 each; 500 W * 60 s =
    # 30,000,000 mJ -> 10,000,000 each.  Ten ticks in the window:
    #   team-a: (25714 + 20000) * 10 = 457,140 ms; busy (12857 + 18000) * 10 = 308,570; (17,999,800 + 10,000,000) * 10 mJ
    #   team-b: (8572 + 40000) * 10 = 485,720 ms; busy (8572 + 36000) * 10 = 445,720; (6,000,400 + 20,000,000) * 10 mJ
    #   idle:   25714 * 10 = 257,140 ms; busy 0; 17,999,800 * 10 mJ
    # cost = ms / 3,600,000 h * 7 $/h + mJ / 3,600,000,000 kWh * 0.10 $/kWh
    #   team-a: 0.8888833 + 0.0077777 = 0.8966611;  team-b: 0.9444444 + 0.0072223 = 0.9516668;
    #   idle: 0.4999944 + 0.0049999 = 0.5049944
    # the node's two GPUs for 600 s: 2 * 7 / 6 + (0.7 + 0.5) kW / 6 h * 0.10 = 2.3333333 + 0.02 = 2.353333
    def cost(ms, mj):
        return D(ms) / 3_600_000 * 7 + D(mj) / 3_600_000_000 * D("0.10")

    expected = [
        ("idle", 257_140, 0, 179_998_000, cost(257_140, 179_998_000)),
        ("team-a", 457_140, 308_570, 279_998_000, cost(457_140, 279_998_000)),
        ("team-b", 485_720, 445_720, 260_004_000, cost(485_720, 260_004_000)),
    ]
    assert [r[:4] for r in got] == [e[:4] for e in expected]
    for (_, _, _, _, cost_usd), (name, *_, exact) in zip(got, expected):
        assert abs(cost_usd - exact) <= D("0.000001"), name  # each row within a micro-dollar of its exact cost
    assert sum(r[4] for r in got) == D("2.353333")  # and together exactly the physical GPUs' cost
    assert [(u, p, m, None if f is None else round(f, 4), w) for u, p, m, f, w in stored] == [
        ("GPU-m1", None, None, None, ["team-a", "team-b", "team-b"]),
        ("MIG-GPU-m0/1", "GPU-m0", "3g.40gb", round(3 / 7, 4), ["team-a"]),
        ("MIG-GPU-m0/9", "GPU-m0", "1g.10gb", round(1 / 7, 4), ["team-b"]),
    ]


def test_hostile_pages_are_reported_and_never_stop_the_other_endpoints(exporters, tmp_path, monkeypatch):
    from hybridspend.collectors import dcgm

    monkeypatch.setattr(dcgm, "MAX_PAGE_BYTES", 1 << 20)  # 1 MiB instead of 64: a quicker test
    h100 = f"{exporters.url}/h100/metrics"
    # +Inf power and memory (an OverflowError once), a page over the size limit, a file:// URL
    exporters.pages["/inf/metrics"] = (200, MIG.replace(" 350\n", " +Inf\n").replace(" 30000\n", " +Inf\n")
                                       .replace("hgx-h100-01", "inf-node"))
    exporters.pages["/huge/metrics"] = (200, MIG + "# padding\n" * 200_000)
    secret = tmp_path / "secret.txt"
    secret.write_text("DCGM_FI_DEV_GPU_UTIL{UUID=\"x\"} 1\ntop secret\n")
    # more GPUs than a sample carries
    many = "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n" + "".join(
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="{i}",UUID="GPU-m{i}",Hostname="big-node"}} 50\n' for i in range(70))
    exporters.pages["/many/metrics"] = (200, many)
    # a workload label no Kubernetes would allow: 300 characters with a control character
    hostile = MIG.replace('namespace="research-llm"', 'namespace="' + "x" * 300 + '\\tq"').replace("hgx-h100-01", "label-node")
    exporters.pages["/label/metrics"] = (200, hostile)
    urls = [f"{exporters.url}/inf/metrics", f"{exporters.url}/huge/metrics", f"file://{secret}",
            f"{exporters.url}/many/metrics", f"{exporters.url}/label/metrics", h100]
    rec = Recorder()
    report = collector(urls, rec, lambda: T0).poll_once()
    by_node = {e.resource: e for e in rec.events}
    assert set(by_node) == {"inf-node", "big-node", "label-node", "hgx-h100-01"}
    inf = by_node["inf-node"].gpus[0]
    assert inf.power_mw is None and inf.memory_used_mib == 0  # the impossible values dropped, the GPU kept
    assert len(by_node["big-node"].gpus) == 64
    label_shares = [w.workload for g in by_node["label-node"].gpus for w in g.workloads]
    assert any(w.startswith("invalid-label:") for w in label_shares)  # replaced, its costs kept
    text = "\n".join(report.errors)
    assert "DCGM_FI_DEV_POWER_USAGE inf is outside 0..10000; dropped" in text
    assert "DCGM_FI_DEV_FB_USED inf is outside" in text
    assert f"{urls[1]}: the page is larger than 1,048,576 bytes; not read" in text
    assert f"{urls[2]}: only http:// and https:// endpoints are scraped" in text and "top secret" not in text
    assert "big-node: 70 GPUs and MIG instances, a sample carries 64" in text
    assert "is not a valid label; its costs are kept as invalid-label:" in text
    for event in rec.events:
        assert GpuSample.decode(event.encode()) == event


def test_a_trickling_endpoint_is_cut_off_at_the_timeout(exporters):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle():
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.2):  # a byte every 0.2 s: never idle long enough for a socket timeout
            try:
                conn.sendall(b"#")
            except OSError:
                break
        conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/metrics"
    col = DcgmCollector(UrlList([url]), Recorder(), config().resolve_workload, 30, 1.0, clock=lambda: T0)
    started = time.monotonic()
    report = col.poll_once()
    stop.set()
    server.close()
    assert time.monotonic() - started < 5
    assert report.errors == [f"{url}: the page took longer than 1 s to read; not read"]


def test_a_poll_that_fails_outright_is_reported_and_the_collector_goes_on():
    from hybridspend.collectors.base import CollectReport, run

    class Flaky:
        name, interval_s, polls = "flaky", 0.0, 0

        def poll_once(self):
            self.polls += 1
            if self.polls == 1:
                raise OverflowError("cannot convert float infinity to integer")
            return CollectReport(self.name, {"gpu samples": 1})

    flaky, said = Flaky(), []
    run(flaky, stop=lambda: flaky.polls >= 2, say=said.append, sleep=lambda s: None)
    assert said == ["flaky: the poll failed (OverflowError: cannot convert float infinity to integer); trying again"
                    " in 0 s", "flaky: sent 1 gpu samples; 0 problem(s)"]


def test_malformed_urls_and_replies_that_are_not_http_are_reported(exporters):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def not_http():
        for _ in range(1):
            conn, _ = server.accept()
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            conn.close()

    threading.Thread(target=not_http, daemon=True).start()
    garbage = f"http://127.0.0.1:{server.getsockname()[1]}/metrics"
    urls = ["http://[::1", "http://127.0.0.1:abc/metrics", garbage, f"{exporters.url}/h100/metrics"]
    rec = Recorder()
    report = collector(urls, rec, lambda: T0).poll_once()
    server.close()
    assert [e.resource for e in rec.events] == ["hgx-h100-01"]  # the good endpoint still sampled
    assert [e.split(": ")[0] for e in report.errors] == urls[:3]
    assert all("cannot read: " in e for e in report.errors)


def test_a_running_collectors_polls_are_counted_for_prometheus():
    from hybridspend.collectors.base import CollectReport, run
    from hybridspend.infra import metrics

    def value(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0

    class Polls:
        name, interval_s, polls = "metrics-test", 0.0, 0

        def poll_once(self):
            self.polls += 1
            if self.polls == 1:
                return CollectReport(self.name, {"gpu samples": 3}, ["http://x/metrics: HTTP 500 Internal Server Error"])
            if self.polls == 2:
                return CollectReport(self.name, {}, ["http://x/metrics: cannot read: timed out"])
            raise RuntimeError("broker refused")

    before = value("hybridspend_collector_polls_total", collector="metrics-test", outcome="ok")
    collector = Polls()
    run(collector, stop=lambda: collector.polls >= 3, say=lambda m: None, sleep=lambda s: None)
    assert value("hybridspend_collector_polls_total", collector="metrics-test", outcome="ok") == before + 1
    assert value("hybridspend_collector_polls_total", collector="metrics-test", outcome="failed") == 2
    assert value("hybridspend_collector_events_sent_total", collector="metrics-test", kind="gpu samples") == 3
    assert value("hybridspend_collector_problems_total", collector="metrics-test",
                 kind="HTTP N Internal Server Error") == 1
    assert value("hybridspend_collector_last_success_timestamp_seconds", collector="metrics-test") > 1.7e9



def test_a_collectors_checkpoint_age_is_served(tmp_path):
    from hybridspend.infra import metrics
    from hybridspend.infra.checkpoint import Checkpoint

    Checkpoint(tmp_path / "aws-test.json").set("cursor", 1)
    age = metrics.REGISTRY.get_sample_value("hybridspend_collector_checkpoint_age_seconds", {"checkpoint": "aws-test"})
    assert age is not None and 0 <= age < 60
