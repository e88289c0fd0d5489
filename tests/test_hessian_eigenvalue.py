"""The dominant eigenvalue of the arch Hessian by Lanczos, against the full Hessian built
row by row as RobustDARTS does (``+ wd * I``) and its eigenvalues by ``eigvalsh``: on the
authors' networks (``darts_fast.reference``), on quadratics of known spectrum."""
import math

import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.methods import pc_darts
from darts_fast.search.hessian_eigenvalue import (DominantEigenvalue, arch_hessian_eigenvalue,
                                                  dominant_eigenvalue)

# RobustDARTS' arch_weight_decay (DARTS' default).
WD = 1e-3

def full_hessian(loss, alphas, weight_decay):
    """RobustDARTS' Analyzer._hessian: one double backward per row, through the gradient plus
    ``weight_decay * alpha``."""
    grads = torch.autograd.grad(loss, alphas, create_graph=True)
    g = torch.cat([(d + weight_decay * a).reshape(-1) for d, a in zip(grads, alphas)])
    rows = []
    for j in range(g.numel()):
        row = torch.autograd.grad(g[j], alphas, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(a) if r is None else r).reshape(-1)
                               for r, a in zip(row, alphas)]))
    return torch.stack(rows)


def batch(dtype):
    g = torch.Generator().manual_seed(1)
    # Drawn in float64 then cast: a float32 draw gives other numbers.
    return (torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64).to(dtype),
            torch.randint(0, 10, (3,), generator=g))


# The smallest widths the networks take (PC-DARTS' quarter of the channels must be even).
WIDTH = {"darts": 4, "pc_darts": 8}


def pair(fused_class, reference_class, dtype=torch.float64, C=4, **options):
    """A fused and a reference network with the same weights and alphas, in training mode."""
    torch.manual_seed(0)
    fused = fused_class(C, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2, **options)
    torch.manual_seed(0)
    ref = reference_class(C, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2)
    fused, ref = fused.to(dtype), ref.to(dtype)
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for r, f in zip(ref.arch_parameters(), fused.arch_parameters()):
            r.copy_(f)
    return fused, ref


_SPECTRA = {}


def reference_spectrum(name, reference_class):
    """The eigenvalues of the reference network's full Hessian (``+ WD * I``), float64; built
    once per network (the BatchNorm running statistics a training forward updates do not enter
    its loss)."""
    if name not in _SPECTRA:
        _, ref = pair(reference_class, reference_class, C=WIDTH[name])
        H = full_hessian(ref._loss(*batch(torch.float64)), ref.arch_parameters(), WD)
        assert torch.allclose(H, H.T, rtol=0, atol=1e-12 * H.abs().max().item())
        _SPECTRA[name] = torch.linalg.eigvalsh(H)
    return _SPECTRA[name]


def assert_first_derivatives_match(fused, ref, data):
    """The fused network's alpha gradient, with its graph, is the reference's: what the
    products differentiate again."""
    found = torch.autograd.grad(fused._loss(*data), fused.arch_parameters(), create_graph=True)
    expected = torch.autograd.grad(ref._loss(*data), ref.arch_parameters())
    for f, e in zip(found, expected):
        assert ((f - e).norm() / e.norm()).item() < 1e-10


@pytest.mark.slow
def test_fused_network_matches_the_reference_full_hessian():
    """The folded BatchNorm's double backward (the fused network's default) included."""
    fused, ref = pair(darts_fast.Network, reference.Network)
    data = batch(torch.float64)
    assert_first_derivatives_match(fused, ref, data)
    spectrum = reference_spectrum("darts", reference.Network)
    result = arch_hessian_eigenvalue(fused, data, WD, iterations=60, tolerance=1e-9)
    assert isinstance(result, DominantEigenvalue) and result.converged
    assert abs(result.value - spectrum.max().item()) < 1e-6 * abs(spectrum.max().item())
    # Far fewer products than the Hessian's rows.
    assert result.products < spectrum.numel() // 2


@pytest.mark.slow
def test_pc_darts_betas_enter_the_hessian():
    fused, ref = pair(pc_darts.PCNetwork, reference.PCNetwork, C=WIDTH["pc_darts"])
    data = batch(torch.float64)
    assert_first_derivatives_match(fused, ref, data)
    net = fused
    spectrum = reference_spectrum("pc_darts", reference.PCNetwork)
    assert spectrum.numel() == sum(a.numel() for a in net.arch_parameters()) == 2 * 5 * 8 + 2 * 5
    # At these alphas the eigenvalue largest in magnitude is negative and the positive end small
    # (power iteration would need a second, slow, shifted pass here).
    assert spectrum.min().abs() > spectrum.max() > 0
    result = dominant_eigenvalue(net._loss(*data), net.arch_parameters(), WD, iterations=60,
                                 tolerance=1e-9)
    assert result.converged and result.products < spectrum.numel() // 2
    assert abs(result.value - spectrum.max().item()) < 1e-6 * spectrum.max().item()


@pytest.mark.slow
def test_float32_network_is_close_to_float64():
    values = {}
    for dtype in (torch.float64, torch.float32):
        fused, _ = pair(darts_fast.Network, reference.Network, dtype, fold_batch_norm=False)
        result = arch_hessian_eigenvalue(fused, batch(dtype), WD, iterations=60, tolerance=1e-6)
        assert result.converged
        values[dtype] = result.value
    assert abs(values[torch.float32] - values[torch.float64]) < 1e-4 * abs(values[torch.float64])


