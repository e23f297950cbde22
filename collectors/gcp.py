"""GCP: GPU prices from the Cloud Billing Catalog, GPU VM inventory, billing export rows read incrementally.

Prices: the Compute Engine service's SKUs whose resource group is a GPU, or whose description
names a GPU VM family (A2, A3, G2), with their pricing tiers (the tier that starts at zero usage is
the list price per hour), per region and usage type (on-demand, spot/preemptible, 1- and 3-year
commitments).  Credentials: Application Default Credentials, unless a channel is given (tests).

Inventory: Compute Engine's ``instances.aggregatedList`` REST call per configured project, through
google-auth's authorized session; GPU VMs (by machine type or attached accelerators) become
instance events with their labels mapped to workloads (labels ``tag_<key>``).

Billing export: the standard or detailed export's rows (JSON lines, as ``bq extract`` or a
scheduled export writes them), read by ``export_time`` after the checkpoint, so a restart reads
only what is new.
"""

from __future__ import annotations

import glob
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Iterator

from hybridspend.contracts.catalog import Catalog
from hybridspend.contracts.config import Config
from hybridspend.contracts.events import CostLine, InstanceEvent, PriceUpdate
from hybridspend.infra.checkpoint import Checkpoint

from .base import CollectReport

USAGE_TYPES = {"OnDemand": "on_demand", "Preemptible": "spot", "Spot": "spot",
               "Commit1Yr": "committed_use", "Commit3Yr": "committed_use_3y"}
_GPU_FAMILY = re.compile(r"\b(A2|A3|G2)\b|Nvidia", re.IGNORECASE)
_ACCELERATOR = re.compile(r"Nvidia (?:Tesla )?([A-Z]\d+[A-Z]?)(?: (\d+)GB)?", re.IGNORECASE)


def _usd(money) -> Decimal:
    return Decimal(money.units) + Decimal(money.nanos) / Decimal(10**9)


@dataclass(frozen=True)
class GpuSkuPrice:
    sku_id: str
    description: str
    region: str
    purchase_option: str
    usd_per_hour: Decimal  # the first tier's unit price (from zero usage)
    tiers: tuple[tuple[Decimal, Decimal], ...]  # (start usage amount, unit price)
    accelerator: str  # "A100", "H100", "L4" or "" for VM core/RAM SKUs


def gpu_sku_prices(skus: Iterable) -> list[GpuSkuPrice]:
    """Catalog SKUs -> GPU and GPU-VM-family prices per region and usage type (pure)."""
    out = []
    for sku in skus:
        category = sku.category
        is_gpu = category.resource_group == "GPU"
        if not is_gpu and not _GPU_FAMILY.search(sku.description or ""):
            continue
        option = USAGE_TYPES.get(category.usage_type)
        if option is None:
            continue
        for info in sku.pricing_info[:1]:  # the current price
            expression = info.pricing_expression
            if expression.usage_unit not in ("h", "hour"):
                continue
            tiers = tuple((Decimal(str(t.start_usage_amount)), _usd(t.unit_price)) for t in expression.tiered_rates)
            if not tiers:
                continue
            m = _ACCELERATOR.search(sku.description or "")
            for region in sku.service_regions:
                out.append(GpuSkuPrice(sku.sku_id, sku.description, region, option, tiers[0][1], tiers,
                                       m.group(1).upper() if (m and is_gpu) else ""))
    return out


def catalog_client(channel=None):
    from google.cloud import billing_v1

    if channel is None:
        return billing_v1.CloudCatalogClient()  # Application Default Credentials
    from google.cloud.billing_v1.services.cloud_catalog.transports import CloudCatalogGrpcTransport

    return billing_v1.CloudCatalogClient(transport=CloudCatalogGrpcTransport(channel=channel))


