"""The capacity benchmark's accounting: CPU and memory of a process group read from /proc, and percentiles.

The benchmark itself runs for minutes (``python -m bench.capacity``); these check the parts whose
figures it reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from bench.capacity import Usage, _fleet_sample, _percentile


def test_cpu_and_memory_of_a_process_and_its_children_are_read_from_proc():
    # a shell (the group's process) whose one child spins 0.5 s of CPU and holds 64 MiB
    spin = ("import time\nx = bytearray(64 << 20)\nt = time.process_time()\n"
            "while time.process_time() - t < 0.5: pass\nprint('spun', flush=True)\ntime.sleep(30)")
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{spin}"; :'], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        usage = Usage({"alone": (shell.pid, False), "with children": (shell.pid, True)})
        assert shell.stdout.readline() == "spun\n"
        cpu, rss = usage.read()
        assert cpu["with children"] - cpu["alone"] >= 0.4
        assert rss["with children"] - rss["alone"] >= 60 << 20
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    assert usage.read()[0] == {"alone": 0.0, "with children": 0.0}  # a process gone counts no more


def test_percentiles_are_nearest_rank_and_a_node_sample_carries_8_gpus():
    assert _percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    assert _percentile([3.0], 0.99) == 3.0
    sample = _fleet_sample(17, 1_790_812_800_000)
    assert len(sample.gpus) == 8 and sample.interval_ms == 1000
    assert sum(1 for g in sample.gpus if g.workloads) == 6  # two idle GPUs a node
