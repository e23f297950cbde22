"""The `hybridspend` command line. Entry points only translate: parse, call, print."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable

from hybridspend.contracts.config import Config, ConfigError, load_config, resolve_config
from hybridspend.contracts.files import write_replacing
from hybridspend.contracts.redact import install_log_redaction, one_line, printable, redact
from hybridspend.infra.broker import quiet_client_diagnostics


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
        if (value and value.adjusted() >= 12) or not -12 <= value.as_tuple().exponent <= 12:
            raise argparse.ArgumentTypeError(f"{name} must be below 1e12 with at most 12 decimal places, "
                                             f"got {text[:40]!r}")  # checked before any arithmetic
        return value

    return parse


# -- tco ----------------------------------------------------------------------------------------


def cmd_tco(args) -> int:
    from hybridspend.costmodel import tco
    from hybridspend.costmodel.money import micro

    result = tco(
        gpu_price_usd=args.gpu_price_usd, amortization_months=args.amortization_months, power_w=args.power_w,
        pue=args.pue, usd_per_kwh=args.usd_per_kwh, upkeep_usd_per_year=args.upkeep_usd_per_year,
        cloud_usd_per_gpu_hour=args.cloud_usd_per_gpu_hour, utilization=args.utilization, gpus=args.gpus,
    )
    values = result.as_dict()
    table = _tco_options(args, result)
    if args.json:
        out = {k: (float(micro(v)) if isinstance(v, Decimal) else v) for k, v in values.items()}
        if table is not None:
            out["options"] = [{"option": r.option, "total_usd": float(micro(r.total_usd)),
                               "npv_usd": float(micro(r.npv_usd)), "breakeven_month": r.breakeven_month}
                              for r in table.results]
            out["cheapest_option"] = table.cheapest.option
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
    if table is not None:
        _print_options(args, table)
    return 0


def _tco_options(args, result):
    """The options table, when any option flag is given (None otherwise: the output is as before)."""
    from hybridspend.costmodel.options import calculator_options

    wanted = (args.horizon_months, args.discount_rate_pct, args.commitment_usd_per_gpu_hour,
              args.commitment_term_months, args.one_time_usd)
    if all(v is None for v in wanted):
        return None
    if (args.commitment_usd_per_gpu_hour is None) != (args.commitment_term_months is None):
        raise UsageError("--commitment-usd-per-gpu-hour and --commitment-term-months go together")
    horizon = args.horizon_months or args.amortization_months
    if args.commitment_term_months is not None and not 1 <= args.commitment_term_months <= horizon:
        raise UsageError(f"--commitment-term-months must be from 1 to the horizon ({horizon} months): a commitment "
                         f"pays for its whole term, got {args.commitment_term_months}")
    if args.one_time_usd is not None and args.one_time_usd < 0:
        raise UsageError(f"--one-time-usd must be >= 0, got {args.one_time_usd}")
    return calculator_options(
        gpus=args.gpus, utilization=args.utilization, cloud_usd_per_gpu_hour=args.cloud_usd_per_gpu_hour,
        gpu_price_usd=args.gpu_price_usd,
        opex_usd_per_gpu_hour=result.energy_usd_per_gpu_hour + result.upkeep_usd_per_gpu_hour,
        horizon_months=args.horizon_months or args.amortization_months,
        annual_rate=(args.discount_rate_pct if args.discount_rate_pct is not None else Decimal(8)) / 100,
        commitment_usd_per_gpu_hour=args.commitment_usd_per_gpu_hour,
        commitment_term_months=args.commitment_term_months, one_time_usd=args.one_time_usd or Decimal(0))


def _print_options(args, table) -> None:
    horizon = args.horizon_months or args.amortization_months
    rate = args.discount_rate_pct if args.discount_rate_pct is not None else Decimal(8)
    print(f"\noptions over {horizon} months, present values at {rate}% a year")
    print(f"{'option':<28} {'up front $':>14} {'a month $':>12} {'total $':>16} {'present value $':>16}  overtakes")
    for r in table.results:
        name = {"commitment": f"commitment ({r.term_months}-month term)", "buy": f"buy {r.quantity} GPUs"}.get(
            r.option, "on demand (busy hours)")
        overtakes = "-" if r.option == "on_demand" else (
            f"month {r.breakeven_month}" if r.breakeven_month is not None else "never")
        print(f"{name:<28} {r.upfront_usd:>14,.2f} {r.monthly_usd:>12,.2f} {r.total_usd:>16,.2f} "
              f"{r.npv_usd:>16,.2f}  {overtakes}")
    print(f"cheapest by present value: {table.cheapest.option}")


# -- config ---------------------------------------------------------------------------------------


def cmd_config_reference(args) -> int:
    from hybridspend.contracts.config_reference import reference_markdown

    print(reference_markdown(), end="")
    return 0


def cmd_config_check(args) -> int:
    config = load_config(args.file)
    print(f"{args.file}: valid")
    print(json.dumps(config.redacted(), indent=2))
    return 0


# -- services ---------------------------------------------------------------------------------------


def _broker_profile():
    """The broker profile the supervisor names for its children (``kafka`` unless it says ``local``)."""
    from hybridspend.infra.broker import profile_named

    return profile_named(os.environ.get("HYBRIDSPEND_BROKER_PROFILE", "kafka"))


def _endpoints(config: Config):
    """External endpoints for a single service; the embedded ones are started by `demo` only."""
    from hybridspend.contracts.topics import Topics
    from hybridspend.infra.broker import ensure_topics
    from hybridspend.infra.local import database_dsn

    bootstrap = config.kafka.bootstrap_servers
    dsn = database_dsn(config)
    if not bootstrap:
        raise UsageError("kafka.bootstrap_servers is not set (the embedded broker is started by `hybridspend demo`)")
    profile = _broker_profile()
    # every topic exists with its partition count before any agent or consumer starts
    ensure_topics(bootstrap, config.kafka, Topics.from_config(config.kafka), timeout_s=120)
    return bootstrap, dsn, profile


def cmd_worker(args, config: Config) -> int:
    from hybridspend.streams.worker import run_worker

    bootstrap, _, profile = _endpoints(config)
    _serve_metrics(args)
    sys.argv = [sys.argv[0]]  # Faust's worker reads the command line
    run_worker(config, bootstrap, profile, loglevel=args.log_level, metrics=args.metrics_port is not None)
    return 0


def _serve_metrics(args) -> None:
    """Serve Prometheus metrics on ``--metrics-host``:``--metrics-port`` (0: any free port, printed)."""
    if args.metrics_port is not None:
        from hybridspend.infra.metrics import serve

        port = serve(args.metrics_port, args.metrics_host)
        print(f"metrics: http://{args.metrics_host}:{port}/metrics", file=sys.stderr, flush=True)


def _run_consumer_service(args, config: Config, role: str, topic_names, build, make_consumer=None) -> int:
    """Run a database-writing consumer (sink, alerter) until SIGTERM/SIGINT; ``make_consumer``
    defaults to ``infra.broker.make_consumer`` (kafka-python)."""
    from hybridspend.contracts.topics import Topics
    from hybridspend.infra import broker

    bootstrap, dsn, profile = _endpoints(config)
    if dsn is None:
        raise UsageError("database.dsn is not set")
    topics = Topics.from_config(config.kafka)
    consumer = (make_consumer or broker.make_consumer)(bootstrap, config.kafka, profile, topics.group(role),
                                                      topic_names(topics))
    service = build(config, dsn, consumer, topics)
    _serve_metrics(args)
    try:
        service.run(_stop_flag())
    finally:
        consumer.close()
        service.close()
    return 0


def cmd_sink(args, config: Config) -> int:
    from hybridspend.infra.broker import LagProbe, make_sink_consumer
    from hybridspend.storage.metrics import SinkMetrics
    from hybridspend.storage.sink import Sink, sink_topics

    def build(config, dsn, consumer, topics):
        probe = LagProbe(config.kafka.bootstrap_servers, config.kafka,
                         [topics.group(role) for role in ("worker", "sink", "alerter")],
                         fetch_ends=_broker_profile().listed_ends_short)
        return Sink(consumer, dsn, topics, lag_probe=probe,
                    metrics=SinkMetrics() if args.metrics_port is not None else None)

    return _run_consumer_service(args, config, "sink", sink_topics, build, make_consumer=make_sink_consumer)


def cmd_alerter(args, config: Config) -> int:
    from hybridspend.alerts.alerter import Alerter
    from hybridspend.storage.metrics import AlerterMetrics

    return _run_consumer_service(
        args, config, "alerter", lambda t: [t.decisions, t.anomalies],
        lambda config, dsn, consumer, topics: Alerter(
            config, dsn, consumer, dry_run=args.dry_run, say=lambda m: print(m, flush=True),
            metrics=AlerterMetrics(config) if args.metrics_port is not None else None),
    )


# -- collectors -------------------------------------------------------------------------------------


def _collect(args, config: Config, logical_topics: list[str], make) -> int:
    """Every ``collect`` command: the collector ``make(publisher)`` builds (``collectors.base.Collector``),
    polled once with ``--once`` (its report printed; exit 1 when it failed and sent nothing), else every
    interval until SIGTERM/SIGINT (each poll's report on stderr, metrics served with ``--metrics-port``).
    ``--dry-run`` prints the events as JSON lines on stdout, the reports on stderr, and needs no broker;
    without a configured Kafka, ``--once`` publishes through the embedded stack (``publishing``)."""
    from hybridspend.collectors.base import run
    from hybridspend.infra.publish import PrintingPublisher

    from .publishing import publishing

    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not args.dry_run and not config.kafka.bootstrap_servers and not args.once:
        raise UsageError("without kafka.bootstrap_servers the collector runs on the embedded stack: use --once "
                         "(or --dry-run)")
    with (contextlib.nullcontext(PrintingPublisher()) if args.dry_run
          else publishing(config, logical_topics, say=err)) as publisher:
        collector = make(publisher)
        try:
            if args.once:
                report = collector.poll_once()
                (err if args.dry_run else print)(report.summary())
                return 0 if report.ok else 1
            _serve_metrics(args)
            run(collector, _stop_flag(), err)
            return 0
        finally:
            if hasattr(collector, "stop"):
                collector.stop()


def cmd_collect_nvml(args, config: Config) -> int:
    from hybridspend.collectors.k8s import KubernetesInspector
    from hybridspend.collectors.nvml.collector import NvmlCollector, ProcessInspector, default_nvml, host_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nvml = default_nvml()
    try:  # before any service starts
        nvml.nvmlInit()
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        raise UsageError(f"NVML is not available on this machine: {exc}") from None
    inspector = ProcessInspector()
    with _pod_directory(config) as pods:
        if pods is not None:  # a process's pod (from its cgroup) enriched with namespace, owner and pod labels
            inspector = KubernetesInspector(inspector, pods)

        def make(publisher):
            collector = NvmlCollector(config, nvml, host=host_name(config), inspector=inspector,
                                      publisher=publisher, interval_s=args.interval or config.collectors.nvml.interval_seconds)
            collector.start()
            return collector

        return _collect(args, config, ["gpu-samples"], make)


@contextlib.contextmanager
def _pod_directory(config: Config):
    """The cached pod watch when ``collectors.kubernetes.enabled``, else None; the watch ends with the block."""
    settings = config.collectors.kubernetes
    if not settings.enabled:
        yield None
        return
    from hybridspend.collectors.k8s import PodDirectory, api_client

    try:
        pods = PodDirectory(api_client(settings.api_url), watch_timeout_s=settings.watch_timeout_seconds)
    except Exception as exc:
        raise UsageError(f"collectors.kubernetes: no Kubernetes API: {exc}") from None
    pods.start()
    try:
        pods.synced.wait(30)
        yield pods
    finally:
        pods.close()


@contextlib.contextmanager
def _workload_resolver(config: Config):
    """The workload rules, over labels enriched from the Kubernetes API when ``collectors.kubernetes.enabled``."""
    with _pod_directory(config) as pods:
        if pods is None:
            yield config.resolve_workload
        else:
            yield lambda labels: config.resolve_workload(pods.enrich(labels))


def cmd_collect_dcgm(args, config: Config) -> int:
    from hybridspend.collectors.dcgm import DcgmCollector, UrlList

    settings = config.collectors.dcgm
    urls_file = Path(args.urls_file) if args.urls_file else settings.urls_file
    urls = UrlList(args.url or settings.urls, urls_file)
    if not urls.urls and urls_file is None:
        raise UsageError("no dcgm-exporter endpoint: give --url (repeatable), --urls-file or collectors.dcgm.urls")
    interval_s = args.interval or settings.interval_seconds
    with _workload_resolver(config) as resolve:
        return _collect(args, config, ["gpu-samples"], lambda publisher: DcgmCollector(
            urls, publisher, resolve, interval_s, settings.timeout_seconds))


def cmd_collect_prometheus(args, config: Config) -> int:
    from hybridspend.collectors.prometheus import PrometheusCollector

    settings = config.collectors.prometheus
    url = args.url or settings.url
    if not url:
        raise UsageError("no Prometheus: give --url (e.g. http://prometheus:9090) or collectors.prometheus.url")
    checkpoint = _checkpoint(config, args, "prometheus")
    with _workload_resolver(config) as resolve:
        return _collect(args, config, ["gpu-samples"], lambda publisher: PrometheusCollector(
            url, publisher, checkpoint, resolve, step_s=args.step or settings.step_seconds,
            lookback_s=args.lookback or settings.lookback_seconds, delay_s=settings.delay_seconds,
            interval_s=settings.poll_seconds, timeout_s=settings.timeout_seconds, match=settings.match))


def _checkpoint(config: Config, args, name: str):
    """A collector's checkpoint (a dry run keeps its own, so it never skips data for the real one)."""
    from hybridspend.infra.checkpoint import Checkpoint

    return Checkpoint(config.state_dir / "checkpoints" / (f"{name}-dry-run.json" if args.dry_run else f"{name}.json"))


def cmd_collect_aws(args, config: Config) -> int:
    from hybridspend.collectors.aws.collector import AwsCollector

    if not config.collectors.aws.accounts:
        raise UsageError("collectors.aws.accounts is empty: name at least one account and its regions")
    checkpoint = _checkpoint(config, args, "aws")
    return _collect(args, config, ["prices", "instance-events", "cost-lines"],
                    lambda publisher: AwsCollector(config, publisher, checkpoint))


def cmd_collect_gcp(args, config: Config) -> int:
    from hybridspend.collectors.gcp import GcpCollector

    checkpoint = _checkpoint(config, args, "gcp")
    return _collect(args, config, ["prices", "instance-events", "cost-lines"],
                    lambda publisher: GcpCollector(config, publisher, checkpoint))


# -- one-shot commands ------------------------------------------------------------------------------


def cmd_db_migrate(args, config: Config) -> int:
    from hybridspend.infra.local import local_database
    from hybridspend.storage.db import migrate, sync_budgets

    with local_database(config) as dsn:
        before, after, engine = migrate(dsn)
        sync_budgets(dsn, config.budgets)
    state = "already up to date" if before == after else f"migrated from version {before} to {after}"
    print(f"database schema {state} (engine: {engine})")
    return 0


def cmd_dashboards_push(args) -> int:
    from hybridspend.dashboards.push import PushError, datasource_spec, grafana_client, push

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
    from hybridspend.dashboards.build import OUT, write

    for path in write(Path(args.out) if args.out else OUT):
        print(path)
    return 0


def cmd_ingest_focus(args, config: Config) -> int:
    from datetime import datetime, timezone

    from hybridspend.collectors.focus import FocusSummary, file_digest, read_files

    from .publishing import publishing

    paths = [Path(p) for p in args.files]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    # one ingest run is one delivery of the billing periods it contains: it replaces earlier runs'
    # lines, so it is read whole, and found whole, before a single line is published
    version = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    summary = FocusSummary()
    digests = [file_digest(p) for p in paths]
    for _ in read_files(paths, config.catalog(), version, summary, progress=lambda n: err(f"  {n:,} rows checked")):
        pass
    if [file_digest(p) for p in paths] != digests:
        raise UsageError("the files changed while they were read; run the ingest again")
    if summary.files_unread:
        why = f"{', '.join(summary.files_unread)} could not be read whole"
    elif summary.rows_read == 0:  # a header and no rows (a month with no charges): nothing to replace
        _print_focus_summary(summary, args.summary_json)
        err("nothing to publish: the files have no rows")
        return 0
    elif summary.rows_published == 0:
        why = "no row could be read"
    elif summary.rows_rejected and not args.publish_partial:
        why = (f"{summary.rows_rejected} rows were rejected (--publish-partial replaces the bill with the "
               f"{summary.rows_published} rows that could be read)")
    else:
        why = ""
    if why:
        summary.rows_published = 0  # what was readable is not published either
        _print_focus_summary(summary, args.summary_json)
        err(f"hybridspend: nothing published: {why}; a delivery replaces the whole bill of its billing periods")
        return 1
    published = FocusSummary()
    with publishing(config, ["cost-lines"], say=err) as publisher:
        for line in read_files(paths, config.catalog(), version, published,
                               progress=lambda n: err(f"  {n:,} rows published")):
            publisher.send("cost-lines", line.resource_id or line.event_id, line)
        if published.as_json() != summary.as_json():
            raise UsageError("the files changed while they were ingested; run the ingest again")
    _print_focus_summary(summary, args.summary_json)
    return 0


def _print_focus_summary(summary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.as_json(), indent=2))
        return
    lines = [f"read {summary.rows_read} rows, published {summary.rows_published}, rejected "
             f"{summary.rows_rejected}, GPU rows {summary.gpu_rows}"]
    lines += [f"  {one_line(name)}: {t.rows} rows, billed ${t.billed_cost_usd:,.2f}, effective "
              f"${t.effective_cost_usd:,.2f}" for name, t in sorted(summary.by_provider.items())]
    lines += [f"  rejected {one_line(reason)}" for reason in summary.rejections[:20]]  # they quote the file
    print("\n".join(lines))


