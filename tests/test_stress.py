"""`hybridspend stress`: faults drawn from a seed, cost windows compared row by row, and one short
faulted run through the real pipeline (local broker, Faust workers, sink, PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest

from hybridspend.collectors.scenario import load_scenario
from hybridspend.stress import compare, draw_plan, stress

SCENARIO = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "scenarios" / "stress-day.yaml"
T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def test_a_run_s_workers_and_faults_come_from_its_seed():
    plans = [draw_plan(seed, hours=24) for seed in range(200)]
    assert draw_plan(7, hours=24) == plans[7]  # a differing run can be run again from its seed
    assert {p.workers for p in plans} == {1, 2, 3}
    faults = [f for p in plans for f in p.faults]
    assert {f.kind for f in faults} == {"kill-worker", "kill-sink", "late-worker"}
    assert all(0 <= f.at_hour <= 24 for f in faults)
    assert all(1 <= f.victim <= p.workers for p in plans for f in p.faults if f.kind == "kill-worker")
    assert all(list(p.faults) == sorted(p.faults, key=lambda f: f.at_hour) for p in plans)
    assert not any(p.cpu_load for p in plans)  # only with --cpu-load
    assert any(draw_plan(seed, 24, cpu_load=True).cpu_load for seed in range(10))


def row(hour: int, resource: str, cost: str, allocated_ms: int = 28_800_000) -> tuple:
    return (T0.replace(hour=hour), resource, "serve", "cloud", "H100", allocated_ms, 0, 0, D(cost))


def test_comparison_names_each_changed_missing_and_extra_row():
    reference = [row(0, "i-1", "64"), row(1, "i-1", "64"), row(2, "i-1", "64")]
    same = compare(reference, list(reversed(reference)))  # row order does not matter, the keys do
    assert same.identical and same.first_differences() == []
    # window 1 charged 30 minutes more; window 2 missing; window 3 that the reference never closed
    run = [row(0, "i-1", "64"), row(1, "i-1", "96", 43_200_000), row(3, "i-1", "64")]
    diff = compare(reference, run)
    assert not diff.identical
    assert diff.changed == [(reference[1], run[1])]
    assert diff.missing == [reference[2]] and diff.extra == [run[2]]
    lines = diff.first_differences()
    assert lines[0].startswith("reference 2026-11-02T01:00Z i-1 serve cloud H100: allocated 28800000 GPU-ms")
    assert "this run  2026-11-02T01:00Z i-1 serve cloud H100: allocated 43200000 GPU-ms" in lines[0]
    assert lines[1] == "only in the reference: 2026-11-02T02:00Z i-1 serve cloud H100: allocated 28800000 GPU-ms, " \
                       "busy 0 GPU-ms, 0 mJ, $64"
    assert lines[2].startswith("only in this run:      2026-11-02T03:00Z")


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_worker_and_a_killed_sink_leave_the_cost_windows_of_one_worker():
    # six hours of the example day (the instances start, the spot one stops), two workers, one of
    # them and the sink killed with SIGKILL mid-stream: the first such plan among the seeds
    scenario = load_scenario(SCENARIO).model_copy(update={"hours": 6})
    seed = next(s for s in range(1000) if (plan := draw_plan(s, 6)).workers == 2
                and {f.kind for f in plan.faults} == {"kill-worker", "kill-sink"})
    said: list[str] = []
    assert stress(scenario, runs=1, seed=seed, say=said.append) == 0, "\n".join(said)
    assert any("SIGKILL worker" in line for line in said) and any("SIGKILL the sink" in line for line in said)
    assert any("identical cost windows" in line for line in said)


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_stops_a_stress_run_and_everything_it_started(tmp_path: Path):
    """Stopping `hybridspend stress` (a scheduler's SIGTERM, `kill`) leaves no broker, database,
    worker, sink or busy process of its behind."""
    import contextlib
    import signal
    import subprocess
    import sys

    import psutil
    import yaml

    from hybridspend.stress import CPU_LOAD_MARKER
    from tests.conftest import wait_until

    data = yaml.safe_load(SCENARIO.read_text())
    data["hours"] = 2  # the baseline run comes first: SIGTERM goes in the first faulted run
    scenario = tmp_path / "short.yaml"
    scenario.write_text(yaml.safe_dump(data))
    seed = next(s for s in range(100) if draw_plan(s, 2, cpu_load=True).cpu_load)
    proc = subprocess.Popen([sys.executable, "-m", "hybridspend.cli", "stress", str(scenario), "--runs", "3",
                             "--seed", str(seed), "--cpu-load"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # until the first faulted run, with its busy process, is under way
            lines.append(line)
            if line.startswith("run 1/3"):
                break
        def under_way() -> list | None:  # broker, database, a worker, the sink, the busy process
            children = psutil.Process(proc.pid).children(recursive=True)
            busy = any(CPU_LOAD_MARKER in " ".join(p.cmdline()) for p in children)
            return children if busy and len(children) >= 4 else None

        started = wait_until(under_way, 60, f"the run's services and busy process ({''.join(lines)})", interval_s=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:  # the test failed first: take down all it started, not the parent alone
            try:
                leftovers = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                leftovers = []
            proc.kill()
            for child in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
