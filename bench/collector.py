"""NVML collector CPU time per sample: 8 GPUs on a fake NVML whose calls cost CPU like the driver's.

Every NVML query is an ioctl into the driver; we charge ``CALL_COST_S`` of busy CPU per call
(the order of nvmlDeviceGetUtilizationRates / GetPowerUsage on current drivers), so the figure
includes what the library costs, not only our Python.  The collector maps each GPU's processes
to workloads through /proc (cgroup, environment), encodes the sample as it would be sent.
"""

from __future__ import annotations

import os
import time

from hybridspend.collectors.nvml.collector import NvmlCollector
from hybridspend.collectors.nvml.fake import FakeGpu, FakeNvml
from hybridspend.contracts.config import Config

CALL_COST_S = 30e-6
GPUS = 8
INTERVAL_S = 1.0


def run(quick: bool, say=print) -> dict:
    ticks = 200 if quick else 2000
    pid = os.getpid()  # a real process, so the /proc lookups are real
    gpus = [FakeGpu(uuid=f"GPU-bench-{i}", utilization_pct=40 + 5 * i, memory_used_bytes=(i + 1) * 2**30,
                    pids=[pid]) for i in range(GPUS)]
    nvml = FakeNvml(gpus, call_cost_s=CALL_COST_S)
    collector = NvmlCollector(Config(), nvml, host="bench-node", interval_s=INTERVAL_S)
    collector.start()
    collector.sample(0)  # warm the caches a long-running collector has warm
    calls_before = nvml.calls
    start_cpu = time.process_time()
    for tick in range(1, ticks + 1):
        sample = collector.sample(tick * 1000)
        assert sample is not None and len(sample.gpus) == GPUS
        sample.encode()
    cpu_s = (time.process_time() - start_cpu) / ticks
    collector.stop()
    calls = (nvml.calls - calls_before) / ticks
    say(f"  {GPUS} GPUs, {calls:.0f} NVML calls per sample at {CALL_COST_S * 1e6:.0f} us each: "
        f"{cpu_s * 1000:.2f} ms CPU per sample = {cpu_s / INTERVAL_S:.2%} of a core at 1 Hz")
    return {"collector_cpu_fraction": round(cpu_s / INTERVAL_S, 5),
            "collector_cpu_ms_per_sample": round(cpu_s * 1000, 3)}