def cmd_report_monthly(args, config: Config) -> int:
    import psycopg

    from hybridspend.infra.local import local_database
    from hybridspend.reports import monthly

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
        from hybridspend.storage.db import check_schema

        check_schema(conn)
        err(f"reading {args.month} from the database")
        report = monthly.build(conn, config, args.month)
        if not report.workloads:
            err(f"no cost windows in {args.month}: run the pipeline (or `hybridspend demo`) first")
        paths = monthly.write(conn, report, formats, Path(args.out), progress=err, config=config)
    for path in paths:
        print(path)
    return 0


# -- plan ----------------------------------------------------------------------------------------------


def cmd_forecast(args, config: Config) -> int:
    """Spend forecasts for the rest of the month and the next, with calibrated intervals (``forecasting.spend``)."""
    from datetime import datetime, timedelta, timezone

    import psycopg

    from hybridspend.forecasting.spend import LEVELS, calibrated_forecast
    from hybridspend.infra.local import local_database
    from hybridspend.storage import queries
    from hybridspend.storage.db import check_schema

    at = _day_arg(args.at, "--at") if args.at else datetime.now(timezone.utc)
    now = at.replace(minute=0, second=0, microsecond=0)
    month = now.replace(day=1, hour=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    after = (next_month + timedelta(days=32)).replace(day=1)
    rest_h = int((next_month - now).total_seconds() // 3600)
    both_h = int((after - now).total_seconds() // 3600)
    with local_database(config) as dsn, psycopg.connect(dsn) as conn:
        check_schema(conn)
        teams = [args.team] if args.team else [None] + sorted(
            {t for (t,) in conn.execute("SELECT DISTINCT team FROM cost_windows WHERE team <> '' AND "
                                        "window_start >= %s - INTERVAL '180 days'", (now,))})
        series = {team: queries.hourly_spend(conn, now - timedelta(days=182), now, team) for team in teams}
    out = []
    for team in teams:
        first, hours = series[team]
        if not hours:
            if args.team:
                raise UsageError(f"no spend of team {args.team!r} in the half year before {now:%Y-%m-%d %H:%M} UTC: "
                                 "run the pipeline (or `hybridspend demo`) first")
            continue
        spent = sum(hours[max(0, int((month - first).total_seconds() // 3600)):], Decimal(0))
        rest = calibrated_forecast(hours, now, rest_h) if rest_h else None
        nxt = calibrated_forecast(hours, now, both_h, skip_hours=rest_h)
        budget = config.budgets.get(team) if team else None
        entry = {"scope": team or "total", "history_hours": len(hours), "model": nxt.model, "note": nxt.note,
                 "month": f"{month:%Y-%m}", "month_to_date_usd": str(spent),
                 "rest_of_month": _forecast_json(rest, LEVELS) if rest else None,
                 "month_total_usd": str(spent + (rest.total_usd if rest else 0)),
                 "month_total_intervals_usd": {str(level): [str(spent + low), str(spent + high)] for level, (low, high)
                                               in rest.interval_usd.items()} if rest else {},
                 "next_month": dict(_forecast_json(nxt, LEVELS), month=f"{next_month:%Y-%m}"),
                 "budget_usd": str(budget) if budget is not None else None,
                 "budget_overrun_probability": str(rest.probability_above(budget - spent))
                 if rest is not None and budget is not None else None}
        out.append(entry)
    if args.json:
        print(json.dumps({"at": f"{now:%Y-%m-%dT%H:%M:%SZ}", "forecasts": out}, indent=2))
        return 0
    usd = _usd_text
    for e in out:
        print(f"{e['scope']}: {e['history_hours']} h of hourly spend, {e['model']} ({e['note']})")
        rest = e["rest_of_month"]
        print(f"  {e['month']}: {usd(e['month_to_date_usd'])} so far; month total {usd(e['month_total_usd'])}"
              + "".join(f", {level} %: {usd(low)} to {usd(high)}" for level, (low, high)
                        in e["month_total_intervals_usd"].items()) + (f" ({rest['calibration']})" if rest else ""))
        n = e["next_month"]
        print(f"  {n['month']}: {usd(n['total_usd'])}"
              + "".join(f", {level} %: {usd(low)} to {usd(high)}" for level, (low, high) in n["intervals_usd"].items())
              + f" ({n['calibration']})")
        if e["budget_usd"] is not None and e["budget_overrun_probability"] is not None:
            print(f"  budget {usd(e['budget_usd'])}: {Decimal(e['budget_overrun_probability']):.0%} likely to be "
                  f"exceeded this month")
    return 0


def _forecast_json(fc, levels) -> dict:
    return {"from": f"{fc.start:%Y-%m-%dT%H:%M:%SZ}", "hours": len(fc.point_usd), "total_usd": str(fc.total_usd),
            "intervals_usd": {str(level): [str(low), str(high)] for level, (low, high) in fc.interval_usd.items()
                              if level in levels}, "calibration": fc.calibration}


def _usd_text(value) -> str:
    return f"${Decimal(value):,.0f}"


def cmd_plan(args, config: Config) -> int:
    """The options table of one workload from its stored hours (``costmodel.options.plan_workload``)."""
    from datetime import datetime, timedelta, timezone

    import psycopg

    from hybridspend.costmodel.money import micro
    from hybridspend.infra.local import local_database
    from hybridspend.contracts.plans import plan_for
    from hybridspend.storage import queries
    from hybridspend.storage.db import check_schema

    if args.gpus is not None and not 1 <= args.gpus <= 100_000:
        raise UsageError(f"--gpus must be from 1 to 100,000, got {args.gpus}")
    if args.utilization is not None and not 0 < args.utilization <= 1:
        raise UsageError(f"--utilization must be in (0, 1], got {args.utilization}")
    if args.horizon_months is not None and not 1 <= args.horizon_months <= 600:
        raise UsageError(f"--horizon-months must be from 1 to 600, got {args.horizon_months}")
    if args.one_time_usd is not None and args.one_time_usd < 0:
        raise UsageError(f"--one-time-usd must be >= 0, got {args.one_time_usd}")
    until = _day_arg(args.until, "--until") if args.until else datetime.now(timezone.utc)
    since = _day_arg(args.since, "--since") if args.since else until - timedelta(days=30)
    if since >= until:
        raise UsageError(f"--since ({since:%Y-%m-%d}) must be before --until ({until:%Y-%m-%d})")
    with local_database(config) as dsn, psycopg.connect(dsn) as conn:
        check_schema(conn)
        by_class = queries.workload_hours(conn, args.workload, since, until)
        providers = queries.workload_providers(conn, args.workload, since, until)
    if not by_class:
        raise UsageError(f"no cost windows of workload {args.workload!r} from {since:%Y-%m-%d %H:%M} to "
                         f"{until:%Y-%m-%d %H:%M} UTC: run the pipeline (or `hybridspend demo`) first, or widen --since")
    plans = []
    for (environment, gpu_class), hours in sorted(by_class.items()):
        hours = [_what_if(h, args.gpus, args.utilization) for h in hours]
        plan = plan_for(config, args.workload, environment, gpu_class, hours, providers.get((environment, gpu_class), ""),
                        horizon_months=args.horizon_months, discount_rate_pct=args.discount_rate_pct,
                        one_time_usd=args.one_time_usd)
        options = plan.options
        plans.append({"environment": environment, "gpu_class": gpu_class, "hours": len(hours),
                      "horizon_months": plan.horizon_months, "discount_rate_pct": str(plan.discount_rate_pct),
                      "one_time_move_usd": str(micro(plan.one_time_move_usd)),
                      "options": [{"label": o.label, "option": o.result.option, "quantity": o.result.quantity,
                                   "upfront_usd": str(micro(o.result.upfront_usd)),
                                   "monthly_usd": str(micro(o.result.monthly_usd)),
                                   "total_usd": str(micro(o.result.total_usd)),
                                   "npv_usd": str(micro(o.result.npv_usd)),
                                   "breakeven_month": o.result.breakeven_month} for o in options],
                      "cheapest": plan.cheapest.label})
    if args.json:
        print(json.dumps({"workload": args.workload, "since": f"{since:%Y-%m-%dT%H:%M:%SZ}",
                          "until": f"{until:%Y-%m-%dT%H:%M:%SZ}", "plans": plans}, indent=2))
        return 0
    for plan in plans:
        print(f"{args.workload} on {plan['environment']} {plan['gpu_class']}: {plan['hours']} measured hours, repeated"
              f" over {plan['horizon_months']} months; present values at {plan['discount_rate_pct']}% a year")
        width = max(len(o["label"]) for o in plan["options"])
        print(f"  {'option':<{width}}  {'up front $':>14}  {'a month $':>12}  {'total $':>16}  {'present value $':>16}"
              "  overtakes staying")
        for o in plan["options"]:
            overtakes = "-" if o["option"] == "stay" else (
                f"month {o['breakeven_month']}" if o["breakeven_month"] is not None else "never")
            print(f"  {o['label']:<{width}}  {Decimal(o['upfront_usd']):>14,.2f}  {Decimal(o['monthly_usd']):>12,.2f}"
                  f"  {Decimal(o['total_usd']):>16,.2f}  {Decimal(o['npv_usd']):>16,.2f}  {overtakes}")
        print(f"  cheapest by present value: {plan['cheapest']}")
    return 0


def _what_if(hour, gpus: int | None, utilization: Decimal | None):
    """An hour as it would be with ``gpus`` allocated (cost and busy scaled alike) and busy ``utilization``."""
    from hybridspend.costmodel.options import HourOfDemand

    allocated, busy, cost = hour.allocated_gpus, hour.busy_gpus, hour.cost_usd
    if gpus is not None and allocated > 0:
        scale = Decimal(gpus) / allocated
        allocated, busy, cost = Decimal(gpus), busy * scale, cost * scale
    if utilization is not None:
        busy = allocated * utilization
    return HourOfDemand(allocated, busy, cost)


def _day_arg(text: str, name: str):
    from datetime import datetime, timezone

    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise UsageError(f"{name} must be YYYY-MM-DD, got {text!r}") from None


# -- pricing (OpenCost) ------------------------------------------------------------------------------


def _date_arg(text: str | None):
    from datetime import date, datetime, timezone

    if not text:
        return datetime.now(timezone.utc).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at must be YYYY-MM-DD, got {text!r}") from None


def cmd_pricing_export_opencost(args, config: Config) -> int:
    from hybridspend.reports import opencost

    at = opencost.at_datetime(_date_arg(args.at))
    try:
        rows = opencost.export_rows(config, at, label=args.label, node_rows=not args.gpu_only)
    except opencost.OpenCostError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_replacing(out, opencost.render_csv(rows))
    for asset in config.onprem_assets:
        rate = asset.gpu_cost().rate(at)
        print(f"{asset.name}: ${rate.usd_per_gpu_hour:.6f} per GPU-hour (capex {rate.capex_usd_per_gpu_hour:.6f}"
              f" + energy {rate.energy_usd_per_gpu_hour:.6f} + upkeep {rate.upkeep_usd_per_gpu_hour:.6f})")
    print(f"wrote {out} ({len(rows)} rows); label each profile's nodes {args.label}=<profile name>")
    return 0


def cmd_pricing_import_opencost(args) -> int:
    from hybridspend.reports import opencost

    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{args.file}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    try:
        rows = opencost.parse_csv(text, args.file)
        imported = opencost.import_profiles(rows, _date_arg(args.at), args.gpus_per_node, args.nodes)
    except (opencost.OpenCostError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(opencost.profiles_yaml(imported, args.file, opencost.skipped_classes(rows)), end="")
    return 0


def cmd_bench(args) -> int:
    # a separate program: the benchmarks drive the entrypoints, never the reverse
    import subprocess

    import hybridspend

    repository = Path(hybridspend.__file__).resolve().parents[1]
    if not (repository / "bench" / "__main__.py").is_file():
        raise UsageError("the benchmarks live in the repository (bench/), not in the installed package: run "
                         "`hybridspend bench` from a clone")
    return subprocess.call([sys.executable, "-m", "bench", *(["--quick"] if args.quick else []),
                            *(["--runs", str(args.runs)] if args.runs else [])], cwd=repository)


def cmd_demo(args) -> int:
    from hybridspend.demo import run_demo

    return run_demo(args)


def cmd_simulate(args) -> int:
    from hybridspend.collectors.scenario import load_scenario
    from hybridspend.simulate import render, run_scenario

    scenario = load_scenario(args.scenario)
    say = (lambda m: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    result = run_scenario(scenario, workers=args.workers, restart_worker_at_hours=args.kill_worker_at,
                          state_dir=Path(args.state_dir) if args.state_dir else None, say=say)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def cmd_stress(args) -> int:
    from hybridspend.collectors.scenario import load_scenario
    from hybridspend.stress import stress

    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, got {args.runs}")
    differed = stress(load_scenario(args.scenario), args.runs, seed=args.seed, cpu_load=args.cpu_load,
                      max_workers=args.max_workers, say=lambda m: print(m, flush=True))
    return 1 if differed else 0


# -- parser ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command of the table below: its words, its function, its help and its own arguments."""

    words: tuple[str, ...]  # ("collect", "dcgm")
    func: Callable[..., int]  # func(args), or func(args, config) when ``config``
    help: str
    description: str | None = None
    args: tuple = ()  # arg(...) specs, in order
    config: bool = False  # --config and --state-dir; the resolved Config is passed to func
    metrics: bool = False  # --metrics-port and --metrics-host (served while it runs)


def arg(*flags: str, group: str | None = None, **kwargs) -> tuple:
    """An argument as ``add_argument`` takes it; ``group`` names the argument group it is shown under."""
    return flags, group, kwargs


ONCE = arg("--once", action="store_true", help="one poll, then exit (on embedded defaults: through the local stack)")
DRY_RUN = arg("--dry-run", action="store_true",
              help="print the events as JSON lines on stdout instead of publishing (no broker needed)")
JSON = arg("--json", action="store_true", help="print one JSON object")
HORIZON = "options over a horizon (any of these adds the table: on demand, a commitment, buying)"

# the words before a command: their help and what the next word is called
GROUPS = {
    "config": ("configuration tools", "ACTION"),
    "collect": ("run a collector", "SOURCE"),
    "ingest": ("ingest billing files", "FORMAT"),
    "report": ("reports for finance", "REPORT"),
    "dashboards": ("Grafana dashboards as code", "ACTION"),
    "db": ("database tools", "ACTION"),
    "pricing": ("hand prices to and from other tools (OpenCost)", "ACTION"),
}

CONFIG_ARGS = (
    arg("--config", help="YAML configuration (default: $HYBRIDSPEND_CONFIG, <state dir>/config.yaml, else the "
        "bundled example)"),
    arg("--state-dir", help="local state directory (default: ./.hybridspend)"),
)


COMMANDS = (
    Command(("tco",), cmd_tco, "own-vs-rent calculator for one GPU class",
            "Fully loaded on-prem cost per GPU-hour against a cloud price, at a utilization.", (
                arg("--gpu-price-usd", type=_dec("--gpu-price-usd"), required=True, help="purchase price per GPU, USD"),
                arg("--amortization-months", type=int, required=True,
                    help="months over which the price is amortized"),
                arg("--power-w", type=_dec("--power-w"), required=True, help="average power draw per GPU, watts"),
                arg("--pue", type=_dec("--pue"), required=True, help="power usage effectiveness of the facility (>= 1)"),
                arg("--usd-per-kwh", type=_dec("--usd-per-kwh"), required=True, help="electricity price, USD per kWh"),
                arg("--upkeep-usd-per-year", type=_dec("--upkeep-usd-per-year"), required=True,
                    help="support + facility + staff per GPU per year, USD"),
                arg("--cloud-usd-per-gpu-hour", type=_dec("--cloud-usd-per-gpu-hour"), required=True,
                    help="cloud price per GPU-hour, USD"),
                arg("--utilization", type=_dec("--utilization"), required=True,
                    help="busy GPU-hours / allocated GPU-hours, in (0, 1]"),
                arg("--gpus", type=int, default=1, help="number of GPUs (default 1)"),
                arg("--horizon-months", group=HORIZON, type=int, metavar="H",
                    help="months compared (default: --amortization-months)"),
                arg("--discount-rate-pct", group=HORIZON, type=_dec("--discount-rate-pct"), metavar="R",
                    help="annual cost of capital for present values, percent (default 8)"),
                arg("--commitment-usd-per-gpu-hour", group=HORIZON, type=_dec("--commitment-usd-per-gpu-hour"),
                    metavar="K", help="a reserved instance, savings plan or committed-use rate per GPU-hour, paid "
                    "for all hours"),
                arg("--commitment-term-months", group=HORIZON, type=int, metavar="T",
                    help="the commitment's term (12, 36, ...)"),
                arg("--one-time-usd", group=HORIZON, type=_dec("--one-time-usd"), metavar="O",
                    help="one-time cost of moving to owned GPUs (data egress, migration work), at month 0"),
                JSON)),
    Command(("forecast",), cmd_forecast, "spend forecasts for the rest of the month and the next, with intervals",
            "Forecasts the estimated GPU spend, in total and per team (or --team), for the rest of this month and "
            "for the next, from the stored hourly spend: statsforecast's MSTL with daily and weekly seasonality "
            "(daily only under two weeks of history, the mean hour under two days; the output says which). "
            "The 80 % and 95 % intervals of each total come from a bootstrap of whole days of the model's errors, "
            "calibrated on the history's own past forecasts where it is long enough. A team with a budget gets the "
            "probability of exceeding it this month.", (
                arg("--team", help="one team (default: the total and every team)"),
                arg("--at", metavar="YYYY-MM-DD", help="forecast as of this day, 00:00 UTC (default: now)"),
                JSON,
            ), config=True),
    Command(("plan",), cmd_plan, "the options for one workload from its stored data: stay, commit, buy, move",
            "Every option for one workload over a horizon, from its measured hours repeated: staying as it runs, "
            "cloud commitments sized to its demand floor, buying whole owned nodes, moving to the cloud on demand "
            "or committed; each with its total, present value and the month it overtakes staying.", (
                arg("workload"),
                arg("--since", metavar="YYYY-MM-DD", help="first day of the evidence (default: 30 days before --until)"),
                arg("--until", metavar="YYYY-MM-DD", help="the day after the evidence (default: now)"),
                arg("--gpus", type=int, help="what if it ran on this many GPUs every hour (cost scaled alike)"),
                arg("--utilization", type=_dec("--utilization"), help="what if it were busy this share, (0, 1]"),
                arg("--horizon-months", type=int,
                    help="months compared (default: the owned profile's amortization)"),
                arg("--discount-rate-pct", type=_dec("--discount-rate-pct"),
                    help="annual cost of capital, percent (default: thresholds.discount_rate_pct, 8)"),
                arg("--one-time-usd", type=_dec("--one-time-usd"),
                    help="one-time cost of moving (data egress, migration work), at month 0 of a move or purchase "
                    "(default: from moves.workloads in the configuration)"),
                JSON), config=True),
    Command(("config", "check"), cmd_config_check, "validate a configuration and print it with secrets redacted",
            args=(arg("file"),)),
    Command(("config", "reference"), cmd_config_reference,
            "print every configuration field with its type, default and meaning (Markdown)",
            "Prints the configuration reference generated from the configuration's models: the page "
            "docs/configuration-reference.md is this output."),
    Command(("demo",), cmd_demo, "run the whole pipeline on embedded defaults over a simulated fleet",
            "Starts a local broker and PostgreSQL, the Faust worker, the sink and the alerter, replays a simulated "
            "day of a hybrid fleet at an accelerated clock, and prints the workloads, their rates in each "
            "environment, the crossings and the alerts.", (
                *CONFIG_ARGS,
                arg("--seed", type=int, default=42, help="seed of the simulated fleet (default 42)"),
                arg("--hours", type=float, default=24, help="simulated hours (default 24)"),
                arg("--speed", type=float, default=2400,
                    help="simulated seconds per wall-clock second (default 2400: a day in 36 s)"))),
    Command(("simulate",), cmd_simulate, "run a scenario file through the real pipeline and print the decisions",
            "Runs a described situation (assets, offers, workloads with utilization timelines, instance starts and "
            "stops, prices, the bill) through the local broker, the Faust worker(s), the sink and PostgreSQL, and "
            "prints the decisions (workload, from and to environment, kind, effective rates, utilization, monthly "
            "savings, confidence), the totals and the estimate-vs-billed reconciliation. The format is in the "
            "documentation, docs/scenarios.md.", (
                arg("scenario", help="the scenario YAML file"),
                arg("--json", action="store_true", help="print the result as JSON"),
                arg("--workers", type=int, default=1, choices=range(1, 9), metavar="N",
                    help="Faust workers sharing the partitions (default 1)"),
                arg("--kill-worker-at", type=float, metavar="HOUR",
                    help="fault injection: SIGKILL the first worker at this simulated hour and restart it"),
                arg("--state-dir", help="keep the run's database and logs here (default: a temporary directory)"))),
    Command(("stress",), cmd_stress,
            "run a scenario many times under faults and compare every run's cost windows with one worker's",
            "Runs the scenario once with one worker (the reference), then --runs times with faults drawn from "
            "--seed: 1 to 3 Faust workers, a worker killed with SIGKILL and restarted, the sink killed and "
            "restarted, a worker joining late (a rebalance mid-stream), and with --cpu-load a busy process on the "
            "CPU. Every run's cost windows are compared row by row with the reference's and the first differing "
            "rows are printed. Exits 1 when any run differed. Each run takes the time of a `simulate` run plus its "
            "faults (about 20-40 s for contracts/examples/scenarios/stress-day.yaml).", (
                arg("scenario", help="the scenario YAML file"),
                arg("--runs", type=int, default=10, help="faulted runs after the reference (default 10)"),
                arg("--seed", type=int, default=0, help="seed of the first run's faults; run k uses seed + k (default 0)"),
                arg("--cpu-load", action="store_true", help="in about half the runs, a busy process competes for the CPU"),
                arg("--max-workers", type=int, default=3, choices=range(1, 9), metavar="N",
                    help="most workers a run starts with (default 3)"))),
    Command(("worker",), cmd_worker, "run a Faust stream worker (scale out by starting more)", config=True,
            metrics=True),
    Command(("sink",), cmd_sink,
            "write samples, cost windows, cost lines, prices, decisions and dead letters to the database",
            config=True, metrics=True),
    Command(("alerter",), cmd_alerter, "deliver decisions to Slack through the durable outbox",
            args=(arg("--dry-run", action="store_true", help="print alerts instead of posting them"),),
            config=True, metrics=True),
    Command(("collect", "nvml"), cmd_collect_nvml, "on-prem GPUs of this node through NVML", args=(
        arg("--interval", type=float, help="seconds between samples (default from config)"), ONCE, DRY_RUN),
        config=True, metrics=True),
    Command(("collect", "dcgm"), cmd_collect_dcgm,
            "on-prem GPUs read from the dcgm-exporter endpoints a cluster already runs",
            "Scrapes dcgm-exporter endpoints (Prometheus text format) every interval and publishes one "
            "gpu_sample.v1 per node with all its GPUs and MIG instances, attributed to pods (pod/namespace/"
            "container labels) or Slurm jobs (hpc_job) through the workload rules. A failing endpoint is reported; "
            "the others go on. --dry-run prints each event as one JSON line on stdout and needs no broker.", (
                arg("--url", action="append", metavar="URL", help="an exporter's metrics URL, e.g. "
                    "http://node-1:9400/metrics (repeatable; default from config)"),
                arg("--urls-file", metavar="FILE",
                    help="file of URLs, one a line (# comments); re-read when it changes"),
                arg("--interval", type=float, help="seconds between scrapes (default from config: 30)"),
                ONCE, DRY_RUN), config=True, metrics=True),
    Command(("collect", "prometheus"), cmd_collect_prometheus,
            "on-prem GPUs read back from a Prometheus that scrapes dcgm-exporter",
            "Reads the dcgm-exporter metrics from Prometheus's HTTP API (/api/v1/query_range) since the checkpoint "
            "and publishes the same gpu_sample.v1 events as `collect dcgm`, one per node and step. The first run "
            "reaches back collectors.prometheus.lookback_seconds. --dry-run prints the events as JSON lines (with "
            "its own checkpoint, so a dry run never skips data for the real one).", (
                arg("--url", help="Prometheus base URL, e.g. http://prometheus:9090 (default from config)"),
                arg("--step", type=float, help="seconds between samples (default from config: 30)"),
                arg("--lookback", type=float, help="seconds the first run reaches back (default from config: 3600)"),
                ONCE, DRY_RUN), config=True, metrics=True),
    Command(("collect", "aws"), cmd_collect_aws, "AWS prices, GPU instances and events, Cost Explorer, billing exports",
            "Publishes GPU prices (Pricing API, spot history), GPU instance inventory and EventBridge state/"
            "spot-interruption events (via SQS), hourly Cost Explorer cost and FOCUS / CUR 2.0 exports from S3, "
            "for every account and region in collectors.aws. Credentials: boto3's standard chain, or a role per "
            "account.", (ONCE, DRY_RUN), config=True, metrics=True),
    Command(("collect", "gcp"), cmd_collect_gcp, "GCP GPU prices (Cloud Billing Catalog), GPU VMs and billing export rows",
            "Publishes the GPU VMs of collectors.gcp.projects as instance events, GPU and GPU-VM SKU prices from "
            "the Cloud Billing Catalog (Application Default Credentials) and the billing export's rows newer than "
            "the checkpoint (collectors.gcp.billing_export_glob).", (ONCE, DRY_RUN), config=True, metrics=True),
    Command(("ingest", "focus"), cmd_ingest_focus, "FOCUS 1.0-1.2 billing files (CSV, CSV.gz, Parquet) as cost lines",
            "Reads FOCUS files and publishes their rows as cost lines. Rows that cannot be read are rejected with "
            "file, row and reason; a file missing a required column is rejected whole. Ingest all files of a "
            "billing period in one run: a later run of the same period replaces the lines of the earlier one (a "
            "restatement).", (
                arg("files", nargs="+", metavar="FILE"),
                arg("--summary-json", action="store_true", help="print the summary as one JSON object"),
                arg("--publish-partial", action="store_true",
                    help="publish the rows that could be read even when others were rejected (they replace the "
                    "earlier delivery of the same billing periods); by default a file with rejected rows "
                    "publishes nothing")), config=True),
    Command(("report", "monthly"), cmd_report_monthly, "the monthly repatriation / migration report",
            "Per workload: environment, busy and allocated GPU-hours, utilization, cost (estimated and billed), "
            "effective $ per busy GPU-hour, the cost in the other environment, the recommendation and annualized "
            "savings; idle cost; charts; every assumption; and the on-prem costs as a FOCUS dataset. Reads the "
            "configured database, else the local state that `hybridspend demo` left.", (
                arg("--month", required=True, help="YYYY-MM"),
                arg("--format", default="md,csv,html,pdf,focus",
                    help="comma-separated: md, csv, html, pdf, focus (default all)"),
                arg("--out", default="reports-out", help="output folder (default ./reports-out)")), config=True),
    Command(("dashboards", "push"), cmd_dashboards_push,
            "provision folder, datasource and dashboards through Grafana's API",
            "Idempotent: a second push changes nothing. A dashboard that changes in Grafana while the push runs is "
            "reported as a version conflict, never overwritten.", (
                arg("--grafana-url", required=True, help="e.g. https://grafana.example.com"),
                arg("--token-file", required=True, help="file holding a Grafana service-account token (Editor)"),
                arg("--db-host", default="timescaledb:5432", help="database host:port as Grafana reaches it"),
                arg("--db-name", default="hybridspend"),
                arg("--db-user", default="hybridspend_grafana",
                    help="a read-only role; set its password in Grafana or by file provisioning"))),
    Command(("dashboards", "build"), cmd_dashboards_build,
            "write the dashboard JSON files (dashboards/json by default)", args=(arg("--out", help="output folder"),)),
    Command(("bench",), cmd_bench, "run the benchmarks and write bench/results.json",
            "Runs every benchmark on an embedded broker and PostgreSQL, three times by default; prints each "
            "figure's median and spread and writes them, with the commit, cores, CPU model and broker profile, to "
            "bench/results.json (--quick: a smoke test, to bench/results-quick.json). The first run seeds the "
            "report's and the panels' databases (about 25 minutes on 2 cores, never timed); the others reuse "
            "them. A full run of three takes about two hours.", (
                arg("--quick", action="store_true", help="smaller inputs, one run: a smoke test, never a result"),
                arg("--runs", type=int, default=None, help="how many passes (default 3 full, 1 quick)"))),
    Command(("db", "migrate"), cmd_db_migrate, "create or upgrade the schema (idempotent)", config=True),
    Command(("pricing", "export-opencost"), cmd_pricing_export_opencost,
            "write OpenCost's custom-pricing CSV with our fully loaded on-prem GPU price",
            "Writes OpenCost's custom-pricing CSV: per asset profile a 'gpu' row whose MarketPriceHourly is the "
            "fully loaded $ per GPU-hour on the given day (capex while amortizing + energy + upkeep) and a $0 "
            "'node' row, both matched on a node label whose value is the profile name (label the nodes, e.g. "
            "kubectl label node dgx-a100-1 hybridspend.io/asset-profile=dgx-a100). EndTimestamp is the day capex "
            "ends, while it has not yet. Point OpenCost at the file (CSV_PATH) and it shows the same on-prem GPU "
            "price.", (
                arg("--out", required=True, metavar="FILE.csv", help="the CSV to write"),
                arg("--at", metavar="YYYY-MM-DD", help="price as of this day (default: today, UTC)"),
                arg("--label", default="hybridspend.io/asset-profile",
                    help="node label holding the profile name (default hybridspend.io/asset-profile)"),
                arg("--gpu-only", action="store_true",
                    help="only the gpu rows (when merging into a CSV that already prices the nodes)")), config=True),
    Command(("pricing", "import-opencost"), cmd_pricing_import_opencost,
            "print asset profiles (YAML) from an OpenCost pricing CSV's GPU rows",
            "Reads an OpenCost custom-pricing CSV and prints an onprem_assets section with one asset profile per "
            "'gpu' row. Each is a flat rate (MarketPriceHourly per GPU-hour carried as upkeep, no capex, power or "
            "PUE), marked as such: a starting point to refine with the hardware's own figures.", (
                arg("file", metavar="FILE.csv"),
                arg("--gpus-per-node", type=int, default=8, help="GPUs per node of each profile (default 8)"),
                arg("--nodes", type=int, default=1, help="nodes per profile (default 1)"),
                arg("--at", metavar="YYYY-MM-DD", help="in-service date of the profiles (default: today, UTC)"))),
)

def _metrics_args() -> tuple:
    return (
        arg("--metrics-port", type=int, metavar="PORT",
            help="serve Prometheus metrics on http://HOST:PORT/metrics while it runs (0: any free port)"),
        arg("--metrics-host", metavar="HOST", default=os.environ.get("HYBRIDSPEND_METRICS_HOST", "127.0.0.1"),
            help="the address the metrics server listens on (default $HYBRIDSPEND_METRICS_HOST, else 127.0.0.1: "
            "this machine only; the container image sets 0.0.0.0 for Prometheus to scrape)"),
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="hybridspend",
        description="Live hybrid GPU spend: what a busy GPU-hour costs on-prem and in the cloud, "
        "and when a workload should move.",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    levels = {(): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for command in COMMANDS:
        for depth in range(1, len(command.words)):
            prefix = command.words[:depth]
            if prefix not in levels:
                help_text, metavar = GROUPS[prefix[-1]]
                group = levels[prefix[:-1]].add_parser(prefix[-1], help=help_text, description=help_text)
                levels[prefix] = group.add_subparsers(dest=f"{'_'.join(prefix)}_command", metavar=metavar,
                                                      required=True)
        p = levels[command.words[:-1]].add_parser(command.words[-1], help=command.help,
                                                  description=command.description or command.help)
        groups: dict[str, argparse._ArgumentGroup] = {}
        extra = (CONFIG_ARGS if command.config else ()) + (_metrics_args() if command.metrics else ())
        for flags, group, kwargs in command.args + extra:
            target = p if group is None else groups.setdefault(group, p.add_argument_group(group))
            target.add_argument(*flags, **kwargs)
        p.set_defaults(command_spec=command)
    return parser


def _unwind_on_sigterm(signum, frame):
    """SIGTERM ends a one-shot command (demo, simulate, stress, ingest, ...) the way Ctrl-C does:
    unwinding, so that the local broker, database, workers and any CPU load it started are stopped
    with it instead of left running.  The long-running services replace this with ``_stop_flag``."""
    raise SystemExit(128 + signal.SIGTERM)


def _redacted_excepthook(kind, value, tb) -> None:
    """An unexpected error is a bug: its traceback is printed for the report, with secrets masked."""
    import traceback

    text = "".join(traceback.format_exception(kind, value, tb))
    print(redact(text) + "hybridspend: internal error (a bug); the traceback above has secrets masked",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _unwind_on_sigterm)
    install_log_redaction()
    quiet_client_diagnostics()
    sys.excepthook = _redacted_excepthook
    threading.excepthook = lambda a: _redacted_excepthook(a.exc_type, a.exc_value, a.exc_traceback)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning, module="pynvml")
    from hybridspend.costmodel import CostModelError
    from hybridspend.storage.db import SchemaError

    command = args.command_spec
    try:
        if command.config:
            return command.func(args, resolve_config(args.config, args.state_dir))
        return command.func(args)
    except (ConfigError, CostModelError, UsageError, SchemaError, ConnectionError) as exc:
        print(f"hybridspend: error: {printable(redact(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
