"""The report's search-step cases on the CPU, on the machine's own oneDNN code path and on its
AVX2 path (``ONEDNN_MAX_CPU_ISA=AVX2``: what AMD and older Intel CPUs run), side by side in one
run, with a profile of one step of each (the operators' own CPU time).

Every case runs in a fresh process (``measure.child``: a warm-up step, then the median of
``--rounds`` steps); the impls and paths alternate within each of ``--repeats`` repetitions, so
the machine's drift hits them alike; ratios are per repetition, reported as median [min-max].

    python benchmarks/isa.py [--repeats 4] [--rounds 3] [--top 12]

Prints markdown tables and writes them into RESULTS.md (their own section).
"""
import argparse
import datetime
import json
import os
import platform
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cases import STEP_CONFIG, search_step  # noqa: E402
from family import spread  # noqa: E402
from measure import REPORT, run_child  # noqa: E402
from tables import update_results_md  # noqa: E402

PATHS = {"native": None, "AVX2": "AVX2"}
IMPLS = ["reference", "fused"]
ORDERS = {"second": True, "first": False}


def env_of(path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if PATHS[path]:
        env["ONEDNN_MAX_CPU_ISA"] = PATHS[path]
    return env


def measure(repeats, rounds):
    """{(order, path): {impl: [seconds per repetition]}}."""
    results = {(order, path): {impl: [] for impl in IMPLS} for order in ORDERS for path in PATHS}
    for repetition in range(repeats):
        for order, unrolled in ORDERS.items():
            for path in PATHS:
                for impl in IMPLS:
                    spec = {"impl": impl, "device": "cpu", "unrolled": unrolled,
                            "repeats": rounds}
                    seconds = run_child(spec, REPORT, env_of(path))["seconds"]
                    results[order, path][impl].append(seconds)
                    print(f"repetition {repetition + 1}/{repeats} {order} order {path} {impl}: "
                          f"{seconds:.3f} s", file=sys.stderr)
    return results


def profile_child(spec):
    """One profiled step after a warm-up step: each operator's own CPU time (ms) and calls."""
    step = search_step(spec["impl"], "cpu", spec["unrolled"])
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    ops = {e.key: [e.self_cpu_time_total / 1e3, e.count] for e in prof.key_averages()}
    print(json.dumps(ops))


def profiles(top):
    """The second-order step's ``top`` operators by own CPU time, for each impl and path."""
    columns = {}
    for impl in IMPLS:
        for path in PATHS:
            out = run_child({"impl": impl, "unrolled": True}, __file__, env_of(path))
            columns[impl, path] = out
    total = {}
    for ops in columns.values():
        for name, (ms, _) in ops.items():
            total[name] = total.get(name, 0.0) + ms
    names = sorted(total, key=total.get, reverse=True)[:top]
    header = " | ".join(f"{impl} {path} ms (calls)" for impl, path in columns)
    lines = [f"| operator | {header} |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for ops in columns.values():
            ms, calls = ops.get(name, (0.0, 0))
            cells.append(f"{ms:.0f} ({calls})")
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    sums = [sum(ms for ms, _ in ops.values()) for ops in columns.values()]
    lines.append(f"| all operators | {' | '.join(f'{s:.0f}' for s in sums)} |")
    return "\n".join(lines)


def table(results):
    lines = ["| step | path | original (s) | darts_fast (s) | speed-up |", "|---|---|---|---|---|"]
    for (order, path), by_impl in results.items():
        ref, fused = by_impl["reference"], by_impl["fused"]
        speed = [r / f for r, f in zip(ref, fused)]
        lines.append(f"| {order} order | {path} | {spread(ref, '{:.3f}')} | "
                     f"{spread(fused, '{:.3f}')} | {spread(speed, '{:.2f}x')} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--child", help=argparse.SUPPRESS)
    options = p.parse_args()
    if options.child:
        return profile_child(json.loads(options.child))
    results = measure(options.repeats, options.rounds)
    profile = profiles(options.top)
    config = STEP_CONFIG["cpu"]
    command = (f"python benchmarks/isa.py --repeats {options.repeats} --rounds "
               f"{options.rounds} --top {options.top}")
    section = (f"## The search step on the AVX2 path (CPU)\n\n"
               f"{datetime.date.today()}, {platform.machine()} CPU, "
               f"{torch.get_num_threads()} threads, torch {torch.__version__}: `{command}`. "
               f"The report's step cases: Network({config['C']}, 10, {config['layers']}), batch "
               f"{config['batch']}, float32, the original algorithm against darts_fast, on the "
               f"machine's own oneDNN path and with `ONEDNN_MAX_CPU_ISA=AVX2`. Median of "
               f"{options.rounds} steps per case and process, over {options.repeats} "
               f"repetitions: median [min-max].\n\n{table(results)}\n\n"
               f"One second-order step profiled after a warm-up step, the operators with the "
               f"most own CPU time (ms, calls):\n\n{profile}\n")
    print(section)
    update_results_md("isa-cpu", section)


if __name__ == "__main__":
    main()
