"""`hybridspend demo` as a user runs it: a crossing and its alert, and nothing left running."""

import os
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.integration


def _children_alive(names=("tansu", "postgres")):
    return [p.info for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] in names and any("hs-demo-test" in (c or "") for c in (p.info["cmdline"] or []))]


def test_demo_prints_a_crossing_and_its_alert_and_cleans_up(tmp_path):
    state = tmp_path / "hs-demo-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDSPEND")}
    proc = subprocess.run(
        [sys.executable, "-m", "hybridspend.cli", "demo", "--state-dir", str(state), "--hours", "14", "--speed", "4000"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # ml-train-vision drops to 15 % at noon: three 15-minute windows later it should move to the cloud
    assert "ml-train-vision: migrate_to_cloud (onprem -> cloud)" in out
    assert "ml-batch-embed: repatriate_buy_capacity (cloud -> onprem)" in out
    assert "[2 alert(s) delivered]" in out
    assert "Dead letters: 0" in out
    assert (state / "config.yaml").exists() and (state / "pgdata").exists()
    alerts = (state / "logs" / "alerter.log").read_text()
    assert "[alert:platform] Migrate to cloud: ml-train-vision" in alerts
    assert not _children_alive()
