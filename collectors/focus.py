"""FOCUS billing files (1.0–1.2, CSV, CSV.gz or Parquet) to cost-line events.

Every row is either turned into a ``CostLine`` or rejected with a reason naming the file, the row
and what is wrong; nothing is dropped silently.  A file that lacks a column hybridspend cannot do
without is rejected as a whole, with the missing columns named.  ``NULL``/``null`` literals are
nulls, ``Tags`` is a JSON object, ``x_`` columns are kept as text.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator

from hybridspend.contracts.catalog import Catalog, provider_key
from hybridspend.contracts.events import MAX_LABEL_LEN, MAX_MONEY_PLACES, CostLine, EventError

MAX_LINE_USD_DIGITS = 12  # a trillion dollars: no single billing line is that large
MAX_NUMBER_CHARS = 64
MAX_TAGS_CHARS = 65_536
MAX_RECORD_CHARS = 1 << 20  # one CSV record; longer is not a billing row (and would fill memory)
MAX_GZIP_RATIO = 200  # decompressed bytes per compressed byte, past the first MAX_GZIP_FREE_BYTES
MAX_GZIP_FREE_BYTES = 64 << 20
EARLIEST = datetime(1990, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
REQUIRED = ("BilledCost", "EffectiveCost", "ChargePeriodStart", "ChargePeriodEnd", "BillingCurrency", "ProviderName")
NULLS = {"", "NULL", "null", "Null"}
SOURCE = "focus-file"


class FocusRowError(ValueError):
    pass


@dataclass
class ProviderTotals:
    rows: int = 0
    billed_cost_usd: Decimal = Decimal(0)
    effective_cost_usd: Decimal = Decimal(0)


@dataclass
class FocusSummary:
    rows_read: int = 0
    rows_published: int = 0
    rows_rejected: int = 0
    gpu_rows: int = 0
    by_provider: dict[str, ProviderTotals] = field(default_factory=lambda: defaultdict(ProviderTotals))
    rejections: list[str] = field(default_factory=list)  # "file:row: reason"

    files_unread: list[str] = field(default_factory=list)  # files not read whole

    def reject(self, where: str, reason: str, rows: int = 1) -> None:
        self.rows_rejected += rows
        if len(self.rejections) < 1000:
            self.rejections.append(f"{where}: {reason}")

    def broke_off(self, where: str, reason: str) -> None:
        """A file that could not be read (or not to its end): the delivery is not whole."""
        self.files_unread.append(where)
        self.rejections.append(f"{where}: {reason}")  # past the cap on row rejections too

    def as_json(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_published": self.rows_published,
            "rows_rejected": self.rows_rejected,
            "gpu_rows": self.gpu_rows,
            "files_unread": self.files_unread,
            "by_provider": {
                name: {"rows": t.rows, "billed_cost_usd": float(t.billed_cost_usd),
                       "effective_cost_usd": float(t.effective_cost_usd)}
                for name, t in sorted(self.by_provider.items())
            },
            "rejections": self.rejections[:100],
        }


def _null(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() in NULLS):
        return None
    return value


def _text(row: dict, column: str) -> str:
    value = _null(row.get(column))
    return "" if value is None else str(value)


def _decimal(row: dict, column: str) -> Decimal:
    value = _null(row.get(column))
    if value is None:
        raise FocusRowError(f"{column} is null")
    text = str(value).strip()
    if len(text) > MAX_NUMBER_CHARS:
        raise FocusRowError(f"{column} is not a number of at most {MAX_NUMBER_CHARS} characters: {text[:40]!r}...")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise FocusRowError(f"{column} is not a number: {text[:40]!r}") from None
    if not amount.is_finite():
        raise FocusRowError(f"{column} is not finite: {text[:40]!r}")
    if amount.as_tuple().exponent < -MAX_MONEY_PLACES:
        raise FocusRowError(f"{column} has more than {MAX_MONEY_PLACES} decimal places: {text[:40]!r}")
    # its exponent is compared before any arithmetic: abs(1e1000000) raises decimal.Overflow
    if amount and amount.adjusted() >= MAX_LINE_USD_DIGITS:
        raise FocusRowError(f"{column} {text[:40]} is beyond ±1e{MAX_LINE_USD_DIGITS} USD for one line")
    return amount


def _timestamp(row: dict, column: str, *, required: bool = True) -> datetime | None:
    value = _null(row.get(column))
    if value is None:
        if required:
            raise FocusRowError(f"{column} is null")
        return None
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).strip()[:64].replace(" ", "T", 1))
        except ValueError:
            raise FocusRowError(f"{column} is not a timestamp: {str(value)[:40]!r}") from None
    try:
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before the first UTC instant Python has
        raise FocusRowError(f"{column} is out of range: {str(value)[:40]!r}") from None
    if not EARLIEST <= ts < LATEST:
        raise FocusRowError(f"{column} {ts:%Y-%m-%d} is outside {EARLIEST:%Y}-{LATEST:%Y}")
    return ts


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _tags(row: dict) -> dict[str, str]:
    value = _null(row.get("Tags"))
    if value is None:
        return {}
    if isinstance(value, dict):
        parsed = value
    elif isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        parsed = dict(value)  # a Parquet map column reads as (key, value) pairs
    elif not isinstance(value, str):
        raise FocusRowError(f"Tags is not a JSON object or a map: {type(value).__name__}")
    elif len(value) > MAX_TAGS_CHARS:
        raise FocusRowError(f"Tags is longer than {MAX_TAGS_CHARS:,} characters ({len(value):,})")
    else:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FocusRowError(f"Tags is not JSON: {exc.msg}") from None
        except RecursionError:
            raise FocusRowError("Tags is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise FocusRowError("Tags is not a JSON object")
    return {str(k)[:MAX_LABEL_LEN]: ("" if v is None else str(v))[:1024] for k, v in parsed.items()}


def to_cost_line(row: dict, *, catalog: Catalog, event_id: str, export_version: str,
                 source: str = SOURCE) -> CostLine:
    currency = _text(row, "BillingCurrency")
    if currency != "USD":
        raise FocusRowError(f"BillingCurrency {currency or 'null'}: only USD is supported")
    start = _timestamp(row, "ChargePeriodStart")
    end = _timestamp(row, "ChargePeriodEnd")
    assert start is not None and end is not None
    if end < start:
        raise FocusRowError("ChargePeriodEnd is before ChargePeriodStart")
    period = _timestamp(row, "BillingPeriodStart", required=False) or start.replace(
        day=1, hour=0, minute=0, second=0, microsecond=0)
    provider_name = _text(row, "ProviderName")
    provider = provider_key(provider_name)
    gpu = catalog.find_in(provider, _text(row, "SkuId"), _text(row, "ResourceType"),
                          _text(row, "ChargeDescription"), _text(row, "x_InstanceType"), _text(row, "ResourceId"))
    line = CostLine(
        event_id=event_id,
        provider=provider,
        provider_name=provider_name[:MAX_LABEL_LEN],
        billing_account=_text(row, "BillingAccountId")[:MAX_LABEL_LEN],
        billing_period_start_ms=_ms(period),
        resource_id=_text(row, "ResourceId")[:2048],
        charge_period_start_ms=_ms(start),
        charge_period_end_ms=_ms(end),
        charge_category=_text(row, "ChargeCategory")[:MAX_LABEL_LEN],
        billed_cost_usd=_decimal(row, "BilledCost"),
        effective_cost_usd=_decimal(row, "EffectiveCost"),
        service=_text(row, "ServiceName")[:MAX_LABEL_LEN],
        sku=_text(row, "SkuId")[:MAX_LABEL_LEN],
        region=_text(row, "RegionId")[:MAX_LABEL_LEN],
        instance_type=gpu.instance_type if gpu else "",
        gpu_class=gpu.gpu_class if gpu else "",
        gpus=gpu.gpus if gpu else 0,
        source=source,
        export_version=export_version,
        tags=_tags(row),
        extra={k: _text(row, k)[:4096] for k in row if k.startswith("x_") and _null(row.get(k)) is not None},
    )
    try:  # what the sink will accept, checked now: a line refused there would make the delivery partial
        return CostLine.decode(line.encode())
    except EventError as exc:
        raise FocusRowError(str(exc).removeprefix(f"{CostLine.SCHEMA}: ")) from None


def _rows(path: Path, files: contextlib.ExitStack) -> tuple[list[str], Iterator[dict]]:
    """The columns and rows of one file; what it opens is closed with ``files``."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        files.callback(parquet.close)

        def parquet_rows() -> Iterator[dict]:
            for batch in parquet.iter_batches(batch_size=10_000):
                yield from batch.to_pylist()

        return list(parquet.schema_arrow.names), parquet_rows()
    raw = files.enter_context(path.open("rb"))
    stream = files.enter_context(_BoundedGzip(raw, path.stat().st_size)) if name.endswith(".gz") else raw
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(_bounded_lines(text))
    return list(reader.fieldnames or []), iter(reader)


