"""MixedOp(recompute=True) and Network(recompute=True) against the stored path: the same numbers,
BatchNorm statistics updated once, far fewer tensors kept for the backward pass."""
import types

import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)


def bn_stats(module):
    return [b.clone() for b in module.buffers()]


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_equals_the_stored_path(device, stride):
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        op = darts_fast.MixedOp(4, stride, recompute=recompute).to(device, torch.float64)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
        w = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64), 0).to(device)
        w.requires_grad_()
        out = op(x, w)
        grads = torch.autograd.grad(out, [x, w, *op.parameters()], torch.ones_like(out))
        results.append([out, *grads, *bn_stats(op)])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[1][-1].item() == 1  # num_batches_tracked: one forward, one update


def test_double_backward_equals_the_stored_path():
    """The exact hypergradient differentiates the weight gradient again: a second
    recomputation, which must leave the running statistics alone too."""
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        op = darts_fast.MixedOp(4, 1, recompute=recompute).double()
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
        params = list(op.parameters())
        grads = torch.autograd.grad(op(x, w).pow(2).sum(), params, create_graph=True)
        hvp = torch.autograd.grad(grads, w, grad_outputs=[torch.ones_like(p) for p in params])
        results.append([*grads, *hvp, *bn_stats(op)])
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(*results))


@pytest.mark.parametrize("unrolled, hessian", [(True, "finite_difference"), (True, "exact"),
                                               (False, "finite_difference")])
def test_search_steps_equal_the_stored_path(unrolled, hessian):
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2,
                                   recompute=recompute)
        optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        step = darts_fast.SearchStep(model, darts_fast.Architect(model, ARGS, hessian=hessian),
                                     optimizer, unrolled=unrolled)
        g = torch.Generator().manual_seed(1)
        data = [torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g),
                torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)]
        step(*data, 0.025)
        results.append([*model.arch_parameters(), *model.parameters(), *model.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def saved_bytes(model, x, y):
    """Bytes of the tensors autograd keeps for the backward pass of one loss."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model._loss(x, y)
    return total[0]


def test_keeps_a_fraction_of_the_tensors():
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    kept = []
    for recompute in (False, True):
        torch.manual_seed(0)
        kept.append(saved_bytes(darts_fast.Network(8, 10, 5, nn.CrossEntropyLoss(),
                                                   recompute=recompute), x, y))
    assert kept[1] < 0.25 * kept[0], kept


def test_compiled_mixed_op_updates_the_statistics_once():
    primitives = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        op = darts_fast.MixedOp(4, 1, primitives=primitives, recompute=True)
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        w = torch.softmax(torch.randn(4), 0).requires_grad_()
        fn = torch.compile(op, backend="aot_eager") if compiled else op
        out = fn(x, w)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, w, *op.parameters()])
        results.append([out, *grads, *bn_stats(op)])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*results))


def test_recompute_needs_the_fused_mixed_op():
    with pytest.raises(ValueError, match="recompute needs darts_fast.MixedOp"):
        reference.Network(4, 10, 3, nn.CrossEntropyLoss(), recompute=True)
