"""Every reader of outside input, fuzzed: a clear error or a reported problem, never a traceback or
a hang.  (FOCUS files: tests/test_hostile_focus.py.)  Bounded in examples and time."""

from __future__ import annotations

import string
from datetime import date

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridspend.alerts.alerter import MAX_BACKOFF_S, retry_after_s
from hybridspend.collectors.dcgm import EnergyMeter, PageError, gather, parse_page, readings
from hybridspend.contracts.config import ConfigError, load_config
from hybridspend.reports import opencost

FUZZ = settings(max_examples=120, deadline=3000)

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e999999999", "1e-999999", "NaN", "-inf", "9999-12-01", "0001-01-01", "", "\x00", "\x1b[2J",
                     "postgresql://:pw@db/x", "{env: X}", "A100", "0"]),
    st.text(max_size=20),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=12)
_ASSET_FIELDS = ["name", "gpu_model", "gpu_class", "gpu_count", "gpus_per_node", "hosts",
                 "purchase_price_usd_per_node", "in_service_date", "amortization_months", "power_w_per_gpu", "pue",
                 "electricity_usd_per_kwh", "support_usd_per_year_per_node"]
_SECTIONS = ["kafka", "database", "onprem_assets", "cloud_offers", "thresholds", "alerts", "workloads", "budgets",
             "gpu_throughput", "collectors", "state_dir"]


@FUZZ
@given(data=st.one_of(
    st.dictionaries(st.sampled_from(_SECTIONS), _VALUES, max_size=4),
    st.fixed_dictionaries({"onprem_assets": st.lists(st.dictionaries(st.sampled_from(_ASSET_FIELDS), _SCALARS),
                                                     max_size=2)}),
))
def test_any_config_is_valid_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML: nothing a user could write
    try:
        config = load_config(path, {})
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    for asset in config.onprem_assets:  # what is accepted can be priced, quickly
        asset.gpu_cost().rate()


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.builds(
    lambda rows: "EndTimestamp,InstanceID,Region,AssetClass,InstanceIDField,InstanceType,MarketPriceHourly,Version\n"
    + "\n".join(",".join(r) for r in rows),
    st.lists(st.lists(st.one_of(st.sampled_from(["gpu", "GPU", "node", "0.95", "1e999999", "-1", "nan", "\x7f"]),
                                st.text(alphabet=string.printable, max_size=10)), min_size=8, max_size=8),
             max_size=5))))
def test_any_opencost_file_imports_or_is_a_clear_error(tmp_path_factory, text):
    try:
        imported = opencost.import_profiles(opencost.parse_csv(text, "f.csv"), date(2026, 11, 1))
    except opencost.OpenCostError:
        return
    section = opencost.profiles_yaml(imported, "f.csv", {})
    path = tmp_path_factory.mktemp("oc") / "c.yaml"
    path.write_text(section)
    load_config(path, {})  # what it prints loads back as a configuration


_METRICS = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
_LABEL_VALUES = st.one_of(st.sampled_from(["0", "GPU-1", "1g.10gb", "3g.40gb", "x" * 300, "a\\tb", ""]),
                          st.text(alphabet=string.ascii_letters + "-_.", max_size=12))


@FUZZ
@given(lines=st.lists(st.one_of(
    st.text(max_size=80),
    st.builds(lambda m, labels, v: m + "{" + ",".join(f'{k}="{val}"' for k, val in labels.items()) + "} " + v,
              st.sampled_from(_METRICS),
              st.dictionaries(st.sampled_from(["gpu", "UUID", "Hostname", "modelName", "GPU_I_ID", "GPU_I_PROFILE",
                                               "namespace", "pod", "hpc_job"]), _LABEL_VALUES, max_size=6),
              st.sampled_from(["1", "0.5", "+Inf", "-Inf", "NaN", "1e308", "-3", "350", "1e400"]))),
    max_size=12))
def test_any_exporter_page_becomes_readings_or_reported_problems(lines):
    problems: list[str] = []
    try:
        points = parse_page("\n".join(lines) + "\n")
    except PageError:
        return
    series = gather(points, "node", problems)
    for host, gpus in readings(series, lambda labels: None, EnergyMeter(), 60_000, 30_000, problems).items():
        for reading in gpus:
            assert 0 <= reading.utilization_pct <= 100 and reading.memory_used_mib >= 0
            assert reading.power_mw is None or 0 <= reading.power_mw <= 10_000_000


@FUZZ
@given(header=st.one_of(st.none(), st.text(max_size=30), st.lists(st.text(max_size=10), max_size=2),
                        st.sampled_from(["1e308", "inf", "-inf", "nan", "-5", "0", "30", "1e-400", " 7 "])))
def test_any_retry_after_is_none_or_a_bounded_wait(header):
    wait = retry_after_s({"Retry-After": header})
    assert wait is None or 0 <= wait <= MAX_BACKOFF_S
