"""The sink keeps the reconciliation rollup (``cloud_cost_daily``, migration 017) exact.

Through the sink's own write path, on plain PostgreSQL and on TimescaleDB (its chunks compressed before
the restatements land, as a running deployment has them): cloud windows and two billing periods' bills
written in mixed batches, a batch replayed, windows restated and stored late, a billing delivery that
supersedes the last one (fewer hours, other amounts), an older delivery arriving after it, and a line
restated under its key onto another resource.  After each step the rollup's rows are the reconciliation
views' rows over the raw windows and lines, amounts digit for digit (the scale too), and its totals are
the cents the events carried.  The same when a batch is written carefully (a GPU sample stored already) or
row by row (a row the database refuses), the rollup refreshed once a batch, after its last row; two sinks
writing one resource take turns at the refresh, and a sink writing another resource does not wait; the
panel functions give UTC days and hours in a session of any time zone.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import psycopg
import pytest
from msgspec.structs import replace

from hybridspend.contracts.events import CostLine, CostWindow
from hybridspend.storage.db import migrate
from hybridspend.storage.sink import Batch, cost_line_row, cost_window_row, gpu_sample_rows, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, TIMESCALEDB, Partitions
from tests.test_timescaledb import batch_of, compress_chunks, sample, write

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
WINDOW_MS = 900_000
T0_MS = int(datetime(2026, 10, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 3 days across a billing month's end
DAYS = 3
OCTOBER_MS = int(datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp() * 1000)
NOVEMBER_MS = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp() * 1000)
ARN = {"i-0aa": "arn:aws:ec2:us-east-1:1:instance/i-0aa", "i-0gh0st": "arn:aws:ec2:us-east-1:1:instance/i-0gh0st",
       "i-0bb": "//compute.googleapis.com/projects/p/zones/z/instances/i-0bb"}
PROVIDER = {"i-0aa": "aws", "i-0bb": "gcp", "i-0gh0st": "aws"}


def _window(resource: str, workload: str, ws: int, gpus: int, cost: D, basis: str = "estimated",
            environment: str = "cloud") -> CostWindow:
    return CostWindow(
        event_id=f"{resource}|{workload}|{basis}|{ws}", workload=workload, team="ml", allow_spot=False,
        environment=environment, gpu_class="A100", resource=resource, window_start_ms=ws, window_ms=WINDOW_MS,
        allocated_gpu_ms=gpus * WINDOW_MS, busy_gpu_ms=gpus * WINDOW_MS // 2, metered_gpu_ms=gpus * WINDOW_MS,
        energy_mj=0, sample_count=15, first_ms=ws, last_ms=ws + WINDOW_MS, cost_usd=cost, basis=basis,
        provider="" if environment == "onprem" else PROVIDER[resource])


def windows() -> list[CostWindow]:
    """i-0aa (AWS) runs train on 8 GPUs and, on the second day, etl on 4; i-0bb (GCP) runs embed in the
    first half of each day and serve in the second (a tie: the first name owns the day), and on the second
    day a billed-basis window of serve, which counts for its ownership only; an on-prem node is no part of it."""
    out = []
    for i in range(DAYS * 96):
        ws = T0_MS + i * WINDOW_MS
        out.append(_window("i-0aa", "train", ws, 8, D("8.191") + D(i % 7) / 1000))
        if 96 <= i < 192:
            out.append(_window("i-0aa", "etl", ws, 4, D("4.0955")))
        out.append(_window("i-0bb", "embed" if i % 96 < 48 else "serve", ws, 8, D("7.346") + D(i % 3) / 1000))
        if i == 96 + 60:
            out.append(_window("i-0bb", "serve", ws, 8, D("7.5"), basis="billed"))
        out.append(_window("node-1", "train", ws, 8, D("2.3214"), environment="onprem"))
    return out


def delivery(version: str, period_ms: int, hours: range, scale: D) -> list[CostLine]:
    """A billing delivery of one period: a line per instance and hour, and the ghost, billed every 5th hour
    but never seen live."""
    lines = []
    for h in hours:
        start = T0_MS + h * HOUR_MS
        for resource, usd in (("i-0aa", D("32.78")), ("i-0bb", D("29.40")), ("i-0gh0st", D("12.5"))):
            if resource == "i-0gh0st" and h % 5:
                continue
            amount = usd * scale
            lines.append(CostLine(
                event_id=f"{version}|{resource}|{h}", provider=PROVIDER[resource], provider_name=PROVIDER[resource],
                billing_account="1", billing_period_start_ms=period_ms, resource_id=ARN[resource],
                charge_period_start_ms=start, charge_period_end_ms=start + HOUR_MS, charge_category="Usage",
                billed_cost_usd=amount, effective_cost_usd=amount, service="compute", sku="", region="r",
                instance_type="p4d.24xlarge", gpu_class="A100", gpus=8, source="cur", export_version=version))
    return lines


def batch(windows_: list[CostWindow] = (), lines: list[CostLine] = ()) -> Batch:
    out = Batch()
    for w in windows_:
        out.add("cost_windows", cost_window_row(w))
    for line in lines:
        out.add("cost_lines", cost_line_row(line))
    return out


def _text(rows: list[tuple]) -> list[tuple]:
    return [tuple(str(v) for v in row) for row in rows]  # Decimal('1.50') and Decimal('1.5') differ here


def check(dsn: str, windows_: list[CostWindow], lines: list[CostLine]) -> list[tuple]:
    """The rollup's rows are the views' (per resource and day, and per workload and day) and its totals the
    events' cents; its rows."""
    with psycopg.connect(dsn) as conn:
        rollup = conn.execute("SELECT day, resource, provider, estimated_usd, billed_usd, hours_not_billed"
                              "  FROM cloud_cost_daily ORDER BY 1, 2, 3").fetchall()
        assert _text(rollup) == _text(conn.execute("""
            SELECT date_trunc('day', hour), resource, provider, sum(estimated_usd), sum(billed_usd),
                   count(*) FILTER (WHERE billed_usd IS NULL)
              FROM estimate_vs_billed_hourly GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""").fetchall())
        by_workload = "SELECT day, workload, estimated_usd, billed_usd, estimate_error_ratio FROM {} ORDER BY 1, 2"
        assert _text(conn.execute(by_workload.format(
            "estimate_vs_billed_daily_between('-infinity', 'infinity')")).fetchall()) \
            == _text(conn.execute(by_workload.format("estimate_vs_billed_daily")).fetchall())
        estimated, billed = conn.execute(
            "SELECT sum(estimated_usd), sum(billed_usd) FROM cloud_cost_daily").fetchone()
    assert estimated == sum(w.cost_usd for w in windows_ if w.environment == "cloud" and w.basis == "estimated")
    assert billed == sum(line.effective_cost_usd for line in lines)
    return rollup


