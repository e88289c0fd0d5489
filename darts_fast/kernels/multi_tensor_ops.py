"""The multi-tensor ops (one launch over a list of tensors: the norm, axpy, the virtual step and
the finite difference of second-order DARTS, the device-side revert of a non-finite step):
wrappers and fake kernels.

Schemas in ``csrc/ops.cpp``, kernels in ``csrc/cpu/multi_tensor_cpu.cpp`` and
``csrc/cuda/multi_tensor_cuda.cu``.
"""
from typing import List, Sequence

import torch

from ._common import check_one_device, ops, register_fake, requires


@requires("multi_tensor_norm")
def multi_tensor_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm ``sqrt(sum_i ||t_i||^2)`` as a 0-dim tensor on the tensors' device (no host
    synchronisation on CUDA). Deterministic: partial sums are combined in a fixed order."""
    tensors = list(tensors)
    if not tensors:  # no tensor to choose a device from: the dispatcher could not say why
        raise ValueError("multi_tensor_norm: tensors must be a non-empty list")
    return ops.multi_tensor_norm(tensors)


@requires("multi_tensor_axpy_")
def multi_tensor_axpy_(ys: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], alpha: torch.Tensor):
    """In place ``ys[i] += alpha * xs[i]`` for every i; ``alpha`` is a 0-dim tensor, so a step size
    computed on the device never travels to the host."""
    ops.multi_tensor_axpy_(list(ys), list(xs), alpha)


def scalar(value) -> torch.Tensor:
    """``value`` as the 0-dim tensor the multi-tensor ops take: a tensor as it is (on the device,
    so a captured graph reads its current value), a Python number as a float64 CPU scalar (passed
    to the kernel by value: no copy to the device)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float64)


@requires("multi_tensor_virtual_step")
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
    ops.multi_tensor_virtual_step(
        out, list(weights), list(grads), list(momentum_buffers),
        scalar(eta), float(momentum), float(weight_decay),
    )


@requires("multi_tensor_finite_difference")
def multi_tensor_finite_difference(
    dalpha: Sequence[torch.Tensor],
    grads_pos: Sequence[torch.Tensor],
    grads_neg: Sequence[torch.Tensor],
    r: torch.Tensor,
    eta,
) -> List[torch.Tensor]:
    """``dalpha[i] - eta * (grads_pos[i] - grads_neg[i]) / (2 r)``, the second-order DARTS
    hypergradient from a central finite difference of step r (``eta``: see :func:`scalar`)."""
    return ops.multi_tensor_finite_difference(
        list(dalpha), list(grads_pos), list(grads_neg), r, scalar(eta)
    )


@requires("multi_tensor_revert_")
def multi_tensor_revert_(tensors: Sequence[torch.Tensor], saved: Sequence[torch.Tensor],
                         keep: torch.Tensor):
    """Where ``keep`` (a 0-dim bool tensor) is false, ``tensors[i].copy_(saved[i])`` for every i;
    where it is true, nothing. ``keep`` is read on the device, so a step can be undone without a
    host synchronisation (the way ``GradScaler`` skips an optimizer step). Any dtypes; tensor i of
    ``saved`` has the dtype and shape of ``tensors[i]``."""
    ops.multi_tensor_revert_(list(tensors), list(saved), keep)


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
        check_one_device(op, named)
        (name0, t0) = named[0]
        for name, s in scalars:
            torch._check(s.dim() == 0, lambda: f"{op}: {name} must be a 0-dim tensor, got shape "
                                               f"{tuple(s.shape)}")
            torch._check(s.device == t0.device or s.device.type == "cpu",
                         lambda: f"{op}: {name} is on {s.device} but {name0} is on {t0.device} "
                                 f"(a 0-dim CPU tensor also works)")


@register_fake("multi_tensor_norm")
def _multi_tensor_norm_fake(tensors):
    _check_lists("multi_tensor_norm", ("tensors", tensors))
    return tensors[0].new_empty(())


@register_fake("multi_tensor_axpy_")
def _multi_tensor_axpy_fake(ys, xs, alpha):
    _check_lists("multi_tensor_axpy_", ("ys", ys), ("xs", xs), scalars=[("alpha", alpha)])
    return None


@register_fake("multi_tensor_virtual_step")
def _multi_tensor_virtual_step_fake(out, weights, grads, momentum_buffers, eta, momentum, wd):
    lists = [("out", out), ("weights", weights), ("grads", grads)]
    if momentum_buffers:
        lists.append(("momentum_buffers", momentum_buffers))
    _check_lists("multi_tensor_virtual_step", *lists, scalars=[("eta", eta)])
    return None


@register_fake("multi_tensor_finite_difference")
def _multi_tensor_finite_difference_fake(dalpha, grads_pos, grads_neg, r, eta):
    _check_lists("multi_tensor_finite_difference", ("dalpha", dalpha), ("grads_pos", grads_pos),
                 ("grads_neg", grads_neg), scalars=[("r", r), ("eta", eta)])
    return [torch.empty_like(d) for d in dalpha]


@register_fake("multi_tensor_revert_")
def _multi_tensor_revert_fake(tensors, saved, keep):
    _check_lists("multi_tensor_revert_", ("tensors", tensors), ("saved", saved),
                 scalars=[("keep", keep)])
    return None
