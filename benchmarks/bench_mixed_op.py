"""MixedOp forward+backward with its candidate operations: the original vs darts_fast."""
import pytest

from cases import measure, mixed_op


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op(benchmark, device, stride, impl):
    benchmark.group = f"MixedOp fwd+bwd C=16 32x32 batch 64 stride {stride} {device.type}"
    grads = measure(benchmark, mixed_op(impl, device, stride=stride), rounds=5)
    assert grads[0].shape == (64, 16, 32, 32)
