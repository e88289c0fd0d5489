r"""The darts_fast operators: typed wrappers, fake (meta) kernels and autograd.

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA kernels in ``csrc/cpu`` and
``csrc/cuda``. Importing this module loads them.

Weighted sum (the mixed operation of DARTS), for K same-shape tensors :math:`x_k`:

.. math::
    y = \sum_k w_k x_k, \qquad
    \frac{\partial L}{\partial x_k} = w_k g, \qquad
    \frac{\partial L}{\partial w_k} = \sum_i g_i x_{k,i}, \qquad g = \frac{\partial L}{\partial y}.
"""
from typing import List, Optional, Sequence

import torch

from .. import _C  # noqa: F401  (loads the schemas and kernels)

_ops = torch.ops.darts_fast


def weighted_sum(xs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights[k] * xs[k])`` in one pass; differentiable in ``xs`` and ``weights``.

    ``xs``: K >= 1 tensors of one shape, dtype and device (float32/float64; float16/bfloat16
    accumulate in float32). ``weights``: 1-D of length K, the dtype of ``xs`` (float32 is also
    accepted for float16/bfloat16). The weight gradient is reduced in a fixed order, so it has the
    same bits on every run.
    """
    return _ops.weighted_sum(list(xs), weights)


def _check_one_device(op, named_tensors):
    """Every tensor on the first one's device. The dispatcher picks one kernel for a call whose
    tensors sit on several devices (a meta tensor among CPU tensors runs the fake kernel, for
    instance), so each kernel, the fake ones included, must refuse such a call itself."""
    (name0, t0), *rest = named_tensors
    for name, t in rest:
        torch._check(t.device == t0.device,
                     lambda: f"{op}: {name} is on {t.device} but {name0} is on {t0.device}; "
                             f"all tensors must be on one device")


def _check_weighted_sum(op, xs, weights):
    torch._check(len(xs) > 0, lambda: f"{op}: xs must be a non-empty list of tensors")
    _check_one_device(op, [*((f"xs[{k}]", x) for k, x in enumerate(xs)), ("weights", weights)])
    for k, x in enumerate(xs):
        torch._check(x.shape == xs[0].shape and x.dtype == xs[0].dtype,
                     lambda: f"{op}: xs[{k}] is {x.dtype} {tuple(x.shape)} but xs[0] is "
                             f"{xs[0].dtype} {tuple(xs[0].shape)}")
    torch._check(weights.dim() == 1 and weights.shape[0] == len(xs),
                 lambda: f"{op}: weights must be 1-D with one entry per tensor in xs "
                         f"({len(xs)}), got shape {tuple(weights.shape)}")


@torch.library.register_fake("darts_fast::weighted_sum")
def _weighted_sum_fake(xs, weights):
    _check_weighted_sum("weighted_sum", xs, weights)
    return torch.empty_like(xs[0])


@torch.library.register_fake("darts_fast::weighted_sum_backward")
def _weighted_sum_backward_fake(grad, xs, weights, xs_need_grad, weights_need_grad):
    _check_weighted_sum("weighted_sum_backward", xs, weights)
    _check_one_device("weighted_sum_backward", [("xs[0]", xs[0]), ("grad", grad)])
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
    return _ops.batch_norm_weighted_sum(list(ys), weights, mean, invstd,
                                        [bool(b) for b in batch_stats], float(eps), rest,
                                        int(groups))


def _check_batch_norm_sum(op, ys, weights, mean, invstd, batch_stats):
    torch._check(len(ys) > 0, lambda: f"{op}: ys must be a non-empty list of tensors")
    _check_one_device(op, [*((f"ys[{k}]", y) for k, y in enumerate(ys)), ("weights", weights),
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
        _check_one_device(op, [("ys[0]", y), ("rest", rest)])


def statistics_dtype(dtype):
    """The dtype of batch_norm_weighted_sum's statistics for candidate outputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_layout(t):
    """torch.channels_last for a 4-D tensor dense in that layout (and not also NCHW-contiguous),
    torch.contiguous_format otherwise: the layout batch_norm_weighted_sum computes in."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
            and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("darts_fast::batch_norm_weighted_sum")
def _batch_norm_weighted_sum_fake(ys, weights, mean, invstd, batch_stats, eps, rest=None,
                                  groups=1):
    op = "batch_norm_weighted_sum"
    _check_batch_norm_sum(op, ys, weights, mean, invstd, batch_stats)
    _check_rest(op, ys[0], rest, groups)
    stats = [ys[0].new_empty((len(ys), ys[0].shape[1]), dtype=statistics_dtype(ys[0].dtype))
             for _ in range(3)]
    out = ys[0].new_empty(_grouped_shape(ys[0], groups)).to(memory_format=dense_layout(ys[0]))
    return (out, *stats)


@torch.library.register_fake("darts_fast::batch_norm_weighted_sum_backward")
def _batch_norm_weighted_sum_backward_fake(grad, ys, weights, mean, invstd, batch_stats,
                                           ys_need_grad, weights_need_grad, groups=1,
                                           rest_need_grad=False):
    op = "batch_norm_weighted_sum_backward"
    _check_batch_norm_sum(op, ys, weights, mean, invstd, batch_stats)
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
        targets = [y for y, need in zip(ys, ys_need_grad) if need]
        if weights_need_grad:
            targets.append(weights)
        if not targets:
            return result([None] * ctx.num_ys, None, grad_rest)
        out = _batch_norm_weighted_sum_composite(ys, weights, mean, invstd, ctx.batch_stats,
                                                 ctx.eps)
        found = iter(torch.autograd.grad(out, targets, grad, create_graph=True))
        grad_ys = [next(found) if need else None for need in ys_need_grad]
        return result(grad_ys, next(found) if weights_need_grad else None, grad_rest)
    if ctx.keeps_ys:
        ys_arg = ys
    else:  # then only the shapes and the layout of the ys are read
        placeholder = grad if ctx.groups == 1 else \
            torch.empty(ctx.ys_shape, dtype=grad.dtype, device=grad.device,
                        memory_format=ctx.ys_layout)
        ys_arg = [placeholder] * ctx.num_ys
    packed, grad_weights, grad_rest = _ops.batch_norm_weighted_sum_backward(
        grad, ys_arg, weights, mean, invstd, ctx.batch_stats, ys_need_grad, weights_need_grad,
        ctx.groups, rest_need_grad)
    packed = iter(packed)
    grad_ys = [next(packed) if need else None for need in ys_need_grad]
    return result(grad_ys, grad_weights if weights_need_grad else None,
                  grad_rest if rest_need_grad else None)


torch.library.register_autograd(
    "darts_fast::batch_norm_weighted_sum",
    _batch_norm_weighted_sum_backward,
    setup_context=_batch_norm_weighted_sum_setup_context,
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


def scalar(value) -> torch.Tensor:
    """``value`` as the 0-dim tensor the multi-tensor ops take: a tensor as it is (on the device,
    so a captured graph reads its current value), a Python number as a float64 CPU scalar (passed
    to the kernel by value: no copy to the device)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float64)


