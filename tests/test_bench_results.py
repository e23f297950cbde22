"""The benchmark results file: medians and spreads of several runs, targets judged on the medians,
and the README's figures table generated from the committed file, never edited by hand."""

from __future__ import annotations

from bench import results


def _run(pipeline: float, alert_p99_s: float) -> dict:
    return {"pipeline_samples_per_s": pipeline, "alert_latency_p99_s": alert_p99_s, "report_gpus": 10_000,
            "quick": False}


def test_the_result_is_the_median_of_the_runs_with_their_spread():
    summary = results.summarize([_run(30_000, 0.9), _run(60_000, 1.4), _run(52_000, 0.8)], quick=False,
                                measured_at="2026-11-30T12:00:00Z")
    assert summary["kind"] == "full"
    assert summary["median"]["pipeline_samples_per_s"] == 52_000  # of 30k, 52k, 60k
    assert summary["spread"]["pipeline_samples_per_s"] == [30_000, 60_000]
    assert summary["median"]["alert_latency_p99_s"] == 0.9  # of 0.8, 0.9, 1.4
    # judged on the medians: 52,000 >= 50,000 and 0.9 s < 1 s, though one run missed each
    assert summary["targets_met"]["pipeline >= 50,000 GPU samples/s"] is True
    assert summary["targets_met"]["alert p99 < 1 s"] is True
    assert "quick" not in summary["median"]  # flags are not figures
    assert summary["cores"] and summary["broker_profile"] == "local" and summary["commit"]


def test_quick_runs_never_write_over_the_full_result():
    assert results.results_path(quick=True) != results.results_path(quick=False)
    assert results.results_path(quick=False) == results.FULL
    summary = results.summarize([_run(1, 1)], quick=True, measured_at="x")
    assert summary["kind"].startswith("quick")


def test_readme_table_is_the_rendering_of_the_committed_results():
    expected = results.render_table(results.load())
    assert results.readme_block(results.README.read_text()) == expected


def test_table_shows_median_spread_and_target():
    summary = results.summarize([_run(30_000, 0.9), _run(60_000, 1.4), _run(52_000, 0.8)], quick=False,
                                measured_at="2026-11-30T12:00:00Z")
    table = results.render_table(summary)
    assert "| `pipeline_samples_per_s` |" in table
    assert "| 52,000 | 30,000 – 60,000 | pipeline >= 50,000 GPU samples/s: met |" in table
    assert "Median of 3 full runs" in table


def test_every_panel_is_judged_by_the_slowest_panels_p95():
    runs = [{"panel_p95_s_max": p95, "panels_gpus": 10_000, "panels_days": 90,
             "panel_p95_s": {"hybridspend-cost/1 Workloads": {"24h": p95}}} for p95 in (0.7, 1.3, 0.9)]
    summary = results.summarize(runs, quick=False, measured_at="2026-12-07T12:00:00Z")
    assert summary["median"]["panel_p95_s_max"] == 0.9 and "panel_p95_s" not in summary["median"]  # a table, kept in runs
    assert summary["targets_met"]["every panel p95 < 1 s"] is True
    assert "| `panel_p95_s_max` | Grafana panels (10,000 GPUs × 90 days): the slowest panel's p95, any range | 0.90 s |" \
        in results.render_table(summary)


def test_a_figure_only_some_runs_have_says_of_how_many_runs_it_is():
    # the capacity bench stops at the first fleet size not kept up with: a size one run reached and the others did
    # not is the median of that run alone, and the table says so
    runs = [{"capacity_gpus": 5_000}, {"capacity_gpus": 10_000, "rss_worker_mib_per_1k_gpus": 2.0},
            {"capacity_gpus": 5_000}]
    summary = results.summarize(runs, quick=False, measured_at="2026-12-07T12:00:00Z")
    assert summary["median"]["rss_worker_mib_per_1k_gpus"] == 2.0 and summary["of_runs"] == {"rss_worker_mib_per_1k_gpus": 1}
    table = results.render_table(summary)
    assert "(1 of the 3 runs)" in next(line for line in table.splitlines() if "rss_worker_mib_per_1k_gpus" in line)
    assert "of the 3 runs" not in next(line for line in table.splitlines() if "`capacity_gpus`" in line)


def test_a_result_names_the_machine_and_its_speed_in_one_cores_time():
    runs = [{**_run(52_000, 0.9), "cpu_calibration_s": s} for s in (0.45, 0.52, 0.47)]
    summary = results.summarize(runs, quick=False, measured_at="2026-12-07T12:00:00Z")
    assert summary["cpu_model"]  # from /proc/cpuinfo here
    assert summary["median"]["cpu_calibration_s"] == 0.47
    table = results.render_table(summary)
    assert f"on {summary['cores']} cores ({summary['cpu_model']})" in table
    assert "| `cpu_calibration_s` |" in table and "| 0.47 s | 0.45 s – 0.52 s |" in table
    assert 0 < results.calibrate() < 60  # seconds of one core
