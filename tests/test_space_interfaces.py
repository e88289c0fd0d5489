"""The search space's interfaces: the candidates an edge runs (``active``), a user's candidate
list (``primitives``), the architecture tables and the genotype rules that read them."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.methods.pc_darts import PartialChannelMixedOp
from darts_fast.spaces.cnn.architecture import cell_edges, darts_rule, pairs_rule
from darts_fast.spaces.cnn.genotypes import PRIMITIVES

from helpers import rel_err

TOL = 1e-10


def _pair(cls_fast, cls_ref, *args):
    torch.manual_seed(0)
    fused = cls_fast(*args).double()
    torch.manual_seed(0)
    return fused, cls_ref(*args).double()


@pytest.mark.parametrize("active", [[4], [5, 1], [0], [0, 6], [7, 3, 2]])
@pytest.mark.parametrize("stride", [1, 2])
def test_active_candidates_alone_are_computed(active, stride):
    """``MixedOp(x, w, active)`` is ``sum_{k in active} w_k op_k(x)`` of the plain candidates:
    output, gradients of x, of every weight (0 for the others) and of the parameters, and the
    BatchNorm statistics of the active candidates only."""
    fused, ref = _pair(darts_fast.MixedOp, reference.MixedOp, 8, stride)
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    out_f = fused(x, w, active)
    out_r = sum(w[k] * ref._ops[k](x) for k in active)
    assert rel_err(out_f, out_r) < TOL
    g = torch.randn_like(out_f)
    params_f, params_r = list(fused.parameters()), list(ref.parameters())
    for a, b in zip(torch.autograd.grad(out_f, [x, w, *params_f], g, allow_unused=True,
                                        materialize_grads=True),
                    torch.autograd.grad(out_r, [x, w, *params_r], g, allow_unused=True,
                                        materialize_grads=True)):
        assert rel_err(a, b) < TOL
    for (name, a), b in zip(fused.named_buffers(), ref.buffers()):
        assert rel_err(a, b) < TOL, name
    fused.eval()  # any iterable of indices, a generator included
    assert torch.equal(fused(x, w, (k for k in active)), fused(x, w, active))


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_op_runs_its_active_candidates(stride):
    """PC-DARTS' op with ``active``: the authors' op with every other candidate weighted 0."""
    fused, ref = _pair(PartialChannelMixedOp, reference.PartialChannelMixedOp, 8, stride)
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    for active in ([6, 4], [0]):
        mask = torch.zeros(8, dtype=torch.float64)
        mask[active] = 1
        out_f, out_r = fused(x, w, active), ref(x, w * mask)
        assert rel_err(out_f, out_r) < TOL
        g = torch.randn_like(out_f)
        for a, b in zip(torch.autograd.grad(out_f, [x, w], g),
                        torch.autograd.grad(out_r, [x, w], g)):
            assert rel_err(a, b) < TOL


@pytest.mark.parametrize("active", [[], [8], [1, 1], [True], "3", 3, [2.0]])
def test_bad_active_is_refused(active):
    op = darts_fast.MixedOp(4, 1)
    with pytest.raises(ValueError, match="active"):
        op(torch.randn(2, 4, 5, 5), torch.full((8,), 0.125), active)


CUSTOM = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]


def test_a_custom_candidate_list_sizes_the_alphas_and_names_the_genotype():
    """Alphas of one column per candidate, in the list's order; the same numbers as the plain
    mixed op on that list; a genotype of those names; tables that name them."""
    torch.manual_seed(0)
    fused = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), primitives=CUSTOM).double()
    torch.manual_seed(0)
    plain = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), primitives=CUSTOM,
                               mixed_op=reference.MixedOp, memory_format=None).double()
    assert [tuple(a.shape) for a in fused.arch_parameters()] == [(14, 4), (14, 4)]
    assert all(len(op._ops) == 4 for cell in fused.cells for op in cell._ops)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert rel_err(fused(x), plain(x)) < TOL
    names = {name for kind in ("normal", "reduce") for name, _ in getattr(fused.genotype(), kind)}
    assert names <= set(CUSTOM) - {"none"}
    tables = fused.architecture_tables()
    assert [t.name for t in tables] == ["normal", "reduce"]
    assert all(t.candidates == tuple(CUSTOM) and t.edges == cell_edges(4) for t in tables)
    expected = torch.softmax(fused.alphas_normal.detach(), -1)
    assert torch.equal(tables[0].weights, expected)


@pytest.mark.parametrize("primitives, message", [
    (["none", "conv_9x9"], "unknown candidates conv_9x9"),
    (["skip_connect", "skip_connect"], "twice"),
    (["none"], "besides 'none'"),
    ("sep_conv_3x3", "sequence of candidate names"),
])
def test_bad_candidate_lists_are_refused(primitives, message):
    with pytest.raises(ValueError, match=message):
        darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), primitives=primitives)


# A 2-node cell (5 edges) over 3 candidates, with the genotypes read off by hand.
TABLE = np.array([[0.9, 0.05, 0.05],   # 0 -> 2: none wins, best other 0.05
                  [0.1, 0.2, 0.7],     # 1 -> 2: c 0.7
                  [0.2, 0.3, 0.5],     # 0 -> 3: c 0.5
                  [0.1, 0.6, 0.3],     # 1 -> 3: b 0.6
                  [0.0, 0.55, 0.45]])  # 2 -> 3: b 0.55, c 0.45
NAMES = ("none", "b", "c")


def test_darts_rule():
    # Node 2: both inputs; node 3: inputs 1 (b 0.6) and 2 (b 0.55), strongest first.
    assert darts_rule(TABLE, NAMES, 2) == [("c", 1), ("b", 0), ("b", 1), ("b", 2)]


def test_pairs_rule():
    # Node 3's pairs: b@1 0.6, b@2 0.55, c@0 0.5, c@2 0.45, ...: the two strongest.
    assert pairs_rule(TABLE, NAMES, 2) == [("c", 1), ("b", 1), ("b", 1), ("b", 2)]


def test_darts_rule_breaks_ties_as_the_original():
    """Equal weights: the lower input, then the lower candidate."""
    flat = np.full((5, 3), 1 / 3)
    assert darts_rule(flat, NAMES, 2) == [("b", 0), ("b", 1), ("b", 0), ("b", 1)]


def test_the_genotype_ranks_pc_darts_edges_by_their_scale():
    torch.manual_seed(0)
    model = darts_fast.PCNetwork(8, 10, 2, nn.CrossEntropyLoss(), k=2)
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[:, PRIMITIVES.index("sep_conv_5x5")] = 1.0
        model.betas_normal.copy_(torch.arange(14.0))
    tables = model.architecture_tables()
    assert torch.allclose(tables[0].edge_scale, model.edge_weights(model.betas_normal))
    # Equal alphas on every edge: the betas alone order each node's edges, the last two win.
    assert model.genotype().normal == [("sep_conv_5x5", j) for j in (1, 0, 2, 1, 3, 2, 4, 3)]


class OriginalMixedOp(nn.Module):
    """The original's MixedOp signature, (C, stride), on DARTS' candidates."""

    def __init__(self, C, stride):
        super().__init__()
        self._ops = reference.MixedOp(C, stride)._ops

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


def test_a_mixed_op_of_the_original_signature_builds_the_network():
    torch.manual_seed(0)
    model = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), mixed_op=OriginalMixedOp,
                               memory_format=None).double()
    torch.manual_seed(0)
    plain = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), mixed_op=reference.MixedOp,
                               memory_format=None).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert rel_err(model(x), plain(x)) < TOL
