"""Splitting physical GPUs among MIG instances, shared (time-sliced) workloads and idle, exactly."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal as D
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridspend.contracts.config import load_config
from hybridspend.contracts.events import EventError, GpuReading, GpuSample, WorkloadShare
from hybridspend.costmodel.money import micro
from hybridspend.costmodel.sharing import (
    Charge,
    GpuSlice,
    SharingError,
    apportion,
    apportion_micro,
    mig_compute_fraction,
    split_gpu,
)
from hybridspend.streams.processing import ResourceState, UsageProcessor

EXAMPLE = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "fleet.yaml"
HOUR_MS = 3_600_000
T0_MS = 1_790_000_000_000 - 1_790_000_000_000 % HOUR_MS


def test_apportion_gives_parts_that_add_up_and_follow_the_weights():
    assert apportion(30_000, [1, 1, 1, 1, 1, 1, 1]) == [4286, 4286, 4286, 4286, 4286, 4285, 4285]  # 30000/7 = 4285.71
    assert apportion(10, [Fraction(3, 7), Fraction(2, 7), Fraction(2, 7)]) == [4, 3, 3]  # quotas 4.29, 2.86, 2.86: floors 4+2+2, the 2 left to the .86s
    with pytest.raises(SharingError):
        apportion(10, [0, 0])


def test_apportion_micro_rounds_rows_so_they_add_up_to_the_rounded_total():
    rows = [D("0.0000014"), D("0.0000014"), D("0.0000014")]  # total 0.0000042 -> 4 micro-dollars
    assert apportion_micro(rows) == [D("0.000002"), D("0.000001"), D("0.000001")]
    assert sum(apportion_micro(rows)) == micro(sum(rows))


@pytest.mark.parametrize("profile, gpu_class, fraction", [
    ("1g.10gb", "A100", Fraction(1, 7)), ("3g.40gb", "A100", Fraction(3, 7)), ("7g.80gb", "H100", Fraction(1)),
    ("1g.12gb+me", "H100", Fraction(1, 7)), ("1c.3g.40gb", "A100", Fraction(3, 7)), ("2g.12gb", "A30", Fraction(1, 2)),
])
def test_mig_profile_gives_its_compute_slices_over_the_gpu_slices(profile, gpu_class, fraction):
    assert mig_compute_fraction(profile, gpu_class) == fraction


def test_mig_instances_get_their_slices_and_the_unpartitioned_remainder_is_idle():
    # one A100 over 70 s with 840 J: a 3g instance (train, 80 %), a 2g instance (nobody), 2 slices not partitioned
    charges = split_gpu(70_000, [
        GpuSlice(Fraction(3, 7), 80.0, (("train", "ml"),)),
        GpuSlice(Fraction(2, 7), 0.0, ()),
    ], energy_mj=840_000)
    assert charges == [
        Charge(("train", "ml"), 30_000, 24_000, 360_000),  # 3/7 of 70 s; 80 % busy; 3/7 of 840 J
        Charge(("idle", ""), 20_000, 0, 240_000),  # the empty 2g instance
        Charge(("idle", ""), 20_000, 0, 240_000),  # the 2 slices no instance holds
    ]


def test_a_time_sliced_gpu_is_split_by_measured_share_else_by_allocation():
    # 60 s at 90 %: a did 60 % of the work, b 30 % -> 2:1
    by_measure = split_gpu(60_000, [GpuSlice(Fraction(1), 90.0, (("a", ""), ("b", "")), (60.0, 30.0))], 3_000)
    assert by_measure == [Charge(("a", ""), 40_000, 36_000, 2_000), Charge(("b", ""), 20_000, 18_000, 1_000)]
    # no per-process figures: each replica holder gets the same share
    by_allocation = split_gpu(60_000, [GpuSlice(Fraction(1), 90.0, (("a", ""), ("b", "")), (None, None))], None)
    assert by_allocation == [Charge(("a", ""), 30_000, 27_000, None), Charge(("b", ""), 30_000, 27_000, None)]


def test_impossible_splits_are_refused():
    with pytest.raises(SharingError, match="more than all of it"):
        split_gpu(1000, [GpuSlice(Fraction(4, 7), 0, ()), GpuSlice(Fraction(4, 7), 0, ())], None)
    with pytest.raises(SharingError, match="whole GPU"):
        split_gpu(1000, [GpuSlice(Fraction(1), 0, ()), GpuSlice(Fraction(1, 7), 0, ())], None)


def test_a_sample_with_over_partitioned_mig_goes_to_the_dead_letter_with_its_reason():
    usage = UsageProcessor(load_config(EXAMPLE, {}))
    gpus = [GpuReading(f"MIG-{i}", 0, "A100", "A100", 0.0, 0, 0, None, [], parent_uuid="GPU-0",
                       mig_profile="4g.40gb", compute_fraction=4 / 7) for i in range(2)]
    with pytest.raises(EventError, match="dgx-a100-01: MIG instances add up to 8/7"):
        usage.add(ResourceState(), GpuSample("e", T0_MS + 60_000, 60_000, "dgx-a100-01", "onprem", "t", gpus))


def test_old_gpu_readings_without_the_mig_fields_still_decode():
    old = (b'{"schema":"gpu_sample.v1","event_id":"e","ts_ms":1,"interval_ms":1,"resource":"n","environment":"onprem",'
           b'"source":"nvml","gpus":[{"uuid":"GPU-0","index":0,"model":"A100","gpu_class":"A100",'
           b'"utilization_pct":5,"memory_used_mib":1,"memory_total_mib":2,"power_mw":null,'
           b'"workloads":[{"workload":"w","team":"t"}]}]}')
    (g,) = GpuSample.decode(old).gpus
    assert (g.compute_fraction, g.mig_profile, g.parent_uuid, g.energy_mj) == (1.0, "", "", None)
    assert g.workloads == [WorkloadShare("w", "t", False, None)]
    bad = old.replace(b'"power_mw":null', b'"power_mw":null,"compute_fraction":0')
    with pytest.raises(EventError, match="compute_fraction"):
        GpuSample.decode(bad)


def test_mig_and_measured_share_fields_round_trip():
    reading = GpuReading("MIG-1", 0, "A100", "A100", 50.0, 1, 2, 300_000,
                         [WorkloadShare("w", "t", False, 42.5)], energy_mj=9_000_000, parent_uuid="GPU-0",
                         mig_profile="3g.40gb", compute_fraction=3 / 7)
    sample = GpuSample("e", 1, 1, "n", "onprem", "dcgm", [reading])
    assert GpuSample.decode(sample.encode()) == sample


# -- any mix of whole, MIG and shared GPUs adds up to the physical GPUs' cost ---------------------------------

MIG_LAYOUTS = [(), (7,), (3, 2, 1), (3, 3), (1, 1, 1, 1, 1, 1, 1), (4, 2), (2,), (1,)]  # slices per instance
names = st.sampled_from(["train", "serve", "etl", "notebook"])


@st.composite
def gpu_mix(draw):
    gpus = []
    for index in range(draw(st.integers(1, 8))):
        power = draw(st.one_of(st.none(), st.integers(0, 700_000)))
        energy = draw(st.one_of(st.none(), st.integers(0, 10**9)))
        layout = draw(st.sampled_from(MIG_LAYOUTS))
        parts = [(None, 1.0)] if not layout else [(f"{s}g.{10 * s}gb", s / 7) for s in layout]
        for gi, (profile, fraction) in enumerate(parts):
            holders = draw(st.lists(names, max_size=4, unique=True))
            shares = [WorkloadShare(h, "t", False, draw(st.one_of(st.none(), st.floats(0, 100)))) for h in holders]
            gpus.append(GpuReading(
                f"GPU-{index}" if profile is None else f"MIG-GPU-{index}/{gi}", index, "A100", "A100",
                draw(st.floats(0, 100)), 0, 81920, power, shares, energy_mj=energy,
                parent_uuid="" if profile is None else f"GPU-{index}", mig_profile=profile or "",
                compute_fraction=fraction))
    return gpus


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(gpus=gpu_mix(), interval_s=st.integers(1, 900))
def test_per_workload_costs_plus_idle_equal_the_physical_gpus_cost_to_the_micro_dollar(gpus, interval_s):
    config = load_config(EXAMPLE, {})
    usage, state = UsageProcessor(config), ResourceState()
    interval_ms = interval_s * 1000
    sample = GpuSample("e", T0_MS + interval_ms, interval_ms, "dgx-a100-01", "onprem", "test", gpus)
    assert usage.add(state, GpuSample.decode(sample.encode()))
    rows = usage.close(state, "dgx-a100-01", T0_MS + 2 * HOUR_MS)

    physical = {}  # uuid of each physical GPU -> its energy over the interval (mJ), None when unmetered
    for g in gpus:
        energy = g.energy_mj if g.energy_mj is not None else (
            None if g.power_mw is None else g.power_mw * interval_ms // 1000)
        physical[g.parent_uuid or g.uuid] = energy
    gpu_cost = config.asset_for_host("dgx-a100-01").gpu_cost()
    rate = gpu_cost.rate(datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc))
    hours = D(interval_ms) / HOUR_MS
    expected = sum(
        (rate.capex_usd_per_gpu_hour + rate.upkeep_usd_per_gpu_hour) * hours
        + (gpu_cost.energy_usd_per_gpu_hour() * hours if e is None
           else D(e) / 3_600_000_000 * gpu_cost.energy_usd_per_kwh_at_meter())
        for e in physical.values())
    assert sum(r.allocated_gpu_ms for r in rows) == len(physical) * interval_ms  # every GPU-ms once, none lost
    assert sum(r.energy_mj for r in rows) == sum(e for e in physical.values() if e is not None)
    assert sum(r.cost_usd for r in rows) == micro(expected)
    assert all(r.cost_usd >= 0 and r.busy_gpu_ms <= r.allocated_gpu_ms for r in rows)


# -- NVML: MIG devices and per-process shares (fake NVML with pynvml's API surface) ----------------------------


def test_nvml_reads_mig_devices_and_per_process_shares_and_the_node_adds_up(tmp_path):
    from hybridspend.collectors.nvml.collector import NvmlCollector, ProcessInspector
    from hybridspend.collectors.nvml.fake import FakeGpu, FakeMigInstance, FakeNvml

    for pid, environ in ((100, b"POD_NAMESPACE=ml-train-bert"), (200, b"SLURM_JOB_ACCOUNT=physics")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text("0::/\n")
        (tmp_path / str(pid) / "environ").write_bytes(environ)
    nv = FakeNvml([
        FakeGpu("GPU-0", mig_mode=1, power_mw=300_000, mig=[
            FakeMigInstance("MIG-aaa", 1, "3g.40gb", 3, pids=[100]), None, FakeMigInstance("MIG-bbb", 2, "2g.20gb", 2)]),
        FakeGpu("GPU-1", utilization_pct=60, power_mw=None, pids=[100, 200], process_sm_util={100: 45, 200: 15}),
        FakeGpu("GPU-2", utilization_pct=60, power_mw=None, pids=[100, 200]),  # no per-process figures
        FakeGpu("GPU-3", mig_mode=1, power_mw=None),  # MIG mode, no instance yet
        FakeGpu("GPU-4", mig_mode=0, utilization_pct=10, power_mw=None),  # MIG capable, disabled: a whole GPU
    ])
    col = NvmlCollector(load_config(EXAMPLE, {}), nv, host="dgx-a100-01", interval_s=30,
                        inspector=ProcessInspector(tmp_path))
    col.start()
    sample = col.sample(T0_MS + 30_000)
    mig_a, mig_b, g1, g2, g3, g4 = sample.gpus
    assert (mig_a.uuid, mig_a.parent_uuid, mig_a.mig_profile, mig_a.compute_fraction, mig_a.power_mw) == \
        ("MIG-aaa", "GPU-0", "3g.40gb", 3 / 7, 300_000)
    assert mig_a.utilization_pct == 100.0 and [w.workload for w in mig_a.workloads] == ["ml-train-bert"]
    assert (mig_b.mig_profile, mig_b.compute_fraction, mig_b.workloads, mig_b.utilization_pct) == \
        ("2g.20gb", 2 / 7, [], 0.0)
    assert [(w.workload, w.utilization_pct) for w in g1.workloads] == [("ml-train-bert", 45.0), ("slurm-physics", 15.0)]
    assert [w.utilization_pct for w in g2.workloads] == [None, None]
    assert (g3.uuid, g3.parent_uuid, g3.workloads, g3.compute_fraction) == ("GPU-3", "", [], 1.0)
    assert (g4.uuid, g4.utilization_pct, g4.parent_uuid) == ("GPU-4", 10.0, "")

    usage, state = UsageProcessor(load_config(EXAMPLE, {})), ResourceState()
    usage.add(state, GpuSample.decode(sample.encode()))
    rows = {r.workload: r for r in usage.close(state, "dgx-a100-01", T0_MS + HOUR_MS)}
    # GPU-0 (30 s): 3g -> 12857 ms, 2g -> 8572, 2 free slices -> 8571 (quotas 12857.14, 8571.43, 8571.43)
    # GPU-1 measured 45:15 = 3:1 -> 22500 / 7500 ms, busy 60 % = 18000 -> 13500 / 4500
    # GPU-2 by allocation -> 15000 / 15000, busy 9000 / 9000;  GPU-3 idle 30000;  GPU-4 10 % busy, no process: idle
    assert (rows["ml-train-bert"].allocated_gpu_ms, rows["ml-train-bert"].busy_gpu_ms) == \
        (12857 + 22500 + 15000, 12857 + 13500 + 9000)
    assert (rows["slurm-physics"].allocated_gpu_ms, rows["slurm-physics"].busy_gpu_ms) == (7500 + 15000, 4500 + 9000)
    assert rows["idle"].allocated_gpu_ms == 8572 + 8571 + 30_000 + 30_000
    assert sum(r.allocated_gpu_ms for r in rows.values()) == 5 * 30_000
    # energy: only GPU-0 is metered, 300 W * 30 s = 9,000,000 mJ, split 3/7, 2/7, 2/7 of its time
    assert rows["ml-train-bert"].energy_mj == 9_000_000 * 12857 // 30_000  # 3,857,100 mJ


def test_a_gpu_read_whole_and_as_mig_instances_in_one_sample_is_refused():
    whole = GpuReading("GPU-0", 0, "A100", "A100", 0.0, 0, 0, None, [])
    mig = GpuReading("MIG-1", 0, "A100", "A100", 0.0, 0, 0, None, [], parent_uuid="GPU-0", mig_profile="3g.40gb",
                     compute_fraction=3 / 7)
    with pytest.raises(EventError, match="'GPU-0' is read whole and as MIG instances"):
        GpuSample.decode(GpuSample("e", 1, 1, "n", "onprem", "t", [whole, mig]).encode())


@settings(max_examples=300, deadline=None)
@given(interval_ms=st.integers(0, 3_600_000), utilization_pct=st.floats(-10, 150, allow_nan=False),
       owners=st.sampled_from([(), (("train", "ml"),)]), measured=st.sampled_from([(), (None,), (0.0,), (37.5,)]),
       energy_mj=st.one_of(st.none(), st.integers(0, 10**9)))
def test_a_whole_gpu_of_one_workload_is_charged_as_the_general_split_would(interval_ms, utilization_pct, owners,
                                                                           measured, energy_mj):
    from hybridspend.costmodel.sharing import GpuSlice, _split_slices, split_gpu

    gpu = GpuSlice(1, utilization_pct, owners, measured[: len(owners)])
    assert split_gpu(interval_ms, [gpu], energy_mj) == _split_slices(interval_ms, [gpu], energy_mj)
