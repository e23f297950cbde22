"""dcgm-exporter as a source: GPU samples from the exporters a cluster already runs, nothing installed on nodes.

Every interval each endpoint's page (Prometheus text format, read with prometheus_client's parser)
becomes one ``gpu_sample.v1`` per node, exactly like the NVML collector's:

- utilization: ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (a ratio) x 100 where present, else ``DCGM_FI_DEV_GPU_UTIL`` (%);
  only the first is reported for MIG instances;
- memory ``DCGM_FI_DEV_FB_USED`` / ``_FREE`` (MiB), power ``DCGM_FI_DEV_POWER_USAGE`` (W);
- energy: the increase of ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ counter) since the previous tick; a drop
  means the counter restarted, and the new value is what was drawn since; without two consecutive ticks the
  costing falls back to power x interval;
- node: the ``Hostname`` label (``hostname`` in newer exporters), else the endpoint's host;
- MIG: a series with ``GPU_I_ID`` is one instance (``GPU_I_PROFILE`` gives its compute fraction); its reading's
  uuid is ``MIG-<GPU UUID>/<GPU_I_ID>`` and ``parent_uuid`` the GPU's;
- workloads: pod labels ``pod``, ``namespace``, ``container`` (or the legacy ``pod_name``, ``pod_namespace``,
  ``container_name``) and ``hpc_job`` (Slurm) become the labels ``k8s_pod``, ``k8s_namespace``,
  ``k8s_container``, ``slurm_job_id`` that the workload rules match.  A time-sliced GPU shows one series per pod
  holding it: one reading with one share per pod, split by allocation.  A busy GPU with no pod or job is charged
  to "unattributed"; an unused one is idle.

A page that fails or is not an exporter page is reported in the poll's report; the other endpoints go on.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from hybridspend.collectors.base import CollectReport
from hybridspend.collectors.nvml.collector import UNATTRIBUTED, safe_labels
from hybridspend.contracts.catalog import gpu_class_of
from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare
from hybridspend.costmodel.sharing import SharingError, mig_compute_fraction

PROF_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
DEV_UTIL = "DCGM_FI_DEV_GPU_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
POWER = "DCGM_FI_DEV_POWER_USAGE"
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
METRICS = (PROF_ACTIVE, DEV_UTIL, FB_USED, FB_FREE, POWER, ENERGY)
HOLDER_LABELS = {  # exporter label -> the label workload rules match; the legacy spellings after the current
    "namespace": "k8s_namespace", "pod_namespace": "k8s_namespace",
    "pod": "k8s_pod", "pod_name": "k8s_pod",
    "container": "k8s_container", "container_name": "k8s_container",
    "hpc_job": "slurm_job_id",
}

Resolve = Callable[[dict[str, str]], "tuple[str, str, bool] | None"]


class PageError(ValueError):
    """A page that is not a readable dcgm-exporter page; the message says why."""


@dataclass
class GpuSeries:
    """What the exporter said about one GPU, or one MIG instance of it, at one instant."""

    host: str
    uuid: str
    gpu_instance: str  # GPU_I_ID; "" for the GPU itself
    index: int = 0
    model: str = ""
    mig_profile: str = ""
    values: dict[str, float] = field(default_factory=dict)
    holders: list[dict[str, str]] = field(default_factory=list)  # distinct pod / job label sets using it


def holder_labels(labels: dict[str, str]) -> dict[str, str]:
    """The workload labels of one exporter series (empty when no pod or job is mapped)."""
    out: dict[str, str] = {}
    for name, target in HOLDER_LABELS.items():
        if labels.get(name) and target not in out:
            out[target] = labels[name]
    return out


# the largest value each metric can take on real hardware; beyond it (or +Inf, or below 0) the point is dropped
MAX_VALUE = {PROF_ACTIVE: 1.0, DEV_UTIL: 100.0, FB_USED: float(1 << 24), FB_FREE: float(1 << 24),
             POWER: 10_000.0, ENERGY: 1e18}
MAX_PAGE_BYTES = 64 << 20
MAX_GPUS_PER_NODE = 64  # what one gpu_sample.v1 carries


def gather(points: Iterable[tuple[str, dict[str, str], float]], default_host: str,
           problems: list[str] | None = None) -> dict[tuple, GpuSeries]:
    """Exporter points (metric, labels, value) grouped per (host, GPU UUID, GPU instance); a value
    that no GPU can have (+Inf, negative, 10 kW) is dropped with a problem, NaN silently (the
    exporter's "no value")."""
    found: dict[tuple, GpuSeries] = {}
    for metric, labels, value in points:
        uuid = labels.get("UUID") or labels.get("uuid")
        if metric not in METRICS or not uuid or math.isnan(value):
            continue
        if not 0 <= value <= MAX_VALUE[metric]:
            if problems is not None:
                host = labels.get("Hostname") or labels.get("hostname") or default_host
                problems.append(f"{host} {uuid[:80]}: {metric} {value!r} is outside"
                                f" 0..{MAX_VALUE[metric]:g}; dropped")
            continue
        host = labels.get("Hostname") or labels.get("hostname") or default_host
        key = (host, uuid, labels.get("GPU_I_ID", ""))
        series = found.get(key)
        if series is None:
            index = labels.get("gpu", "0")
            series = found[key] = GpuSeries(host, uuid, key[2], int(index) if index.isdigit() else 0,
                                            labels.get("modelName", ""), labels.get("GPU_I_PROFILE", ""))
        series.values[metric] = value
        holder = holder_labels(labels)
        if holder and holder not in series.holders:
            series.holders.append(holder)
    return found


@dataclass
class EnergyMeter:
    """Energy drawn per interval from a cumulative counter, per (host, GPU); reset-safe."""

    last: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # -> (tick ms, counter mJ)

    def drawn_mj(self, key: tuple[str, str], tick_ms: int, counter_mj: float, interval_ms: int) -> int | None:
        """mJ drawn over the interval ending at ``tick_ms``; None without the previous tick's value."""
        previous = self.last.get(key)
        self.last[key] = (tick_ms, counter_mj)
        if previous is None or previous[0] != tick_ms - interval_ms:
            return None
        drawn = counter_mj - previous[1]
        return int(counter_mj if drawn < 0 else drawn)  # a drop: the counter restarted from zero


def readings(series: dict[tuple, GpuSeries], resolve: Resolve, meter: EnergyMeter, tick_ms: int,
             interval_ms: int, problems: list[str]) -> dict[str, list[GpuReading]]:
    """GPU readings per host: whole GPUs and MIG instances, attributed to their workloads."""
    by_gpu: dict[tuple[str, str], list[GpuSeries]] = {}
    for s in series.values():
        by_gpu.setdefault((s.host, s.uuid), []).append(s)
    out: dict[str, list[GpuReading]] = {}
    for (host, uuid), parts in sorted(by_gpu.items()):
        parts.sort(key=lambda s: (s.gpu_instance != "", int(s.gpu_instance) if s.gpu_instance.isdigit() else 0))
        device = {k: v for s in reversed(parts) for k, v in s.values.items()}  # the GPU's own series win
        power = device.get(POWER)
        energy = meter.drawn_mj((host, uuid), tick_ms, device[ENERGY], interval_ms) if ENERGY in device else None
        instances = [s for s in parts if s.gpu_instance] or parts[:1]
        model = next((s.model for s in parts if s.model), "")
        for s in instances:
            util = s.values.get(PROF_ACTIVE)
            util_pct = util * 100 if util is not None else s.values.get(DEV_UTIL, 0.0)
            util_pct = min(max(util_pct, 0.0), 100.0)
            fraction, reading_uuid = 1.0, uuid
            if s.gpu_instance:
                try:
                    fraction = float(mig_compute_fraction(s.mig_profile, gpu_class_of(model)))
                except SharingError as exc:
                    problems.append(f"{host} {uuid} GPU instance {s.gpu_instance}: {exc}; skipped")
                    continue
                reading_uuid = f"MIG-{uuid}/{s.gpu_instance}"
            used = s.values.get(FB_USED, 0.0)
            shares = []
            for holder in s.holders:
                name, team, allow_spot = resolve({**holder, "host": host}) or (UNATTRIBUTED, "", False)
                shares.append(WorkloadShare(*safe_labels(name, team, problems, f"{host} {uuid}"), allow_spot))
            if not shares and util_pct > 0:
                shares.append(WorkloadShare(UNATTRIBUTED))  # busy, but no pod or job is mapped to it
            out.setdefault(host, []).append(GpuReading(
                uuid=reading_uuid, index=s.index, model=model or "unknown", gpu_class=gpu_class_of(model),
                utilization_pct=util_pct, memory_used_mib=int(max(used, 0)),
                memory_total_mib=int(max(used + s.values.get(FB_FREE, 0.0), 0)),
                power_mw=None if power is None else int(max(power, 0) * 1000), workloads=shares,
                energy_mj=energy, parent_uuid=uuid if s.gpu_instance else "", mig_profile=s.mig_profile
                if s.gpu_instance else "", compute_fraction=fraction,
            ))
    return out


def parse_page(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The points of an exporter page; PageError when it is not Prometheus text with DCGM metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        points = [(family.name, sample.labels, float(sample.value))
                  for family in text_string_to_metric_families(text) for sample in family.samples]
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise PageError(f"not a Prometheus text page: {exc}"[:300]) from None
    if not any(metric.startswith("DCGM_FI_") for metric, _, _ in points):
        raise PageError("no DCGM_FI_ metrics on the page (is this a dcgm-exporter endpoint?)")
    return points


def node_sample(host: str, gpus: list[GpuReading], tick_ms: int, interval_ms: int, source: str,
                problems: list[str]) -> GpuSample:
    if len(gpus) > MAX_GPUS_PER_NODE:
        problems.append(f"{host}: {len(gpus)} GPUs and MIG instances, a sample carries {MAX_GPUS_PER_NODE}: the"
                        f" first {MAX_GPUS_PER_NODE} by index are kept")
    return GpuSample(
        event_id=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{source}:{host}:{tick_ms}")), ts_ms=tick_ms,
        interval_ms=interval_ms, resource=host, environment="onprem", source=source,
        gpus=sorted(gpus, key=lambda g: (g.index, g.uuid))[:MAX_GPUS_PER_NODE],
    )


def _host_of(url: str) -> str:
    """The endpoint's host, the node name when the page carries none (the URL was fetched, so it parses)."""
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


@dataclass
class UrlList:
    """Endpoints from the command line and from a file (one URL a line, # comments), re-read when it changes."""

    urls: list[str]
    path: Path | None = None
    _stamp: tuple[int, int] | None = None
    _from_file: list[str] = field(default_factory=list)

    def current(self, problems: list[str]) -> list[str]:
        if self.path is not None:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    lines = self.path.read_text().splitlines()
                    self._from_file = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
                    self._stamp = stamp
            except OSError as exc:
                problems.append(f"URL file {self.path}: {exc.strerror or exc}; using the last list read")
        return list(dict.fromkeys([*self.urls, *self._from_file]))


@dataclass
class DcgmCollector:
    """Scrapes dcgm-exporter endpoints; each poll publishes one GPU sample per node."""

    urls: UrlList
    publisher: object  # infra.publish.Publisher or PrintingPublisher
    resolve: Resolve
    interval_s: float = 30.0
    timeout_s: float = 10.0
    clock: Callable[[], float] = time.time
    name: str = "dcgm"
    meter: EnergyMeter = field(default_factory=EnergyMeter)
    _last_tick_ms: int = -1

    def fetch(self, url: str) -> str:
        """The page at an http(s) URL, read within ``timeout_s`` in all (a trickling endpoint is cut
        off) and up to MAX_PAGE_BYTES (a larger page is refused, not cut)."""
        deadline = time.monotonic() + self.timeout_s
        chunks, size = [], 0
        try:
            if urlsplit(url).scheme not in ("http", "https"):
                raise PageError("only http:// and https:// endpoints are scraped")
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                while chunk := response.read1(1 << 16):
                    size += len(chunk)
                    if size > MAX_PAGE_BYTES:
                        raise PageError(f"the page is larger than {MAX_PAGE_BYTES:,} bytes; not read")
                    if time.monotonic() > deadline:
                        raise PageError(f"the page took longer than {self.timeout_s:g} s to read; not read")
                    chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")
        except PageError:
            raise
        except urllib.error.HTTPError as exc:
            raise PageError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            # refused, timed out, a malformed URL (http://[::1), a reply that is not HTTP, a cut chunk
            raise PageError(f"cannot read: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:300]) from None

    def poll_once(self) -> CollectReport:
        report = CollectReport(self.name)
        interval_ms = int(self.interval_s * 1000)
        now_ms = int(self.clock() * 1000)
        tick_ms = now_ms - now_ms % interval_ms
        if tick_ms <= self._last_tick_ms:
            return report  # this interval was sampled already (a poll that came early)
        self._last_tick_ms = tick_ms
        series: dict[tuple, GpuSeries] = {}
        for url in self.urls.current(report.errors):
            try:
                series.update(gather(parse_page(self.fetch(url)), _host_of(url), report.errors))
            except PageError as exc:
                report.errors.append(f"{url}: {exc}")
        by_host = readings(series, self.resolve, self.meter, tick_ms, interval_ms, report.errors)
        for host, gpus in sorted(by_host.items()):
            sample = node_sample(host, gpus, tick_ms, interval_ms, "dcgm", report.errors)
            self.publisher.send("gpu-samples", sample.resource, sample)
            report.count("gpu samples")
        self.publisher.flush()
        if by_host and self.publisher.watermark(self.name, tick_ms):  # after its samples are acknowledged
            report.count("watermarks")
        return report
