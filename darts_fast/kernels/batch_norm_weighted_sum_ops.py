r"""The weighted sum with each candidate's final affine-free BatchNorm folded in (the mixed
operation of DARTS and PC-DARTS, PC-DARTS' channel shuffle included): wrapper, fake kernels and
autograd.

Schemas in ``csrc/ops.cpp``, kernels in ``csrc/cpu/batch_norm_weighted_sum_cpu.cpp`` and
``csrc/cuda/batch_norm_weighted_sum_cuda.cu``, per-element math in
``csrc/batch_norm_weighted_sum_math.h``.
"""
from typing import Optional, Sequence

import torch

from ._common import (check_one_device, composite_grads, dense_layout, ops, register_autograd,
                      register_fake, requires, statistics_dtype)


@requires("batch_norm_weighted_sum", "batch_norm_weighted_sum_backward")
def batch_norm_weighted_sum(ys: Sequence[torch.Tensor], weights: torch.Tensor,
                            mean: torch.Tensor, invstd: torch.Tensor,
                            batch_stats: Sequence[bool], eps: float,
                            rest: Optional[torch.Tensor] = None, groups: int = 1):
    r"""The mixed-op weighted sum with each candidate's final affine-free BatchNorm folded in:

    .. math::
        s = \sum_k w_k \, (y_k - \mu_{k,c}) \, \sigma^{-1}_{k,c}

    over 4-D ``ys`` (N, C, H, W), in one pass after the statistics, so the normalised outputs are
    neither written nor kept for the backward pass. Row k of the [K, C] statistics is the
    per-channel batch statistics of ``ys[k]`` (biased variance, ``invstd = 1 / sqrt(var + eps)``)
    where ``batch_stats[k]`` (training mode; computed here, the given row is ignored), the given
    ``mean[k]`` and ``invstd[k]`` elsewhere (eval mode: the running statistics; a candidate
    without a BatchNorm: 0 and 1). Differentiable in ``ys`` (with the BatchNorm backward of the
    batch rows), ``weights`` and ``rest``; ``mean`` and ``invstd`` are constants.

    ``out`` is :math:`s`; with ``rest`` (N, (groups - 1) C, H, W) and ``groups`` >= 2 it is
    PC-DARTS' partial-channel output: ``cat([s, rest], 1)`` shuffled in ``groups`` groups (the
    authors' view-transpose-view), concatenated channel :math:`gC + c` on channel
    :math:`c \cdot groups + g`. The kernel writes :math:`s` straight into its channels and
    copies ``rest`` into the others; the backward reads the gradient in place (no concatenated
    or shuffled intermediate).

    Returns ``(out, mean, invstd, var)``: the statistics used, and the biased batch variance of
    the batch rows (zero elsewhere) for the running-statistics update; [K, C], float32 (float64
    for float64 ``ys``). NCHW and channels_last ``ys`` are read in place and ``out`` takes their
    layout (:func:`dense_layout`); other layouts are copied to NCHW first. ``rest`` is read in
    place when its pixels are dense in that layout (slices of a channel range are).
    """
    for name, t in (("mean", mean), ("invstd", invstd)):
        if t.requires_grad:
            raise ValueError(f"batch_norm_weighted_sum: {name} is a constant of the op (the batch "
                             f"rows' statistics are differentiated through ys); pass it "
                             f"detached")
    return ops.batch_norm_weighted_sum(list(ys), weights, mean, invstd,
                                       [bool(b) for b in batch_stats], float(eps), rest,
                                       int(groups))


