"""Event contracts: the versioned records that travel on every topic.

Each record is JSON with a ``schema`` field (``name.vN``) and an ``event_id`` used for
idempotence.  Producers (collectors, the simulator) and consumers (Faust agents, the sink, the
alerter) share these classes; nobody builds the dicts by hand.  ``decode`` validates and raises
``EventError`` with the reason, which the consumers send to the dead-letter topic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

ENVIRONMENTS = ("onprem", "cloud")
INSTANCE_STATES = ("running", "stopped", "terminated", "spot_interruption_warning")
MAX_LABEL_LEN = 253
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EventError(ValueError):
    """A payload that is not a valid event; the message is the dead-letter reason."""


# -- field checks -------------------------------------------------------------------------------


def _get(d: dict, name: str, where: str) -> Any:
    try:
        return d[name]
    except KeyError:
        raise EventError(f"{where}: missing field '{name}'") from None


def _label(d: dict, name: str, where: str, *, optional: bool = False) -> str:
    value = d.get(name) if optional else _get(d, name, where)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise EventError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    if len(value) > MAX_LABEL_LEN:
        raise EventError(f"{where}: '{name}' is longer than {MAX_LABEL_LEN} characters")
    if _CONTROL.search(value):
        raise EventError(f"{where}: '{name}' contains control characters")
    return value


def _int(d: dict, name: str, where: str, *, minimum: int | None = None, optional: bool = False) -> int | None:
    value = d.get(name) if optional else _get(d, name, where)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{where}: '{name}' must be an integer, got {value!r:.40}")
    if minimum is not None and value < minimum:
        raise EventError(f"{where}: '{name}' must be >= {minimum}, got {value}")
    return value


def _num(d: dict, name: str, where: str, lo: float, hi: float) -> float:
    value = _get(d, name, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise EventError(f"{where}: '{name}' must be a number, got {value!r:.40}")
    if not lo <= value <= hi:
        raise EventError(f"{where}: '{name}' must be in [{lo}, {hi}], got {value}")
    return float(value)


def _money(d: dict, name: str, where: str, *, optional: bool = False) -> Decimal | None:
    value = d.get(name) if optional else _get(d, name, where)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventError(f"{where}: '{name}' must be a decimal string, got {value!r:.40}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise EventError(f"{where}: '{name}' is not a decimal number: {value!r:.40}") from None
    if not amount.is_finite():
        raise EventError(f"{where}: '{name}' must be finite, got {value!r:.40}")
    return amount


def _price(d: dict, name: str, where: str) -> Decimal:
    amount = _money(d, name, where)
    assert amount is not None
    if amount < 0:
        raise EventError(f"{where}: '{name}' must be >= 0, got {amount}")
    return amount


def _choice(d: dict, name: str, where: str, choices: tuple[str, ...]) -> str:
    value = _get(d, name, where)
    if value not in choices:
        raise EventError(f"{where}: '{name}' must be one of {', '.join(choices)}, got {value!r:.40}")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_json_default, ensure_ascii=False).encode()


def loads(payload: bytes | str, expected_schema: str) -> dict:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from None
    except RecursionError:
        raise EventError("not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise EventError(f"expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != expected_schema:
        raise EventError(f"unsupported schema {schema!r:.60}, expected {expected_schema!r}")
    return data


# -- records ----------------------------------------------------------------------------------


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, recursively (like ``asdict`` without its deep copies: 10x faster)."""
    cls = type(value)
    names = _FIELD_NAMES.get(cls)
    if names is None and hasattr(cls, "__dataclass_fields__"):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    if names is not None:
        return {n: _plain(getattr(value, n)) for n in names}
    if cls is list:
        return [_plain(v) for v in value]
    if cls is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(slots=True)
class _Record:
    SCHEMA: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"schema": self.SCHEMA, **_plain(self)}

    def encode(self) -> bytes:
        return dumps(self.to_dict())


@dataclass(slots=True)
class WorkloadShare:
    workload: str
    team: str = ""
    allow_spot: bool = False
    utilization_pct: float | None = None  # its measured share of the GPU's work (per-process), when known


def _is_pct(v: Any) -> bool:
    return type(v) in (float, int) and 0 <= v <= 100


