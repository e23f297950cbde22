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

from hybridspend.anomalies.detect import SILENT, SPEND_RATE, Detected, Injected, score_detections
from hybridspend.collectors.scenario import Scenario, Simulation, iso, scenario_config
from hybridspend.costmodel.money import options_ranking_text, range_text
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.contracts.config import Config
from hybridspend.contracts.files import write_replacing
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import LagProbe, ensure_topics, make_producer, send_watermarks
from hybridspend.infra.local import running_services
from hybridspend.infra.services import Services


def run_scenario(scenario: Scenario, *, workers: int = 1, restart_worker_at_hours: float | None = None,
                 state_dir: Path | None = None, say: Callable[[str], None] = lambda m: None,
                 on_tick: Callable[[int, Services, Any], None] | None = None,
                 on_settled: Callable[[Any], None] | None = None, settle_timeout_s: float = 300,
                 alerter: bool = True) -> dict[str, Any]:
    """Run the scenario; return the decisions, reconciliation and totals as plain data.

    ``alerter``: run the alerter too (its outbox says how often each anomaly episode was alerted);
    ``hybridspend stress`` compares the pipeline's own results and leaves it out.

    ``on_tick(ts_ms, services, producer)`` runs after each published tick (fault injection:
    ``hybridspend stress``); ``on_settled(conn)`` runs once the pipeline has settled, before the
    results are read.
    """
    import psycopg

    from hybridspend.storage.db import migrate

    with ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hybridspend-simulate-")))
        state_dir.mkdir(parents=True, exist_ok=True)
        data = scenario_config(scenario, state_dir)
        config = Config.model_validate(data)
        config_path = state_dir / "config.yaml"
        write_replacing(config_path, yaml.safe_dump(_plain(data), sort_keys=False))
        sim = Simulation(scenario, config.catalog())
        topics = Topics.from_config(config.kafka)

        endpoints = stack.enter_context(running_services(config, say=say))
        migrate(endpoints.dsn)
        ensure_topics(endpoints.bootstrap, config.kafka, topics)
        # a month published at once: 256 KiB batches keep the broker from answering a produce request per few records
        producer = make_producer(endpoints.bootstrap, config.kafka, linger_ms=50, batch_size=256 * 1024)
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
        if alerter:  # without routes the alerts it queues go to its log (the console route)
            services.start("alerter")
        say(f"started {workers} Faust worker(s), the sink{' and the alerter' if alerter else ''} "
            f"(logs in {services.log_dir})")

        sent, restarted = 0, restart_worker_at_hours is None
        marks_sent = 0  # watermark records: one per partition of each input topic
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
                marks_sent += 2 * topics.partitions
                next_mark += MS_PER_HOUR
            if not restarted and tick.ts_ms >= scenario.start_ms + restart_worker_at_hours * MS_PER_HOUR:
                producer.flush()
                time.sleep(3)  # let the worker get into the middle of it
                services.procs[names[0]].send_signal(signal.SIGKILL)
                services.procs[names[0]].wait()
                say(f"killed {names[0]} with SIGKILL at simulated hour {restart_worker_at_hours:g}; restarting it")
                services.start(names[0], command="worker")
                restarted = True
            if on_tick is not None:
                on_tick(tick.ts_ms, services, producer)
        # the end: every partition's clock moves past the last window (plus the grace)
        send_watermarks(producer, topics, "simulate", scenario.end_ms + grace_ms)
        marks_sent += 2 * topics.partitions
        bill = sim.bill(config, export_version=iso(scenario.end_ms)) if scenario.billed else []
        for line in bill:
            producer.send(topics.cost_lines, key=line.resource_id.encode(), value=line.encode())
        producer.flush()
        say(f"published {sent} samples and instance events, {len(bill)} billed lines; waiting for the pipeline")

        conn = stack.enter_context(psycopg.connect(endpoints.dsn, autocommit=True))
        groups = [topics.group("sink")] + ([topics.group("alerter")] if alerter else [])
        lag = LagProbe(endpoints.bootstrap, config.kafka, groups, fetch_ends=endpoints.profile.listed_ends_short)
        stack.callback(lag.close)
        caught_up = pipeline_caught_up(lag, topics, sent + marks_sent, alerter)

        _wait_until_settled(conn, services, expected_cost_lines=len(bill), caught_up=caught_up,
                            timeout_s=settle_timeout_s)
        if on_settled is not None:
            on_settled(conn)
        return results(conn, scenario, sim.injected(), config.thresholds.window_seconds * 1000)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def pipeline_caught_up(lag: LagProbe, topics: Topics, inputs_sent: int, alerter: bool = True) -> Callable[[], bool]:
    """True once the worker has committed all ``inputs_sent`` records of its input topics (samples,
    instance events, watermarks) and every cost window (decided them), and the sink (and the
    alerter) everything they read, the worker's outputs over all their partitions included.  ``lag``
    probes the sink's group, and the alerter's when ``alerter``."""
    inputs = {topics.gpu_samples, topics.instance_events}
    worker_outputs = {topics.cost_windows, topics.decisions, topics.anomalies, topics.live_spend, topics.dead_letter}

    def caught_up() -> bool:
        return (lag.committed_total(topics.group("worker"), inputs) >= inputs_sent
                and lag.behind(topics.group("worker"), {topics.cost_windows}) == 0
                and lag.behind(topics.group("sink"), worker_outputs) == 0
                and (not alerter or lag.behind(topics.group("alerter"), {topics.decisions, topics.anomalies}) == 0)
                and not any(behind for *_, behind in lag()))

    return caught_up


