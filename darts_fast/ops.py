r"""The darts_fast operators: typed wrappers, fake (meta) kernels and autograd.

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA kernels in ``csrc/cpu`` and
``csrc/cuda``. Importing this module loads them.

Weighted sum (the mixed operation of DARTS), for K same-shape tensors :math:`x_k`:

.. math::
    y = \sum_k w_k x_k, \qquad
    \frac{\partial L}{\partial x_k} = w_k g, \qquad
    \frac{\partial L}{\partial w_k} = \sum_i g_i x_{k,i}, \qquad g = \frac{\partial L}{\partial y}.
"""
from typing import List, Sequence

import torch

from . import _C  # noqa: F401  (loads the schemas and kernels)

_ops = torch.ops.darts_fast


def weighted_sum(xs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights[k] * xs[k])`` in one pass; differentiable in ``xs`` and ``weights``.

    ``xs``: K >= 1 tensors of one shape, dtype and device (float32/float64; float16/bfloat16
    accumulate in float32). ``weights``: 1-D of length K, the dtype of ``xs`` (float32 is also
    accepted for float16/bfloat16). The weight gradient is reduced in a fixed order, so it has the
    same bits on every run.
    """
    return _ops.weighted_sum(list(xs), weights)


@torch.library.register_fake("darts_fast::weighted_sum")
def _weighted_sum_fake(xs, weights):
    return torch.empty_like(xs[0])


@torch.library.register_fake("darts_fast::weighted_sum_backward")
def _weighted_sum_backward_fake(grad, xs, weights, xs_need_grad, weights_need_grad):
    grad_xs = [torch.empty_like(xs[0]) for need in xs_need_grad if need]
    grad_weights = weights.new_empty((len(xs),) if weights_need_grad else (0,))
    return grad_xs, grad_weights


def _weighted_sum_setup_context(ctx, inputs, output):
    xs, weights = inputs
    ctx.num_xs = len(xs)
    # The xs are read only for the weight gradient: when the weights need none, not keeping the
    # K candidate outputs alive until backward saves K activations per mixed op.
    ctx.keeps_xs = weights.requires_grad
    ctx.save_for_backward(weights, *(xs if ctx.keeps_xs else ()))


def _weighted_sum_backward(ctx, grad):
    weights, *xs = ctx.saved_tensors
    xs_need_grad = list(ctx.needs_input_grad[0])
    weights_need_grad = bool(ctx.needs_input_grad[1])
    if torch.is_grad_enabled():
        # create_graph=True (double backward, e.g. the exact hypergradient): the same formulas in
        # differentiable torch ops.
        grad_xs = [weights[k] * grad if need else None for k, need in enumerate(xs_need_grad)]
        grad_weights = None
        if weights_need_grad:
            grad_weights = torch.stack([(grad * x).sum() for x in xs]).to(weights.dtype)
        return grad_xs, grad_weights
    # Without the weight gradient the kernel reads only the shapes of xs, so grad stands in for
    # the candidate outputs that were not kept.
    xs_arg = xs if ctx.keeps_xs else [grad] * ctx.num_xs
    packed, grad_weights = _ops.weighted_sum_backward(
        grad, xs_arg, weights, xs_need_grad, weights_need_grad
    )
    packed = iter(packed)
    grad_xs = [next(packed) if need else None for need in xs_need_grad]
    return grad_xs, (grad_weights if weights_need_grad else None)


torch.library.register_autograd(
    "darts_fast::weighted_sum",
    _weighted_sum_backward,
    setup_context=_weighted_sum_setup_context,
)


def multi_tensor_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm ``sqrt(sum_i ||t_i||^2)`` as a 0-dim tensor on the tensors' device (no host
    synchronisation on CUDA). Deterministic: partial sums are combined in a fixed order."""
    tensors = list(tensors)
    if not tensors:  # no tensor to choose a device from: the dispatcher could not say why
        raise ValueError("multi_tensor_norm: tensors must be a non-empty list")
    return _ops.multi_tensor_norm(tensors)


def multi_tensor_axpy_(ys: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], alpha: torch.Tensor):
    """In place ``ys[i] += alpha * xs[i]`` for every i; ``alpha`` is a 0-dim tensor, so a step size
    computed on the device never travels to the host."""
    _ops.multi_tensor_axpy_(list(ys), list(xs), alpha)


def multi_tensor_virtual_step(
    out: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    eta: float,
    momentum: float,
    weight_decay: float,
):
    """``out[i] = w[i] - eta * (momentum * buf[i] + g[i] + weight_decay * w[i])``.

    The one-step-unrolled weights of second-order DARTS. ``out`` may be the parameters themselves
    while ``weights`` holds a saved copy: the original weights stay intact and can be restored bit
    for bit. An empty ``momentum_buffers`` stands for zeros (before the first SGD step).
    """
    out = list(out)
    if not out and not weights and not grads:
        return
    _ops.multi_tensor_virtual_step(
        out, list(weights), list(grads), list(momentum_buffers),
        float(eta), float(momentum), float(weight_decay),
    )


def multi_tensor_finite_difference(
    dalpha: Sequence[torch.Tensor],
    grads_pos: Sequence[torch.Tensor],
    grads_neg: Sequence[torch.Tensor],
    r: torch.Tensor,
    eta: float,
) -> List[torch.Tensor]:
    """``dalpha[i] - eta * (grads_pos[i] - grads_neg[i]) / (2 r)``, the second-order DARTS
    hypergradient from a central finite difference of step r."""
    return _ops.multi_tensor_finite_difference(
        list(dalpha), list(grads_pos), list(grads_neg), r, float(eta)
    )


@torch.library.register_fake("darts_fast::multi_tensor_norm")
def _multi_tensor_norm_fake(tensors):
    return tensors[0].new_empty(())


@torch.library.register_fake("darts_fast::multi_tensor_axpy_")
def _multi_tensor_axpy_fake(ys, xs, alpha):
    return None


@torch.library.register_fake("darts_fast::multi_tensor_virtual_step")
def _multi_tensor_virtual_step_fake(out, weights, grads, momentum_buffers, eta, momentum, wd):
    return None


@torch.library.register_fake("darts_fast::multi_tensor_finite_difference")
def _multi_tensor_finite_difference_fake(dalpha, grads_pos, grads_neg, r, eta):
    return [torch.empty_like(d) for d in dalpha]