def owners(dsn: str, resource: str) -> list[str]:
    """The workload each day of ``resource`` is attributed to."""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT workload FROM cloud_cost_daily WHERE resource = %s ORDER BY day",
                                           (resource,))]


@pytest.fixture(params=[POSTGRESQL, TIMESCALEDB])
def engine_dsn(request):
    """A fresh database migrated for each engine."""
    dsn = request.getfixturevalue("database" if request.param == POSTGRESQL else "timescale_database")
    assert migrate(dsn, engine=request.param)[2] == request.param
    return request.param, dsn


def test_the_reconciliation_rollup_stays_the_views_rows_after_replays_restatements_and_a_superseding_bill(
        engine_dsn):
    engine, dsn = engine_dsn
    stored = {w.event_id: w for w in windows()}
    first = list(stored.values())
    october = delivery("2026-11-03T00:00:00Z|a", OCTOBER_MS, range(0, 48), D(1))
    # November's bill: the last 6 hours are not billed yet
    november = delivery("2026-12-03T00:00:00Z|a", NOVEMBER_MS, range(48, 66), D("1.02"))
    # windows and lines in mixed batches, a day's windows and lines in one of them
    write(dsn, batch(first[:900], october[:60]), batch(first[900:], october[60:]), batch(lines=november))
    billed = {line.event_id: line for line in october + november}
    before = check(dsn, list(stored.values()), list(billed.values()))
    assert len({row[0] for row in before}) == DAYS and any(row[5] for row in before)  # hours not billed counted
    assert owners(dsn, "i-0bb") == ["embed", "serve", "embed"]

    write(dsn, batch(first[:900], october[:60]))  # a replayed batch changes nothing
    assert check(dsn, list(stored.values()), list(billed.values())) == before

    if engine == TIMESCALEDB:  # what follows lands in compressed chunks, as it does in a running deployment
        assert compress_chunks(dsn, "cost_windows") >= 1 and compress_chunks(dsn, "cost_lines") >= 1
    # windows restated (the first day's train on i-0aa 3 % dearer), and stored late: a workload that takes
    # over i-0bb's first morning, which moves that day to it
    restated = [replace(w, cost_usd=w.cost_usd * D("1.03")) for w in first
                if w.resource == "i-0aa" and w.workload == "train" and w.window_start_ms < T0_MS + 86_400_000]
    late = [_window("i-0bb", "late", T0_MS + i * WINDOW_MS, 8, D("1.25")) for i in range(72)]
    stored.update({w.event_id: w for w in restated + late})
    write(dsn, batch(restated + late))
    assert check(dsn, list(stored.values()), list(billed.values())) != before
    assert owners(dsn, "i-0bb") == ["late", "serve", "embed"]

    # a delivery superseding October's: the first 20 hours only, 1 % cheaper (Oct 30's last 4 hours and all of
    # Oct 31, which no line of it names, not billed any more), then an older delivery arriving after it,
    # which the newer one supersedes at once
    superseding = delivery("2026-11-04T00:00:00Z|b", OCTOBER_MS, range(0, 20), D("0.99"))
    write(dsn, batch(lines=superseding[:30]), batch(lines=superseding[30:]))
    billed = {line.event_id: line for line in superseding + november}
    after = check(dsn, list(stored.values()), list(billed.values()))
    write(dsn, batch(lines=delivery("2026-11-02T00:00:00Z|0", OCTOBER_MS, range(0, 48), D(2))))
    assert check(dsn, list(stored.values()), list(billed.values())) == after
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT DISTINCT export_version FROM cost_lines WHERE billing_period_start = %s",
                            (datetime(2026, 10, 1, tzinfo=timezone.utc),)).fetchall() == [("2026-11-04T00:00:00Z|b",)]
    assert sum(row[5] for row in after) > sum(row[5] for row in before)

    # a line restated under its key onto another resource: both resources' day move
    moved = replace(superseding[0], resource_id=ARN["i-0gh0st"])
    write(dsn, batch(lines=[moved]))
    billed[moved.event_id] = moved
    check(dsn, list(stored.values()), list(billed.values()))


