"""Configuration: one YAML file plus environment overrides, validated into one typed object.

Environment overrides use ``HYBRIDSPEND__SECTION__FIELD=value`` (value parsed as YAML), for
example ``HYBRIDSPEND__KAFKA__BOOTSTRAP_SERVERS=kafka:9092``.  Secrets are never written in the
file: they are references ``{env: NAME}`` or ``{file: PATH}`` resolved when used.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridspend.costmodel import (
    COMMIT_IN_CLOUD,
    DEFAULT_BUY_TARGET_UTILIZATION,
    DEFAULT_EVIDENCE_HOURS,
    MIGRATE_TO_CLOUD,
    REPATRIATE_BUY,
    REPATRIATE_FILL_IDLE,
    CloudOffer,
    Market,
    OnPremGpuCost,
    Thresholds,
)
from hybridspend.costmodel.rates import PURCHASE_OPTIONS
from .redact import redact, remember

ENV_PREFIX = "HYBRIDSPEND__"
DEFAULT_STATE_DIR = Path(".hybridspend")
EXAMPLE_CONFIG = Path(__file__).parent / "examples" / "fleet.yaml"  # the demo's fleet, also the default


class ConfigError(ValueError):
    """A configuration problem, with the field, the value and what was expected."""


class StrictModel(BaseModel):
    """A configuration section: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(StrictModel):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self

    def resolve(self) -> str | None:
        """The secret value, or None when the variable is unset or the file missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            return remember(value.strip() if value else None)
        assert self.file is not None
        try:
            return remember(self.file.read_text().strip() or None)
        except FileNotFoundError:
            return None

    def describe(self) -> str:
        where = f"env:{self.env}" if self.env else f"file:{self.file}"
        return f"{where} ({'set' if self.resolve() else 'not set'}, value redacted)"


class KafkaConfig(StrictModel):
    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; empty starts the embedded local broker"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretRef | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    topic_prefix: str = Field(default="hybridspend.", pattern=r"^[A-Za-z0-9._-]*$")
    connect_timeout_seconds: float = Field(
        default=30, gt=0, description="how long a command retries an unreachable broker before it gives up")

    @model_validator(mode="after")
    def _sasl_complete(self) -> "KafkaConfig":
        if self.security_protocol.startswith("SASL"):
            missing = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        return self


class DatabaseConfig(StrictModel):
    dsn: str | None = Field(
        default=None, description="libpq DSN without the password; empty starts the embedded PostgreSQL"
    )
    password: SecretRef | None = None

    @field_validator("dsn")
    @classmethod
    def _no_inline_password(cls, value: str | None) -> str | None:
        if value and re.search(r"://[^/@]*:[^/@]+@|password\s*=", value, re.IGNORECASE):
            raise ValueError("the DSN must not contain a password; use database.password: {env: ...}")
        return value


NonNegative = Field(ge=0)
MAX_AMOUNT_DIGITS = 12  # no configured amount (USD, watts, hours, percent) reaches 10^12
MAX_AMOUNT_PLACES = 12  # decimal places of a configured amount


def _sane_amount(value: Decimal) -> Decimal:
    """Finite and below 10^12 in magnitude, checked by exponent before any arithmetic (an amount
    like 1e999999999 would otherwise take minutes to divide or print)."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if (value and value.adjusted() >= MAX_AMOUNT_DIGITS) or value.as_tuple().exponent > MAX_AMOUNT_DIGITS:
        raise ValueError(f"must be below 1e{MAX_AMOUNT_DIGITS} in magnitude")
    if value.as_tuple().exponent < -MAX_AMOUNT_PLACES:
        raise ValueError(f"must have at most {MAX_AMOUNT_PLACES} decimal places")
    return value


Amount = Annotated[Decimal, AfterValidator(_sane_amount)]
EARLIEST_DATE, LATEST_DATE = date(1990, 1, 1), date(2200, 1, 1)


