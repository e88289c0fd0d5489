r"""The weighted sum (the mixed operation of DARTS): wrapper, fake kernels and autograd.

For K same-shape tensors :math:`x_k`:

.. math::
    y = \sum_k w_k x_k, \qquad
    \frac{\partial L}{\partial x_k} = w_k g, \qquad
    \frac{\partial L}{\partial w_k} = \sum_i g_i x_{k,i}, \qquad g = \frac{\partial L}{\partial y}.

Schemas in ``csrc/ops.cpp``, kernels in ``csrc/cpu/weighted_sum_cpu.cpp`` and
``csrc/cuda/weighted_sum_cuda.cu``.
"""
from typing import Sequence

import torch

from ._common import check_one_device, ops, register_autograd, register_fake, requires


@requires("weighted_sum", "weighted_sum_backward")
def weighted_sum(xs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights[k] * xs[k])`` in one pass; differentiable in ``xs`` and ``weights``.

    ``xs``: K >= 1 tensors of one shape, dtype and device (float32/float64; float16/bfloat16
    accumulate in float32). ``weights``: 1-D of length K, the dtype of ``xs`` (float32 is also
    accepted for float16/bfloat16). The weight gradient is reduced in a fixed order, so it has the
    same bits on every run.
    """
    return ops.weighted_sum(list(xs), weights)


def _check_weighted_sum(op, xs, weights):
    torch._check(len(xs) > 0, lambda: f"{op}: xs must be a non-empty list of tensors")
    check_one_device(op, [*((f"xs[{k}]", x) for k, x in enumerate(xs)), ("weights", weights)])
    for k, x in enumerate(xs):
        torch._check(x.shape == xs[0].shape and x.dtype == xs[0].dtype,
                     lambda: f"{op}: xs[{k}] is {x.dtype} {tuple(x.shape)} but xs[0] is "
                             f"{xs[0].dtype} {tuple(xs[0].shape)}")
    torch._check(weights.dim() == 1 and weights.shape[0] == len(xs),
                 lambda: f"{op}: weights must be 1-D with one entry per tensor in xs "
                         f"({len(xs)}), got shape {tuple(weights.shape)}")


@register_fake("weighted_sum")
def _weighted_sum_fake(xs, weights):
    _check_weighted_sum("weighted_sum", xs, weights)
    return torch.empty_like(xs[0])


@register_fake("weighted_sum_backward")
def _weighted_sum_backward_fake(grad, xs, weights, xs_need_grad, weights_need_grad):
    _check_weighted_sum("weighted_sum_backward", xs, weights)
    check_one_device("weighted_sum_backward", [("xs[0]", xs[0]), ("grad", grad)])
    torch._check(grad.shape == xs[0].shape,
                 lambda: f"weighted_sum_backward: grad has shape {tuple(grad.shape)} but xs have "
                         f"shape {tuple(xs[0].shape)}")
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
    packed, grad_weights = ops.weighted_sum_backward(
        grad, xs_arg, weights, xs_need_grad, weights_need_grad
    )
    packed = iter(packed)
    grad_xs = [next(packed) if need else None for need in xs_need_grad]
    return grad_xs, (grad_weights if weights_need_grad else None)


register_autograd("weighted_sum", _weighted_sum_backward, _weighted_sum_setup_context,
                  backward_op="weighted_sum_backward")