@dataclass(slots=True)
class GpuReading:
    uuid: str
    index: int
    model: str
    gpu_class: str
    utilization_pct: float
    memory_used_mib: int
    memory_total_mib: int
    power_mw: int | None  # of the physical GPU (a MIG instance carries its GPU's)
    workloads: list[WorkloadShare] = field(default_factory=list)  # empty: the GPU is idle
    energy_mj: int | None = None  # of the physical GPU over the interval, from an energy counter, when known
    parent_uuid: str = ""  # a MIG instance: the physical GPU's UUID ("" for a whole GPU)
    mig_profile: str = ""  # a MIG instance: its GPU instance profile, e.g. "3g.40gb"
    compute_fraction: float = 1.0  # a MIG instance: its share of the GPU's compute, slices / 7 on A100/H100


@dataclass(slots=True)
class GpuSample(_Record):
    """One tick of one node (or cloud instance): all its GPUs. Key: the resource."""

    SCHEMA: ClassVar[str] = "gpu_sample.v1"
    event_id: str
    ts_ms: int  # end of the sampled interval, UTC epoch milliseconds
    interval_ms: int
    resource: str  # host name, or the cloud instance id
    environment: str  # onprem | cloud
    source: str  # nvml | dcgm | sim
    gpus: list[GpuReading]
    provider: str = ""
    region: str = ""
    instance_type: str = ""
    purchase_option: str = ""

    @classmethod
    def decode(cls, payload: bytes | str) -> "GpuSample":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        gpus_raw = _get(d, "gpus", w)
        if not isinstance(gpus_raw, list) or not gpus_raw:
            raise EventError(f"{w}: 'gpus' must be a non-empty list")
        if len(gpus_raw) > 64:
            raise EventError(f"{w}: 'gpus' has {len(gpus_raw)} entries, at most 64 per resource")
        gpus = [_gpu_fast(g) or _gpu_checked(g, f"{w}: gpus[{i}]") for i, g in enumerate(gpus_raw)]
        parents = {g.parent_uuid for g in gpus if g.parent_uuid}
        if parents and (twice := parents & {g.uuid for g in gpus if not g.parent_uuid}):
            raise EventError(f"{w}: GPU {sorted(twice)[0]!r} is read whole and as MIG instances in one sample")
        return cls(
            event_id=_label(d, "event_id", w),
            ts_ms=_int(d, "ts_ms", w, minimum=1),  # type: ignore[arg-type]
            interval_ms=_int(d, "interval_ms", w, minimum=1),  # type: ignore[arg-type]
            resource=_label(d, "resource", w),
            environment=_choice(d, "environment", w, ENVIRONMENTS),
            source=_label(d, "source", w),
            gpus=gpus,
            provider=_label(d, "provider", w, optional=True),
            region=_label(d, "region", w, optional=True),
            instance_type=_label(d, "instance_type", w, optional=True),
            purchase_option=_label(d, "purchase_option", w, optional=True),
        )


def _is_label(v: Any) -> bool:
    return type(v) is str and len(v) <= MAX_LABEL_LEN and (v.isprintable() or not _CONTROL.search(v))


def _gpu_fast(g: Any) -> "GpuReading | None":
    """The hot path: accept a well-formed GPU reading with the fewest checks, or None to let
    ``_gpu_checked`` find and name the problem.  Accepts nothing that ``_gpu_checked`` rejects."""
    if type(g) is not dict:
        return None
    uuid, index, model, gpu_class = g.get("uuid"), g.get("index"), g.get("model"), g.get("gpu_class")
    util, used, total, power = g.get("utilization_pct"), g.get("memory_used_mib"), g.get("memory_total_mib"), \
        g.get("power_mw")
    if not (_is_label(uuid) and _is_label(model) and _is_label(gpu_class)
            and type(index) is int and index >= 0 and type(used) is int and used >= 0
            and type(total) is int and total >= 0 and (power is None or (type(power) is int and power >= 0))
            and type(util) in (float, int) and 0 <= util <= 100):
        return None
    raw_shares = g.get("workloads")
    if raw_shares is not None and type(raw_shares) is not list:
        return None
    shares = []
    for share in raw_shares or ():
        if type(share) is not dict:
            return None
        name, team, measured = share.get("workload"), share.get("team"), share.get("utilization_pct")
        if not (_is_label(name) and name and (team is None or _is_label(team))
                and (measured is None or _is_pct(measured))):
            return None
        shares.append(WorkloadShare(name, team or "", share.get("allow_spot") is True,
                                    None if measured is None else float(measured)))
    energy, parent, profile, fraction = g.get("energy_mj"), g.get("parent_uuid", ""), g.get("mig_profile", ""), \
        g.get("compute_fraction", 1.0)
    if not ((energy is None or (type(energy) is int and energy >= 0)) and _is_label(parent) and _is_label(profile)
            and type(fraction) in (float, int) and 0 < fraction <= 1):
        return None
    return GpuReading(uuid, index, model, gpu_class, float(util), used, total, power, shares, energy, parent, profile,
                      float(fraction))


