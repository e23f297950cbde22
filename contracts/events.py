"""Event contracts: the versioned records that travel on every topic, declared once.

Each record is a msgspec ``Struct``: its fields' types and constraints (``Label``, ``NonNegative``,
``Percent``, ``Money``, ``Literal`` choices, list lengths) are the contract, and msgspec's JSON
decoder checks them while it parses, in C.  Each record is JSON with a ``schema`` field
(``name.vN``, written first) and an ``event_id`` used for idempotence.  Producers (collectors, the
simulator) and consumers (Faust agents, the sink, the alerter) share these classes; nobody builds
the dicts by hand.  ``decode`` raises ``EventError`` naming the field, the value and what was
expected (the consumers send it to the dead-letter topic as the reason).

On the wire, a field with a default may be left out, and ``null`` reads as the default for the
optional text fields; a field whose default is ``REQUIRED`` must be there (it has a default only so
that the positional constructor keeps its order).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

ENVIRONMENTS = ("onprem", "cloud")
INSTANCE_STATES = ("running", "stopped", "terminated", "spot_interruption_warning")
LIVE_STATES = ("running", "reclaiming", "stopped")
MAX_LABEL_LEN = 253


class EventError(ValueError):
    """A payload that is not a valid event; the message is the dead-letter reason."""


# -- field types: the constraints every field is declared with ----------------------------------------

# A name shown to people: at most 253 characters, no control characters.  (The control characters
# are checked after decoding, and only when the payload has a backslash escape or a DEL: a JSON
# string cannot carry a raw control character, so a payload without either has none.  Checked by a
# ``pattern`` constraint instead, every label would cost a regular-expression search: 6x slower.)
Label = Annotated[str, Meta(max_length=MAX_LABEL_LEN)]
OptionalLabel = Label | None  # null reads as the field's default
Name = Annotated[str, Meta(min_length=1, max_length=MAX_LABEL_LEN)]  # a label that must not be empty
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Fraction = Annotated[float, Meta(gt=0, le=1)]
Environment = Literal[ENVIRONMENTS]


MAX_MONEY_DIGITS = 18  # integer digits: the stored columns are numeric(30, 12)
MAX_MONEY_PLACES = 30  # decimal places accepted (stored rounded to 12); 1e-20000 is refused


class Money(Decimal):
    """An exact amount: a JSON decimal string or integer (never a float), finite."""

    __slots__ = ()


class Price(Money):
    """Money that is >= 0."""

    __slots__ = ()


def _money_problem(cls: type, value: Any) -> str | None:
    """What is wrong with ``value`` as ``cls`` (Money or Price), or None."""
    if type(value) not in (str, int):
        return f"must be a decimal string, got {value!r:.40}"
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return f"is not a decimal number: {value!r:.40}"
    if not amount.is_finite():
        return f"must be finite, got {value!r:.40}"
    # by exponent, no arithmetic (abs(1e1000000) overflows), zero included (0e99999 is refused as text)
    exponent = amount.as_tuple().exponent
    if (amount and amount.adjusted() >= MAX_MONEY_DIGITS) or exponent > MAX_MONEY_DIGITS:
        return f"must be below 1e{MAX_MONEY_DIGITS} in magnitude (what is stored), got {value!r:.40}"
    if exponent < -MAX_MONEY_PLACES:
        return f"has more than {MAX_MONEY_PLACES} decimal places, got {value!r:.40}"
    if cls is Price and amount < 0:
        return f"must be >= 0, got {amount}"
    return None


def _dec_hook(cls: type, value: Any) -> Any:
    if cls is Money or cls is Price:
        problem = _money_problem(cls, value)
        if problem:
            raise ValueError(problem)
        return cls(value)
    raise NotImplementedError(cls)


REQUIRED: Any = msgspec.UNSET  # the default of a field that must be on the wire


# -- records ------------------------------------------------------------------------------------------


class _Record(Struct, tag_field="schema"):
    SCHEMA: ClassVar[str] = ""
    _decoder: ClassVar[msgspec.json.Decoder]
    _required: ClassVar[tuple[str, ...]] = ()  # fields whose default is REQUIRED
    _blank: ClassVar[tuple[tuple[str, Any], ...]] = ()  # (optional field, makes its default): null reads as it
    _labels: ClassVar[tuple] = ()  # where the labels are: see ``_label_plan``

    def __post_init__(self) -> None:
        for name in self._required:
            if getattr(self, name) is REQUIRED:
                raise ValueError(f"missing field '{name}'")
        for name, default in self._blank:
            if getattr(self, name) is None:
                setattr(self, name, default())

    @classmethod
    def decode(cls, payload: bytes | str):
        """The record in ``payload`` (JSON), or EventError with the reason."""
        try:
            record = cls._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise EventError(_explain(cls, payload, exc)) from None
        except UnicodeEncodeError as exc:  # a str payload with a lone surrogate: no UTF-8, so no JSON text
            raise EventError(f"not JSON: {exc}") from None
        if type(record) is not cls:  # the stand-in's own tag
            raise EventError(f"unsupported schema {_Unknown.__struct_config__.tag!r}, expected {cls.SCHEMA!r}")
        if ("\\" in payload or "\x7f" in payload) if isinstance(payload, str) else \
                (b"\\" in payload or b"\x7f" in payload):
            path = _control_characters(record, cls._labels)
            if path:
                raise EventError(f"{_where(cls, path[:-1])}: '{path[-1]}' contains control characters")
        problem = record._received()
        if problem:
            raise EventError(f"{cls.SCHEMA}: {problem}")
        return record

    @classmethod
    def decode_replacing_labels(cls, payload: bytes | str) -> tuple[Any, list[str]]:
        """Like ``decode``, but a label that is too long or holds control characters is replaced
        by ``safe_label`` instead of refusing the record (one hostile workload name must not drop
        a whole node's costs); returns the record and what was replaced, as 'path (why)'."""
        try:
            return cls.decode(payload), []
        except EventError as refused:
            try:
                raw = msgspec.json.decode(payload)
            except (msgspec.DecodeError, UnicodeEncodeError):
                raise refused from None
            replaced = _replace_labels(raw, cls._labels) if isinstance(raw, dict) else []
            if not replaced:
                raise
            try:
                return cls.decode(_encoder.encode(raw)), replaced
            except EventError:
                raise refused from None

    def _received(self) -> str | None:
        """Checks across fields and clean-up of a decoded record (not of one built in code); what
        is wrong, or None."""
        return None

    def to_dict(self) -> dict:
        """The record as plain dicts and lists (amounts stay Decimal), ``schema`` first."""
        return msgspec.to_builtins(self, builtin_types=(Decimal,), enc_hook=_enc_hook)

    def encode(self) -> bytes:
        return _encoder.encode(self)


class _Unknown(_Record, tag="\x00"):
    """Decoded beside each record so that a payload without ``schema`` is refused, not read as the
    record (msgspec defaults a missing tag when it decodes one tagged type alone)."""


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Decimal):  # Money, Price: as plain decimals
        return Decimal(value)
    raise NotImplementedError(type(value))


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _finish(cls: type) -> type:
    """Derive a record's decoder and its REQUIRED / null-as-default fields from its declaration."""
    required, blank = [], []
    nothing = msgspec.NODEFAULT
    for f in _type_info(cls).fields:
        if not f.required and f.default is nothing and f.default_factory is nothing:  # REQUIRED (UNSET)
            required.append(f.name)
        elif not f.required and isinstance(f.type, msgspec.inspect.UnionType) and any(
                isinstance(t, msgspec.inspect.NoneType) for t in f.type.types):
            default = f.default_factory() if f.default is nothing else f.default
            if default is not None:
                blank.append((f.name, type(default) if default == type(default)() else lambda d=default: d))
    cls._required = tuple(required)
    cls._blank = tuple(blank)
    cls._labels = _label_plan(_type_info(cls))
    cls._decoder = msgspec.json.Decoder(cls | _Unknown, dec_hook=_dec_hook)
    return cls


