"""What the worker's state holds after months of churn: hosts, spot instances, jobs and teams that come and go.

Each table key of a host, instance, workload or team that is gone is forgotten after a time of event time
(docs/consistency.md, "What the worker forgets"), so the tables and the partition clocks stay bounded by
what is alive, not by everything ever seen.  The agents are driven here without a broker, as
``streams.topology`` drives them: records in offset order, a batch at a time, each table value through its
stored form, keys deleted where the agent deletes them.  Forgetting must change no output: the same log
read in other batches (and with the two input topics interleaved otherwise) gives the same cost windows,
decisions and anomalies.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal as D

from hybridspend.anomalies.detect import Seasonal, SeasonalDetector, Settings
from hybridspend.contracts.config import Config
from hybridspend.contracts.events import CostWindow, GpuReading, GpuSample, InstanceEvent, Watermark, WorkloadShare
from hybridspend.costmodel import PriceBook
from hybridspend.streams.processing import (
    POLICY_TTL_MS,
    PRICE_HISTORY_MS,
    RETIRE_RESOURCE_MS,
    DecisionProcessor,
    PartitionClock,
    ResourceState,
    UsageProcessor,
    WorkloadState,
)
from hybridspend.streams.watch import FORGET_SILENT_MS, FORGET_TEAM_MS, FORGET_WORKLOAD_MS, TeamState, \
    silence_findings

HOUR = 3_600_000
DAY = 24 * HOUR
MONDAY = 1_791_158_400_000  # 2026-10-05 00:00 UTC
GS, IE = "gpu-samples", "instance-events"

CONFIG = Config.model_validate({
    "onprem_assets": [{
        "name": "rack", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 1000,
        "gpus_per_node": 1, "hosts": ["node-*"], "purchase_price_usd_per_node": 26280,
        "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1.0,
        "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 876,
    }],
    "cloud_offers": [{"provider": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge", "gpu_model": "A100",
                      "gpu_class": "A100", "gpus_per_instance": 8, "usd_per_hour": {"on_demand": 32, "spot": 12}}],
    "thresholds": {"window_seconds": 3600, "grace_seconds": 0},
    "alerts": {"checks": {"collector_silence_minutes": None}},
})


def size(*values) -> int:
    return sum(len(json.dumps(v, sort_keys=True)) for v in values)


# -- the usage agent: hosts and instances ----------------------------------------------------------------------


def host_sample(host: str, end_ms: int, job: str, allow_spot: bool = False) -> GpuSample:
    return GpuSample(f"{host}:{end_ms}", end_ms, HOUR, host, "onprem", "test",
                     [GpuReading("GPU-0", 0, "A100", "A100", 60.0, 1, 2, 500_000,
                                 [WorkloadShare(job, "ml", allow_spot)])])


def spot_sample(iid: str, end_ms: int, job: str) -> GpuSample:
    return GpuSample(f"{iid}:{end_ms}", end_ms, HOUR, iid, "cloud", "test",
                     [GpuReading(f"GPU-{i}", i, "A100", "A100", 50.0, 1, 2, None, [WorkloadShare(job, "ml", True)])
                      for i in range(8)],
                     provider="aws", region="us-east-1", instance_type="p4d.24xlarge", purchase_option="spot")


def change(iid: str, ts_ms: int, state: str, job: str) -> InstanceEvent:
    return InstanceEvent(f"{iid}|{ts_ms}", ts_ms, "aws", "us-east-1", "1", iid, "p4d.24xlarge", state, "spot", job,
                         "ml")


def churn_log(days: int) -> dict[str, list]:
    """A partition's two input topics over ``days``: a host that runs a new job every hour all along, three hosts
    a day that live a day, three spot instances a day that run four hours, and the collectors' watermarks."""
    samples, events = [], []
    for d in range(days):
        day = MONDAY + d * DAY
        for h in range(24):
            end = day + (h + 1) * HOUR
            samples.append(host_sample("node-static", end, f"slurm-{d}-{h}", allow_spot=h % 2 == 0))
            samples += [host_sample(f"node-{d}-{k}", end, f"pod-{d}-{k}") for k in range(3)]
            for k in range(3):
                iid, start = f"i-{d}-{k}", day + (6 * k + 1) * HOUR
                if start < end <= start + 4 * HOUR:
                    samples.append(spot_sample(iid, end, f"spot-{d}-{k}"))
            samples.append(("watermark", end))
        for k in range(3):
            start = day + (6 * k + 1) * HOUR
            events += [change(f"i-{d}-{k}", start, "running", f"spot-{d}-{k}"),
                       change(f"i-{d}-{k}", start + 4 * HOUR, "stopped", f"spot-{d}-{k}")]
            events.append(("watermark", start + 4 * HOUR))
    events.append(("watermark", MONDAY + days * DAY))  # the end of the data
    return {GS: samples, IE: events}


