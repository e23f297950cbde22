"""Fleet capacity: how big a fleet the whole embedded stack on one machine keeps up with.

The broker (Tansu), one Faust worker, the sink, the alerter and PostgreSQL run on this machine as
``hybridspend demo`` runs them.  A publisher (a process of its own, standing in for the fleet's
collectors, which run on the GPU nodes in a deployment) sends every node's 8-GPU sample once a
second, stamped with the wall clock, and marks every input partition's clock each second as the
collectors do.  The fleet is stepped up; each size is held for a while, and it is *kept up with*
when, over the hold:

- the consumer lag of the worker and of the sink on the samples stays under 5 s of input, and
- freshness is under 5 s at the 99th percentile: from a cost window's end (its last sample's event
  time) to the row stored in PostgreSQL (the sink's transaction time), and from the end of the
  window that completes a crossing to its decision stored (polled every 0.25 s).  A few probe
  workloads cross breakeven during each hold to give decisions to time: they drop from 90 % to
  5 % utilization, three 60-s windows of evidence (``dwell_windows``).

The grace after a window's end is 0 here: a window closes on the first sample past it, a second later
(a deployment adds its own grace to both figures).  "Stored" is the sink's transaction start
(``updated_at``), so the COPY of that transaction is not in it; the worker commits its offsets every
2.8 s (Faust's commit interval), which its lag carries even when it is caught up.  The CPU share
of each process over the hold (CPU seconds / wall seconds; 1.0 is one core) and its resident
memory at the end are recorded, and the largest fleet kept up with is reported.  A size whose lag
reaches 30 s of input two minutes into its hold has not kept up and ends there.

``--soak MINUTES`` holds one fleet size instead and samples the worker's and the sink's memory
every 30 s: the growth after a warm-up, per hour (issue 27: flat, under 5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hybridspend.contracts.config import EXAMPLE_CONFIG, KafkaConfig, load_config
from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare
from hybridspend.contracts.topics import Topics
from hybridspend.infra.local import die_with_parent

GPUS_PER_NODE = 8
STEPS_GPUS = (1_000, 2_500, 5_000, 10_000, 20_000, 30_000, 40_000)  # 2,500: 5,000 is at the edge here
QUICK_STEPS_GPUS = (1_000, 5_000)
WINDOW_S = 60
GRACE_S = 0  # a window closes on the first sample past its end (1 s later at 1 Hz); a deployment adds its grace
DWELL_WINDOWS = 3
FRESHNESS_P99_S = 5.0
LAG_BOUND_S = 5.0  # consumer lag held under this many seconds of input
PARTITIONS = 4  # the default topic_partitions
PROBES = 4  # crossings per hold (on nodes of one GPU of their own, beside the fleet)
# a step whose lag reaches BEHIND_FACTOR x the bound, BEHIND_AFTER_S into its hold, has not kept up (its maximum lag
# is past the bound) and ends there: the rest of the hold would only grow the backlog
BEHIND_FACTOR = 6
BEHIND_AFTER_S = 120


# -- the publisher (a process of its own) -----------------------------------------------------------


def _fleet_sample(node: int, ts_ms: int) -> GpuSample:
    """Node ``node``'s sample: 6 of its 8 GPUs run a workload shared with 3 other nodes, 2 are idle."""
    host = f"dgx-a100-{node:05d}"
    workload, pct = f"cap-wl-{node // 4:04d}", 55.0 + (node % 40)
    gpus = [GpuReading(uuid=f"GPU-{node}-{g}", index=g, model="NVIDIA A100-SXM4-80GB", gpu_class="A100",
                       utilization_pct=pct if g < 6 else 0.0, memory_used_mib=40960 if g < 6 else 0,
                       memory_total_mib=81920, power_mw=350_000 if g < 6 else 60_000,
                       workloads=[WorkloadShare(workload, "capacity")] if g < 6 else [])
            for g in range(GPUS_PER_NODE)]
    return GpuSample(event_id=f"cap:{host}:{ts_ms}", ts_ms=ts_ms, interval_ms=1000, resource=host,
                     environment="onprem", source="capacity", gpus=gpus)