class AssetProfile(StrictModel):
    name: str = Field(min_length=1)
    gpu_model: str
    gpu_class: str = Field(min_length=1)
    gpu_count: int = Field(gt=0, le=10_000_000)
    gpus_per_node: int = Field(gt=0, le=64)
    hosts: list[str] = Field(min_length=1, description="host names or globs of this profile's nodes")
    purchase_price_usd_per_node: Amount = NonNegative
    in_service_date: date = Field(ge=EARLIEST_DATE, lt=LATEST_DATE)
    amortization_months: int = Field(gt=0, le=600, description="at most 50 years")
    power_w_per_gpu: Amount = Field(ge=0, le=10_000, description="average draw used when NVML reports no power")
    pue: Amount = Field(ge=1, le=10)
    electricity_usd_per_kwh: Amount = NonNegative
    support_usd_per_year_per_node: Amount = Decimal(0)
    facility_usd_per_year_per_node: Amount = Decimal(0)
    staff_usd_per_year_per_node: Amount = Decimal(0)
    capex_after_amortization: bool = False

    @model_validator(mode="after")
    def _whole_nodes(self) -> "AssetProfile":
        if self.gpu_count % self.gpus_per_node:
            raise ValueError(
                f"gpu_count ({self.gpu_count}) must be a multiple of gpus_per_node ({self.gpus_per_node})"
            )
        for n in ("support_usd_per_year_per_node", "facility_usd_per_year_per_node", "staff_usd_per_year_per_node"):
            if getattr(self, n) < 0:
                raise ValueError(f"{n} must be >= 0, got {getattr(self, n)}")
        return self

    def gpu_cost(self) -> OnPremGpuCost:
        per_node = Decimal(self.gpus_per_node)
        upkeep = (
            self.support_usd_per_year_per_node + self.facility_usd_per_year_per_node + self.staff_usd_per_year_per_node
        )
        return OnPremGpuCost(
            gpu_class=self.gpu_class,
            purchase_price_usd_per_gpu=self.purchase_price_usd_per_node / per_node,
            amortization_months=self.amortization_months,
            power_w=self.power_w_per_gpu,
            pue=self.pue,
            electricity_usd_per_kwh=self.electricity_usd_per_kwh,
            upkeep_usd_per_year_per_gpu=upkeep / per_node,
            in_service_date=self.in_service_date,
            capex_after_amortization=self.capex_after_amortization,
        )

    def matches_host(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)


PurchaseOption = Literal["on_demand", "spot", "reserved", "savings_plan", "committed_use", "reserved_3y",
                         "savings_plan_3y", "committed_use_3y"]  # the plain committed names: 1-year terms
assert set(PurchaseOption.__args__) == set(PURCHASE_OPTIONS)  # type: ignore[attr-defined]


class CloudOfferConfig(StrictModel):
    provider: Literal["aws", "gcp", "azure", "other"]
    region: str
    instance_type: str
    gpu_model: str
    gpu_class: str = Field(min_length=1)
    gpus_per_instance: int = Field(gt=0)
    usd_per_hour: dict[PurchaseOption, Amount] = Field(min_length=1, description="per instance")
    discount_pct: Amount = Field(default=Decimal(0), ge=0, lt=100)

    @field_validator("usd_per_hour")
    @classmethod
    def _prices_non_negative(cls, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        for option, price in prices.items():
            if price < 0:
                raise ValueError(f"price for {option} must be >= 0, got {price}")
        return prices

    def offer(self) -> CloudOffer:
        return CloudOffer(
            provider=self.provider,
            region=self.region,
            instance_type=self.instance_type,
            gpu_class=self.gpu_class,
            gpus_per_instance=self.gpus_per_instance,
            usd_per_hour=dict(self.usd_per_hour),
            discount_pct=self.discount_pct,
        )


_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z0-9_]+)\}")


class WorkloadRule(StrictModel):
    match: dict[str, str] = Field(min_length=1, description="label -> glob, all must match")
    workload: str = Field(min_length=1, description="name template, e.g. '{k8s_namespace}'")
    team: str = Field(default="", description="team name template, e.g. 'ml' or '{team}'")
    allow_spot: bool = False

    def apply(self, labels: Mapping[str, str]) -> tuple[str, str] | None:
        for label, pattern in self.match.items():
            if label not in labels or not fnmatch.fnmatchcase(labels[label], pattern):
                return None

        def fill(template: str) -> str:
            return _TEMPLATE_FIELD.sub(lambda m: labels.get(m.group(1), "unknown"), template)

        return fill(self.workload), fill(self.team)


