"""Event contracts reject bad input with a reason; Slack messages escape hostile labels."""

import json
from decimal import Decimal as D

import pytest

from hybridspend.alerts.slack import decision_message, escape
from hybridspend.contracts.events import BreakevenDecision, EventError, GpuReading, GpuSample, WorkloadShare


def good_sample(**changes) -> dict:
    s = GpuSample("e1", 1_790_000_000_000, 60_000, "node-1", "onprem", "test", [
        GpuReading("GPU-0", 0, "A100", "A100", 50.0, 10, 100, 250_000, [WorkloadShare("w", "t")])])
    d = s.to_dict()
    d.update(changes)
    return d


def test_gpu_sample_round_trips():
    d = good_sample()
    again = GpuSample.decode(json.dumps(d))
    assert again.to_dict() == d


@pytest.mark.parametrize("payload, reason", [
    (b"\xff\xfe", "not JSON"),
    (b"[1,2]", "expected a JSON object"),
    (json.dumps(good_sample(schema="gpu_sample.v9")), "unsupported schema 'gpu_sample.v9'"),
    (json.dumps({k: v for k, v in good_sample().items() if k != "ts_ms"}), "missing field 'ts_ms'"),
    (json.dumps(good_sample(environment="moon")), "'environment' must be one of onprem, cloud"),
    (json.dumps(good_sample(gpus=[])), "'gpus' must be a non-empty list"),
    (json.dumps(good_sample(interval_ms=-5)), "'interval_ms' must be >= 1"),
    (json.dumps(good_sample(resource="a\nb")), "'resource' contains control characters"),
    (json.dumps(good_sample(resource="x" * 300)), "'resource' is longer than 253 characters"),
])
def test_malformed_samples_raise_with_a_reason(payload, reason):
    with pytest.raises(EventError, match=reason.replace("(", r"\(").replace("[", r"\[")):
        GpuSample.decode(payload)


def test_out_of_range_utilization_is_rejected():
    d = good_sample()
    d["gpus"][0]["utilization_pct"] = 250
    with pytest.raises(EventError, match=r"gpus\[0\]: 'utilization_pct' must be in \[0, 100\], got 250"):
        GpuSample.decode(json.dumps(d))


def decision(workload="team-a", team="t") -> BreakevenDecision:
    return BreakevenDecision(
        event_id="d1", workload=workload, team=team, from_env="onprem", to_env="cloud", kind="migrate_to_cloud",
        gpu_class="A100", window_start_ms=0, window_end_ms=1, current_usd_per_busy_gpu_hour=D("5.75"),
        alternative_usd_per_busy_gpu_hour=D("3"), utilization=D("0.2"), monthly_savings_usd=D("401.5"),
        confidence=D("1"), alternative_label="aws us-east-1 p4d.24xlarge on_demand", gpus_needed=1,
        reason=f"{workload} is idle",
    )


def test_hostile_labels_cannot_ping_or_link_in_slack():
    hostile = "<!channel> <https://evil.example|click> & <@U123>"
    msg = decision_message(decision(hostile, "<!here>"), dashboard_url="https://grafana.example.com")
    flat = json.dumps(msg)
    assert "<!channel>" not in flat and "<!here>" not in flat and "<@U123>" not in flat
    assert "<https://evil" not in flat
    assert escape(hostile) in msg["text"]
    assert "&lt;!channel&gt;" in flat and "&amp;" in flat
    button = msg["blocks"][-1]["elements"][0]["url"]
    assert button.startswith("https://grafana.example.com/d/hybridspend-breakeven?var-workload=")
    assert "<" not in button and " " not in button


def test_decision_message_carries_both_rates_utilization_and_savings():
    text = decision_message(decision())["text"]
    assert text == ("Migrate to cloud: team-a (on-prem → cloud), saves about $401.50/month — "
                    "$5.75 vs $3.00 per busy GPU-hour at 20% utilization")