class UsagePartition:
    """One partition of the usage agent (``Pipeline.account_usage``) without a broker."""

    def __init__(self) -> None:
        self.usage = UsageProcessor(CONFIG)
        self.table: dict[str, dict] = {}
        self.clock = {"sources": {GS: 0, IE: 0}, "open": [], "idle": {}}
        self.swept_through = -1
        self.out: list[CostWindow] = []
        self.sizes: dict[int, tuple[int, int]] = {}  # day -> (keys, bytes) of the table and clock

    def batch(self, records: list[tuple[str, object]]) -> None:
        clock = PartitionClock.from_dict(self.clock)
        states: dict[str, ResourceState] = {}
        for topic, rec in records:
            if isinstance(rec, tuple):  # a collector's watermark
                clock.advance(topic, rec[1])
                continue
            resource, ts = (rec.instance_id, rec.ts_ms) if topic == IE else (rec.resource, rec.ts_ms - rec.interval_ms)
            state = states.get(resource) or ResourceState.from_dict(self.table.get(resource))
            if topic == IE:
                self.usage.add_instance_event(state, rec)
            else:
                self.usage.add(state, rec)
            states[resource] = state
            clock.advance(topic, ts)
            clock.open.add(resource)
            clock.dormant.pop(resource, None)
        watermark = clock.watermark(1)
        boundary = watermark - watermark % HOUR
        sweep = boundary > self.swept_through
        self.swept_through = max(boundary, self.swept_through)
        for resource in sorted(clock.open | states.keys() if sweep else states.keys()):
            state = states.get(resource) or ResourceState.from_dict(self.table.get(resource))
            self.out += self.usage.close_in(clock, state, resource, watermark)
            states[resource] = state
        for resource in clock.retired_resources(GS) if sweep else ():
            states.pop(resource, None)
            self.table.pop(resource, None)
        self.table.update({r: s.to_dict() for r, s in states.items()})
        self.clock = clock.to_dict()
        day = (watermark - MONDAY) // DAY
        if day not in self.sizes:  # measured once a day: at the day's first batch
            self.sizes[day] = (len(self.table), size(self.table, self.clock))


def run_usage(log: dict[str, list], seed: int | None) -> UsagePartition:
    """The log in hourly batches, topics in step (``seed`` None), or the two topics interleaved at random in
    batches of random sizes, up to several days of the log each."""
    part = UsagePartition()
    streams = {t: [(t, r) for r in records] for t, records in log.items()}
    if seed is None:
        merged = sorted(streams[GS] + streams[IE], key=lambda tr: (_ts(tr[1]), tr[0] == GS))
        batch = []
        for rec in merged:
            batch.append(rec)
            if rec[0] == GS and isinstance(rec[1], tuple):
                part.batch(batch)
                batch = []
        part.batch(batch)
        return part
    rnd, heads = random.Random(seed), {GS: 0, IE: 0}
    while any(heads[t] < len(streams[t]) for t in streams):
        batch = []
        for _ in range(rnd.choice([1, 5, 50, 500, 3000])):
            left = [t for t in streams if heads[t] < len(streams[t])]
            if not left:
                break
            t = rnd.choices(left, weights=[1 if t == IE else 8 for t in left])[0]
            batch.append(streams[t][heads[t]])
            heads[t] += 1
        part.batch(batch)
    return part


def _ts(rec) -> int:
    return rec[1] if isinstance(rec, tuple) else rec.ts_ms


