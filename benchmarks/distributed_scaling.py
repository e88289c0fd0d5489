"""Scaling of the fused search step over processes (torch.distributed: gloo on CPUs, NCCL on GPUs).

Side by side in one run, Network(8, 10, 5) on 32x32 images, float32, SearchStep eagerly:
  * ``plain``: one process, no process group (the step as one process runs it);
  * ``world 1``: one process through the distributed code path (process group, DDP, the
    architect's all-reduces): its cost over ``plain`` is the price of that path;
  * ``world N``: N processes, each on its shard. Weak scaling: every process steps on
    ``--batch`` images (N times the images per step); strong scaling: the ``N * --batch`` images
    of one plain step split over the N processes.
On a CPU the cores are split between the processes (one process gets them all), so the
comparison is between ways to use the same machine. Each process also counts the bytes it
all-reduces in one step (DDP's gradient buckets through a counting communication hook, the
architect's and the step's own all-reduces) against the bytes of the weights.

    python benchmarks/distributed_scaling.py [--device cpu|cuda] [--worlds 1 2] [--batch 16]

Prints a markdown table and writes it into RESULTS.md (its own section per device).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tables import update_results_md  # noqa: E402

import darts_fast  # noqa: E402

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)


def build(device, group, batch):
    torch.manual_seed(0)
    model = darts_fast.Network(8, 10, 5, nn.CrossEntropyLoss()).to(device)
    stepped = model
    if group is not None:
        stepped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    architect = darts_fast.Architect(stepped, ARGS)
    step = darts_fast.SearchStep(stepped, architect, optimizer, grad_clip=5.0, unrolled=True,
                                 cuda_graph=False)
    g = torch.Generator().manual_seed(1 + (dist.get_rank() if group is not None else 0))
    data = [torch.randn(batch, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
            torch.randn(batch, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device)]
    return model, stepped, step, data


def time_steps(step, data, device, group, warmup, repeats):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if group is not None:
            dist.barrier(group)
    for _ in range(warmup):
        step(*data, 0.025)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step(*data, 0.025)
        sync()
        times.append(time.perf_counter() - start)
    return times


def count_bytes(model, stepped, step, data):
    """Bytes this rank all-reduces in one second-order search step, by origin."""
    counted = {"ddp": 0, "architect and step": 0}

    def hook(state, bucket):
        counted["ddp"] += bucket.buffer().numel() * bucket.buffer().element_size()
        return default_hooks.allreduce_hook(state, bucket)

    stepped.register_comm_hook(None, hook)
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        counted["architect and step"] += tensor.numel() * tensor.element_size()
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        step(*data, 0.025)
    finally:
        dist.all_reduce = original
    counted["architect and step"] -= counted["ddp"]  # the hook's all-reduce went through both
    counted["weights"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return counted


def worker(rank, world, device_type, batch, warmup, repeats, init_file, out_file, distributed):
    # As the command line: buffers stay per rank; DDP copies the few gradients that channels_last
    # activations give other strides (in size-1 dimensions) into its buckets.
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
    warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
    threads = max(1, (os.cpu_count() or 1) // world) if device_type == "cpu" else 1
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = None
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
        group = dist.group.WORLD
    try:
        model, stepped, step, data = build(device, group, batch)
        times = time_steps(step, data, device, group, warmup, repeats)
        counted = count_bytes(model, stepped, step, data) if distributed else None
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"times": times, "bytes": counted, "threads": threads}, f)
    finally:
        if distributed:
            dist.destroy_process_group()


def measure(world, device_type, batch, warmup, repeats, distributed=True):
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out.json")
        mp.spawn(worker, nprocs=world, join=True,
                 args=(world, device_type, batch, warmup, repeats,
                       os.path.join(folder, "init"), out, distributed))
        with open(out) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=16, help="images per process and step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.device == "cuda" and max(args.worlds) > torch.cuda.device_count():
        p.error(f"--worlds {max(args.worlds)}: only {torch.cuda.device_count()} GPU(s)")
    run = {}
    largest = max(args.worlds)
    for name, world, batch, distributed in (
            [("plain", 1, args.batch, False)]
            + [(f"world {w}", w, args.batch, True) for w in args.worlds]
            + ([("plain, whole batch", 1, largest * args.batch, False)] if largest > 1 else [])):
        run[name] = measure(world, args.device, batch, args.warmup, args.repeats, distributed)
        run[name]["world"], run[name]["batch"] = world, batch
        print(f"{name}: median {statistics.median(run[name]['times']):.3f} s", flush=True)
    plain = statistics.median(run["plain"]["times"])
    rows = []
    for name, r in run.items():
        t = statistics.median(r["times"])
        images = r["world"] * r["batch"]
        rows.append(f"| {name} | {r['world']} x {r['threads']} | {r['batch']} | {images} | "
                    f"{t:.3f} ({min(r['times']):.3f}-{max(r['times']):.3f}) | "
                    f"{images / t:.1f} | {t / plain:.2f}x |")
    text = ("| run | processes x threads | images per process | images per step | step s, "
            "median (min-max) | images/s | time vs plain |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows))
    counted = run[f"world {largest}"]["bytes"]
    weights = counted["weights"]
    total = counted["ddp"] + counted["architect and step"]
    text += (f"\n\nAll-reduced per second-order step and process (world {largest}): DDP's "
             f"gradient buckets {counted['ddp'] / 1e6:.2f} MB, the architect's and the step's "
             f"own {counted['architect and step'] / 1e6:.2f} MB; {total / 1e6:.2f} MB in all, "
             f"{total / weights:.2f}x the weights ({weights / 1e6:.2f} MB).")
    if largest > 1:
        whole = statistics.median(run["plain, whole batch"]["times"])
        mine = statistics.median(run[f"world {largest}"]["times"])
        text += (f" Strong scaling: the {largest * args.batch} images of one plain step take "
                 f"{whole:.3f} s in one process and {mine:.3f} s split over {largest} "
                 f"({whole / mine:.2f}x); weak scaling: {largest} processes step on "
                 f"{largest}x the images in {mine / plain:.2f}x the time of one.")
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else platform.processor() or platform.machine())
    section = (f"## Distributed search step ({device.type.upper()}): "
               f"{datetime.date.today().isoformat()}, {name} ({os.cpu_count()} cores), torch "
               f"{torch.__version__}\n\nCommand: `python benchmarks/distributed_scaling.py "
               f"--device {device.type} --worlds {' '.join(map(str, args.worlds))} --batch "
               f"{args.batch}`. Network(8, 10, 5), 32x32, float32, second order, "
               f"{args.repeats} timed steps after {args.warmup} warm-up steps per run.\n\n"
               + text)
    update_results_md(f"distributed-{device.type}", section)
    print(section)


if __name__ == "__main__":
    main()
