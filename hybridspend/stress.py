"""`hybridspend stress SCENARIO.yaml --runs N`: the same scenario under many timings, the same cost windows.

Runs the scenario once with one worker (the reference), then N times with faults drawn from a
seed: 1 to 3 Faust workers, a worker killed with SIGKILL and restarted, the sink killed and
restarted, a worker that joins late (a rebalance mid-stream), and optionally a busy process
competing for the CPU.  Every run's cost windows are compared row by row with the reference's;
the first differing rows are printed.  Each run goes through ``hybridspend.simulate.run_scenario``
(the same local broker, PostgreSQL, workers and sink as ``hybridspend simulate``).
"""

from __future__ import annotations

import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hybridspend.collectors.scenario import Scenario
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.simulate import run_scenario
from hybridspend.infra.services import Services

FIRST_DIFFERENCES = 5  # differing rows printed per run
SETTLE_TIMEOUT_S = 120  # a run that has not settled by then counts as differing (a stuck partition)


@dataclass(frozen=True)
class Fault:
    """Something done to the pipeline once publishing reaches ``at_hour`` of simulated time."""

    at_hour: float
    kind: str  # "kill-worker", "kill-sink", "late-worker"
    settle_s: float  # wall-clock seconds the publisher waits first, so the fault lands mid-processing
    down_s: float = 0.0  # how long a killed process stays down before it is restarted
    victim: int = 1  # which worker, for "kill-worker"

    def describe(self) -> str:
        what = {"kill-worker": f"SIGKILL worker-{self.victim}", "kill-sink": "SIGKILL the sink",
                "late-worker": "a worker joins"}[self.kind]
        down = f", down {self.down_s:.1f} s" if self.kind.startswith("kill") else ""
        return f"{what} at hour {self.at_hour:.1f} (+{self.settle_s:.1f} s{down})"


@dataclass(frozen=True)
class Plan:
    """One run's workers, faults and load, drawn from its seed."""

    seed: int
    workers: int
    faults: tuple[Fault, ...]
    cpu_load: bool

    def describe(self) -> str:
        parts = [f"{self.workers} worker{'s' if self.workers > 1 else ''}", *(f.describe() for f in self.faults)]
        if self.cpu_load:
            parts.append("a busy process on the CPU")
        return "; ".join(parts)


def draw_plan(seed: int, hours: float, cpu_load: bool = False, max_workers: int = 3) -> Plan:
    """A run's faults, reproducible from ``seed``: each kind of fault with even odds, at a random hour."""
    rng = random.Random(seed)
    workers = rng.randint(1, max_workers)
    faults = []
    if rng.random() < 0.6:
        faults.append(Fault(rng.uniform(0, hours), "kill-worker", rng.uniform(0, 6), rng.uniform(0, 4),
                            victim=rng.randint(1, workers)))
    if rng.random() < 0.5:
        faults.append(Fault(rng.uniform(0, hours), "kill-sink", rng.uniform(0, 4), rng.uniform(0, 4)))
    if rng.random() < 0.5:
        faults.append(Fault(rng.uniform(0, hours), "late-worker", rng.uniform(0, 6)))
    return Plan(seed, workers, tuple(sorted(faults, key=lambda f: f.at_hour)), cpu_load and rng.random() < 0.5)


def injector(plan: Plan, scenario: Scenario, say: Callable[[str], None]):
    """The ``on_tick`` hook of ``run_scenario`` that carries out the plan's faults."""
    pending = list(plan.faults)

    def on_tick(ts_ms: int, services: Services, producer) -> None:
        while pending and ts_ms >= scenario.start_ms + pending[0].at_hour * MS_PER_HOUR:
            fault = pending.pop(0)
            producer.flush()
            time.sleep(fault.settle_s)
            if fault.kind == "late-worker":
                services.start("worker-late", command="worker")
            else:
                name = "sink" if fault.kind == "kill-sink" else f"worker-{fault.victim}"
                services.procs[name].send_signal(signal.SIGKILL)
                services.procs[name].wait()
                time.sleep(fault.down_s)
                services.start(name, command="sink" if name == "sink" else "worker")
            say(f"    {fault.describe()}: done")

    return on_tick


@dataclass
class Comparison:
    """A run's cost windows against the reference's, row by row (keyed by window, resource, workload...)."""

    missing: list[tuple] = field(default_factory=list)  # in the reference only
    extra: list[tuple] = field(default_factory=list)  # in the run only
    changed: list[tuple[tuple, tuple]] = field(default_factory=list)  # (reference row, run row)

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def first_differences(self, limit: int = FIRST_DIFFERENCES) -> list[str]:
        lines = [f"reference {_row(a)}\n        this run  {_row(b)}" for a, b in self.changed[:limit]]
        lines += [f"only in the reference: {_row(r)}" for r in self.missing[: limit - len(lines)]]
        lines += [f"only in this run:      {_row(r)}" for r in self.extra[: max(0, limit - len(lines))]]
        return lines


KEY_COLUMNS = 5  # window_start, resource, workload, environment, gpu_class


def compare(reference: list[tuple], run: list[tuple]) -> Comparison:
    ref = {tuple(r[:KEY_COLUMNS]): tuple(r) for r in reference}
    got = {tuple(r[:KEY_COLUMNS]): tuple(r) for r in run}
    out = Comparison()
    for key in sorted(ref.keys() | got.keys(), key=repr):
        if key not in got:
            out.missing.append(ref[key])
        elif key not in ref:
            out.extra.append(got[key])
        elif ref[key] != got[key]:
            out.changed.append((ref[key], got[key]))
    return out


