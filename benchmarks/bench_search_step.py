"""One full search step (architect step + weight step), first and second order: the original
algorithm, torch.compile of the original's network (CUDA), and darts_fast eager, captured into a
CUDA graph, and with deterministic algorithms (CUDA), in one run. GDAS' search step (weight step,
then first-order architect step): its authors' formulation and darts_fast's, side by side."""
import gc
import time

import pytest
import torch
from cases import (
    GDAS_STEP_IMPLS,
    SEARCH_STEP_IMPLS,
    STEP_CONFIG,
    STEP_WARMUP,
    gdas_search_step,
    measure,
    search_step,
)

CUDA_ONLY = {
    "compiled_reference": "torch.compile of the whole search network runs on CUDA only: on 2 CPU "
                          "cores its first (compiling) step had not finished after 10 minutes",
    "fused_graph": "CUDA graphs need a CUDA device",
    "fused_deterministic": "deterministic algorithms change nothing on the CPU",
}


@pytest.mark.parametrize("impl", SEARCH_STEP_IMPLS)
@pytest.mark.parametrize("order", ["first", "second"])
def test_search_step(benchmark, device, order, impl):
    if impl in CUDA_ONLY and device.type == "cpu":
        pytest.skip(CUDA_ONLY[impl])
    if impl == "compiled_reference" and order == "first":
        pytest.skip("torch.compile is compared on the second-order step only (its compilation "
                    "takes minutes)")
    config = _config(benchmark, device)
    benchmark.group = (f"search step {order} order Network({config['C']}, 10, "
                       f"{config['layers']}) batch {config['batch']} {device.type}")
    _run(benchmark, device, lambda: search_step(impl, device, unrolled=order == "second",
                                                config=config), STEP_WARMUP.get(impl, 0))


@pytest.mark.parametrize("impl", GDAS_STEP_IMPLS)
def test_gdas_search_step(benchmark, device, impl):
    config = _config(benchmark, device)
    benchmark.group = (f"GDAS search step Network({config['C']}, 10, {config['layers']}) "
                       f"batch {config['batch']} {device.type}")
    _run(benchmark, device, lambda: gdas_search_step(impl, device, config=config), 0)


def _config(benchmark, device):
    # The test pass (benchmarks disabled) checks that each case runs, on a smaller network and
    # images.
    return STEP_CONFIG[device.type] if benchmark.enabled else dict(C=4, layers=3, batch=4,
                                                                   image=8)


def _run(benchmark, device, make_step, warmup):
    if device.type == "cuda":  # the peak counts everything the case holds, model included
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start_memory = torch.cuda.memory_allocated()
    step = make_step()
    try:
        if benchmark.enabled:
            start = time.perf_counter()
            step()  # compilation (compiled_reference) is in this first call
            benchmark.extra_info["first_call_s"] = time.perf_counter() - start
        loss = measure(benchmark, step, rounds=5, warmup=warmup)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        benchmark.extra_info["peak_memory_mb"] = \
            (torch.cuda.max_memory_allocated() - start_memory) / 2**20
    assert torch.isfinite(loss)