def _wait_until_settled(conn, services: Services, expected_cost_lines: int, caught_up: Callable[[], bool],
                        timeout_s: float = 300) -> None:
    """Until nothing new arrives for two checks a second apart, every billed line is stored and ``caught_up()``
    (the consumers have committed everything: a worker restarted or rebalanced may be silent for
    longer than those seconds)."""
    from hybridspend.storage.queries import pipeline_progress

    deadline = time.monotonic() + timeout_s
    previous, stable = None, 0
    while stable < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pipeline did not settle in {timeout_s:.0f} s (logs in {services.log_dir})")
        time.sleep(1)
        services.check()
        now = pipeline_progress(conn)
        stable = stable + 1 if now == previous and now.cost_lines >= expected_cost_lines and now.cost_windows > 0 else 0
        if stable and not caught_up():
            stable = 0
        previous = now


def _anomalies(conn, injected: list[Injected], window_ms: int) -> dict[str, Any]:
    """The anomaly episodes detected and, where the scenario put some in, precision, recall and delay per kind."""
    from hybridspend.storage import queries

    def ms(t):
        return None if t is None else int(t.timestamp() * 1000)

    rows = queries.all_anomalies(conn)
    found = [Detected(r["kind"], r["team"] if r["kind"] == SPEND_RATE else (
        r["resource"] if r["kind"] == SILENT else r["workload"]), ms(r["started_at"]), ms(r["detected_at"]),
        ms(r["ended_at"])) for r in rows]
    return {
        "detected": [{"kind": r["kind"], "subject": r["subject"], "state": r["state"],
                      "started_at": iso(ms(r["started_at"])), "detected_at": iso(ms(r["detected_at"])),
                      "ended_at": None if r["ended_at"] is None else iso(ms(r["ended_at"])),
                      "score": str(r["score"]), "baseline": str(r["baseline"]), "observed": str(r["observed"]),
                      "unit": r["unit"], "usd_so_far": str(r["usd_so_far"]),
                      "usd_per_day_at_stake": str(r["usd_per_day_at_stake"]), "reason": r["reason"]} for r in rows],
        "alerts_queued": queries.anomaly_alerts(conn)[0],  # the alerter's, one per episode and route
        "episodes_alerted": queries.anomaly_alerts(conn)[1],
        "injected": len(injected),
        "by_kind": score_detections(injected, found, window_ms) if injected else {},
    }


