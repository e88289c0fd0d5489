"""The architect's multi-tensor updates over the weights of Network(16, 10, 8): a Python loop,
torch._foreach_*, and the fused kernels."""
import pytest
from cases import measure, multi_tensor_update


@pytest.mark.parametrize("impl", ["python_loop", "foreach", "fused"])
@pytest.mark.parametrize("name", ["virtual_step", "norm", "axpy"])
def test_multi_tensor_update(benchmark, device, name, impl):
    benchmark.group = f"multi-tensor {name} Network(16, 10, 8) weights {device.type}"
    measure(benchmark, multi_tensor_update(name, impl, device), rounds=30, warmup=3)