def _utc(rows: list[tuple]) -> list[tuple]:
    """Rows as text, times in UTC whatever the session's zone rendered them in, numbers as their value."""
    return [tuple(v.astimezone(timezone.utc).isoformat() if isinstance(v, datetime)
                  else v.normalize() if isinstance(v, D) else v for v in row) for row in rows]


RANGES = [  # off the hour, at a UTC and a Kolkata midnight, whole UTC days, less than a day, past the data
    (timedelta(hours=5, minutes=30), timedelta(days=2, hours=7, minutes=15)),
    (timedelta(hours=18, minutes=30), timedelta(days=1, hours=18, minutes=30)),
    (timedelta(0), timedelta(days=3)),
    (timedelta(days=-1), timedelta(days=1, hours=-1)),
    (timedelta(days=1, hours=3, minutes=10), timedelta(days=1, hours=9, minutes=40)),
    (timedelta(days=1, hours=20), timedelta(days=5)),
]
DAILY = "SELECT day, workload, estimated_usd, billed_usd, estimate_error_ratio FROM {} ORDER BY 1, 2"
PER_PROVIDER = ("SELECT provider, estimated_usd, billed_usd, resource_hours_not_billed"
                "  FROM estimate_vs_billed_per_provider_between(%(f)s, %(t)s) ORDER BY 1")