def multi_tensor_virtual_step(
    out: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    eta,
    momentum: float,
    weight_decay: float,
):
    """``out[i] = w[i] - eta * (momentum * buf[i] + g[i] + weight_decay * w[i])``.

    The one-step-unrolled weights of second-order DARTS. ``out`` may be the parameters themselves
    while ``weights`` holds a saved copy: the original weights stay intact and can be restored bit
    for bit. An empty ``momentum_buffers`` stands for zeros (before the first SGD step). ``eta``: a
    number or a 0-dim tensor (see :func:`scalar`).
    """
    out = list(out)
    if not out and not weights and not grads:
        return
    _ops.multi_tensor_virtual_step(
        out, list(weights), list(grads), list(momentum_buffers),
        scalar(eta), float(momentum), float(weight_decay),
    )


def multi_tensor_finite_difference(
    dalpha: Sequence[torch.Tensor],
    grads_pos: Sequence[torch.Tensor],
    grads_neg: Sequence[torch.Tensor],
    r: torch.Tensor,
    eta,
) -> List[torch.Tensor]:
    """``dalpha[i] - eta * (grads_pos[i] - grads_neg[i]) / (2 r)``, the second-order DARTS
    hypergradient from a central finite difference of step r (``eta``: see :func:`scalar`)."""
    return _ops.multi_tensor_finite_difference(
        list(dalpha), list(grads_pos), list(grads_neg), r, scalar(eta)
    )


