"""PC-DARTS on the fused mixed op against the authors' formulations (re-derived in
darts_fast.reference and here): mixed op, edge normalisation, a second-order search step, the
genotype rule."""
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast import reference
from darts_fast.methods import pc_darts
from darts_fast.spaces.cnn.genotypes import PRIMITIVES

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4,
                             arch_weight_decay=1e-3)


OPTIONS = [{}, {"fold_batch_norm": False}, {"recompute": True}]


@pytest.mark.parametrize("options", OPTIONS, ids=["folded", "unfolded", "recompute"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride,k", [(1, 4), (2, 4), (1, 2), (1, 1)])
def test_mixed_op_matches_the_authors(device, dtype, layout, stride, k, options):
    torch.manual_seed(0)
    fused = pc_darts.PartialChannelMixedOp(16, stride, k=k, **options).to(device, dtype)
    torch.manual_seed(0)
    ref = reference.PartialChannelMixedOp(16, stride, k=k).to(device, dtype)
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 16, 8, 8, device=device, dtype=dtype).contiguous(memory_format=layout)
    x.requires_grad_()
    w = torch.softmax(torch.randn(8, device=device, dtype=dtype), 0).requires_grad_()
    out_f, out_r = fused(x, w), ref(x, w)
    tol = TOLERANCE[dtype]
    assert out_f.shape == (4, 16, 8 // stride, 8 // stride) and rel_err(out_f, out_r) < tol
    g = torch.randn_like(out_f)
    for a, b in zip(torch.autograd.grad(out_f, [x, w, *fused.parameters()], g),
                    torch.autograd.grad(out_r, [x, w, *ref.parameters()], g)):
        assert rel_err(a, b) < tol
    for a, b in zip(fused.buffers(), ref.buffers()):
        assert rel_err(a, b) < tol
    fused.eval(), ref.eval()
    assert rel_err(fused(x, w), ref(x, w)) < tol


def test_mixed_op_double_backward_matches_the_authors():
    """The exact hypergradient differentiates the op's backward again."""
    torch.manual_seed(0)
    fused = pc_darts.PartialChannelMixedOp(8, 2, k=4).double()
    torch.manual_seed(0)
    ref = reference.PartialChannelMixedOp(8, 2, k=4).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    grads = []
    for op in (fused, ref):
        gx, = torch.autograd.grad((op(x, w) ** 2).sum(), x, create_graph=True)
        grads.append(torch.autograd.grad((gx ** 2).sum(), [x, w]))
    for a, b in zip(*grads):
        assert rel_err(a, b) < TOLERANCE[torch.float64]


def test_bad_input_is_named():
    op = pc_darts.PartialChannelMixedOp(8, 1, k=4)
    with pytest.raises(ValueError, match=r"x must be 4-D with a multiple of k=4 channels, got "
                                         r"shape \(2, 6, 4, 4\)"):
        op(torch.randn(2, 6, 4, 4), torch.ones(8))
    with pytest.raises(ValueError, match="weights must be 1-D with one entry per candidate"):
        op(torch.randn(2, 8, 4, 4), torch.ones(7))


def authors_edge_weights(betas, steps):
    """The authors' loop: softmax over betas[0:2], then over each next node's slice."""
    weights, start, n = F.softmax(betas[0:2], dim=-1), 2, 3
    for _ in range(steps - 1):
        weights = torch.cat([weights, F.softmax(betas[start:start + n], dim=-1)])
        start, n = start + n, n + 1
    return weights


def networks(dtype=torch.float64):
    torch.manual_seed(0)
    fused = pc_darts.PCNetwork(8, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2)
    torch.manual_seed(0)
    ref = reference.PCNetwork(8, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2)
    return fused.to(dtype=dtype), ref.to(dtype=dtype)


def test_betas_follow_the_alphas(monkeypatch):
    states = []
    initialize = pc_darts.PCNetwork._initialize_alphas

    def recorded(self):
        states.append(torch.get_rng_state())
        initialize(self)

    monkeypatch.setattr(pc_darts.PCNetwork, "_initialize_alphas", recorded)
    fused, ref = networks()
    torch.set_rng_state(states[0])  # the authors draw alphas_normal, alphas_reduce, betas_...
    drawn = [1e-3 * torch.randn(5, 8), 1e-3 * torch.randn(5, 8), 1e-3 * torch.randn(5),
             1e-3 * torch.randn(5)]
    for a, b, d in zip(fused.arch_parameters(), ref.arch_parameters(), drawn):
        assert torch.equal(a, b) and torch.equal(a.float(), d)
    betas = torch.randn(9, dtype=torch.float64)
    big = pc_darts.PCNetwork(4, 10, 3, None, steps=3, multiplier=3)
    assert torch.allclose(big.edge_weights(betas), authors_edge_weights(betas, 3), rtol=0,
                          atol=1e-15)


@pytest.mark.parametrize("unrolled", [True, False])
def test_search_step_matches_the_authors(unrolled):
    fused, ref = networks()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (4,), generator=g),
            torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (4,), generator=g)]
    for model, architect in ((fused, darts_fast.Architect), (ref, reference.Architect)):
        optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=ARGS.momentum,
                                    weight_decay=ARGS.weight_decay)
        architect(model, ARGS).step(*data, 0.1, optimizer, unrolled)
    for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):  # alphas and betas
        assert rel_err(a.grad, b.grad) < TOLERANCE[torch.float64]
        assert rel_err(a, b) < TOLERANCE[torch.float64]


def authors_parse(weights, weights2, steps):
    """The authors' genotype rule, vectorised: each edge's row scaled by its edge weight; per
    node the two edges with the strongest non-none candidate (stable: ties to the lower index),
    each with that candidate."""
    ops = [k for k in range(len(PRIMITIVES)) if k != PRIMITIVES.index("none")]
    gene, start = [], 0
    for node in range(steps):
        rows = (weights[start:start + node + 2] * weights2[start:start + node + 2, None])[:, ops]
        for j in np.argsort(-rows.max(axis=1), kind="stable")[:2]:
            gene.append((PRIMITIVES[ops[int(np.argmax(rows[j]))]], int(j)))
        start += node + 2
    return gene


def test_genotype_ranks_edges_by_alpha_times_beta():
    model = pc_darts.PCNetwork(4, 10, 3, None, steps=4, multiplier=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    genotype = model.genotype()
    for alphas, betas, got in ((model.alphas_normal, model.betas_normal, genotype.normal),
                               (model.alphas_reduce, model.betas_reduce, genotype.reduce)):
        expected = authors_parse(F.softmax(alphas, dim=-1).detach().numpy(),
                                 authors_edge_weights(betas, 4).detach().numpy(), 4)
        assert got == expected


def test_bad_k():
    with pytest.raises(ValueError, match="k must be a positive integer dividing C=6"):
        pc_darts.PartialChannelMixedOp(6, 1, k=4)