class GpuInstanceTypeConfig(StrictModel):
    provider: Literal["aws", "gcp", "azure", "other"]
    instance_type: str = Field(min_length=1)
    gpu_model: str
    gpu_class: str = Field(min_length=1)
    gpus: int = Field(gt=0)
    gpu_memory_gib: int = Field(gt=0)


MAX_EVIDENCE_WINDOWS = 20_000  # windows a stream keeps per workload for the longest evidence horizon


class EvidenceHours(StrictModel):
    """Hours of consecutive windows a crossing must hold before each kind of decision (and at least the
    dwell); a withdrawal ("stay") needs as long as the recommendation it withdraws."""

    repatriate_fill_idle: Amount = Field(
        default=DEFAULT_EVIDENCE_HOURS[REPATRIATE_FILL_IDLE], ge=0,
        description="filling idle owned GPUs is cheap to reverse: the dwell alone")
    migrate_to_cloud: Amount = Field(default=DEFAULT_EVIDENCE_HOURS[MIGRATE_TO_CLOUD], ge=0)
    repatriate_buy_capacity: Amount = Field(
        default=DEFAULT_EVIDENCE_HOURS[REPATRIATE_BUY], ge=0,
        description="buying hardware is a multi-year commitment: a week by default")
    commit_in_cloud: Amount = Field(
        default=DEFAULT_EVIDENCE_HOURS[COMMIT_IN_CLOUD], ge=0,
        description="a reserved instance, savings plan or committed use is paid for its whole term: a week")


class ThresholdsConfig(StrictModel):
    margin_pct: Amount = Field(default=Decimal(10), ge=0, lt=1000)
    dwell_windows: int = Field(default=3, ge=1)
    window_seconds: int = Field(default=900, ge=1)
    grace_seconds: int = Field(default=60, ge=0)
    migration_purchase_options: list[PurchaseOption] = ["on_demand"]
    evidence_hours: EvidenceHours = EvidenceHours()
    buy_target_utilization_pct: Amount = Field(
        default=DEFAULT_BUY_TARGET_UTILIZATION * 100, gt=0, le=100,
        description="how busy bought GPUs should run: capacity to buy = busy GPUs / this, in whole nodes")
    horizon_months: int | None = Field(
        default=None, ge=1, le=600,
        description="months the options are compared over; default: the owned asset profile's amortization months")
    discount_rate_pct: Amount = Field(default=Decimal(8), ge=0, lt=100,
                                      description="annual cost of capital for present values, percent")

    def horizon_for(self, assets: list, gpu_class: str) -> int:
        """The horizon options of ``gpu_class`` are compared over: configured, else the amortization
        of the owned profile of that class, else 36 months."""
        if self.horizon_months is not None:
            return self.horizon_months
        return next((a.amortization_months for a in assets if a.gpu_class == gpu_class), 36)

    @model_validator(mode="after")
    def _bounded_evidence(self) -> "ThresholdsConfig":
        for kind, hours in self.evidence_hours.model_dump().items():
            windows = hours * 3600 / self.window_seconds
            if windows > MAX_EVIDENCE_WINDOWS:
                raise ValueError(
                    f"evidence_hours.{kind} ({hours} h) is {windows:.0f} windows of {self.window_seconds} s; "
                    f"at most {MAX_EVIDENCE_WINDOWS} are kept per workload: raise window_seconds or lower it")
        return self

    def domain(self) -> Thresholds:
        return Thresholds(margin=self.margin_pct / 100, dwell_windows=self.dwell_windows,
                          evidence_hours=self.evidence_hours.model_dump())


class AlertRoute(StrictModel):
    name: str = Field(min_length=1)
    audience: Literal["finance", "platform"]
    slack_webhook_url: SecretRef | None = Field(default=None, description="an incoming webhook")
    slack_bot_token: SecretRef | None = Field(default=None, description="or a bot token (chat.postMessage)")
    slack_channel: str | None = Field(default=None, description="the channel the bot posts to")
    slack_api_url: str = Field(default="https://slack.com/api/", description="Slack's Web API base URL")
    min_monthly_savings_usd: Amount = Field(default=Decimal(0), ge=0)

    @model_validator(mode="after")
    def _one_way_to_slack(self) -> "AlertRoute":
        if self.slack_webhook_url is not None and self.slack_bot_token is not None:
            raise ValueError("give either slack_webhook_url or slack_bot_token (with slack_channel), not both")
        if (self.slack_bot_token is None) != (self.slack_channel is None):
            raise ValueError("slack_bot_token and slack_channel go together")
        return self


