"""`hybridspend demo`: the whole pipeline on embedded defaults over a simulated hybrid fleet."""

from __future__ import annotations

import contextlib
import io
import os
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from hybridspend.contracts.config import Config, resolve_config
from hybridspend.contracts.files import write_replacing
from hybridspend.contracts.topics import Topics
from hybridspend.costmodel.money import options_ranking_text, range_text
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.infra.broker import LagProbe, ensure_topics, make_producer, send_watermarks
from hybridspend.infra.local import Endpoints, running_services
from hybridspend.infra.services import Services
from hybridspend.simulate import pipeline_caught_up


def _say(msg: str) -> None:
    print(msg, flush=True)


def _progress(sim_ms: int, start_ms: int, hours: float, sent: int, counts: dict[str, int]) -> str:
    done = (sim_ms - start_ms) / MS_PER_HOUR
    width = 30
    filled = int(width * min(1.0, done / hours))
    clock = datetime.fromtimestamp(sim_ms / 1000, tz=timezone.utc).strftime("%H:%M")
    return (f"  [{'#' * filled}{'.' * (width - filled)}] {clock} UTC  samples sent {sent:>6}  "
            f"cost windows {counts.get('cost_windows', 0):>5}  decisions {counts.get('decisions', 0):>2}  "
            f"alerts {counts.get('alert_outbox', 0) - counts.get('alerts_pending', 0):>2}")


