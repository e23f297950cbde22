"""The on-prem GPU costs as a FOCUS Cost and Usage dataset (CSV) that loads beside the cloud bills.

Conformance, column by column:

* every FOCUS 1.0 mandatory column, with values that mean something for owned hardware:
  ``ServiceCategory`` ``Compute``, ``ChargeCategory`` ``Usage``, ``ChargeClass`` null (no row
  corrects an earlier billing period), and ``ListCost`` = ``ContractedCost`` = ``BilledCost`` =
  ``EffectiveCost`` (no list price, contract or discount stands between an owner and its
  hardware); ``PricingUnit`` ``GPU-Hours`` with the allocated GPU-hours as ``PricingQuantity``;
* FOCUS 1.1/1.2: ``ServiceSubcategory`` (``Virtual Machines``: hosts up to bare-metal servers),
  ``SkuId`` (the asset profile), ``SkuPriceId`` and ``SkuPriceDetails`` with ``GpuCount`` (1: a
  numeric SKU price property states its value for a single pricing unit, one GPU-hour);
* FOCUS 1.3: ``ServiceProviderName`` and ``HostProviderName`` (the organisation owns the hardware),
  and data generator-calculated split cost allocation.  Each row is an *allocated charge*: the
  *origin charge* is one node's GPUs of one class over one UTC day, split among the workloads that
  ran on them (``AllocatedResourceId`` = the workload) and the idle GPU time (the unallocated
  remainder: ``AllocatedResourceId`` null).  ``AllocatedMethodDetails`` carries the share of the
  origin charge (``AllocatedRatio``, summing to exactly 1 per origin charge) and the GPU-hours
  that drove it.  Dimensions and tags are the origin charge's, so every row of one origin agrees
  on them; the workload's own labels are in ``AllocatedTags``.

Nulls are empty fields.  Date/times are ISO 8601 UTC (``YYYY-MM-DDTHH:mm:ssZ``); numbers are
plain decimals.  Custom columns are prefixed ``x_``.
"""

from __future__ import annotations

import csv
import io
import operator
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterable

from hybridspend.contracts.config import Config
from hybridspend.costmodel import IDLE_WORKLOAD
from hybridspend.costmodel.timeunits import MS_PER_HOUR
from hybridspend.storage.onprem_allocation import NodeDayShare, onprem_node_day_shares

MJ_PER_KWH = 3_600_000_000
RATIO_PLACES = 12  # AllocatedRatio digits; the ratios of one origin charge still sum to exactly 1
QUANTITY = Decimal("0.000000001")  # GPU-hours to 9 places (3.6 ms)

ORGANIZATION = "On-premises"  # provider, publisher, host and invoice issuer of owned hardware
BILLING_ACCOUNT_ID = "on-prem"
BILLING_ACCOUNT_NAME = "On-premises GPU fleet"
SERVICE_NAME = "GPU compute"
RESOURCE_TYPE = "GPU Server"
PRICING_UNIT = "GPU-Hours"
ALLOCATED_METHOD_ID = "hybridspend-gpu-time"
TAG_PREFIX = "hybridspend/"  # provider-defined tag keys (FOCUS Tags)

COLUMNS = (
    # FOCUS 1.0 mandatory
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity",
    "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
    # recommended and conditional columns that apply to owned GPU nodes
    "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit", "InvoiceId", "PricingCategory", "ResourceId",
    "ResourceName", "ResourceType", "ServiceSubcategory", "SkuId", "SkuPriceId", "SkuPriceDetails", "Tags",
    # FOCUS 1.3
    "HostProviderName", "ServiceProviderName", "AllocatedMethodId", "AllocatedMethodDetails",
    "AllocatedResourceId", "AllocatedResourceName", "AllocatedTags",
    # custom
    "x_Workload", "x_Team", "x_GpuClass", "x_BusyGpuHours", "x_AllocatedGpuHours", "x_EnergyKwh",
)


def invoice_id(billing_start: datetime) -> str:
    """Owned hardware has no supplier invoice; the internal chargeback statement of the billing
    period and account is what finance reconciles against (FOCUS InvoiceId must not be null:
    rule InvoiceId-C-005-C): ``chargeback-<BillingAccountId>-<YYYY-MM>``."""
    return f"chargeback-{BILLING_ACCOUNT_ID}-{billing_start:%Y-%m}"


def focus_time(ts: datetime) -> str:
    """ISO 8601 UTC with the Z designator, as FOCUS's DateTimeFormat requires."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Decimal) -> str:
    """A plain decimal (no exponent, no sign for positives), as FOCUS's NumericFormat requires."""
    text = format(value, "f")
    return "0" if text in ("-0", "") else text


def _gpu_hours(ms: int) -> Decimal:
    return (Decimal(ms) / MS_PER_HOUR).quantize(QUANTITY)


