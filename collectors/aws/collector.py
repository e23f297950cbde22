"""The AWS collector: thin boto3 adapters around ``parse``, publishing events and checkpointing.

Credentials come from boto3's standard chain (environment, profile, instance/task role), or a
role assumed per account; nothing secret is logged.  Pagination everywhere; throttling and
transient errors are retried by botocore's adaptive retry mode.  One failing account or region
is reported and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from hybridspend.contracts.catalog import Catalog
from hybridspend.contracts.config import AwsAccount, Config
from hybridspend.contracts.events import PriceUpdate
from hybridspend.infra.checkpoint import Checkpoint

from ..base import CollectReport
from ..focus import FocusSummary, read_files
from . import parse

log = logging.getLogger(__name__)

_PERIOD = re.compile(r"BILLING_PERIOD=(\d{4}-\d{2})|/(\d{8})-\d{8}/")
_DATA = re.compile(r"\.(parquet|csv\.gz|csv)$")


class AwsCollector:
    """Prices, GPU instances and their state changes, Cost Explorer and S3 exports of every configured account."""

    name = "aws"

    def __init__(self, config: Config, publisher, checkpoint: Checkpoint, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.aws = config.collectors.aws
        self.interval_s = self.aws.poll_seconds
        self.ce_calls = 0  # Cost Explorer calls of the latest poll (each one is billed)
        self.publisher = publisher
        self.checkpoint = checkpoint
        self.catalog: Catalog = config.catalog()
        self.gpu_types = sorted(t for (p, t) in self.catalog.by_type if p == "aws")
        self.clock = clock
        self._sessions: dict[str, object] = {}
        self._instances: dict[str, tuple[dict, str, str]] = {}  # id -> (instance, account, region)

    # -- clients --------------------------------------------------------------------------------
    def _session(self, account: AwsAccount):
        import boto3

        if account.name not in self._sessions:
            session = boto3.Session(profile_name=account.profile) if account.profile else boto3.Session()
            if account.role_arn:
                sts = session.client("sts", endpoint_url=self.aws.endpoint_url)
                creds = sts.assume_role(RoleArn=account.role_arn, RoleSessionName="hybridspend")["Credentials"]
                session = boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                                        aws_secret_access_key=creds["SecretAccessKey"],
                                        aws_session_token=creds["SessionToken"])
            self._sessions[account.name] = session
        return self._sessions[account.name]

    def _client(self, account: AwsAccount, service: str, region: str, endpoint_url: str | None = None):
        from botocore.config import Config as BotoConfig

        return self._session(account).client(
            service, region_name=region, endpoint_url=endpoint_url or self.aws.endpoint_url,
            config=BotoConfig(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=10, read_timeout=60),
        )

    def _guard(self, report: CollectReport, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one account/region/source failing must not stop the others
            message = f"{what}: {type(exc).__name__}: {str(exc)[:300]}"
            log.warning("aws collector: %s", message)
            report.errors.append(message)

    # -- prices -----------------------------------------------------------------------------------
    def prices(self, account: AwsAccount, report: CollectReport) -> None:
        now_ms = int(self.clock().timestamp() * 1000)
        last = self.checkpoint.get("prices_at_ms", 0)
        if now_ms - last < self.aws.price_refresh_seconds * 1000:
            return  # cached: refreshed on schedule, not every poll
        pricing = self._client(account, "pricing", self.aws.pricing_region, self.aws.pricing_endpoint_url)
        regions = sorted({r for a in self.aws.accounts for r in a.regions})
        found = []
        for region in regions:
            for itype in self.gpu_types:
                filters = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
                    ("instanceType", itype), ("regionCode", region), ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]
                for page in pricing.get_paginator("get_products").paginate(
                        ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"):
                    found.extend(parse.prices_from_price_list(page.get("PriceList", [])))
            ec2 = self._client(account, "ec2", region)
            history = []
            for page in ec2.get_paginator("describe_spot_price_history").paginate(
                    InstanceTypes=self.gpu_types, ProductDescriptions=["Linux/UNIX"],
                    StartTime=self.clock() - timedelta(hours=3)):
                history.extend(page.get("SpotPriceHistory", []))
            for itype, (price, _) in parse.cheapest_spot(history).items():
                found.append((itype, region, "spot", price))
        savingsplans = self._client(account, "savingsplans", "us-east-1", self.aws.savingsplans_endpoint_url)
        token = None
        while True:
            kwargs = dict(savingsPlanPaymentOptions=["No Upfront"], products=["EC2"], serviceCodes=["AmazonEC2"],
                          filters=[{"name": "instanceType", "values": self.gpu_types},
                                   {"name": "region", "values": regions},
                                   {"name": "tenancy", "values": ["shared"]},
                                   {"name": "productDescription", "values": ["Linux/UNIX"]}], maxResults=1000)
            if token:
                kwargs["nextToken"] = token
            page = savingsplans.describe_savings_plans_offering_rates(**kwargs)
            for itype, region, option, rate in parse.savings_plan_rates(page.get("searchResults", [])):
                found.append((itype, region, option, rate))
            token = page.get("nextToken")
            if not token:
                break
        for itype, region, option, price in found:
            event = PriceUpdate(
                event_id=f"aws:{region}:{itype}:{option}:{price}", ts_ms=now_ms, provider="aws", region=region,
                instance_type=itype, purchase_option=option, usd_per_hour=price, source="aws-pricing")
            self.publisher.send("prices", f"aws|{region}|{itype}", event)
            report.count("prices")
        self.publisher.flush()
        self.checkpoint.set("prices_at_ms", now_ms)

    # -- instances --------------------------------------------------------------------------------
    def _workload(self, instance: dict) -> tuple[str, str]:
        resolved = self.config.resolve_workload(parse.tag_labels(instance.get("Tags")))
        return (resolved[0], resolved[1]) if resolved else ("unattributed", "")

    def inventory(self, account: AwsAccount, region: str, report: CollectReport) -> None:
        ec2 = self._client(account, "ec2", region)
        now_ms = int(self.clock().timestamp() * 1000)
        seen = self.checkpoint.get("instances", {})
        for page in ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-type", "Values": self.gpu_types}]):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    self._instances[inst["InstanceId"]] = (inst, account.name, region)
                    event = parse.instance_event(inst, account=account.name, region=region, ts_ms=now_ms,
                                                 workload=self._workload(inst))
                    if seen.get(inst["InstanceId"]) == event.state:
                        continue  # nothing new since the last publish: not repeated after a restart
                    self.publisher.send("instance-events", inst["InstanceId"], event)
                    seen[inst["InstanceId"]] = event.state
                    report.count("instance-events")
        self.publisher.flush()
        self.checkpoint.set("instances", seen)

    def poll_events(self, account: AwsAccount, report: CollectReport, max_messages: int = 1000) -> None:
        """EC2 state changes and spot interruption warnings from EventBridge via SQS.

        A message is deleted only after its event was flushed to Kafka (nothing lost); a redelivery
        carries the same EventBridge id, which the event id keeps (downstream dedupes it).
        """
        if not self.aws.events_queue_url:
            return
        region = account.regions[0]
        sqs = self._client(account, "sqs", region)
        handled = 0
        while handled < max_messages:
            batch = sqs.receive_message(QueueUrl=self.aws.events_queue_url, MaxNumberOfMessages=10,
                                        WaitTimeSeconds=1).get("Messages", [])
            if not batch:
                break
            done = []
            for msg in batch:
                handled += 1
                try:
                    body = json.loads(msg["Body"])
                    change = parse.eventbridge_change(body)
                except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                    change = None
                if change is None:
                    report.errors.append(f"sqs: not an EC2 state or spot event: {msg['Body'][:120]!r}")
                    done.append(msg)  # kept in the report, not retried forever
                    continue
                iid, state, event_id, ts_ms, event_region = change
                known = self._instances.get(iid) or self._describe(account, event_region or region, iid)
                if known is None:
                    report.errors.append(f"sqs: instance {iid} is unknown to describe_instances")
                    done.append(msg)
                    continue
                inst, acct, inst_region = known
                event = parse.instance_event(inst, account=acct, region=inst_region, ts_ms=ts_ms,
                                             workload=self._workload(inst), state=state, event_id=event_id)
                self.publisher.send("instance-events", iid, event)
                report.count("instance-events")
                done.append(msg)
            self.publisher.flush()
            sqs.delete_message_batch(QueueUrl=self.aws.events_queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])

    def _describe(self, account: AwsAccount, region: str, iid: str):
        ec2 = self._client(account, "ec2", region)
        for reservation in ec2.describe_instances(InstanceIds=[iid]).get("Reservations", []):
            for inst in reservation.get("Instances", []):
                self._instances[iid] = (inst, account.name, region)
                return self._instances[iid]
        return None

    # -- costs --------------------------------------------------------------------------------------
    def cost_explorer(self, account: AwsAccount, report: CollectReport) -> None:
        """Hourly GPU cost by instance type and tag, re-reading ``ce_lookback_hours`` for late data.

        Every call costs money: at most ``ce_max_calls_per_run`` per run, and nothing re-read that
        is older than the lookback window of the last completed hour.
        """
        if not self.aws.cost_explorer:
            return
        now_ms = int(self.clock().timestamp() * 1000)
        done_key = f"ce_at_ms:{account.name}"
        if now_ms - self.checkpoint.get(done_key, 0) < self.aws.ce_refresh_seconds * 1000:
            return  # read recently: neither repeated after a restart nor paid for twice
        ce = self._client(account, "ce", "us-east-1")
        end = self.clock().replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(hours=self.aws.ce_lookback_hours)
        token = None
        while True:
            if self.ce_calls >= self.aws.ce_max_calls_per_run:
                report.errors.append(f"cost explorer: stopped at the limit of {self.aws.ce_max_calls_per_run} calls")
                break
            kwargs = dict(
                TimePeriod={"Start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "End": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
                Granularity="HOURLY", Metrics=["UnblendedCost", "NetAmortizedCost"],
                GroupBy=[{"Type": "DIMENSION", "Key": "INSTANCE_TYPE"}, {"Type": "TAG", "Key": self.aws.ce_tag_key}],
                Filter={"Dimensions": {"Key": "INSTANCE_TYPE", "Values": self.gpu_types}},
            )
            if token:
                kwargs["NextPageToken"] = token
            result = ce.get_cost_and_usage(**kwargs)
            self.ce_calls += 1
            for line in parse.cost_lines_from_ce(result.get("ResultsByTime", []), account=account.name,
                                                 catalog=self.catalog, tag_key=self.aws.ce_tag_key):
                self.publisher.send("cost-lines", line.resource_id, line)
                report.count("cost-lines")
            token = result.get("NextPageToken")
            if not token:
                break
        self.publisher.flush()
        if not token:  # complete: the next read is due after ce_refresh_seconds
            self.checkpoint.set(done_key, now_ms)

    def exports(self, account: AwsAccount, report: CollectReport) -> None:
        """FOCUS or CUR 2.0 exports in S3, one billing period folder at a time.

        A folder is (re)read when its objects changed since the checkpoint: the new delivery gets a
        new export version, and its lines replace the older delivery's (a restatement).
        """
        s3 = self._client(account, "s3", account.regions[0])
        done = self.checkpoint.get("exports", {})
        for export in self.aws.exports:
            folders: dict[str, list[dict]] = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=export.bucket, Prefix=export.prefix):
                for obj in page.get("Contents", []):
                    m = _PERIOD.search(obj["Key"])
                    if m and _DATA.search(obj["Key"]):
                        folders.setdefault(m.group(1) or m.group(2), []).append(obj)
            for period, objects in sorted(folders.items()):
                objects.sort(key=lambda o: o["Key"])
                newest = max(o["LastModified"] for o in objects).astimezone(timezone.utc)
                etags = hashlib.sha256("".join(o["Key"] + o["ETag"] for o in objects).encode()).hexdigest()[:12]
                version = f"{newest:%Y-%m-%dT%H:%M:%SZ}|{etags}"
                key = f"s3://{export.bucket}/{export.prefix}|{period}"
                if done.get(key) == version:
                    continue  # this delivery was read already
                if self._read_export(s3, export, objects, version, report):
                    done[key] = version
                    self.checkpoint.set("exports", done)  # after the flush in _read_export

    def _read_export(self, s3, export, objects: list[dict], version: str, report: CollectReport) -> bool:
        """Publish one delivery of a billing period; False (nothing sent, to be read again next poll)
        when a file of it cannot be read whole: a partial delivery would replace the whole bill."""
        with tempfile.TemporaryDirectory(prefix="hs-export-") as tmp:
            paths = []
            for i, obj in enumerate(objects):
                path = Path(tmp) / f"{i}-{Path(obj['Key']).name}"
                s3.download_file(export.bucket, obj["Key"], str(path))
                paths.append(path)
            source = "aws-focus" if export.format == "focus" else "aws-cur"
            row_map = parse.Cur2Rows() if export.format == "cur2" else None
            names = [f"s3://{export.bucket}/{o['Key']}" for o in objects]

            def lines(summary: FocusSummary):
                return read_files(paths, self.catalog, version, summary, source=source, row_map=row_map,
                                  names=names, id_prefix=source)

            checked = FocusSummary()
            for _ in lines(checked):  # read whole first
                pass
            report.errors.extend(f"export {r}" for r in checked.rejections[:50])
            if checked.files_unread:
                report.errors.append(f"export {version}: {', '.join(checked.files_unread)} could not be read whole;"
                                     " nothing published, read again next poll")
                return False
            for line in lines(FocusSummary()):
                self.publisher.send("cost-lines", line.resource_id or line.event_id, line)
                report.count("cost-lines")
        self.publisher.flush()
        return True

    # -- a poll ---------------------------------------------------------------------------------------
    def poll_once(self) -> CollectReport:
        """Every account's prices, instances, events, Cost Explorer costs and exports that are new."""
        report = CollectReport(self.name)
        self.ce_calls = 0
        for account in self.aws.accounts:
            self._guard(report, f"{account.name} prices", lambda: self.prices(account, report))
            for region in account.regions:
                self._guard(report, f"{account.name}/{region} instances",
                            lambda: self.inventory(account, region, report))
            self._guard(report, f"{account.name} events", lambda: self.poll_events(account, report))
            self._guard(report, f"{account.name} cost explorer", lambda: self.cost_explorer(account, report))
            self._guard(report, f"{account.name} exports", lambda: self.exports(account, report))
        if self.ce_calls:
            log.info("aws collector: %d Cost Explorer call(s) this poll", self.ce_calls)
        return report