def quadratic(eigenvalues, seed=0, dtype=torch.float64):
    """``0.5 a^T A a`` for an ``A`` of the given eigenvalues in a random basis, ``a`` split in
    two leaf tensors; returns ``(loss, alphas, A)``."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    A = q @ torch.diag(torch.tensor(eigenvalues, dtype=dtype)) @ q.T
    A = 0.5 * (A + A.T)
    a = torch.randn(n, generator=g, dtype=dtype)
    alphas = [a[:6].reshape(3, 2).clone().requires_grad_(), a[6:].clone().requires_grad_()]
    flat = torch.cat([x.reshape(-1) for x in alphas])
    return 0.5 * flat @ A @ flat, alphas, A


@pytest.mark.parametrize("eigenvalues", [
    [-5.0, 3.0, 2.0, 1.0, 0.5, 0.25, -1.0, -2.0, 0.1, 0.0],  # the dominant one is negative
    [-0.5, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0],  # all negative
    [4.0, -1.0, 1.0, 2.0, 0.5, 0.0, -3.0, 1.5, 2.5, 0.3],  # the dominant one is the largest
], ids=["dominant_negative", "all_negative", "dominant_positive"])
def test_largest_algebraic_eigenvalue_of_a_quadratic(eigenvalues):
    loss, alphas, A = quadratic(eigenvalues)
    expected = torch.linalg.eigvalsh(A).max().item()
    result = dominant_eigenvalue(loss, alphas, iterations=300, tolerance=1e-12)
    assert result.converged and 2 <= result.products <= 600
    assert abs(result.value - expected) < 1e-8 * max(abs(e) for e in eigenvalues)


def test_weight_decay_shifts_the_eigenvalue():
    loss, alphas, A = quadratic([-5.0, 3.0, 2.0, 1.0, 0.5, 0.25, -1.0, -2.0, 0.1, 0.0])
    values = {wd: dominant_eigenvalue(loss, alphas, wd, iterations=300, tolerance=1e-13).value
              for wd in (0.0, 1e-3, 4.0)}
    # 4.0 makes the positive end the largest in magnitude (7 against -1): the same shift.
    for wd in (1e-3, 4.0):
        assert abs(values[wd] - values[0.0] - wd) < 1e-9


def test_linear_loss_gives_the_weight_decay():
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    loss = (a * torch.arange(5.0, dtype=torch.float64)).sum()
    result = dominant_eigenvalue(loss, [a], 0.25, iterations=10)
    assert result.converged and abs(result.value - 0.25) < 1e-12


def test_global_rng_is_untouched_and_runs_repeat():
    loss, alphas, _ = quadratic([3.0, 2.9, 1.0, -2.0, 0.5, 0.1, 0.2, 0.3, 0.4, 2.0])
    state = torch.get_rng_state()
    first = dominant_eigenvalue(loss, alphas, iterations=5, tolerance=0)
    assert torch.equal(torch.get_rng_state(), state)
    # Unconverged after 5 products, so the value depends on the start vector.
    assert not first.converged and first.products == 5
    assert dominant_eigenvalue(loss, alphas, iterations=5, tolerance=0) == first
    generator = torch.Generator().manual_seed(7)
    drawn = dominant_eigenvalue(loss, alphas, iterations=5, tolerance=0, generator=generator)
    assert torch.equal(torch.get_rng_state(), state)
    assert drawn.value != first.value
    assert not torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state())


def test_loss_graph_is_kept():
    loss, alphas, A = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    dominant_eigenvalue(loss, alphas, iterations=3)
    loss.backward()
    flat = torch.cat([x.detach().reshape(-1) for x in alphas])
    grad = torch.cat([x.grad.reshape(-1) for x in alphas])
    assert torch.allclose(grad, A @ flat, rtol=1e-12, atol=0)


def _bad(name):
    a = torch.randn(3, requires_grad=True)
    good = dict(loss=(a ** 2).sum(), alphas=[a], weight_decay=0.0, iterations=5, tolerance=1e-3,
                generator=None)
    cases = {
        "loss": [(TypeError, 1.0), (ValueError, a ** 2), (ValueError, (a ** 2).sum().detach())],
        "alphas": [(TypeError, a), (TypeError, [a.detach().numpy()]), (ValueError, []),
                   (ValueError, [a.detach()]), (ValueError, [a, a.double()])],
        "weight_decay": [(TypeError, "0.1"), (TypeError, True), (ValueError, math.nan)],
        "iterations": [(TypeError, 2.0), (ValueError, 0)],
        "tolerance": [(ValueError, -1e-3), (ValueError, math.inf), (TypeError, None)],
        "generator": [(TypeError, 0)],
    }[name]
    return [(error, {**good, name: value}) for error, value in cases]


@pytest.mark.parametrize("name", ["loss", "alphas", "weight_decay", "iterations", "tolerance",
                                  "generator"])
def test_bad_arguments_name_the_argument(name):
    for error, kwargs in _bad(name):
        with pytest.raises(error, match=name):
            dominant_eigenvalue(**kwargs)


def test_loss_that_does_not_reach_the_alphas():
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="does not reach alphas"):
        dominant_eigenvalue((b ** 2).sum(), [a])


def test_model_entry_checks_its_model_and_loss_fn():
    with pytest.raises(TypeError, match="arch_parameters"):
        arch_hessian_eigenvalue(nn.Linear(2, 2), None)
    model = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), steps=1, multiplier=1)
    with pytest.raises(TypeError, match="loss_fn"):
        arch_hessian_eigenvalue(model, None, loss_fn=3)
    with pytest.raises(ValueError, match="loss_fn"):
        arch_hessian_eigenvalue(model, None, loss_fn=lambda m, b: m.alphas_normal.sum(1))
