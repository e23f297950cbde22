"""`hybridspend demo` as a user runs it: a crossing and its alert, and nothing left running."""

import json
import os
import re
import subprocess
import sys
from decimal import Decimal

import psutil
import pytest

pytestmark = pytest.mark.integration


def _children_alive(names=("tansu", "postgres")):
    return [p.info for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] in names and any("hs-demo-test" in (c or "") for c in (p.info["cmdline"] or []))]


SECRETS = {
    "HYBRIDSPEND_SLACK_PLATFORM_WEBHOOK": "/services/T0SECRET1/B0SECRET1/platformWebhookSecretValue",
    "HYBRIDSPEND_SLACK_FINANCE_WEBHOOK": "/services/T0SECRET2/B0SECRET2/financeWebhookSecretValue",
}


@pytest.mark.slow
def test_demo_prints_a_crossing_and_its_alert_and_cleans_up(tmp_path, slack):
    state = tmp_path / "hs-demo-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDSPEND")}
    env.update({name: slack.url + path for name, path in SECRETS.items()})
    proc = subprocess.run(
        [sys.executable, "-m", "hybridspend.cli", "demo", "--state-dir", str(state), "--hours", "14", "--speed", "4000"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # inference-small (one L4 in the cloud) fits into the idle owned A100s: filling idle capacity is cheap to
    # reverse and needs only the dwell, three 15-minute windows
    assert "inference-small: repatriate_fill_idle (cloud -> onprem)" in out
    # ml-train-vision drops to 15 % at noon, but a migration needs 24 h of evidence and buying capacity for
    # ml-batch-embed a week: 14 simulated hours recommend neither
    assert "migrate_to_cloud" not in out and "repatriate_buy_capacity" not in out
    assert "[1 alert(s) delivered]" in out  # its savings ($572.79/month) are below finance's $1,000: platform only
    assert "Dead letters: 0" in out
    assert (state / "config.yaml").exists() and (state / "pgdata").exists()
    posted = [(p["path"], p["body"]["text"]) for p in slack.posts]
    assert [path for path, _ in posted] == [SECRETS["HYBRIDSPEND_SLACK_PLATFORM_WEBHOOK"]]
    assert posted[0][1].startswith("Repatriate (fill idle capacity): inference-small (cloud → on-prem), saves about")
    assert not _children_alive()
    # the same options table, to the cent, in the summary, in Slack and in the database
    label, npv = re.search(r"cheapest by present value: (.+?) \((\$[\d,.]+)\); runner-up", out).groups()
    assert label == "fill 1 idle owned A100 GPU"
    assert f"• {label}: {npv} (" in json.dumps(slack.posts[0]["body"], ensure_ascii=False).replace("\\n", "\n")
    tables = _every_stored_row(state)
    rows = "\n".join(row for table in tables.values() for row in table)
    stored = json.loads(next(row for row in rows.split("\n") if '"options"' in row and "inference-small" in row))
    cheapest = min(stored["options"], key=lambda o: Decimal(o["npv_usd"]))
    assert (cheapest["label"], f"${Decimal(cheapest['npv_usd']):,.2f}") == (label, npv)
    # the webhook URLs are secrets: nothing the demo printed or logged may contain them
    secret_parts = [part for path in SECRETS.values() for part in path.split("/") if "SECRET" in part or "Secret" in part]
    written = [out, proc.stderr] + [f.read_text(errors="replace") for f in (state / "logs").rglob("*") if f.is_file()]
    written += [(state / name).read_text(errors="replace") for name in ("config.yaml", "broker.log")
                if (state / name).exists()]
    assert len(written) >= 5  # stdout, stderr, the worker's, sink's and alerter's logs at least
    written.append(rows)  # and every row of every table
    for text in written:
        for part in secret_parts:
            assert part not in text

    # a second demo in the same state directory replays the same simulated day against the database the first
    # filled: its broker is new, its raw samples replace the earlier ones instead of being refused as a replay,
    # and it gives the same summary with no dead letters
    again = subprocess.run(
        [sys.executable, "-m", "hybridspend.cli", "demo", "--state-dir", str(state), "--hours", "14", "--speed", "4000"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Dead letters: 0" in again.stdout
    replaced = re.search(r"an earlier demo run stored this simulated day: its (\d+) raw samples are replaced",
                         again.stdout)
    assert replaced and int(replaced.group(1)) == len(tables["gpu_samples"]) > 0, again.stdout[:3000]
    assert _summary(again.stdout) == _summary(out)
    assert len(slack.posts) == 1  # its crossing is the same decision: not alerted again
    assert not _children_alive()


def _summary(out: str) -> list[str]:  # the workloads table, the crossings, the reconciliation
    lines = out[out.index("Workloads"):out.index("Alerts:")].splitlines()
    return [line for line in lines if "ran in" not in line]


def _every_stored_row(state) -> dict[str, list[str]]:
    """Every row of every table (a partition's rows under its table's name and its own), as JSON."""
    import psycopg

    from hybridspend.infra.local import LocalPostgres

    pg = LocalPostgres(state / "pgdata").start()
    try:
        with psycopg.connect(pg.dsn) as conn:
            tables = [t for (t,) in conn.execute(
                "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public'")]
            assert {"alert_outbox", "alert_log", "dead_letters", "decisions"} <= set(tables)
            return {t: [row for (row,) in conn.execute(f"SELECT row_to_json(t)::text FROM {t} t")]  # noqa: S608
                    for t in tables}
    finally:
        pg.stop()
