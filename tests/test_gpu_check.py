"""What the GPU check script and the CUDA report do that can be checked without a GPU: the
script's syntax and argument handling, and the report's tables, targets and timing code."""
import os
import subprocess
import sys

import measure
import pytest
import step_vs_batch
import tables
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.sh")


def run_script(*args):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=200,
                          env={**os.environ, "PYTHON": sys.executable})


def test_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--stages", "build,lint"], "unknown stage 'lint'"),
    (["--out"], "--out needs a folder"),
])
def test_script_refuses_bad_arguments(args, message):
    result = run_script(*args)
    assert result.returncode == 2 and message in result.stderr
    assert not os.path.exists("gpu_check_out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA gets")
def test_a_stage_runs_and_fails_cleanly_without_a_gpu(tmp_path):
    """The stage machinery end to end (each stage runs in its own bash under a time limit): the
    command-line stage must fail with the command's own one-line error, and the table say so."""
    result = run_script("--stages", "cli", "--out", str(tmp_path))
    log = (tmp_path / "gpu_check.log").read_text()
    assert result.returncode == 1, log
    assert "--device: cuda: no CUDA device is available" in log
    assert "cli        failed (exit 1)" in result.stdout


def test_script_help():
    result = run_script("--help")
    assert result.returncode == 0 and "--stages" in result.stdout


def bench(group, impl, median, **extra):
    return {"group": group, "name": "test_search_step", "params": {"impl": impl},
            "stats": {"median": median}, "extra_info": extra}


def step_records():
    second = "search step second order Network(16, 10, 8) batch 64 cuda"
    first = "search step first order Network(16, 10, 8) batch 64 cuda"
    benchmarks = [bench(second, "reference", 1.0), bench(second, "compiled_reference", 0.5,
                                                          first_call_s=95.0),
                  bench(second, "fused", 0.4), bench(second, "fused_graph", 0.2),
                  bench(second, "fused_deterministic", 0.6), bench(second, "fused_unfolded", 0.5),
                  bench(second, "fused_recompute", 0.75),
                  bench(first, "reference", 0.3), bench(first, "fused", 0.2),
                  bench(MIXED, "fused", 0.1), bench(MIXED, "fused_unfolded", 0.11),
                  bench(MIXED, "compiled_reference", 0.12)]
    memory = {(second, "reference"): 1000.0, (second, "fused"): 650.0,
              (second, "fused_recompute"): 310.0}
    return tables.table(benchmarks, 1e12, memory)


MIXED = "MixedOp fwd+bwd C=16 32x32 batch 64 stride 1 cuda"


def test_table_compares_each_of_ours_with_each_baseline():
    text, records = step_records()
    pairs = {(r["ours"], r["baseline"]): r["speedup"] for r in records
             if " second order" in r["scenario"]}
    assert pairs[("fused_graph", "reference")] == pytest.approx(5.0)
    assert pairs[("fused", "compiled_reference")] == pytest.approx(1.25)
    assert "| 0.65 (650 / 1000 MB) |" in text


def test_targets_name_each_figure_and_whether_it_is_met():
    _, records = step_records()
    floor = [{"shape": "C16@32x32", "K": 8, "speedup_over_python_sum": 3.5,
              "fused_over_floor": 1.7}]
    text = tables.targets_table(records, floor, "cuda")
    assert "| second-order step, fused eager vs original >= 2.0x | 2.50x | yes |" in text
    assert "torch.compile of the original >= 1.3x | 1.25x | NO |" in text
    assert "| second-order step, captured vs original >= 4.0x | 5.00x | yes |" in text
    assert "| first-order step, fused eager vs original >= 2.0x | 1.50x | NO |" in text
    assert "peak memory BatchNorm fold / original <= 0.65x | 0.65x | yes |" in text
    assert "peak memory recompute / original <= 0.3x | 0.31x | NO |" in text
    assert "step time, BatchNorm fold / without it <= 1.0x | 0.80x | yes |" in text
    assert "step time, recompute / fused without the fold <= 1.4x | 1.50x | NO |" in text
    assert f"| {MIXED}: BatchNorm fold vs fused_unfolded >= 1.2x | 1.10x | NO |" in text
    assert f"| {MIXED}: BatchNorm fold vs compiled_reference >= 1.0x | 1.20x | yes |" in text
    cpu_only = tables.targets_table(records, [], "cpu")
    assert "captured vs original" not in cpu_only and "fold / without it" in cpu_only
    assert "compiling) step | 95.0 s |" in text
    assert "deterministic mode, step time vs eager fused | 1.50x |" in text
    assert "C16@32x32: time / copy floor <= 1.5x | 1.70x | NO |" in text


def test_weighted_sum_floor_times_both_sums():
    records = measure.weighted_sum_floor(torch.device("cpu"), 2e10, shapes=["C64@8x8"], repeats=3,
                                         sets=2)
    (r,) = records
    assert r["fused_s"] > 0 and r["python_sum_s"] > 0 and r["floor_s"] > 0
    assert r["fused_over_floor"] == pytest.approx(r["fused_s"] / r["floor_s"])


def test_results_md_keeps_the_other_device_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n<!-- cpu begin -->\ncpu figures\n<!-- cpu end -->\n")
    tables.update_results_md("cuda", "cuda figures", str(path))
    tables.update_results_md("cuda", "new cuda figures", str(path))
    text = path.read_text()
    assert "cpu figures" in text and "new cuda figures" in text and "\ncuda figures" not in text


def test_budget_table_checks_each_predicted_batch_under_the_budget(monkeypatch):
    specs, results = [], iter([{"peak_mb": 900.0}, {"out_of_memory": True}])
    monkeypatch.setattr(step_vs_batch, "run_child",
                        lambda spec: specs.append(spec) or next(results))
    curve = {"fused": [{"peak_mb": 100.0}, {"peak_mb": 200.0}],
             "reference": [{"peak_mb": 300.0}, {"peak_mb": 600.0}]}
    text, records = step_vs_batch.budget_table(torch.device("cuda"), [4, 8], curve, 1000.0)
    assert "| fused | 25.0 | 40 | 900 MB | yes |" in text
    assert "| reference | 75.0 | 13 | out of memory | no |" in text
    assert [(s["batch"], s["budget_mb"]) for s in specs] == [(40, 1000.0), (13, 1000.0)]
    assert "the budget set as the allocator limit" in text