def _gpu_checked(g: Any, gw: str) -> "GpuReading":
    """Every check, with a message naming what is wrong (the slow path)."""
    if not isinstance(g, dict):
        raise EventError(f"{gw} must be an object")
    shares_raw = g.get("workloads") or []
    if not isinstance(shares_raw, list):
        raise EventError(f"{gw}: 'workloads' must be a list")
    shares = []
    for j, s in enumerate(shares_raw):
        sw = f"{gw}.workloads[{j}]"
        if not isinstance(s, dict):
            raise EventError(f"{sw} must be an object")
        name = _label(s, "workload", sw)
        if not name:
            raise EventError(f"{sw}: 'workload' must not be empty")
        measured = _num(s, "utilization_pct", sw, 0, 100) if s.get("utilization_pct") is not None else None
        shares.append(WorkloadShare(name, _label(s, "team", sw, optional=True), s.get("allow_spot") is True, measured))
    fraction = _num(g, "compute_fraction", gw, 0, 1) if "compute_fraction" in g else 1.0
    if fraction <= 0:
        raise EventError(f"{gw}: 'compute_fraction' must be > 0, got {fraction}")
    return GpuReading(
        uuid=_label(g, "uuid", gw),
        index=_int(g, "index", gw, minimum=0),  # type: ignore[arg-type]
        model=_label(g, "model", gw),
        gpu_class=_label(g, "gpu_class", gw),
        utilization_pct=_num(g, "utilization_pct", gw, 0, 100),
        memory_used_mib=_int(g, "memory_used_mib", gw, minimum=0),  # type: ignore[arg-type]
        memory_total_mib=_int(g, "memory_total_mib", gw, minimum=0),  # type: ignore[arg-type]
        power_mw=_int(g, "power_mw", gw, minimum=0, optional=True),
        workloads=shares,
        energy_mj=_int(g, "energy_mj", gw, minimum=0, optional=True),
        parent_uuid=_label(g, "parent_uuid", gw, optional=True),
        mig_profile=_label(g, "mig_profile", gw, optional=True),
        compute_fraction=fraction,
    )


@dataclass(slots=True)
class CostWindow(_Record):
    """Usage and cost of one workload on one resource in one event-time window. Key: workload."""

    SCHEMA: ClassVar[str] = "cost_window.v1"
    event_id: str
    workload: str
    team: str
    allow_spot: bool
    environment: str
    gpu_class: str
    resource: str
    window_start_ms: int
    window_ms: int
    allocated_gpu_ms: int
    busy_gpu_ms: int
    metered_gpu_ms: int
    energy_mj: int
    sample_count: int
    first_ms: int
    last_ms: int
    cost_usd: Decimal
    basis: str = "estimated"  # estimated (live) | billed
    provider: str = ""
    instance_type: str = ""
    purchase_option: str = ""

    @staticmethod
    def make_id(resource: str, workload: str, environment: str, gpu_class: str, window_start_ms: int) -> str:
        return f"{resource}|{workload}|{environment}|{gpu_class}|{window_start_ms}"

    @classmethod
    def decode(cls, payload: bytes | str) -> "CostWindow":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.type == "int":
                values[f.name] = _int(d, f.name, w, minimum=0)
            elif f.type == "Decimal":
                values[f.name] = _money(d, f.name, w)
            elif f.type == "bool":
                values[f.name] = d.get(f.name) is True
            else:
                values[f.name] = _label(d, f.name, w, optional=f.name in ("provider", "instance_type", "purchase_option", "team"))
        if values["environment"] not in ENVIRONMENTS:
            raise EventError(f"{w}: 'environment' must be one of {', '.join(ENVIRONMENTS)}")
        return cls(**values)