class WorkloadShare(Struct, gc=False):
    workload: Name
    team: OptionalLabel = ""
    allow_spot: bool | None = False
    utilization_pct: Percent | None = None  # its measured share of the GPU's work (per-process), when known

    def __post_init__(self) -> None:
        if self.team is None:
            self.team = ""
        if self.allow_spot is None:
            self.allow_spot = False


class GpuReading(Struct, gc=False):
    uuid: Label
    index: NonNegative
    model: Label
    gpu_class: Label
    utilization_pct: Percent
    memory_used_mib: NonNegative
    memory_total_mib: NonNegative
    power_mw: NonNegative | None = None  # of the physical GPU (a MIG instance carries its GPU's)
    workloads: list[WorkloadShare] | None = []  # empty: the GPU is idle
    energy_mj: NonNegative | None = None  # of the physical GPU over the interval, from an energy counter, when known
    parent_uuid: OptionalLabel = ""  # a MIG instance: the physical GPU's UUID ("" for a whole GPU)
    mig_profile: OptionalLabel = ""  # a MIG instance: its GPU instance profile, e.g. "3g.40gb"
    compute_fraction: Fraction = 1.0  # a MIG instance: its share of the GPU's compute, slices / 7 on A100/H100

    def __post_init__(self) -> None:
        if self.workloads is None:
            self.workloads = []
        if self.parent_uuid is None:
            self.parent_uuid = ""
        if self.mig_profile is None:
            self.mig_profile = ""