class AlertChecks(StrictModel):
    """Alerts beyond breakeven crossings, evaluated by the alerter on the stored data (event time)."""

    interval_seconds: float = Field(default=60, gt=0, description="how often the checks run")
    cooldown_hours: float = Field(default=24, ge=0, description="an alert on the same subject is not repeated "
                                  "within this time unless it escalated")
    budget_forecast: bool = Field(default=True, description="month-to-date spend and forecast vs team budgets")
    budget_overrun_probability_pct: Amount = Field(
        default=Decimal(80), gt=0, le=100, description="a budget notice fires when the month's forecast gives at "
        "least this chance of exceeding the budget (the straight line decides while there is too little history)")
    spend_rate_increase_pct: Amount | None = Field(
        default=None, gt=0, description="deprecated and ignored: a team's spend rate is judged against its "
        "seasonal baseline in the stream (the anomalies section)")
    idle_usd_per_day: Amount | None = Field(
        default=Decimal(1000), ge=0, description="on-prem idle capacity cost over 24 h per GPU class; null: off")
    collector_silence_minutes: float | None = Field(
        default=10, gt=0, description="an on-prem host whose samples stopped this long ago (while the rest of "
        "the fleet's kept coming) is a 'silent' anomaly, detected by the worker; null: off")

    @model_validator(mode="after")
    def _deprecated(self) -> "AlertChecks":
        if self.spend_rate_increase_pct is not None:
            logging.getLogger(__name__).warning(
                "alerts.checks.spend_rate_increase_pct is no longer used: spend rates are judged against each "
                "team's seasonal baseline (anomalies.*)")
        return self


class AnomalyConfig(StrictModel):
    """Streaming anomaly detection in the worker (anomalies/detect.py), per closed window."""

    enabled: bool = Field(default=True, description="detect anomalies and send them to the anomalies topic")
    score_threshold: float = Field(default=4, gt=0, description="robust spreads (1.4826 x MAD) above the seasonal "
                                   "baseline that make a window anomalous")
    min_relative_change_pct: Amount = Field(
        default=Decimal(10), gt=0, description="the spread is at least this share of the baseline: with the default "
        "score threshold a steady series must rise 40 % to be anomalous")
    min_usd_per_hour: Amount = Field(default=Decimal(1), ge=0, description="an excess smaller than this per hour is "
                                     "not an anomaly")
    clear_windows: int = Field(default=2, ge=1, description="normal windows in a row that end an episode")
    new_normal_hours: float = Field(default=24, gt=0, description="an episode that lasts this long is a new level: "
                                    "it ends and the baseline starts again from it")
    held_idle_utilization_pct: float = Field(default=5, gt=0, le=100, description="GPUs held by a workload and busy "
                                             "below this share of the time are idle")
    held_idle_minutes: float = Field(default=60, gt=0, description="for at least this long before it is an anomaly")
    finance_usd_per_day: Amount = Field(default=Decimal(500), ge=0, description="anomalies whose money at stake "
                                        "(a day of the excess) reaches this also go to finance")

    def settings(self, silence_minutes: float | None):
        from hybridspend.anomalies.detect import Settings

        return Settings(score_threshold=self.score_threshold,
                        min_relative_change=float(self.min_relative_change_pct) / 100,
                        min_usd_per_hour=self.min_usd_per_hour, clear_windows=self.clear_windows,
                        new_normal_hours=self.new_normal_hours,
                        held_idle_utilization_pct=self.held_idle_utilization_pct,
                        held_idle_minutes=self.held_idle_minutes, silence_minutes=silence_minutes)


class AlertsConfig(StrictModel):
    routes: list[AlertRoute] = []
    dashboard_url: str | None = Field(default=None, description="base URL of Grafana, for links in alerts")
    checks: AlertChecks = AlertChecks()


class NvmlCollectorConfig(StrictModel):
    interval_seconds: float = Field(default=30, gt=0)
    host: str | None = Field(default=None, description="node name to report; default: this machine's host name")


