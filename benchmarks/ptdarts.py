"""pt.darts' second-order architecture step on darts_fast against pt.darts' own formulation,
side by side: ``Architect.unrolled_backward`` of ``darts_fast.compat.ptdarts`` on its
``SearchCNNController`` (``adapter``: fused mixed ops, multi-tensor virtual step and finite
difference, no copy of the network) against the plain-PyTorch transcription of pt.darts
(``ptdarts``: ``tests/ptdarts_transcription.py``, its ``v_net`` deep copy included), both with
the corrected finite difference.

Each impl runs in a fresh process (``measure.timed_peak``): the median of ``--rounds`` timed
calls after a warm-up one, and the peak memory above that before the warm-up call, which builds
the architect (pt.darts' deep copy counts); on the CPU the peak resident size. The impls
alternate within each of ``--repeats`` repetitions; the speed-up is taken per repetition;
median [min-max] over the repetitions.

    python benchmarks/ptdarts.py [--device cpu|cuda] [--repeats 3] [--rounds 3]

Prints a markdown table.
"""
import datetime
import json
import os
import statistics
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "tests"))  # the transcription of pt.darts
from family import spread  # noqa: E402
from measure import family_options, machine, run_child, timed_peak  # noqa: E402

# pt.darts' search configuration on CUDA (C=16, 8 layers, batch 64, 32x32 CIFAR-10 images); on
# the CPU a smaller network, whose pt.darts step takes seconds there.
CONFIG = {"cpu": dict(C=8, layers=5, batch=8, size=32),
          "cuda": dict(C=16, layers=8, batch=64, size=32)}
IMPLS = ["ptdarts", "adapter"]
CASES = {"unrolled_backward": (IMPLS, "ptdarts")}


def unrolled_step(impl, device, config):
    """A ``run()`` of one ``unrolled_backward`` of ``impl`` after a weight step (so that the
    virtual step reads SGD momentum buffers); the first call builds the architect. ``impl``'s
    network, data and optimiser come from the same seeds for every impl."""
    if impl == "adapter":
        from darts_fast.compat import ptdarts as module
        architect_options = {}
    else:
        import ptdarts_transcription as module
        architect_options = {"hessian": "corrected"}
    torch.manual_seed(0)
    model = module.SearchCNNController(3, config["C"], 10, config["layers"],
                                       nn.CrossEntropyLoss()).to(device)
    g = torch.Generator().manual_seed(1)
    trn_X, val_X = (torch.randn(config["batch"], 3, config["size"], config["size"], generator=g)
                    .to(device) for _ in range(2))
    trn_y, val_y = (torch.randint(0, 10, (config["batch"],), generator=g).to(device)
                    for _ in range(2))
    w_optim = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    # Momentum buffers from a step on random gradients: no pass before the measured calls, whose
    # freed memory the process would keep and the calls reuse unseen.
    for w in model.weights():
        w.grad = 1e-3 * torch.randn(w.shape, generator=g).to(device)
    w_optim.step()
    w_optim.zero_grad(set_to_none=True)
    architect = []

    def run():
        if not architect:
            architect.append(module.Architect(model, 0.9, 3e-4, **architect_options))
        architect[0].unrolled_backward(trn_X, trn_y, val_X, val_y, 0.025, w_optim)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def child(spec):
    device = torch.device(spec["device"])
    run = unrolled_step(spec["impl"], device, spec["config"])
    print(json.dumps(timed_peak(run, device, spec["rounds"])))


def measure(device, config, repeats, rounds):
    """{impl: [result per repetition]}, the impls alternating within a repetition."""
    results = {impl: [] for impl in IMPLS}
    for repetition in range(repeats):
        for impl in IMPLS:
            spec = {"impl": impl, "device": str(device), "config": config, "rounds": rounds}
            results[impl].append(run_child(spec, __file__))
            print(f"repetition {repetition + 1}/{repeats} {impl}: {results[impl][-1]}",
                  file=sys.stderr)
    return results


def table(results):
    base = results["ptdarts"]
    rows = ["| impl | time per step (s) | speed-up | peak memory (MB) | peak / ptdarts' |",
            "|---|---|---|---|---|"]
    for impl, runs in results.items():
        speed = [b["seconds"] / r["seconds"] for b, r in zip(base, runs)]
        memory = [r["peak_mb"] / b["peak_mb"] for b, r in zip(base, runs) if b["peak_mb"] > 0]
        rows.append(f"| {impl} | {spread([r['seconds'] for r in runs], '{:.3f}')} | "
                    f"{spread(speed, '{:.2f}x')} | "
                    f"{spread([r['peak_mb'] for r in runs], '{:.0f}')} | "
                    f"{spread(memory, '{:.2f}') if memory else 'n/a'} |")
    return "\n".join(rows)


def main():
    options = family_options(__doc__, CASES)
    if options.child:
        return child(json.loads(options.child))
    device = torch.device(options.device)
    config = CONFIG[device.type]
    results = measure(device, config, options.repeats, options.rounds)
    command = (f"python benchmarks/ptdarts.py --device {device.type} --repeats "
               f"{options.repeats} --rounds {options.rounds}")
    speed = statistics.median(b["seconds"] / r["seconds"]
                              for b, r in zip(results["ptdarts"], results["adapter"]))
    print(f"## pt.darts' unrolled_backward: darts_fast.compat.ptdarts against pt.darts "
          f"({device.type})\n\n{datetime.date.today()}, {machine(device)}, torch "
          f"{torch.__version__}: `{command}`. C={config['C']}, {config['layers']} layers, "
          f"batch {config['batch']}, {config['size']}x{config['size']} images, float32. Median "
          f"of {options.rounds} timed calls per process, over {options.repeats} repetitions: "
          f"median [min-max].\n\n{table(results)}\n\nadapter: {speed:.2f}x pt.darts' speed.")


if __name__ == "__main__":
    main()
