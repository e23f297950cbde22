"""Streaming anomaly detection against seasonal baselines (pure: no I/O).

Four kinds, each judged once per closed event-time window, online, with state small enough to
live in a Faust table value:

* ``held_idle``: a workload holds GPUs but keeps them busy below a threshold for longer than a
  configured time (``HeldIdle``).  A rule, not a statistic: idle held GPUs cost the same.
* ``usd_per_busy_gpu_hour``: what a useful GPU-hour of a workload costs, against that workload's
  own seasonal baseline (utilization collapsing, a price rising, spot falling back to on-demand).
* ``spend_rate``: a team's spend per hour against its seasonal baseline.
* ``silent``: an on-prem host whose samples stopped while the rest of its partition's kept coming
  (``streams.processing``; the episode bookkeeping is the same).

The seasonal baseline (``Seasonal``) is robust statistics over the same hour of the week: the
median and the median absolute deviation (MAD) of the last four weeks' values at that hour (at that
quarter of the hour for windows of 15 minutes or less: windows shorter than a slot are averaged into
it before they are learnt, so a series' state is at most about 3,400 numbers whatever the window).  With
one week of history it takes the larger of the same hour last week and the upper quartile of the
same hour over the last seven days, so a weekday-only or a weekend-only cycle is not mistaken for a
change in its first weeks; and never below the median of the same hour in the last three days, so that
a level held for days (a job that started on Tuesday, still running on Friday) is not news because the
weeks before did not have it.  A subject is judged once it has a week of history (like AWS Cost
Anomaly Detection, which needs about ten days).  The score is how many spreads the value lies
above the baseline; the spread is at least ``min_relative_change`` of the baseline, so a steady
series does not turn every cent into an anomaly.  Only rises are anomalies: spend falling is not
money at stake.  docs/decisions/0006-anomaly-detection.md says why robust statistics and not an
online model.

An episode opens on the first anomalous window and closes after ``clear_windows`` normal ones, or
where its series stopped for a day (the workload did); anomalous values are kept out of the baseline
meanwhile.  One that lasts ``new_normal_hours`` is a
new level, not an anomaly: it is closed as such and the baseline starts again from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal

HELD_IDLE = "held_idle"
USD_PER_BUSY_GPU_HOUR = "usd_per_busy_gpu_hour"
SPEND_RATE = "spend_rate"
SILENT = "silent"
KINDS = (HELD_IDLE, USD_PER_BUSY_GPU_HOUR, SPEND_RATE, SILENT)

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
MS_PER_WEEK = 7 * MS_PER_DAY
WEEKS_KEPT = 4
DAYS_KEPT = 7
RECENT_DAYS = 3
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution, scaled to its standard deviation


@dataclass(frozen=True)
class Settings:
    """How sure a detection must be (``contracts.config.AnomalyConfig`` makes one)."""

    score_threshold: float = 4.0  # spreads above the baseline
    min_relative_change: float = 0.1  # the spread is at least this share of the baseline
    min_usd_per_hour: Decimal = Decimal(1)  # an excess smaller than this is not worth anyone's time
    clear_windows: int = 2  # normal windows in a row that end an episode
    new_normal_hours: float = 24  # an episode this long is a new level: the baseline starts again
    held_idle_utilization_pct: float = 5  # busy below this share of the held GPU time is idle
    held_idle_minutes: float = 60  # for at least this long
    silence_minutes: float | None = 10  # an on-prem host without samples this long (None: off)


@dataclass(frozen=True)
class Baseline:
    center: float  # what the value is expected to be
    spread: float  # how far it may stray (never below min_relative_change of center)
    basis: str  # how it was formed, for a person


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _upper_quartile(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, (3 * len(s)) // 4)]


def _mad(values: list[float], center: float) -> float:
    return _median([abs(v - center) for v in values])


MAX_SLOTS_AN_HOUR = 4  # windows shorter than a quarter of an hour are averaged into their quarter


def slots_an_hour(window_ms: int) -> int:
    """How many baseline slots an hour has for windows of ``window_ms``: one per window, at most four."""
    return min(MAX_SLOTS_AN_HOUR, max(1, MS_PER_HOUR // max(1, window_ms)))


@dataclass
class Seasonal:
    """Means of a series by slot of the week (an hour, or a quarter of it for windows that short): the last
    four weeks of each slot.  Windows shorter than a slot are averaged into it first, so the state is at
    most 168 x 4 slots of 5 numbers whatever the window; a slot not learnt for four weeks is dropped (it is
    never read again), so a series keeps only the slots of its last four weeks."""

    # slot of the week -> [the epoch slot of its newest value, then the values, oldest first]
    week: dict[str, list] = field(default_factory=dict)
    per_hour: int = 1  # slots an hour
    pruned_day: int = -1  # the epoch day slots four weeks old were last dropped on (looked for once a day)

    def to_dict(self) -> dict:
        return {"w": self.week, "q": self.per_hour, "x": self.pruned_day}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Seasonal":
        return cls({k: list(v) for k, v in data["w"].items()}, data.get("q", 1), data.get("x", -1)) if data else cls()

    @property
    def slot_ms(self) -> int:
        return MS_PER_HOUR // self.per_hour

    def slot(self, index: int) -> str:
        """The slot of the week of an epoch slot: 0 is Monday 00:00 UTC (epoch day 0 was a Thursday)."""
        return str((index + 72 * self.per_hour) % (168 * self.per_hour))

    def _stale(self, entry: list, index: int) -> bool:
        """Whether a slot's newest value is older than the last ``WEEKS_KEPT`` weeks before ``index``: then
        none of its values is read again (the baseline is the last four weeks, not the last four values)."""
        return index - entry[0] > WEEKS_KEPT * 168 * self.per_hour

    def learn(self, index: int, value: float) -> None:
        entry = self.week.setdefault(self.slot(index), [index])
        if self._stale(entry, index):
            del entry[1:]
        entry[0] = index
        entry.append(round(value, 6))  # micro-units: the figures the events carry
        del entry[1:-WEEKS_KEPT]
        # the slots not learnt for four weeks (a schedule that moved, a series that paused) are never read again:
        # the series keeps only what its baselines read (a series' indices only grow: windows close in order).
        # Looked for once a day of the series, not on every value.
        day = index // (24 * self.per_hour)
        if day != self.pruned_day:
            self.pruned_day = day
            oldest = index - WEEKS_KEPT * 168 * self.per_hour
            for slot in [s for s, e in self.week.items() if e[0] < oldest]:
                del self.week[slot]

    def _days_before(self, index: int, days: int) -> list[float]:
        """The same slot of each of the ``days`` days before ``index``, oldest first (days without one skipped)."""
        out = []
        a_day = 24 * self.per_hour
        for k in range(days, 0, -1):
            entry = self.week.get(self.slot(index - a_day * k))
            if entry and entry[0] == index - a_day * k:
                out.append(entry[-1])
        return out

    def baseline(self, index: int, min_relative_change: float, min_spread: float = 0.0) -> Baseline | None:
        """The expected value in the epoch slot ``index``; None while the history is too short."""
        entry = self.week.get(self.slot(index))
        week = entry[1:] if entry and not self._stale(entry, index) else []
        day = self._days_before(index, DAYS_KEPT)
        if len(week) >= 2:
            center, spread, basis = _median(week), MAD_TO_SIGMA * _mad(week, _median(week)), \
                f"median of the same hour in the last {len(week)} weeks"
        elif len(week) == 1 and len(day) >= 3:
            center = max(week[0], _upper_quartile(day))
            spread, basis = MAD_TO_SIGMA * _mad(day, _median(day)), \
                "the same hour last week or the upper quartile of the same hour in the last days"
        else:
            return None
        recent = self._days_before(index, RECENT_DAYS)
        if len(recent) == RECENT_DAYS and _median(recent) > center:
            # a level the same hour has held for the last days is no longer news, whatever the weeks before said
            center, basis = _median(recent), f"median of the same hour in the last {RECENT_DAYS} days"
        return Baseline(center, max(spread, min_relative_change * abs(center), min_spread), basis)


@dataclass
class Episode:
    """An anomaly under way."""

    start_ms: int
    detected_ms: int  # event time it was detected: the end of its first anomalous window
    score: float  # the highest so far
    baseline: float  # at the highest score
    observed: float
    usd_so_far: Decimal  # the excess (held idle: the cost) over the episode so far
    usd_per_day: Decimal  # what a day of it costs at the latest anomalous window's rate
    last_anomalous_end_ms: int
    normal_windows: int = 0

    def to_dict(self) -> dict:
        return {"s": self.start_ms, "d": self.detected_ms, "sc": self.score, "b": self.baseline, "o": self.observed,
                "u": str(self.usd_so_far), "ud": str(self.usd_per_day), "e": self.last_anomalous_end_ms,
                "n": self.normal_windows}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Episode | None":
        if not data:
            return None
        return cls(data["s"], data["d"], data["sc"], data["b"], data["o"], Decimal(data["u"]), Decimal(data["ud"]),
                   data["e"], data["n"])


@dataclass(frozen=True)
class Finding:
    """What a detector says about one window: an episode opened or ended (``state``), as it stood then."""

    kind: str
    state: str  # "open" | "closed"
    episode: Episode
    basis: str
    ended_ms: int | None = None  # closed: the end of its last anomalous window
    new_level: bool = False  # closed because it lasted: a new level, not an anomaly any more


@dataclass
class SeasonalDetector:
    """One seasonal series (a workload's $ per busy GPU-hour, a team's spend per hour) and its episode."""

    series: Seasonal = field(default_factory=Seasonal)
    episode: Episode | None = None
    pending: list | None = None  # the current slot's normal values: [epoch slot, sum, count]
    last_end_ms: int | None = None  # the end of the last window judged

    def to_dict(self) -> dict:
        return {"s": self.series.to_dict(), "e": self.episode.to_dict() if self.episode else None,
                "p": self.pending, "l": self.last_end_ms}

    @classmethod
    def from_dict(cls, data: dict | None) -> "SeasonalDetector":
        if not data:
            return cls()
        pending = data.get("p")
        return cls(Seasonal.from_dict(data["s"]), Episode.from_dict(data["e"]), list(pending) if pending else None,
                   data.get("l"))

    def _flush(self, index: int) -> None:
        """A finished slot's mean goes into the baseline."""
        if self.pending is not None and self.pending[0] != index:
            self.series.learn(self.pending[0], self.pending[1] / self.pending[2])
            self.pending = None

    def _learn(self, index: int, value: float) -> None:
        self._flush(index)
        if self.pending is None:
            self.pending = [index, 0.0, 0]
        self.pending[1] += value
        self.pending[2] += 1

    def observe(self, kind: str, start_ms: int, window_ms: int, value: float, excess_usd_per_hour,
                settings: Settings, min_spread: float = 0.0) -> list[Finding]:
        """Judge and learn one window's value.  ``excess_usd_per_hour(baseline)`` is the money a value
        above the baseline costs an hour; ``min_spread``: the least spread, in the value's unit (a series
        whose usual value is 0 still has a rise that matters)."""
        found = []
        end_ms = start_ms + window_ms
        if slots_an_hour(window_ms) != self.series.per_hour:  # the window changed: a baseline of the new one
            self.series, self.pending = Seasonal(per_hour=slots_an_hour(window_ms)), None
        index = start_ms // self.series.slot_ms
        ep = self.episode
        if ep is not None and self.last_end_ms is not None and start_ms - self.last_end_ms >= MS_PER_DAY:
            # the series stopped for a day or more (the workload did): what was under way ended with it
            found.append(Finding(kind, "closed", ep, "it stopped", ended_ms=ep.last_anomalous_end_ms))
            self.episode = ep = None
        self.last_end_ms = end_ms
        self._flush(index)
        b = self.series.baseline(index, settings.min_relative_change, min_spread)
        score, excess = 0.0, Decimal(0)
        if b is not None and b.spread > 0 and value > b.center:
            score = (value - b.center) / b.spread
            excess = excess_usd_per_hour(b.center)
        anomalous = score >= settings.score_threshold and excess >= settings.min_usd_per_hour
        window_hours = Decimal(window_ms) / MS_PER_HOUR
        if anomalous:
            if ep is None:
                self.episode = Episode(start_ms, end_ms, score, b.center, value, excess * window_hours,
                                       excess * 24, end_ms)
                return found + [Finding(kind, "open", replace(self.episode), b.basis)]
            ep.usd_so_far += excess * window_hours
            ep.usd_per_day, ep.last_anomalous_end_ms, ep.normal_windows = excess * 24, end_ms, 0
            if score > ep.score:
                ep.score, ep.baseline, ep.observed = score, b.center, value
            if end_ms - ep.start_ms >= settings.new_normal_hours * MS_PER_HOUR:
                # a new level: learnt from here on
                self.episode, self.series, self.pending = None, Seasonal(per_hour=self.series.per_hour), None
                self._learn(index, value)
                return found + [Finding(kind, "closed", ep, b.basis, ended_ms=end_ms, new_level=True)]
            return found
        self._learn(index, value)
        if ep is not None:
            ep.normal_windows += 1
            if ep.normal_windows >= settings.clear_windows:
                self.episode = None
                found.append(Finding(kind, "closed", ep, b.basis if b else "", ended_ms=ep.last_anomalous_end_ms))
        return found


