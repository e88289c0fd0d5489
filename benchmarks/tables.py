"""The report's tables (each of ours against each baseline, the targets, the input pipeline)
and the writer of their sections in RESULTS.md.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

BASELINE_ORDER = ["reference", "compiled_reference", "fused_unfolded", "python_sum",
                  "compiled_python_sum", "python_loop", "foreach"]
OURS = ["fused", "fused_recompute", "fused_graph", "fused_deterministic"]


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
    from cases import STEP_CONFIG
    from pipeline_cases import PIPELINE_IMAGES

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