def decision_differences(reference: list[dict], run: list[dict], limit: int = FIRST_DIFFERENCES) -> list[str]:
    """The first decisions that differ, by position in time order."""
    def brief(d: dict | None) -> str:
        if d is None:
            return "none"
        return (f"{d['decided_at']} {d['workload']} {d['kind']} {d['from_env']}->{d['to_env']} "
                f"${d['current_usd_per_busy_gpu_hour']} vs ${d['alternative_usd_per_busy_gpu_hour']} per busy GPU-h")

    pairs = [(a, b) for a, b in zip(reference + [None] * len(run), run + [None] * len(reference)) if a != b]
    return [f"decision: reference {brief(a)}\n        this run  {brief(b)}" for a, b in pairs[:limit]]


def _row(row: tuple) -> str:
    start, resource_id, workload, env, gpu_class, allocated_ms, busy_ms, energy_mj, cost = row
    when = start.strftime("%Y-%m-%dT%H:%MZ") if hasattr(start, "strftime") else start
    return (f"{when} {resource_id} {workload} {env} {gpu_class}: allocated {allocated_ms} GPU-ms, busy {busy_ms} "
            f"GPU-ms, {energy_mj} mJ, ${cost}")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _one_run(scenario: Scenario, workers: int, on_tick, state_dir: Path) -> tuple[list[tuple], dict[str, Any]]:
    from hybridspend.storage.queries import cost_windows_in_order

    rows: list[tuple] = []
    result = run_scenario(scenario, workers=workers, on_tick=on_tick, state_dir=state_dir,
                          on_settled=lambda conn: rows.extend(cost_windows_in_order(conn)),
                          settle_timeout_s=SETTLE_TIMEOUT_S, alerter=False)
    return rows, result


def worker_log_lines(log_dir: Path, marker: str = "[ERROR]") -> list[str]:
    """The lines of the run's worker logs that contain ``marker`` (by default its errors)."""
    return [f"{log.name}: {line.strip()}" for log in sorted(log_dir.glob("worker-*.log"))
            for line in log.read_text(errors="replace").splitlines() if marker in line]


REWIND_MARKER = "reading again from there"  # logged when a consumer is sent back to its tables' position


CPU_LOAD_MARKER = "hybridspend-stress-cpu-load"  # in the busy process's command line


def _cpu_hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass", CPU_LOAD_MARKER], stdin=subprocess.DEVNULL)


def stress(scenario: Scenario, runs: int, seed: int = 0, cpu_load: bool = False, max_workers: int = 3,
           say: Callable[[str], None] = print) -> int:
    """Run the reference and ``runs`` faulted runs; return how many runs differed from the reference."""
    started, cpu = time.monotonic(), _cpu_seconds()
    root = Path(tempfile.mkdtemp(prefix="hybridspend-stress-"))
    say(f"reference: {scenario.name} with one worker, no faults (runs in {root}; a differing run's logs are kept)")
    reference, ref_result = _one_run(scenario, 1, None, root / "reference")
    shutil.rmtree(root / "reference", ignore_errors=True)
    say(f"  {len(reference)} cost windows, {len(ref_result['decisions'])} decisions, "
        f"{ref_result['dead_letters']} dead letters ({time.monotonic() - started:.0f} s)")
    differed = 0
    sent_back: list[int] = []  # per finished run: consumers sent back to their tables
    slowest_s = 0.0
    for n in range(runs):
        plan = draw_plan(seed + n, scenario.hours, cpu_load, max_workers)
        say(f"run {n + 1}/{runs} (seed {plan.seed}): {plan.describe()}")
        run_started = time.monotonic()
        hog = _cpu_hog() if plan.cpu_load else None
        run_dir = root / f"run-{n + 1}-seed-{plan.seed}"
        try:
            rows, result = _one_run(scenario, plan.workers, injector(plan, scenario, say), run_dir)
        except RuntimeError as exc:  # did not settle, or a process died
            differed += 1
            say(f"  DID NOT FINISH: {exc}")
            for line in worker_log_lines(run_dir / "logs")[:FIRST_DIFFERENCES]:
                say(f"    {line}")
            continue
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        comparison = compare(reference, rows)
        same_decisions = result["decisions"] == ref_result["decisions"]
        verdict = "identical cost windows" if comparison.identical else (
            f"DIFFERENT cost windows: {len(comparison.changed)} changed, {len(comparison.missing)} missing, "
            f"{len(comparison.extra)} extra")
        errors = worker_log_lines(run_dir / "logs")
        rewinds = worker_log_lines(run_dir / "logs", REWIND_MARKER)
        sent_back.append(len(rewinds))
        slowest_s = max(slowest_s, time.monotonic() - run_started)
        say(f"  {verdict}; decisions {'equal' if same_decisions else 'DIFFERENT'}; "
            f"{result['dead_letters']} dead letters; {len(errors)} worker errors, {len(rewinds)} consumers sent back to their tables ({time.monotonic() - run_started:.0f} s)")
        for line in errors[:FIRST_DIFFERENCES]:
            say(f"    {line}")
        if not same_decisions:
            for line in decision_differences(ref_result["decisions"], result["decisions"]):
                say(f"    {line}")
        if not (comparison.identical and same_decisions):
            differed += 1
        if not comparison.identical:
            for line in comparison.first_differences():
                say(f"    {line}")
        if comparison.identical and same_decisions:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            say(f"    logs: {run_dir / 'logs'}")
    say(f"{runs} runs, {differed} differed from the one-worker reference "
        f"({time.monotonic() - started:.0f} s, {_cpu_seconds() - cpu:.0f} CPU-s in this process tree); "
        f"{sum(sent_back)} consumers sent back to their tables in {sum(1 for n in sent_back if n)} runs; "
        f"slowest finished run {slowest_s:.0f} s")
    if not any(root.iterdir()):
        root.rmdir()
    return differed