class GpuSample(_Record, tag="gpu_sample.v1"):
    """One tick of one node (or cloud instance): all its GPUs. Key: the resource."""

    SCHEMA: ClassVar[str] = "gpu_sample.v1"
    event_id: Label
    ts_ms: Positive  # end of the sampled interval, UTC epoch milliseconds
    interval_ms: Positive
    resource: Label  # host name, or the cloud instance id
    environment: Environment
    source: Label  # nvml | dcgm | sim
    gpus: Annotated[list[GpuReading], Meta(min_length=1, max_length=64)]  # at most 64 per resource
    provider: OptionalLabel = ""
    region: OptionalLabel = ""
    instance_type: OptionalLabel = ""
    purchase_option: OptionalLabel = ""

    def _received(self) -> str | None:
        parents = {g.parent_uuid for g in self.gpus if g.parent_uuid}
        if parents and (twice := parents & {g.uuid for g in self.gpus if not g.parent_uuid}):
            return f"GPU {min(twice)!r} is read whole and as MIG instances in one sample"
        return None


class CostWindow(_Record, tag="cost_window.v1"):
    """Usage and cost of one workload on one resource in one event-time window. Key: workload."""

    SCHEMA: ClassVar[str] = "cost_window.v1"
    event_id: Label
    workload: Label
    team: OptionalLabel = ""
    allow_spot: bool | None = False
    environment: Environment = REQUIRED
    gpu_class: Label = REQUIRED
    resource: Label = REQUIRED
    window_start_ms: NonNegative = REQUIRED
    window_ms: NonNegative = REQUIRED
    allocated_gpu_ms: NonNegative = REQUIRED
    busy_gpu_ms: NonNegative = REQUIRED
    metered_gpu_ms: NonNegative = REQUIRED
    energy_mj: NonNegative = REQUIRED
    sample_count: NonNegative = REQUIRED
    first_ms: NonNegative = REQUIRED
    last_ms: NonNegative = REQUIRED
    cost_usd: Money = REQUIRED
    basis: Label = "estimated"  # estimated (live) | billed
    provider: OptionalLabel = ""
    instance_type: OptionalLabel = ""
    purchase_option: OptionalLabel = ""

    @staticmethod
    def make_id(resource: str, workload: str, environment: str, gpu_class: str, window_start_ms: int) -> str:
        return f"{resource}|{workload}|{environment}|{gpu_class}|{window_start_ms}"


MAX_OPTIONS = 64  # rows of a decision's options table


class DecisionOption(Struct, gc=False):
    """One row of a decision's options table: an option over the horizon and what it costs."""

    label: Label  # for a person: "commit 1 x aws us-east-1 p5.48xlarge (reserved)"
    option: Label  # stay, on_demand, commitment, buy
    upfront_usd: Money  # at month 0: purchases and one-time move costs
    monthly_usd: Money  # at the end of every month 1..horizon
    total_usd: Money  # over the horizon, undiscounted
    npv_usd: Money  # present value at the decision's discount rate
    quantity: NonNegative | None = None  # whole units committed or bought (None: staying, moving on demand)
    unit: OptionalLabel = ""  # what a unit is: an instance type, "<profile> node"
    term_months: NonNegative | None = None  # a commitment's term, when known
    breakeven_month: NonNegative | None = None  # first month its cumulative cost is at most staying's

    def __post_init__(self) -> None:
        if self.unit is None:
            self.unit = ""