class AwsAccount(StrictModel):
    name: str = Field(min_length=1)
    regions: list[str] = Field(default=["us-east-1"], min_length=1)
    profile: str | None = Field(default=None, description="boto3 named profile; default: the standard chain")
    role_arn: str | None = Field(default=None, description="role to assume with STS for this account")


class AwsExport(StrictModel):
    bucket: str = Field(min_length=1)
    prefix: str = ""
    format: Literal["focus", "cur2"] = "focus"


class AwsCollectorConfig(StrictModel):
    accounts: list[AwsAccount] = []
    endpoint_url: str | None = Field(default=None, description="override for every AWS API (VPC endpoint, tests)")
    pricing_endpoint_url: str | None = None
    savingsplans_endpoint_url: str | None = None
    pricing_region: str = "us-east-1"
    events_queue_url: str | None = Field(default=None, description="SQS queue receiving EC2 EventBridge events")
    cost_explorer: bool = True
    ce_max_calls_per_run: int = Field(default=10, ge=0, description="each Cost Explorer call costs $0.01")
    ce_lookback_hours: int = Field(default=48, ge=1, description="hours re-read for late and restated costs")
    ce_tag_key: str = "workload"
    ce_refresh_seconds: float = Field(default=3600, gt=0, description="Cost Explorer updates a few times a day")
    exports: list[AwsExport] = []
    poll_seconds: float = Field(default=60, gt=0)
    price_refresh_seconds: float = Field(default=21600, gt=0)


class GcpCollectorConfig(StrictModel):
    catalog: bool = Field(default=True, description="GPU prices from the Cloud Billing Catalog")
    projects: list[str] = Field(default_factory=list, description="projects whose GPU VMs are listed")
    compute_endpoint: str = "https://compute.googleapis.com"
    billing_export_glob: str | None = Field(
        default=None, description="JSON-lines files of the billing export, e.g. /data/gcp-billing/*.json")
    poll_seconds: float = Field(default=300, gt=0)


class DcgmCollectorConfig(StrictModel):
    urls: list[str] = Field(default_factory=list, description="dcgm-exporter endpoints, e.g. http://node-1:9400/metrics")
    urls_file: Path | None = Field(default=None, description="file of endpoints, one a line; re-read when it changes")
    interval_seconds: float = Field(default=30, gt=0, description="dcgm-exporter collects every 30 s by default")
    timeout_seconds: float = Field(default=10, gt=0)


class PrometheusCollectorConfig(StrictModel):
    url: str | None = Field(default=None, description="Prometheus base URL, e.g. http://prometheus:9090")
    step_seconds: float = Field(default=30, gt=0, description="sample interval read back from Prometheus")
    lookback_seconds: float = Field(default=3600, gt=0, description="how far back the first run starts")
    delay_seconds: float = Field(default=60, ge=0, description="leave the newest data to finish arriving")
    poll_seconds: float = Field(default=60, gt=0)
    timeout_seconds: float = Field(default=30, gt=0)
    match: str = Field(default="", description="extra label matchers for every query, e.g. 'cluster=\"prod\"'")


class KubernetesConfig(StrictModel):
    enabled: bool = Field(default=False, description="enrich pod labels from the Kubernetes API (collect dcgm, "
                          "collect prometheus): namespace, pod labels as k8s_label_<key>, owner")
    api_url: str | None = Field(default=None, description="API server URL; default: in-cluster, else kubeconfig")
    watch_timeout_seconds: int = Field(default=300, gt=0)


class CollectorsConfig(StrictModel):
    nvml: NvmlCollectorConfig = NvmlCollectorConfig()
    dcgm: DcgmCollectorConfig = DcgmCollectorConfig()
    prometheus: PrometheusCollectorConfig = PrometheusCollectorConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    aws: AwsCollectorConfig = AwsCollectorConfig()
    gcp: GcpCollectorConfig = GcpCollectorConfig()


