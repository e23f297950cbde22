"""The `hybridspend` command line. Entry points only translate: parse, call, print."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from decimal import Decimal
from pathlib import Path

from contracts.config import Config, ConfigError, load_config, resolve_config


class UsageError(Exception):
    """A problem with the command line or its inputs; printed without a traceback."""


def _stop_flag():
    """A stop() callable set by SIGTERM/SIGINT, for the long-running loops."""
    stopped = {"v": False}

    def handler(signum, frame):
        stopped["v"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return lambda: stopped["v"]


def _dec(name: str):
    def parse(text: str) -> Decimal:
        try:
            value = Decimal(text)
        except Exception:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value.is_finite():
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        return value

    return parse


# -- tco ----------------------------------------------------------------------------------------


def cmd_tco(args) -> int:
    from costmodel import tco
    from costmodel.money import micro

    result = tco(
        gpu_price_usd=args.gpu_price_usd, amortization_months=args.amortization_months, power_w=args.power_w,
        pue=args.pue, usd_per_kwh=args.usd_per_kwh, upkeep_usd_per_year=args.upkeep_usd_per_year,
        cloud_usd_per_gpu_hour=args.cloud_usd_per_gpu_hour, utilization=args.utilization, gpus=args.gpus,
    )
    values = result.as_dict()
    if args.json:
        out = {k: (float(micro(v)) if isinstance(v, Decimal) else v) for k, v in values.items()}
        print(json.dumps(out, indent=2))
        return 0
    rows = [
        ("capex", result.capex_usd_per_gpu_hour, "$/GPU-hour"),
        ("energy", result.energy_usd_per_gpu_hour, "$/GPU-hour"),
        ("upkeep", result.upkeep_usd_per_gpu_hour, "$/GPU-hour"),
        ("on-prem, fully loaded", result.onprem_usd_per_gpu_hour, "$/GPU-hour"),
        ("on-prem per busy GPU-hour", result.effective_onprem_usd_per_busy_gpu_hour, "$/busy GPU-hour"),
        ("cloud", args.cloud_usd_per_gpu_hour, "$/GPU-hour"),
        ("breakeven utilization", result.breakeven_utilization * 100, "%"),
        (f"monthly on-prem ({args.gpus} GPU)", result.monthly_onprem_usd, "$"),
        (f"monthly cloud ({args.gpus} GPU, busy hours)", result.monthly_cloud_usd, "$"),
        (f"monthly on-prem opex ({args.gpus} GPU)", result.monthly_onprem_opex_usd, "$"),
        ("months to breakeven", result.months_to_breakeven, "months"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, unit in rows:
        shown = "never (cloud costs no more than opex)" if value is None else f"{value:,.4f}"
        print(f"{label:<{width}}  {shown:>16}  {unit if value is not None else ''}")
    print(f"{'cheaper at this utilization':<{width}}  {result.cheaper_env:>16}")
    return 0


# -- config ---------------------------------------------------------------------------------------


def cmd_config_check(args) -> int:
    config = load_config(args.file)
    print(f"{args.file}: valid")
    print(json.dumps(config.redacted(), indent=2))
    return 0


# -- services ---------------------------------------------------------------------------------------


def _endpoints(config: Config):
    """External endpoints for a single service; the embedded ones are started by `demo` only."""
    from contracts.topics import Topics
    from infra.broker import ensure_topics, profile_named
    from infra.local import database_dsn

    bootstrap = config.kafka.bootstrap_servers
    dsn = database_dsn(config)
    if not bootstrap:
        raise UsageError("kafka.bootstrap_servers is not set (the embedded broker is started by `hybridspend demo`)")
    profile = profile_named(os.environ.get("HYBRIDSPEND_BROKER_PROFILE", "kafka"))
    # every topic exists with its partition count before any agent or consumer starts
    ensure_topics(bootstrap, config.kafka, Topics.from_config(config.kafka), timeout_s=120)
    return bootstrap, dsn, profile


def cmd_worker(args) -> int:
    from streams.worker import run_worker

    config = resolve_config(args.config, args.state_dir)
    bootstrap, _, profile = _endpoints(config)
    sys.argv = [sys.argv[0]]  # Faust's worker reads the command line
    run_worker(config, bootstrap, profile, loglevel=args.log_level)
    return 0


def _run_consumer_service(args, role: str, topic_names, build) -> int:
    """Run a database-writing consumer (sink, alerter) until SIGTERM/SIGINT."""
    from contracts.topics import Topics
    from infra.broker import make_consumer

    config = resolve_config(args.config, args.state_dir)
    bootstrap, dsn, profile = _endpoints(config)
    if dsn is None:
        raise UsageError("database.dsn is not set")
    topics = Topics.from_config(config.kafka)
    consumer = make_consumer(bootstrap, config.kafka, profile, topics.group(role), topic_names(topics))
    service = build(config, dsn, consumer, topics)
    try:
        service.run(_stop_flag())
    finally:
        consumer.close()
        service.close()
    return 0


def cmd_sink(args) -> int:
    from infra.broker import LagProbe
    from storage.sink import Sink, sink_topics

    def build(config, dsn, consumer, topics):
        probe = LagProbe(config.kafka.bootstrap_servers, config.kafka,
                         [topics.group(role) for role in ("worker", "sink", "alerter")])
        return Sink(consumer, dsn, topics, lag_probe=probe)

    return _run_consumer_service(args, "sink", sink_topics, build)


def cmd_alerter(args) -> int:
    from alerts.alerter import Alerter

    return _run_consumer_service(
        args, "alerter", lambda t: [t.decisions],
        lambda config, dsn, consumer, topics: Alerter(config, dsn, consumer, dry_run=args.dry_run,
                                                      say=lambda m: print(m, flush=True)),
    )


def cmd_collect_nvml(args) -> int:
    from collectors.nvml.collector import NvmlCollector, default_nvml, host_name
    from contracts.topics import Topics
    from infra.broker import WATERMARK_EVERY_MS, make_producer, send_watermarks

    config = resolve_config(args.config, args.state_dir)
    bootstrap, _, _ = _endpoints(config)
    topics = Topics.from_config(config.kafka)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nvml = default_nvml()
    collector = NvmlCollector(config, nvml, host=host_name(config),
                              interval_s=args.interval or config.collectors.nvml.interval_seconds)
    try:
        collector.start()
    except nvml.NVMLError as exc:
        raise UsageError(f"NVML is not available on this machine: {exc}") from None
    producer = make_producer(bootstrap, config.kafka)
    sent = {"n": 0}

    last_mark = {"ms": 0}

    def send(sample) -> None:
        producer.send(topics.gpu_samples, key=sample.resource.encode(), value=sample.encode())
        sent["n"] += 1
        if sample.ts_ms - last_mark["ms"] >= WATERMARK_EVERY_MS:  # keep quiet partitions moving
            send_watermarks(producer, topics, f"nvml:{sample.resource}", sample.ts_ms, ("gpu-samples",))
            last_mark["ms"] = sample.ts_ms
        if args.once:
            stopped["v"] = True

    stopped = {"v": False}
    stop_signal = _stop_flag()
    try:
        collector.run(send, stop=lambda: stopped["v"] or stop_signal())
    finally:
        producer.flush()
        producer.close()
        collector.stop()
    print(f"sent {sent['n']} samples from {collector.host} ({collector.errors} GPU read errors)")
    return 0


def cmd_collect_aws(args) -> int:
    from collectors.aws.collector import AwsCollector
    from infra.checkpoint import Checkpoint

    from .publishing import publishing

    config = resolve_config(args.config, args.state_dir)
    if not config.collectors.aws.accounts:
        raise UsageError("collectors.aws.accounts is empty: name at least one account and its regions")
    if not config.kafka.bootstrap_servers and not args.once:
        raise UsageError("without kafka.bootstrap_servers the collector runs on the embedded stack: use --once")
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    checkpoint = Checkpoint(config.state_dir / "checkpoints" / "aws.json")
    with publishing(config, ["prices", "instance-events", "cost-lines"], say=err) as publisher:
        collector = AwsCollector(config, publisher, checkpoint)
        if args.once:
            report = collector.run_once()
            print(f"aws: sent {report.sent or 'nothing new'}; {report.ce_calls} Cost Explorer call(s); "
                  f"{len(report.errors)} problem(s)")
            for error in report.errors[:50]:
                print(f"  {error}")
            return 0 if not report.errors or report.sent else 1
        collector.run(_stop_flag(), say=err)
    return 0


def cmd_collect_gcp(args, channel=None) -> int:
    import glob
    import time

    from collectors import gcp
    from infra.checkpoint import Checkpoint

    from .publishing import publishing

    config = resolve_config(args.config, args.state_dir)
    settings = config.collectors.gcp
    if not config.kafka.bootstrap_servers and not args.once:
        raise UsageError("without kafka.bootstrap_servers the collector runs on the embedded stack: use --once")
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    checkpoint = Checkpoint(config.state_dir / "checkpoints" / "gcp.json")
    stop = _stop_flag()
    with publishing(config, ["prices", "cost-lines"], say=err) as publisher:
        while True:
            paths = [Path(p) for p in glob.glob(settings.billing_export_glob)] if settings.billing_export_glob else []
            factory = (lambda: gcp.catalog_client(channel)) if settings.catalog else None
            now_ms = int(time.time() * 1000)
            inventory = None
            if settings.projects:
                def inventory(report, now_ms=now_ms):
                    gcp.publish_inventory(gcp.authorized_session(), settings.compute_endpoint, settings.projects,
                                          publisher, checkpoint, config.catalog(), config.resolve_workload,
                                          report, now_ms)
            report = gcp.run_once(factory, paths, publisher, checkpoint, config.catalog(), now_ms, inventory)
            print(f"gcp: sent {report.sent or 'nothing new'}; {len(report.errors)} problem(s)", flush=True)
            for error in report.errors[:50]:
                print(f"  {error}", flush=True)
            if args.once or stop():
                return 0 if not report.errors or report.sent else 1
            deadline = time.monotonic() + settings.poll_seconds
            while not stop() and time.monotonic() < deadline:
                time.sleep(0.5)


def cmd_db_migrate(args) -> int:
    from infra.local import local_database
    from storage.db import migrate, sync_budgets

    config = resolve_config(args.config, args.state_dir)
    with local_database(config) as dsn:
        before, after, engine = migrate(dsn)
        sync_budgets(dsn, config.budgets)
    state = "already up to date" if before == after else f"migrated from version {before} to {after}"
    print(f"database schema {state} (engine: {engine})")
    return 0


def cmd_dashboards_push(args) -> int:
    from dashboards.push import PushError, datasource_spec, grafana_client, push

    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {args.token_file} ({exc.strerror})") from None
    if not token:
        raise UsageError(f"--token-file: {args.token_file} is empty")
    try:
        push(grafana_client(args.grafana_url, token), datasource_spec(args.db_host, args.db_name, args.db_user))
    except PushError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_dashboards_build(args) -> int:
    from dashboards.build import OUT, write

    for path in write(Path(args.out) if args.out else OUT):
        print(path)
    return 0


def cmd_ingest_focus(args) -> int:
    from datetime import datetime, timezone

    from collectors.focus import FocusSummary, read_files

    from .publishing import publishing

    config = resolve_config(args.config, args.state_dir)
    paths = [Path(p) for p in args.files]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    # one ingest run is one delivery of the billing periods it contains: it replaces earlier runs' lines
    version = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    summary = FocusSummary()
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with publishing(config, ["cost-lines"], say=err) as publisher:
        for line in read_files(paths, config.catalog(), version, summary,
                               progress=lambda n: err(f"  {n:,} rows read")):
            publisher.send("cost-lines", line.resource_id or line.event_id, line)
    if args.summary_json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        print(f"read {summary.rows_read} rows, published {summary.rows_published}, rejected "
              f"{summary.rows_rejected}, GPU rows {summary.gpu_rows}")
        for name, t in sorted(summary.by_provider.items()):
            print(f"  {name}: {t.rows} rows, billed ${t.billed_cost_usd:,.2f}, effective ${t.effective_cost_usd:,.2f}")
        for reason in summary.rejections[:20]:
            print(f"  rejected {reason}")
    return 0 if summary.rows_read == 0 or summary.rows_published > 0 else 1


def cmd_report_monthly(args) -> int:
    import psycopg

    from infra.local import local_database
    from reports import monthly

    config = resolve_config(args.config, args.state_dir)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in monthly.FORMATS]
    if unknown:
        raise UsageError(f"--format: unknown {', '.join(unknown)}; choose from {', '.join(monthly.FORMATS)}")
    try:
        monthly.month_bounds(args.month)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with local_database(config) as dsn, psycopg.connect(dsn) as conn:
        from storage.db import check_schema

        check_schema(conn)
        err(f"reading {args.month} from the database")
        report = monthly.build(conn, config, args.month)
        if not report.workloads:
            err(f"no cost windows in {args.month}: run the pipeline (or `hybridspend demo`) first")
        paths = monthly.write(conn, report, formats, Path(args.out), progress=err)
    for path in paths:
        print(path)
    return 0


def cmd_bench(args) -> int:
    # a separate program: the benchmarks drive the entrypoints, never the reverse
    import subprocess

    return subprocess.call([sys.executable, "-m", "bench", *(["--quick"] if args.quick else [])])


def cmd_demo(args) -> int:
    from hybridspend.demo import run_demo

    return run_demo(args)


def cmd_simulate(args) -> int:
    from collectors.scenario import load_scenario
    from hybridspend.simulate import render, run_scenario

    scenario = load_scenario(args.scenario)
    say = (lambda m: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    result = run_scenario(scenario, workers=args.workers, restart_worker_at_hours=args.kill_worker_at,
                          state_dir=Path(args.state_dir) if args.state_dir else None, say=say)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridspend",
        description="Live hybrid GPU spend: what a busy GPU-hour costs on-prem and in the cloud, "
        "and when a workload should move.",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML configuration (default: $HYBRIDSPEND_CONFIG, "
                       "<state dir>/config.yaml, else the bundled example)")
        p.add_argument("--state-dir", help="local state directory (default: ./.hybridspend)")

    p = sub.add_parser("tco", help="own-vs-rent calculator for one GPU class",
                       description="Fully loaded on-prem cost per GPU-hour against a cloud price, at a utilization.")
    p.add_argument("--gpu-price-usd", type=_dec("--gpu-price-usd"), required=True, help="purchase price per GPU, USD")
    p.add_argument("--amortization-months", type=int, required=True, help="months over which the price is amortized")
    p.add_argument("--power-w", type=_dec("--power-w"), required=True, help="average power draw per GPU, watts")
    p.add_argument("--pue", type=_dec("--pue"), required=True, help="power usage effectiveness of the facility (>= 1)")
    p.add_argument("--usd-per-kwh", type=_dec("--usd-per-kwh"), required=True, help="electricity price, USD per kWh")
    p.add_argument("--upkeep-usd-per-year", type=_dec("--upkeep-usd-per-year"), required=True,
                   help="support + facility + staff per GPU per year, USD")
    p.add_argument("--cloud-usd-per-gpu-hour", type=_dec("--cloud-usd-per-gpu-hour"), required=True,
                   help="cloud price per GPU-hour, USD")
    p.add_argument("--utilization", type=_dec("--utilization"), required=True,
                   help="busy GPU-hours / allocated GPU-hours, in (0, 1]")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_tco)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pc = csub.add_parser("check", help="validate a configuration and print it with secrets redacted")
    pc.add_argument("file")
    pc.set_defaults(func=cmd_config_check)

    p = sub.add_parser("demo", help="run the whole pipeline on embedded defaults over a simulated fleet",
                       description="Starts a local broker and PostgreSQL, the Faust worker, the sink and the "
                       "alerter, replays a simulated day of a hybrid fleet at an accelerated clock, and prints "
                       "the workloads, their rates in each environment, the crossings and the alerts.")
    common(p)
    p.add_argument("--seed", type=int, default=42, help="seed of the simulated fleet (default 42)")
    p.add_argument("--hours", type=float, default=24, help="simulated hours (default 24)")
    p.add_argument("--speed", type=float, default=2400,
                   help="simulated seconds per wall-clock second (default 2400: a day in 36 s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "simulate", help="run a scenario file through the real pipeline and print the decisions",
        description="Runs a described situation (assets, offers, workloads with utilization timelines, instance "
        "starts and stops, prices, the bill) through the local broker, the Faust worker(s), the sink and "
        "PostgreSQL, and prints the decisions (workload, from and to environment, kind, effective rates, "
        "utilization, monthly savings, confidence), the totals and the estimate-vs-billed reconciliation. "
        "The format is in the README, section 'Scenario files'.")
    p.add_argument("scenario", help="the scenario YAML file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--workers", type=int, default=1, choices=range(1, 9), metavar="N",
                   help="Faust workers sharing the partitions (default 1)")
    p.add_argument("--kill-worker-at", type=float, metavar="HOUR",
                   help="fault injection: SIGKILL the first worker at this simulated hour and restart it")
    p.add_argument("--state-dir", help="keep the run's database and logs here (default: a temporary directory)")
    p.set_defaults(func=cmd_simulate)

    for name, func, text in (
        ("worker", cmd_worker, "run a Faust stream worker (scale out by starting more)"),
        ("sink", cmd_sink, "write samples, cost windows, cost lines, prices, decisions and dead letters to the database"),
        ("alerter", cmd_alerter, "deliver decisions to Slack through the durable outbox"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        common(p)
        if name == "alerter":
            p.add_argument("--dry-run", action="store_true", help="print alerts instead of posting them")
        p.set_defaults(func=func)

    p = sub.add_parser("collect", help="run a collector")
    colsub = p.add_subparsers(dest="collector", metavar="SOURCE", required=True)
    pn = colsub.add_parser("nvml", help="on-prem GPUs of this node through NVML")
    common(pn)
    pn.add_argument("--interval", type=float, help="seconds between samples (default from config)")
    pn.add_argument("--once", action="store_true", help="send one sample and exit")
    pn.set_defaults(func=cmd_collect_nvml)

    p = sub.add_parser("ingest", help="ingest billing files")
    isub = p.add_subparsers(dest="ingest_command", metavar="FORMAT", required=True)
    pi = isub.add_parser("focus", help="FOCUS 1.0-1.2 billing files (CSV, CSV.gz, Parquet) as cost lines",
                         description="Reads FOCUS files and publishes their rows as cost lines. Rows that cannot "
                         "be read are rejected with file, row and reason; a file missing a required column is "
                         "rejected whole. Ingest all files of a billing period in one run: a later run of the "
                         "same period replaces the lines of the earlier one (a restatement).")
    common(pi)
    pi.add_argument("files", nargs="+", metavar="FILE")
    pi.add_argument("--summary-json", action="store_true", help="print the summary as one JSON object")
    pi.set_defaults(func=cmd_ingest_focus)

    p = sub.add_parser("report", help="reports for finance")
    rsub = p.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    pr = rsub.add_parser("monthly", help="the monthly repatriation / migration report",
                         description="Per workload: environment, busy and allocated GPU-hours, utilization, cost "
                         "(estimated and billed), effective $ per busy GPU-hour, the cost in the other environment, "
                         "the recommendation and annualized savings; idle cost; charts; every assumption; and the "
                         "on-prem costs as FOCUS-shaped rows. Reads the configured database, else the local state "
                         "that `hybridspend demo` left.")
    common(pr)
    pr.add_argument("--month", required=True, help="YYYY-MM")
    pr.add_argument("--format", default="md,csv,html,pdf,focus",
                    help="comma-separated: md, csv, html, pdf, focus (default all)")
    pr.add_argument("--out", default="reports-out", help="output folder (default ./reports-out)")
    pr.set_defaults(func=cmd_report_monthly)

    p = sub.add_parser("dashboards", help="Grafana dashboards as code")
    dbs = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    pp = dbs.add_parser("push", help="provision folder, datasource and dashboards through Grafana's API",
                        description="Idempotent: a second push changes nothing. A dashboard that changes in Grafana "
                        "while the push runs is reported as a version conflict, never overwritten.")
    pp.add_argument("--grafana-url", required=True, help="e.g. https://grafana.example.com")
    pp.add_argument("--token-file", required=True, help="file holding a Grafana service-account token (Editor)")
    pp.add_argument("--db-host", default="timescaledb:5432", help="database host:port as Grafana reaches it")
    pp.add_argument("--db-name", default="hybridspend")
    pp.add_argument("--db-user", default="hybridspend_grafana",
                    help="a read-only role; set its password in Grafana or by file provisioning")
    pp.set_defaults(func=cmd_dashboards_push)
    pb = dbs.add_parser("build", help="write the dashboard JSON files (dashboards/json by default)")
    pb.add_argument("--out", help="output folder")
    pb.set_defaults(func=cmd_dashboards_build)

    p = sub.add_parser("bench", help="run the benchmarks and write bench/results.json",
                       description="Runs the benchmarks on an embedded broker and PostgreSQL, prints a table of "
                       "figures and writes them to bench/results.json.")
    p.add_argument("--quick", action="store_true", help="smaller inputs (seconds instead of a minute)")
    p.set_defaults(func=cmd_bench)

    pa = colsub.add_parser("aws", help="AWS prices, GPU instances and events, Cost Explorer, billing exports",
                           description="Publishes GPU prices (Pricing API, spot history), GPU instance inventory "
                           "and EventBridge state/spot-interruption events (via SQS), hourly Cost Explorer cost and "
                           "FOCUS / CUR 2.0 exports from S3, for every account and region in collectors.aws. "
                           "Credentials: boto3's standard chain, or a role per account.")
    common(pa)
    pa.add_argument("--once", action="store_true", help="one pass over every source, then exit")
    pa.set_defaults(func=cmd_collect_aws)

    pg = colsub.add_parser("gcp", help="GCP GPU prices (Cloud Billing Catalog) and billing export rows",
                           description="Publishes GPU and GPU-VM SKU prices from the Cloud Billing Catalog "
                           "(Application Default Credentials) and the billing export's rows newer than the "
                           "checkpoint (collectors.gcp.billing_export_glob).")
    common(pg)
    pg.add_argument("--once", action="store_true", help="one pass, then exit")
    pg.set_defaults(func=cmd_collect_gcp)

    p = sub.add_parser("db", help="database tools")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    pm = dsub.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    common(pm)
    pm.set_defaults(func=cmd_db_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning, module="pynvml")
    from costmodel import CostModelError
    from storage.db import SchemaError

    try:
        return args.func(args)
    except (ConfigError, CostModelError, UsageError, SchemaError, ConnectionError) as exc:
        print(f"hybridspend: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
