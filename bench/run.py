"""`hybridspend bench [--quick] [--runs N]`: run every benchmark on embedded local services, several
times; print each figure's median and spread; write the results file (``bench/results.py``)."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

from hybridspend.infra.broker import LOCAL_PROFILE
from hybridspend.infra.local import LocalBroker, LocalPostgres

from . import alerts, anomalies, capacity, collector, forecast, panels, pipeline, report, sink
from .results import calibrate, results_path, summarize
from .seeded import kept_database


def _database(admin_dsn: str, name: str) -> str:
    return sink._fresh_database(admin_dsn, name)


def run_once(quick: bool, seeded_pgdata: Path, say=print) -> dict:
    """One pass of every benchmark, each on fresh embedded services, but the report's and the panels' databases:
    they live in ``seeded_pgdata`` across passes, seeded by the first (``bench/seeded.py``; their server is
    restarted, cold, for each pass)."""
    figures: dict = {"cpu_calibration_s": calibrate()}
    say(f"this machine: {figures['cpu_calibration_s']:.2f} s of one core for a fixed piece of Python (calibrate)")
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        broker = LocalBroker(log_path=Path(tmp) / "broker.log").start()
        pg = LocalPostgres(Path("/tmp") / f"hs-bench-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True,
                           database="postgres").start()
        try:
            say("pipeline: GPU samples through one Faust worker, a do-nothing Faust agent, raw aiokafka")
            figures.update(pipeline.run(broker.bootstrap, quick, say))
            say("sink: GPU-sample rows from Kafka into PostgreSQL, beside a raw COPY of the same rows")
            figures.update(sink.run(broker.bootstrap, LOCAL_PROFILE, pg.dsn, quick, say))
            say("alerts: from the sample that completes a crossing to the message at a local Slack receiver")
            figures.update(alerts.run(broker.bootstrap, LOCAL_PROFILE, _database(pg.dsn, "bench_alerts"), quick, say))
            pg.stop()  # one PostgreSQL at a time
            seeded = LocalPostgres(seeded_pgdata, database="postgres").start()
            try:
                say("report: the monthly report")
                figures.update(report.run(lambda name: kept_database(seeded.dsn, name), quick, say))
                say("panels: every Grafana panel's SQL over 24 h, 7, 30 and 90 days of 10,000 GPUs")
                figures.update(panels.run(lambda name: kept_database(seeded.dsn, name), quick, say))
            finally:
                seeded.stop()
            say("collector: NVML collector CPU per sample, 8 GPUs")
            figures.update(collector.run(quick, say))
            say("forecast: next week's spend from every second day of two scenarios, against what happened")
            figures.update(forecast.run(quick, say))
            say("anomalies: a month with 20 put in and a month without, through the pipeline")
            figures.update(anomalies.run(quick, say))
        finally:
            broker.stop()
            pg.stop()
    say("capacity: the whole stack under a fleet at 1 Hz, stepped up until it no longer keeps up (minutes a step)")
    figures.update(capacity.run(quick, say))
    return figures


def main(quick: bool = False, runs: int | None = None, out: Path | None = None, say=print) -> dict:
    """Full runs (default 3) give the result; ``quick`` (default 1 run) is a smoke test in its own file."""
    runs = runs or (1 if quick else 3)
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    passes = []
    with tempfile.TemporaryDirectory(prefix="hs-bench-seeded-", dir="/tmp") as seeded_dir:
        for n in range(runs):
            say(f"== run {n + 1} of {runs}{' (quick: a smoke test, not a result)' if quick else ''}")
            passes.append(run_once(quick, Path(seeded_dir) / "pgdata", say))
    results = summarize(passes, quick=quick, measured_at=measured_at, broker_profile=LOCAL_PROFILE.name)
    say("")
    width = max(len(k) for k in results["median"])
    for key, value in results["median"].items():
        lo, hi = results["spread"][key]
        say(f"{key:<{width}}  {value:>14,.4g}   ({lo:,.4g} – {hi:,.4g})")
    say("")
    for name, met in results["targets_met"].items():
        say(f"  {'met   ' if met else 'MISSED'}  {name}")
    out = out or results_path(quick)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"\nwrote {out}" + ("" if quick else "; `python -m bench --readme` puts it in docs/performance.md"))
    return results
