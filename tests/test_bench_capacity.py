"""The capacity benchmark's accounting: CPU and memory of a process group read from /proc, and percentiles.

The benchmark itself runs for minutes (``python -m bench.capacity``); these check the parts whose
figures it reports."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.capacity import Usage, _fleet_sample, _percentile


def test_cpu_and_memory_of_a_process_and_its_children_are_read_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(64 << 20)\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\nprint('spun', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        usage = Usage({"alone": (os.getpid(), False), "with children": (os.getpid(), True)})
        assert child.stdout.readline() == "spun\n"  # the child has spun 0.5 s of CPU and holds 64 MiB
        cpu, rss = usage.read()
        assert cpu["with children"] - cpu["alone"] >= 0.4
        assert rss["with children"] - rss["alone"] >= 60 << 20
    finally:
        child.kill()
        child.wait()
    cpu_after, _ = usage.read()
    assert cpu_after["with children"] - cpu_after["alone"] < 0.1  # a process gone counts no more


def test_percentiles_are_nearest_rank_and_a_node_sample_carries_8_gpus():
    assert _percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    assert _percentile([3.0], 0.99) == 3.0
    sample = _fleet_sample(17, 1_790_812_800_000)
    assert len(sample.gpus) == 8 and sample.interval_ms == 1000
    assert sum(1 for g in sample.gpus if g.workloads) == 6  # two idle GPUs a node
