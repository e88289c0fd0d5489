"""MixedOp forward+backward with its candidate operations: the original, torch.compile of it,
and darts_fast with and without the BatchNorm fold."""
import pytest
from cases import MIXED_OP_IMPLS, measure, mixed_op


@pytest.mark.parametrize("impl", MIXED_OP_IMPLS)
@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op(benchmark, device, stride, impl):
    benchmark.group = f"MixedOp fwd+bwd C=16 32x32 batch 64 stride {stride} {device.type}"
    # warmup 2: torch.compile compiles the forward and the backward in the first call
    grads = measure(benchmark, mixed_op(impl, device, stride=stride), rounds=5, warmup=2)
    assert grads[0].shape == (64, 16, 32, 32)
