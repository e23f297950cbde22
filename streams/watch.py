"""Anomaly detection in the worker: closed windows in, anomaly events out (anomalies/detect.py does the judging).

* Each workload's closed window (decision agent) is judged for GPUs held idle and for its $ per busy
  GPU-hour, per environment and GPU class (``WorkloadWatch``, kept in the workload's table value).
* Each team's spend per window is judged on one decision partition, the team's own
  (``team_partition``): every usage partition's watermark carries what each workload window it closed
  cost, every decision partition keeps the entries of its own teams and sums them once the window
  is complete (``TeamState``, under the ``~team|<team>`` key of the partition's table).
* Each on-prem host's latest sample is kept per usage partition (``PartitionClock.seen``): a host
  whose samples stopped while the partition's moved on is ``silent`` (``silence_findings``).

Everything here is event time and replays into the same events: an anomaly's ``event_id`` is its
episode and state, so the sink stores it once and the alerter alerts it once.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from dataclasses import dataclass, field
from decimal import Decimal

from hybridspend.anomalies.detect import (
    HELD_IDLE,
    SILENT,
    SPEND_RATE,
    USD_PER_BUSY_GPU_HOUR,
    Episode,
    Finding,
    HeldIdle,
    SeasonalDetector,
    Settings,
)
from hybridspend.contracts.events import MAX_LABEL_LEN, Anomaly
from hybridspend.costmodel.money import MICRO
from hybridspend.costmodel.timeunits import utc_from_ms

MS_PER_HOUR = 3_600_000
FORGET_SILENT_MS = 7 * 24 * MS_PER_HOUR  # a host silent this long is forgotten (decommissioned): memory stays bounded
MAX_TEAM_GAP_MS = 7 * 24 * MS_PER_HOUR  # at most a week of empty windows is judged after a gap in the data
# a team that spent nothing for five weeks is forgotten (its table value deleted) and judged as a new team when
# it spends again: its baseline reads the last four weeks, which by then hold nothing but that silence
FORGET_TEAM_MS = 5 * 7 * 24 * MS_PER_HOUR
# a workload with no window for five weeks is forgotten (its table value deleted): its detectors read four weeks of
# history, so nothing they would read is lost, and jobs, pods and spot fleets that come and go do not stay forever
FORGET_WORKLOAD_MS = 5 * 7 * 24 * MS_PER_HOUR

UNITS = {HELD_IDLE: "utilization_pct", USD_PER_BUSY_GPU_HOUR: "usd_per_busy_gpu_hour", SPEND_RATE: "usd_per_hour",
         SILENT: "minutes"}


def team_partition(team: str, partitions: int) -> int:
    """The decision partition that judges a team's spend (the same on every worker)."""
    return zlib.crc32(team.encode()) % partitions


def _usd(value) -> Decimal:
    return Decimal(f"{value:.6f}")


def _cents(value) -> Decimal:
    """Money at stake is an estimate against a statistical baseline: to the cent."""
    return Decimal(value).quantize(Decimal("0.01"))


def _when(ms: int) -> str:
    return f"{utc_from_ms(ms):%Y-%m-%d %H:%M} UTC"


def _label(subject: str) -> str:
    """A subject as a label: a long one is named by its digest (the record carries the names in full)."""
    if len(subject) <= MAX_LABEL_LEN:
        return subject
    return "sha256:" + hashlib.sha256(subject.encode()).hexdigest()[:32]


def episode_id_of(kind: str, subject: str, start_ms: int) -> str:
    """The episode's id, short enough for a label whatever the subject (a long one is named by its digest)."""
    episode_id = Anomaly.make_episode_id(kind, subject, start_ms)
    if len(episode_id) > MAX_LABEL_LEN - len("|closed"):
        episode_id = Anomaly.make_episode_id(kind, "sha256:" + hashlib.sha256(subject.encode()).hexdigest()[:32],
                                             start_ms)  # the same digest as _label's
    return episode_id


def anomaly_event(f: Finding, subject: str, what: str, **where: str) -> Anomaly:
    """The event of a finding; ``what`` describes it for a person (the kind's own words)."""
    ep = f.episode
    if f.state == "open":
        reason = what
    elif f.new_level:
        reason = f"a new level since {_when(ep.start_ms)}, no longer an anomaly (the baseline starts again): {what}"
    else:
        reason = f"ended {_when(f.ended_ms)}: {what}"
    episode_id = episode_id_of(f.kind, subject, ep.start_ms)
    return Anomaly(
        event_id=f"{episode_id}|{f.state}", episode_id=episode_id, kind=f.kind, state=f.state, subject=subject,
        start_ms=ep.start_ms, detected_ms=ep.detected_ms, score=_usd(ep.score), baseline=_usd(ep.baseline),
        observed=_usd(ep.observed), unit=UNITS[f.kind], usd_so_far=_cents(ep.usd_so_far),
        usd_per_day_at_stake=_cents(ep.usd_per_day), reason=reason, ended_ms=f.ended_ms, **where)


