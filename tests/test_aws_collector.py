"""The AWS collector against real sockets: moto's server (EC2, SQS, S3, Cost Explorer), a local HTTP
server answering the Pricing API (moto lacks it), and a real broker where the events are checked."""

from __future__ import annotations

import csv
import gzip
import http.server
import io
import json
import threading
import uuid
from datetime import datetime, timezone
from decimal import Decimal as D

import boto3
import pytest
import requests
import yaml

from hybridspend.collectors.aws.collector import AwsCollector
from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import CostLine, InstanceEvent, PriceUpdate
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer
from hybridspend.infra.checkpoint import Checkpoint
from hybridspend.infra.local import free_port
from hybridspend.infra.publish import Publisher
from tests.conftest import consume, wait_until

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 20, 12, 30, tzinfo=timezone.utc)


def product(itype: str, region: str, on_demand: str, reserved_hourly: str, reserved_upfront: str = "0") -> str:
    sku = uuid.uuid5(uuid.NAMESPACE_DNS, itype + region).hex[:16].upper()
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "instanceType": itype, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
            "preInstalledSw": "NA", "capacitystatus": "Used", "gpu": "8", "servicecode": "AmazonEC2"}},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {f"{sku}.JRTCKXETXF": {"offerTermCode": "JRTCKXETXF", "sku": sku, "termAttributes": {},
                                              "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                                  "unit": "Hrs", "pricePerUnit": {"USD": on_demand},
                                                  "description": f"${on_demand} per On Demand Linux {itype} Instance Hour"}}}},
            "Reserved": {
                f"{sku}.4NA7Y494T4": {"offerTermCode": "4NA7Y494T4", "sku": sku, "termAttributes": {
                    "LeaseContractLength": "1yr", "OfferingClass": "standard", "PurchaseOption": "No Upfront"},
                    "priceDimensions": {f"{sku}.4NA7Y494T4.6YS6EN2CT7": {"unit": "Hrs",
                                                                        "pricePerUnit": {"USD": reserved_hourly}},
                                        f"{sku}.4NA7Y494T4.2TG2D8R56U": {"unit": "Quantity",
                                                                        "pricePerUnit": {"USD": reserved_upfront}}}},
                f"{sku}.6QCMYABX3D": {"offerTermCode": "6QCMYABX3D", "sku": sku, "termAttributes": {
                    "LeaseContractLength": "3yr", "OfferingClass": "standard", "PurchaseOption": "All Upfront"},
                    "priceDimensions": {f"{sku}.6QCMYABX3D.2TG2D8R56U": {"unit": "Quantity",
                                                                        "pricePerUnit": {"USD": "300000"}}}},
            },
        },
        "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z",
    })


@pytest.fixture
def pricing_server():
    """The Pricing API's GetProducts (JSON protocol), one product per page to exercise pagination."""
    products = [product("p4d.24xlarge", "us-east-1", "32.7726000000", "19.2266000000"),
                product("p5.48xlarge", "us-east-1", "55.0400000000", "30.1000000000", "8760")]
    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/DescribeSavingsPlansOfferingRates":  # the Savings Plans API (rest-json)
                calls.append("savingsplans")
                return self._answer({"searchResults": [
                    sp_rate("p4d.24xlarge", "us-east-1", "EC2Instance", "20.6700"),
                    sp_rate("p4d.24xlarge", "us-east-1", "Compute", "22.9400"),
                    sp_rate("p4d.24xlarge", "us-east-1", "Compute", "17.1000", years=3),  # a 3-year plan
                ]})
            calls.append(self.headers.get("X-Amz-Target"))
            wanted = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
            matching = [p for p in products if all(
                json.loads(p)["product"]["attributes"].get(k) == v for k, v in wanted.items())]
            start = int(body.get("NextToken") or 0)
            answer = {"FormatVersion": "aws_v1", "PriceList": matching[start:start + 1]}
            if start + 1 < len(matching):
                answer["NextToken"] = str(start + 1)
            self._answer(answer)

        def _answer(self, answer: dict) -> None:
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()
    server.server_close()