def _check_batch_norm_weighted_sum(op, ys, weights, mean, invstd, batch_stats):
    torch._check(len(ys) > 0, lambda: f"{op}: ys must be a non-empty list of tensors")
    check_one_device(op, [*((f"ys[{k}]", y) for k, y in enumerate(ys)), ("weights", weights),
                          ("mean", mean), ("invstd", invstd)])
    torch._check(ys[0].dim() == 4,
                 lambda: f"{op}: ys must be 4-D (N, C, H, W), got shape {tuple(ys[0].shape)}")
    for k, y in enumerate(ys):
        torch._check(y.shape == ys[0].shape and y.dtype == ys[0].dtype,
                     lambda: f"{op}: ys[{k}] is {y.dtype} {tuple(y.shape)} but ys[0] is "
                             f"{ys[0].dtype} {tuple(ys[0].shape)}")
    K, C = len(ys), ys[0].shape[1]
    torch._check(weights.dim() == 1 and weights.shape[0] == K,
                 lambda: f"{op}: weights must be 1-D with one entry per tensor in ys ({K}), got "
                         f"shape {tuple(weights.shape)}")
    for name, t in (("mean", mean), ("invstd", invstd)):
        torch._check(t.shape == (K, C),
                     lambda: f"{op}: {name} must have shape [K, C] = [{K}, {C}] (one row per "
                             f"tensor in ys, one entry per channel), got {tuple(t.shape)}")
    torch._check(len(batch_stats) == K,
                 lambda: f"{op}: batch_stats must have one flag per tensor in ys ({K}), got "
                         f"{len(batch_stats)}")


def _grouped_shape(y, groups):
    """The shape of ``y`` (N, C, H, W) with ``groups`` times its channels: the output (groups),
    rest (groups - 1)."""
    n, c, h, w = y.shape
    return (n, c * groups, h, w)


def _check_rest(op, y, rest, groups):
    torch._check(groups >= 1, lambda: f"{op}: groups must be >= 1, got {groups}")
    torch._check((rest is not None) == (groups > 1),
                 lambda: f"{op}: rest needs groups >= 2 and groups > 1 needs rest, got groups="
                         f"{groups} {'with' if rest is not None else 'without'} rest")
    if rest is not None:
        shape = _grouped_shape(y, groups - 1)
        torch._check(rest.shape == shape,
                     lambda: f"{op}: rest must have shape [N, (groups - 1) * C, H, W] = "
                             f"{list(shape)}, got {list(rest.shape)}")
        torch._check(rest.dtype == y.dtype,
                     lambda: f"{op}: rest must have the dtype of ys ({y.dtype}), got "
                             f"{rest.dtype}")
        check_one_device(op, [("ys[0]", y), ("rest", rest)])


@register_fake("batch_norm_weighted_sum")
def _batch_norm_weighted_sum_fake(ys, weights, mean, invstd, batch_stats, eps, rest=None,
                                  groups=1):
    op = "batch_norm_weighted_sum"
    _check_batch_norm_weighted_sum(op, ys, weights, mean, invstd, batch_stats)
    _check_rest(op, ys[0], rest, groups)
    stats = [ys[0].new_empty((len(ys), ys[0].shape[1]), dtype=statistics_dtype(ys[0].dtype))
             for _ in range(3)]
    out = ys[0].new_empty(_grouped_shape(ys[0], groups)).to(memory_format=dense_layout(ys[0]))
    return (out, *stats)


@register_fake("batch_norm_weighted_sum_backward")
def _batch_norm_weighted_sum_backward_fake(grad, ys, weights, mean, invstd, batch_stats,
                                           ys_need_grad, weights_need_grad, groups=1,
                                           rest_need_grad=False):
    op = "batch_norm_weighted_sum_backward"
    _check_batch_norm_weighted_sum(op, ys, weights, mean, invstd, batch_stats)
    torch._check(groups >= 1, lambda: f"{op}: groups must be >= 1, got {groups}")
    shape = _grouped_shape(ys[0], groups)
    torch._check(grad.shape == shape,
                 lambda: f"{op}: grad has shape {tuple(grad.shape)} but the output has shape "
                         f"{shape}")
    layout = dense_layout(ys[0])
    grad_ys = [torch.empty_like(ys[0], memory_format=layout) for need in ys_need_grad if need]
    grad_rest = ys[0].new_empty((0,))
    if rest_need_grad:
        grad_rest = ys[0].new_empty(_grouped_shape(ys[0], groups - 1)).to(memory_format=layout)
    return grad_ys, weights.new_empty((len(ys),) if weights_need_grad else (0,)), grad_rest


