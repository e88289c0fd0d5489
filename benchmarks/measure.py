"""How the report measures: the pytest-benchmark run, the copy bandwidth, the weighted sum
against its copy floor, and each search-step case in a fresh process (``report.py --child``
runs ``child``): its median step time and peak memory.
"""
import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from tables import impl_of

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPORT = os.path.join(HERE, "report.py")


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


def run_child(spec, script=REPORT, env=None):
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


def family_options(doc, cases):
    """The options of a script that measures cases side by side (``family.py``, ``one_shot.py``):
    ``--device``, ``--repeats``, ``--rounds``, ``--cases``, and ``--child`` (one case, in the
    process the script starts for it)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", nargs="+", choices=sorted(cases), default=list(cases))
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def machine(device):
    """The device as a results section names it."""
    return (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