def test_a_3_year_no_upfront_reservation_is_read_as_reserved_3y_with_its_upfront_spread_over_three_years():
    from hybridspend.collectors.aws import parse

    doc = json.loads(product("p4d.24xlarge", "us-east-1", "32.77", "19.23"))
    (term,) = [t for t in doc["terms"]["Reserved"].values() if t["termAttributes"]["LeaseContractLength"] == "3yr"]
    term["termAttributes"]["PurchaseOption"] = "No Upfront"
    term["priceDimensions"] = {"h": {"unit": "Hrs", "pricePerUnit": {"USD": "12.00"}},
                               "u": {"unit": "Quantity", "pricePerUnit": {"USD": "26280"}}}
    prices = {(option, itype): usd for itype, _, option, usd in parse.prices_from_price_list([json.dumps(doc)])}
    assert prices[("reserved_3y", "p4d.24xlarge")] == D(12) + D(26280) / (3 * 8760)  # $13.00 an hour
    assert prices[("reserved", "p4d.24xlarge")] == D("19.23")


def sp_rate(itype: str, region: str, plan: str, rate: str, years: int = 1) -> dict:
    return {"savingsPlanOffering": {"offeringId": str(uuid.uuid4()), "paymentOption": "No Upfront",
                                    "planType": plan, "durationSeconds": 31_536_000 * years, "currency": "USD"},
            "rate": rate, "unit": "Hrs", "productType": "EC2", "serviceCode": "AmazonEC2",
            "usageType": f"USE1-BoxUsage:{itype}", "operation": "RunInstances",
            "properties": [{"name": "instanceType", "value": itype}, {"name": "region", "value": region},
                           {"name": "tenancy", "value": "shared"}, {"name": "productDescription", "value": "Linux/UNIX"}]}


