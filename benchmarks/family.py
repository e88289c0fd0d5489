"""The DARTS family on the fused core against its authors' formulations, side by side in one run:

  * PC-DARTS' partial-channel mixed op, forward + backward, at its search shapes (batch 256, k 4;
    a normal edge of the first cells, 16 channels at 32x32, and a reduction edge, 32 channels at
    32x32, stride 2): the authors' Python implementation (``reference``), torch.compile of it,
    and darts_fast's op (weighted sum, concatenation and shuffle in one kernel);
  * a PC-DARTS search step (first order, the authors' default, and second order) and a GDAS
    search step (weights first, then the alphas, first order): the authors' formulation
    (``darts_fast.reference``) against darts_fast's networks, SearchStep and Architect;
  * a P-DARTS stage-3 search step, and the cost of the dominant Hessian eigenvalue against one
    search step (``guard_cases.py``);
  * DARTS' recurrent search (``rnn_cases.py``): one node of the search cell forward + backward
    (the authors' loop, torch.compile of it, ``kernels.rnn_node``) and the second-order search
    step (the authors' model and architect against darts_fast's, captured on a GPU).

Every case runs in a fresh process (so the peak resident memory is its own): a warm-up call
(after the compiling call for torch.compile), then the median of ``--rounds`` timed calls; the
peak is the memory above that before the warm-up call (``measure.timed_peak``; not on the CPU for
torch.compile, whose compilation sets the process's peak). The impls of a
case alternate within each of ``--repeats`` repetitions, so the machine's drift hits them alike;
ratios are per repetition, reported as median [min-max].

    python benchmarks/family.py [--device cpu|cuda] [--repeats 3] [--rounds 3]

Prints markdown tables and writes them into RESULTS.md (their own section per device).
"""
import datetime
import json
import os
import statistics
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cases import gdas_search_step, search_step, synchronized  # noqa: E402
from measure import family_options, machine, run_child, timed_peak  # noqa: E402
from guard_cases import PDARTS_CONFIG, eigenvalue, pdarts_step  # noqa: E402
from rnn_cases import RNN_CONFIG, node, search_step as rnn_search_step  # noqa: E402
from tables import update_results_md  # noqa: E402

from darts_fast import reference  # noqa: E402
from darts_fast.methods import pc_darts

# The step's network on each device: on the CPU a smaller one than the authors' C=16, 8 layers,
# batch 256, whose reference steps take minutes there.
STEP_CONFIG = {"cpu": dict(C=16, layers=5, batch=32), "cuda": dict(C=16, layers=8, batch=256)}
PC_ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4,
                                arch_weight_decay=1e-3)

# case -> (impls, the baseline, the target: (ours / baseline at least, peak at most), or a target
# per device). The mixed
# op runs on NCHW inputs (the authors' layout) and on channels_last ones (the layout darts_fast's
# networks run in on the CPU), each impl against the authors' code on the same input.
OP_IMPLS = ["reference", "compiled_reference", "fused", "reference_channels_last",
            "fused_channels_last"]
CASES = {
    "pc_mixed_op_stride1": (OP_IMPLS, "reference", (1.5, None)),
    "pc_mixed_op_stride2": (OP_IMPLS, "reference", (1.5, None)),
    "pc_step_first": (["reference", "fused"], "reference", (1.3, 0.8)),
    "pc_step_second": (["reference", "fused"], "reference", (1.3, 0.8)),
    "gdas_step": (["reference", "fused"], "reference", (1.3, None)),
    "pdarts_step": (["reference", "fused"], "reference", (1.3, 0.8)),
    # No target: how many search steps one eigenvalue costs (a ratio below 1).
    "eigenvalue": (["search_step", "eigenvalue"], "search_step", (None, None)),
    "rnn_node": (["reference", "compiled_reference", "fused"], "reference", (None, None)),
    # The fused node keeps none of the four activation outputs per edge that autograd keeps for
    # the authors' loop; on a GPU, where the cell is launch-bound, the step is captured.
    "rnn_step_second": (["reference", "fused"], "reference",
                        {"cpu": (1.3, 0.5), "cuda": (4.0, None)}),
}
COLLAPSE_CASES = ("pdarts_step", "eigenvalue")
DESCRIPTION = {
    "pc_mixed_op_stride1": "PC-DARTS mixed op fwd+bwd, x 256x16x32x32, k 4, stride 1",
    "pc_mixed_op_stride2": "PC-DARTS mixed op fwd+bwd, x 256x32x32x32, k 4, stride 2",
    "pc_step_first": "PC-DARTS search step, first order",
    "pc_step_second": "PC-DARTS search step, second order",
    "gdas_step": "GDAS search step (weights, then alphas; first order)",
    "pdarts_step": "P-DARTS stage-3 search step, 17 cells, 3 candidates per edge, first order",
    "eigenvalue": "dominant Hessian eigenvalue (Lanczos) against a second-order DARTS step",
    "rnn_node": "DARTS recurrent node fwd+bwd, 8 predecessors, 300 units",
    "rnn_step_second": "DARTS recurrent search step, second order, bptt 35, 300 units",
}