@dataclass(slots=True)
class BreakevenDecision(_Record):
    """A crossing that held for its kind's evidence horizon: move (or stay again); or, with kind
    ``trending_repatriation``, the platform notice that half a purchase's horizon has passed. Key: workload."""

    SCHEMA: ClassVar[str] = "decision.v1"
    event_id: str
    workload: str
    team: str
    from_env: str
    to_env: str
    kind: str
    gpu_class: str
    window_start_ms: int
    window_end_ms: int
    current_usd_per_busy_gpu_hour: Decimal | None
    alternative_usd_per_busy_gpu_hour: Decimal | None
    utilization: Decimal
    monthly_savings_usd: Decimal
    confidence: Decimal
    alternative_label: str
    gpus_needed: int
    reason: str
    basis: str = "estimated"
    payback_months: Decimal | None = None  # buy capacity: capex / (monthly cloud - monthly on-prem opex)
    # the spread of the windows in the evidence (25th / 75th percentile, holding the point estimate);
    # None in events written before ranges existed
    monthly_savings_low_usd: Decimal | None = None
    monthly_savings_high_usd: Decimal | None = None
    evidence_hours: Decimal | None = None  # hours of consecutive windows the crossing held
    nodes_needed: int | None = None  # buy capacity: whole nodes of the owned profile (gpus_needed GPUs)
    instances_needed: int | None = None  # migration: whole instances of the chosen instance type

    @classmethod
    def decode(cls, payload: bytes | str) -> "BreakevenDecision":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        return cls(
            event_id=_label(d, "event_id", w),
            workload=_label(d, "workload", w),
            team=_label(d, "team", w, optional=True),
            from_env=_choice(d, "from_env", w, ENVIRONMENTS),
            to_env=_choice(d, "to_env", w, ENVIRONMENTS),
            kind=_label(d, "kind", w),
            gpu_class=_label(d, "gpu_class", w),
            window_start_ms=_int(d, "window_start_ms", w, minimum=0),  # type: ignore[arg-type]
            window_end_ms=_int(d, "window_end_ms", w, minimum=0),  # type: ignore[arg-type]
            current_usd_per_busy_gpu_hour=_money(d, "current_usd_per_busy_gpu_hour", w, optional=True),
            alternative_usd_per_busy_gpu_hour=_money(d, "alternative_usd_per_busy_gpu_hour", w, optional=True),
            utilization=_money(d, "utilization", w),  # type: ignore[arg-type]
            monthly_savings_usd=_money(d, "monthly_savings_usd", w),  # type: ignore[arg-type]
            confidence=_money(d, "confidence", w),  # type: ignore[arg-type]
            alternative_label=_label(d, "alternative_label", w),
            gpus_needed=_int(d, "gpus_needed", w, minimum=0),  # type: ignore[arg-type]
            reason=str(_get(d, "reason", w))[:2000],
            basis=_label(d, "basis", w, optional=True) or "estimated",
            payback_months=_money(d, "payback_months", w, optional=True),
            monthly_savings_low_usd=_money(d, "monthly_savings_low_usd", w, optional=True),
            monthly_savings_high_usd=_money(d, "monthly_savings_high_usd", w, optional=True),
            evidence_hours=_money(d, "evidence_hours", w, optional=True),
            nodes_needed=_int(d, "nodes_needed", w, minimum=0, optional=True),
            instances_needed=_int(d, "instances_needed", w, minimum=0, optional=True),
        )


@dataclass(slots=True)
class InstanceEvent(_Record):
    """A cloud GPU instance changed state (or got a spot interruption warning). Key: instance id."""

    SCHEMA: ClassVar[str] = "instance_event.v1"
    event_id: str
    ts_ms: int
    provider: str
    region: str
    account: str
    instance_id: str
    instance_type: str
    state: str
    purchase_option: str
    workload: str
    team: str = ""

    @classmethod
    def decode(cls, payload: bytes | str) -> "InstanceEvent":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        return cls(
            event_id=_label(d, "event_id", w),
            ts_ms=_int(d, "ts_ms", w, minimum=1),  # type: ignore[arg-type]
            provider=_label(d, "provider", w),
            region=_label(d, "region", w),
            account=_label(d, "account", w, optional=True),
            instance_id=_label(d, "instance_id", w),
            instance_type=_label(d, "instance_type", w),
            state=_choice(d, "state", w, INSTANCE_STATES),
            purchase_option=_label(d, "purchase_option", w),
            workload=_label(d, "workload", w),
            team=_label(d, "team", w, optional=True),
        )


