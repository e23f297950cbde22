"""`hybridspend simulate SCENARIO.yaml`: a scenario through the real pipeline on the local stack.

The local broker and PostgreSQL, the Faust worker(s) and the sink run as for the demo; the
scenario's events are published in event time as the collectors would publish them; the
decisions, reconciliation and totals are then read back from the database.
"""

from __future__ import annotations

import hashlib
import signal
import tempfile
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import yaml

from collectors.scenario import HOUR_MS, Scenario, Simulation, iso, scenario_config
from contracts.config import Config
from contracts.topics import Topics
from infra.broker import ensure_topics, make_producer, send_watermarks
from infra.local import running_services
from infra.services import Services


def run_scenario(scenario: Scenario, *, workers: int = 1, restart_worker_at_hours: float | None = None,
                 state_dir: Path | None = None, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the scenario; return the decisions, reconciliation and totals as plain data."""
    import psycopg

    from storage.db import migrate

    with ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hybridspend-simulate-")))
        state_dir.mkdir(parents=True, exist_ok=True)
        data = scenario_config(scenario, state_dir)
        config = Config.model_validate(data)
        config_path = state_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
        sim = Simulation(scenario, config.catalog())
        topics = Topics.from_config(config.kafka)

        endpoints = stack.enter_context(running_services(config, say=say))
        migrate(endpoints.dsn)
        ensure_topics(endpoints.bootstrap, config.kafka, topics)
        producer = make_producer(endpoints.bootstrap, config.kafka)
        stack.callback(producer.close)
        for p in sim.price_updates():  # before the workers start: they load every price first
            producer.send(topics.prices, key=f"{p.provider}|{p.region}|{p.instance_type}".encode(), value=p.encode())
        producer.flush()

        services = Services(config, config_path, endpoints)
        stack.callback(services.stop)
        names = [f"worker-{n + 1}" for n in range(workers)]
        for name in names:
            services.start(name, command="worker")
        services.start("sink")
        say(f"started {workers} Faust worker(s) and the sink (logs in {services.log_dir})")

        sent, restarted = 0, restart_worker_at_hours is None
        next_mark = scenario.start_ms
        grace_ms = config.thresholds.grace_seconds * 1000
        for tick in sim.ticks():
            for ev in tick.instance_events:
                producer.send(topics.instance_events, key=ev.instance_id.encode(), value=ev.encode())
            for sample in tick.samples:
                producer.send(topics.gpu_samples, key=sample.resource.encode(), value=sample.encode())
            sent += len(tick.instance_events) + len(tick.samples)
            if tick.ts_ms >= next_mark:
                send_watermarks(producer, topics, "simulate", tick.ts_ms)
                next_mark += HOUR_MS
            if not restarted and tick.ts_ms >= scenario.start_ms + restart_worker_at_hours * HOUR_MS:
                producer.flush()
                time.sleep(3)  # let the worker get into the middle of it
                services.procs[names[0]].send_signal(signal.SIGKILL)
                services.procs[names[0]].wait()
                say(f"killed {names[0]} with SIGKILL at simulated hour {restart_worker_at_hours:g}; restarting it")
                services.start(names[0], command="worker")
                restarted = True
        # the end: every partition's clock moves past the last window (plus the grace)
        send_watermarks(producer, topics, "simulate", scenario.end_ms + grace_ms)
        bill = sim.bill(config, export_version=iso(scenario.end_ms)) if scenario.billed else []
        for line in bill:
            producer.send(topics.cost_lines, key=line.resource_id.encode(), value=line.encode())
        producer.flush()
        say(f"published {sent} samples and instance events, {len(bill)} billed lines; waiting for the pipeline")

        conn = stack.enter_context(psycopg.connect(endpoints.dsn, autocommit=True))
        _wait_until_settled(conn, services, expected_cost_lines=len(bill))
        return results(conn, scenario)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _wait_until_settled(conn, services: Services, expected_cost_lines: int, timeout_s: float = 300) -> None:
    """Until nothing new arrives for a few seconds (and every billed line is stored)."""
    query = ("SELECT (SELECT count(*) FROM cost_windows), (SELECT coalesce(sum(cost_usd), 0) FROM cost_windows),"
             " (SELECT count(*) FROM decisions), (SELECT count(*) FROM cost_lines), (SELECT count(*) FROM dead_letters)")
    deadline = time.monotonic() + timeout_s
    previous, stable = None, 0
    while stable < 4:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pipeline did not settle in {timeout_s:.0f} s (logs in {services.log_dir})")
        time.sleep(1)
        services.check()
        now = conn.execute(query).fetchone()
        stable = stable + 1 if now == previous and now[3] >= expected_cost_lines and now[0] > 0 else 0
        previous = now


def results(conn, scenario: Scenario) -> dict[str, Any]:
    def num(v):
        return None if v is None else str(v)

    decisions = [
        {
            "workload": r[0], "team": r[1], "from_env": r[2], "to_env": r[3], "kind": r[4], "gpu_class": r[5],
            "decided_at": r[6].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "current_usd_per_busy_gpu_hour": num(r[7]), "alternative_usd_per_busy_gpu_hour": num(r[8]),
            "utilization": num(r[9]), "monthly_savings_usd": num(r[10]), "confidence": num(r[11]),
            "alternative": r[12], "gpus_needed": r[13], "payback_months": num(r[14]), "reason": r[15],
        }
        for r in conn.execute(
            "SELECT workload, team, from_env, to_env, kind, gpu_class, decided_at, current_usd_per_busy_gpu_hour,"
            " alternative_usd_per_busy_gpu_hour, utilization, monthly_savings_usd, confidence, alternative_label,"
            " gpus_needed, payback_months, reason FROM decisions ORDER BY decided_at, workload")
    ]
    workloads = [
        {"workload": r[0], "environment": r[1], "gpu_class": r[2], "allocated_gpu_hours": num(r[3]),
         "busy_gpu_hours": num(r[4]), "cost_usd": num(r[5]),
         "usd_per_busy_gpu_hour": num(None if not r[4] else (r[5] / r[4]).quantize(Decimal("0.000001")))}
        for r in conn.execute(
            "SELECT workload, environment, gpu_class, sum(allocated_gpu_ms) / 3600000.0, sum(busy_gpu_ms) / 3600000.0,"
            " sum(cost_usd) FROM cost_windows WHERE basis = 'estimated' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    ]
    reconciliation = [
        {"provider": r[0], "estimated_usd": num(r[1]), "billed_usd": num(r[2]),
         "estimate_error_pct": None if not r[2] else str(((r[1] - r[2]) / r[2] * 100).quantize(Decimal("0.001"))),
         "hours_estimated_not_billed": r[3], "hours_billed_not_estimated": r[4]}
        for r in conn.execute(
            "SELECT provider, sum(estimated_usd) FILTER (WHERE billed_usd IS NOT NULL),"
            " sum(billed_usd) FILTER (WHERE estimated_usd IS NOT NULL),"
            " count(*) FILTER (WHERE billed_usd IS NULL), count(*) FILTER (WHERE estimated_usd IS NULL)"
            " FROM estimate_vs_billed_hourly GROUP BY 1 ORDER BY 1")
    ] if scenario.billed else []
    rolling = [
        {"span": r[0], "workload": r[1], "environment": r[2], "until": r[3].strftime("%Y-%m-%dT%H:%M:%SZ"),
         "allocated_gpu_hours": num(r[4]), "busy_gpu_hours": num(r[5]), "cost_usd": num(r[6])}
        for r in conn.execute(
            "SELECT span, workload, environment, until, allocated_gpu_hours, busy_gpu_hours, cost_usd"
            " FROM workload_rolling ORDER BY workload, environment, span")
    ]
    digest = hashlib.sha256()
    for row in conn.execute(
            "SELECT window_start, resource, workload, environment, gpu_class, allocated_gpu_ms, busy_gpu_ms,"
            " energy_mj, cost_usd FROM cost_windows ORDER BY 1, 2, 3, 4, 5"):
        digest.update(repr(row).encode())
    idle = conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM cost_windows WHERE workload = 'idle'").fetchone()[0]
    return {
        "scenario": scenario.name,
        "from": iso(scenario.start_ms), "to": iso(scenario.end_ms),
        "decisions": decisions,
        "workloads": workloads,
        "rolling": rolling,
        "idle_onprem_cost_usd": str(idle),
        "reconciliation": reconciliation,
        "dead_letters": conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        "cost_windows_digest": digest.hexdigest(),
    }


def render(result: dict[str, Any]) -> str:
    def usd(v):
        return "—" if v is None else f"${Decimal(v):,.2f}"

    lines = [f"scenario {result['scenario']}: {result['from']} to {result['to']}", "",
             f"Decisions ({len(result['decisions'])})"]
    for d in result["decisions"]:
        extra = f", {d['gpus_needed']} GPUs" if d["kind"].startswith("repatriate") else ""
        if d["payback_months"]:
            extra += f", payback {Decimal(d['payback_months']):.1f} months"
        lines.append(
            f"  {d['decided_at']} {d['workload']}: {d['kind']} ({d['from_env']} -> {d['to_env']}) "
            f"{usd(d['current_usd_per_busy_gpu_hour'])} vs {usd(d['alternative_usd_per_busy_gpu_hour'])} per busy "
            f"GPU-hour at {Decimal(d['utilization']):.0%} busy, saves {usd(d['monthly_savings_usd'])}/month"
            f"{extra}, confidence {Decimal(d['confidence']):.0%}")
        lines.append(f"      {d['reason']}")
    lines += ["", "Workloads", f"  {'workload':<22} {'where':<7} {'GPU':<5} {'GPU-h':>9} {'busy GPU-h':>11} "
              f"{'cost':>12} {'$/busy GPU-h':>13}"]
    for w in result["workloads"]:
        lines.append(f"  {w['workload'][:22]:<22} {w['environment']:<7} {w['gpu_class']:<5} "
                     f"{Decimal(w['allocated_gpu_hours']):>9.1f} {Decimal(w['busy_gpu_hours']):>11.1f} "
                     f"{usd(w['cost_usd']):>12} {usd(w['usd_per_busy_gpu_hour']):>13}")
    lines.append(f"  idle on-prem capacity cost {usd(result['idle_onprem_cost_usd'])}")
    if result["reconciliation"]:
        lines += ["", "Estimated live vs billed (hours present on both sides)"]
        for r in result["reconciliation"]:
            lines.append(f"  {r['provider']:<6} estimated {usd(r['estimated_usd'])}, billed {usd(r['billed_usd'])}, "
                         f"error {r['estimate_error_pct']} %  ({r['hours_estimated_not_billed']} resource-hours "
                         f"not billed yet, {r['hours_billed_not_estimated']} billed but not seen live)")
    lines += ["", f"Dead letters: {result['dead_letters']}"]
    return "\n".join(lines)

