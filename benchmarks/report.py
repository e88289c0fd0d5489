"""Runs the benchmark set, prints fused-versus-baseline ratios (speed and memory), writes JSON and
a markdown table, updates benchmarks/RESULTS.md and plots step time and peak memory against
batch size.

    python benchmarks/report.py [--device cpu|cuda] [--batches 4 8 16 32] [--no-plot]
                                [--budget-mb MB] [--out DIR]
"""
import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BASELINE_ORDER = ["reference", "compiled_reference", "fused_unfolded", "python_sum",
                  "compiled_python_sum", "python_loop", "foreach"]
OURS = ["fused", "fused_recompute", "fused_graph", "fused_deterministic"]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec):
    """Runs one search-step case in this (fresh) process: median step time and peak memory."""
    device = torch.device(spec["device"])
    if device.type == "cuda" and spec.get("budget_mb"):
        # The budget as the allocator's hard limit: a step that needs more fails here.
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(spec["budget_mb"] * 2**20 / total, device)
    try:
        _measure_step(spec, device)
    except torch.cuda.OutOfMemoryError:
        print(json.dumps({"out_of_memory": True}))


def _measure_step(spec, device):
    from cases import STEP_WARMUP, gdas_search_step, search_step

    if spec.get("method") == "gdas":
        step = gdas_search_step(spec["impl"], device, batch=spec.get("batch"))
    else:
        step = search_step(spec["impl"], device, spec["unrolled"], batch=spec.get("batch"))
    for _ in range(STEP_WARMUP.get(spec["impl"], 0)):
        step()
    print(json.dumps(timed_peak(step, device, spec.get("repeats", 2))))


def timed_peak(run, device, repeats):
    """One warm-up call of ``run`` (which synchronises the device itself), then ``repeats``
    timed ones: their median time and the peak memory above that before the warm-up call. That
    baseline is the set-up case (the model, the inputs): the peak then covers everything the
    calls need (activations, optimizer state, the architect's copies), and glibc's reuse of
    freed memory cannot hide part of it. On the CPU: the process's peak resident size (run each
    case in a fresh process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"seconds": statistics.median(times), "peak_mb": peak}


def run_child(spec, script=__file__, env=None):
    """``script --child spec`` in a fresh process (with the environment ``env``, default this
    one's): what its last line of output says (JSON)."""
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], check=True,
                         capture_output=True, text=True, cwd=os.path.dirname(HERE), env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_bandwidth(device):
    """Bytes read plus written per second by a large device-to-device copy."""
    n = 64 * 2**20 // 4 if device.type == "cpu" else 512 * 2**20 // 4
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def run_benchmarks(device, json_path):
    env = dict(os.environ)
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", HERE,
           f"--benchmark-json={json_path}", "--benchmark-disable-gc", "-k",
           f"{device.type}"]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(HERE), env=env)
    with open(json_path) as f:
        return json.load(f)["benchmarks"]


def impl_of(bench):
    return bench["params"]["impl"]


def table(benchmarks, bandwidth, memory):
    groups = {}
    for b in benchmarks:
        groups.setdefault(b["group"], []).append(b)
    lines = ["| scenario | darts_fast | median | baseline | baseline median | speed-up | "
             "peak memory ours / baseline |", "|---|---|---|---|---|---|---|"]
    records = []
    for group, items in groups.items():
        by_impl = {impl_of(b): b for b in items}
        for ours in (o for o in OURS if o in by_impl):
            f_med = by_impl[ours]["stats"]["median"]
            note = ""
            if "bytes_moved" in by_impl[ours].get("extra_info", {}):
                floor = by_impl[ours]["extra_info"]["bytes_moved"] / bandwidth
                note = f" (floor {floor * 1e3:.3f} ms: {f_med / floor:.2f}x of it)"
            for impl in (i for i in BASELINE_ORDER if i in by_impl):
                b_med = by_impl[impl]["stats"]["median"]
                ours_mem, mem = memory.get((group, ours)), memory.get((group, impl))
                mem_text = f"{ours_mem / mem:.2f} ({ours_mem:.0f} / {mem:.0f} MB)" \
                    if ours_mem and mem else "-"
                lines.append(f"| {group} | {ours} | {f_med * 1e3:.2f} ms{note} | {impl} | "
                             f"{b_med * 1e3:.2f} ms | {b_med / f_med:.2f}x | {mem_text} |")
                records.append({"scenario": group, "ours": ours, "median_s": f_med,
                                "baseline": impl, "baseline_median_s": b_med,
                                "speedup": b_med / f_med, "peak_mb": ours_mem,
                                "baseline_peak_mb": mem,
                                "baseline_first_call_s": by_impl[impl].get("extra_info", {})
                                .get("first_call_s")})
    return "\n".join(lines), records


