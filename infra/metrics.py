"""Prometheus metrics of every service: one registry, the metric definitions, the ``/metrics`` server.

Pipeline health (per service: ``worker``, ``sink``, ``alerter``):

* ``hybridspend_events_in_total{service, stream}``, ``hybridspend_events_out_total{service, stream}``:
  records consumed per topic, and records produced per topic (worker) or rows stored per table (sink);
* ``hybridspend_consumer_lag_records{group, topic}``: records behind the end of the topic;
* ``hybridspend_dead_letters_total{source_topic, reason}``: dead letters stored, by kind of reason;
* ``hybridspend_window_close_delay_seconds``: from a cost window's end (event time) to its arrival
  at the sink (wall clock);
* ``hybridspend_alert_outbox_pending``: alerts waiting in the outbox;
* ``hybridspend_source_last_event_age_seconds{source}``: seconds since the newest event (event
  time) of each source.

Cost figures: ``node_gpu_hourly_cost{node, instance_type, provider}`` (OpenCost's name and labels:
the hourly cost of one GPU of the node; for owned nodes our fully loaded rate, ``instance_type``
the asset profile, ``provider`` ``onprem``), ``hybridspend_workload_usd_per_busy_gpu_hour{workload,
environment}`` (last 24 h), ``hybridspend_breakeven_utilization{gpu_class}`` and
``hybridspend_recommendation{workload, hybridspend_recommendation=<state>}`` (a state set: 1 for
the workload's latest decision).

Every label value comes from a bounded set: fixed names (services, topics, GPU classes, states),
or ``bounded()`` which passes the first values it sees and folds the rest into ``other``.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from hybridspend.contracts.redact import redact

REGISTRY = CollectorRegistry()
OTHER = "other"
MAX_WORKLOADS = 50  # workloads exported by cost, largest first
RECOMMENDATION_STATES = ("stay", "migrate_to_cloud", "repatriate_fill_idle", "repatriate_buy_capacity",
                         "commit_in_cloud", "trending_repatriation", OTHER)


class BoundedLabel:
    """A label's values, bounded: the first ``limit`` distinct values pass, later ones become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its values: "gpu_sample.v1: 'power_mw' must be >= N"."""
    kind = re.sub(r",? got .*$", "", reason.splitlines()[0] if reason else "unknown")
    kind = re.sub(r"(?<![\w.])-?\d+(\.\d+)?", "N", kind)  # numbers, not the digits of names like v1
    return kind[:120] or "unknown"


DEAD_LETTER_REASONS = BoundedLabel(64)

EVENTS_IN = Counter("hybridspend_events_in", "Records consumed, per topic (the sink counts data records, not"
                    " watermarks)", ["service", "stream"], registry=REGISTRY)
EVENTS_OUT = Counter("hybridspend_events_out", "Records produced per topic (worker) or rows stored per table (sink)",
                     ["service", "stream"], registry=REGISTRY)
DEAD_LETTERS = Counter("hybridspend_dead_letters", "Dead letters stored, by source topic and kind of reason",
                       ["source_topic", "reason"], registry=REGISTRY)
CONSUMER_LAG = Gauge("hybridspend_consumer_lag_records", "Records behind the end of the topic, per consumer group",
                     ["group", "topic"], registry=REGISTRY)
WINDOW_CLOSE_DELAY = Histogram(
    "hybridspend_window_close_delay_seconds", "From a cost window's end (event time) to its arrival at the sink",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600), registry=REGISTRY)
OUTBOX_PENDING = Gauge("hybridspend_alert_outbox_pending", "Alerts waiting in the outbox", registry=REGISTRY)
NODE_GPU_HOURLY_COST = Gauge(
    "node_gpu_hourly_cost", "Hourly cost of one GPU of the node, USD (owned nodes: the fully loaded rate)",
    ["node", "instance_type", "provider"], registry=REGISTRY)
WORKLOAD_USD_PER_BUSY_GPU_HOUR = Gauge(
    "hybridspend_workload_usd_per_busy_gpu_hour", "What one busy GPU-hour of the workload cost over the last 24 h",
    ["workload", "environment"], registry=REGISTRY)
BREAKEVEN_UTILIZATION = Gauge(
    "hybridspend_breakeven_utilization",
    "Owned fully loaded rate / cheapest on-demand cloud rate per GPU: below it renting busy hours is cheaper",
    ["gpu_class"], registry=REGISTRY)
COLLECTOR_POLLS = Counter("hybridspend_collector_polls", "Polls of a collector, by outcome (ok: something sent or"
                          " nothing wrong)", ["collector", "outcome"], registry=REGISTRY)
COLLECTOR_PROBLEMS = Counter("hybridspend_collector_problems", "Problems a collector's polls reported, by kind",
                             ["collector", "kind"], registry=REGISTRY)
COLLECTOR_SENT = Counter("hybridspend_collector_events_sent", "Events a collector published, by kind",
                         ["collector", "kind"], registry=REGISTRY)
COLLECTOR_LAST_SUCCESS = Gauge("hybridspend_collector_last_success_timestamp_seconds",
                               "Wall-clock time of the collector's last successful poll (its start before one)",
                               ["collector"],
                               registry=REGISTRY)
COLLECTOR_PROBLEM_KINDS = BoundedLabel(64)
RECOMMENDATION = Enum("hybridspend_recommendation", "The workload's latest breakeven decision", ["workload"],
                      states=list(RECOMMENDATION_STATES), registry=REGISTRY)


class _Ages:
    """A time per label value (the newest seen), exposed as its age in seconds at scrape time."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, value: str, at_s: float) -> None:
        with self._lock:
            if at_s > self._times.get(value, float("-inf")):
                self._times[value] = at_s

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        now = time.time()
        with self._lock:
            for value, at_s in sorted(self._times.items()):
                family.add_metric([value], max(0.0, now - at_s))
        yield family


# newest event time per source, and when each collector checkpoint was last moved (wall clock)
LAST_EVENTS = _Ages("hybridspend_source_last_event_age_seconds",
                    "Seconds since the newest event (event time) of each source", "source")
CHECKPOINTS = _Ages("hybridspend_collector_checkpoint_age_seconds",
                    "Seconds since a collector's checkpoint was last moved", "checkpoint")
REGISTRY.register(LAST_EVENTS)
REGISTRY.register(CHECKPOINTS)


def collector_polled(name: str, ok: bool, sent: dict[str, int], problems: list[str], now_s: float) -> None:
    """One poll's report in the collector series (served when the collector has ``--metrics-port``)."""
    COLLECTOR_POLLS.labels(name, "ok" if ok else "failed").inc()
    for kind, count in sent.items():
        COLLECTOR_SENT.labels(name, kind).inc(count)
    for problem in problems:
        # the kind without its source ("http://node-3:9400/metrics: HTTP 500" -> "HTTP N"): one value a kind
        kind = reason_kind(problem.split(": ", 1)[-1])
        COLLECTOR_PROBLEMS.labels(name, COLLECTOR_PROBLEM_KINDS(redact(kind))).inc()
    if ok:
        COLLECTOR_LAST_SUCCESS.labels(name).set(now_s)



_servers: dict[int, object] = {}


def serve(port: int, addr: str = "127.0.0.1") -> int:
    """Start the ``/metrics`` HTTP server on ``port`` (0: a free one) in a daemon thread; the port."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    bound = server.server_address[1]
    _servers[bound] = server
    return bound


def stop(port: int) -> None:
    server = _servers.pop(port, None)
    if server is not None:
        server.shutdown()
        server.server_close()
