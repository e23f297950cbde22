"""NVML collector: every interval, one GPU sample per node (all its GPUs) into Kafka.

Per GPU: UUID, model, utilization, memory, power, and the compute processes on it mapped to a
workload: a Kubernetes pod (from the process's cgroup path), a SLURM job, a container, else the
user.  One GPU's NVML error (GPU lost, field not supported) is reported and skipped; the other
GPUs are still sampled.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from hybridspend.contracts.catalog import gpu_class_of
from hybridspend.contracts.config import Config
from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare, safe_label
from hybridspend.costmodel.sharing import SharingError, mig_compute_fraction

from ..base import CollectReport

log = logging.getLogger(__name__)

UNATTRIBUTED = "unattributed"


def safe_labels(workload: str, team: str, problems: list[str], where: str) -> tuple[str, str]:
    """A workload's name and team as labels: one too long or with control characters (any process
    on a node can set HYBRIDSPEND_WORKLOAD) is replaced by ``safe_label`` and reported, and the
    costs it travels with are kept."""
    labels = safe_label(workload), safe_label(team)
    for kind, given, label in (("workload", workload, labels[0]), ("team", team, labels[1])):
        if label != given:
            problems.append(f"{where}: {kind} label {given[:40]!r}... ({len(given)} characters) is not a valid"
                            f" label; its costs are kept as {label}")
    return labels


_K8S_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:docker|cri-containerd|crio|containerd)[-/:]([0-9a-f]{12,64})")
_SLURM_JOB = re.compile(r"/job_(\d+)")
_ENV_LABELS = {
    "POD_NAMESPACE": "k8s_namespace",
    "KUBERNETES_NAMESPACE": "k8s_namespace",
    "POD_NAME": "k8s_pod",
    "SLURM_JOB_ID": "slurm_job_id",
    "SLURM_JOB_ACCOUNT": "slurm_account",
    "SLURM_JOB_USER": "slurm_user",
    "HYBRIDSPEND_WORKLOAD": "workload",
}


@dataclass
class ProcessInspector:
    """Reads a process's labels from /proc (the root is configurable for tests)."""

    proc_root: Path = Path("/proc")

    def labels(self, pid: int) -> dict[str, str]:
        labels: dict[str, str] = {"pid": str(pid)}
        base = self.proc_root / str(pid)
        try:
            cgroup = (base / "cgroup").read_text(errors="replace")
        except OSError:
            cgroup = ""
        if m := _K8S_POD.search(cgroup):
            labels["k8s_pod_uid"] = m.group(1).replace("_", "-")
        if m := _CONTAINER.search(cgroup):
            labels["container_id"] = m.group(1)
        if m := _SLURM_JOB.search(cgroup):
            labels["slurm_job_id"] = m.group(1)
        try:
            environ = (base / "environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        for entry in environ:
            key, _, value = entry.decode("utf-8", "replace").partition("=")
            if key in _ENV_LABELS and value:
                labels[_ENV_LABELS[key]] = value
        try:
            uid = (base).stat().st_uid
            labels["user"] = pwd.getpwuid(uid).pw_name
        except (OSError, KeyError):
            pass
        return labels


@dataclass
class NvmlCollector:
    """This node's GPUs, one sample per interval, published with the host's watermark (``poll_once``)."""

    name: ClassVar[str] = "nvml"
    config: Config
    nvml: object  # the pynvml module, or a fake with the same API
    host: str = field(default_factory=socket.gethostname)
    interval_s: float = 30.0
    inspector: ProcessInspector = field(default_factory=ProcessInspector)
    errors: int = 0
    label_problems: list[str] = field(default_factory=list)  # reported with the next poll
    publisher: object = None  # infra.publish.Publisher; needed by poll_once only
    clock: Callable[[], float] = time.time
    _initialized: bool = False
    _last_sample_ms: int = -1  # the interval boundary sampled last

    def start(self) -> None:
        self.nvml.nvmlInit()
        self._initialized = True

    def stop(self) -> None:
        if self._initialized:
            self.nvml.nvmlShutdown()
            self._initialized = False

    def _workloads(self, handle) -> list[WorkloadShare]:
        """The workloads of the GPU's compute processes; when several share it, each with its measured share
        of the GPU's work (the SM utilization of its processes) where NVML gives per-process figures."""
        nv = self.nvml
        shares: dict[str, WorkloadShare] = {}
        pids: dict[str, list[int]] = {}
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            labels = self.inspector.labels(proc.pid)
            if "workload" in labels:
                resolved = (labels["workload"], "", False)
            else:
                resolved = self.config.resolve_workload(labels) or (UNATTRIBUTED, "", False)
            name, team, allow_spot = resolved
            if name not in shares:
                shares[name] = WorkloadShare(*safe_labels(name, team, self.label_problems, f"pid {proc.pid}"),
                                             allow_spot)
            pids.setdefault(name, []).append(proc.pid)
        if len(shares) > 1 and (sm_util := self._process_sm_util(handle)) is not None:
            for name, share in shares.items():
                share.utilization_pct = min(100.0, float(sum(sm_util.get(pid, 0.0) for pid in pids[name])))
        return list(shares.values())

    def _process_sm_util(self, handle) -> dict[int, float] | None:
        """Mean SM utilization (%) per process over the last interval; None when NVML has no per-process figures."""
        nv = self.nvml
        since_us = int((self.clock() - self.interval_s) * 1_000_000)
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(handle, since_us)
        except nv.NVMLError:
            return None
        by_pid: dict[int, list[int]] = {}
        for s in samples:
            by_pid.setdefault(int(s.pid), []).append(int(s.smUtil))
        return {pid: sum(v) / len(v) for pid, v in by_pid.items()}

    def _mig_enabled(self, handle) -> bool:
        nv = self.nvml
        try:
            return nv.nvmlDeviceGetMigMode(handle)[0] == nv.NVML_DEVICE_MIG_ENABLE
        except nv.NVMLError:  # not supported on this GPU (or by the driver)
            return False

    def read_device(self, index: int) -> list[GpuReading]:
        """The GPU at ``index``: one reading, or in MIG mode one reading per MIG device.

        A MIG device's reading carries its profile, its compute fraction and the physical GPU's power
        (NVML measures power per GPU).  NVML reports no utilization for MIG devices: one with compute
        processes counts as busy, one without as idle (dcgm-exporter's profiling metric measures it).
        A GPU in MIG mode without instances is one idle reading.
        """
        nv = self.nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        if not self._mig_enabled(handle):
            return [self.read_gpu(index)]
        model = _text(nv.nvmlDeviceGetName(handle))
        uuid, gpu_class = _text(nv.nvmlDeviceGetUUID(handle)), gpu_class_of(model)
        try:
            power_mw: int | None = int(nv.nvmlDeviceGetPowerUsage(handle))
        except nv.NVMLError_NotSupported:
            power_mw = None
        readings = []
        for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nv.NVMLError_NotFound:
                continue
            name = _text(nv.nvmlDeviceGetName(mig))
            profile = name.rsplit(" MIG ", 1)[1] if " MIG " in name else ""
            try:
                fraction = mig_compute_fraction(profile, gpu_class)
            except SharingError:  # an unfamiliar name: the instance's slice count
                attributes = nv.nvmlDeviceGetAttributes(mig)
                profile = profile or f"{attributes.gpuInstanceSliceCount}g.{attributes.memorySizeMB // 1024}gb"
                fraction = mig_compute_fraction(f"{attributes.gpuInstanceSliceCount}g.", gpu_class)
            mem = nv.nvmlDeviceGetMemoryInfo(mig)
            workloads = self._workloads(mig)
            readings.append(GpuReading(
                uuid=_text(nv.nvmlDeviceGetUUID(mig)), index=index, model=model, gpu_class=gpu_class,
                utilization_pct=100.0 if workloads else 0.0, memory_used_mib=int(mem.used) // 2**20,
                memory_total_mib=int(mem.total) // 2**20, power_mw=power_mw, workloads=workloads,
                parent_uuid=uuid, mig_profile=profile, compute_fraction=float(fraction),
            ))
        if readings:
            return readings
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        return [GpuReading(uuid=uuid, index=index, model=model, gpu_class=gpu_class, utilization_pct=0.0,
                           memory_used_mib=int(mem.used) // 2**20, memory_total_mib=int(mem.total) // 2**20,
                           power_mw=power_mw)]

    def read_gpu(self, index: int) -> GpuReading:
        nv = self.nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        model = nv.nvmlDeviceGetName(handle)
        model = model.decode() if isinstance(model, bytes) else model
        uuid = nv.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        util = nv.nvmlDeviceGetUtilizationRates(handle)
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            power_mw: int | None = int(nv.nvmlDeviceGetPowerUsage(handle))
        except nv.NVMLError_NotSupported:
            power_mw = None
        return GpuReading(
            uuid=uuid, index=index, model=model, gpu_class=gpu_class_of(model),
            utilization_pct=float(util.gpu), memory_used_mib=int(mem.used) // 2**20,
            memory_total_mib=int(mem.total) // 2**20, power_mw=power_mw, workloads=self._workloads(handle),
        )

    def sample(self, ts_ms: int) -> GpuSample | None:
        """Read every GPU; a failing GPU is logged and left out. None when no GPU could be read."""
        nv = self.nvml
        gpus = []
        for index in range(nv.nvmlDeviceGetCount()):
            try:
                gpus.extend(self.read_device(index))
            except nv.NVMLError as exc:
                self.errors += 1
                log.warning("nvml: GPU %d on %s skipped: %s", index, self.host, exc)
        if not gpus:
            return None
        return GpuSample(
            event_id=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"nvml:{self.host}:{ts_ms}")),
            ts_ms=ts_ms, interval_ms=int(self.interval_s * 1000), resource=self.host,
            environment="onprem", source="nvml", gpus=gpus,
        )

    def poll_once(self) -> CollectReport:
        """Sample every GPU, stamped with the interval boundary at or before now, and publish it.

        The sample covers the interval that ends at its stamp, so stamps fall on interval
        boundaries of the wall clock whenever the poll runs; a boundary already sampled (a poll
        that came early) sends nothing.  Every ``WATERMARK_EVERY_MS`` of event time the host's
        watermark goes to every ``gpu-samples`` partition (``Publisher.watermark``), so partitions that carry no samples
        still move on (``streams.topology``).  Nothing is checkpointed: a reading is of the moment.
        """
        report = CollectReport(self.name)
        interval_ms = int(self.interval_s * 1000)
        now_ms = int(self.clock() * 1000)
        ts_ms = now_ms - now_ms % interval_ms
        if ts_ms <= self._last_sample_ms:
            return report
        errors_before = self.errors
        sample = self.sample(ts_ms)
        self._last_sample_ms = ts_ms
        if self.errors > errors_before:
            report.errors.append(f"{self.errors - errors_before} GPU(s) on {self.host} could not be read "
                                 "(the others were sampled; see the log)")
        report.errors.extend(self.label_problems)
        self.label_problems.clear()
        if sample is None:
            return report
        self.publisher.send("gpu-samples", sample.resource, sample)
        report.count("gpu-samples")
        if self.publisher.watermark(f"nvml:{self.host}", ts_ms):
            report.count("watermarks")
        self.publisher.flush()
        return report


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def default_nvml():
    import pynvml

    return pynvml


def host_name(config: Config) -> str:
    return config.collectors.nvml.host or os.environ.get("NODE_NAME") or socket.gethostname()