def step_memory(benchmarks, device):
    """Peak memory of each search-step case (GDAS' too): on CUDA as the benchmark measured it
    (max allocated over the case, model included); on the CPU the peak RSS of a fresh process
    running it."""
    memory = {}
    for b in benchmarks:
        gdas = b["name"].startswith("test_gdas_search_step")
        if not (gdas or b["name"].startswith("test_search_step")):
            continue
        if device.type == "cuda":
            memory[(b["group"], impl_of(b))] = b["extra_info"].get("peak_memory_mb")
        else:
            spec = {"impl": impl_of(b), "device": device.type, "method": "gdas"} if gdas else \
                {"impl": impl_of(b), "device": device.type,
                 "unrolled": b["params"]["order"] == "second"}
            memory[(b["group"], impl_of(b))] = run_child(spec)["peak_mb"]
    return memory


def weighted_sum_floor(device, bandwidth, shapes=None, repeats=50, sets=4):
    """The fused weighted sum forward+backward (K=8, the DARTS shapes at batch 64) and the Python
    sum's, timed apart from launch overhead against the copy floor: on CUDA each call is
    captured into a CUDA graph and its replays timed with events, rotating over ``sets`` input
    sets (more than the L2 cache holds); on the CPU timed directly. ``bandwidth``: the copy
    bandwidth (bytes read plus written per second) the floor is taken at."""
    from bench_weighted_sum import (
        BATCH,
        SHAPES,
        K,
        forward_backward,
        inputs,
        python_sum,
    )

    from darts_fast import kernels

    records = []
    for shape in shapes or SHAPES:
        input_sets = [inputs(shape, device) for _ in range(sets)]
        numel = input_sets[0][0][0].numel()
        floor = (3 * K + 2) * numel * 4 / bandwidth
        row = {"shape": shape, "K": K, "batch": BATCH, "floor_s": floor}
        for name, fn in (("fused", kernels.weighted_sum), ("python_sum", python_sum)):
            calls = [functools.partial(forward_backward, fn, *args) for args in input_sets]
            row[f"{name}_s"] = _time_calls(calls, device, repeats)
        row["fused_over_floor"] = row["fused_s"] / floor
        row["speedup_over_python_sum"] = row["python_sum_s"] / row["fused_s"]
        records.append(row)
    return records


def _time_calls(calls, device, repeats):
    """Median seconds of one call, rotating over ``calls`` (see weighted_sum_floor)."""
    for call in calls:  # warm-up
        call()
    if device.type != "cuda":
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            calls[i % len(calls)]()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    graphs = []
    for call in calls:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        graphs.append(graph)
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graphs[i % len(graphs)].replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


# The targets of the step times: (what, order, ours, baseline, comparison, threshold, devices);
# ">=": a speed-up (baseline time / ours), "<=": a time ratio (ours / baseline).
TARGETS = [
    ("second-order step, fused eager vs original", "second", "fused", "reference", ">=", 2.0,
     "cuda"),
    ("second-order step, fused eager vs torch.compile of the original", "second", "fused",
     "compiled_reference", ">=", 1.3, "cuda"),
    ("second-order step, captured vs original", "second", "fused_graph", "reference", ">=", 4.0,
     "cuda"),
    ("first-order step, fused eager vs original", "first", "fused", "reference", ">=", 2.0,
     "cuda"),
    ("second-order step time, BatchNorm fold / without it", "second", "fused", "fused_unfolded",
     "<=", 1.0, "all"),
    ("second-order step time, recompute / fused without the fold", "second", "fused_recompute",
     "fused_unfolded", "<=", 1.4, "all"),
]
# Peak memory of the second-order step against the original's: (what, ours, at most).
MEMORY_TARGETS = [("BatchNorm fold", "fused", 0.65), ("recompute", "fused_recompute", 0.3)]
# MixedOp forward+backward, the fold against: (baseline, at least).
MIXED_OP_TARGETS = [("fused_unfolded", 1.2), ("compiled_reference", 1.0)]


