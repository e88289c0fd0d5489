"""Runs the benchmark set, prints fused-versus-baseline ratios (speed and memory), writes JSON and
a markdown table, updates benchmarks/RESULTS.md and plots step time and peak memory against
batch size.

    python benchmarks/report.py [--device cpu|cuda] [--batches 4 8 16 32] [--no-plot]
                                [--budget-mb MB] [--out DIR]
"""
import argparse
import datetime
import json
import os
import platform

import torch
from measure import (
    child,
    copy_bandwidth,
    run_benchmarks,
    step_memory,
    weighted_sum_floor,
)
from step_vs_batch import budget_table, plot
from tables import pipeline_table, table, targets_table, update_results_md

HERE = os.path.dirname(os.path.abspath(__file__))


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
    machine = torch.cuda.get_device_name() if device.type == "cuda" else \
        platform.processor() or platform.machine()
    header = (f"## {device.type.upper()}: {datetime.date.today().isoformat()}, {machine}"
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
                f"{curve[i][k]['seconds']:.2f} | {curve[i][k]['peak_mb']:.0f}" for i in curve
            ) + " |\n"
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