@dataclass
class HeldIdle:
    """A workload's GPUs held but (nearly) idle: since when, for how long observed, and what it has cost."""

    since_ms: int | None = None
    usd_so_far: Decimal = Decimal(0)
    episode: Episode | None = None
    held_ms: int = 0  # time samples saw it idle (rented time no sample covered is not evidence)
    last_end_ms: int | None = None  # the end of the last window seen

    def to_dict(self) -> dict:
        return {"since": self.since_ms, "u": str(self.usd_so_far), "e": self.episode.to_dict() if self.episode else None,
                "h": self.held_ms, "l": self.last_end_ms}

    @classmethod
    def from_dict(cls, data: dict | None) -> "HeldIdle":
        if not data:
            return cls()
        return cls(data["since"], Decimal(data["u"]), Episode.from_dict(data["e"]), data.get("h", 0), data.get("l"))

    def observe(self, start_ms: int, window_ms: int, allocated_gpu_ms: int, busy_gpu_ms: int, cost_usd: Decimal,
                settings: Settings, observed_ms: int | None = None) -> list[Finding]:
        """One window; ``observed_ms``: how much of it samples covered (default all of it).  A window no
        sample saw (only rented time) says nothing either way.  Idleness counts in consecutive windows: after
        a gap (the workload stopped) it starts again, and an episode under way ends where it was last seen."""
        found = []
        if self.last_end_ms is not None and start_ms > self.last_end_ms and self.since_ms is not None:
            ep, self.since_ms, self.usd_so_far, self.episode, self.held_ms = self.episode, None, Decimal(0), None, 0
            if ep is not None:
                found.append(Finding(HELD_IDLE, "closed", ep, "it stopped", ended_ms=ep.last_anomalous_end_ms))
        self.last_end_ms = start_ms + window_ms
        now = self._observe(start_ms, window_ms, allocated_gpu_ms, busy_gpu_ms, cost_usd, settings, observed_ms)
        return found + ([now] if now is not None else [])

    def _observe(self, start_ms: int, window_ms: int, allocated_gpu_ms: int, busy_gpu_ms: int, cost_usd: Decimal,
                 settings: Settings, observed_ms: int | None) -> Finding | None:
        end_ms = start_ms + window_ms
        observed_ms = window_ms if observed_ms is None else observed_ms
        if observed_ms <= 0:
            return None
        utilization_pct = 100 * busy_gpu_ms / allocated_gpu_ms if allocated_gpu_ms else None
        if utilization_pct is not None and utilization_pct < settings.held_idle_utilization_pct:
            if self.since_ms is None:
                self.since_ms, self.usd_so_far, self.held_ms = start_ms, Decimal(0), 0
            self.usd_so_far += cost_usd
            self.held_ms += observed_ms
            usd_per_day = cost_usd * MS_PER_DAY / window_ms
            if self.episode is not None:
                self.episode.usd_so_far, self.episode.usd_per_day = self.usd_so_far, usd_per_day
                self.episode.last_anomalous_end_ms = end_ms
                return None
            held_minutes = self.held_ms / 60_000
            if held_minutes >= settings.held_idle_minutes:
                self.episode = Episode(self.since_ms, end_ms, held_minutes / settings.held_idle_minutes,
                                       settings.held_idle_utilization_pct, utilization_pct, self.usd_so_far,
                                       usd_per_day, end_ms)
                return Finding(HELD_IDLE, "open", replace(self.episode),
                               f"busy below {settings.held_idle_utilization_pct:g} % for {held_minutes:.0f} min")
            return None
        ep, self.since_ms, self.usd_so_far, self.episode, self.held_ms = self.episode, None, Decimal(0), None, 0
        if ep is not None:
            return Finding(HELD_IDLE, "closed", ep, "busy again", ended_ms=ep.last_anomalous_end_ms)
        return None