class BreakevenDecision(_Record, tag="decision.v1"):
    """A crossing that held for its kind's evidence horizon: move (or stay again); or, with kind
    ``trending_repatriation``, the platform notice that half a purchase's horizon has passed. Key: workload."""

    SCHEMA: ClassVar[str] = "decision.v1"
    event_id: Label
    workload: Label
    team: OptionalLabel = ""
    from_env: Environment = REQUIRED
    to_env: Environment = REQUIRED
    kind: Label = REQUIRED
    gpu_class: Label = REQUIRED
    window_start_ms: NonNegative = REQUIRED
    window_end_ms: NonNegative = REQUIRED
    current_usd_per_busy_gpu_hour: Money | None = None  # None: no rate where it runs now
    alternative_usd_per_busy_gpu_hour: Money | None = None
    utilization: Money = REQUIRED
    monthly_savings_usd: Money = REQUIRED
    confidence: Money = REQUIRED
    alternative_label: Label = REQUIRED
    gpus_needed: NonNegative = REQUIRED
    reason: str = REQUIRED  # free text, cut at 2000 characters
    basis: OptionalLabel = "estimated"
    payback_months: Money | None = None  # buy capacity: capex / (monthly cloud - monthly on-prem opex)
    # the spread of the windows in the evidence (25th / 75th percentile, holding the point estimate);
    # None in events written before ranges existed
    monthly_savings_low_usd: Money | None = None
    monthly_savings_high_usd: Money | None = None
    evidence_hours: Money | None = None  # hours of consecutive windows the crossing held
    nodes_needed: NonNegative | None = None  # buy capacity: whole nodes of the owned profile (gpus_needed GPUs)
    instances_needed: NonNegative | None = None  # migration: whole instances of the chosen instance type
    # every option for the workload over a horizon, from the evidence's hours repeated (costmodel.options);
    # staying first; empty in events written before options existed, and for withdrawals and notices
    options: Annotated[list[DecisionOption], Meta(max_length=MAX_OPTIONS)] = []
    horizon_months: NonNegative | None = None
    discount_rate_pct: Money | None = None

    def _received(self) -> str | None:
        self.reason = self.reason[:2000]
        if not self.basis:
            self.basis = "estimated"
        if self.options and (self.horizon_months is None or self.discount_rate_pct is None):
            return "an options table needs its horizon_months and discount_rate_pct"
        return None


ANOMALY_KINDS = ("held_idle", "usd_per_busy_gpu_hour", "spend_rate", "silent")  # anomalies/detect.py
ANOMALY_STATES = ("open", "closed")


class Anomaly(_Record, tag="anomaly.v1"):
    """An anomaly episode opened or ended (anomalies/detect.py).  Key: its subject.

    ``episode_id`` (kind, subject, start) names the episode in both its records; the open and the
    closed record each have their own ``event_id``.  Amounts are exact; ``baseline`` and
    ``observed`` are in ``unit``.
    """

    SCHEMA: ClassVar[str] = "anomaly.v1"
    event_id: Label
    episode_id: Label = REQUIRED
    kind: Literal[ANOMALY_KINDS] = REQUIRED
    state: Literal[ANOMALY_STATES] = REQUIRED
    subject: Label = REQUIRED  # the workload ("workload|gpu class"), the team, or the host
    start_ms: NonNegative = REQUIRED  # when it began (event time)
    detected_ms: NonNegative = REQUIRED  # the end of the window that showed it
    score: Money = REQUIRED  # spreads above the baseline (held idle, silent: how many times the limit)
    baseline: Money = REQUIRED  # expected value, in ``unit``
    observed: Money = REQUIRED
    unit: Label = REQUIRED  # usd_per_hour, usd_per_busy_gpu_hour, utilization_pct, minutes
    usd_so_far: Money = REQUIRED  # the excess (held idle: the cost; silent: what went unaccounted) so far
    usd_per_day_at_stake: Money = REQUIRED  # a day of it at its latest rate
    reason: str = REQUIRED  # for a person, cut at 1000 characters
    ended_ms: NonNegative | None = None  # closed: the end of its last anomalous window
    workload: OptionalLabel = ""
    team: OptionalLabel = ""
    gpu_class: OptionalLabel = ""
    environment: OptionalLabel = ""
    resource: OptionalLabel = ""

    @staticmethod
    def make_episode_id(kind: str, subject: str, start_ms: int) -> str:
        return f"{kind}|{subject}|{start_ms}"

    def _received(self) -> str | None:
        self.reason = self.reason[:1000]
        if self.state == "closed" and self.ended_ms is None:
            return "a closed anomaly needs its ended_ms"
        return None


