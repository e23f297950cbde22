"""A fake NVML for machines without a GPU (tests, benchmarks, the demo's node simulator).

It implements the pynvml functions the collector calls, with the same signatures, the same
return types (pynvml's own ctypes structures) and the same exceptions (pynvml's NVMLError
classes), over a scripted set of GPUs.  ``call_cost_s`` adds a realistic per-call latency.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    utilization_pct: int = 0
    memory_total_bytes: int = 80 * 2**30
    memory_used_bytes: int = 0
    power_mw: int | None = 250_000  # None: power reading not supported
    pids: list[int] = field(default_factory=list)
    lost: bool = False


class FakeNvml:
    """Drop-in for the ``pynvml`` module; pass it where the collector takes ``nvml``."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    c_nvmlUtilization_t = pynvml.c_nvmlUtilization_t
    c_nvmlMemory_t = pynvml.c_nvmlMemory_t

    def __init__(self, gpus: list[FakeGpu], call_cost_s: float = 0.0) -> None:
        self.gpus = gpus
        self.call_cost_s = call_cost_s
        self.initialized = False
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if self.call_cost_s:
            end = time.perf_counter() + self.call_cost_s
            while time.perf_counter() < end:  # busy: an NVML call is a driver ioctl, it costs CPU
                pass

    def _gpu(self, handle: FakeGpu) -> FakeGpu:
        self._call()
        if handle.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return handle

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._call()
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        self._call()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._call()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu):
        gpu = self._gpu(handle)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_pct, memory=gpu.utilization_pct // 2)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu):
        gpu = self._gpu(handle)
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total_bytes, free=gpu.memory_total_bytes - gpu.memory_used_bytes,
                                     used=gpu.memory_used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle)
        if gpu.power_mw is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list:
        gpu = self._gpu(handle)
        procs = []
        for pid in gpu.pids:
            info = pynvml.c_nvmlProcessInfo_v3_t()
            info.pid = pid
            info.usedGpuMemory = gpu.memory_used_bytes // max(1, len(gpu.pids))
            procs.append(info)
        return procs
