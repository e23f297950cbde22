"""The on-prem FOCUS export against the specification's column rules, read back through our reader.

``focus_violations`` is a validator written from the FOCUS requirements (1.0 mandatory columns,
their types, allowed values and nullability; 1.2 key-value SkuPriceDetails; 1.3 provider columns
and data generator-calculated split cost allocation).  It is itself tested on rows that break
each rule, so a passing export means something.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal as D

import psycopg
import pytest
import yaml

from hybridspend.collectors.focus import FocusSummary, read_files
from hybridspend.contracts.catalog import Catalog
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import CostWindow
from hybridspend.reports import focus_export
from hybridspend.reports.focus_export import allocated_ratios
from hybridspend.storage.db import migrate
from hybridspend.storage.onprem_allocation import onprem_cost_usd
from hybridspend.storage.sink import Batch, cost_window_row, write_batch
from hybridspend.storage.timeseries import POSTGRESQL, Partitions

# -- the validator, from the specification ---------------------------------------------------------

MANDATORY_1_0 = ("BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
                 "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
                 "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
                 "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName")
MANDATORY_1_3 = ("HostProviderName", "ServiceProviderName")
FOCUS_COLUMNS = set(MANDATORY_1_0) | set(MANDATORY_1_3) | {
    "AvailabilityZone", "BillingAccountType", "CapacityReservationId", "CapacityReservationStatus", "ChargeFrequency",
    "CommitmentDiscountCategory", "CommitmentDiscountId", "CommitmentDiscountName", "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus", "CommitmentDiscountType", "CommitmentDiscountUnit", "ConsumedQuantity",
    "ConsumedUnit", "ContractApplied", "ContractedUnitPrice", "InvoiceId", "ListUnitPrice", "PricingCategory",
    "PricingCurrency", "PricingCurrencyContractedUnitPrice", "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice", "RegionId", "RegionName", "ResourceId", "ResourceName", "ResourceType",
    "ServiceSubcategory", "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName",
    "SubAccountType", "Tags", "AllocatedMethodDetails", "AllocatedMethodId", "AllocatedResourceId",
    "AllocatedResourceName", "AllocatedTags"}
NOT_NULL = {"BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
            "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost",
            "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
            "HostProviderName", "ServiceProviderName", "ChargeFrequency",
            "InvoiceId"}  # FOCUS 1.2 InvoiceId-C-005-C, as the FinOps Foundation's validator checks it
DECIMALS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity")
DATETIMES = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
ALLOWED = {
    "ServiceCategory": {"AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
                        "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
                        "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
                        "Storage", "Web", "Other"},
    "ChargeCategory": {"Usage", "Purchase", "Tax", "Credit", "Adjustment"},
    "ChargeClass": {"Correction"},
    "ChargeFrequency": {"One-Time", "Recurring", "Usage-Based"},
    "PricingCategory": {"Standard", "Dynamic", "Committed", "Other"},
}
COMPUTE_SUBCATEGORIES = {"Containers", "End User Computing", "Quantum Compute", "Serverless Compute",
                         "Virtual Machines", "Other (Compute)"}
SKU_PRICE_PROPERTIES = {"CoreCount": "number", "DiskMaxIops": "number", "DiskSpace": "number", "DiskType": "string",
                        "GpuCount": "number", "InstanceType": "string", "InstanceSeries": "string",
                        "MemorySize": "number", "NetworkMaxIops": "number", "NetworkMaxThroughput": "number",
                        "OperatingSystem": "string", "Redundancy": "string", "StorageClass": "string"}
NUMERIC = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE]-?\d+)?")  # NumericFormat: no '+', no commas, no units
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")  # DateTimeFormat: extended ISO 8601, UTC
UNIT = re.compile(r"[A-Z][A-Za-z]*(-[A-Z][a-z]+|/[A-Z][a-z]+)?")  # UnitFormat: units, unit-time units, unit/time
PLACEHOLDERS = {"NULL", "null", "None", "N/A"}  # NullHandling: a null is a null, never a placeholder


def _key_value(text: str) -> dict | str:
    """KeyValueFormat: a serialized JSON object whose values are scalars; the problem otherwise."""
    try:
        value = json.loads(text, parse_float=D)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})"
    if not isinstance(value, dict):
        return "not a JSON object"
    if any(isinstance(v, (dict, list)) for v in value.values()):
        return "a value is an object or an array"
    return value


def focus_violations(text: str) -> list[str]:
    """Every FOCUS requirement the CSV breaks, as 'row N: Column: what' (row 1 is the header)."""
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    problems = [f"missing mandatory column {c}" for c in MANDATORY_1_0 + MANDATORY_1_3 if c not in columns]
    problems += [f"custom column {c} lacks the x_ prefix" for c in columns
                 if c not in FOCUS_COLUMNS and not c.startswith("x_")]
    origins: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
    for number, raw in enumerate(reader, start=2):
        row = {c: (v if v != "" else None) for c, v in raw.items()}  # an empty field is a null

        def bad(column: str, what: str, number: int = number) -> None:
            problems.append(f"row {number}: {column}: {what}")

        for column, value in row.items():
            if value is not None and (value in PLACEHOLDERS or not value.strip()):
                bad(column, f"placeholder {value!r} instead of a null")
        for column in NOT_NULL & set(columns):
            if row.get(column) is None:
                bad(column, "is null")
        for column in DECIMALS:
            if row.get(column) is not None and not NUMERIC.fullmatch(row[column]):
                bad(column, f"not a decimal: {row[column]!r}")
        for column in DATETIMES:
            if row.get(column) is not None and not DATETIME.fullmatch(row[column]):
                bad(column, f"not YYYY-MM-DDTHH:mm:ssZ: {row[column]!r}")
        for column, allowed in ALLOWED.items():
            if row.get(column) is not None and row[column] not in allowed:
                bad(column, f"{row[column]!r} is not an allowed value")
        if row.get("BillingCurrency") is not None and not re.fullmatch(r"[A-Z]{3}", row["BillingCurrency"]):
            bad("BillingCurrency", "not an ISO 4217 code")
        if row.get("ServiceCategory") == "Compute" and row.get("ServiceSubcategory") not in COMPUTE_SUBCATEGORIES:
            bad("ServiceSubcategory", f"{row.get('ServiceSubcategory')!r} is not a Compute subcategory")
        # nullability that depends on the charge
        regular = row.get("ChargeCategory") in ("Usage", "Purchase") and row.get("ChargeClass") != "Correction"
        for column in ("PricingQuantity", "PricingUnit", "SkuId", "SkuPriceId", "PricingCategory"):
            if regular and column in columns and row.get(column) is None:
                bad(column, "is null on a regular usage or purchase charge")
        if (row.get("PricingUnit") is None) != (row.get("PricingQuantity") is None):
            bad("PricingUnit", "must be null exactly when PricingQuantity is")
        if row.get("PricingUnit") is not None and not UNIT.fullmatch(row["PricingUnit"]):
            bad("PricingUnit", f"{row['PricingUnit']!r} does not follow UnitFormat")
        if "ConsumedQuantity" in columns:
            usage = row.get("ChargeCategory") == "Usage" and row.get("ChargeClass") != "Correction"
            for column in ("ConsumedQuantity", "ConsumedUnit"):
                if usage and row.get(column) is None:
                    bad(column, "is null on a usage charge")
                if row.get("ChargeCategory") != "Usage" and row.get(column) is not None:
                    bad(column, "is not null on a charge that is not usage")
        if row.get("ResourceId") is None and (row.get("ResourceName") or row.get("ResourceType")):
            bad("ResourceName", "set without a ResourceId")
        if row.get("ResourceId") is not None and "ResourceType" in columns and row.get("ResourceType") is None:
            bad("ResourceType", "null while ResourceId is set")
        # key-value columns
        for column in ("Tags", "SkuPriceDetails", "AllocatedTags"):
            if row.get(column) is not None:
                parsed = _key_value(row[column])
                if isinstance(parsed, str):
                    bad(column, parsed)
                elif column == "SkuPriceDetails":
                    for key, value in parsed.items():
                        kind = SKU_PRICE_PROPERTIES.get(key)
                        if kind is None and not key.startswith("x_"):
                            bad(column, f"property {key} is neither FOCUS-defined nor x_-prefixed")
                        if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, D))):
                            bad(column, f"{key} is not a number")
                        if kind == "string" and not isinstance(value, str):
                            bad(column, f"{key} is not a string")
        if row.get("SkuPriceDetails") is not None and row.get("SkuPriceId") is None:
            bad("SkuPriceDetails", "set while SkuPriceId is null")
        # money and periods
        try:
            starts = {c: datetime.strptime(row[c], "%Y-%m-%dT%H:%M:%SZ") for c in DATETIMES}
        except (TypeError, ValueError):
            starts = {}
        if starts:
            if starts["ChargePeriodEnd"] <= starts["ChargePeriodStart"]:
                bad("ChargePeriodEnd", "not after ChargePeriodStart")
            if not starts["BillingPeriodStart"] <= starts["ChargePeriodStart"] < starts["BillingPeriodEnd"]:
                bad("ChargePeriodStart", "outside the billing period")
        # split cost allocation (1.3)
        details = row.get("AllocatedMethodDetails")
        if (details is None) != (row.get("AllocatedMethodId") is None):
            bad("AllocatedMethodId", "must be set exactly when the charge is an allocated charge")
        if details is not None:
            try:
                obj = json.loads(details, parse_float=D)
                elements = obj["Elements"]
                assert isinstance(elements, list) and elements and all(isinstance(e, dict) for e in elements)
            except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
                bad("AllocatedMethodDetails", "not an object with an Elements array of objects")
                continue
            for element in elements:
                ratio = element.get("AllocatedRatio")
                if isinstance(ratio, bool) or not isinstance(ratio, (int, D)) or not 0 <= ratio <= 1:
                    bad("AllocatedMethodDetails", f"AllocatedRatio {ratio!r} is not a number in [0, 1]")
                    ratio = D(0)
                if "UsageQuantity" in element and "UsageUnit" not in element:
                    bad("AllocatedMethodDetails", "UsageQuantity without UsageUnit")
                for key in element:
                    if key not in ("AllocatedRatio", "UsageUnit", "UsageQuantity") and not key.startswith("x_"):
                        bad("AllocatedMethodDetails", f"key {key} is neither FOCUS-defined nor x_-prefixed")
            origin = tuple(row.get(c) for c in ("BillingAccountId", "ChargePeriodStart", "ChargePeriodEnd",
                                                "ResourceId", "SkuPriceId", "AllocatedMethodId"))
            origins[origin].append((number, row))
    for members in origins.values():
        ratios = sum((D(str(e["AllocatedRatio"])) for _, r in members
                      for e in json.loads(r["AllocatedMethodDetails"], parse_float=D)["Elements"]
                      if isinstance(e.get("AllocatedRatio"), (int, D))), D(0))
        if ratios != 1:
            problems.append(f"rows {[n for n, _ in members]}: AllocatedRatio sums to {ratios}, not 1")
        # the allocated charges of one origin agree on every dimension but the allocation's own
        for column in columns:
            if column.startswith(("x_", "Allocated")) or column in DECIMALS:
                continue
            if len({r.get(column) for _, r in members}) > 1:
                problems.append(f"rows {[n for n, _ in members]}: {column} differs within one origin charge")
    return problems


# -- the validator catches what it should ----------------------------------------------------------


def test_validator_rejects_the_old_focus_shaped_file_and_each_broken_rule():
    old = ("BillingAccountId,BillingCurrency,BillingPeriodStart,BillingPeriodEnd,ChargeCategory,ChargePeriodStart,"
           "ChargePeriodEnd,BilledCost,EffectiveCost,ProviderName,ServiceName\n"
           "on-prem,USD,2026-10-01 00:00:00,2026-11-01 00:00:00,Usage,2026-10-01 00:00:00,2026-10-02 00:00:00,"
           "27.600000,27.600000,On-premises,GPU compute\n")
    problems = focus_violations(old)
    # the ten mandatory 1.0 columns the issue found missing, plus 1.3's two provider columns
    assert {p.removeprefix("missing mandatory column ") for p in problems if p.startswith("missing")} == {
        "BillingAccountName", "ChargeClass", "ChargeDescription", "ContractedCost", "InvoiceIssuerName", "ListCost",
        "PricingQuantity", "PricingUnit", "PublisherName", "ServiceCategory", "HostProviderName",
        "ServiceProviderName"}
    assert "row 2: ChargePeriodStart: not YYYY-MM-DDTHH:mm:ssZ: '2026-10-01 00:00:00'" in problems

    good = focus_export.render_csv(focus_export.focus_rows([], datetime(2026, 10, 1, tzinfo=timezone.utc),
                                                           datetime(2026, 11, 1, tzinfo=timezone.utc)))
    header = good.splitlines()[0]
    row = dict(zip(header.split(","), [""] * len(header.split(","))))
    row.update(BilledCost="+1.5", BillingAccountId="on-prem", BillingCurrency="usd",
               BillingPeriodStart="2026-10-01T00:00:00Z", BillingPeriodEnd="2026-11-01T00:00:00Z",
               ChargeCategory="Usage", ChargeClass="Regular", ChargePeriodStart="2026-10-02T00:00:00Z",
               ChargePeriodEnd="2026-10-02T00:00:00Z", ContractedCost="1.5", EffectiveCost="1,5", ListCost="1.5",
               InvoiceIssuerName="On-premises", ProviderName="On-premises", PublisherName="NULL",
               ServiceCategory="GPU", ServiceName="GPU compute", HostProviderName="On-premises",
               ServiceProviderName="On-premises", ChargeFrequency="Hourly", PricingQuantity="2",
               SkuId="rack", SkuPriceId="", SkuPriceDetails='{"GpuCount": "one", "Gpus": 2}',
               AllocatedMethodId="m", AllocatedMethodDetails='{"Elements": [{"AllocatedRatio": 0.4}]}')
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header.split(","))
    writer.writeheader()
    writer.writerow(row)
    problems = focus_violations(out.getvalue())
    for expected in ("row 2: BilledCost: not a decimal: '+1.5'", "row 2: EffectiveCost: not a decimal: '1,5'",
                     "row 2: BillingCurrency: not an ISO 4217 code", "row 2: ChargeClass: 'Regular' is not an allowed value",
                     "row 2: ServiceCategory: 'GPU' is not an allowed value",
                     "row 2: ChargeFrequency: 'Hourly' is not an allowed value",
                     "row 2: PublisherName: placeholder 'NULL' instead of a null",
                     "row 2: ChargePeriodEnd: not after ChargePeriodStart",
                     "row 2: PricingUnit: must be null exactly when PricingQuantity is",
                     "row 2: SkuPriceDetails: GpuCount is not a number",
                     "row 2: SkuPriceDetails: property Gpus is neither FOCUS-defined nor x_-prefixed",
                     "row 2: SkuPriceDetails: set while SkuPriceId is null",
                     "rows [2]: AllocatedRatio sums to 0.4, not 1"):
        assert expected in problems


# -- the allocation arithmetic ----------------------------------------------------------------------


def test_allocated_ratios_sum_to_exactly_one_and_follow_the_weights():
    # 27.60 / 55.20 = 0.5; 13.80 / 55.20 = 0.25 twice
    assert allocated_ratios([D("27.60"), D("13.80"), D("13.80")]) == [D("0.5"), D("0.25"), D("0.25")]
    # thirds: 0.333333333333 each, the missing unit 1e-12 goes to the first of the equal remainders
    assert allocated_ratios([1, 1, 1]) == [D("0.333333333334"), D("0.333333333333"), D("0.333333333333")]
    assert sum(allocated_ratios([D("0.000001"), D("7"), D("3.333333")])) == 1
    assert allocated_ratios([0, 0]) == [D("0.5"), D("0.5")]  # nothing to weigh: equal shares


# -- the export from a seeded month -----------------------------------------------------------------

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
OCT1_MS = 1_790_812_800_000  # 2026-10-01 00:00 UTC
# Per GPU-hour on-prem: capex 26280/(36*730) = 1.00, upkeep 876/8760 = 0.10, energy 0.5 kW * 1.0 * 0.10 = 0.05
CONFIG = {
    "onprem_assets": [{"name": "rack", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_class": "A100", "gpu_count": 4,
                       "gpus_per_node": 2, "hosts": ["n*"], "purchase_price_usd_per_node": 52560,
                       "in_service_date": "2026-01-01", "amortization_months": 36, "power_w_per_gpu": 500, "pue": 1,
                       "electricity_usd_per_kwh": 0.10, "support_usd_per_year_per_node": 1752}],
}


def window(workload, team, env, resource, gpu_class, start_ms, alloc_h, busy_h, cost, energy_mj=0) -> CostWindow:
    return CostWindow(
        event_id=CostWindow.make_id(resource, workload, env, gpu_class, start_ms), workload=workload, team=team,
        allow_spot=False, environment=env, gpu_class=gpu_class, resource=resource, window_start_ms=start_ms,
        window_ms=12 * HOUR_MS, allocated_gpu_ms=int(D(alloc_h) * HOUR_MS), busy_gpu_ms=int(D(busy_h) * HOUR_MS),
        metered_gpu_ms=0, energy_mj=energy_mj, sample_count=48, first_ms=start_ms, last_ms=start_ms + 12 * HOUR_MS,
        cost_usd=D(cost))


def seed(dsn: str) -> None:
    migrate(dsn)
    batch = Batch()
    for day in (0, 1):
        for half in (0, 1):  # two 12-hour windows a day
            start = OCT1_MS + day * DAY_MS + half * 12 * HOUR_MS
            # node n1 (2 A100 = 24 GPU-hours per half day at 1.15): train 12 h, infer 6 h, idle 6 h
            batch.add("cost_windows", cost_window_row(window("train", "ml", "onprem", "n1", "A100", start, 12, "2.4",
                                                             "13.80", energy_mj=2_160_000_000)))
            batch.add("cost_windows", cost_window_row(window("infer", "", "onprem", "n1", "A100", start, 6, 3,
                                                             "6.90")))
            batch.add("cost_windows", cost_window_row(window("idle", "", "onprem", "n1", "A100", start, 6, 0,
                                                             "6.90")))
            # a node no asset profile names (H100 at 2.00 a GPU-hour): one workload, 8 GPU-hours
            batch.add("cost_windows", cost_window_row(window("search", "web", "onprem", "gx1", "H100", start, 8, 8,
                                                             "16.00")))
            # cloud spend is not on-prem cost
            batch.add("cost_windows", cost_window_row(window("train", "ml", "cloud", "i-1", "A100", start, 8, 8,
                                                             "120.00")))
    # the next month is not this month
    batch.add("cost_windows", cost_window_row(window("train", "ml", "onprem", "n1", "A100", OCT1_MS + 31 * DAY_MS,
                                                     12, 12, "13.80")))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, batch, POSTGRESQL, Partitions(POSTGRESQL))


@pytest.mark.integration
def test_focus_export_conforms_reads_back_and_bills_the_onprem_cost(tmp_path, database):
    seed(database)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    config = load_config(tmp_path / "c.yaml", {})
    start, end = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc)
    with psycopg.connect(database) as conn:
        text = focus_export.render_focus(conn, start, end, config)
        in_database = onprem_cost_usd(conn, start, end)
    assert focus_violations(text) == []

    rows = list(csv.DictReader(io.StringIO(text)))
    # 2 days x (train, infer, idle on n1 + search on gx1) = 8 rows
    assert len(rows) == 8
    oct1 = {(r["ResourceId"], r["x_Workload"]): r for r in rows if r["ChargePeriodStart"] == "2026-10-01T00:00:00Z"}
    train = oct1[("n1", "train")]
    # two 12-hour windows: 24 GPU-hours, 27.60; of n1's 55.20 that day: 27.60 / 55.20 = 0.5
    assert (train["BilledCost"], train["ListCost"], train["ContractedCost"], train["EffectiveCost"]) == (
        "27.600000",) * 4
    assert (train["PricingQuantity"], train["PricingUnit"], train["ConsumedQuantity"]) == (
        "24.000000000", "GPU-Hours", "24.000000000")
    assert json.loads(train["AllocatedMethodDetails"]) == {
        "Elements": [{"AllocatedRatio": 0.5, "UsageQuantity": 24, "UsageUnit": "GPU-Hours"}]}
    assert (train["AllocatedMethodId"], train["AllocatedResourceId"], json.loads(train["AllocatedTags"])) == (
        "hybridspend-gpu-time", "train", {"workload": "train", "team": "ml"})
    assert train["x_EnergyKwh"] == "1.200000000"  # 2 x 2,160,000,000 mJ / 3,600,000,000 mJ per kWh
    assert (train["ServiceCategory"], train["ChargeCategory"], train["ChargeClass"]) == ("Compute", "Usage", "")
    assert (train["SkuId"], train["SkuPriceId"]) == ("rack", "rack/gpu-hour")
    assert json.loads(train["SkuPriceDetails"]) == {"GpuCount": 1, "x_GpuClass": "A100",
                                                    "x_GpuModel": "NVIDIA A100-SXM4-80GB", "x_GpusPerNode": 2}
    assert json.loads(train["Tags"]) == {"hybridspend/asset-profile": "rack", "hybridspend/gpu-class": "A100"}
    assert train["HostProviderName"] == train["ServiceProviderName"] == "On-premises"
    # idle is the unallocated remainder: 13.80 / 55.20 = 0.25, no allocated resource
    idle = oct1[("n1", "idle")]
    assert json.loads(idle["AllocatedMethodDetails"])["Elements"][0]["AllocatedRatio"] == 0.25
    assert (idle["AllocatedResourceId"], idle["AllocatedResourceName"], idle["AllocatedTags"]) == ("", "", "")
    # a node outside every asset profile is priced by its GPU class and is its workload's whole
    search = oct1[("gx1", "search")]
    assert (search["SkuId"], search["BilledCost"]) == ("onprem-H100", "32.000000")
    assert json.loads(search["AllocatedMethodDetails"])["Elements"][0]["AllocatedRatio"] == 1

    path = tmp_path / "onprem-focus-2026-10.csv"
    path.write_text(text)
    summary = FocusSummary()
    lines = list(read_files([path], Catalog(), "v", summary))
    assert summary.rows_rejected == 0 and len(lines) == 8
    # BilledCost over the file = the on-prem cost in the database: 2 days x (55.20 + 32.00) = 174.40
    assert sum(line.billed_cost_usd for line in lines) == in_database == D("174.40")
    assert {line.extra["x_Workload"] for line in lines} == {"train", "infer", "idle", "search"}