def multi_tensor_revert_(tensors: Sequence[torch.Tensor], saved: Sequence[torch.Tensor],
                         keep: torch.Tensor):
    """Where ``keep`` (a 0-dim bool tensor) is false, ``tensors[i].copy_(saved[i])`` for every i;
    where it is true, nothing. ``keep`` is read on the device, so a step can be undone without a
    host synchronisation (the way ``GradScaler`` skips an optimizer step). Any dtypes; tensor i of
    ``saved`` has the dtype and shape of ``tensors[i]``."""
    _ops.multi_tensor_revert_(list(tensors), list(saved), keep)


def _check_lists(op, *named_lists, scalars=()):
    """The fake kernels' version of the multi-tensor checks: equal lengths, tensor i of every list
    shaped like tensor i of the first, one device for all; ``scalars``: (name, 0-dim tensor) pairs
    on that device or the CPU."""
    (name0, ref), *others = named_lists
    for name, ts in others:
        torch._check(len(ts) == len(ref),
                     lambda: f"{op}: {name} has {len(ts)} tensors but {name0} has {len(ref)}")
        for i, (t, r) in enumerate(zip(ts, ref)):
            torch._check(t.shape == r.shape, lambda: f"{op}: {name}[{i}] has shape "
                         f"{tuple(t.shape)} but {name0}[{i}] has shape {tuple(r.shape)}")
    named = [(f"{name}[{i}]", t) for name, ts in named_lists for i, t in enumerate(ts)]
    if named:
        _check_one_device(op, named)
        (name0, t0) = named[0]
        for name, s in scalars:
            torch._check(s.dim() == 0, lambda: f"{op}: {name} must be a 0-dim tensor, got shape "
                                               f"{tuple(s.shape)}")
            torch._check(s.device == t0.device or s.device.type == "cpu",
                         lambda: f"{op}: {name} is on {s.device} but {name0} is on {t0.device} "
                                 f"(a 0-dim CPU tensor also works)")


@torch.library.register_fake("darts_fast::multi_tensor_norm")
def _multi_tensor_norm_fake(tensors):
    _check_lists("multi_tensor_norm", ("tensors", tensors))
    return tensors[0].new_empty(())


@torch.library.register_fake("darts_fast::multi_tensor_axpy_")
def _multi_tensor_axpy_fake(ys, xs, alpha):
    _check_lists("multi_tensor_axpy_", ("ys", ys), ("xs", xs), scalars=[("alpha", alpha)])
    return None


@torch.library.register_fake("darts_fast::multi_tensor_virtual_step")
def _multi_tensor_virtual_step_fake(out, weights, grads, momentum_buffers, eta, momentum, wd):
    lists = [("out", out), ("weights", weights), ("grads", grads)]
    if momentum_buffers:
        lists.append(("momentum_buffers", momentum_buffers))
    _check_lists("multi_tensor_virtual_step", *lists, scalars=[("eta", eta)])
    return None


@torch.library.register_fake("darts_fast::multi_tensor_finite_difference")
def _multi_tensor_finite_difference_fake(dalpha, grads_pos, grads_neg, r, eta):
    _check_lists("multi_tensor_finite_difference", ("dalpha", dalpha), ("grads_pos", grads_pos),
                 ("grads_neg", grads_neg), scalars=[("r", r), ("eta", eta)])
    return [torch.empty_like(d) for d in dalpha]


@torch.library.register_fake("darts_fast::multi_tensor_revert_")
def _multi_tensor_revert_fake(tensors, saved, keep):
    _check_lists("multi_tensor_revert_", ("tensors", tensors), ("saved", saved),
                 scalars=[("keep", keep)])
    return None
