"""The NVML collector over a fake NVML (no GPU here) with the real pynvml API surface; what it publishes is
read back from a real broker."""

import os
from pathlib import Path

import pytest

from hybridspend.collectors.nvml.collector import NvmlCollector, ProcessInspector
from hybridspend.contracts.catalog import gpu_class_of
from hybridspend.collectors.nvml.fake import FakeGpu, FakeNvml
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import EventError, GpuSample, Watermark
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer
from hybridspend.infra.publish import Publisher
from tests.conftest import consume

EXAMPLE = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "fleet.yaml"


def fake_proc(root: Path, pid: int, cgroup: str, environ: dict[str, str]) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in environ.items()))


@pytest.fixture
def collector(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 100, "0::/kubepods.slice/kubepods-burstable-pod1b2c3d4e_aaaa_bbbb_cccc_123456789012.slice/"
              "cri-containerd-" + "ab" * 32 + ".scope\n", {"POD_NAMESPACE": "ml-train-bert"})
    fake_proc(proc, 200, "0::/slurm/uid_1000/job_4242/step_0\n", {"SLURM_JOB_ACCOUNT": "physics", "SLURM_JOB_ID": "4242"})
    nv = FakeNvml([
        FakeGpu("GPU-a", utilization_pct=93, power_mw=312_000, pids=[100], memory_used_bytes=40 * 2**30),
        FakeGpu("GPU-b", utilization_pct=10, pids=[200]),
        FakeGpu("GPU-c", lost=True),
        FakeGpu("GPU-d", power_mw=None),  # power not supported, idle
    ])
    col = NvmlCollector(load_config(EXAMPLE, {}), nv, host="dgx-a100-01", interval_s=30,
                        inspector=ProcessInspector(proc))
    col.start()
    return col


def test_sample_maps_processes_to_workloads_and_skips_a_lost_gpu(collector):
    sample = collector.sample(1_790_000_010_000)
    assert [g.uuid for g in sample.gpus] == ["GPU-a", "GPU-b", "GPU-d"]  # GPU-c is lost: reported, skipped
    assert collector.errors == 1
    a, b, d = sample.gpus
    assert (a.utilization_pct, a.power_mw, a.memory_used_mib, a.gpu_class) == (93.0, 312_000, 40960, "A100")
    assert [(w.workload, w.team) for w in a.workloads] == [("ml-train-bert", "ml-platform")]
    assert [(w.workload, w.team) for w in b.workloads] == [("slurm-physics", "hpc")]
    assert d.workloads == [] and d.power_mw is None
    assert sample.interval_ms == 30_000 and sample.resource == "dgx-a100-01"


def test_process_labels_from_cgroup(tmp_path):
    fake_proc(tmp_path, 7, "0::/docker/" + "c" * 64 + "\n", {})
    labels = ProcessInspector(tmp_path).labels(7)
    assert labels["container_id"] == "c" * 64
    fake_proc(tmp_path, 8, "0::/kubepods/besteffort/pod12345678-1234-1234-1234-123456789abc/" + "d" * 64, {})
    assert ProcessInspector(tmp_path).labels(8)["k8s_pod_uid"] == "12345678-1234-1234-1234-123456789abc"


def test_all_gpus_failing_sends_nothing(collector):
    for gpu in collector.nvml.gpus:
        gpu.lost = True
    assert collector.sample(1) is None


@pytest.mark.integration
def test_polls_publish_one_sample_per_interval_boundary_and_the_hosts_watermark_each_minute(collector, broker,
                                                                                          topic_prefix):
    topics = Topics(topic_prefix, 2)
    ensure_topics(broker.bootstrap, collector.config.kafka, topics)
    producer = make_producer(broker.bootstrap, collector.config.kafka)
    collector.publisher = Publisher(producer, topics)
    now = {"s": 0.0}
    collector.clock = lambda: now["s"]
    reports = []
    try:
        # 30 s intervals of the epoch (1_790_000_010 s is a boundary); a poll is stamped with the boundary at or
        # before it
        for now["s"] in (1_790_000_015.0, 1_790_000_039.9, 1_790_000_040.0, 1_790_000_105.0):
            reports.append(collector.poll_once())
    finally:
        producer.close()
    # +15 s -> +10 s with the first watermark; +39.9 -> +10 again: nothing; +40 -> +40, 30 s after the last
    # watermark: none; +105 -> +100, 90 s after it: a watermark again
    assert [r.sent for r in reports] == [{"gpu-samples": 1, "watermarks": 1}, {}, {"gpu-samples": 1},
                                         {"gpu-samples": 1, "watermarks": 1}]
    assert reports[0].source == "nvml" and reports[0].ok
    assert reports[0].errors == ["1 GPU(s) on dgx-a100-01 could not be read (the others were sampled; see the log)"]

    def decode(value: bytes):
        try:
            return GpuSample.decode(value)
        except EventError:
            return Watermark.decode(value)

    events = consume(broker.bootstrap, topics.gpu_samples, decode)
    assert sorted(e.ts_ms for e in events if isinstance(e, GpuSample)) == [
        1_790_000_010_000, 1_790_000_040_000, 1_790_000_100_000]
    marks = sorted((e.ts_ms, e.source) for e in events if isinstance(e, Watermark))
    # each watermark goes to both partitions of gpu-samples
    assert marks == [(1_790_000_010_000, "nvml:dgx-a100-01")] * 2 + [(1_790_000_100_000, "nvml:dgx-a100-01")] * 2


@pytest.mark.parametrize("name, cls", [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA L4", "L4"),
    ("NVIDIA A10G", "A10G"), ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA RTX A6000", "A6000"),
])
def test_gpu_class_from_model_name(name, cls):
    assert gpu_class_of(name) == cls


@pytest.mark.skipif(not os.path.exists("/dev/nvidiactl"), reason="no NVIDIA GPU on this machine (fake NVML covers the code path)")
def test_real_nvml_reads_this_machines_gpus():
    import pynvml

    col = NvmlCollector(load_config(EXAMPLE, {}), pynvml, host="gpu-host")
    col.start()
    try:
        sample = col.sample(1_790_000_010_000)
        assert sample is not None and sample.gpus
        assert all(0 <= g.utilization_pct <= 100 and g.memory_total_mib > 0 for g in sample.gpus)
    finally:
        col.stop()
