"""Pure translations of AWS API documents into hybridspend events (no I/O, no boto3)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable

from hybridspend.contracts.catalog import Catalog
from hybridspend.contracts.events import CostLine, InstanceEvent
from hybridspend.costmodel.rates import effective_usd_per_hour

EC2_STATES = {"pending": "running", "running": "running", "stopping": "stopped", "stopped": "stopped",
              "shutting-down": "terminated", "terminated": "terminated"}


def _ms(ts: datetime | str) -> int:
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)


def prices_from_price_list(price_list: Iterable[str]) -> list[tuple[str, str, str, Decimal]]:
    """Pricing API ``get_products`` documents -> (instance type, region, purchase option, $/h).

    On-demand is the hourly price. ``reserved`` is the 1-year standard No Upfront reservation's
    effective hourly price (hourly fee plus any upfront fee spread over the year's hours), ``reserved_3y``
    the 3-year one's (spread over three years).
    """
    out = []
    for raw in price_list:
        doc = json.loads(raw) if isinstance(raw, str) else raw
        attrs = doc.get("product", {}).get("attributes", {})
        itype, region = attrs.get("instanceType"), attrs.get("regionCode")
        if not itype or not region:
            continue
        terms = doc.get("terms", {})
        for term in terms.get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                if dim.get("unit") == "Hrs":
                    out.append((itype, region, "on_demand", Decimal(dim["pricePerUnit"]["USD"])))
        for term in terms.get("Reserved", {}).values():
            ta = term.get("termAttributes", {})
            years = {"1yr": 1, "3yr": 3}.get(ta.get("LeaseContractLength"))
            if years is None or (ta.get("OfferingClass"), ta.get("PurchaseOption")) != ("standard", "No Upfront"):
                continue
            hourly = upfront = Decimal(0)
            for dim in term.get("priceDimensions", {}).values():
                amount = Decimal(dim["pricePerUnit"]["USD"])
                if dim.get("unit") == "Hrs":
                    hourly += amount
                elif dim.get("unit") == "Quantity":
                    upfront += amount
            out.append((itype, region, "reserved" if years == 1 else "reserved_3y",
                        effective_usd_per_hour(hourly, upfront, term_years=years)))
    return out


ONE_YEAR_S = 31_536_000


def savings_plan_rates(results: Iterable[dict]) -> list[tuple[str, str, str, Decimal]]:
    """Savings Plans offering rates -> (instance type, region, purchase option, $/h) of No Upfront plans:
    ``savings_plan`` for 1-year plans, ``savings_plan_3y`` for 3-year ones; the lowest where a type has
    several (an EC2 Instance plan beats a Compute plan)."""
    best: dict[tuple[str, str, str], Decimal] = {}
    for item in results:
        offering = item.get("savingsPlanOffering", {})
        option = {ONE_YEAR_S: "savings_plan", 3 * ONE_YEAR_S: "savings_plan_3y"}.get(offering.get("durationSeconds"))
        if option is None or offering.get("paymentOption") != "No Upfront":
            continue
        if item.get("unit") != "Hrs":
            continue
        props = {p.get("name"): p.get("value") for p in item.get("properties", [])}
        itype, region = props.get("instanceType"), props.get("region")
        if not itype or not region:
            continue
        rate = Decimal(str(item["rate"]))
        if (itype, region, option) not in best or rate < best[(itype, region, option)]:
            best[(itype, region, option)] = rate
    return [(itype, region, option, rate) for (itype, region, option), rate in sorted(best.items())]


def cheapest_spot(history: Iterable[dict]) -> dict[str, tuple[Decimal, int]]:
    """Spot price history -> per instance type the latest price of its cheapest zone, with its time."""
    latest: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for item in history:
        key = (item["InstanceType"], item["AvailabilityZone"])
        ts = _ms(item["Timestamp"])
        if key not in latest or ts > latest[key][0]:
            latest[key] = (ts, Decimal(item["SpotPrice"]))
    best: dict[str, tuple[Decimal, int]] = {}
    for (itype, _), (ts, price) in latest.items():
        if itype not in best or price < best[itype][0]:
            best[itype] = (price, ts)
    return best


def instance_event(instance: dict, *, account: str, region: str, ts_ms: int, workload: tuple[str, str],
                   state: str | None = None, event_id: str | None = None) -> InstanceEvent:
    state = state or EC2_STATES.get(instance.get("State", {}).get("Name", ""), "stopped")
    option = "spot" if instance.get("InstanceLifecycle") == "spot" else "on_demand"
    iid = instance["InstanceId"]
    return InstanceEvent(
        event_id=event_id or f"aws:{iid}:{state}:{ts_ms}", ts_ms=ts_ms, provider="aws", region=region,
        account=account, instance_id=iid, instance_type=instance["InstanceType"], state=state,
        purchase_option=option, workload=workload[0], team=workload[1],
    )


def tag_labels(tags: list[dict] | None) -> dict[str, str]:
    """EC2 tags as workload-rule labels: tag ``workload`` -> label ``tag_workload``."""
    return {f"tag_{t['Key']}": t.get("Value", "") for t in tags or [] if "Key" in t}


def eventbridge_change(body: dict) -> tuple[str, str, str, int, str] | None:
    """An EventBridge EC2 event -> (instance id, state, event id, ts ms, region), or None if not one."""
    kind = body.get("detail-type")
    detail = body.get("detail") or {}
    iid = detail.get("instance-id")
    if not iid or "id" not in body or "time" not in body:
        return None
    if kind == "EC2 Instance State-change Notification":
        state = EC2_STATES.get(detail.get("state", ""))
        if state is None:
            return None
    elif kind == "EC2 Spot Instance Interruption Warning":
        state = "spot_interruption_warning"
    else:
        return None
    return iid, state, f"aws-eb:{body['id']}", _ms(body["time"]), body.get("region", "")


def cost_lines_from_ce(results: Iterable[dict], *, account: str, catalog: Catalog, tag_key: str) -> list[CostLine]:
    """Cost Explorer ``ResultsByTime`` grouped by INSTANCE_TYPE and a tag -> one line per hour and group.

    Ids are the natural key (account, hour, instance type, tag), so a re-read hour replaces itself.
    """
    lines = []
    for period in results:
        start, end = _ms(period["TimePeriod"]["Start"]), _ms(period["TimePeriod"]["End"])
        month = datetime.fromtimestamp(start / 1000, tz=timezone.utc).replace(day=1, hour=0, minute=0, second=0)
        for group in period.get("Groups", []):
            keys = group.get("Keys", [])
            itype = keys[0] if keys else ""
            tag = keys[1].split("$", 1)[1] if len(keys) > 1 and "$" in keys[1] else ""
            metrics = group.get("Metrics", {})
            unblended = Decimal(metrics.get("UnblendedCost", {}).get("Amount", "0"))
            effective = Decimal(metrics.get("NetAmortizedCost", metrics.get("AmortizedCost", {})).get(
                "Amount", unblended))
            gpu = catalog.get("aws", itype)
            lines.append(CostLine(
                event_id=f"aws-ce|{account}|{start}|{itype}|{tag}", provider="aws", provider_name="AWS",
                billing_account=account, billing_period_start_ms=int(month.timestamp() * 1000),
                resource_id=f"{itype}|{tag_key}={tag}", charge_period_start_ms=start, charge_period_end_ms=end,
                charge_category="Usage", billed_cost_usd=unblended, effective_cost_usd=effective,
                service="Amazon Elastic Compute Cloud", sku="", region="", instance_type=itype if gpu else "",
                gpu_class=gpu.gpu_class if gpu else "", gpus=gpu.gpus if gpu else 0, source="aws-ce",
                export_version="ce", tags={tag_key: tag} if tag else {},
            ))
    return lines


class Cur2Rows:
    """AWS CUR 2.0 rows renamed to FOCUS columns, so one reader serves both exports."""

    MAP = {
        "line_item_usage_start_date": "ChargePeriodStart",
        "line_item_usage_end_date": "ChargePeriodEnd",
        "line_item_currency_code": "BillingCurrency",
        "bill_payer_account_id": "BillingAccountId",
        "bill_billing_period_start_date": "BillingPeriodStart",
        "line_item_resource_id": "ResourceId",
        "line_item_line_item_type": "ChargeCategory",
        "line_item_product_code": "ServiceName",
        "product_sku": "SkuId",
        "product_region_code": "RegionId",
        "line_item_unblended_cost": "BilledCost",
        "product_instance_type": "x_InstanceType",
        "line_item_line_item_description": "ChargeDescription",
    }
    EFFECTIVE = {"SavingsPlanCoveredUsage": "savings_plan_savings_plan_effective_cost",
                 "DiscountedUsage": "reservation_effective_cost"}

    def columns(self, columns: list[str]) -> list[str]:
        return [self.MAP.get(c, c) for c in columns] + ["ProviderName", "EffectiveCost"]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {self.MAP.get(k, k): v for k, v in row.items()}
        out["ProviderName"] = "AWS"
        effective_column = self.EFFECTIVE.get(str(row.get("line_item_line_item_type")))
        effective = row.get(effective_column) if effective_column else None
        out["EffectiveCost"] = effective if effective not in (None, "") else row.get("line_item_unblended_cost")
        tags = row.get("resource_tags")
        if isinstance(tags, (dict, list)):
            out["Tags"] = json.dumps(dict(tags))
        elif isinstance(tags, str) and tags:
            out["Tags"] = tags
        return out