class FocusFileError(ValueError):
    """A file that cannot be read whole (a line too long, a compression bomb)."""


def _bounded_lines(text: io.TextIOBase) -> Iterator[str]:
    """The file's lines, each CSV record (a quoted field may span lines) at most MAX_RECORD_CHARS:
    csv would hold a record of any length in memory."""
    number, record_chars, quoted = 0, 0, False
    while True:
        line = text.readline(MAX_RECORD_CHARS + 1)
        if not line:
            return
        number += 1
        record_chars += len(line)
        if record_chars > MAX_RECORD_CHARS:
            raise FocusFileError(f"line {number}: a record longer than {MAX_RECORD_CHARS:,} characters")
        quoted ^= line.count('"') % 2 == 1  # inside a quoted field until its closing quote
        if not quoted:
            record_chars = 0
        yield line


class _BoundedGzip(io.RawIOBase):
    """gzip, decompressed as it is read, refusing a compression ratio no billing export has."""

    def __init__(self, raw, compressed_bytes: int) -> None:
        self.gz = gzip.GzipFile(fileobj=raw)
        self.limit = max(MAX_GZIP_FREE_BYTES, MAX_GZIP_RATIO * compressed_bytes)
        self.out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.gz.readinto(buffer)
        self.out += n
        if self.out > self.limit:
            raise FocusFileError(f"decompresses past {self.limit:,} bytes ({MAX_GZIP_RATIO}:1): a compression bomb?")
        return n

    def close(self) -> None:
        self.gz.close()
        super().close()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_files(paths: list[Path], catalog: Catalog, export_version: str, summary: FocusSummary,
               progress=lambda n: None, *, source: str = SOURCE, row_map=None, names: list[str] | None = None,
               id_prefix: str = "focus") -> Iterator[CostLine]:
    """Yield the cost lines of every file, counting reads and rejections in ``summary``.

    ``row_map`` turns another export's rows into FOCUS-named ones (AWS CUR 2.0); ``names`` are
    how files are named in messages and ids (an S3 key rather than a local temporary path).
    """
    for index, path in enumerate(paths):
        with contextlib.ExitStack() as files:  # the file closed as soon as it is read
            where = names[index] if names else str(path)
            try:
                digest = file_digest(path)
                columns, rows = _rows(path, files)
                if row_map is not None:
                    columns, rows = row_map.columns(columns), map(row_map, rows)
            except (OSError, csv.Error, UnicodeDecodeError, EOFError, FocusFileError) as exc:
                summary.broke_off(where, f"cannot read the file: {exc}")
                continue
            except Exception as exc:  # pyarrow's errors for a file that is not Parquet
                summary.broke_off(where, f"cannot read the file: {type(exc).__name__}: {exc}"[:300])
                continue
            missing = [c for c in REQUIRED if c not in columns]
            try:
                if missing:
                    count = sum(1 for _ in rows)
                    summary.rows_read += count
                    summary.reject(where, f"missing FOCUS columns {', '.join(missing)}; all {count} rows rejected",
                                   rows=count)
                    continue
                for number, row in enumerate(rows, start=1):
                    summary.rows_read += 1
                    if summary.rows_read % 50_000 == 0:
                        progress(summary.rows_read)
                    try:
                        line = to_cost_line(row, catalog=catalog, event_id=f"{id_prefix}|{digest}|{number}",
                                            export_version=export_version, source=source)
                    except FocusRowError as exc:
                        summary.reject(f"{where}:{number + 1}", str(exc))  # +1: the header is line 1
                        continue
                    totals = summary.by_provider[line.provider_name or "(unknown)"]
                    totals.rows += 1
                    totals.billed_cost_usd += line.billed_cost_usd
                    totals.effective_cost_usd += line.effective_cost_usd
                    summary.rows_published += 1
                    summary.gpu_rows += 1 if line.gpu_class else 0
                    yield line
            except (csv.Error, UnicodeDecodeError, OSError, EOFError, FocusFileError) as exc:
                summary.broke_off(where, f"the file broke off while reading: {exc}")
            except Exception as exc:  # pyarrow's errors for a Parquet value it cannot convert (year 10000)
                summary.broke_off(where, f"the file broke off while reading: {type(exc).__name__}: {exc}"[:300])