class InstanceEvent(_Record, tag="instance_event.v1"):
    """A cloud GPU instance changed state (or got a spot interruption warning). Key: instance id."""

    SCHEMA: ClassVar[str] = "instance_event.v1"
    event_id: Label
    ts_ms: Positive
    provider: Label
    region: Label
    account: OptionalLabel = ""
    instance_id: Label = REQUIRED
    instance_type: Label = REQUIRED
    state: Literal[INSTANCE_STATES] = REQUIRED
    purchase_option: Label = REQUIRED
    workload: Label = REQUIRED
    team: OptionalLabel = ""


class LiveSpend(_Record, tag="live_spend.v1"):
    """What a cloud instance costs from now on, emitted on each of its state changes. Key: instance id.

    The live side of the cloud cost: seconds after a start, a spot warning or a stop, while its
    cost windows are still open.  ``usd_per_hour`` is the instance's live price in force at
    ``ts_ms`` (0 once stopped); a reclaiming spot instance stops costing at ``ends_at_ms``.
    """

    SCHEMA: ClassVar[str] = "live_spend.v1"
    event_id: Label
    ts_ms: Positive
    instance_id: Label
    provider: Label
    region: Label
    instance_type: Label
    purchase_option: Label
    workload: Label
    team: OptionalLabel = ""
    gpu_class: Label = REQUIRED
    gpus: Positive = REQUIRED
    state: Literal[LIVE_STATES] = REQUIRED
    usd_per_hour: Price = REQUIRED
    running_since_ms: Positive | None = None
    ends_at_ms: Positive | None = None


class PriceUpdate(_Record, tag="price.v1"):
    """The price of an instance type under one purchase option. Key: provider|region|instance_type."""

    SCHEMA: ClassVar[str] = "price.v1"
    event_id: Label
    ts_ms: Positive
    provider: Label
    region: Label
    instance_type: Label
    purchase_option: Label
    usd_per_hour: Price
    source: Label


class CostLine(_Record, tag="cost_line.v1"):
    """A billed cost line (FOCUS, CUR, billing export). Key: the billed resource id.

    ``export_version`` identifies one delivery of a billing period's data (a CUR/FOCUS export
    execution, one ingest run); a newer version of the same (source, account, period) replaces the
    lines of older ones: a restated period never adds to itself.
    """

    SCHEMA: ClassVar[str] = "cost_line.v1"
    event_id: Label
    provider: Label  # aws, gcp, azure, oracle, ...
    provider_name: OptionalLabel = ""  # as the bill names it
    billing_account: OptionalLabel = ""
    billing_period_start_ms: NonNegative = REQUIRED
    resource_id: str | None = ""  # cut at 2048 characters
    charge_period_start_ms: NonNegative = REQUIRED
    charge_period_end_ms: NonNegative = REQUIRED
    charge_category: OptionalLabel = ""
    billed_cost_usd: Money = REQUIRED
    effective_cost_usd: Money = REQUIRED
    service: OptionalLabel = ""
    sku: OptionalLabel = ""
    region: OptionalLabel = ""
    instance_type: OptionalLabel = ""  # the GPU instance type when the catalog recognizes one, else ""
    gpu_class: OptionalLabel = ""
    gpus: NonNegative | None = 0
    source: Label = REQUIRED  # focus-file, aws-cur, aws-ce, gcp-export, ...
    export_version: Label = REQUIRED
    tags: dict[str, str] | None = {}
    extra: dict[str, str] | None = {}  # x_ columns, kept as text

    def _received(self) -> None:
        self.resource_id = self.resource_id[:2048]


WATERMARK_SCHEMA = "watermark.v1"


def is_watermark(payload: bytes | None) -> bool:
    """Cheap test before full decoding: our encoder writes the schema first."""
    return payload is not None and b'"schema":"watermark.v1"' in payload[:40]


