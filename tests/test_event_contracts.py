"""The declared event contracts (msgspec Structs) accept what the hand-written checks accepted.

The hand-written decoder they replaced is read from the commit before the change (``git show``) and
run beside them on payloads hypothesis breaks in every field, nested GPUs and workload shares
included: both accept with equal records, or both refuse.  The few places where the old checks
were lax on purpose-less junk are listed in ``TIGHTENED``; there the new contract refuses, with a
reason naming the field, what the old one let through.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types
from decimal import Decimal as D
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridspend.contracts import events
from hybridspend.contracts.events import (
    BreakevenDecision,
    DecisionOption,
    CostLine,
    CostWindow,
    DeadLetter,
    EventError,
    GpuReading,
    GpuSample,
    InstanceEvent,
    LiveSpend,
    PriceUpdate,
    Watermark,
    WorkloadShare,
)

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "d0d3846a350ff1d0589243b14b1d54363f7f367b"  # the last commit with the hand-written checks


def _hand_written():
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:contracts/events.py"], cwd=ROOT, capture_output=True,
                                check=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git cannot show commit {BEFORE} here (no history): nothing to compare with")
    module = types.ModuleType("events_hand_written")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE}:contracts/events.py", "exec"), module.__dict__)  # noqa: S102 (our own code)
    return module


@pytest.fixture(scope="module")
def old():
    return _hand_written()


EXAMPLES = {
    "GpuSample": GpuSample("e1", 1_790_000_000_000, 60_000, "node-1", "onprem", "nvml", [
        GpuReading("GPU-0", 0, "NVIDIA A100", "A100", 50.0, 10, 80, 250_000,
                   [WorkloadShare("team-a/train", "ml", True, 30.0), WorkloadShare("b", "")], energy_mj=5),
        GpuReading("MIG-1", 1, "NVIDIA A100", "A100", 12.5, 1, 2, None, [], None, "GPU-1", "3g.40gb", 3 / 7)],
        provider="", region="eu"),
    "CostWindow": CostWindow("w|1", "train", "ml", False, "cloud", "A100", "i-1", 900_000, 900_000, 8, 7, 6, 5, 4, 3,
                             2, D("1.234567"), "billed", "aws", "p4d.24xlarge", "spot"),
    "BreakevenDecision": BreakevenDecision(
        "d1", "train", "ml", "onprem", "cloud", "migrate_to_cloud", "A100", 0, 1, D("5.75"), None, D("0.2"),
        D("401.5"), D("1"), "aws p4d", 8, "idle", "estimated", D("12"), D("300"), D("500"), D("168"), 1, 2,
        [DecisionOption("stay (onprem, as it runs)", "stay", D(0), D("6424"), D("231264"), D("205000"))], 36, D(8)),
    "InstanceEvent": InstanceEvent("i1", 5, "aws", "us-east-1", "123", "i-1", "p4d.24xlarge", "running", "spot", "w",
                                   "t"),
    "LiveSpend": LiveSpend("l1", 5, "i-1", "aws", "us-east-1", "p4d.24xlarge", "spot", "w", "t", "A100", 8, "running",
                           D("32.77"), 4, None),
    "PriceUpdate": PriceUpdate("p1", 5, "aws", "us-east-1", "p4d.24xlarge", "on_demand", D("32.77"), "pricing-api"),
    "CostLine": CostLine("c1", "aws", "AWS", "123", 0, "arn:x", 3_600_000, 7_200_000, "Usage", D("1.5"), D("1.25"),
                         "ec2", "sku", "us-east-1", "p4d.24xlarge", "A100", 8, "aws-cur", "v1", {"team": "ml"},
                         {"x_a": "1"}),
    "Watermark": Watermark("m1", "sim", 5, [(0, "A100", "n1", 3)], True, [(0, "embed", "A100", "i-1", 3, 4_440_000)],
                           [(0, "search", "i-1", "embed", 3_600_000, 4_440_000)]),
    "DeadLetter": DeadLetter("t|0|1", 5, "t", 0, 1, "bad", "{}"),
}

# where the hand-written checks let junk through that the declared contract refuses (or, the last
# one, refused what it now reads with the default), as (record, field): every difference must be one
TIGHTENED = {
    ("WorkloadShare", "allow_spot"), ("CostWindow", "allow_spot"),  # anything but true read as false
    ("GpuReading", "workloads"), ("Watermark", "idle"),  # false, 0, "" or {} read as empty
    ("CostLine", "tags"), ("CostLine", "extra"),  # false, 0, "" or [] read as empty
    ("BreakevenDecision", "reason"), ("CostLine", "resource_id"),  # any value turned into its text
    ("CostWindow", "basis"),  # was required on the wire although it has a default: now read as "estimated"
    ("DeadLetter", "*"),  # nothing was checked (and a missing field raised KeyError, not EventError)
    # fields added after the hand-written checks (which ignored them): checked now
    ("BreakevenDecision", "options"), ("BreakevenDecision", "horizon_months"), ("BreakevenDecision", "discount_rate_pct"),
    ("Watermark", "cloud"), ("Watermark", "spend"),
}
# amounts past what the database stores (1e18 and more) or with more than 30 decimal places (issue 28)
TIGHTENED |= {(record.__name__, f.name) for record in (CostWindow, BreakevenDecision, LiveSpend, PriceUpdate, CostLine)
              for f in msgspec.structs.fields(record) if "Money" in str(f.type) or "Price" in str(f.type)}

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["", "x", "1.5", "NaN", "-2",
                                                                                        "onprem", "a\nb", "x" * 254]),
                    st.text(max_size=8))
_junk = st.one_of(_scalar, st.lists(_scalar, max_size=3), st.dictionaries(st.text(max_size=5), _scalar, max_size=2),
                  st.just([0, "A100", "n1", 1]), st.just([[0, "A100", "n1", -1]]), st.just({"k": "v"}),
                  st.just([{"workload": "w"}]), st.just([{"workload": ""}]), st.just([{"workload": "w", "team": 5}]))


@st.composite
def _broken(draw, name: str) -> tuple[dict, list]:
    """A valid payload of record ``name`` with up to three things changed; and where they were changed."""
    d = json.loads(EXAMPLES[name].encode())
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        target, where = d, name
        if name == "GpuSample" and type(d.get("gpus")) is list and d["gpus"] and draw(st.booleans()):
            i = draw(st.integers(0, len(d["gpus"]) - 1))
            target, where = d["gpus"][i], "GpuReading"
            if type(target) is dict and type(target.get("workloads")) is list and target["workloads"] \
                    and draw(st.booleans()):
                j = draw(st.integers(0, len(target["workloads"]) - 1))
                target, where = target["workloads"][j], "WorkloadShare"
        if type(target) is not dict:
            continue
        key = draw(st.sampled_from(sorted(target) + ["unknown"]))
        if key != "schema" or draw(st.integers(0, 9)) == 0:
            if draw(st.integers(0, 3)) == 0:
                target.pop(key, None)
            else:
                target[key] = copy.deepcopy(draw(_junk))  # st.just gives the same object every time
            changed.append((where, key))
    return d, changed


def _outcome(module, name: str, payload: bytes):
    # the old DeadLetter checked nothing: a missing field raised KeyError, a wrong type TypeError
    refusals = (module.EventError, KeyError, TypeError) if name == "DeadLetter" else (module.EventError,)
    try:
        record = getattr(module, name).decode(payload)
    except refusals:
        return "refused"
    return json.loads(json.dumps(record.to_dict(), default=str))


def _compare(old, name: str, d: dict, changed: list) -> None:
    payload = json.dumps(d).encode()
    before, after = _outcome(old, name, payload), _outcome(events, name, payload)
    if isinstance(before, dict) and isinstance(after, dict):  # fields added since are compared by TIGHTENED alone
        after = {k: v for k, v in after.items() if k in before}
    if before == after:
        return
    tightened = [c for c in changed if c in TIGHTENED or (c[0], "*") in TIGHTENED]
    assert tightened, f"{name}: the hand-written checks gave {before!r:.300}, the contract {after!r:.300} " \
                      f"for {payload!r:.600}"
    if tightened == [("CostWindow", "basis")]:
        assert before == "refused" and after["basis"] == "estimated"
        return
    assert after == "refused" or ("DeadLetter", "*") in TIGHTENED, (name, payload)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_contract_accepts_exactly_what_the_hand_written_checks_accepted(old, name, data):
    d, changed = data.draw(_broken(name))
    _compare(old, name, d, changed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                          max_leaves=10))
def test_any_json_at_all_is_refused_or_read_alike(old, value):
    payload = json.dumps(value).encode()
    for name in ("GpuSample", "CostWindow", "Watermark"):
        assert (_outcome(old, name, payload) == "refused") == (_outcome(events, name, payload) == "refused")


def test_the_valid_examples_round_trip_and_equal_what_the_hand_written_decoder_read(old):
    for name, record in EXAMPLES.items():
        assert type(record).decode(record.encode()) == record
        before, after = _outcome(old, name, record.encode()), _outcome(events, name, record.encode())
        assert before == {k: v for k, v in after.items() if k in before}  # fields added since: not read before


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.pop("ts_ms"), "gpu_sample.v1: missing field 'ts_ms'"),
    (lambda d: d.update(ts_ms="soon"), "gpu_sample.v1: 'ts_ms' must be an integer, got 'soon'"),
    (lambda d: d.update(interval_ms=0), "gpu_sample.v1: 'interval_ms' must be >= 1, got 0"),
    (lambda d: d.update(environment="moon"), "gpu_sample.v1: 'environment' must be one of onprem, cloud, got 'moon'"),
    (lambda d: d["gpus"][1].update(utilization_pct=250),
     "gpu_sample.v1: gpus[1]: 'utilization_pct' must be in [0, 100], got 250"),
    (lambda d: d["gpus"][1].update(compute_fraction=0), "gpu_sample.v1: gpus[1]: 'compute_fraction' must be > 0, got 0"),
    (lambda d: d["gpus"][0]["workloads"][1].update(team=7),
     "gpu_sample.v1: gpus[0].workloads[1]: 'team' must be a string, got int"),
    (lambda d: d["gpus"][0]["workloads"][0].update(workload=""),
     "gpu_sample.v1: gpus[0].workloads[0]: 'workload' must not be empty"),
    (lambda d: d["gpus"].__setitem__(0, 3), "gpu_sample.v1: gpus[0] must be an object"),
    (lambda d: d.update(gpus=[]), "gpu_sample.v1: 'gpus' must be a non-empty list"),
    (lambda d: d.update(gpus=d["gpus"] * 33), "gpu_sample.v1: 'gpus' has 66 entries, at most 64"),
    (lambda d: d.update(resource="a\x1b[31m"), "gpu_sample.v1: 'resource' contains control characters"),
    (lambda d: d["gpus"][1].update(parent_uuid="GPU-0"),
     "gpu_sample.v1: GPU 'GPU-0' is read whole and as MIG instances in one sample"),
    (lambda d: d.update(schema="gpu_sample.v2"), "unsupported schema 'gpu_sample.v2', expected 'gpu_sample.v1'"),
    (lambda d: d.pop("schema"), "unsupported schema None, expected 'gpu_sample.v1'"),
    (lambda d: d.update(schema="\x00"), "unsupported schema '\\x00', expected 'gpu_sample.v1'"),
])
def test_a_refused_sample_names_the_field_the_value_and_what_was_expected(change, reason):
    d = json.loads(EXAMPLES["GpuSample"].encode())
    change(d)
    with pytest.raises(EventError) as refused:
        GpuSample.decode(json.dumps(d))
    assert str(refused.value) == reason


def test_amounts_are_exact_decimal_strings_and_never_floats():
    d = json.loads(EXAMPLES["PriceUpdate"].encode())
    assert PriceUpdate.decode(json.dumps(d)).usd_per_hour == D("32.77")
    for value, reason in ((32.77, "must be a decimal string, got 32.77"), ("-1", "must be >= 0, got -1"),
                          ("NaN", "must be finite, got 'NaN'"), ("lots", "is not a decimal number: 'lots'")):
        with pytest.raises(EventError, match=f"price.v1: 'usd_per_hour' {reason}"):
            PriceUpdate.decode(json.dumps(dict(d, usd_per_hour=value)))


def test_non_json_numbers_are_not_json():
    # Python's json reads NaN and Infinity; JSON has no such numbers, and no producer of ours writes them
    d = json.loads(EXAMPLES["GpuSample"].encode())
    d["unknown"] = float("nan")
    with pytest.raises(EventError, match="^not JSON: "):
        GpuSample.decode(json.dumps(d))


def test_the_tightened_junk_is_refused_with_the_field_named():
    d = json.loads(EXAMPLES["GpuSample"].encode())
    d["gpus"][0]["workloads"][0]["allow_spot"] = "yes"
    with pytest.raises(EventError, match=r"gpus\[0\].workloads\[0\]: 'allow_spot' must be true or false, got 'yes'"):
        GpuSample.decode(json.dumps(d))
    d = json.loads(EXAMPLES["GpuSample"].encode())
    d["gpus"][0]["workloads"] = 0
    with pytest.raises(EventError, match=r"gpus\[0\]: 'workloads' must be a list"):
        GpuSample.decode(json.dumps(d))


def test_a_hostile_workload_label_is_replaced_and_the_sample_kept():
    from hybridspend.contracts.events import EventError, GpuReading, GpuSample, WorkloadShare

    long_name, control = "w" * 300, "train\x1b[31m"
    sample = GpuSample("e1", 60_000, 60_000, "node-1", "onprem", "nvml", [
        GpuReading("GPU-0", 0, "A100", "A100", 50.0, 1, 2, 300_000, [WorkloadShare(long_name, "ml")]),
        GpuReading("GPU-1", 1, "A100", "A100", 40.0, 1, 2, 300_000, [WorkloadShare(control, "ml")]),
    ])
    payload = sample.encode()  # encoding does not check: a collector of another version may send this
    with pytest.raises(EventError):
        GpuSample.decode(payload)
    kept, replaced = GpuSample.decode_replacing_labels(payload)
    names = [g.workloads[0].workload for g in kept.gpus]
    assert all(n.startswith("invalid-label:") and len(n) == len("invalid-label:") + 12 for n in names)
    assert names[0] != names[1]  # the hash of each name: distinct names stay distinct
    assert GpuSample.decode_replacing_labels(payload)[0] == kept  # and the same name maps the same way
    assert replaced == [f"gpus[0].workloads[0].workload (300 characters) -> {names[0]}",
                        f"gpus[1].workloads[0].workload (control characters) -> {names[1]}"]
    assert [g.utilization_pct for g in kept.gpus] == [50.0, 40.0]  # every GPU and its costs kept
    with pytest.raises(EventError, match="utilization_pct"):  # anything else wrong is still refused
        GpuSample.decode_replacing_labels(payload.replace(b"50.0", b"150.0"))



def test_the_sink_stores_a_sample_with_a_hostile_label_under_the_replaced_name():
    from types import SimpleNamespace

    from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare
    from hybridspend.contracts.topics import Topics
    from hybridspend.storage.sink import Sink

    topics = Topics("t.", 1)
    sample = GpuSample("e1", 60_000, 60_000, "node-1", "onprem", "nvml", [
        GpuReading("GPU-0", 0, "A100", "A100", 50.0, 1, 2, 300_000, [WorkloadShare("w\x1b[2J", "ml")])])
    record = SimpleNamespace(topic=topics.gpu_samples, partition=0, offset=7, value=sample.encode())
    batch = Sink(None, "unused", topics).decode([record])
    (row,) = batch.rows["gpu_samples"]
    (workloads,) = [v for v in row if isinstance(v, list)]
    assert len(workloads) == 1 and workloads[0].startswith("invalid-label:")  # stored, renamed
    assert not batch.rows["dead_letters"]  # the worker keeps the original once; the sink adds none
