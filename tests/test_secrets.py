"""Secrets never leave: not in logs (ours or a library's), not in stored error text, not in CLI output.

Each test plants a recognisable secret where a secret can come from (an environment variable a
SecretRef names, a config override, an inline value given by mistake, a DSN) and greps every place
it could come out.
"""

from __future__ import annotations

import logging

import psycopg
import pytest
import yaml

from hybridspend.alerts.alerter import Alerter
from hybridspend.contracts.config import ConfigError, load_config
from hybridspend.contracts.redact import install_log_redaction, redact, remember
from hybridspend.cli import main
from hybridspend.storage.db import migrate
from tests.test_alerts_delivery import decision

PLANTED = "Pl4nted-s3cret-7f3a9c"


def test_secret_shapes_are_masked_whatever_their_origin():
    for text, kept in [
        (f"postgresql://app:{PLANTED}@db:5432/x", "postgresql://app:***@db:5432/x"),
        (f"postgresql://:{PLANTED}@db/x", "postgresql://:***@db/x"),
        (f"host=db password={PLANTED} user=app", "host=db password=*** user=app"),
        (f"Invalid URL detected: https://hooks.slack.com/services/T0/B0/{PLANTED}",
         "Invalid URL detected: https://hooks.slack.com/***"),
        (f"token xoxb-12-34-{PLANTED}", "token xox-***"),
        (f"Authorization: Bearer {PLANTED}", "Authorization: Bearer ***"),
        (f"Authorization: Basic {PLANTED}", "Authorization: Basic ***"),
        (f"postgresql://app:p@ss{PLANTED}@db/x", "postgresql://app:***@db/x"),  # an '@' in the password
        (f"access_token={PLANTED}&x=1", "access_token=***&x=1"),
        (f"PGPASSWORD={PLANTED} psql", "PGPASSWORD=*** psql"),
        (f'{{"client_secret": "{PLANTED}"}}', '{"client_secret": ***}'),
    ]:
        assert redact(text) == kept
    for kept in ("http://127.0.0.1:9400/metrics", "use database.password: {env: DB_PASSWORD}",
                 "Basic information about the sink"):
        assert redact(kept) == kept


def test_a_remembered_secret_is_masked_in_any_text():
    remember("Odd-shaped-" + PLANTED)
    assert redact(f"htps:/not-a-url/Odd-shaped-{PLANTED}?x") == "htps:/not-a-url/***?x"


@pytest.mark.parametrize("override, field", [
    ({"HYBRIDSPEND__DATABASE__PASSWORD": PLANTED}, "database.password"),
    ({"HYBRIDSPEND__KAFKA__SASL_PASSWORD": PLANTED}, "kafka.sasl_password"),
    ({"HYBRIDSPEND__DATABASE__DSN": f"postgresql://app:{PLANTED}@db/x"}, "database.dsn"),
    ({"HYBRIDSPEND__DATABASE__DSN": f"postgresql://:{PLANTED}@db/x"}, "database.dsn"),
    ({"HYBRIDSPEND__DATABASE__DSN": f"host=db PASSWORD={PLANTED}"}, "database.dsn"),
    ({"HYBRIDSPEND__DATABASE__PASWORD": PLANTED}, "database.pasword"),  # a misspelled secret field
])
def test_a_config_error_names_the_field_but_never_quotes_a_secret(override, field):
    with pytest.raises(ConfigError) as caught:
        load_config(None, override)
    message = str(caught.value)
    assert field in message and PLANTED not in message


def test_config_check_prints_no_secret_given_inline_or_by_environment(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"routes": [
        {"name": "fin", "audience": "finance", "slack_webhook_url": f"https://hooks.slack.com/services/{PLANTED}"}]}}))
    assert main(["config", "check", str(path)]) == 2
    monkeypatch.setenv("HOOK", f"https://hooks.slack.com/services/T/B/{PLANTED}")
    path.write_text(yaml.safe_dump({"alerts": {"routes": [
        {"name": "fin", "audience": "finance", "slack_webhook_url": {"env": "HOOK"}}]}}))
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr()
    assert "slack_webhook_url" in out.err and "env:HOOK (set, value redacted)" in out.out
    assert PLANTED not in out.out + out.err