LIVE_STATES = ("running", "reclaiming", "stopped")


@dataclass(slots=True)
class LiveSpend(_Record):
    """What a cloud instance costs from now on, emitted on each of its state changes. Key: instance id.

    The live side of the cloud cost: seconds after a start, a spot warning or a stop, while its
    cost windows are still open.  ``usd_per_hour`` is the instance's live price in force at
    ``ts_ms`` (0 once stopped); a reclaiming spot instance stops costing at ``ends_at_ms``.
    """

    SCHEMA: ClassVar[str] = "live_spend.v1"
    event_id: str
    ts_ms: int
    instance_id: str
    provider: str
    region: str
    instance_type: str
    purchase_option: str
    workload: str
    team: str
    gpu_class: str
    gpus: int
    state: str
    usd_per_hour: Decimal
    running_since_ms: int | None = None
    ends_at_ms: int | None = None

    @classmethod
    def decode(cls, payload: bytes | str) -> "LiveSpend":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        price = _price(d, "usd_per_hour", w)
        return cls(
            event_id=_label(d, "event_id", w),
            ts_ms=_int(d, "ts_ms", w, minimum=1),  # type: ignore[arg-type]
            instance_id=_label(d, "instance_id", w),
            provider=_label(d, "provider", w),
            region=_label(d, "region", w),
            instance_type=_label(d, "instance_type", w),
            purchase_option=_label(d, "purchase_option", w),
            workload=_label(d, "workload", w),
            team=_label(d, "team", w, optional=True),
            gpu_class=_label(d, "gpu_class", w),
            gpus=_int(d, "gpus", w, minimum=1),  # type: ignore[arg-type]
            state=_choice(d, "state", w, LIVE_STATES),
            usd_per_hour=price,
            running_since_ms=_int(d, "running_since_ms", w, minimum=1, optional=True),
            ends_at_ms=_int(d, "ends_at_ms", w, minimum=1, optional=True),
        )


@dataclass(slots=True)
class PriceUpdate(_Record):
    """The price of an instance type under one purchase option. Key: provider|region|instance_type."""

    SCHEMA: ClassVar[str] = "price.v1"
    event_id: str
    ts_ms: int
    provider: str
    region: str
    instance_type: str
    purchase_option: str
    usd_per_hour: Decimal
    source: str

    @classmethod
    def decode(cls, payload: bytes | str) -> "PriceUpdate":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        price = _price(d, "usd_per_hour", w)
        return cls(
            event_id=_label(d, "event_id", w),
            ts_ms=_int(d, "ts_ms", w, minimum=1),  # type: ignore[arg-type]
            provider=_label(d, "provider", w),
            region=_label(d, "region", w),
            instance_type=_label(d, "instance_type", w),
            purchase_option=_label(d, "purchase_option", w),
            usd_per_hour=price,
            source=_label(d, "source", w),
        )


@dataclass(slots=True)
class CostLine(_Record):
    """A billed cost line (FOCUS, CUR, billing export). Key: the billed resource id.

    ``export_version`` identifies one delivery of a billing period's data (a CUR/FOCUS export
    execution, one ingest run); a newer version of the same (source, account, period) replaces the
    lines of older ones: a restated period never adds to itself.
    """

    SCHEMA: ClassVar[str] = "cost_line.v1"
    event_id: str
    provider: str  # aws, gcp, azure, oracle, ...
    provider_name: str  # as the bill names it
    billing_account: str
    billing_period_start_ms: int
    resource_id: str
    charge_period_start_ms: int
    charge_period_end_ms: int
    charge_category: str
    billed_cost_usd: Decimal
    effective_cost_usd: Decimal
    service: str
    sku: str
    region: str
    instance_type: str  # the GPU instance type when the catalog recognizes one, else ""
    gpu_class: str
    gpus: int
    source: str  # focus-file, aws-cur, aws-ce, gcp-export, ...
    export_version: str
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # x_ columns, kept as text

    @classmethod
    def decode(cls, payload: bytes | str) -> "CostLine":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        for name in ("tags", "extra"):
            value = d.get(name) or {}
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in value.items()):
                raise EventError(f"{w}: '{name}' must be an object of strings")
        return cls(
            event_id=_label(d, "event_id", w),
            provider=_label(d, "provider", w),
            provider_name=_label(d, "provider_name", w, optional=True),
            billing_account=_label(d, "billing_account", w, optional=True),
            billing_period_start_ms=_int(d, "billing_period_start_ms", w, minimum=0),  # type: ignore[arg-type]
            resource_id=str(d.get("resource_id") or "")[:2048],
            charge_period_start_ms=_int(d, "charge_period_start_ms", w, minimum=0),  # type: ignore[arg-type]
            charge_period_end_ms=_int(d, "charge_period_end_ms", w, minimum=0),  # type: ignore[arg-type]
            charge_category=_label(d, "charge_category", w, optional=True),
            billed_cost_usd=_money(d, "billed_cost_usd", w),  # type: ignore[arg-type]
            effective_cost_usd=_money(d, "effective_cost_usd", w),  # type: ignore[arg-type]
            service=_label(d, "service", w, optional=True),
            sku=_label(d, "sku", w, optional=True),
            region=_label(d, "region", w, optional=True),
            instance_type=_label(d, "instance_type", w, optional=True),
            gpu_class=_label(d, "gpu_class", w, optional=True),
            gpus=_int(d, "gpus", w, minimum=0, optional=True) or 0,
            source=_label(d, "source", w),
            export_version=_label(d, "export_version", w),
            tags=d.get("tags") or {},
            extra=d.get("extra") or {},
        )