def authorized_session():
    """An HTTP session with Application Default Credentials (read-only compute scope)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/compute.readonly"])
    return AuthorizedSession(credentials)


def publish_prices(client, publisher, report: CollectReport, now_ms: int, service_name: str = "Compute Engine") -> None:
    services = [s for s in client.list_services() if s.display_name == service_name]
    if not services:
        report.errors.append(f"catalog: no service named {service_name!r}")
        return
    for price in gpu_sku_prices(client.list_skus(parent=services[0].name)):
        event = PriceUpdate(
            event_id=f"gcp:{price.sku_id}:{price.region}:{price.usd_per_hour}", ts_ms=now_ms, provider="gcp",
            region=price.region, instance_type=f"sku:{price.sku_id}", purchase_option=price.purchase_option,
            usd_per_hour=price.usd_per_hour, source="gcp-catalog")
        publisher.send("prices", f"gcp|{price.region}|{price.sku_id}", event)
        report.count("prices")
    publisher.flush()


def _ts_ms(value: str) -> int:
    ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" UTC", "+00:00"))
    return int((ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def export_rows(paths: Iterable[Path]) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """(file:line, export_time ms, row, error) for every line of JSON-lines billing exports."""
    for path in sorted(paths):
        with path.open(encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(text)
                    yield where, _ts_ms(row["export_time"]), row, None
                except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
                    yield where, 0, None, f"not a billing export row: {exc}"


def cost_line_from_export(row: dict, catalog: Catalog) -> CostLine:
    """A standard/detailed billing export row -> cost line (cost after credits is the effective cost)."""
    if row.get("currency", "USD") != "USD":
        raise ValueError(f"currency {row.get('currency')}: only USD is supported")
    cost = Decimal(str(row["cost"]))
    credits = sum((Decimal(str(c.get("amount", 0))) for c in row.get("credits") or []), Decimal(0))
    start, end = _ts_ms(row["usage_start_time"]), _ts_ms(row["usage_end_time"])
    invoice = row.get("invoice", {}).get("month", "")  # "202610"
    period = datetime(int(invoice[:4]), int(invoice[4:6]), 1, tzinfo=timezone.utc) if len(invoice) == 6 else \
        datetime.fromtimestamp(start / 1000, tz=timezone.utc).replace(day=1, hour=0, minute=0, second=0)
    labels = {str(label["key"]): str(label.get("value", "")) for label in row.get("labels") or []}
    resource = (row.get("resource") or {}).get("name") or ""
    sku = row.get("sku", {})
    machine = {str(p.get("key")): str(p.get("value")) for p in row.get("system_labels") or []}.get(
        "compute.googleapis.com/machine_spec", "")
    gpu = catalog.find_in("gcp", machine, sku.get("description"), resource)
    project = (row.get("project") or {}).get("id", "")
    return CostLine(
        event_id=f"gcp-export|{row.get('billing_account_id', '')}|{project}|{sku.get('id', '')}|{start}|{resource}",
        provider="gcp", provider_name="Google Cloud", billing_account=str(row.get("billing_account_id", "")),
        billing_period_start_ms=int(period.timestamp() * 1000), resource_id=resource[:2048],
        charge_period_start_ms=start, charge_period_end_ms=end, charge_category=str(row.get("cost_type", "regular")),
        billed_cost_usd=cost, effective_cost_usd=cost + credits,
        service=str((row.get("service") or {}).get("description", "")), sku=str(sku.get("id", "")),
        region=str((row.get("location") or {}).get("region", "")), instance_type=gpu.instance_type if gpu else "",
        gpu_class=gpu.gpu_class if gpu else "", gpus=gpu.gpus if gpu else 0, source="gcp-export",
        export_version="export", tags=labels,
    )


def publish_export(paths: Iterable[Path], publisher, checkpoint: Checkpoint, catalog: Catalog,
                   report: CollectReport) -> None:
    """Rows exported after the checkpointed export time; the checkpoint moves after the flush.

    An export writes its rows with one export time, whole, so rows at or before the checkpoint
    were all sent; a crash before the checkpoint moves repeats the run with the same natural-key
    ids, which downstream upserts absorb.
    """
    since = checkpoint.get("export_time_ms", 0)
    newest = since
    for where, export_ms, row, error in export_rows(paths):
        if error is not None:
            report.errors.append(f"{where}: {error}")
            continue
        if export_ms <= since:
            continue
        try:
            line = cost_line_from_export(row, catalog)
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            report.errors.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        publisher.send("cost-lines", line.resource_id or line.event_id, line)
        report.count("cost-lines")
        newest = max(newest, export_ms)
    publisher.flush()
    checkpoint.set("export_time_ms", newest)


GCE_STATES = {"PROVISIONING": "running", "STAGING": "running", "RUNNING": "running", "REPAIRING": "running",
              "STOPPING": "stopped", "STOPPED": "stopped", "SUSPENDING": "stopped", "SUSPENDED": "stopped",
              "TERMINATED": "stopped"}


def gpu_vm_events(aggregated: dict, *, project: str, catalog: Catalog, ts_ms: int,
                  resolve: Callable[[dict[str, str]], tuple | None]) -> list[InstanceEvent]:
    """Compute Engine ``instances.aggregatedList`` -> instance events of the GPU VMs (pure)."""
    out = []
    for scope, listing in sorted((aggregated.get("items") or {}).items()):
        zone = scope.split("/", 1)[1] if "/" in scope else scope
        for vm in listing.get("instances") or []:
            machine = str(vm.get("machineType", "")).rsplit("/", 1)[-1]
            gpu = catalog.get("gcp", machine)
            if gpu is None and not vm.get("guestAccelerators"):
                continue
            labels = {f"tag_{k}": str(v) for k, v in (vm.get("labels") or {}).items()}
            resolved = resolve(labels)  # the configuration's workload rules: (workload, team, ...) or None
            workload, team = (resolved[0], resolved[1]) if resolved else ("unattributed", "")
            spot = (vm.get("scheduling") or {}).get("provisioningModel") == "SPOT" or \
                (vm.get("scheduling") or {}).get("preemptible") is True
            state = GCE_STATES.get(str(vm.get("status")), "stopped")
            iid = str(vm.get("id") or vm.get("name"))
            out.append(InstanceEvent(
                event_id=f"gcp:{iid}:{state}:{ts_ms}", ts_ms=ts_ms, provider="gcp", region=zone.rsplit("-", 1)[0],
                account=project, instance_id=iid, instance_type=machine, state=state,
                purchase_option="spot" if spot else "on_demand", workload=workload, team=team))
    return out


def publish_inventory(session, endpoint: str, projects: list[str], publisher, checkpoint: Checkpoint,
                      catalog: Catalog, resolve, report: CollectReport, ts_ms: int) -> None:
    """GPU VMs of every project; an event only when a VM's state changed since the checkpoint."""
    seen = checkpoint.get("instances", {})
    for project in projects:
        url = f"{endpoint.rstrip('/')}/compute/v1/projects/{project}/aggregated/instances"
        token = None
        try:
            while True:
                response = session.get(url, params={"pageToken": token} if token else {}, timeout=30)
                response.raise_for_status()
                page = response.json()
                for event in gpu_vm_events(page, project=project, catalog=catalog, ts_ms=ts_ms, resolve=resolve):
                    if seen.get(event.instance_id) != event.state:
                        publisher.send("instance-events", event.instance_id, event)
                        seen[event.instance_id] = event.state
                        report.count("instance-events")
                token = page.get("nextPageToken")
                if not token:
                    break
        except Exception as exc:  # one project failing must not stop the others
            report.errors.append(f"inventory {project}: {type(exc).__name__}: {str(exc)[:300]}")
    publisher.flush()
    checkpoint.set("instances", seen)