def pc_mixed_op(impl, device, stride, batch=256):
    C = 16 if stride == 1 else 32
    torch.manual_seed(0)
    if impl.startswith("fused"):
        op = pc_darts.PartialChannelMixedOp(C, stride, k=4).to(device)
    else:
        op = reference.PartialChannelMixedOp(C, stride, k=4).to(device)
        if impl == "compiled_reference":
            op = torch.compile(op)
    layout = torch.channels_last if impl.endswith("channels_last") else torch.contiguous_format
    x = torch.randn(batch, C, 32, 32, device=device).contiguous(memory_format=layout)
    x.requires_grad_()
    w = torch.softmax(torch.randn(8, device=device), 0).requires_grad_()
    g = torch.randn(batch, C, 32 // stride, 32 // stride, device=device)
    params = list(op.parameters())

    def run():
        return torch.autograd.grad(op(x, w), [x, w, *params], g)

    return synchronized(run, device)


def pc_step(impl, device, unrolled, config):
    """The authors' train_search.py step: architect step, then the weight step (SGD, clip 5)."""
    return search_step(impl, device, unrolled, config=config,
                       networks=(pc_darts.PCNetwork, reference.PCNetwork), args=PC_ARGS)


def build(case, impl, device, config):
    if case.startswith("rnn"):
        rnn_config = {**RNN_CONFIG[device.type], **config.get("rnn", {})}
        return (node if case == "rnn_node" else rnn_search_step)(impl, device, rnn_config)
    if case.startswith("pc_mixed_op"):
        return pc_mixed_op(impl, device, stride=int(case[-1]), batch=config.get("op_batch", 256))
    if case.startswith("pc_step"):
        return pc_step(impl, device, case.endswith("second"), config)
    if case == "pdarts_step":
        return pdarts_step(impl, device, {**PDARTS_CONFIG[device.type], **config.get("pdarts", {})})
    if case == "eigenvalue":
        return eigenvalue(impl, device, config)
    return gdas_search_step(impl, device, config=config)


def child(spec):
    """One case in this (fresh) process: the timed calls and the peak memory, as JSON."""
    device = torch.device(spec["device"])
    run = build(spec["case"], spec["impl"], device, spec["config"])  # synchronizing itself
    compiled = spec["impl"] == "compiled_reference"
    if compiled:
        run()  # compiles the forward and the backward
    result = timed_peak(run, device, spec["rounds"])
    if compiled and device.type == "cpu":
        result["peak_mb"] = None  # the peak resident size is the compiler's, not the calls'
    print(json.dumps(result))


def spread(values, fmt):
    values = sorted(values)
    return f"{fmt.format(statistics.median(values))} [{fmt.format(values[0])}-" \
           f"{fmt.format(values[-1])}]"


def measure(cases, device, config, repeats, rounds):
    """{case: {impl: [result per repetition]}}, the impls alternating within a repetition."""
    results = {case: {impl: [] for impl in CASES[case][0]} for case in cases}
    for repetition in range(repeats):
        for case in cases:
            for impl in CASES[case][0]:
                spec = {"case": case, "impl": impl, "device": str(device), "config": config,
                        "rounds": rounds}
                results[case][impl].append(run_child(spec, __file__))
                print(f"repetition {repetition + 1}/{repeats} {case} {impl}: "
                      f"{results[case][impl][-1]}", file=sys.stderr)
    return results


def baseline_of(case, impl):
    """The authors' code on the same input as ``impl``."""
    return "reference_channels_last" if impl.endswith("channels_last") else CASES[case][1]


def target(case, device_type):
    """(speed at least, peak at most) of ``case`` on ``device_type``; None: none set."""
    goal = CASES[case][2]
    return goal[device_type] if isinstance(goal, dict) else goal


def tables(results, device_type="cpu"):
    rows = ["| case | impl | time (s) | speedup over the authors' | peak memory (MB) | "
            "peak / the authors' |", "|---|---|---|---|---|---|"]
    targets = ["| target | measured | met |", "|---|---|---|"]
    for case, by_impl in results.items():
        at_least, peak_at_most = target(case, device_type)
        for impl, runs in by_impl.items():
            base = by_impl[baseline_of(case, impl)]
            speed = [b["seconds"] / r["seconds"] for b, r in zip(base, runs)]
            memory = [r["peak_mb"] / b["peak_mb"] for b, r in zip(base, runs)
                      if r["peak_mb"] is not None and b["peak_mb"]]
            peaks = [r["peak_mb"] for r in runs if r["peak_mb"] is not None]
            rows.append(f"| {DESCRIPTION[case]} | {impl} | "
                        f"{spread([r['seconds'] for r in runs], '{:.3f}')} | "
                        f"{spread(speed, '{:.2f}x')} | "
                        f"{spread(peaks, '{:.0f}') if peaks else 'n/a'} | "
                        f"{spread(memory, '{:.2f}') if memory else 'n/a'} |")
            if not impl.startswith("fused") or at_least is None:
                continue
            what = f"{DESCRIPTION[case]}{', channels_last' if impl != 'fused' else ''}"
            targets.append(f"| {what}: speed >= {at_least}x | {spread(speed, '{:.2f}x')} | "
                           f"{'yes' if statistics.median(speed) >= at_least else 'NO'} |")
            if peak_at_most is not None and memory:
                met = statistics.median(memory) <= peak_at_most
                targets.append(f"| {what}: peak memory <= {peak_at_most}x | "
                               f"{spread(memory, '{:.2f}x')} | {'yes' if met else 'NO'} |")
    return "\n".join(rows), "\n".join(targets)


def _section(case):
    return "rnn" if case.startswith("rnn") else "collapse" if case in COLLAPSE_CASES \
        else "family"


def _rnn_text(config):
    return (f"{config['nhid']} units, batch {config['batch']}, bptt {config['bptt']}, "
            f"{config['ntoken']} words")


def main():
    options = family_options(__doc__, CASES)
    if options.child:
        return child(json.loads(options.child))
    device = torch.device(options.device)
    config = STEP_CONFIG[device.type]
    results = measure(options.cases, device, config, options.repeats, options.rounds)
    name = machine(device)
    # Each group its own section, so that measuring one leaves the others' figures in place.
    pdarts = PDARTS_CONFIG[device.type]
    for key, title, shapes in (
            ("family", "The DARTS family against its authors' code",
             f"search steps: C={config['C']}, {config['layers']} layers, batch "
             f"{config['batch']}"),
            ("collapse", "P-DARTS and the collapse guards against their authors' code",
             f"P-DARTS' step: C={pdarts['C']}, {pdarts['layers']} layers, batch "
             f"{pdarts['batch']}, skip dropout 0.7; the eigenvalue and the DARTS step: "
             f"C={config['C']}, {config['layers']} layers, batch {config['batch']}"),
            ("rnn", "DARTS' recurrent search against its authors' code",
             _rnn_text(RNN_CONFIG[device.type]))):
        group = {case: r for case, r in results.items() if _section(case) == key}
        if not group:
            continue
        table, targets = tables(group, device.type)
        command = (f"python benchmarks/family.py --device {device.type} --repeats "
                   f"{options.repeats} --rounds {options.rounds} --cases {' '.join(group)}")
        section = (f"## {title} ({device.type})\n\n"
                   f"{datetime.date.today()}, {name}, torch {torch.__version__}: `{command}`. "
                   f"{shapes[0].upper()}{shapes[1:]}, float32. Median of {options.rounds} timed "
                   f"calls per case and process, over {options.repeats} repetitions: median "
                   f"[min-max].\n\n{table}\n\n{targets}\n")
        print(section)
        update_results_md(f"{key}-{device.type}", section)


if __name__ == "__main__":
    main()
