"""The one collector interface: poll once, report, checkpoint.

A collector turns one outside source (NVML, dcgm-exporter, Prometheus, AWS, GCP) into contract
events.  ``poll_once`` publishes whatever is new since its checkpoint, flushes the publisher, and
only then advances the checkpoint, so a crash repeats nothing it acknowledged and loses nothing it
had not.  ``run`` is the loop every long-running ``hybridspend collect`` uses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from hybridspend.contracts.redact import one_line, printable
from hybridspend.infra import metrics

log = logging.getLogger(__name__)


@dataclass
class CollectReport:
    """What one poll sent, by kind of event, and the problems it met (each names its source)."""

    source: str
    sent: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        self.sent[what] = self.sent.get(what, 0) + n

    @property
    def ok(self) -> bool:
        """Nothing went wrong, or something was still sent (one failing source does not fail the poll)."""
        return not self.errors or bool(self.sent)

    def summary(self, max_errors: int = 50) -> str:
        sent = ", ".join(f"{n} {what}" for what, n in sorted(self.sent.items())) or "nothing new"
        lines = [f"{self.source}: sent {sent}; {len(self.errors)} problem(s)"]
        lines += [f"  {one_line(error)}" for error in self.errors[:max_errors]]  # errors quote what sources said
        return "\n".join(lines)


class Collector(Protocol):
    name: str
    interval_s: float

    def poll_once(self) -> CollectReport:
        """Publish what is new since the checkpoint, flush, then advance the checkpoint."""


def run(collector: Collector, stop: Callable[[], bool], say: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll every ``collector.interval_s`` seconds until ``stop()``; each poll's report goes to ``say``.
    A poll that fails outright (a bug, a broker that refuses) is reported and the next one runs on
    time: one bad input never ends the collector for every source."""
    metrics.COLLECTOR_LAST_SUCCESS.labels(collector.name).set(time.time())  # a collector failing from the start alerts too
    while not stop():
        started = time.monotonic()
        try:
            report = collector.poll_once()
            say(report.summary())
            metrics.collector_polled(collector.name, report.ok, report.sent, report.errors, time.time())
        except Exception as exc:
            log.exception("%s: the poll failed", collector.name)
            say(printable(f"{collector.name}: the poll failed ({type(exc).__name__}: {exc}); trying again in "
                          f"{collector.interval_s:g} s"))
            metrics.collector_polled(collector.name, False, {}, [f"{type(exc).__name__}: {exc}"], time.time())
        deadline = started + collector.interval_s
        while not stop() and time.monotonic() < deadline:
            sleep(min(0.5, max(0.0, deadline - time.monotonic())))
