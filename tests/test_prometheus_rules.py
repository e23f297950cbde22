"""The Prometheus rules operators deploy (deploy/prometheus/) and the /metrics page, checked by
Prometheus's own promtool: the rules parse, each alert fires on a synthetic series and stays quiet
on a healthy one (rules_test.yml), and the exposition page passes `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from hybridspend.infra import metrics

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package; .ci/run installs it)")


@needs_promtool
def test_the_rules_parse_and_their_unit_tests_pass():
    check = subprocess.run([PROMTOOL, "check", "rules", "rules.yml"], cwd=RULES, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 12 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


@needs_promtool
def test_a_rule_test_that_expects_the_wrong_alert_fails(tmp_path):
    """The unit tests can fail: the same file expecting the silent source to be the live one fails."""
    shutil.copy(RULES / "rules.yml", tmp_path / "rules.yml")
    broken = (RULES / "rules_test.yml").read_text().replace(
        'exp_labels: {severity: warning, source: "gpu-samples/onprem"}', 'exp_labels: {severity: warning, source: "gpu-samples/cloud"}')
    (tmp_path / "rules_test.yml").write_text(broken)
    test = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert test.returncode != 0 and "HybridspendSourceSilent" in test.stdout + test.stderr


@needs_promtool
@pytest.mark.integration
def test_the_metrics_page_passes_promtool_check_metrics():
    metrics.EVENTS_IN.labels("sink", "hybridspend.gpu-samples").inc(3)
    metrics.DEAD_LETTERS.labels("hybridspend.gpu-samples", "not JSON").inc()
    metrics.LAST_EVENTS.seen("nvml:node-1", 1_800_000_000.0)
    port = metrics.serve(0)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        metrics.stop(port)
    assert b"hybridspend_events_in_total" in page and b"hybridspend_source_last_event_age_seconds" in page
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


@needs_promtool
def test_the_compose_prometheus_configuration_loads_the_rules(tmp_path):
    """docker-compose's Prometheus mounts rules.yml at /etc/prometheus/: checked here with the file beside it."""
    shutil.copy(RULES / "rules.yml", tmp_path / "rules.yml")
    config = (RULES / "prometheus.yml").read_text()
    assert "rule_files: [/etc/prometheus/rules.yml]" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/rules.yml", "rules.yml"))
    check = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0 and "SUCCESS: 12 rules found" in check.stdout, check.stdout + check.stderr
    compose = (RULES.parents[1] / "docker-compose.yml").read_text()
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in compose
