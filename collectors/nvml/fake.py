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
class FakeMigInstance:
    """One MIG device (a GPU instance with one compute instance) of a FakeGpu in MIG mode."""

    uuid: str  # like "MIG-4f4c...": NVML's own UUID of the MIG device
    gpu_instance_id: int
    profile: str  # "3g.40gb"
    slices: int
    memory_total_bytes: int = 40 * 2**30
    memory_used_bytes: int = 0
    pids: list[int] = field(default_factory=list)
    parent: "FakeGpu | None" = None


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
    mig_mode: int | None = None  # None: the GPU has no MIG (NVML says not supported); 0 disabled; 1 enabled
    mig: list[FakeMigInstance | None] = field(default_factory=list)  # MIG device slots; None: an empty slot
    process_sm_util: dict[int, int] | None = None  # per pid, SM utilization %; None: not supported


class FakeNvml:
    """Drop-in for the ``pynvml`` module; pass it where the collector takes ``nvml``."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    MAX_MIG_DEVICES = 7  # A100 / H100
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

    def _gpu(self, handle):
        self._call()
        if (handle.parent if isinstance(handle, FakeMigInstance) else handle).lost:
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

    def nvmlDeviceGetName(self, handle) -> str:
        gpu = self._gpu(handle)
        if isinstance(gpu, FakeMigInstance):
            return f"{gpu.parent.name} MIG {gpu.profile}"
        return gpu.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._gpu(handle)
        if isinstance(gpu, FakeMigInstance) or gpu.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on a real GPU in MIG mode
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_pct, memory=gpu.utilization_pct // 2)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu):
        gpu = self._gpu(handle)
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total_bytes, free=gpu.memory_total_bytes - gpu.memory_used_bytes,
                                     used=gpu.memory_used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle)
        if isinstance(gpu, FakeMigInstance) or gpu.power_mw is None:
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

    def nvmlDeviceGetProcessUtilization(self, handle: FakeGpu, timeStamp: int) -> list:  # noqa: N803 (pynvml's)
        gpu = self._gpu(handle)
        if isinstance(gpu, FakeMigInstance) or gpu.process_sm_util is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not gpu.process_sm_util:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)  # no samples since timeStamp
        return [pynvml.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=timeStamp + 1, smUtil=sm)
                for pid, sm in gpu.process_sm_util.items()]

    # -- MIG --------------------------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        gpu = self._gpu(handle)
        if isinstance(gpu, FakeMigInstance) or gpu.mig_mode is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle)
        return self.MAX_MIG_DEVICES if gpu.mig_mode is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeMigInstance:
        gpu = self._gpu(handle)
        if gpu.mig_mode != pynvml.NVML_DEVICE_MIG_ENABLE:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < self.MAX_MIG_DEVICES:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        instance = gpu.mig[index] if index < len(gpu.mig) else None
        if instance is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        instance.parent = gpu
        return instance

    def nvmlDeviceIsMigDeviceHandle(self, handle) -> bool:
        self._call()
        return isinstance(handle, FakeMigInstance)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: FakeMigInstance) -> FakeGpu:
        return self._gpu(handle).parent

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeMigInstance) -> int:
        mig = self._gpu(handle)
        if not isinstance(mig, FakeMigInstance):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance_id

    def nvmlDeviceGetAttributes(self, handle: FakeMigInstance):
        mig = self._gpu(handle)
        if not isinstance(mig, FakeMigInstance):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlDeviceAttributes(multiprocessorCount=14 * mig.slices, gpuInstanceSliceCount=mig.slices,
                                             computeInstanceSliceCount=mig.slices,
                                             memorySizeMB=mig.memory_total_bytes // 2**20)
