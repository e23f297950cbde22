"""The GCP collector: a local gRPC server speaking google.cloud.billing.v1.CloudCatalog (with the
library's own request/response classes), JSON-lines billing exports, events checked on a real broker."""

from __future__ import annotations

import json
from concurrent import futures
from decimal import Decimal as D
from pathlib import Path

import grpc
import pytest
import yaml
from google.cloud import billing_v1

from hybridspend.collectors import gcp
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import CostLine, PriceUpdate
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer
from hybridspend.infra.checkpoint import Checkpoint
from hybridspend.infra.publish import Publisher
from tests.conftest import consume

pytestmark = pytest.mark.integration

COMPUTE = billing_v1.Service(name="services/6F81-5844-456A", service_id="6F81-5844-456A",
                             display_name="Compute Engine")


def sku(sku_id, description, group, usage_type, regions, tiers):
    return billing_v1.Sku(
        name=f"{COMPUTE.name}/skus/{sku_id}", sku_id=sku_id, description=description,
        category=billing_v1.Category(service_display_name="Compute Engine", resource_family="Compute",
                                     resource_group=group, usage_type=usage_type),
        service_regions=regions,
        pricing_info=[billing_v1.PricingInfo(summary="", pricing_expression=billing_v1.PricingExpression(
            usage_unit="h", display_quantity=1, base_unit="s", base_unit_conversion_factor=3600,
            tiered_rates=[billing_v1.PricingExpression.TierRate(
                start_usage_amount=start, unit_price={"currency_code": "USD", "units": int(price),
                                                      "nanos": int(round((price - int(price)) * 10**9))})
                for start, price in tiers]))],
    )


SKUS = [
    sku("039F-D0DA-4055", "Nvidia Tesla A100 GPU running in Americas", "GPU", "OnDemand",
        ["us-central1", "us-east1"], [(0, D("2.933908"))]),
    sku("1D74-8C9D-A1E1", "Nvidia Tesla A100 GPU running in Americas (spot)", "GPU", "Preemptible",
        ["us-central1"], [(0, D("1.10"))]),
    sku("A3CO-RE00-0001", "A3 Instance Core running in Americas", "CPU", "OnDemand", ["us-central1"],
        [(0, D("0.031611"))]),
    sku("N1ST-ANDA-RD00", "N1 Predefined Instance Core running in Americas", "N1Standard", "OnDemand",
        ["us-central1"], [(0, D("0.031611"))]),  # not a GPU family: ignored
    sku("0000-STOR-AGE0", "Storage PD Capacity", "SSD", "OnDemand", ["us-central1"], [(0, D("0.17"))]),
]