def test_the_reconciliation_panels_give_utc_days_and_hours_whatever_the_sessions_time_zone(database):
    """The panel functions' rows in a session in Asia/Kolkata (half an hour off UTC's hours) are those of a UTC
    session; there, the views' rows (whose hours and days are the session's)."""
    assert migrate(database, engine=POSTGRESQL)[2] == POSTGRESQL
    stored = windows()
    october = delivery("2026-11-03T00:00:00Z|a", OCTOBER_MS, range(0, 44), D(1))
    november = delivery("2026-12-03T00:00:00Z|a", NOVEMBER_MS, range(48, 66), D("1.02"))
    write(database, batch(stored[:1000], october), batch(stored[1000:], november))
    t0 = datetime.fromtimestamp(T0_MS / 1000, timezone.utc)
    with psycopg.connect(database, autocommit=True) as utc, psycopg.connect(database, autocommit=True) as kolkata:
        utc.execute("SET TimeZone = 'UTC'")
        kolkata.execute("SET TimeZone = 'Asia/Kolkata'")
        days = 0
        for start, end in RANGES:
            window = {"f": t0 + start, "t": t0 + end}
            daily = DAILY.format("estimate_vs_billed_daily_between(%(f)s, %(t)s)")
            in_utc = _utc(utc.execute(daily, window).fetchall())
            days += len(in_utc)  # none where the range holds no midnight
            assert _utc(kolkata.execute(daily, window).fetchall()) == in_utc, window
            assert in_utc == _utc(utc.execute(DAILY.format(
                "estimate_vs_billed_daily WHERE day BETWEEN %(f)s AND %(t)s"), window).fetchall()), window
            per_provider = _utc(utc.execute(PER_PROVIDER, window).fetchall())
            assert per_provider and _utc(kolkata.execute(PER_PROVIDER, window).fetchall()) == per_provider, window
            assert per_provider == _utc(utc.execute(
                "SELECT provider, sum(estimated_usd), sum(billed_usd), count(*) FILTER (WHERE billed_usd IS NULL)"
                "  FROM estimate_vs_billed_hourly WHERE hour BETWEEN %(f)s AND %(t)s GROUP BY 1 ORDER BY 1",
                window).fetchall()), window
        assert days >= 10