# Public internet egress list prices, first tier, USD per GB (checked 2024): AWS EC2 data transfer
# out, first 10 TB a month, 0.09 (aws.amazon.com/ec2/pricing/on-demand); Google Cloud premium tier,
# 0-1 TB a month, 0.12 (cloud.google.com/vpc/network-pricing); Azure, first 10 TB after 100 GB
# free, 0.087 (azure.microsoft.com/pricing/details/bandwidth).  Ingress is free on all three.
DEFAULT_EGRESS_USD_PER_GB = {"aws": Decimal("0.09"), "gcp": Decimal("0.12"), "azure": Decimal("0.087")}


class WorkloadMove(StrictModel):
    """What moving one workload costs besides its GPUs."""

    data_gb: Amount = Field(default=Decimal(0), ge=0, description="data that moves with it, GB")
    migration_effort_usd: Amount = Field(default=Decimal(0), ge=0, description="one-time work to move it, USD")
    egress_gb_per_month: Amount = Field(default=Decimal(0), ge=0,
                                        description="data still read from the cloud each month once it runs on-prem")


class MovesConfig(StrictModel):
    egress_usd_per_gb: dict[str, Amount] = Field(
        default_factory=lambda: dict(DEFAULT_EGRESS_USD_PER_GB),
        description="cloud provider -> internet egress, USD per GB (defaults: the public list prices)")
    workloads: dict[str, WorkloadMove] = Field(default_factory=dict, description="workload name -> its move costs")

    def one_time_usd(self, workload: str, from_provider: str | None) -> Decimal:
        """Leaving ``from_provider`` (None: leaving owned hardware, whose data goes in for free):
        data x egress + migration work."""
        move = self.workloads.get(workload)
        if move is None:
            return Decimal(0)
        egress = self.egress_usd_per_gb.get(from_provider, Decimal(0)) if from_provider else Decimal(0)
        return move.data_gb * egress + move.migration_effort_usd

    def ongoing_usd_per_month(self, workload: str, provider: str | None) -> Decimal:
        """Data left behind in ``provider``'s cloud, read out every month once the workload runs on-prem."""
        move = self.workloads.get(workload)
        if move is None or not provider:
            return Decimal(0)
        return move.egress_gb_per_month * self.egress_usd_per_gb.get(provider, Decimal(0))