def test_hosts_and_instances_that_are_gone_are_forgotten_after_a_week():
    part = run_usage(churn_log(90), None)
    seen = 1 + 3 * 90 + 3 * 90  # every host and instance ever seen
    # alive: the static host, and those of the last 7 days (+ a day of slack): the same at day 30 and day 89
    bound = 1 + (3 + 3) * (RETIRE_RESOURCE_MS // DAY + 2)
    assert all(keys <= bound < seen for keys, _ in part.sizes.values())
    assert part.sizes[89][0] == part.sizes[30][0]
    assert part.sizes[89][1] <= 1.05 * part.sizes[30][1]  # bytes: the same state, larger numbers
    assert "node-0-0" not in part.table and "i-0-0" not in part.table and "node-static" in part.table
    clock = PartitionClock.from_dict(part.clock)
    assert len(clock.dormant) <= bound and not clock.open - part.table.keys()
    # the static host ran 2,160 jobs: it keeps the spot policies of the last day's only
    policies = ResourceState.from_dict(part.table["node-static"]).allow_spot
    assert 0 < len(policies) <= POLICY_TTL_MS // HOUR + 1


def test_forgetting_changes_no_cost_window_whatever_the_batches():
    log = churn_log(24)  # long enough for three weeks of forgetting
    reference = run_usage(log, None)
    windows = sorted(cw.encode() for cw in reference.out)
    assert len(windows) == len(set(windows)) == 24 * 24 * (1 + 3) + 24 * 3 * 4  # every window once
    for seed in (1, 2, 3):
        other = run_usage(log, seed)
        assert sorted(cw.encode() for cw in other.out) == windows
        # a host closed late (in a batch of days of the log) is forgotten a week after that, never before
        assert reference.table.keys() <= other.table.keys()
        # the data ends; a week and a day later, every collector still marking time, all of it is forgotten
        other.batch([(t, ("watermark", MONDAY + (24 + 8) * DAY)) for t in (GS, IE)])
        assert other.table == {} and PartitionClock.from_dict(other.clock).dormant == {}


def test_a_year_of_spot_prices_keeps_five_weeks_and_prices_every_window_as_the_whole_history_does():
    # a spot price that changes every hour for a year, forgotten each day behind the worker's clock as the usage
    # agent forgets it (streams.topology, at each window boundary)
    rng = random.Random(7)
    full, kept = PriceBook(), PriceBook()
    for hour in range(365 * 24):
        ts = MONDAY + hour * HOUR
        usd = D(rng.randrange(900, 1500)) / 100
        for book in (full, kept):
            book.update("aws", "us-east-1", "p4d.24xlarge", "spot", ts, usd)
        if hour % 24 == 0:
            cutoff = ts - PRICE_HISTORY_MS
            kept.forget_before(cutoff)
            assert kept.kept() <= PRICE_HISTORY_MS // HOUR + 25  # five weeks, the day since, the one in force
            # every window that can still close (it starts at the cutoff or later) is priced as before
            for at in (cutoff, cutoff + HOUR // 2, ts - 1, ts, None):
                assert kept.usd_per_hour("aws", "us-east-1", "p4d.24xlarge", "spot", at) == \
                    full.usd_per_hour("aws", "us-east-1", "p4d.24xlarge", "spot", at)
    assert full.kept() > 8000 > 9 * kept.kept()  # (a price drawn twice in a row is a refresh: not kept)
    assert kept.forget_before(MONDAY) == 0  # a cutoff behind the history drops nothing


def test_the_processors_price_from_the_book_they_are_given_even_while_it_is_empty():
    # the worker hands both processors the book its price reader fills after they are built: an empty book is
    # still that book (a PriceBook with __len__ was falsy when empty, and `prices or PriceBook()` priced every
    # window at the configured list price instead of the live one)
    book = PriceBook()
    assert UsageProcessor(CONFIG, book).prices is book and DecisionProcessor(CONFIG, book).prices is book


def test_a_spot_policy_is_read_for_a_day_after_the_workloads_last_sample():
    state = ResourceState()
    usage = UsageProcessor(CONFIG)
    usage.add(state, host_sample("node-1", MONDAY + HOUR, "job", allow_spot=True))
    assert state.allows_spot("job", MONDAY) and state.allows_spot("job", MONDAY + HOUR + POLICY_TTL_MS - 1)
    assert not state.allows_spot("job", MONDAY + HOUR + POLICY_TTL_MS)  # rented time a day later: not evidence
    usage.close(state, "node-1", MONDAY + 2 * HOUR + POLICY_TTL_MS)
    assert state.allow_spot == {}  # no window still to close can read it
    old = {**state.to_dict(), "allow_spot": {"job": True}}  # a table value written before policies had a time
    assert ResourceState.from_dict(old).allow_spot == {"job": [True, state.windows.last_ts_ms]}


def test_a_silent_host_is_forgotten_after_a_week_and_its_episode_ends_there():
    seen: dict[str, list[int]] = {}
    silent: dict[str, list[int]] = {}
    settings = Settings(silence_minutes=10)
    ended = []
    for d in range(90):  # two hosts a day report for a day and go silent for good
        for h in range(24):
            now = MONDAY + d * DAY + h * HOUR
            seen.update({f"node-{d}-{k}": [now, 1_000_000] for k in range(2)})
            ended += [a for a in silence_findings(seen, silent, now, settings) if a.state == "closed"]
        assert len(seen) <= 2 * (FORGET_SILENT_MS // DAY + 2) and len(silent) <= len(seen)
    assert len(ended) >= 2 * 80 and all("forgotten after a week" in a.reason for a in ended)


# -- the decision agent: workloads and teams -------------------------------------------------------------------


def window(workload: str, team: str, start_ms: int, busy_gpus: float = 4.8, cost: D = D(32)) -> CostWindow:
    return CostWindow(f"i-{workload}|{start_ms}", workload, team, False, "cloud", "A100", f"i-{workload}", start_ms,
                      HOUR, 8 * HOUR, int(busy_gpus * HOUR), 8 * HOUR, 0, 8, start_ms, start_ms + HOUR, cost,
                      "estimated", "aws", "p4d.24xlarge", "on_demand")


def team_key(team: str) -> str:
    return f"\x1fteam|{team}"


class DecisionPartition:
    """One partition of the decision agent (``Pipeline.decide``) without a broker, fed by one usage partition."""

    def __init__(self) -> None:
        self.decider = DecisionProcessor(CONFIG)
        self.table: dict[str, dict] = {}
        self.clock: dict = {}
        self.retired_through = -1
        self.decisions: list = []
        self.anomalies: list = []
        self.sizes: dict[int, tuple[int, int]] = {}

    def batch(self, records: list) -> None:
        clock = PartitionClock.from_dict(self.clock)
        states: dict[str, object] = {}
        for rec in records:
            if isinstance(rec, Watermark):
                self.decider.on_watermark(clock, rec, 0, 1)
                continue
            state = states.get(rec.workload) or WorkloadState.from_dict(self.table.get(rec.workload))
            if self.decider.add(state, rec, self.anomalies):
                states[rec.workload] = state
                clock.open.add(rec.workload)
                clock.dormant.pop(rec.workload, None)
        watermark = clock.watermark(1)
        if watermark is not None:
            for workload in sorted(clock.open):
                state = states.get(workload) or WorkloadState.from_dict(self.table.get(workload))
                self.decisions += self.decider.close(workload, state, watermark, clock, self.anomalies)
                states[workload] = state

            def team_state(team):
                return states.get(team_key(team)) or TeamState.from_dict(self.table.get(team_key(team)))

            def retired(team):
                states.pop(team_key(team), None)
                self.table.pop(team_key(team), None)
            self.anomalies += self.decider.judge_teams(clock, watermark, team_state,
                                                       lambda t, s: states.__setitem__(team_key(t), s), retired)
            self.decider.forget_idle(clock, watermark)
            if watermark - watermark % HOUR > self.retired_through:
                self.retired_through = watermark - watermark % HOUR
                for workload in self.decider.retired_workloads(clock, watermark):
                    state = states.pop(workload, None) or WorkloadState.from_dict(self.table.get(workload))
                    self.anomalies += self.decider.retire(workload, state)
                    self.table.pop(workload, None)
        self.table.update({k: s.to_dict() for k, s in states.items()})
        self.clock = clock.to_dict()
        if watermark is not None and (watermark - MONDAY) // DAY not in self.sizes:  # once a day
            self.sizes[(watermark - MONDAY) // DAY] = (len(self.table), size(self.table, self.clock))


def jobs_log(days: int) -> list:
    """Cost windows and the usage partition's watermarks: a service that runs every day, four jobs a day that
    run three hours each (one of them held idle, then gone), the jobs' teams changing every week, and a
    job of its own team that runs held idle on day 1 and again on day 38 (both forgotten in between)."""
    out = []
    for d in range(days):
        for h in range(24):
            start = MONDAY + d * DAY + h * HOUR
            hour = [window("serve", "web", start, busy_gpus=2 + (h % 12) / 3)]
            for k in range(4):
                if 3 * k + 2 <= h < 3 * k + 5:
                    hour.append(window(f"job-{d}-{k}", f"team-{d // 7}", start, busy_gpus=0.05 if k == 3 else 6))
            if d in (1, 38) and 2 <= h < 6:
                hour.append(window("monthly", "ops", start, busy_gpus=0.05))
            out += hour
            out.append(Watermark(f"m{start}", "usage|0", start + HOUR, spend=[
                (w.window_start_ms, w.team, w.resource, w.workload, HOUR, int(w.cost_usd * 1_000_000)) for w in hour]))
    return out


def run_decisions(log: list, seed: int | None) -> DecisionPartition:
    part = DecisionPartition()
    rnd = random.Random(seed)
    i = 0
    while i < len(log):
        if seed is None:  # a batch an hour
            n = next(j for j in range(i, len(log)) if isinstance(log[j], Watermark)) + 1 - i
        else:
            n = rnd.choice([1, 7, 60, 400, 2000])
        part.batch(log[i:i + n])
        i += n
    return part


def test_workloads_and_teams_that_are_gone_are_forgotten_after_five_weeks():
    part = run_decisions(jobs_log(90), None)
    forget_days = FORGET_WORKLOAD_MS // DAY
    # alive: the service and its team, the jobs of the last five weeks (+ a day), the jobs' teams of the last
    # five weeks (one a week)
    bound = 2 + 4 * (forget_days + 2) + (FORGET_TEAM_MS // DAY // 7 + 2)
    assert all(keys <= bound for keys, _ in part.sizes.values()) and bound < 1 + 4 * 90
    assert part.sizes[89][0] <= part.sizes[50][0] + 1 and part.sizes[89][1] <= 1.05 * part.sizes[50][1]
    assert "job-0-0" not in part.table and team_key("team-0") not in part.table and "serve" in part.table
    assert team_key("team-12") in part.table
    clock = PartitionClock.from_dict(part.clock)
    assert len(clock.dormant) <= 4 * (forget_days + 2) and len(clock.teams) <= FORGET_TEAM_MS // DAY // 7 + 2
    # each idle job's episode ended where it was last seen, when it was forgotten (it never came back)
    idle = [a for a in part.anomalies if a.kind == "held_idle" and a.workload == "job-0-3"]
    assert [(a.state, a.ended_ms) for a in idle] == [("open", None), ("closed", MONDAY + 14 * HOUR)]
    assert "was forgotten 35 days later" in idle[1].reason


def test_forgetting_changes_no_decision_or_anomaly_whatever_the_batches():
    log = jobs_log(45)  # ten days of forgetting
    reference = run_decisions(log, None)
    assert reference.decisions
    # the monthly job: its episode ended when it was forgotten, and it came back as a new workload
    monthly = [(a.state, a.start_ms, a.ended_ms) for a in reference.anomalies if a.workload == "monthly"]
    first, second = MONDAY + DAY + 2 * HOUR, MONDAY + 38 * DAY + 2 * HOUR
    assert monthly == [("open", first, None), ("closed", first, first + 4 * HOUR), ("open", second, None)]
    for seed in (1, 2):  # the monthly job comes back before its sweep with seed 1 (``add`` forgets it), after with 2
        other = run_decisions(log, seed)
        assert sorted(d.encode() for d in other.decisions) == sorted(d.encode() for d in reference.decisions)
        assert sorted(a.encode() for a in other.anomalies) == sorted(a.encode() for a in reference.anomalies)
        assert other.table.keys() == reference.table.keys()


def stream_of(decider: DecisionProcessor, state: WorkloadState, windows: list[CostWindow]) -> tuple[list, list]:
    decisions, anomalies = [], []
    for w in windows:
        decider.add(state, w, anomalies)
        decisions += decider.close(w.workload, state, w.window_start_ms + HOUR, None, anomalies)
    return decisions, anomalies


def test_a_workload_back_after_five_weeks_is_a_new_one_whether_or_not_it_was_deleted():
    before = [window("train", "ml", MONDAY + h * HOUR) for h in range(8 * 24)]
    before += [window("train", "ml", MONDAY + (192 + h) * HOUR, busy_gpus=0.05) for h in range(3)]  # then idle
    back_at = MONDAY + 195 * HOUR + FORGET_WORKLOAD_MS
    after = [window("train", "ml", back_at + h * HOUR, busy_gpus=0.05 if h < 2 else 4.8) for h in range(30)]
    decider = DecisionProcessor(CONFIG)
    state = WorkloadState()
    _, found = stream_of(decider, state, before)
    assert [(a.kind, a.state) for a in found] == [("held_idle", "open")]
    kept = WorkloadState.from_dict(state.to_dict())
    # kept: its table value is still there when it comes back (the sweep had not run): ``add`` forgets it first
    kept_out = stream_of(decider, kept, after)
    # deleted: the sweep forgot it (its episode ended then), and it comes back to an empty table value
    clock = PartitionClock(dormant={"train": [state.last_closed_ms(), 0]})
    assert decider.retired_workloads(clock, back_at - HOUR) == []  # a window beyond five weeks, not before
    assert decider.retired_workloads(clock, back_at) == ["train"] and clock.dormant == {}
    ended = decider.retire("train", state)
    deleted_out = stream_of(decider, WorkloadState(), after)
    assert kept_out[0] == deleted_out[0] and kept_out[1] == ended + deleted_out[1]
    assert [(a.kind, a.state, a.ended_ms) for a in ended] == [("held_idle", "closed", MONDAY + 195 * HOUR)]
    # a new workload: its held-idle streak starts again, and its price is not judged for a week
    new_out = stream_of(decider, WorkloadState(), [window("other", "ml", w.window_start_ms, w.busy_gpu_ms / HOUR)
                                                   for w in after])
    assert [(a.kind, a.state) for a in new_out[1]] == [(a.kind, a.state) for a in deleted_out[1]]


def test_a_team_back_after_five_weeks_is_a_new_one_whether_or_not_it_was_deleted():
    spend = {h: 32.0 for h in range(8 * 24)}
    back = 8 * 24 + FORGET_TEAM_MS // HOUR + 5
    spend.update({back + h: 64.0 for h in range(3)})

    def judged(state, spent_hours, through):  # as judge_teams calls it: the spend of the windows now complete
        spent = {MONDAY + h * HOUR: int(v * 1e6) for h, v in spend.items() if h in spent_hours}
        return state.judge("ml", spent, min(spent, default=None), HOUR, MONDAY + through * HOUR, Settings())

    # hour by hour: forgotten five weeks after its last spend (then deleted), back as a new team
    hourly = TeamState()
    out_hourly, retired_at = [], None
    for h in range(back + 4):
        out_hourly += judged(hourly, {h - 1}, h)
        if hourly.retired and retired_at is None:
            retired_at, hourly = h, TeamState()  # its table value deleted
    assert retired_at == 8 * 24 + FORGET_TEAM_MS // HOUR + 1
    # one batch for the whole gap and its return: forgotten and new in the same call
    once = TeamState()
    out_once = judged(once, set(range(8 * 24)), 8 * 24) + judged(once, set(range(back, back + 3)), back + 3)
    assert out_once == out_hourly == []  # a new team is not judged before it has a week of history
    assert once.to_dict() == hourly.to_dict() and once.closed_through_ms == MONDAY + (back + 2) * HOUR


def test_a_slot_not_learnt_for_four_weeks_is_neither_read_nor_kept():
    d = SeasonalDetector()
    for h in range(3 * 168):  # three weeks of a steady series
        d.observe("spend_rate", MONDAY + h * HOUR, HOUR, 10.0, lambda c: D(0), Settings())
    assert len(d.series.week) == 168
    # the series moves to one hour a day for five weeks: the other slots go once four weeks old
    for day in range(21, 56):
        d.observe("spend_rate", MONDAY + day * DAY + 12 * HOUR, HOUR, 10.0, lambda c: D(0), Settings())
    assert sorted(int(s) for s in d.series.week) == [12 + 24 * k for k in range(7)]
    s = Seasonal()
    s.learn(MONDAY // HOUR, 5.0)
    entry = s.week[s.slot(MONDAY // HOUR)]
    assert not s._stale(entry, MONDAY // HOUR + 4 * 168)  # the same hour four weeks later still reads it
    assert s._stale(entry, MONDAY // HOUR + 4 * 168 + 1)
