r"""The dominant eigenvalue of the loss' Hessian with respect to the architecture, by the Lanczos
method on exact Hessian-vector products.

RobustDARTS (Zela et al., "Understanding and Robustifying Differentiable Architecture Search",
ICLR 2020; automl/RobustDARTS, ``src/search/analyze.py``, ``Analyzer.compute_Hw``) tracks the
largest eigenvalue of the Hessian of the validation loss with respect to the alphas during the
search and stops it early when that eigenvalue grows. Their code builds the whole Hessian of the
loss on one validation batch, row by row by double backward, over ``arch_parameters()`` flattened
and concatenated; it adds ``arch_weight_decay * alpha`` to the gradient before differentiating it
again, and takes ``max(numpy.linalg.eigvals(H))``. With :math:`\alpha` the concatenated
``alphas``, ``wd`` = ``weight_decay`` and :math:`n` the number of their entries:

.. math::
    H = \nabla^2_\alpha\, loss + wd\, I_n, \qquad \lambda_{max} = \max \operatorname{eig}(H)

Here :math:`H` is never formed (it would take :math:`n` double backwards: 224 for DARTS' alphas,
252 with PC-DARTS' betas). ``g`` = :math:`\nabla_\alpha loss` is computed once, with its graph;
each product is one more backward through it,

.. math::
    H v = \nabla_\alpha (g \cdot v) + wd\, v.

Lanczos from a random unit :math:`q_1` builds an orthonormal basis :math:`Q_k` of the Krylov
space :math:`\{q_1, H q_1, \ldots, H^{k-1} q_1\}` (reorthogonalised in full: :math:`k \ll n`
vectors of :math:`n` entries) and the tridiagonal :math:`T_k = Q_k^T H Q_k`; its largest
eigenvalue :math:`\theta` (a Ritz value, eigenvector :math:`s`) approaches :math:`\lambda_{max}`
from below, far faster than power iteration and whatever the sign of the eigenvalues at the
other end of the spectrum. The residual of the Ritz pair bounds the error: :math:`|\theta -
\lambda| \le \beta_k |s_k|` for an eigenvalue :math:`\lambda` of :math:`H`; the iteration stops
when that is at most ``tolerance`` :math:`|\theta|`, or after ``iterations`` products
(``converged`` says which).

The start vectors come from ``generator`` or from a private generator of fixed seed, never from
the global RNG, so that computing the eigenvalue leaves the search's random stream as it was.
Each iteration reads the Rayleigh quotient on the host: meant to run once per epoch, outside the
search step.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn

from .loss import model_loss, scalar_loss

DEFAULT_SEED = 0


class DominantEigenvalue(NamedTuple):
    """``value``: the largest eigenvalue of :math:`H`; ``products``: the Hessian-vector products
    it took; ``converged``: whether the error bound met the tolerance within ``iterations``."""

    value: float
    products: int
    converged: bool


def dominant_eigenvalue(loss, alphas, weight_decay=0.0, iterations=30, tolerance=1e-5,
                        generator=None):
    """The largest (algebraic) eigenvalue of ``d2 loss / d alphas2 + weight_decay * I``, as a
    ``DominantEigenvalue``.

    ``loss``: a one-element tensor whose graph reaches the tensors ``alphas`` (a list of tensors
    that require grad, of one floating dtype and device: a model's ``arch_parameters()``).
    ``iterations``: at most that many products. ``tolerance``: the bound on the relative error
    of the value below which the iteration stops (see the module docstring); 0 runs all
    ``iterations`` (or ``n``, where the value is exact). ``generator``: a ``torch.Generator`` for
    the start vector (drawn on its device); default, a private one seeded with
    ``DEFAULT_SEED``.

    The graph of ``loss`` is kept: the caller may still backward through it."""
    alphas = _check(loss, alphas, weight_decay, iterations, tolerance, generator)
    grads = torch.autograd.grad(loss, alphas, create_graph=True, allow_unused=True)
    if all(g is None for g in grads):
        raise ValueError("dominant_eigenvalue: the graph of loss does not reach alphas")
    # A gradient without a graph (an alpha the loss reaches only linearly, or not at all) has
    # zero second derivatives: only the others enter g . v.
    curved = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    sizes = [a.numel() for a in alphas]
    weight_decay = float(weight_decay)

    def product(v):
        hv = weight_decay * v
        if curved:
            pieces = torch.split(v, sizes)
            g_dot_v = sum((g * pieces[i].view_as(g)).sum() for i, g in curved)
            second = torch.autograd.grad(g_dot_v, alphas, retain_graph=True, allow_unused=True)
            hv = hv + torch.cat([torch.zeros(n, dtype=v.dtype, device=v.device) if s is None
                                 else s.reshape(-1) for s, n in zip(second, sizes)])
        return hv

    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    value, products, converged = _lanczos(
        product, _random_unit(sum(sizes), alphas[0], generator), iterations, tolerance)
    return DominantEigenvalue(value, products, converged)


def arch_hessian_eigenvalue(model, batch, weight_decay=0.0, loss_fn=None, **options):
    """``dominant_eigenvalue`` of the loss of ``model`` on ``batch`` with respect to
    ``model.arch_parameters()``: RobustDARTS' ``max(eigvals(H))`` on a validation batch, with
    ``weight_decay`` their ``arch_weight_decay``. The loss is ``loss_fn(model, batch)`` (a
    0-dim tensor), by default ``model._loss(*batch)``; ``options`` are ``dominant_eigenvalue``'s
    (``iterations``, ``tolerance``, ``generator``). The model keeps its mode: in training mode,
    as in RobustDARTS, the forward pass updates the BatchNorm running statistics."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if not callable(getattr(model, "arch_parameters", None)):
        raise TypeError(f"arch_hessian_eigenvalue: model must offer arch_parameters(), got "
                        f"{type(model).__name__}")
    if loss_fn is None:
        if not callable(getattr(model, "_loss", None)):
            raise TypeError(f"arch_hessian_eigenvalue: model must offer _loss(input, target), or "
                            f"give loss_fn(model, batch), got {type(model).__name__}")
        loss = model_loss(model, batch)
    elif callable(loss_fn):
        loss = scalar_loss(loss_fn(model, batch), "arch_hessian_eigenvalue: loss_fn(model, batch)")
    else:
        raise TypeError(f"arch_hessian_eigenvalue: loss_fn must be callable as loss_fn(model, "
                        f"batch), got {type(loss_fn).__name__}")
    return dominant_eigenvalue(loss, list(model.arch_parameters()), weight_decay, **options)


def _lanczos(product, q, iterations, tolerance):
    """(the largest Ritz value, products, converged) of Lanczos on ``product`` from the unit
    vector ``q``."""
    basis, diagonal, off_diagonal = [q], [], []
    n = q.numel()
    for k in range(1, min(iterations, n) + 1):
        w = product(basis[-1])
        diagonal.append(torch.dot(basis[-1], w).item())
        Q = torch.stack(basis)
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - Q.T @ (Q @ w)
        beta = torch.linalg.vector_norm(w).item()
        T = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
        if off_diagonal:
            sub = torch.tensor(off_diagonal, dtype=torch.float64)
            T = T + torch.diag(sub, 1) + torch.diag(sub, -1)
        ritz, vectors = torch.linalg.eigh(T)
        theta, residual = ritz[-1].item(), beta * abs(vectors[-1, -1].item())
        # beta 0: the Krylov space is invariant, and its Ritz values are eigenvalues of H.
        if residual <= tolerance * abs(theta) or beta == 0.0 or k == n:
            return theta, k, True
        off_diagonal.append(beta)
        basis.append(w / beta)
    return theta, k, False


def _random_unit(n, like, generator):
    """A random unit vector of ``n`` entries, drawn from ``generator`` on its own device, in the
    dtype and on the device of ``like``."""
    v = torch.randn(n, generator=generator, dtype=like.dtype, device=generator.device)
    v = v.to(like.device)
    return v / torch.linalg.vector_norm(v)


def _check(loss, alphas, weight_decay, iterations, tolerance, generator):
    """The alphas as a list, once every argument is known to be usable."""
    name = "dominant_eigenvalue"
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{name}: loss must be a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name}: loss must be a scalar (one element), got a tensor of shape "
                         f"{tuple(loss.shape)}")
    if loss.grad_fn is None:
        raise ValueError(f"{name}: loss has no graph (computed under no_grad, detached, or "
                         f"not from alphas)")
    if isinstance(alphas, torch.Tensor) or not isinstance(alphas, (list, tuple)):
        raise TypeError(f"{name}: alphas must be a list of tensors, got {type(alphas).__name__}")
    alphas = list(alphas)
    if not alphas:
        raise ValueError(f"{name}: alphas must not be empty")
    for i, alpha in enumerate(alphas):
        if not isinstance(alpha, torch.Tensor):
            raise TypeError(f"{name}: alphas[{i}] must be a tensor, got {type(alpha).__name__}")
        if not alpha.is_floating_point() or not alpha.requires_grad:
            raise ValueError(f"{name}: alphas[{i}] must be a floating-point tensor that requires "
                             f"grad, got dtype {alpha.dtype}, requires_grad={alpha.requires_grad}")
        if (alpha.dtype, alpha.device) != (alphas[0].dtype, alphas[0].device):
            raise ValueError(f"{name}: alphas must share one dtype and device, got alphas[{i}] "
                             f"{alpha.dtype} on {alpha.device} and alphas[0] {alphas[0].dtype} "
                             f"on {alphas[0].device}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"{name}: weight_decay must be a number, got {type(weight_decay).__name__}")
    if not math.isfinite(weight_decay):
        raise ValueError(f"{name}: weight_decay must be finite, got {weight_decay!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"{name}: iterations must be an integer, got {type(iterations).__name__}")
    if iterations < 1:
        raise ValueError(f"{name}: iterations must be at least 1, got {iterations}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"{name}: tolerance must be a number, got {type(tolerance).__name__}")
    if not 0 <= tolerance < math.inf:
        raise ValueError(f"{name}: tolerance must be finite and >= 0, got {tolerance!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    return alphas
