"""One full search step (architect step + weight step), first and second order: the original
algorithm, torch.compile of the original's network (CUDA), and darts_fast, in one run."""
import pytest
import torch

from cases import STEP_CONFIG, measure, search_step


@pytest.mark.parametrize("impl", ["reference", "compiled_reference", "fused"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_search_step(benchmark, device, order, impl):
    if impl == "compiled_reference" and device.type == "cpu":
        pytest.skip("torch.compile of the whole search network runs on CUDA only: on 2 CPU cores "
                    "its first (compiling) step had not finished after 10 minutes")
    config = STEP_CONFIG[device.type]
    benchmark.group = (f"search step {order} order Network({config['C']}, 10, "
                       f"{config['layers']}) batch {config['batch']} {device.type}")
    step = search_step(impl, device, unrolled=order == "second")
    reset_peak = torch.cuda.reset_peak_memory_stats if device.type == "cuda" else None
    loss = measure(benchmark, step, rounds=3, before=reset_peak)
    if device.type == "cuda":
        benchmark.extra_info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    assert torch.isfinite(loss)