@dataclass
class WorkloadWatch:
    """A workload's detectors in one environment and GPU class."""

    cost: SeasonalDetector = field(default_factory=SeasonalDetector)
    idle: HeldIdle = field(default_factory=HeldIdle)

    def to_dict(self) -> dict:
        return {"c": self.cost.to_dict(), "i": self.idle.to_dict()}

    @classmethod
    def from_dict(cls, data: dict | None) -> "WorkloadWatch":
        if not data:
            return cls()
        return cls(SeasonalDetector.from_dict(data["c"]), HeldIdle.from_dict(data["i"]))

    def judge(self, window, settings: Settings) -> list[Anomaly]:
        """One closed ``costmodel.WorkloadWindow``: held idle, then (when busy enough to say) $ per busy GPU-hour."""
        w = window
        subject = _label(f"{w.workload}|{w.environment}|{w.gpu_class}")
        where = dict(workload=w.workload, team=w.team, gpu_class=w.gpu_class, environment=w.environment)
        out = []
        gpus = w.allocated_gpu_ms / w.window_ms if w.window_ms else 0
        for found in self.idle.observe(w.window_start_ms, w.window_ms, w.allocated_gpu_ms, w.busy_gpu_ms, w.cost_usd,
                                       settings, int(w.window_ms * w.coverage)):
            ep = found.episode
            out.append(anomaly_event(found, subject, (
                f"{w.workload} holds {gpus:.1f} {w.environment} {w.gpu_class} GPUs busy {ep.observed:.1f} % of the "
                f"time since {_when(ep.start_ms)} (idle below {settings.held_idle_utilization_pct:g} %): "
                f"${ep.usd_so_far:,.2f} so far, ${ep.usd_per_day:,.2f} a day"), **where))
        if self.idle.since_ms is not None or not w.busy_gpu_ms:
            return out  # held idle: a useful hour has no price to judge
        busy_hours = w.busy_gpu_ms / MS_PER_HOUR
        window_hours = w.window_ms / MS_PER_HOUR
        value = float(w.cost_usd) / busy_hours
        for found in self.cost.observe(USD_PER_BUSY_GPU_HOUR, w.window_start_ms, w.window_ms, value,
                                       lambda center: _usd((value - center) * busy_hours / window_hours), settings):
            ep = found.episode
            out.append(anomaly_event(found, subject, (
                f"{w.workload} pays ${ep.observed:,.2f} per busy {w.environment} {w.gpu_class} GPU-hour against "
                f"${ep.baseline:,.2f} expected ({found.basis}; score {ep.score:.1f}): ${ep.usd_per_day:,.2f} a day "
                f"more at this rate, ${ep.usd_so_far:,.2f} so far"), **where))
        return out

    def forget(self, workload: str, team: str, environment: str, gpu_class: str) -> list[Anomaly]:
        """The workload is forgotten (gone for ``FORGET_WORKLOAD_MS``): the episodes it had under way end where
        they were last seen, as its next window would have ended them had it come (the workload stopped)."""
        subject = _label(f"{workload}|{environment}|{gpu_class}")
        where = dict(workload=workload, team=team, gpu_class=gpu_class, environment=environment)
        out = []
        for kind, ep in ((HELD_IDLE, self.idle.episode), (USD_PER_BUSY_GPU_HOUR, self.cost.episode)):
            if ep is not None:
                what = (f"{workload} ({environment} {gpu_class}) sent no cost window after "
                        f"{_when(ep.last_anomalous_end_ms)} and was forgotten "
                        f"{FORGET_WORKLOAD_MS // (24 * MS_PER_HOUR)} days later")
                out.append(anomaly_event(Finding(kind, "closed", ep, "it stopped", ended_ms=ep.last_anomalous_end_ms),
                                         subject, what, **where))
        return out