@pytest.fixture
def catalog_server():
    calls = []

    def list_services(request, context):
        calls.append("ListServices")
        return billing_v1.ListServicesResponse(services=[COMPUTE])

    def list_skus(request, context):
        calls.append(f"ListSkus {request.parent} {request.page_token!r}")
        page = int(request.page_token or 0)
        size = 2  # pages of two, to exercise the client's pagination
        chunk = SKUS[page * size:(page + 1) * size] if request.parent == COMPUTE.name else []
        more = (page + 1) * size < len(SKUS)
        return billing_v1.ListSkusResponse(skus=chunk, next_page_token=str(page + 1) if more else "")

    handler = grpc.method_handlers_generic_handler("google.cloud.billing.v1.CloudCatalog", {
        "ListServices": grpc.unary_unary_rpc_method_handler(
            list_services, request_deserializer=billing_v1.ListServicesRequest.deserialize,
            response_serializer=billing_v1.ListServicesResponse.serialize),
        "ListSkus": grpc.unary_unary_rpc_method_handler(
            list_skus, request_deserializer=billing_v1.ListSkusRequest.deserialize,
            response_serializer=billing_v1.ListSkusResponse.serialize),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", calls
    server.stop(None)


def export_row(export_time: str, start: str, cost: str, credits: str = "0", machine: str = "a2-highgpu-8g",
               resource: str = "projects/p/instances/train-1") -> str:
    return json.dumps({
        "billing_account_id": "01ABCD-234567-89EFGH", "service": {"id": "6F81-5844-456A", "description": "Compute Engine"},
        "sku": {"id": "039F-D0DA-4055", "description": "Nvidia Tesla A100 GPU running in Americas"},
        "usage_start_time": start, "usage_end_time": start.replace(":00:00", ":59:59"),
        "project": {"id": "ml-prod"}, "labels": [{"key": "workload", "value": "research-sweep"}],
        "system_labels": [{"key": "compute.googleapis.com/machine_spec", "value": machine}],
        "location": {"region": "us-central1"}, "resource": {"name": resource},
        "export_time": export_time, "cost": float(cost), "currency": "USD",
        "credits": [{"name": "Sustained use", "amount": -float(credits)}] if credits != "0" else [],
        "invoice": {"month": "202611"}, "cost_type": "regular",
    })


def test_prices_and_export_rows_reach_the_broker_and_a_restart_reads_only_what_is_new(
        tmp_path: Path, broker, catalog_server, topic_prefix):
    address, calls = catalog_server
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "2026-11-20.json").write_text("\n".join([
        export_row("2026-11-20T06:00:00Z", "2026-11-20T03:00:00Z", "23.471264", credits="2.5"),
        export_row("2026-11-20T06:00:00Z", "2026-11-20T04:00:00Z", "23.471264", machine="e2-standard-4",
                   resource="projects/p/instances/web"),
        "{broken",
    ]) + "\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "kafka": {"topic_prefix": topic_prefix},
        "collectors": {"gcp": {"billing_export_glob": str(exports / "*.json")}}}))
    config = load_config(tmp_path / "c.yaml", {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    producer = make_producer(broker.bootstrap, config.kafka)
    checkpoint = tmp_path / "gcp.json"

    def run():
        collector = gcp.GcpCollector(config, Publisher(producer, topics), Checkpoint(checkpoint),
                                     catalog_client=lambda: gcp.catalog_client(grpc.insecure_channel(address)),
                                     clock=lambda: 1_795_000_000.0)
        return collector.poll_once()

    try:
        report = run()
        assert report.source == "gcp"
        assert report.sent == {"prices": 4, "cost-lines": 2}
        assert len(report.errors) == 1 and report.errors[0].startswith(f"{exports / '2026-11-20.json'}:3: ")
        assert any(c.startswith("ListSkus services/6F81-5844-456A '1'") for c in calls)  # paginated
        prices = {(p.region, p.instance_type, p.purchase_option): p.usd_per_hour
                  for p in consume(broker.bootstrap, topics.prices, PriceUpdate.decode)}
        assert prices == {
            ("us-central1", "sku:039F-D0DA-4055", "on_demand"): D("2.933908"),
            ("us-east1", "sku:039F-D0DA-4055", "on_demand"): D("2.933908"),
            ("us-central1", "sku:1D74-8C9D-A1E1", "spot"): D("1.1"),
            ("us-central1", "sku:A3CO-RE00-0001", "on_demand"): D("0.031611"),
        }
        lines = consume(broker.bootstrap, topics.cost_lines, CostLine.decode)
        gpu = next(line for line in lines if line.gpu_class)
        assert (gpu.instance_type, gpu.gpus, gpu.tags) == ("a2-highgpu-8g", 8, {"workload": "research-sweep"})
        assert gpu.billed_cost_usd == D("23.471264") and gpu.effective_cost_usd == D("20.971264")
        assert gpu.billing_period_start_ms == 1_793_491_200_000  # 2026-11-01 UTC, the invoice month

        # a restart reads only rows exported after the checkpoint
        (exports / "2026-11-21.json").write_text(
            export_row("2026-11-21T06:00:00Z", "2026-11-21T03:00:00Z", "23.471264") + "\n")
        report = run()
        assert report.sent == {"prices": 4, "cost-lines": 1}  # prices are re-published; rows are not
        assert len(consume(broker.bootstrap, topics.cost_lines, CostLine.decode)) == 3
    finally:
        producer.close()


def test_an_unreachable_catalog_is_reported_and_the_export_still_read(tmp_path, broker, topic_prefix):
    (tmp_path / "e.json").write_text(export_row("2026-11-20T06:00:00Z", "2026-11-20T03:00:00Z", "1.5") + "\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "kafka": {"topic_prefix": topic_prefix},
        "collectors": {"gcp": {"billing_export_glob": str(tmp_path / "e.json")}}}))
    config = load_config(tmp_path / "c.yaml", {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    producer = make_producer(broker.bootstrap, config.kafka)
    try:
        channel = grpc.insecure_channel("127.0.0.1:9")
        report = gcp.GcpCollector(config, Publisher(producer, topics), Checkpoint(tmp_path / "cp.json"),
                                  catalog_client=lambda: _with_timeout(gcp.catalog_client(channel)),
                                  clock=lambda: 0.001).poll_once()
    finally:
        producer.close()
    assert report.sent == {"cost-lines": 1}
    assert report.errors and report.errors[0].startswith("catalog: ")


def _with_timeout(client):
    original = client.list_services
    client.list_services = lambda **kw: original(timeout=3, retry=None, **kw)
    return client


@pytest.fixture
def compute_api():
    """Compute Engine's instances.aggregatedList, two pages, as a local HTTP server."""
    import http.server
    import threading

    pages = [
        {"items": {"zones/us-central1-a": {"instances": [
            {"id": "111", "name": "train-1", "status": "RUNNING",
             "machineType": "https://www.googleapis.com/compute/v1/projects/ml-prod/zones/us-central1-a/machineTypes/a2-highgpu-8g",
             "labels": {"workload": "research-sweep", "team": "research"},
             "scheduling": {"provisioningModel": "SPOT"}},
            {"id": "222", "name": "web", "status": "RUNNING", "machineType": ".../machineTypes/e2-standard-4"},
        ]}}, "nextPageToken": "p2"},
        {"items": {"zones/europe-west4-b": {"instances": [
            {"id": "333", "name": "infer", "status": "TERMINATED", "machineType": ".../machineTypes/g2-standard-8",
             "labels": {"workload": "inference-small"}}]}}},
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            page = pages[1] if "pageToken=p2" in self.path else pages[0]
            ok = self.path.startswith("/compute/v1/projects/ml-prod/aggregated/instances")
            data = json.dumps(page if ok else {"error": {"code": 404}}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gpu_vm_inventory_becomes_instance_events_once(tmp_path, broker, compute_api, topic_prefix):
    import requests

    from hybridspend.contracts.events import InstanceEvent

    cfg = {"kafka": {"topic_prefix": topic_prefix},
           "collectors": {"gcp": {"catalog": False, "projects": ["ml-prod", "missing-project"],
                                  "compute_endpoint": compute_api}},
           "workloads": [{"match": {"tag_workload": "*"}, "workload": "{tag_workload}", "team": "{tag_team}"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "c.yaml", {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    producer = make_producer(broker.bootstrap, config.kafka)
    try:
        for sent in ({"instance-events": 2}, {}):  # the second pass (a restart on the same checkpoint) repeats nothing
            report = gcp.GcpCollector(config, Publisher(producer, topics), Checkpoint(tmp_path / "gcp.json"),
                                      session=requests.Session(), clock=lambda: 1_795_000_000.0).poll_once()
            assert report.sent == sent
            assert len(report.errors) == 1 and report.errors[0].startswith("inventory missing-project: HTTPError")
    finally:
        producer.close()
    events = consume(broker.bootstrap, topics.instance_events, InstanceEvent.decode)
    assert sorted((e.instance_id, e.instance_type, e.state, e.purchase_option, e.region, e.workload, e.team)
                  for e in events) == [
        ("111", "a2-highgpu-8g", "running", "spot", "us-central1", "research-sweep", "research"),
        ("333", "g2-standard-8", "stopped", "on_demand", "europe-west4", "inference-small", "unknown"),
    ]