def allocated_ratios(weights: list[Decimal | int], places: int = RATIO_PLACES) -> list[Decimal]:
    """Each weight's share of their total, rounded to ``places`` so that the shares sum to exactly 1.

    Largest remainder: every share is rounded down, then the units still missing go to the shares
    that lost the most.  All-zero weights share equally.  Exact in integers, the weights over one
    common denominator (``Fraction`` arithmetic took a month's 100,000 rows a second and more).
    """
    if not weights:
        return []
    ratios = [Decimal(w).as_integer_ratio() for w in weights]
    denominator = math.lcm(*(d for _, d in ratios))
    counts = [n * (denominator // d) for n, d in ratios]
    total = sum(counts)
    if total == 0:
        counts, total = [1] * len(weights), len(weights)
    scale = 10 ** places
    # share i is units[i] + remainders[i] / total units of 10^-places; weights are non-negative
    units, remainders = zip(*(divmod(c * scale, total) for c in counts))
    units = list(units)
    missing = scale - sum(units)
    if missing:
        for index in sorted(range(len(units)), key=lambda i: (-remainders[i], i))[:missing]:
            units[index] += 1
    return [Decimal(u).scaleb(-places) for u in units]


@dataclass(frozen=True)
class Sku:
    sku_id: str
    sku_price_id: str
    details: dict
    tags: dict


def sku_of(config: Config | None, resource: str, gpu_class: str) -> Sku:
    """The node's SKU: its asset profile when one matches the host, else its GPU class."""
    asset = config.asset_for_host(resource) if config is not None else None
    if asset is None:
        sku_id = f"onprem-{gpu_class}"
        details = {"GpuCount": 1, "x_GpuClass": gpu_class}
        tags = {f"{TAG_PREFIX}gpu-class": gpu_class}
    else:
        sku_id = asset.name
        details = {"GpuCount": 1, "x_GpuClass": asset.gpu_class, "x_GpuModel": asset.gpu_model,
                   "x_GpusPerNode": asset.gpus_per_node}
        tags = {f"{TAG_PREFIX}asset-profile": asset.name, f"{TAG_PREFIX}gpu-class": asset.gpu_class}
    return Sku(sku_id, f"{sku_id}/gpu-hour", details, tags)


def _json(value: dict) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _method_details(ratio: str, gpu_hours: str) -> str:
    # written by hand so that the decimals stay exact JSON numbers
    return ('{"Elements":[{"AllocatedRatio":' + ratio + ',"UsageQuantity":' + gpu_hours
            + ',"UsageUnit":"' + PRICING_UNIT + '"}]}')


def _field(text: str | None) -> str:
    """One CSV field as ``csv.writer`` writes it in a row of several: quoted where it must be, null empty."""
    if not text:
        return ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([text])
    return out.getvalue()[:-1]


def _fields(values: dict[str, str | None]) -> dict[str, str]:
    """The origin charge's columns as fields of a ``_template`` (a "%" doubled)."""
    return {column: _field(value).replace("%", "%%") for column, value in values.items()}


# the columns each allocated charge fills in itself, in COLUMNS order; the others are its origin charge's (the
# period's, the node's and the day's)
_ROW_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity",
                "AllocatedMethodDetails", "AllocatedResourceId", "AllocatedResourceName", "AllocatedTags", "x_Workload",
                "x_Team", "x_BusyGpuHours", "x_AllocatedGpuHours", "x_EnergyKwh")
assert list(_ROW_COLUMNS) == [c for c in COLUMNS if c in _ROW_COLUMNS]  # the order the rows give them in
_ROW_COLUMN_SET = frozenset(_ROW_COLUMNS)
# numbers are digits, a point and a sign (never quoted) and hold no "%": the details' field is quoted once, as a
# template of its two numbers
_DETAILS_FIELD = _field(_method_details("%s", "%s"))


def _template(origin: dict[str, str]) -> str:
    """The CSV line of an allocated charge of ``origin`` (every column but the row's own, from ``_fields``), the
    row's own columns left as ``%s`` for the ``%`` operator."""
    return ",".join(["%s" if c in _ROW_COLUMN_SET else origin[c] for c in COLUMNS]) + "\n"


def focus_rows(shares: Iterable[NodeDayShare], billing_start: datetime, billing_end: datetime,
               config: Config | None = None) -> list[str]:
    """FOCUS rows from the per-node, per-day shares, each a line of the CSV (its fields in ``COLUMNS`` order,
    null empty).  A month of 10,000 GPUs is about 100,000 rows: what every row of the period, of a node or of a
    day shares is formatted and quoted once into a line with the row's own columns left blank, and each row
    fills those in; a figure that recurs (GPU-hours, energy) is formatted once."""
    origins: dict[tuple, list[NodeDayShare]] = {}
    origin_of = operator.attrgetter("day", "resource", "gpu_class")
    for share in shares:
        origins.setdefault(origin_of(share), []).append(share)
    period = _fields({
        "BillingAccountId": BILLING_ACCOUNT_ID, "BillingAccountName": BILLING_ACCOUNT_NAME, "BillingCurrency": "USD",
        "BillingPeriodEnd": focus_time(billing_end), "BillingPeriodStart": focus_time(billing_start),
        "ChargeCategory": "Usage", "ChargeClass": None, "InvoiceIssuerName": ORGANIZATION, "PricingUnit": PRICING_UNIT,
        "ProviderName": ORGANIZATION, "PublisherName": ORGANIZATION, "ServiceCategory": "Compute",
        "ServiceName": SERVICE_NAME, "ChargeFrequency": "Usage-Based", "ConsumedUnit": PRICING_UNIT,
        "InvoiceId": invoice_id(billing_start), "PricingCategory": "Standard", "ResourceType": RESOURCE_TYPE,
        "ServiceSubcategory": "Virtual Machines", "HostProviderName": ORGANIZATION,
        "ServiceProviderName": ORGANIZATION, "AllocatedMethodId": ALLOCATED_METHOD_ID,
    })
    nodes: dict[tuple[str, str], dict] = {}
    days: dict[datetime, dict] = {}
    names: dict[str, str] = {}  # a workload's or team's name as a field
    tags: dict[tuple[str, str], str] = {}
    hours_of: dict[int, str] = {}  # GPU-ms -> GPU-hours as text
    kwh_of: dict[int, str] = {}  # MJ -> kWh as text
    rows = []
    for (day, resource, gpu_class), group in origins.items():
        node = nodes.get((resource, gpu_class))
        if node is None:
            sku = sku_of(config, resource, gpu_class)
            node = nodes[(resource, gpu_class)] = _fields({
                "ChargeDescription": f"{gpu_class} GPU-hours of owned node {resource}: amortized purchase, "
                                     f"energy and upkeep",
                "ResourceId": resource, "ResourceName": resource, "SkuId": sku.sku_id,
                "SkuPriceId": sku.sku_price_id, "SkuPriceDetails": _json(sku.details), "Tags": _json(sku.tags),
                "x_GpuClass": gpu_class})
        when = days.get(day)
        if when is None:
            when = days[day] = _fields({"ChargePeriodEnd": focus_time(day + timedelta(days=1)),
                                        "ChargePeriodStart": focus_time(day)})
        line = _template({**period, **node, **when})
        weights = [s.cost_usd for s in group] if sum(s.cost_usd for s in group) else [s.allocated_gpu_ms
                                                                                     for s in group]
        for share, ratio in zip(group, allocated_ratios(weights)):
            cost = _number(share.cost_usd)
            hours = hours_of.get(share.allocated_gpu_ms)
            if hours is None:
                hours = hours_of[share.allocated_gpu_ms] = _number(_gpu_hours(share.allocated_gpu_ms))
            busy = hours_of.get(share.busy_gpu_ms)
            if busy is None:
                busy = hours_of[share.busy_gpu_ms] = _number(_gpu_hours(share.busy_gpu_ms))
            kwh = kwh_of.get(share.energy_mj)
            if kwh is None:
                kwh = kwh_of[share.energy_mj] = _number((Decimal(share.energy_mj) / MJ_PER_KWH).quantize(QUANTITY))
            workload = names.get(share.workload)
            if workload is None:
                workload = names[share.workload] = _field(share.workload)
            team = names.get(share.team)
            if team is None:
                team = names[share.team] = _field(share.team)
            if share.workload == IDLE_WORKLOAD:  # the unallocated remainder: no allocated resource
                allocated, allocated_tags = "", ""
            else:
                allocated = workload
                allocated_tags = tags.get((share.workload, share.team))
                if allocated_tags is None:
                    allocated_tags = tags[(share.workload, share.team)] = _field(_json(
                        {"workload": share.workload, **({"team": share.team} if share.team else {})}))
            rows.append(line % (cost, cost, cost, cost, hours, hours, _DETAILS_FIELD % (_number(ratio), hours),
                                allocated, allocated, allocated_tags, workload, team, busy, hours, kwh))
    return rows


def render_csv(rows: list[str]) -> str:
    """The CSV: the header, then the rows ``focus_rows`` made."""
    return ",".join(COLUMNS) + "\n" + "".join(rows)


def render_focus(conn, start: datetime, end: datetime, config: Config | None = None) -> str:
    """The FOCUS CSV of the on-prem costs of the billing period [start, end)."""
    return render_csv(focus_rows(onprem_node_day_shares(conn, start, end), start, end, config))
