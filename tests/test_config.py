"""Configuration: validation messages name the field, the value and what was expected."""

import json
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml

from hybridspend.contracts.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "contracts" / "examples" / "fleet.yaml"


def write(tmp_path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_example_config_describes_a_fleet_and_prices_it():
    config = load_config(EXAMPLE, {})
    assert sum(a.gpu_count for a in config.onprem_assets) == 24
    a100 = config.asset_for_host("dgx-a100-02")
    assert a100.name == "dgx-a100"
    # 240000/8 = 30000 per GPU over 36 months; upkeep 26000/8 per GPU-year; 400 W at PUE 1.4 and 0.12 $/kWh
    rate = a100.gpu_cost().rate()
    assert rate.capex_usd_per_gpu_hour == D(30000) / D(26280)
    assert rate.energy_usd_per_gpu_hour == D("0.0672")
    assert rate.upkeep_usd_per_gpu_hour == D(3250) / D(8760)
    assert config.resolve_workload({"k8s_namespace": "research-nlp"}) == ("research-nlp", "research", True)
    assert config.resolve_workload({"user": "ana"}) == ("user-ana", "unassigned", False)


def test_bad_value_names_field_value_and_expectation(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["onprem_assets"][0]["amortization_months"] = 0
    data["thresholds"]["dwell_windows"] = "three"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data), {})
    text = str(err.value)
    assert "onprem_assets[0].amortization_months: Input should be greater than 0, got 0" in text
    assert "thresholds.dwell_windows: Input should be a valid integer" in text and "'three'" in text


def test_unknown_fields_and_inline_secrets_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap: Extra inputs are not permitted"):
        load_config(write(tmp_path, {"kafka": {"bootstrap": "x:9092"}}), {})
    route = {"name": "f", "audience": "finance", "slack_webhook_url": "https://hooks.slack.com/services/T/B/X"}
    with pytest.raises(ConfigError, match=r"alerts\.routes\[0\]\.slack_webhook_url"):
        load_config(write(tmp_path, {"alerts": {"routes": [route]}}), {})
    with pytest.raises(ConfigError, match="must not contain a password"):
        load_config(write(tmp_path, {"database": {"dsn": "postgresql://u:hunter2@db/x"}}), {})


def test_not_yaml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: [unclosed"), {})
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "nope.yaml", {})


def test_environment_overrides_win_and_keep_strings_as_strings(tmp_path):
    env = {
        "HYBRIDSPEND__KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "HYBRIDSPEND__THRESHOLDS__MARGIN_PCT": "15",
        "HYBRIDSPEND__DATABASE__DSN": "host=/tmp dbname=x",
    }
    config = load_config(EXAMPLE, env)
    assert config.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert config.thresholds.margin_pct == 15
    assert config.database.dsn == "host=/tmp dbname=x"


def test_config_check_redacts_secrets(tmp_path):
    secret = "https://hooks.slack.com/services/T000/B000/supersecret"
    env = {"HYBRIDSPEND_SLACK_FINANCE_WEBHOOK": secret, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "hybridspend.cli", "config", "check", str(EXAMPLE)],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert secret not in out and "supersecret" not in out
    body = json.loads(out.split("\n", 1)[1])
    assert body["alerts"]["routes"][0]["slack_webhook_url"] == \
        "env:HYBRIDSPEND_SLACK_FINANCE_WEBHOOK (set, value redacted)"


def test_config_check_fails_with_message_and_no_traceback(tmp_path):
    path = write(tmp_path, {"onprem_assets": [{"name": "x"}]})
    proc = subprocess.run([sys.executable, "-m", "hybridspend.cli", "config", "check", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "onprem_assets[0].gpu_class: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kafka_tls_and_sasl_settings_reach_every_client_with_the_password_from_the_environment(monkeypatch):
    import ssl

    import faust

    from hybridspend.contracts.config import Config, KafkaConfig
    from hybridspend.infra.broker import client_security
    from hybridspend.streams.topology import _credentials

    kafka = KafkaConfig(bootstrap_servers="kafka.internal:9093", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="hybridspend",
                        sasl_password={"env": "TEST_KAFKA_PASSWORD"})
    with pytest.raises(ConfigError, match="kafka.sasl_password: no value \\(env:TEST_KAFKA_PASSWORD \\(not set"):
        client_security(kafka)
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret-kafka-pw")
    assert client_security(kafka) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "hybridspend", "sasl_plain_password": "s3cret-kafka-pw"}
    config = Config(kafka=kafka)
    credentials = _credentials(config)  # what the Faust workers connect with
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.username == "hybridspend"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert "s3cret-kafka-pw" not in json.dumps(config.redacted())
    tls = Config(kafka=KafkaConfig(security_protocol="SSL"))
    assert isinstance(_credentials(tls), faust.SSLCredentials)
    assert _credentials(Config()) is None