class Watermark(_Record, tag=WATERMARK_SCHEMA):
    """Event-time progress of one upstream source: nothing before ``ts_ms`` is still to come from it.

    Sent to every partition of a topic.  On the input topics, collectors and the simulator send
    them so that partitions without traffic still advance; on ``cost-windows`` the usage agent
    sends one per input partition it owns, with the owned GPU capacity that sat idle in the
    windows it closed (``idle``: [window_start_ms, gpu_class, resource, idle_gpu_ms]), the cloud
    windows it closed (``cloud``: [window_start_ms, workload, gpu_class, resource, allocated_gpu_ms,
    cost in micro-dollars]: every decision partition sees every claim on idle owned capacity, so each
    promises it once, the same way), what every workload window cost (``spend``, for the team spend rates,
    judged on the team's own partition) and whether that partition still had input to read (``pending``:
    then the decision agent waits for it however long it is silent).
    """

    SCHEMA: ClassVar[str] = WATERMARK_SCHEMA
    event_id: Label
    source: Label
    ts_ms: NonNegative
    idle: list[tuple[int, str, str, NonNegative]] | None = []
    pending: bool = False
    cloud: list[tuple[int, str, str, str, NonNegative, NonNegative]] | None = []
    # every workload window closed, for the team spend rates: [window_start_ms, team, resource, workload, window_ms,
    # cost in micro-dollars]
    spend: list[tuple[int, str, str, str, NonNegative, NonNegative]] | None = []


class DeadLetter(_Record, tag="dead_letter.v1"):
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
    def of(cls, *, topic: str, partition: int, offset: int, reason: str, payload: bytes | None, ts_ms: int) -> DeadLetter:
        text = (payload or b"")[:65536].decode("utf-8", errors="replace")
        return cls(f"{topic}|{partition}|{offset}", ts_ms, topic, partition, offset, reason[:1000], text)




# -- reasons: what was wrong, where, with what value, against which declared constraint ----------------

_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_msgspec_types = msgspec.inspect
_CHOICES = (ENVIRONMENTS, INSTANCE_STATES, LIVE_STATES)


