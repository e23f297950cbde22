"""OpenCost's custom-pricing CSV from the asset profiles, and asset profiles from such a CSV.

OpenCost's CSV pricing (``EndTimestamp,InstanceID,Region,AssetClass,InstanceIDField,InstanceType,
MarketPriceHourly,Version``) prices a node's GPUs from a ``gpu`` row whose ``InstanceID`` equals
the value of the node label named in ``InstanceIDField`` (lower-cased on both sides), at
``MarketPriceHourly`` per GPU-hour.  It prices GPUs only on nodes that a ``node`` row matches, so
the export also writes one ``node`` row per profile at $0 (the profile's whole cost, the node's
share of CPU, memory and networking included, is in its GPU rate), matched on the same label in
the node's metadata.  Label the nodes of each profile once:

    kubectl label node dgx-a100-1 hybridspend.io/asset-profile=dgx-a100

``Region`` stays empty: OpenCost looks GPU rows up without a region.

Import goes the other way: each ``gpu`` row becomes an asset profile whose fully loaded rate is
that flat price (carried whole as upkeep; no purchase price, power or PUE), stated as such in the
YAML, so OpenCost users can start from what they have and refine it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation

from hybridspend.contracts.catalog import gpu_class_of
from hybridspend.contracts.config import AssetProfile, Config
from hybridspend.costmodel import HOURS_PER_YEAR
from hybridspend.costmodel.money import micro

HEADER = ("EndTimestamp", "InstanceID", "Region", "AssetClass", "InstanceIDField", "InstanceType",
          "MarketPriceHourly", "Version")
DEFAULT_LABEL = "hybridspend.io/asset-profile"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # a Kubernetes label value
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?")


MAX_RATE_DIGITS = 6  # a million dollars per GPU-hour: beyond any price
MAX_RATE_PLACES = 12  # decimal places of a price


class OpenCostError(ValueError):
    """A pricing file or profile that cannot be converted; the message says which and why."""


@dataclass(frozen=True)
class PriceRow:
    end_timestamp: str
    instance_id: str
    region: str
    asset_class: str
    instance_id_field: str
    instance_type: str
    market_price_hourly: str
    version: str
    line: int = 0  # where it is in its file

    def values(self) -> tuple[str, ...]:
        return (self.end_timestamp, self.instance_id, self.region, self.asset_class, self.instance_id_field,
                self.instance_type, self.market_price_hourly, self.version)


def export_rows(config: Config, at: datetime, label: str = DEFAULT_LABEL, node_rows: bool = True) -> list[PriceRow]:
    """One ``gpu`` row per asset profile at its fully loaded $/GPU-hour at ``at`` (plus $0 ``node`` rows).

    ``EndTimestamp`` is the day the rate drops (capex ends) while the profile still amortizes.
    """
    if not _LABEL_KEY.fullmatch(label):
        raise OpenCostError(f"--label: {label!r} is not a Kubernetes label key")
    if not config.onprem_assets:
        raise OpenCostError("the configuration has no onprem_assets to price")
    seen: dict[str, str] = {}
    rows = []
    for asset in config.onprem_assets:
        if not _LABEL_VALUE.fullmatch(asset.name):
            raise OpenCostError(f"asset profile {asset.name!r}: its name is the node label value OpenCost matches, "
                                f"so it must be a Kubernetes label value (letters, digits, '-', '_', '.', "
                                f"at most 63)")
        if asset.name.lower() in seen:  # OpenCost lower-cases the values it matches
            raise OpenCostError(f"asset profiles {seen[asset.name.lower()]!r} and {asset.name!r} differ only in "
                                f"case; OpenCost cannot tell them apart")
        seen[asset.name.lower()] = asset.name
        gpu = asset.gpu_cost()
        ends = gpu.capex_ends_on()
        end_text = f"{ends.isoformat()} 00:00:00 UTC" if ends is not None and ends > at.date() else ""
        rate = micro(gpu.rate(at).usd_per_gpu_hour)
        if node_rows:
            rows.append(PriceRow(end_text, asset.name, "", "node", f"metadata.labels.{label}", asset.name, "0", ""))
        rows.append(PriceRow(end_text, asset.name, "", "gpu", label, asset.gpu_model, format(rate, "f"), ""))
    return rows


def render_csv(rows: list[PriceRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow(row.values())
    return out.getvalue()


def parse_csv(text: str, where: str = "the file") -> list[PriceRow]:
    """The rows of an OpenCost pricing CSV (lines starting with '#' are comments, as OpenCost reads them)."""
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(line for _, line in numbered)
    try:
        missing = [c for c in HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise OpenCostError(f"{where}: not an OpenCost pricing CSV: missing column(s) {', '.join(missing)}")
        return [PriceRow(*(str(raw.get(c) or "").strip() for c in HEADER), line=numbered[index + 1][0])
                for index, raw in enumerate(reader)]
    except csv.Error as exc:  # a NUL byte, a field past csv's size limit
        raise OpenCostError(f"{where}: not an OpenCost pricing CSV: {exc}") from None


def _profile_name(row: PriceRow) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", row.instance_id.lower()).strip("-") or "gpu"
    region = re.sub(r"[^a-z0-9]+", "-", row.region.lower()).strip("-")
    return f"{base}-{region}" if region else base


@dataclass(frozen=True)
class ImportedProfile:
    profile: AssetProfile
    usd_per_gpu_hour: Decimal
    source: PriceRow


def import_profiles(rows: list[PriceRow], at: date, gpus_per_node: int = 8, nodes: int = 1) -> list[ImportedProfile]:
    """Each ``gpu`` row as an asset profile whose fully loaded rate is its flat price per GPU-hour.

    The flat rate is carried whole as upkeep: support_usd_per_year_per_node = rate x 8760 x GPUs
    per node, so upkeep per GPU-hour = that / GPUs per node / 8760 = the rate, exactly.
    """
    if gpus_per_node <= 0 or nodes <= 0:
        raise OpenCostError(f"GPUs per node and nodes must be > 0, got {gpus_per_node} and {nodes}")
    out: list[ImportedProfile] = []
    names: set[str] = set()
    suffixes: dict[str, int] = {}  # base name -> the last suffix given
    for row in rows:
        if row.asset_class.lower() != "gpu":
            continue
        try:
            rate = Decimal(row.market_price_hourly) if len(row.market_price_hourly) <= 64 else Decimal("NaN")
        except InvalidOperation:
            rate = Decimal("NaN")
        # exponents are compared before any arithmetic: 1e999999 x 8760 takes seconds to print, and
        # 1e-999999999 a gigabyte
        if not rate.is_finite() or rate < 0 or (rate and rate.adjusted() >= MAX_RATE_DIGITS) \
                or rate.as_tuple().exponent < -MAX_RATE_PLACES:
            raise OpenCostError(f"line {row.line} ({row.instance_id[:80] or 'no InstanceID'}): MarketPriceHourly must"
                                f" be a number from 0 to below 1e{MAX_RATE_DIGITS} USD per GPU-hour with at most {MAX_RATE_PLACES} decimal places, got "
                                f"{row.market_price_hourly[:40]!r}")
        base = name = _profile_name(row)
        while name in names:  # the next free suffix of this base, remembered: linear in the rows
            suffixes[base] = suffixes.get(base, 1) + 1
            name = f"{base}-{suffixes[base]}"
        names.add(name)
        model = row.instance_type or row.instance_id
        profile = AssetProfile(
            name=name, gpu_model=model, gpu_class=gpu_class_of(model), gpu_count=gpus_per_node * nodes,
            gpus_per_node=gpus_per_node, hosts=[f"{name}-*"], purchase_price_usd_per_node=Decimal(0),
            in_service_date=at, amortization_months=36, power_w_per_gpu=Decimal(0), pue=Decimal(1),
            electricity_usd_per_kwh=Decimal(0), support_usd_per_year_per_node=rate * HOURS_PER_YEAR * gpus_per_node)
        out.append(ImportedProfile(profile, rate, row))
    if not out:
        raise OpenCostError("no GPU rows (AssetClass gpu) to import")
    return out


def _yaml_scalar(value) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral() else format(value, "f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, date)):
        return str(value)
    # a JSON string is a valid YAML double-quoted scalar; ASCII-escaped, since YAML refuses raw control characters
    return json.dumps(str(value))


FIELDS = ("name", "gpu_model", "gpu_class", "gpu_count", "gpus_per_node", "hosts", "purchase_price_usd_per_node",
          "in_service_date", "amortization_months", "power_w_per_gpu", "pue", "electricity_usd_per_kwh",
          "support_usd_per_year_per_node")


def profiles_yaml(imported: list[ImportedProfile], source: str, skipped: dict[str, int]) -> str:
    """The ``onprem_assets:`` section for a configuration file, each profile marked as a flat rate."""
    lines = [f"# Imported from the OpenCost pricing file {source}.",
             "# FLAT RATES: each profile charges OpenCost's MarketPriceHourly per GPU-hour, carried whole as",
             "# upkeep (support_usd_per_year_per_node = rate x 8760 h x GPUs per node). No purchase price,",
             "# amortization, power or PUE is modelled: replace them with the hardware's own figures for the",
             "# fully loaded cost, and set hosts, gpu_count and gpus_per_node to the real nodes."]
    if skipped:
        lines.append("# Not imported (hybridspend prices GPUs): " + ", ".join(
            f"{n} {cls or '(no class)'} row(s)" for cls, n in sorted(skipped.items())) + ".")
    lines.append("onprem_assets:")
    for item in imported:
        p = item.profile
        lines.append(f"  # flat rate ${format(item.usd_per_gpu_hour, 'f')} per GPU-hour, from OpenCost InstanceID "
                     f"{item.source.instance_id!r}" + (f" in {item.source.region!r}" if item.source.region else ""))
        for i, field in enumerate(FIELDS):
            value = getattr(p, field)
            text = "[" + ", ".join(_yaml_scalar(v) for v in value) + "]" if isinstance(value, list) \
                else _yaml_scalar(value)
            lines.append(f"  {'- ' if i == 0 else '  '}{field}: {text}")
    return "\n".join(lines) + "\n"


def skipped_classes(rows: list[PriceRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if row.asset_class.lower() != "gpu":
            counts[row.asset_class] = counts.get(row.asset_class, 0) + 1
    return counts


def at_datetime(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)