@dataclass
class TeamState:
    """A team's spend detector and the last window judged (table value ``~team|<team>``)."""

    spend: SeasonalDetector = field(default_factory=SeasonalDetector)
    closed_through_ms: int | None = None  # start of the last window judged
    last_spend_ms: int | None = None  # start of the last window with spend
    retired: bool = False  # forgotten by the last ``judge`` (never stored: its table value is deleted)

    def to_dict(self) -> dict:
        return {"s": self.spend.to_dict(), "t": self.closed_through_ms, "ls": self.last_spend_ms}

    @classmethod
    def from_dict(cls, data: dict | None) -> "TeamState":
        if not data:
            return cls()
        return cls(SeasonalDetector.from_dict(data["s"]), data["t"], data.get("ls"))

    def judge(self, team: str, spend_umicro: dict[int, int], first_ms: int | None, window_ms: int,
              watermark_ms: int, settings: Settings) -> list[Anomaly]:
        """Every window of the team complete by ``watermark_ms`` (``spend_umicro``: window start -> its
        spend; a window without spend spent nothing), in order."""
        start = first_ms if self.closed_through_ms is None else self.closed_through_ms + window_ms
        if start is None:
            return []
        last = watermark_ms - window_ms
        with_data = sorted(ws for ws in spend_umicro if ws >= start)
        out = []
        window_hours = window_ms / MS_PER_HOUR
        ws = start
        while ws <= last:
            i = bisect.bisect_left(with_data, ws)
            if self.last_spend_ms is not None and ws - self.last_spend_ms > FORGET_TEAM_MS:
                # nothing spent for five weeks: the team is forgotten, and its next window with spend starts a new
                # one (decided here from the windows' event time, whichever batch brought them, so that a team
                # whose table value was deleted and one that comes back in the same batch are judged alike)
                self.spend, self.closed_through_ms, self.last_spend_ms = SeasonalDetector(), None, None
                self.retired = True
                if i == len(with_data):
                    break
                ws = with_data[i]
            self.retired = False
            # a long stretch without spend (a gap in the data, a watermark far ahead) is judged for a week at most
            upcoming = with_data[i] if i < len(with_data) else last + window_ms
            if upcoming - ws > MAX_TEAM_GAP_MS:  # whole windows, so that ws stays on the windows' grid
                ws += (upcoming - MAX_TEAM_GAP_MS - ws) // window_ms * window_ms
            value = spend_umicro.get(ws, 0) * float(MICRO) / window_hours
            if ws in spend_umicro:  # a window some workload of the team ran in (at whatever cost)
                self.last_spend_ms = ws
            findings = self.spend.observe(SPEND_RATE, ws, window_ms, value, lambda center: _usd(value - center),
                                          settings, min_spread=float(settings.min_usd_per_hour))
            self.closed_through_ms = ws
            ws += window_ms
            for found in findings:
                ep = found.episode
                out.append(anomaly_event(found, team, (
                    f"team {team} spends ${ep.observed:,.2f} an hour against ${ep.baseline:,.2f} expected "
                    f"({found.basis}; score {ep.score:.1f}): ${ep.usd_per_day:,.2f} a day more at this rate, "
                    f"${ep.usd_so_far:,.2f} so far"), team=team))
        return out


def silence_findings(seen: dict[str, list[int]], silent: dict[str, list[int]], now_ms: int,
                     settings: Settings) -> list[Anomaly]:
    """Hosts whose latest sample (``seen``: host -> [end of its latest sample, its cost in micro-dollars an
    hour]) is ``silence_minutes`` behind the partition's samples (``now_ms``): a silent episode each, kept
    in ``silent`` (host -> [start, detected]) until its samples return (``returned``).  A host silent for a
    week is forgotten (taken out of service): its episode ends there."""
    if settings.silence_minutes is None:
        return []
    limit_ms = settings.silence_minutes * 60_000
    out = []
    for host, (last_ms, umicro_per_hour) in sorted(seen.items()):
        quiet_ms = now_ms - last_ms
        if quiet_ms >= FORGET_SILENT_MS:
            seen.pop(host)
            episode = silent.pop(host, None)
            if episode is not None:
                out.append(_silence_event(host, "closed", episode[0], episode[1], now_ms, umicro_per_hour, settings,
                                          "forgotten after a week without samples"))
            continue
        if host in silent or quiet_ms < limit_ms:
            continue
        silent[host] = [last_ms, now_ms]
        out.append(_silence_event(host, "open", last_ms, now_ms, None, umicro_per_hour, settings))
    return out


def returned(host: str, seen: dict[str, list[int]], silent: dict[str, list[int]], sample_start_ms: int,
             settings: Settings) -> Anomaly | None:
    """A sample of ``host`` arrived: its silent episode (if any) ends where the sample begins."""
    episode = silent.pop(host, None)
    umicro_per_hour = seen.get(host, [0, 0])[1]
    if episode is None:
        return None
    return _silence_event(host, "closed", episode[0], episode[1], max(sample_start_ms, episode[0]), umicro_per_hour,
                          settings)


def _silence_event(host: str, state: str, start_ms: int, detected_ms: int, back_ms: int | None,
                   umicro_per_hour: int, settings: Settings, why: str = "") -> Anomaly:
    quiet_minutes = ((back_ms or detected_ms) - start_ms) / 60_000
    usd_per_hour = umicro_per_hour * float(MICRO)
    ep = Episode(start_ms, detected_ms, quiet_minutes / settings.silence_minutes, settings.silence_minutes,
                 quiet_minutes, _usd(usd_per_hour * quiet_minutes / 60), _usd(usd_per_hour * 24),
                 back_ms or detected_ms)
    what = (f"no GPU samples from {host} for {quiet_minutes:.0f} min (last at {_when(start_ms)}): its GPUs, about "
            f"${usd_per_hour:,.2f} an hour, are not being accounted" + (f"; {why}" if why else ""))
    return anomaly_event(Finding(SILENT, state, ep, "", ended_ms=back_ms), host, what, resource=host,
                         environment="onprem")
