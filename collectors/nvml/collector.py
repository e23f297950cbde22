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
from typing import Callable

from contracts.config import Config
from contracts.events import GpuReading, GpuSample, WorkloadShare

log = logging.getLogger(__name__)

UNATTRIBUTED = "unattributed"
_K8S_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:docker|cri-containerd|crio|containerd)[-/:]([0-9a-f]{12,64})")
_SLURM_JOB = re.compile(r"/job_(\d+)")
_ENV_LABELS = {
    "POD_NAMESPACE": "k8s_namespace",
    "KUBERNETES_NAMESPACE": "k8s_namespace",
    "POD_NAME": "k8s_pod",
    "SLURM_JOB_ID": "slurm_job_id",
    "SLURM_JOB_ACCOUNT": "slurm_account",
    "HYBRIDSPEND_WORKLOAD": "workload",
}


def gpu_class_of(model: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100'; 'NVIDIA H100 80GB HBM3' -> 'H100'; 'NVIDIA L4' -> 'L4'."""
    tokens = re.split(r"[\s_-]+", model.upper().replace("NVIDIA", "").replace("TESLA", "").strip())
    for token in tokens:
        if re.fullmatch(r"[A-Z]+\d+[A-Z]?", token):
            return token
    return tokens[0] if tokens and tokens[0] else "unknown"


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
    config: Config
    nvml: object  # the pynvml module, or a fake with the same API
    host: str = field(default_factory=socket.gethostname)
    interval_s: float = 30.0
    inspector: ProcessInspector = field(default_factory=ProcessInspector)
    errors: int = 0
    _initialized: bool = False

    def start(self) -> None:
        self.nvml.nvmlInit()
        self._initialized = True

    def stop(self) -> None:
        if self._initialized:
            self.nvml.nvmlShutdown()
            self._initialized = False

    def _workloads(self, handle) -> list[WorkloadShare]:
        nv = self.nvml
        shares: dict[str, WorkloadShare] = {}
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            labels = self.inspector.labels(proc.pid)
            if "workload" in labels:
                resolved = (labels["workload"], "", False)
            else:
                resolved = self.config.resolve_workload(labels) or (UNATTRIBUTED, "", False)
            name, team, allow_spot = resolved
            shares.setdefault(name, WorkloadShare(name[:253], team[:253], allow_spot))
        return list(shares.values())

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
                gpus.append(self.read_gpu(index))
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

    def run(self, send: Callable[[GpuSample], None], stop: Callable[[], bool],
            clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        """Sample on interval boundaries of the wall clock until ``stop()``."""
        interval_ms = int(self.interval_s * 1000)
        while not stop():
            now_ms = int(clock() * 1000)
            next_tick = now_ms - now_ms % interval_ms + interval_ms
            while not stop() and int(clock() * 1000) < next_tick:
                sleep(min(0.5, max(0.0, (next_tick - clock() * 1000) / 1000)))
            if stop():
                break
            sample = self.sample(next_tick)
            if sample is not None:
                send(sample)


def default_nvml():
    import pynvml

    return pynvml


def host_name(config: Config) -> str:
    return config.collectors.nvml.host or os.environ.get("NODE_NAME") or socket.gethostname()