@dataclass(frozen=True)
class Injected:
    """An anomaly a scenario put in (for measuring): its kind, subject and event-time span."""

    kind: str
    subject: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Detected:
    kind: str
    subject: str
    start_ms: int
    detected_ms: int
    ended_ms: int | None


def score_detections(injected: list[Injected], detected: list[Detected], window_ms: int,
                     grace_windows: int = 2) -> dict[str, dict]:
    """Precision, recall and detection delay (in windows) per kind.

    A detection is true when an injected anomaly of its kind on its subject was under way when it
    was detected (up to ``grace_windows`` after the injection ended: the window that shows it
    closes after it); an injection is found by the first such detection.  Every other detection is
    a false alarm, anomalies of other kinds included.
    """
    out: dict[str, dict] = {}
    for kind in sorted({i.kind for i in injected} | {d.kind for d in detected}):
        inj = [i for i in injected if i.kind == kind]
        det = [d for d in detected if d.kind == kind]
        found: dict[int, int] = {}  # injection index -> delay of its first detection, in ms
        true = 0
        for d in det:
            match = [n for n, i in enumerate(inj) if i.subject == d.subject
                     and i.start_ms < d.detected_ms <= i.end_ms + grace_windows * window_ms]
            if match:
                true += 1
                for n in match:
                    found[n] = min(found.get(n, d.detected_ms - inj[n].start_ms), d.detected_ms - inj[n].start_ms)
        delays = sorted(ms / window_ms for ms in found.values())
        out[kind] = {
            "injected": len(inj), "detected": len(det), "true_detections": true,
            "precision": round(true / len(det), 3) if det else None,
            "recall": round(len(found) / len(inj), 3) if inj else None,
            "median_delay_windows": _median(delays) if delays else None,
            "max_delay_windows": max(delays) if delays else None,
            "missed": [f"{i.subject}@{i.start_ms}" for n, i in enumerate(inj) if n not in found],
        }
    return out