class GcpCollector:
    """GPU VM inventory, Cloud Billing Catalog prices and billing export rows, each poll what is new.

    ``catalog_client`` (a factory of the Cloud Billing Catalog client) and ``session`` (an HTTP
    session for Compute Engine) replace the ones built on Application Default Credentials, for
    tests and proxies.
    """

    name = "gcp"

    def __init__(self, config: Config, publisher, checkpoint: Checkpoint, *,
                 catalog_client: Callable[[], object] = catalog_client, session=None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.settings = config.collectors.gcp
        self.interval_s = self.settings.poll_seconds
        self.publisher = publisher
        self.checkpoint = checkpoint
        self.catalog: Catalog = config.catalog()
        self.catalog_client = catalog_client
        self.session = session
        self.clock = clock

    def export_paths(self) -> list[Path]:
        pattern = self.settings.billing_export_glob
        return sorted(Path(p) for p in glob.glob(pattern)) if pattern else []

    def poll_once(self) -> CollectReport:
        report = CollectReport(self.name)
        now_ms = int(self.clock() * 1000)
        if self.settings.projects:
            try:
                session = self.session if self.session is not None else authorized_session()
            except Exception as exc:  # no credentials: the catalog and the export can still be read
                report.errors.append(f"inventory: {type(exc).__name__}: {str(exc)[:300]}")
            else:
                publish_inventory(session, self.settings.compute_endpoint, self.settings.projects, self.publisher,
                                  self.checkpoint, self.catalog, self.config.resolve_workload, report, now_ms)
        if self.settings.catalog:
            try:
                publish_prices(self.catalog_client(), self.publisher, report, now_ms)
            except Exception as exc:  # the catalog failing must not stop the export reading
                report.errors.append(f"catalog: {type(exc).__name__}: {str(exc)[:300]}")
        try:
            publish_export(self.export_paths(), self.publisher, self.checkpoint, self.catalog, report)
        except OSError as exc:
            report.errors.append(f"export: {exc}")
        return report
