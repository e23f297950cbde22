"""`hybridspend bench [--quick]`: run the benchmarks on embedded local services, print a table,
write bench/results.json."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

from hybridspend.broker import LOCAL_PROFILE
from hybridspend.local import LocalBroker, LocalPostgres

from . import sink

RESULTS = Path(__file__).parent / "results.json"


def main(quick: bool = False, out: Path = RESULTS, say=print) -> dict:
    figures: dict = {"quick": quick, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        broker = LocalBroker(log_path=Path(tmp) / "broker.log").start()
        pg = LocalPostgres(Path("/tmp") / f"hs-bench-pg-{uuid.uuid4().hex[:8]}", delete_on_stop=True,
                           database="postgres").start()
        try:
            say("sink: GPU-sample rows from Kafka into PostgreSQL, beside a raw COPY of the same rows")
            figures.update(sink.run(broker.bootstrap, LOCAL_PROFILE, pg.dsn, quick, say))
        finally:
            broker.stop()
            pg.stop()
    say("")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        say(f"{key:<{width}}  {value}")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    say(f"\nwrote {out}")
    return figures