def _batch_norm_weighted_sum_setup_context(ctx, inputs, output):
    ys, weights, _, _, batch_stats, eps, rest, groups = inputs
    _, mean, invstd, var = output
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.num_ys, ctx.batch_stats, ctx.eps, ctx.groups = len(ys), list(batch_stats), eps, groups
    ctx.ys_shape, ctx.ys_layout = ys[0].shape, dense_layout(ys[0])
    # The ys are read for the weight gradient and the batch rows' BatchNorm backward only.
    ctx.keeps_ys = weights.requires_grad or any(batch_stats)
    ctx.save_for_backward(weights, mean, invstd, *(ys if ctx.keeps_ys else ()))


def _batch_norm_weighted_sum_composite(ys, weights, mean, invstd, batch_stats, eps):
    """The weighted sum in differentiable torch ops, the batch statistics as functions of the
    ys."""
    out = 0
    for k, y in enumerate(ys):
        if batch_stats[k]:
            var, mu = torch.var_mean(y, dim=(0, 2, 3), correction=0, keepdim=True)
            yhat = (y - mu) * torch.rsqrt(var + eps)
        else:
            yhat = (y - mean[k].to(y.dtype).view(1, -1, 1, 1)) * \
                invstd[k].to(y.dtype).view(1, -1, 1, 1)
        out = out + weights[k] * yhat
    return out


def _batch_norm_weighted_sum_backward(ctx, grad, *_stats_grads):
    weights, mean, invstd, *ys = ctx.saved_tensors
    ys_need_grad = list(ctx.needs_input_grad[0])
    weights_need_grad = bool(ctx.needs_input_grad[1])
    # A call that leaves rest and groups at their defaults has no inputs for them here.
    rest_need_grad = len(ctx.needs_input_grad) > 6 and bool(ctx.needs_input_grad[6])

    def result(grad_ys, grad_weights, grad_rest):
        # mean, invstd, batch_stats and eps are constants, groups an int.
        grads = (grad_ys, grad_weights, None, None, None, None, grad_rest, None)
        return grads[:len(ctx.needs_input_grad)]

    if grad is None:
        return result([None] * ctx.num_ys, None, None)
    if torch.is_grad_enabled():
        # create_graph=True (double backward, e.g. the exact hypergradient): differentiate the
        # forward written in torch ops. Channel c * groups + g of grad is concatenated channel
        # g * C + c: group 0 is the weighted sum's gradient, the others the rest's.
        parts = grad.unflatten(1, (-1, ctx.groups))
        grad, grad_rest = parts[:, :, 0], parts[:, :, 1:].transpose(1, 2).flatten(1, 2)
        grad_rest = grad_rest if rest_need_grad else None
        if not ctx.keeps_ys:  # fixed statistics and constant weights: a scaling of grad
            scale = weights.view(-1, 1) * invstd.to(weights.dtype)
            return result([scale[k].view(1, -1, 1, 1).to(grad.dtype) * grad if need else None
                           for k, need in enumerate(ys_need_grad)], None, grad_rest)
        if not any(ys_need_grad) and not weights_need_grad:
            return result([None] * ctx.num_ys, None, grad_rest)
        grad_weights, *grad_ys = composite_grads(
            lambda weights, *ys: _batch_norm_weighted_sum_composite(
                ys, weights, mean, invstd, ctx.batch_stats, ctx.eps),
            [weights, *ys], [weights_need_grad, *ys_need_grad], grad)
        return result(grad_ys, grad_weights, grad_rest)
    if ctx.keeps_ys:
        ys_arg = ys
    else:  # then only the shapes and the layout of the ys are read
        placeholder = grad if ctx.groups == 1 else \
            torch.empty(ctx.ys_shape, dtype=grad.dtype, device=grad.device,
                        memory_format=ctx.ys_layout)
        ys_arg = [placeholder] * ctx.num_ys
    packed, grad_weights, grad_rest = ops.batch_norm_weighted_sum_backward(
        grad, ys_arg, weights, mean, invstd, ctx.batch_stats, ys_need_grad, weights_need_grad,
        ctx.groups, rest_need_grad)
    packed = iter(packed)
    grad_ys = [next(packed) if need else None for need in ys_need_grad]
    return result(grad_ys, grad_weights if weights_need_grad else None,
                  grad_rest if rest_need_grad else None)


register_autograd("batch_norm_weighted_sum", _batch_norm_weighted_sum_backward,
                  _batch_norm_weighted_sum_setup_context,
                  backward_op="batch_norm_weighted_sum_backward")