def run_demo(args) -> int:
    import psycopg

    from hybridspend.collectors.sim import demo_fleet
    from hybridspend.contracts.config import EXAMPLE_CONFIG
    from hybridspend.storage.db import migrate, sync_budgets
    from hybridspend.storage.timeseries import delete_raw_samples
    from hybridspend.storage.queries import counts

    state_dir = Path(args.state_dir or os.environ.get("HYBRIDSPEND__STATE_DIR") or ".hybridspend")
    state_dir.mkdir(parents=True, exist_ok=True)
    config_path = Path(args.config) if args.config else state_dir / "config.yaml"
    if not args.config and not config_path.exists():  # a dangling link there is replaced, not followed
        write_replacing(config_path, EXAMPLE_CONFIG.read_bytes())
        _say(f"wrote the example configuration to {config_path}")
    config = resolve_config(str(config_path), str(state_dir))
    topics = Topics.from_config(config.kafka)
    fleet = demo_fleet(seed=args.seed)
    day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    start_ms = int(day_start.timestamp() * 1000)
    end_ms = start_ms + int(args.hours * MS_PER_HOUR)
    t0 = time.monotonic()

    with ExitStack() as stack:
        endpoints = stack.enter_context(running_services(config, say=lambda m: _say(f"  {m}")))
        before, after, engine = migrate(endpoints.dsn)
        sync_budgets(endpoints.dsn, config.budgets)
        _say(f"  database ready ({engine}, schema version {after})")
        if endpoints.local_database:  # this state directory's own database, never a configured one
            with psycopg.connect(endpoints.dsn, autocommit=True) as conn:
                replaced = delete_raw_samples(conn, [n.resource for n in fleet.nodes], day_start,
                                              day_start + timedelta(hours=args.hours))  # the samples sent
            if replaced:
                _say(f"  an earlier demo run stored this simulated day: its {replaced} raw samples are replaced "
                     "(stored twice they would be refused as a replay; the rest is updated in place)")
        ensure_topics(endpoints.bootstrap, config.kafka, topics)
        services = Services(config, config_path, endpoints)
        stack.callback(services.stop)
        services.start("worker")
        services.start("sink")
        services.start("alerter")
        _say("  started the Faust worker, the sink and the alerter "
             f"(logs in {services.log_dir})")
        producer = make_producer(endpoints.bootstrap, config.kafka)
        stack.callback(producer.close)
        conn = stack.enter_context(psycopg.connect(endpoints.dsn, autocommit=True))

        _say(f"simulating {args.hours:g} h of the fleet from {day_start:%Y-%m-%d %H:%M} UTC "
             f"at {args.speed:g}x ({len(fleet.nodes)} nodes and instances, one sample per minute each)")
        sent = inputs_sent = 0  # samples; every record of the worker's input topics, watermarks included
        last_print = 0.0
        wall_start = time.monotonic()
        for ts_ms, samples, instance_events in fleet.run_day(start_ms):
            if ts_ms > end_ms:
                break
            for ev in instance_events:
                producer.send(topics.instance_events, key=ev.instance_id.encode(), value=ev.encode())
            for sample in samples:
                producer.send(topics.gpu_samples, key=sample.resource.encode(), value=sample.encode())
                sent += 1
            send_watermarks(producer, topics, "demo", ts_ms)
            inputs_sent += len(instance_events) + len(samples) + 2 * topics.partitions
            due = wall_start + (ts_ms - start_ms) / 1000 / args.speed
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if time.monotonic() - last_print > 2:
                services.check()
                _say(_progress(ts_ms, start_ms, args.hours, sent, counts(conn)))
                last_print = time.monotonic()
        # the end of the simulated day: every partition's clock moves past its last window
        send_watermarks(producer, topics, "demo", end_ms + config.thresholds.grace_seconds * 1000)
        inputs_sent += 2 * topics.partitions
        producer.flush()
        billed = ingest_simulated_bill(config, fleet, start_ms, args.hours, producer, topics)
        _say(f"  the providers' bill for the day's cloud instances: {billed} FOCUS rows ingested "
             f"(the FOCUS ingest path, as `hybridspend ingest focus` runs it)")

        # drain: wait until the pipeline has caught up: the worker has committed every record sent (a worker
        # starved of CPU can sit still for seconds with records left), the sink and the alerter everything
        # they read, no new rows, no alert pending
        lag = stack.enter_context(contextlib.closing(LagProbe(
            endpoints.bootstrap, config.kafka, [topics.group("sink"), topics.group("alerter")],
            fetch_ends=endpoints.profile.listed_ends_short)))
        pipeline_done = pipeline_caught_up(lag, topics, inputs_sent)

        def caught_up() -> bool:  # and the sink has stored the raw samples and the bill, published last
            return pipeline_done() and lag.behind(topics.group("sink"), {topics.gpu_samples, topics.cost_lines}) == 0
        stable, previous = 0, None
        deadline = time.monotonic() + 180
        while stable < 2:
            if time.monotonic() > deadline:
                _say(f"  the pipeline did not catch up in 180 s (logs in {services.log_dir}); the summary is partial")
                break
            time.sleep(1)
            services.check()
            now = counts(conn)
            stable = stable + 1 if now == previous and now["alerts_pending"] == 0 and caught_up() else 0
            previous = now
        _say(_progress(end_ms, start_ms, args.hours, sent, counts(conn)))
        _say(summary(conn, day_start, datetime.fromtimestamp(end_ms / 1000, tz=timezone.utc), config, services,
                     endpoints, time.monotonic() - t0))
    _say("stopped the worker, sink, alerter, broker and database; nothing left running")
    return 0


def ingest_simulated_bill(config: Config, fleet, start_ms: int, hours: float, producer, topics: Topics) -> int:
    """Write the simulated cloud instances' bill as a FOCUS file and publish it through the FOCUS reader."""
    import csv
    from datetime import datetime as dt

    from hybridspend.collectors.focus import FocusSummary, read_files

    def price(node) -> "Decimal":
        offer = config.offer_for(node.provider, node.region, node.instance_type)
        return offer.usd_per_hour[node.purchase_option] if offer else Decimal(0)

    rows = fleet.focus_bill(start_ms, hours, price)
    bills = config.state_dir / "bills"
    bills.mkdir(parents=True, exist_ok=True)
    path = bills / f"simulated-{dt.fromtimestamp(start_ms / 1000, tz=timezone.utc):%Y-%m-%d}.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["BilledCost"])
    writer.writeheader()
    writer.writerows(rows)
    write_replacing(path, text.getvalue())
    summary = FocusSummary()
    version = dt.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for line in read_files([path], config.catalog(), version, summary):
        producer.send(topics.cost_lines, key=line.resource_id.encode(), value=line.encode())
    producer.flush()
    return summary.rows_published


