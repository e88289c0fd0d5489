"""The one-shot family on darts_fast against the all-candidates formulations, side by side:

  * a single-path supernet weight step (SPOS, random search with weight sharing): darts_fast's
    SinglePathNetwork, which computes the path's candidates alone through the fused op
    (``fused``), against the masked all-candidates network of randomNAS' port (``masked_all``:
    DARTS' network under one-hot weights), torch.compile of it (``compiled_masked_all``, on
    CUDA only: compiling the whole network takes over 7 minutes on the CPU) and NNI's stacked
    edge (``stacked``);
  * a ProxylessNAS architecture step (two-path mode): ProxylessArchitect on ProxylessNetwork
    against the authors' MixedEdge transcribed over the original modules (``reference``);
  * a generation of SPOS' evolution (50 paths, each scored by PathScorer: BatchNorm statistics
    recalibrated, then top-1 on validation batches), as candidates scored per second, on
    SinglePathNetwork and on the masked all-candidates network.

The cases are in ``one_shot_cases.py``; they are measured as ``family.py`` measures: every case
in a fresh process (a warm-up call after the compiling call for torch.compile, the median of
``--rounds`` timed calls, one for the evolution, the peak memory above that before the warm-up
call), the impls of a case alternating within each of ``--repeats`` repetitions, ratios per
repetition, reported as median [min-max].

    python benchmarks/one_shot.py [--device cpu|cuda] [--repeats 3] [--rounds 3] [--cases ...]

Prints markdown tables and writes them into RESULTS.md (their own section per device).
"""
import datetime
import json
import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from family import spread  # noqa: E402
from measure import family_options, machine, run_child, timed_peak  # noqa: E402
from one_shot_cases import evolution_generation, proxyless_step, single_path_step  # noqa: E402
from tables import update_results_md  # noqa: E402

# The networks of each device: on the CPU a smaller step than DARTS' search configuration (C=16,
# 8 layers, batch 64), whose masked steps take seconds there; the evolution's supernet is small
# on both, so that a generation of the masked network takes seconds, not minutes.
EVOLUTION = dict(C=8, layers=5, batch=32, recalibration=2, validation=2, population=50)
CONFIG = {"cpu": dict(C=16, layers=5, batch=32, evolution=EVOLUTION),
          "cuda": dict(C=16, layers=8, batch=64, evolution=EVOLUTION)}

# case -> (impls, the baseline, the unit of a call's throughput and how many a call does).
STEP_IMPLS = ["masked_all", "compiled_masked_all", "stacked", "fused"]
CASES = {
    "single_path_step": (STEP_IMPLS, "masked_all", "steps", 1),
    "proxyless_step": (["reference", "fused"], "reference", "steps", 1),
    "evolution_generation": (["masked", "fused"], "masked", "candidates",
                             EVOLUTION["population"]),
}
# case -> (its name in the targets' table, fused's speed-up over the baseline at least).
TARGETS = {"single_path_step": ("single-path step", 3.0)}
BUILD = {"single_path_step": single_path_step, "proxyless_step": proxyless_step,
         "evolution_generation": evolution_generation}
DESCRIPTION = {
    "single_path_step": "single-path supernet weight step (SGD, clip 5), one random path",
    "proxyless_step": "ProxylessNAS architecture step, two-path mode",
    "evolution_generation": "SPOS evolution generation: 50 paths scored (2 recalibration, "
                            "2 validation batches of 32; C=8, 5 layers)",
}
# torch.compile of the whole masked network compiles for more than 7 minutes on the CPU.
SKIPPED = {"cpu": {"compiled_masked_all"}, "cuda": set()}
# Timed calls per process at most: a generation is 200 forward passes (minutes on the CPU for
# the masked network), one timed generation after the warm-up one.
ROUNDS = {"evolution_generation": 1}


def impls(case, device_type):
    return [impl for impl in CASES[case][0] if impl not in SKIPPED[device_type]]