class Config(StrictModel):
    state_dir: Path = DEFAULT_STATE_DIR
    kafka: KafkaConfig = KafkaConfig()
    database: DatabaseConfig = DatabaseConfig()
    onprem_assets: list[AssetProfile] = []
    cloud_offers: list[CloudOfferConfig] = []
    gpu_throughput: dict[str, Amount] = Field(
        default_factory=dict, description="relative throughput per GPU class, e.g. {A100: 1, H100: 3}"
    )
    workloads: list[WorkloadRule] = []
    budgets: dict[str, Amount] = Field(default_factory=dict, description="team -> monthly budget, USD")
    gpu_instance_types: list[GpuInstanceTypeConfig] = Field(
        default_factory=list, description="GPU instance types beyond the built-in catalog")
    thresholds: ThresholdsConfig = ThresholdsConfig()
    moves: MovesConfig = MovesConfig()
    alerts: AlertsConfig = AlertsConfig()
    anomalies: AnomalyConfig = AnomalyConfig()
    collectors: CollectorsConfig = CollectorsConfig()

    @field_validator("gpu_throughput")
    @classmethod
    def _throughput_positive(cls, table: dict[str, Decimal]) -> dict[str, Decimal]:
        for gpu_class, value in table.items():
            if value <= 0:
                raise ValueError(f"throughput of {gpu_class} must be > 0, got {value}")
        return table

    @field_validator("budgets")
    @classmethod
    def _budgets_non_negative(cls, budgets: dict[str, Decimal]) -> dict[str, Decimal]:
        for team, value in budgets.items():
            if value < 0:
                raise ValueError(f"budget of {team} must be >= 0, got {value}")
        return budgets

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [a.name for a in self.onprem_assets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"onprem_assets: duplicate name(s) {', '.join(dupes)}")
        return self

    # -- derived views used by the streams -------------------------------------------------
    def asset_for_host(self, host: str) -> AssetProfile | None:
        return next((a for a in self.onprem_assets if a.matches_host(host)), None)

    def offer_for(self, provider: str, region: str, instance_type: str) -> CloudOfferConfig | None:
        exact = [o for o in self.cloud_offers if (o.provider, o.instance_type) == (provider, instance_type)]
        return next((o for o in exact if o.region == region), exact[0] if exact else None)

    def catalog(self):
        from hybridspend.contracts.catalog import Catalog, GpuInstanceType

        return Catalog([GpuInstanceType(**t.model_dump()) for t in self.gpu_instance_types])

    def market(self) -> Market:
        onprem: dict[str, OnPremGpuCost] = {}
        gpus_per_node: dict[str, int] = {}
        for asset in self.onprem_assets:
            onprem.setdefault(asset.gpu_class, asset.gpu_cost())
            gpus_per_node.setdefault(asset.gpu_class, asset.gpus_per_node)
        return Market(
            onprem=onprem,
            offers=tuple(o.offer() for o in self.cloud_offers),
            throughput=dict(self.gpu_throughput),
            purchase_options=tuple(self.thresholds.migration_purchase_options),
            gpus_per_node=gpus_per_node,
            buy_target_utilization=self.thresholds.buy_target_utilization_pct / 100,
        )

    def resolve_workload(self, labels: Mapping[str, str]) -> tuple[str, str, bool] | None:
        """(workload, team, allow_spot) from the first matching rule, else None."""
        for rule in self.workloads:
            named = rule.apply(labels)
            if named is not None:
                return named[0], named[1], rule.allow_spot
        return None

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets shown only as where they come from."""

        def walk(value: Any) -> Any:
            if isinstance(value, SecretRef):
                return value.describe()
            if isinstance(value, BaseModel):
                return {k: walk(getattr(value, k)) for k in type(value).model_fields}
            if isinstance(value, dict):
                return {str(k): walk(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [walk(v) for v in value]
            if isinstance(value, Decimal):
                return int(value) if value == value.to_integral_value() else float(value)
            if isinstance(value, (Path, date)):
                return str(value)
            return value

        return walk(self)


# fields whose value an error never quotes: it may be the secret itself, given inline by mistake
_SECRET_FIELD = re.compile(r"password|secret|token|webhook|dsn|credential|api_key", re.IGNORECASE)


def format_validation_errors(source: str, err: ValidationError, what: str = "configuration") -> str:
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if isinstance(value, (dict, list)) or e["type"] in ("missing", "extra_forbidden"):
            shown = ""  # an unknown key may be a secret field misspelled (pasword: ...)
        elif _SECRET_FIELD.search(loc):
            shown = " (the value is not shown: it may be a secret)"
        else:
            shown = f", got {_short(value)}"
        lines.append(f"  {loc or '(top level)'}: {msg}{shown}")
    return redact("\n".join(lines))


def _short(value: Any, limit: int = 80) -> str:
    """A value as an error quotes it: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


_YAML_LOOKING = re.compile(r"^(\[.*\]|\{.*\}|true|false|null|~|-?\d+(\.\d+)?)$", re.IGNORECASE | re.DOTALL)


def _env_value(raw: str) -> Any:
    """Lists, mappings, booleans, null and numbers are parsed as YAML; anything else stays a string
    (so that a DSN or host:port is never reinterpreted)."""
    if raw == "":
        return None
    if _YAML_LOOKING.match(raw.strip()):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


def apply_env_overrides(data: dict, environ: Mapping[str, str]) -> dict:
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
            _set_path(data, path, _env_value(environ[key]))
    return data


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, override from the environment and validate; raise ConfigError with every problem."""
    environ = os.environ if environ is None else environ
    data: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the configuration file ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    data = apply_env_overrides(data, environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(source, exc)) from None


def resolve_config(path: str | None, state_dir: str | None = None) -> Config:
    """--config, else $HYBRIDSPEND_CONFIG, else <state dir>/config.yaml, else the bundled example."""
    environ = dict(os.environ)
    if state_dir:
        environ["HYBRIDSPEND__STATE_DIR"] = state_dir
    candidate = path or os.environ.get("HYBRIDSPEND_CONFIG")
    if candidate is None:
        state = Path(state_dir or os.environ.get("HYBRIDSPEND__STATE_DIR") or DEFAULT_STATE_DIR)
        candidate = str(state / "config.yaml") if (state / "config.yaml").exists() else str(EXAMPLE_CONFIG)
    return load_config(candidate, environ)