def results(conn, scenario: Scenario, injected: list[Injected] = (), window_ms: int = 3_600_000) -> dict[str, Any]:
    from hybridspend.storage import queries

    def num(v):
        return None if v is None else str(v)

    decisions = [
        {
            "workload": d["workload"], "team": d["team"], "from_env": d["from_env"], "to_env": d["to_env"],
            "kind": d["kind"], "gpu_class": d["gpu_class"], "decided_at": d["decided_at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "current_usd_per_busy_gpu_hour": num(d["current_usd_per_busy_gpu_hour"]),
            "alternative_usd_per_busy_gpu_hour": num(d["alternative_usd_per_busy_gpu_hour"]),
            "utilization": num(d["utilization"]), "monthly_savings_usd": num(d["monthly_savings_usd"]),
            "confidence": num(d["confidence"]), "alternative": d["alternative_label"], "gpus_needed": d["gpus_needed"],
            "payback_months": num(d["payback_months"]), "reason": d["reason"],
            "monthly_savings_low_usd": num(d["monthly_savings_low_usd"]),
            "monthly_savings_high_usd": num(d["monthly_savings_high_usd"]),
            "evidence_hours": num(d["evidence_hours"]), "nodes_needed": d["nodes_needed"],
            "instances_needed": d["instances_needed"],
            "options": d["options"] or [], "horizon_months": d["horizon_months"],
            "discount_rate_pct": num(d["discount_rate_pct"]),
        }
        for d in queries.all_decisions(conn)
    ]
    workloads = [
        {"workload": w["workload"], "environment": w["environment"], "gpu_class": w["gpu_class"],
         "allocated_gpu_hours": num(w["allocated_gpu_hours"]), "busy_gpu_hours": num(w["busy_gpu_hours"]),
         "cost_usd": num(w["cost_usd"]),
         "usd_per_busy_gpu_hour": num(None if not w["busy_gpu_hours"] else
                                      (w["cost_usd"] / w["busy_gpu_hours"]).quantize(Decimal("0.000001")))}
        for w in queries.workload_totals(conn)
    ]
    reconciliation = [
        {"provider": r["provider"], "estimated_usd": num(r["estimated_usd"]), "billed_usd": num(r["billed_usd"]),
         "estimate_error_pct": None if not r["billed_usd"] else
            str(((r["estimated_usd"] - r["billed_usd"]) / r["billed_usd"] * 100).quantize(Decimal("0.001"))),
         "hours_estimated_not_billed": r["hours_estimated_not_billed"],
         "hours_billed_not_estimated": r["hours_billed_not_estimated"]}
        for r in queries.reconciliation_by_provider(conn)
    ] if scenario.billed else []
    rolling = [
        {"span": r["span"], "workload": r["workload"], "environment": r["environment"],
         "until": r["until"].strftime("%Y-%m-%dT%H:%M:%SZ"), "allocated_gpu_hours": num(r["allocated_gpu_hours"]),
         "busy_gpu_hours": num(r["busy_gpu_hours"]), "cost_usd": num(r["cost_usd"])}
        for r in queries.workload_rolling(conn)
    ]
    digest = hashlib.sha256()
    for row in queries.cost_windows_in_order(conn):
        digest.update(repr(row).encode())
    return {
        "scenario": scenario.name,
        "from": iso(scenario.start_ms), "to": iso(scenario.end_ms),
        "decisions": decisions,
        "workloads": workloads,
        "rolling": rolling,
        "idle_onprem_cost_usd": str(queries.idle_cost_usd(conn)),
        "reconciliation": reconciliation,
        "dead_letters": queries.counts(conn)["dead_letters"],
        "anomalies": _anomalies(conn, list(injected), window_ms),
        "cost_windows_digest": digest.hexdigest(),
    }


def _range(d: dict, usd) -> str:
    low, high = d["monthly_savings_low_usd"], d["monthly_savings_high_usd"]
    text = range_text(None if low is None else Decimal(low), None if high is None else Decimal(high), usd)
    return f" ({text})" if text else ""


def render(result: dict[str, Any]) -> str:
    def usd(v):
        return "—" if v is None else f"${Decimal(v):,.2f}"

    lines = [f"scenario {result['scenario']}: {result['from']} to {result['to']}", "",
             f"Decisions ({len(result['decisions'])})"]
    for d in result["decisions"]:
        extra = f", {d['gpus_needed']} GPUs" if d["kind"].startswith("repatriate") else ""
        if d["nodes_needed"] is not None:
            extra += f" ({d['nodes_needed']} nodes)"
        if d["instances_needed"] is not None:
            extra += f", {d['instances_needed']} instance(s)"
        if d["payback_months"]:
            extra += f", payback {Decimal(d['payback_months']):.1f} months"
        lines.append(
            f"  {d['decided_at']} {d['workload']}: {d['kind']} ({d['from_env']} -> {d['to_env']}) "
            f"{usd(d['current_usd_per_busy_gpu_hour'])} vs {usd(d['alternative_usd_per_busy_gpu_hour'])} per busy "
            f"GPU-hour at {Decimal(d['utilization']):.0%} busy, saves {usd(d['monthly_savings_usd'])}/month"
            f"{_range(d, usd)}{extra}, confidence {Decimal(d['confidence']):.0%}")
        lines.append(f"      {d['reason']}")
        if d["options"]:
            lines.append("      " + options_ranking_text(d["horizon_months"], d["discount_rate_pct"],
                                                         [(o["label"], Decimal(o["npv_usd"])) for o in d["options"]],
                                                         usd))
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
    anomalies = result["anomalies"]
    lines += ["", f"Anomalies ({len(anomalies['detected'])} episodes)"]
    for a in anomalies["detected"]:
        lines.append(f"  {a['detected_at']} {a['kind']} {a['subject']}: {a['reason']}")
    if anomalies["by_kind"]:
        lines += ["", f"Detection of the {anomalies['injected']} anomalies put in", f"  {'kind':<22} {'put in':>6} "
                  f"{'found':>6} {'precision':>9} {'recall':>7} {'median delay':>13}"]
        for kind, k in anomalies["by_kind"].items():
            def show(v, fmt="{:.2f}"):
                return "—" if v is None else fmt.format(v)
            lines.append(f"  {kind:<22} {k['injected']:>6} {k['detected']:>6} {show(k['precision']):>9} "
                         f"{show(k['recall']):>7} {show(k['median_delay_windows'], '{:.2f} windows'):>13}")
    lines += ["", f"Dead letters: {result['dead_letters']}"]
    return "\n".join(lines)