@pytest.mark.integration
def test_a_malformed_webhook_is_neither_logged_by_slack_sdk_nor_stored(tmp_path, database, monkeypatch, caplog):
    install_log_redaction()  # what every command does first
    monkeypatch.setenv("FIN_HOOK", f"htps:/hooks.slack.com/services/T0/B0/{PLANTED}")  # a typo'd scheme
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"alerts": {"routes": [
        {"name": "fin", "audience": "finance", "slack_webhook_url": {"env": "FIN_HOOK"}}]}}))
    migrate(database)
    alerter = Alerter(load_config(tmp_path / "c.yaml", {}), database, say=lambda m: None)
    alerter.enqueue([decision(1)])
    with caplog.at_level(logging.DEBUG):
        alerter.deliver_pending()
    assert "Invalid URL" in caplog.text or "failed" in caplog.text  # the failure is reported ...
    assert PLANTED not in caplog.text  # ... without the URL
    with psycopg.connect(database) as conn:
        stored = conn.execute("SELECT string_agg(coalesce(last_error, ''), ' ') FROM alert_outbox").fetchone()[0]
        stored += conn.execute("SELECT string_agg(detail, ' ') FROM alert_log").fetchone()[0]
    assert stored and PLANTED not in stored


@pytest.mark.parametrize("field, value, message", [
    ("purchase_price_usd_per_node", "1e999999999", "must be below 1e12 in magnitude"),
    ("purchase_price_usd_per_node", "1e999999", "must be below 1e12 in magnitude"),
    ("power_w_per_gpu", "1e30", "less than or equal to 10000"),
    ("power_w_per_gpu", "20000", "less than or equal to 10000"),
    ("amortization_months", 1_000_000_000, "less than or equal to 600"),
    ("in_service_date", "9999-12-01", "less than 2200-01-01"),
    ("electricity_usd_per_kwh", "NaN", "finite"),
])
def test_an_out_of_range_number_or_date_in_the_config_is_a_clear_error_at_once(tmp_path, capsys, field, value,
                                                                                message):
    import time

    from hybridspend.contracts.config import EXAMPLE_CONFIG

    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["onprem_assets"][0][field] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    assert main(["config", "check", str(path)]) == 2
    assert time.monotonic() - started < 5  # 1e999999999 once took 16 minutes of Decimal arithmetic
    err = capsys.readouterr().err
    assert f"onprem_assets[0].{field}: " in err and message in err and "Traceback" not in err


def test_files_a_user_names_are_replaced_never_written_through_a_symlink(tmp_path):
    from hybridspend.contracts.files import write_replacing
    from hybridspend.dashboards.build import all_dashboards, write
    from hybridspend.infra.checkpoint import Checkpoint

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    links = [out / "report.md", out / f"{next(iter(all_dashboards()))}.json", out / "checkpoint.json",
             out / "dangling.yaml"]
    for link in links[:2]:
        link.symlink_to(victim)
    links[2].symlink_to(tmp_path / "created-through-the-link")  # dangling: nothing to read, a file to create
    links[3].symlink_to(tmp_path / "created-through-the-link")
    write_replacing(links[0], "# report\n")
    write(out)  # the dashboards
    Checkpoint(links[2]).set("cursor", 1)
    write_replacing(links[3], "a: 1\n")
    assert victim.read_text() == "keep me" and not (tmp_path / "created-through-the-link").exists()
    assert not any(link.is_symlink() for link in links)
    assert links[0].read_text() == "# report\n" and links[3].read_text() == "a: 1\n"
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left


def test_a_replaced_file_keeps_its_permissions_and_a_new_one_follows_the_umask(tmp_path):
    import os
    import stat

    from hybridspend.contracts.files import write_replacing

    private = tmp_path / "report.md"
    private.write_text("old")
    private.chmod(0o600)
    write_replacing(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600
    umask = os.umask(0o027)
    try:
        write_replacing(tmp_path / "fresh.md", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.md").stat().st_mode) == 0o640