def _probe_sample(name: str, ts_ms: int, pct: float) -> GpuSample:
    host = f"dgx-a100-{name}"
    return GpuSample(event_id=f"cap:{host}:{ts_ms}", ts_ms=ts_ms, interval_ms=1000, resource=host,
                     environment="onprem", source="capacity", gpus=[GpuReading(
                         uuid=f"GPU-{name}", index=0, model="NVIDIA A100-SXM4-80GB", gpu_class="A100",
                         utilization_pct=pct, memory_used_mib=1, memory_total_mib=81920, power_mw=400_000,
                         workloads=[WorkloadShare(name, "capacity")])])


def publish(bootstrap: str, prefix: str, nodes: int, probes: dict[str, int], stop_file: Path) -> None:
    """Every node's sample each second of the wall clock until ``stop_file`` exists; probe ``name`` drops to
    5 % from the window starting at ``probes[name]`` (epoch seconds).  Prints how late each second was sent."""
    from hybridspend.infra.broker import make_producer, send_watermarks

    kafka = KafkaConfig(topic_prefix=prefix, topic_partitions=PARTITIONS)
    topics = Topics.from_config(kafka)
    producer = make_producer(bootstrap, kafka, linger_ms=20, batch_size=1024 * 1024, acks=1)
    tick = math.ceil(time.time())
    late_s: list[float] = []
    while not stop_file.exists():
        pause = tick - time.time()
        if pause > 0:
            time.sleep(pause)
        ts_ms = tick * 1000
        for node in range(nodes):
            s = _fleet_sample(node, ts_ms)
            producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
        for name, drop_s in probes.items():
            s = _probe_sample(name, ts_ms, 5.0 if tick >= drop_s else 90.0)
            producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
        send_watermarks(producer, topics, "capacity", ts_ms)
        late_s.append(time.time() - tick)  # the second's last sample handed to the client this late
        tick += 1
        if len(late_s) % 10 == 0:
            print(json.dumps({"seconds": len(late_s), "late_s_max": round(max(late_s[-10:]), 3)}), flush=True)
    producer.flush()
    producer.close()


# -- processes: CPU and memory from /proc -------------------------------------------------------------