def _money(v) -> str:
    return "—" if v is None else f"${v:,.2f}"


def _savings_range(d: dict) -> str:
    text = range_text(d["monthly_savings_low_usd"], d["monthly_savings_high_usd"], _money)
    if text is None:
        return ""
    return f"(range {text}) " if text.startswith("$") else f"({text}) "


def summary(conn, start: datetime, end: datetime, config: Config, services: Services, endpoints: Endpoints,
            elapsed_s: float) -> str:
    from hybridspend.storage.queries import cloud_cost_estimated_and_billed, counts, decisions_between, workload_summary

    lines = ["", f"hybridspend demo — {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (simulated), ran in {elapsed_s:.0f} s", ""]
    lines.append("Workloads (estimated from live samples)")
    header = f"  {'workload':<18} {'team':<12} {'where':<7} {'GPU':<5} {'GPU-h':>8} {'busy':>6} {'cost':>10} {'$/busy GPU-h':>13}"
    lines.append(header)
    for w in workload_summary(conn, start, end):
        util = "—" if w.utilization is None else f"{w.utilization:.0%}"
        lines.append(
            f"  {w.workload[:18]:<18} {w.team[:12]:<12} {w.environment:<7} {w.gpu_class:<5} "
            f"{w.allocated_gpu_hours:>8.1f} {util:>6} {_money(w.cost_usd):>10} {_money(w.usd_per_busy_gpu_hour):>13}"
        )
    decisions = decisions_between(conn, start, end + timedelta(hours=1))
    lines += ["", f"Crossings ({len(decisions)})"]
    for d in decisions:
        lines.append(
            f"  {d['decided_at']:%H:%M} {d['workload']}: {d['kind']} ({d['from_env']} -> {d['to_env']}) "
            f"{_money(d['current_usd_per_busy_gpu_hour'])} vs {_money(d['alternative_usd_per_busy_gpu_hour'])} "
            f"per busy GPU-hour at {d['utilization']:.0%} busy, saves {_money(d['monthly_savings_usd'])}/month "
            f"{_savings_range(d)}after {float(d['evidence_hours'] or 0):g} h of evidence "
            f"[{d['alerts_delivered']} alert(s) delivered]"
        )
        lines.append(f"        {d['reason']}")
        if d["options"]:
            lines.append("        " + options_ranking_text(d["horizon_months"], d["discount_rate_pct"],
                                                           [(o["label"], Decimal(o["npv_usd"])) for o in d["options"]],
                                                           _money))
    estimated, billed = cloud_cost_estimated_and_billed(conn, start, end)
    lines += ["", f"Cloud cost: estimated live {_money(estimated)}, billed {_money(billed)}"
              + (f" (estimate {float((estimated - billed) / billed):+.2%} against the bill)" if billed else "")]
    c = counts(conn)
    routes = ", ".join(r.name for r in config.alerts.routes) or "console"
    lines += [
        "",
        f"Alerts: {c['alert_outbox'] - c['alerts_pending']} delivered, {c['alerts_pending']} pending "
        f"(routes: {routes}; without a Slack webhook they go to the console: {services.log_dir / 'alerter.log'})",
        f"Dead letters: {c['dead_letters']}",
        "",
        "Where the data is:",
        f"  configuration   {config.state_dir / 'config.yaml'}",
        f"  database        {'embedded PostgreSQL in ' + str(config.state_dir / 'pgdata') if endpoints.local_database else 'configured DSN'}"
        f" (tables cost_windows, decisions, alert_outbox, alert_log, dead_letters)",
        f"  logs            {services.log_dir}",
    ]
    return "\n".join(lines)
