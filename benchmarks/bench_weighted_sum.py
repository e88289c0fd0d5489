"""Weighted sum forward+backward, K=8, at the DARTS search shapes (batch 64): the Python sum of
the original, torch.compile of it, and the fused kernel, side by side in one run."""
import pytest
import torch
from cases import measure, synchronize

from darts_fast import kernels

K = 8
BATCH = 64
SHAPES = {"C16@32x32": (16, 32), "C32@16x16": (32, 16), "C64@8x8": (64, 8)}


def python_sum(xs, w):
    return sum(w[k] * x for k, x in enumerate(xs))


_compiled_python_sum = torch.compile(python_sum, dynamic=False)

IMPLEMENTATIONS = {
    "python_sum": python_sum,
    "compiled_python_sum": _compiled_python_sum,
    "fused": kernels.weighted_sum,
}


def inputs(shape, device):
    C, HW = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(BATCH, C, HW, HW, generator=g).to(device).requires_grad_() for _ in range(K)]
    w = torch.softmax(torch.randn(K, generator=g), 0).to(device).requires_grad_()
    grad = torch.randn(BATCH, C, HW, HW, generator=g).to(device)
    return xs, w, grad


def forward_backward(fn, xs, w, grad):
    out = fn(xs, w)
    return torch.autograd.grad(out, [*xs, w], grad)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_weighted_sum_forward_backward(benchmark, device, shape, impl):
    xs, w, grad = inputs(shape, device)
    fn = IMPLEMENTATIONS[impl]
    benchmark.group = f"weighted_sum fwd+bwd K={K} batch={BATCH} {shape} {device.type}"
    benchmark.extra_info.update(
        {"bytes_moved": (3 * K + 2) * xs[0].numel() * xs[0].element_size()})

    def run():
        result = forward_backward(fn, xs, w, grad)
        synchronize(device)
        return result

    grads = measure(benchmark, run, rounds=20, warmup=3)  # warm-up: compilation, caches
    # Every implementation computes the same thing: check it against the float64 Python sum
    # (float32 reductions over ~10^6 terms differ from it by ~1e-4 relative).
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    w64 = w.detach().double().requires_grad_()
    expected = forward_backward(python_sum, xs64, w64, grad.double())
    for a, b in zip(grads, expected):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-3