def targets_table(records, floor_records, device_type):
    """Each target with its measured figure and whether it is met."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(what, value, op, threshold, unit="x"):
        met = value >= threshold if op == ">=" else value <= threshold
        lines.append(f"| {what} {op} {threshold}{unit} | {value:.2f}{unit} | "
                     f"{'yes' if met else 'NO'} |")

    steps = [r for r in records if r["scenario"].startswith("search step")]
    for what, order, ours, baseline, op, threshold, devices in TARGETS:
        for r in steps:
            if f" {order} order" in r["scenario"] and (r["ours"], r["baseline"]) == \
                    (ours, baseline) and devices in ("all", device_type):
                add(what, r["speedup"] if op == ">=" else 1 / r["speedup"], op, threshold)
    for what, ours, at_most in MEMORY_TARGETS:
        for r in steps:
            if " second order" in r["scenario"] and (r["ours"], r["baseline"]) == \
                    (ours, "reference") and r["peak_mb"] and r["baseline_peak_mb"]:
                add(f"second-order step, peak memory {what} / original",
                    r["peak_mb"] / r["baseline_peak_mb"], "<=", at_most)
    for r in records:
        for baseline, at_least in MIXED_OP_TARGETS:
            if r["scenario"].startswith("MixedOp") and (r["ours"], r["baseline"]) == \
                    ("fused", baseline):
                add(f"{r['scenario']}: BatchNorm fold vs {baseline}", r["speedup"], ">=",
                    at_least)
    for r in steps:
        if r["ours"] == "fused" and r["baseline"] == "compiled_reference" and \
                r["baseline_first_call_s"]:
            lines.append(f"| {r['scenario']}: torch.compile's first (compiling) step | "
                         f"{r['baseline_first_call_s']:.1f} s | - |")
        if r["ours"] == "fused_deterministic" and r["baseline"] == "reference":
            lines.append(f"| {r['scenario']}: deterministic mode, step time vs eager fused | "
                         f"{r['median_s'] / _median_of(steps, r['scenario'], 'fused'):.2f}x "
                         f"| - |")
    for r in records:
        if r["scenario"].startswith("GDAS search step") and (r["ours"], r["baseline"]) == \
                ("fused", "reference"):
            lines.append(f"| {r['scenario']}: fused vs its authors' formulation | "
                         f"{r['speedup']:.2f}x | - |")
    for r in floor_records:
        add(f"weighted sum fwd+bwd K={r['K']} {r['shape']}: vs the Python sum",
            r["speedup_over_python_sum"], ">=", 3.0)
        add(f"weighted sum fwd+bwd K={r['K']} {r['shape']}: time / copy floor",
            r["fused_over_floor"], "<=", 1.5)
    return "\n".join(lines)


def _median_of(steps, scenario, ours):
    return next(r["median_s"] for r in steps if r["scenario"] == scenario and r["ours"] == ours)


def pipeline_table(benchmarks, device):
    """Images per second of each loader against those of the fused search steps they feed."""
    from cases import PIPELINE_IMAGES, STEP_CONFIG

    batch = STEP_CONFIG[device.type]["batch"]
    lines = ["| input pipeline | images/s | search step (fused) | images/s | pipeline / step |",
             "|---|---|---|---|---|"]
    steps = {b["params"]["order"]: batch / b["stats"]["median"] for b in benchmarks
             if b["name"].startswith("test_search_step") and impl_of(b) == "fused"}
    records = []
    for b in benchmarks:
        if not b["name"].startswith("test_input_pipeline"):
            continue
        rate = PIPELINE_IMAGES / b["stats"]["median"]
        for order, step_rate in sorted(steps.items()):
            lines.append(f"| {impl_of(b)} | {rate:.0f} | {order} order, batch {batch} | "
                         f"{step_rate:.1f} | {rate / step_rate:.0f}x |")
        records.append({"loader": impl_of(b), "images_per_s": rate,
                        "step_images_per_s": steps})
    return "\n".join(lines), records


def plot(device, batches, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    results = {}
    for impl in ("reference", "fused_unfolded", "fused", "fused_recompute"):
        rows = [run_child({"impl": impl, "device": device.type, "unrolled": True, "batch": b})
                for b in batches]
        results[impl] = rows
        ax_t.plot(batches, [r["seconds"] for r in rows], marker="o", label=impl)
        ax_m.plot(batches, [r["peak_mb"] for r in rows], marker="o", label=impl)
    ax_t.set_ylabel("second-order search step (s)")
    ax_m.set_ylabel("peak memory above the model (MB)")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"search step vs batch size ({device.type})")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return results


def budget_table(device, batches, curve, budget_mb):
    """The largest batch whose second-order step fits ``budget_mb``, per implementation: the
    line through the measured peaks predicts it, and a step at that batch, run in a fresh
    process, checks it."""
    enforced = ", the budget set as the allocator limit" if device.type == "cuda" else ""
    lines = [f"Largest second-order batch within a {budget_mb:.0f} MB budget (a line fitted "
             f"through the peaks above predicts it; one step at that batch, in a fresh process, "
             f"checks it{enforced}):\n", "| implementation | MB per image | predicted batch | measured "
             "peak at it | fits |", "|---|---|---|---|---|"]
    records = []
    for impl, rows in curve.items():
        slope, intercept = np.polyfit(batches, [r["peak_mb"] for r in rows], 1)
        batch = max(1, int((budget_mb - intercept) // slope))
        result = run_child({"impl": impl, "device": device.type, "unrolled": True,
                            "batch": batch, "repeats": 1, "budget_mb": budget_mb})
        peak = result.get("peak_mb")
        # On CUDA the allocator enforced the budget (model included): no error, it fit.
        fits = peak is not None and (device.type == "cuda" or peak <= budget_mb)
        lines.append(f"| {impl} | {slope:.1f} | {batch} | "
                     f"{'out of memory' if peak is None else f'{peak:.0f} MB'} | "
                     f"{'yes' if fits else 'no'} |")
        records.append({"impl": impl, "mb_per_image": slope, "batch": batch, "peak_mb": peak})
    return "\n".join(lines) + "\n", records


def update_results_md(key, section, path=os.path.join(HERE, "RESULTS.md")):
    """Replaces the section marked ``key`` in RESULTS.md (appends it the first time)."""
    begin, end = f"<!-- {key} begin -->", f"<!-- {key} end -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="where the JSON and markdown results go (default %(default)s)")
    p.add_argument("--no-plot", action="store_true",
                   help="skip the step-versus-batch curve and the memory-budget table")
    p.add_argument("--budget-mb", type=float, default=None,
                   help="memory budget of the largest-batch table (default 2048 MB on the CPU, "
                        "24576 MB on CUDA)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    device = torch.device(args.device)
    if args.budget_mb is None:
        args.budget_mb = 2048.0 if device.type == "cpu" else 24576.0
    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)
    benchmarks = run_benchmarks(device, os.path.join(out_dir, f"pytest-{device.type}.json"))
    bandwidth = copy_bandwidth(device)
    memory = step_memory(benchmarks, device)
    text, records = table(benchmarks, bandwidth, memory)
    pipeline_text, pipeline_records = pipeline_table(benchmarks, device)
    text += ("\n\nThe command line's input pipeline alone (one pass of augmented images, batches "
             "of the step's size) against the search step it feeds:\n\n" + pipeline_text)
    records.append({"input_pipeline": pipeline_records})
    floor_records = []
    if device.type == "cuda":
        floor_records = weighted_sum_floor(device, bandwidth)
        records.append({"weighted_sum_vs_floor": floor_records})
    step_records = [r for r in records if "scenario" in r]
    text = ("Targets (float32):\n\n" + targets_table(step_records, floor_records, device.type)
            + ("\n\nThe weighted-sum rows above: one forward+backward captured in a CUDA "
               "graph, replays timed with CUDA events over 4 rotating input sets; the floor is "
               "26 tensor-sized reads and writes at the measured copy bandwidth."
               if floor_records else "") + "\n\n" + text)
    header = (f"## {device.type.upper()}: {datetime.date.today().isoformat()}, "
              f"{torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or platform.machine()}"
              f" ({os.cpu_count()} cores), torch {torch.__version__}\n\n"
              f"Command: `python benchmarks/report.py --device {device.type}"
              f"{' --no-plot' if args.no_plot else ''}`. Medians of "
              f"pytest-benchmark rounds, all cases of a table in one run. Copy bandwidth "
              f"(read + write) {bandwidth / 1e9:.1f} GB/s. Peak memory: search steps only, "
              + ("CUDA max allocated over the whole case, model and optimizer state included "
                 "(a captured step's memory pool too).\n" if device.type == "cuda" else
                 "each in a fresh process (peak RSS above the set-up model, before its first "
                 "step).\n"))
    section = header + "\n" + text
    if not args.no_plot:
        batches = args.batches or ([4, 8, 16, 32] if device.type == "cpu" else [16, 32, 64, 96])
        png = f"step_vs_batch_{device.type}.png"
        curve = plot(device, batches, os.path.join(HERE, png))
        section += (f"\n\n![step time and peak memory vs batch size]({png})\n\n"
                    "| batch | " + " | ".join(f"{i} step (s) | {i} peak (MB)" for i in curve)
                    + " |\n|---|" + "---|---|" * len(curve) + "\n")
        for k, b in enumerate(batches):
            section += f"| {b} | " + " | ".join(
                f"{curve[i][k]['seconds']:.2f} | {curve[i][k]['peak_mb']:.0f}" for i in curve) + " |\n"
        records.append({"step_vs_batch": {"batches": batches, **curve}})
        budget_text, budget_records = budget_table(device, batches, curve, args.budget_mb)
        section += "\n" + budget_text
        records.append({"memory_budget": budget_records})
    with open(os.path.join(out_dir, f"report-{device.type}.json"), "w") as f:
        json.dump({"device": device.type, "torch": torch.__version__,
                   "bandwidth_bytes_per_s": bandwidth, "results": records}, f, indent=2)
    with open(os.path.join(out_dir, f"report-{device.type}.md"), "w") as f:
        f.write(section + "\n")
    update_results_md(device.type, section)
    print(section)


if __name__ == "__main__":
    main()