def _refreshes(monkeypatch) -> list[str]:
    """The statements the sink's connections execute from now on, the rollup's refreshes marked."""
    executed: list[str] = []
    original = psycopg.Connection.execute

    def execute(self, query, *args, **kwargs):
        executed.append("REFRESH" if "refresh_cloud_cost_daily(" in str(query) else str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    return executed


def _refreshed_once_at_the_end(executed: list[str]) -> None:
    """One refresh, and no write after it in the transaction (its locks are the transaction's last)."""
    assert executed.count("REFRESH") == 1, executed.count("REFRESH")
    after = executed[executed.index("REFRESH") + 1:]
    assert not [q for q in after if any(w in q.upper() for w in ("INSERT", "UPDATE", "DELETE", "COPY"))], after


def test_the_rollup_stays_exact_when_a_batch_is_written_carefully_or_row_by_row(engine_dsn, monkeypatch):
    """A batch holding a GPU sample stored already (written again carefully) and one holding a row the database
    refuses (written row by row, each row in its own savepoint, a superseding delivery among them): the rollup
    is the views' rows, refreshed once a batch, after its last row."""
    engine, dsn = engine_dsn
    first = windows()
    october = delivery("2026-11-03T00:00:00Z|a", OCTOBER_MS, range(0, 48), D(1))
    november = delivery("2026-12-03T00:00:00Z|a", NOVEMBER_MS, range(48, 66), D("1.02"))
    stored_sample = gpu_sample_rows(sample(datetime.fromtimestamp(T0_MS / 1000, timezone.utc)))
    write(dsn, batch(first[:900], october[:60]), batch_of("gpu_samples", stored_sample))

    careful = batch(first[900:], october[60:])
    careful.extend("gpu_samples", stored_sample)  # stored already: the fast write fails, the careful one keeps it
    executed = _refreshes(monkeypatch)
    sink = write(dsn, careful)
    assert sink.rejected == 1 and sink.rows_written == len(careful) - 1
    _refreshed_once_at_the_end(executed)  # the careful write's (the fast one failed at its first COPY)
    billed = {line.event_id: line for line in october}
    before = check(dsn, first, list(billed.values()))

    # windows restated, a window the database refuses (beyond numeric(20, 6)) on a day of i-0aa, a delivery
    # superseding October's with fewer hours, and November's bill: row by row
    restated = [replace(w, cost_usd=w.cost_usd * D("1.03")) for w in first
                if w.resource == "i-0aa" and w.workload == "etl"]
    refused = _window("i-0aa", "refused", T0_MS + 100 * WINDOW_MS, 8, D("1e20"))
    superseding = delivery("2026-11-04T00:00:00Z|b", OCTOBER_MS, range(0, 30), D("0.99"))
    executed.clear()
    sink = write(dsn, batch(restated + [refused], superseding + november))
    assert sink.rejected == 1 and sink.rows_written == len(restated) + len(superseding) + len(november)
    _refreshed_once_at_the_end(executed)
    stored = {w.event_id: w for w in first + restated}
    billed = {line.event_id: line for line in superseding + november}
    after = check(dsn, list(stored.values()), list(billed.values()))
    assert after != before and "refused" not in owners(dsn, "i-0aa")
    with psycopg.connect(dsn) as conn:
        assert [r[0][:40] for r in conn.execute("SELECT reason FROM dead_letters ORDER BY reason")] == [
            "sink: duplicate gpu_samples row (ts=2026", "sink: refused by the database: numeric f"]


def _waiting_on_an_advisory_lock(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND locktype = 'advisory'"
                            " AND NOT granted)", (pid,)).fetchone()[0]


def test_two_sinks_writing_one_resource_take_turns_and_other_resources_do_not_wait(database):
    """Sink A restates i-0aa's windows and holds its transaction open; sink B, writing i-0aa's bill lines,
    waits for A's commit at its refresh and then reads A's windows; sink C, writing i-0bb's, does not wait.
    (Plain PostgreSQL: the TimescaleDB the tests start here serves one session at a time; the locks are the
    same SQL function on both engines.)"""
    engine, dsn = POSTGRESQL, database
    assert migrate(dsn, engine=engine)[2] == engine
    first = windows()
    october = delivery("2026-11-03T00:00:00Z|a", OCTOBER_MS, range(0, 48), D(1))
    known = write(dsn, batch(first, october)).partitions.known  # the partitions exist: no DDL waits on A below

    def partitions() -> Partitions:
        out = Partitions(engine)
        out.known.update(known)
        return out

    restated = [replace(w, cost_usd=w.cost_usd + D("0.5")) for w in first
                if w.resource == "i-0aa" and w.window_start_ms < T0_MS + 86_400_000]
    relined = [replace(line, effective_cost_usd=line.effective_cost_usd * 2, billed_cost_usd=line.billed_cost_usd * 2)
               for line in october if "i-0aa" in line.resource_id and line.charge_period_start_ms < T0_MS + 86_400_000]
    others = [replace(w, cost_usd=w.cost_usd * 3) for w in first if w.resource == "i-0bb"][:96]
    with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b, psycopg.connect(dsn) as c, \
            ThreadPoolExecutor(1) as pool:
        c.execute("SET lock_timeout = '10s'")  # fails, not hangs, should C wait on A
        c.commit()
        with a.transaction():
            write_batch(a, batch(restated), engine, partitions())  # in A's open transaction (a savepoint)
            waiting = pool.submit(write_batch, b, batch(lines=relined), engine, partitions())
            for _ in range(100):
                if _waiting_on_an_advisory_lock(dsn, b.info.backend_pid):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("sink B did not wait on sink A's refresh lock")
            write_batch(c, batch(others), engine, partitions())  # another resource: no wait
            assert not waiting.done()
        waiting.result(timeout=30)
    stored = {w.event_id: w for w in first + restated + others}
    billed = {line.event_id: line for line in october + relined}
    check(dsn, list(stored.values()), list(billed.values()))
    # a refresh of more than 256 resources takes one lock on the whole table, not a lock per resource
    with psycopg.connect(dsn) as conn:
        for n, held in ((256, 257), (257, 1)):
            conn.execute("SELECT lock_cloud_cost_daily(array(SELECT 'i-' || g FROM generate_series(1, %s) g))", (n,))
            assert conn.execute("SELECT count(*), bool_or(objsubid = 1 AND mode = 'ExclusiveLock') FROM pg_locks"
                                " WHERE pid = pg_backend_pid() AND locktype = 'advisory'").fetchone() \
                == (held, n > 256)
            conn.rollback()