WATERMARK_SCHEMA = "watermark.v1"


def is_watermark(payload: bytes | None) -> bool:
    """Cheap test before full decoding: our encoder writes the schema first."""
    return payload is not None and b'"schema":"watermark.v1"' in payload[:40]


@dataclass(slots=True)
class Watermark(_Record):
    """Event-time progress of one upstream source: nothing before ``ts_ms`` is still to come from it.

    Sent to every partition of a topic.  On the input topics, collectors and the simulator send
    them so that partitions without traffic still advance; on ``cost-windows`` the usage agent
    sends one per input partition it owns, with the owned GPU capacity that sat idle in the
    windows it closed (``idle``: [window_start_ms, gpu_class, resource, idle_gpu_ms]) and whether
    that partition still had input to read (``pending``: then the decision agent waits for it
    however long it is silent).
    """

    SCHEMA: ClassVar[str] = WATERMARK_SCHEMA
    event_id: str
    source: str
    ts_ms: int
    idle: list = field(default_factory=list)
    pending: bool = False

    @classmethod
    def decode(cls, payload: bytes | str) -> "Watermark":
        d = loads(payload, cls.SCHEMA)
        w = cls.SCHEMA
        idle = d.get("idle") or []
        if not isinstance(idle, list) or not all(
            isinstance(r, list) and len(r) == 4 and isinstance(r[0], int) and not isinstance(r[0], bool)
            and isinstance(r[1], str) and isinstance(r[2], str) and isinstance(r[3], int)
            and not isinstance(r[3], bool) and r[3] >= 0 for r in idle
        ):
            raise EventError(f"{w}: 'idle' must be a list of [window_start_ms, gpu_class, resource, idle_gpu_ms]")
        return cls(
            event_id=_label(d, "event_id", w),
            source=_label(d, "source", w),
            ts_ms=_int(d, "ts_ms", w, minimum=0),  # type: ignore[arg-type]
            idle=idle,
            pending=_pending(d, w),
        )


def _pending(d: dict, schema: str) -> bool:
    pending = d.get("pending", False)
    if not isinstance(pending, bool):
        raise EventError(f"{schema}: 'pending' must be true or false, got {pending!r:.40}")
    return pending


@dataclass(slots=True)
class DeadLetter(_Record):
    """A payload that could not be processed, with the reason. Key: the source topic."""

    SCHEMA: ClassVar[str] = "dead_letter.v1"
    event_id: str
    ts_ms: int
    source_topic: str
    partition: int
    offset: int
    reason: str
    payload: str  # the original bytes, decoded as UTF-8 with replacement, at most 64 KiB

    @classmethod
    def of(cls, *, topic: str, partition: int, offset: int, reason: str, payload: bytes | None, ts_ms: int) -> "DeadLetter":
        text = (payload or b"")[:65536].decode("utf-8", errors="replace")
        return cls(f"{topic}|{partition}|{offset}", ts_ms, topic, partition, offset, reason[:1000], text)

    @classmethod
    def decode(cls, payload: bytes | str) -> "DeadLetter":
        d = loads(payload, cls.SCHEMA)
        return cls(**{f.name: d[f.name] for f in fields(cls)})