def child(spec):
    """One case in this (fresh) process: the timed calls and the peak memory, as JSON."""
    device = torch.device(spec["device"])
    run = BUILD[spec["case"]](spec["impl"], device, spec["config"])
    compiled = spec["impl"].startswith("compiled")
    if compiled:
        run()  # compiles the forward and the backward
    result = timed_peak(run, device, spec["rounds"])
    if compiled and device.type == "cpu":
        result["peak_mb"] = None  # the peak resident size is the compiler's, not the calls'
    print(json.dumps(result))


def measure(cases, device, config, repeats, rounds):
    """{case: {impl: [result per repetition]}}, the impls alternating within a repetition."""
    results = {case: {impl: [] for impl in impls(case, device.type)} for case in cases}
    for repetition in range(repeats):
        for case in cases:
            for impl in results[case]:
                spec = {"case": case, "impl": impl, "device": str(device), "config": config,
                        "rounds": min(rounds, ROUNDS.get(case, rounds))}
                results[case][impl].append(run_child(spec, __file__))
                print(f"repetition {repetition + 1}/{repeats} {case} {impl}: "
                      f"{results[case][impl][-1]}", file=sys.stderr)
    return results


def tables(results):
    """The table of every case and impl (time, throughput, speed-up over the case's baseline,
    peak memory and its ratio) and the targets' table."""
    rows = ["| case | impl | time (s) | throughput | speed-up | peak memory (MB) | "
            "peak / baseline's |", "|---|---|---|---|---|---|---|"]
    targets = ["| target | measured | met |", "|---|---|---|"]
    for case, by_impl in results.items():
        _, baseline, unit, per_call = CASES[case]
        base = by_impl[baseline]
        for impl, runs in by_impl.items():
            speed = [b["seconds"] / r["seconds"] for b, r in zip(base, runs)]
            memory = [r["peak_mb"] / b["peak_mb"] for b, r in zip(base, runs)
                      if r["peak_mb"] is not None and b["peak_mb"]]
            peaks = [r["peak_mb"] for r in runs if r["peak_mb"] is not None]
            rate = [per_call / r["seconds"] for r in runs]
            rows.append(f"| {DESCRIPTION[case]} | {impl} | "
                        f"{spread([r['seconds'] for r in runs], '{:.3f}')} | "
                        f"{spread(rate, '{:.1f}')} {unit}/s | "
                        f"{spread(speed, '{:.2f}x')} over {baseline} | "
                        f"{spread(peaks, '{:.0f}') if peaks else 'n/a'} | "
                        f"{spread(memory, '{:.2f}') if memory else 'n/a'} |")
            if impl == "fused" and case in TARGETS:
                name, at_least = TARGETS[case]
                met = statistics.median(speed) >= at_least
                targets.append(f"| {name}: fused >= {at_least:g}x {baseline} | "
                               f"{spread(speed, '{:.2f}x')} | {'yes' if met else 'NOT met'} |")
    return "\n".join(rows), "\n".join(targets)


def main():
    options = family_options(__doc__, CASES)
    if options.child:
        return child(json.loads(options.child))
    device = torch.device(options.device)
    config = CONFIG[device.type]
    results = measure(options.cases, device, config, options.repeats, options.rounds)
    name = machine(device)
    table, targets = tables(results)
    command = (f"python benchmarks/one_shot.py --device {device.type} --repeats "
               f"{options.repeats} --rounds {options.rounds} --cases {' '.join(options.cases)}")
    skipped = sorted(SKIPPED[device.type])
    note = (f" Not run on this device: {', '.join(skipped)} (torch.compile of the whole "
            f"masked network compiles for more than 7 minutes on the CPU)." if skipped else "")
    section = (f"## One-shot family against the all-candidates formulations ({device.type})\n\n"
               f"{datetime.date.today()}, {name}, torch {torch.__version__}: `{command}`. "
               f"Steps: C={config['C']}, {config['layers']} layers, batch {config['batch']}, "
               f"32x32 images, float32; a fresh random path (or ProxylessNAS pair draw) per "
               f"call, the same for every impl. Median of {options.rounds} timed calls per case "
               f"and process (the evolution: one timed generation after a warm-up one), over "
               f"{options.repeats} repetitions: median [min-max].{note}\n\n"
               f"{table}\n\n{targets}\n")
    print(section)
    update_results_md(f"one-shot-{device.type}", section)


if __name__ == "__main__":
    main()