@pytest.fixture
def moto(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    requests.post(f"http://127.0.0.1:{port}/moto-api/reset")  # moto's backends are per process: start clean
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def focus_export(rows: list[tuple[str, str, str]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["BillingAccountId", "BillingCurrency", "BillingPeriodStart", "ChargePeriodStart", "ChargePeriodEnd",
                "BilledCost", "EffectiveCost", "ProviderName", "ResourceId", "SkuId", "ChargeDescription", "Tags"])
    for resource, billed, desc in rows:
        w.writerow(["123456789012", "USD", "2026-10-01 00:00:00", "2026-10-03 10:00:00", "2026-10-03 11:00:00",
                    billed, billed, "AWS", resource, "SKU1", desc, '{"workload": "ml-batch-embed"}'])
    return gzip.compress(out.getvalue().encode())


@pytest.mark.slow
def test_collector_publishes_prices_instances_events_and_costs_and_resumes_without_repeats(
        tmp_path, broker, moto, pricing_server, topic_prefix):
    pricing_url, pricing_calls = pricing_server
    ec2 = boto3.client("ec2", endpoint_url=moto, region_name="us-east-1")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    gpu = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="p4d.24xlarge", TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "workload", "Value": "ml-batch-embed"},
                                              {"Key": "team", "Value": "search"}]}])["Instances"][0]["InstanceId"]
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")  # not a GPU: ignored
    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="ec2-events")["QueueUrl"]
    for body in (
        {"version": "0", "id": "ev-1", "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
         "account": "123456789012", "time": "2026-11-20T12:01:00Z", "region": "us-east-1",
         "detail": {"instance-id": gpu, "instance-action": "terminate"}},
        {"version": "0", "id": "ev-2", "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
         "account": "123456789012", "time": "2026-11-20T12:03:00Z", "region": "us-east-1",
         "detail": {"instance-id": gpu, "state": "terminated"}},
        "not an event at all",
    ):
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body) if isinstance(body, dict) else body)
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="billing")
    key = "focus/hs/data/BILLING_PERIOD=2026-10/part-0.csv.gz"
    s3.put_object(Bucket="billing", Key=key, Body=focus_export([
        (gpu, "32.7726", "$32.7726 per On Demand Linux p4d.24xlarge Instance Hour"), ("vol-1", "0.10", "EBS")]))
    requests.post(f"{moto}/moto-api/static/ce/cost-and-usage-results", json={"results": [{"ResultsByTime": [
        {"TimePeriod": {"Start": "2026-11-20T10:00:00Z", "End": "2026-11-20T11:00:00Z"}, "Estimated": True,
         "Groups": [{"Keys": ["p4d.24xlarge", "workload$ml-batch-embed"],
                     "Metrics": {"UnblendedCost": {"Amount": "32.7726", "Unit": "USD"},
                                 "NetAmortizedCost": {"Amount": "19.2266", "Unit": "USD"}}}]}]}]})

    cfg = {"kafka": {"topic_prefix": topic_prefix, "topic_partitions": 2},
           "workloads": [{"match": {"tag_workload": "*"}, "workload": "{tag_workload}", "team": "{tag_team}"}],
           "collectors": {"aws": {"accounts": [{"name": "123456789012", "regions": ["us-east-1"]}],
                                  "endpoint_url": moto, "pricing_endpoint_url": pricing_url,
                                  "savingsplans_endpoint_url": pricing_url, "events_queue_url": queue, "ce_max_calls_per_run": 3,
                                  "exports": [{"bucket": "billing", "prefix": "focus/hs/", "format": "focus"}]}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "c.yaml", {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    producer = make_producer(broker.bootstrap, config.kafka)
    checkpoint_path = tmp_path / "aws.json"
    try:
        collector = AwsCollector(config, Publisher(producer, topics), Checkpoint(checkpoint_path), clock=lambda: NOW)
        report = collector.poll_once()
        assert report.source == "aws"
        assert report.errors == ["sqs: not an EC2 state or spot event: 'not an event at all'"]
        assert collector.ce_calls == 1

        prices = {(p.instance_type, p.purchase_option): p.usd_per_hour
                  for p in consume(broker.bootstrap, topics.prices, PriceUpdate.decode)}
        assert prices[("p4d.24xlarge", "on_demand")] == D("32.7726")
        assert prices[("p4d.24xlarge", "reserved")] == D("19.2266")  # 1yr standard No Upfront
        assert prices[("p5.48xlarge", "reserved")] == D("30.1") + D(8760) / D(8760)  # upfront spread over the year
        assert ("p4d.24xlarge", "spot") in prices  # moto's spot price history
        assert prices[("p4d.24xlarge", "savings_plan")] == D("20.67")  # 1-year No Upfront, the lower plan
        assert prices[("p4d.24xlarge", "savings_plan_3y")] == D("17.1")  # 3-year No Upfront
        assert ("p5.48xlarge", "reserved_3y") not in prices  # only an All Upfront 3-year reservation: not read
        assert set(pricing_calls) == {"AWSPriceListService.GetProducts", "savingsplans"}

        instance_events = consume(broker.bootstrap, topics.instance_events, InstanceEvent.decode)
        assert [(e.instance_id, e.state, e.workload, e.team) for e in instance_events] == [
            (gpu, "running", "ml-batch-embed", "search"),
            (gpu, "spot_interruption_warning", "ml-batch-embed", "search"),
            (gpu, "terminated", "ml-batch-embed", "search"),
        ]
        assert instance_events[1].event_id == "aws-eb:ev-1"

        lines = consume(broker.bootstrap, topics.cost_lines, CostLine.decode)
        ce = [line for line in lines if line.source == "aws-ce"]
        assert len(ce) == 1 and ce[0].billed_cost_usd == D("32.7726") and ce[0].effective_cost_usd == D("19.2266")
        assert ce[0].gpu_class == "A100" and ce[0].tags == {"workload": "ml-batch-embed"}
        exported = [line for line in lines if line.source == "aws-focus"]
        assert sorted(line.billed_cost_usd for line in exported) == [D("0.10"), D("32.7726")]
        assert [line.gpu_class for line in exported if line.resource_id == gpu] == ["A100"]
        first_version = exported[0].export_version

        # a restart: a new collector on the same checkpoint repeats nothing it already sent
        collector = AwsCollector(config, Publisher(producer, topics), Checkpoint(checkpoint_path), clock=lambda: NOW)
        report = collector.poll_once()
        assert report.sent == {} and report.errors == [] and collector.ce_calls == 0
        assert len(consume(broker.bootstrap, topics.instance_events, InstanceEvent.decode)) == 3

        # the provider restates October: the folder is read again as a new delivery, which S3 stamps
        # in a later second than the first (LastModified has one-second resolution)
        first_delivery = s3.head_object(Bucket="billing", Key=key)["LastModified"]
        restatement = focus_export([
            (gpu, "30.0000", "$30.00 per On Demand Linux p4d.24xlarge Instance Hour"), ("vol-1", "0.10", "EBS")])
        wait_until(lambda: s3.put_object(Bucket="billing", Key=key, Body=restatement) and
                   s3.head_object(Bucket="billing", Key=key)["LastModified"] > first_delivery,
                   timeout_s=10, what="a delivery stamped after the first", interval_s=0.1)
        report = AwsCollector(config, Publisher(producer, topics), Checkpoint(checkpoint_path),
                              clock=lambda: NOW).poll_once()
        assert report.sent["cost-lines"] == 2
        restated = [line for line in consume(broker.bootstrap, topics.cost_lines, CostLine.decode)
                    if line.source == "aws-focus" and line.export_version != first_version]
        assert sorted(line.billed_cost_usd for line in restated) == [D("0.10"), D("30.0000")]
        assert restated[0].export_version > first_version  # the newer delivery wins in the sink

        # a delivery cut off in transfer (a truncated gzip) is not published in part, and is read
        # again on the next poll rather than checkpointed as done
        second_delivery = s3.head_object(Bucket="billing", Key=key)["LastModified"]
        cut = focus_export([(gpu, "29.0000", "p4d"), ("vol-1", "0.10", "EBS")] * 200)
        wait_until(lambda: s3.put_object(Bucket="billing", Key=key, Body=cut[: len(cut) // 2]) and
                   s3.head_object(Bucket="billing", Key=key)["LastModified"] > second_delivery,
                   timeout_s=10, what="a delivery stamped after the second", interval_s=0.1)
        before = len(consume(broker.bootstrap, topics.cost_lines, CostLine.decode))
        for _ in range(2):
            report = AwsCollector(config, Publisher(producer, topics), Checkpoint(checkpoint_path),
                                  clock=lambda: NOW).poll_once()
            assert "cost-lines" not in report.sent
            assert any("could not be read whole; nothing published, read again next poll" in e for e in report.errors)
        assert len(consume(broker.bootstrap, topics.cost_lines, CostLine.decode)) == before
    finally:
        producer.close()


def test_one_failing_account_is_reported_and_the_others_go_on(tmp_path, broker, moto, topic_prefix):
    cfg = {"kafka": {"topic_prefix": topic_prefix},
           "collectors": {"aws": {"accounts": [{"name": "broken", "regions": ["us-east-1"],
                                                "profile": "no-such-profile"},
                                               {"name": "good", "regions": ["us-east-1"]}],
                                  "endpoint_url": moto, "pricing_endpoint_url": "http://127.0.0.1:9",
                                  "cost_explorer": False}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "c.yaml", {})
    topics = Topics.from_config(config.kafka)
    ensure_topics(broker.bootstrap, config.kafka, topics)
    ec2 = boto3.client("ec2", endpoint_url=moto, region_name="us-east-1")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g6.xlarge")
    producer = make_producer(broker.bootstrap, config.kafka)
    try:
        report = AwsCollector(config, Publisher(producer, topics), Checkpoint(tmp_path / "cp.json"),
                              clock=lambda: NOW).poll_once()
    finally:
        producer.close()
    assert any(e.startswith("broken prices: ProfileNotFound") for e in report.errors)
    assert any(e.startswith("broken/us-east-1 instances") for e in report.errors)
    assert report.sent["instance-events"] == 1  # the good account's GPU instance
