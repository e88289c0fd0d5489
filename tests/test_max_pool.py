"""Max pooling without stored indices against nn.MaxPool2d: the same values and gradients (ties
included), double backward, and what it keeps for the backward pass."""
import pytest
import torch
import torch.nn as nn

from darts_fast.layers import max_pool


def saved_dtypes(fn, x):
    dtypes = []

    def pack(t):
        dtypes.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return dtypes


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_equals_max_pool_2d(device, stride, layout):
    pool = nn.MaxPool2d(3, stride=stride, padding=1)
    x = torch.randn(2, 3, 7, 6, device=device).contiguous(memory_format=layout)
    x[0, 0, :4, :4] = 1.5  # ties: the gradient goes where nn.MaxPool2d sends it
    x.requires_grad_()
    out, ref = max_pool.max_pool2d(pool, x), pool(x)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_keeps_no_indices():
    pool = nn.MaxPool2d(3, stride=1, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert torch.int64 in saved_dtypes(pool, x)
    assert saved_dtypes(lambda t: max_pool.max_pool2d(pool, t), x) == [torch.float32]


def test_double_backward():
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool.max_pool2d(pool, t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: max_pool.max_pool2d(pool, t), (x,))
