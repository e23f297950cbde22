"""Hostile FOCUS files: every value a clear rejection naming its column, every unreadable file a
reported problem, memory bounded; never a traceback, never a hang."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridspend.collectors import focus
from hybridspend.collectors.focus import FocusSummary, read_files
from hybridspend.contracts.catalog import Catalog
from tests.test_focus import COLUMNS, focus_row, write_csv


def _read(path: Path) -> tuple[list, FocusSummary]:
    summary = FocusSummary()
    return list(read_files([path], Catalog(), "v", summary)), summary


@pytest.mark.parametrize("values, reason", [
    ({"BilledCost": "1e1000000"}, "BilledCost 1e1000000 is beyond ±1e12 USD for one line"),
    ({"EffectiveCost": "-1e308"}, "EffectiveCost -1e308 is beyond ±1e12 USD for one line"),
    ({"BilledCost": "9" * 100}, "BilledCost is not a number of at most 64 characters"),
    ({"BilledCost": "NaN"}, "BilledCost is not finite"),
    ({"ChargePeriodStart": "0001-01-01T00:00:00+05:00"}, "ChargePeriodStart is out of range"),
    ({"ChargePeriodEnd": "9999-12-31T23:00:00"}, "ChargePeriodEnd 9999-12-31 is outside 1990-2200"),
    ({"Tags": "[" * 100_000}, "Tags is longer than 65,536 characters"),
    ({"Tags": "[" * 60_000}, "Tags is nested too deeply"),
])
def test_a_hostile_value_rejects_its_row_naming_the_column(tmp_path, values, reason):
    path = write_csv(tmp_path / "bill.csv", [focus_row(BilledCost="1", EffectiveCost="1"),
                                             focus_row(**{"BilledCost": "2", "EffectiveCost": "2", **values})])
    lines, summary = _read(path)
    assert len(lines) == 1 and summary.rows_rejected == 1 and summary.files_unread == []
    assert summary.rejections[0].startswith(f"{path}:3: {reason}")


def test_parquet_map_tags_are_read_and_a_year_10000_breaks_the_file_off_with_its_reason(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    base = {c: [v] for c, v in focus_row(BilledCost="1", EffectiveCost="1").items() if c != "Tags"}
    table = pa.table({**base, "Tags": pa.array([[("team", "ml")]], type=pa.map_(pa.string(), pa.string()))})
    pq.write_table(table, tmp_path / "map.parquet")
    lines, summary = _read(tmp_path / "map.parquet")
    assert [line.tags for line in lines] == [{"team": "ml"}] and summary.rows_rejected == 0
    # a timestamp column whose value Python cannot hold: pyarrow raises while converting the row
    far = pa.array([253402300800 * 10**6], type=pa.timestamp("us", tz="UTC"))  # 10000-01-01
    pq.write_table(pa.table({**base, "ChargePeriodStart": far}), tmp_path / "y10000.parquet")
    lines, summary = _read(tmp_path / "y10000.parquet")
    assert lines == [] and summary.files_unread == [str(tmp_path / "y10000.parquet")]
    assert "the file broke off while reading" in summary.rejections[0]


def test_a_compression_bomb_stops_at_the_ratio_limit_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(focus, "MAX_GZIP_FREE_BYTES", 4 << 20)  # 4 MiB instead of 64: a quicker test
    path = tmp_path / "bomb.csv.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write((",".join(COLUMNS) + "\n").encode())
        for _ in range(260):  # 260 lines of 100,000 bytes: 26 MB from a file of a few dozen KB
            f.write(b"x" * 100_000 + b"\n")
    assert path.stat().st_size * focus.MAX_GZIP_RATIO < 26 << 20
    tracemalloc.start()
    lines, summary = _read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary.files_unread == [str(path)] and "a compression bomb?" in summary.rejections[-1]
    assert peak < 64 << 20


def test_a_line_of_millions_of_commas_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "commas.csv"
    path.write_text(",".join(COLUMNS) + "\n" + "," * (8 << 20) + "\n")
    tracemalloc.start()
    lines, summary = _read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lines == [] and summary.files_unread == [str(path)]
    assert "line 2: a record longer than 1,048,576 characters" in summary.rejections[0]
    assert peak < 32 << 20  # the 8 MiB line is never held whole, let alone split into 8 million fields


# cells a hostile or broken exporter may write, mixed with plausible ones
_CELLS = st.one_of(
    st.sampled_from(["", "NULL", "1", "-0.5", "1e308", "1e-400", "inf", "nan", "2026-10-05 10:00:00",
                     "0001-01-01T00:00:00+05:00", "9999-12-31", "{}", '{"a": [1]}', "[[[[", "USD", "EUR", '"']),
    st.text(max_size=30),
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({c: _CELLS for c in COLUMNS}), max_size=6),
       gz=st.booleans(), cut=st.integers(min_value=0, max_value=400))
def test_any_csv_is_read_or_rejected_with_a_reason_never_a_traceback(tmp_path, rows, gz, cut):
    text = io.StringIO()
    import csv

    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode("utf-8", "surrogatepass")
    data = gzip.compress(data)[: len(data) - cut] if gz else data[: max(0, len(data) - cut)]
    path = tmp_path / ("bill.csv.gz" if gz else "bill.csv")
    path.write_bytes(data)
    lines, summary = _read(path)  # no exception of any kind
    assert len(lines) + summary.rows_rejected == summary.rows_read or summary.files_unread
    for line in lines:  # what is accepted can be stored: finite, bounded, in range
        assert line.billed_cost_usd.is_finite() and abs(line.billed_cost_usd) < 10 ** 12
        assert datetime(1990, 1, 1, tzinfo=timezone.utc).timestamp() * 1000 <= line.charge_period_start_ms
        json.dumps(line.tags)


def test_the_console_shows_escape_sequences_from_a_file_as_text(tmp_path, capsys):
    from hybridspend.cli import main

    path = write_csv(tmp_path / "bill.csv", [focus_row(BilledCost="1", EffectiveCost="1",
                                                       ProviderName="\x1b]0;pwned\x07\x1b[2JAWS"),
                                             focus_row(BilledCost="x\x1b[31m", EffectiveCost="1")])
    assert main(["ingest", "focus", str(path), "--state-dir", str(tmp_path / "state")]) == 1
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\x07" not in out.out
    # the provider name is refused as the sink would refuse it; the bad amount is quoted, escaped
    assert "bill.csv:2: 'provider' contains control characters" in out.out
    assert "not a number: 'x\\x1b[31m'" in out.out


def test_sigterm_ends_an_ingest_within_a_second_mid_read(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.test_focus import ROOT

    rows = [focus_row(BilledCost="1.5", EffectiveCost="1.5", ResourceId=f"i-{i}") for i in range(200_000)]
    path = write_csv(tmp_path / "big.csv", rows)
    proc = subprocess.Popen([sys.executable, "-m", "hybridspend.cli", "ingest", "focus", str(path),
                             "--state-dir", str(tmp_path / "state")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the first progress line: 50,000 of the 200,000 rows checked
    assert "50,000 rows checked" in first, first + proc.communicate()[1]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    # under a second alone; the suite's three workers on two cores stretched it to 1.09 s once
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert not (tmp_path / "state" / "pgdata").exists()  # it stopped before publishing: no database started


def test_a_row_the_sink_would_refuse_is_rejected_at_ingest(tmp_path):
    """Ingest accepts exactly what the event contract accepts: otherwise a delivery counted whole
    would lose rows at the sink and replace a complete bill with a partial one."""
    path = write_csv(tmp_path / "bill.csv", [
        focus_row(BilledCost="1e-20000", EffectiveCost="1"),  # PostgreSQL refuses 20,000 decimal places
        focus_row(BilledCost="0e99999", EffectiveCost="1"),
        focus_row(BilledCost="1", EffectiveCost="1", BillingAccountId="111\x1b[2J"),
        focus_row(BilledCost="1", EffectiveCost="1")])
    lines, summary = _read(path)
    assert len(lines) == 1 and summary.rows_rejected == 3
    reasons = "\n".join(summary.rejections)
    assert "BilledCost has more than 30 decimal places" in reasons
    assert "'billed_cost_usd' must be below 1e18 in magnitude (what is stored), got '0E+99999'" in reasons
    assert "'billing_account' contains control characters" in reasons


def test_a_quoted_field_spanning_many_lines_is_bounded_as_one_record(tmp_path):
    path = tmp_path / "quoted.csv"
    # one record of 400,000 quoted fields, each holding a newline: no line is long, the record is
    path.write_text(",".join(COLUMNS) + "\n" + '"x\n",' * 400_000 + '"x"\n')
    lines, summary = _read(path)
    assert lines == [] and summary.files_unread == [str(path)]
    assert "a record longer than 1,048,576 characters" in summary.rejections[0]
    # and a record with a legitimately quoted newline still reads
    ok = write_csv(tmp_path / "ok.csv", [focus_row(BilledCost="1", EffectiveCost="1", x_Discount="two\nlines")])
    lines, summary = _read(ok)
    assert len(lines) == 1 and lines[0].extra["x_Discount"] == "two\nlines"


def test_an_ingest_that_reads_nothing_fails_and_an_empty_month_succeeds(tmp_path, capsys):
    from hybridspend.cli import main

    unreadable = tmp_path / "bill.parquet"
    unreadable.write_text("not parquet")
    assert main(["ingest", "focus", str(unreadable), "--state-dir", str(tmp_path / "state")]) == 1
    assert "nothing published" in capsys.readouterr().err
    empty = write_csv(tmp_path / "empty.csv", [])  # a header and no rows: a month with no charges
    assert main(["ingest", "focus", str(empty), "--state-dir", str(tmp_path / "state")]) == 0
    assert "nothing to publish: the files have no rows" in capsys.readouterr().err
    assert not (tmp_path / "state" / "pgdata").exists()  # neither started the database
