"""The shared search network: the original's structure, RNG use, alphas and genotype."""
import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.spaces.cnn.genotypes import PRIMITIVES


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_the_original():
    torch.manual_seed(0)
    assert count(darts_fast.Network(16, 10, 8, nn.CrossEntropyLoss())) == 1_930_618
    assert count(reference.Network(8, 10, 5, nn.CrossEntropyLoss())) == 394_210


def test_fused_and_reference_share_names_init_and_rng():
    torch.manual_seed(5)
    fused = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss())
    after_fused = torch.rand(1)
    torch.manual_seed(5)
    ref = reference.Network(4, 10, 3, nn.CrossEntropyLoss())
    after_ref = torch.rand(1)
    assert torch.equal(after_fused, after_ref)  # same number of RNG draws
    assert list(fused.state_dict()) == list(ref.state_dict())
    for a, b in zip(fused.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):
        assert torch.equal(a, b)
    ref.load_state_dict(fused.state_dict())


def test_alphas_are_leaves_outside_parameters_and_state_dict():
    model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss())
    alphas = model.arch_parameters()
    assert [a.shape for a in alphas] == [(14, 8), (14, 8)]
    assert all(a.is_leaf and a.requires_grad for a in alphas)
    ids = {id(p) for p in model.parameters()}
    assert not any(id(a) in ids for a in alphas)
    assert not any("alpha" in k for k in model.state_dict())


def test_to_moves_alphas_in_place():
    model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss())
    alpha = model.alphas_normal
    model.double()
    assert model.alphas_normal is alpha and alpha.dtype == torch.float64
    assert alpha.is_leaf and alpha.requires_grad


def test_new_keeps_configuration_device_dtype_and_alphas():
    model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss(), steps=3, multiplier=3).double()
    with torch.no_grad():
        model.alphas_normal.add_(1.0)
    other = model.new()
    assert type(other) is type(model) and other._steps == 3 and other._multiplier == 3
    assert next(other.parameters()).dtype == torch.float64
    for a, b in zip(other.arch_parameters(), model.arch_parameters()):
        assert torch.equal(a, b) and a is not b and a.requires_grad
    assert isinstance(other.cells[0]._ops[0], darts_fast.MixedOp)
    assert isinstance(reference.Network(4, 10, 3, None).new().cells[0]._ops[0], reference.MixedOp)


def test_forward_and_loss_match_reference():
    torch.manual_seed(1)
    fused = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
    torch.manual_seed(1)
    ref = reference.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([1, 5, 9])
    lf, lr = fused._loss(x, y), ref._loss(x, y)
    assert abs(lf.item() - lr.item()) < 1e-12
    gf = torch.autograd.grad(lf, fused.arch_parameters())
    gr = torch.autograd.grad(lr, ref.arch_parameters())
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def expected_gene(weights, steps=4):
    """An independent reading of the genotype rule: per node, rank incoming edges by their best
    non-none weight (stable: ties to the lower index), keep 2, and per edge the first best op."""
    gene, start = [], 0
    for i in range(steps):
        rows = weights[start:start + i + 2].tolist()
        best = [max(r[1:]) for r in rows]
        order = sorted(range(len(rows)), key=lambda j: (-best[j], j))[:2]
        for j in order:
            k = 1 + rows[j][1:].index(best[j])
            gene.append((PRIMITIVES[k], j))
        start += i + 2
    return gene


def test_genotype():
    model = reference.Network(4, 10, 3, None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.alphas_normal.copy_(torch.randn(14, 8, generator=g))
        model.alphas_reduce.copy_(torch.randn(14, 8, generator=g))
        model.alphas_reduce[0, 0] = 100.0  # 'none' never wins
        model.alphas_reduce[2:5] = 0.0  # ties: lower edge index and first op win
    genotype = model.genotype()
    soft_n = torch.softmax(model.alphas_normal, -1)
    soft_r = torch.softmax(model.alphas_reduce, -1)
    assert genotype.normal == expected_gene(soft_n)
    assert genotype.reduce == expected_gene(soft_r)
    assert genotype.reduce[2:4] == [("max_pool_3x3", 0), ("max_pool_3x3", 1)]
    assert list(genotype.normal_concat) == [2, 3, 4, 5]


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_configuration(bad):
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        darts_fast.Network(4, 10, bad, None)
