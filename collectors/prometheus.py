"""A Prometheus that already scrapes dcgm-exporter as a source: the same GPU samples as ``collectors.dcgm``.

For teams that do not expose the exporters directly.  Each poll reads the dcgm metrics over the
time since its checkpoint through the HTTP API (``/api/v1/query_range``, one query per metric,
at most ``MAX_STEPS`` steps each), rebuilds each step's exporter view, and publishes one
``gpu_sample.v1`` per node and step, exactly as the dcgm collector would have at that instant.
The energy counter is read one step before the first published one, so every published step
has its increase.  The checkpoint (the last step published) advances only after the samples are
flushed; a restart repeats nothing and loses nothing.  The newest ``delay`` is left for the
scrapes still arriving.  The node is the exporter's ``Hostname``/``hostname`` label, else the
host of Prometheus's ``instance`` label.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from hybridspend.collectors.base import CollectReport
from hybridspend.collectors.dcgm import METRICS, EnergyMeter, Resolve, gather, node_sample, readings
from hybridspend.infra.checkpoint import Checkpoint

MAX_STEPS = 1000  # per query_range call (Prometheus refuses more than 11,000 points per series)


class QueryError(RuntimeError):
    """Prometheus did not answer a query with data; the message says what it said."""


@dataclass
class PrometheusCollector:
    """Reads dcgm-exporter metrics back from Prometheus, incrementally, with a checkpoint."""

    url: str  # Prometheus base URL, e.g. http://prometheus:9090
    publisher: object  # infra.publish.Publisher or PrintingPublisher
    checkpoint: Checkpoint
    resolve: Resolve
    step_s: float = 30.0
    lookback_s: float = 3600.0
    delay_s: float = 60.0
    interval_s: float = 60.0  # between polls
    timeout_s: float = 30.0
    match: str = ""  # extra label matchers, e.g. cluster="prod"
    clock: Callable[[], float] = time.time
    name: str = "prometheus"
    meter: EnergyMeter = field(default_factory=EnergyMeter)

    @property
    def _key(self) -> str:
        return f"prometheus:{self.url}"

    def query_range(self, metric: str, start_ms: int, end_ms: int, step_ms: int) -> list[dict]:
        query = f"{metric}{{{self.match}}}" if self.match else metric
        params = urllib.parse.urlencode({"query": query, "start": f"{start_ms / 1000:.3f}",
                                         "end": f"{end_ms / 1000:.3f}", "step": f"{step_ms / 1000:g}s"})
        url = f"{self.url.rstrip('/')}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body = json.loads(response.read(256 * 2**20))
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            raise QueryError(f"{metric}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise QueryError(f"{metric}: cannot reach Prometheus: {getattr(exc, 'reason', exc)}"[:300]) from None
        except (ValueError, RecursionError) as exc:  # not JSON, nested past the parser's depth
            raise QueryError(f"{metric}: the answer is not JSON ({type(exc).__name__}: {exc})"[:300]) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise QueryError(f"{metric}: Prometheus answered {str(error)[:200]!r}")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise QueryError(f"{metric}: expected a matrix, got {type(data).__name__}")
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise QueryError(f"{metric}: expected a matrix, got {str(data.get('resultType'))[:40]!r}")
        return data["result"]

    def poll_once(self) -> CollectReport:
        report = CollectReport(self.name)
        step_ms = int(self.step_s * 1000)
        now_ms = int(self.clock() * 1000)
        end_ms = now_ms - int(self.delay_s * 1000)
        end_ms -= end_ms % step_ms
        last_ms = self.checkpoint.get(self._key)
        if last_ms is None:
            first_ms = end_ms - int(self.lookback_s * 1000)
            last_ms = first_ms - first_ms % step_ms
        while last_ms < end_ms:
            chunk_end_ms = min(end_ms, last_ms + MAX_STEPS * step_ms)
            try:
                published = self._publish_steps(last_ms, chunk_end_ms, step_ms, report)
            except QueryError as exc:
                report.errors.append(f"{self.url}: {exc}")
                break
            self.publisher.flush()
            self.checkpoint.set(self._key, chunk_end_ms)
            if published and self.publisher.watermark(self.name, chunk_end_ms):  # after the samples are stored
                report.count("watermarks")
            last_ms = chunk_end_ms
        return report

    def _publish_steps(self, after_ms: int, end_ms: int, step_ms: int, report: CollectReport) -> int:
        """Publish the steps in (after_ms, end_ms]; the step at after_ms only primes the energy counters."""
        at_step: dict[int, list[tuple[str, dict[str, str], float]]] = {}
        for metric in METRICS:
            for series in self.query_range(metric, after_ms, end_ms, step_ms):
                labels = {k: str(v) for k, v in (series.get("metric") or {}).items()}
                if not (labels.get("Hostname") or labels.get("hostname")):
                    labels["Hostname"] = urllib.parse.urlsplit(f"//{labels.get('instance', '')}").hostname or ""
                for ts, value in series.get("values") or []:
                    try:
                        point = (metric, labels, float(value))
                    except (TypeError, ValueError):
                        continue
                    at_step.setdefault(round(float(ts) * 1000), []).append(point)
        published = 0
        for tick_ms in sorted(at_step):
            by_host = readings(gather(at_step[tick_ms], "", report.errors), self.resolve, self.meter, tick_ms, step_ms,
                               report.errors)
            if tick_ms <= after_ms:
                continue
            for host, gpus in sorted(by_host.items()):
                if not host:
                    continue
                sample = node_sample(host, gpus, tick_ms, step_ms, "prometheus", report.errors)
                self.publisher.send("gpu-samples", host, sample)
                report.count("gpu samples")
                published += 1
        return published