def _stat(pid: int, reaped: bool = False) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of one process, with its children's that exited and it waited for when
    ``reaped`` (PostgreSQL's backends, autovacuum workers); (0, 0) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
        return cpu / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0.0, 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _postmaster(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


@dataclass
class Usage:
    """CPU seconds and resident memory of named process groups (a group: a process and, for PostgreSQL,
    its backends)."""

    groups: dict[str, tuple[int, bool]]  # name -> (pid, with its children)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        cpu, rss = {}, {}
        for name, (pid, with_children) in self.groups.items():
            stats = [_stat(pid, reaped=with_children), *(_stat(p) for p in (_children(pid) if with_children else []))]
            cpu[name] = sum(s[0] for s in stats)
            rss[name] = sum(s[1] for s in stats)
        return cpu, rss


# -- one fleet size -------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


@dataclass
class Step:
    gpus: int
    kept_up: bool
    window_freshness_p99_s: float
    decision_freshness_p99_s: float
    decisions: int
    worker_lag_max_s: float
    sink_lag_max_s: float
    publisher_late_max_s: float
    cpu_cores: dict[str, float]
    rss_mib: dict[str, float]

    def line(self) -> str:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in self.cpu_cores.items())
        rss = ", ".join(f"{k} {v:.0f}" for k, v in self.rss_mib.items() if k in ("worker", "sink"))
        return (f"  {self.gpus:>6,} GPUs: {'kept up' if self.kept_up else 'NOT kept up'}; freshness p99: windows "
                f"{self.window_freshness_p99_s:.2f} s, decisions {self.decision_freshness_p99_s:.2f} s "
                f"({self.decisions}); lag max: worker {self.worker_lag_max_s:.1f} s, sink {self.sink_lag_max_s:.1f} s"
                f" of input; publisher late max {self.publisher_late_max_s:.2f} s\n"
                f"          CPU (cores): {cpu}\n          RSS (MiB): {rss}")


class Stack:
    """The embedded stack of ``hybridspend demo`` on fresh local services, configured for this benchmark."""

    def __init__(self, tmp: Path, say=print) -> None:
        from hybridspend.infra.broker import LOCAL_PROFILE, LagProbe, ensure_topics
        from hybridspend.infra.local import Endpoints, LocalBroker, LocalPostgres
        from hybridspend.infra.services import Services
        from hybridspend.storage.db import migrate

        self.tmp = tmp
        self.broker = LocalBroker(log_path=tmp / "broker.log").start()
        self.pg = LocalPostgres(Path("/tmp") / f"hs-capacity-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True).start()
        data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        data["state_dir"] = str(tmp)
        self.prefix = f"cap{int(time.time())}."
        data["kafka"] = {"topic_prefix": self.prefix, "topic_partitions": PARTITIONS}
        data["thresholds"] = {"window_seconds": WINDOW_S, "grace_seconds": GRACE_S, "dwell_windows": DWELL_WINDOWS,
                              "evidence_hours": {"migrate_to_cloud": 0}}
        data.pop("alerts", None)  # the alerter queues to its log (the console route)
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(data))
        self.config = load_config(config_path, {})
        self.topics = Topics.from_config(self.config.kafka)
        migrate(self.pg.dsn)
        ensure_topics(self.broker.bootstrap, self.config.kafka, self.topics)
        self.services = Services(self.config, config_path, Endpoints(self.broker.bootstrap, self.pg.dsn, LOCAL_PROFILE,
                                                                      True, True))
        for name in ("worker", "sink", "alerter"):
            self.services.start(name)
        self.lag = LagProbe(self.broker.bootstrap, self.config.kafka,
                            [self.topics.group("worker"), self.topics.group("sink")])
        self.usage = Usage({"broker": (self.broker.proc.pid, False), "postgres": (_postmaster(self.pg.pgdata), True),
                            **{n: (p.pid, False) for n, p in self.services.procs.items()}})
        say(f"  started the broker, PostgreSQL, the worker, the sink and the alerter (logs in {tmp / 'logs'})")

    def lag_s(self, messages_per_s: float) -> dict[str, float]:
        """Each group's lag on the samples, in seconds of input."""
        behind = {"worker": 0, "sink": 0}
        for group, topic, _, lag in self.lag():
            if topic == self.topics.gpu_samples:
                behind["worker" if group == self.topics.group("worker") else "sink"] += lag
        return {k: v / messages_per_s for k, v in behind.items()}

    def close(self) -> None:
        self.lag.close()
        self.services.stop()
        self.broker.stop()
        self.pg.stop()


def hold(stack: Stack, gpus: int, warmup_s: float, hold_s: float, say=print, probes: int = PROBES,
         rss_every_s: float | None = None) -> tuple[Step, list[tuple[float, dict[str, int]]]]:
    """Publish ``gpus`` GPUs at 1 Hz for ``warmup_s`` then ``hold_s``; measure over the hold."""
    nodes = max(1, gpus // GPUS_PER_NODE)
    start_s = time.time()
    # the probes drop at the first window start, their crossings complete DWELL_WINDOWS windows later (in the hold)
    first_window_s = (int(start_s + 5) // WINDOW_S + 1) * WINDOW_S
    tag = uuid.uuid4().hex[:6]
    probe_drops = {f"probe-{tag}-{i}": first_window_s for i in range(probes)}
    stop_file = stack.tmp / f"stop-{tag}"
    progress = stack.tmp / f"publisher-{tag}.out"
    with open(stack.tmp / "publisher.log", "ab") as log, open(progress, "wb") as out:
        publisher = subprocess.Popen(
            [sys.executable, "-m", "bench.capacity", "--publish", stack.broker.bootstrap, stack.prefix, str(nodes),
             json.dumps(probe_drops), str(stop_file)],
            stdout=out, stderr=log, cwd=Path(__file__).parent.parent, preexec_fn=die_with_parent)
    stack.usage.groups["publisher"] = (publisher.pid, False)
    try:
        return _measure(stack, publisher, nodes, probes, tag, start_s, warmup_s, hold_s, rss_every_s, say, progress)
    finally:
        stop_file.touch()
        try:
            publisher.wait(60)
        except subprocess.TimeoutExpired:
            publisher.kill()
            publisher.wait()
        stack.usage.groups.pop("publisher", None)


def _measure(stack: Stack, publisher, nodes: int, probes: int, tag: str, start_s: float, warmup_s: float,
             hold_s: float, rss_every_s: float | None, say, progress: Path):
    import psycopg

    messages_per_s = nodes + probes
    time.sleep(max(0.0, start_s + warmup_s - time.time()))
    measure_from = time.time()
    cpu0, _ = stack.usage.read()
    lags: list[dict[str, float]] = []
    rss_series: list[tuple[float, dict[str, int]]] = []
    seen: dict[str, float] = {}  # decision id -> when first seen stored
    decided: dict[str, float] = {}
    next_lag = next_rss = measure_from
    with psycopg.connect(stack.pg.dsn, autocommit=True) as conn:
        def decisions() -> None:
            now = time.time()
            for decision_id, decided_at in conn.execute(
                    "SELECT decision_id, decided_at FROM decisions WHERE workload LIKE %s", (f"probe-{tag}-%",)):
                if decision_id not in seen:
                    seen[decision_id], decided[decision_id] = now, decided_at.timestamp()

        while time.time() < measure_from + hold_s:
            stack.services.check()
            if publisher.poll() is not None:
                raise RuntimeError(f"the publisher exited with status {publisher.returncode} (log: {stack.tmp})")
            decisions()
            now = time.time()
            if now >= next_lag:
                lags.append(stack.lag_s(messages_per_s))
                next_lag = now + 5
                if max(lags[-1].values()) >= LAG_BOUND_S * BEHIND_FACTOR and now >= measure_from + BEHIND_AFTER_S:
                    say(f"  lag {max(lags[-1].values()):.0f} s of input after {now - measure_from:.0f} s: "
                        "not keeping up, the step ends here")
                    break
            if rss_every_s and now >= next_rss:
                rss_series.append((now - measure_from, stack.usage.read()[1]))
                next_rss = now + rss_every_s
            time.sleep(0.25)
        cpu1, rss = stack.usage.read()
        measure_to = time.time()
        # every window that ended in the hold and every probe's decision, once stored (late ones count as late)
        last_end = measure_to - FRESHNESS_P99_S
        windows = range(int(measure_from) // WINDOW_S + 1, int(last_end) // WINDOW_S + 1)  # their ends, in minutes
        settle = time.time() + 60
        while True:
            decisions()
            counts = dict(conn.execute(
                "SELECT extract(epoch FROM window_end)::bigint / %s, count(*) FROM cost_windows WHERE window_end > "
                "to_timestamp(%s) AND window_end <= to_timestamp(%s) GROUP BY 1", (WINDOW_S, measure_from, last_end)))
            per_window = max(counts.values(), default=0)  # every node's rows: a window short of them is not all in
            complete = per_window > 0 and all(counts.get(w) == per_window for w in windows)
            if (complete and len(seen) >= probes) or time.time() > settle:
                break
            time.sleep(0.25)
        freshness = [float(r[0]) for r in conn.execute(
            "SELECT extract(epoch FROM updated_at - window_end) FROM cost_windows WHERE window_end > to_timestamp(%s)"
            " AND window_end <= to_timestamp(%s)", (measure_from, last_end))]
        waited_s = time.time()
        for w in windows:  # rows not stored after a minute of waiting count as that late
            freshness += [waited_s - w * WINDOW_S] * (per_window - counts.get(w, 0))
    late = [json.loads(line)["late_s_max"] for line in progress.read_text().splitlines() if line.startswith("{")]
    wall_s = measure_to - measure_from
    decision_freshness = [seen[d] - decided[d] for d in seen]
    window_p99 = _percentile(freshness, 0.99)
    decision_p99 = _percentile(decision_freshness, 0.99) if decision_freshness else float("nan")
    worker_lag = max((lag["worker"] for lag in lags), default=0.0)
    sink_lag = max((lag["sink"] for lag in lags), default=0.0)
    kept_up = (bool(freshness) and window_p99 < FRESHNESS_P99_S and bool(decision_freshness)
               and decision_p99 < FRESHNESS_P99_S and worker_lag < LAG_BOUND_S and sink_lag < LAG_BOUND_S)
    step = Step(gpus=nodes * GPUS_PER_NODE, kept_up=kept_up, window_freshness_p99_s=round(window_p99, 3),
                decision_freshness_p99_s=round(decision_p99, 3), decisions=len(decision_freshness),
                worker_lag_max_s=round(worker_lag, 2), sink_lag_max_s=round(sink_lag, 2),
                publisher_late_max_s=max(late, default=float("nan")),
                cpu_cores={k: round((cpu1[k] - cpu0.get(k, 0.0)) / wall_s, 3) for k in cpu1},
                rss_mib={k: round(v / 2**20, 1) for k, v in rss.items()})
    say(step.line())
    return step, rss_series


def run(quick: bool, say=print, steps: tuple[int, ...] | None = None, hold_s: float | None = None) -> dict:
    """Step the fleet up until the stack no longer keeps up; the figures of the largest fleet kept up with."""
    steps = steps or (QUICK_STEPS_GPUS if quick else STEPS_GPUS)
    hold_s = hold_s or (240 if quick else 300)
    warmup_s = 30 if quick else 60
    results: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="hs-bench-capacity-") as tmp:
        stack = Stack(Path(tmp), say)
        try:
            for gpus in steps:
                step, _ = hold(stack, gpus, warmup_s, hold_s, say)
                results.append(step)
                if not step.kept_up:
                    break
        finally:
            stack.close()
    held = [s for s in results if s.kept_up]
    best = held[-1] if held else results[0]
    figures: dict = {"capacity_gpus": best.gpus if held else 0, "capacity_hold_s": hold_s,
                     "capacity_window_freshness_p99_s": best.window_freshness_p99_s,
                     "capacity_decision_freshness_p99_s": best.decision_freshness_p99_s,
                     "capacity_steps": [s.__dict__ for s in results]}
    figures.update({f"capacity_cpu_{k}_cores": v for k, v in best.cpu_cores.items()})
    for s in results:  # memory against fleet size, at each size held or tried
        for proc in ("worker", "sink"):
            figures[f"rss_{proc}_mib_{s.gpus / 1000:g}k"] = s.rss_mib[proc]
    sized = [(s.gpus, s.rss_mib) for s in results]
    if len({g for g, _ in sized}) >= 2:
        for proc in ("worker", "sink"):  # least squares: MiB per 1,000 GPUs
            xs, ys = [g / 1000 for g, _ in sized], [r[proc] for _, r in sized]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            figures[f"rss_{proc}_mib_per_1k_gpus"] = round(
                sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 2)
    say(f"  the largest fleet kept up with: {figures['capacity_gpus']:,} GPUs ({hold_s:.0f} s held)")
    return figures


def soak(gpus: int, minutes: float, warmup_minutes: float = 10, say=print) -> dict:
    """One fleet size held for ``minutes``: the worker's and the sink's memory every 30 s, and its growth after
    ``warmup_minutes``, per hour."""
    with tempfile.TemporaryDirectory(prefix="hs-bench-soak-") as tmp:
        stack = Stack(Path(tmp), say)
        try:
            step, series = hold(stack, gpus, 60, minutes * 60, say, rss_every_s=30)
        finally:
            stack.close()
    out: dict = {"soak_gpus": step.gpus, "soak_minutes": minutes, "soak_kept_up": step.kept_up,
                 "soak_series_mib": [[round(t), {k: round(v / 2**20, 1) for k, v in r.items()
                                                  if k in ("worker", "sink")}] for t, r in series]}
    after = [(t, r) for t, r in series if t >= warmup_minutes * 60]
    for proc in ("worker", "sink"):
        if len(after) >= 2 and after[0][1][proc]:
            (t0, r0), (t1, r1) = after[0], after[-1]
            growth = (r1[proc] - r0[proc]) / r0[proc]
            out[f"soak_{proc}_growth_pct"] = round(100 * growth, 2)
            out[f"soak_{proc}_growth_pct_per_hour"] = round(100 * growth * 3600 / (t1 - t0), 2)
            say(f"  {proc}: {r0[proc] / 2**20:.0f} MiB at {t0 / 60:.0f} min, {r1[proc] / 2**20:.0f} MiB at "
                f"{t1 / 60:.0f} min: {100 * growth:+.1f} % ({out[f'soak_{proc}_growth_pct_per_hour']:+.1f} % an hour)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 5,000 GPUs, 240 s each: a smoke test")
    parser.add_argument("--gpus", type=int, nargs="+", help="the fleet sizes to step through (default: "
                        + ", ".join(f"{g:,}" for g in STEPS_GPUS) + ")")
    parser.add_argument("--hold", type=float, help="seconds each size is held (default 300; 240 with --quick; at least 240: a probe's crossing takes 3 windows)")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="hold one size (the first --gpus, default 5,000) this long and report memory growth")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--publish", nargs=5, help=argparse.SUPPRESS)  # the publisher process
    args = parser.parse_args()
    if args.publish:
        bootstrap, prefix, nodes, probes, stop_file = args.publish
        publish(bootstrap, prefix, int(nodes), json.loads(probes), Path(stop_file))
        return
    if args.soak:
        figures = soak((args.gpus or [5_000])[0], args.soak)
    else:
        figures = run(args.quick, steps=tuple(args.gpus) if args.gpus else None, hold_s=args.hold)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