def _explain(cls: type, payload: bytes | str, exc: msgspec.DecodeError) -> str:
    """The dead-letter reason for a payload ``cls`` refused, in the words of the declared contract."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad:
        return f"not JSON: {bad}"
    except RecursionError:
        return "not JSON: nested too deeply"
    if not isinstance(exc, msgspec.ValidationError):
        return f"not JSON: {exc}"  # NaN, Infinity: Python's json reads them, JSON has no such numbers
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    schema = data.get("schema")
    if schema != cls.SCHEMA:
        return f"unsupported schema {schema!r:.60}, expected {cls.SCHEMA!r}"
    message, path_text = _AT.match(str(exc)).groups()  # type: ignore[union-attr]
    path = [key if key else int(index) for key, index in _STEP.findall(path_text or "")]
    if message.startswith("Object missing required field `"):
        return f"{_where(cls, path)}: missing field '{message.split('`')[1]}'"
    if path and isinstance(path[-1], str):
        try:
            declared = _declared(_type_info(cls), path)
            value = _lookup(data, path)
        except (LookupError, TypeError, StopIteration):  # a key given twice, read differently by the two parsers
            return f"{_where(cls, path[:-1])}: '{path[-1]}': {message}"
        return f"{_where(cls, path[:-1])}: '{path[-1]}' {_expectation(declared, value, message)}"
    if message.startswith("Expected `object`"):
        return f"{_where(cls, path)} must be an object"
    return f"{_where(cls, path)}: {message}"  # a check across fields (``__post_init__``)


@functools.cache
def _type_info(cls: type) -> Any:
    """msgspec's description of a record type (built once: it costs a third of a worker's time on bad input)."""
    return msgspec.inspect.type_info(cls)


def _label_plan(t: Any) -> tuple:
    """(label field names, ((list field name, plan of its items), ...)) of a struct type."""
    labels, lists = [], []
    for f in t.fields:
        ft = _unwrap(f.type)
        if isinstance(ft, _msgspec_types.StrType) and ft.max_length == MAX_LABEL_LEN:
            labels.append(f.name)
        elif isinstance(ft, _msgspec_types.ListType) and isinstance(ft.item_type, _msgspec_types.StructType):
            lists.append((f.name, _label_plan(ft.item_type)))
    return tuple(labels), tuple(lists)


def _control_characters(record: Any, plan: tuple, path: tuple = ()) -> list | None:
    """The path to the first label holding a control character, or None."""
    labels, lists = plan
    for name in labels:
        value = getattr(record, name)
        if value and _CONTROL.search(value):
            return [*path, name]
    for name, item_plan in lists:
        for i, item in enumerate(getattr(record, name) or ()):
            found = _control_characters(item, item_plan, (*path, name, i))
            if found:
                return found
    return None


INVALID_LABEL = "invalid-label:"


def safe_label(text: str) -> str:
    """``text`` when it is a valid label, else ``invalid-label:`` and 12 hex digits of its SHA-256
    (the same bad name always maps to the same label, so its costs still add up under one name)."""
    if len(text) <= MAX_LABEL_LEN and not _CONTROL.search(text):
        return text
    return INVALID_LABEL + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _replace_labels(raw: dict, plan: tuple, path: str = "") -> list[str]:
    """Replace the invalid labels of a decoded JSON object in place; 'path (why)' for each."""
    labels, lists = plan
    replaced = []
    for name in labels:
        value = raw.get(name)
        if isinstance(value, str) and (label := safe_label(value)) != value:
            why = "control characters" if _CONTROL.search(value) else f"{len(value)} characters"
            replaced.append(f"{path}{name} ({why}) -> {label}")
            raw[name] = label
    for name, item_plan in lists:
        items = raw.get(name)
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, dict):
                replaced += _replace_labels(item, item_plan, f"{path}{name}[{i}].")
    return replaced


def _where(cls: type, path: list) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return f"{cls.SCHEMA}: {text}" if text else cls.SCHEMA


def _lookup(data: Any, path: list) -> Any:
    for step in path:
        data = data[step]
    return data


def _declared(t: Any, path: list) -> Any:
    """The declared type at ``path`` inside type ``t``."""
    for step in path:
        t = _unwrap(t)
        if isinstance(step, int):
            t = t.item_type
        else:
            t = next(f.type for f in t.fields if f.name == step)
    return t


def _unwrap(t: Any) -> Any:
    """The one type of ``X | None`` that is not None."""
    if isinstance(t, _msgspec_types.UnionType):
        others = [u for u in t.types if not isinstance(u, _msgspec_types.NoneType)]
        if len(others) == 1:
            return others[0]
    return t


def _bound(x: float) -> str:
    return f"{x:g}"


def _expectation(t: Any, value: Any, message: str) -> str:
    """'must be ..., got ...' for ``value`` against the declared type ``t``."""
    t = _unwrap(t)
    ti = _msgspec_types
    if isinstance(t, ti.IntType):
        if type(value) is not int:
            return f"must be an integer, got {value!r:.40}"
        return f"must be >= {t.ge}, got {value}"
    if isinstance(t, ti.FloatType):
        if type(value) not in (int, float):
            return f"must be a number, got {value!r:.40}"
        if t.gt is not None and value <= t.gt:
            return f"must be > {_bound(t.gt)}, got {value}"
        return f"must be in [{_bound(t.ge if t.ge is not None else t.gt)}, {_bound(t.le)}], got {value}"
    if isinstance(t, ti.StrType):
        if type(value) is not str:
            return f"must be a string, got {type(value).__name__}"
        if t.max_length is not None and len(value) > t.max_length:
            return f"is longer than {t.max_length} characters"
        if t.min_length and len(value) < t.min_length:
            return "must not be empty"
        return "contains control characters"
    if isinstance(t, ti.LiteralType):
        choices = next((c for c in _CHOICES if set(c) == set(t.values)), t.values)  # in their declared order
        return f"must be one of {', '.join(map(str, choices))}, got {value!r:.40}"
    if isinstance(t, ti.BoolType):
        return f"must be true or false, got {value!r:.40}"
    if isinstance(t, ti.ListType):
        if type(value) is not list:
            return "must be a list"
        if t.min_length and len(value) < t.min_length:
            return "must be a non-empty list"
        return f"has {len(value)} entries, at most {t.max_length}"
    if isinstance(t, ti.DictType):
        return "must be an object of strings"
    if isinstance(t, ti.CustomType) and t.cls in (Money, Price):
        return _money_problem(t.cls, value) or message
    return f"is not valid: {message}"


RECORDS = (GpuSample, CostWindow, BreakevenDecision, Anomaly, InstanceEvent, LiveSpend, PriceUpdate, CostLine, Watermark,
           DeadLetter)
for _cls in RECORDS:
    _finish(_cls)
