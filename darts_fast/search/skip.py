"""Skipping a non-finite step on the device, the way ``torch.amp.GradScaler`` skips an optimizer
step: take copies of what the step changes, run it, and let one kernel put the copies back when a
device-side flag says the step was not finite. Nothing is read on the host, so the step can be
captured into a CUDA graph."""
import torch


def all_finite(tensors):
    """A 0-dim bool tensor, on the tensors' device: whether every element of every tensor is
    finite (one sum per tensor: a sum that overflows counts as not finite)."""
    with torch.no_grad():
        return torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors])).all()


def allocate_like(copies, tensors):
    """Persistent tensors shaped like ``tensors``, reallocated only when these change."""
    if copies is None or len(copies) != len(tensors) or any(
        c.shape != t.shape or c.dtype != t.dtype or c.device != t.device or
        c.stride() != t.stride() for c, t in zip(copies, tensors)
    ):
        copies = [torch.empty_like(t) for t in tensors]
    return copies


def copy_into(copies, tensors):
    """``tensors`` copied into the persistent ``copies`` (see :func:`allocate_like`); none for a
    model without buffers (the foreach kernels refuse empty lists)."""
    copies = allocate_like(copies, tensors)
    if tensors:
        with torch.no_grad():
            torch._foreach_copy_(copies, tensors)
    return copies


def state_tensors(optimizer, params):
    """The tensors of the optimizer's state for ``params`` (momentum buffers, Adam's moments and
    step counts), in a fixed order."""
    tensors = []
    for p in params:
        state = optimizer.state.get(p, {})
        tensors += [state[k] for k in sorted(state) if isinstance(state[k], torch.Tensor)]
    return tensors


def count_skip(counter, finite):
    """``counter + (not finite)`` in place, on the device; a new int64 counter the first time."""
    if counter is None or counter.device != finite.device:
        counter = torch.zeros((), dtype=torch.int64, device=finite.device)
    counter.add_(finite.logical_not())
    return counter


def adam_step(optimizer, alphas, saved):
    """Adam's step on the alphas. Returns the tensors it changed (alphas and their Adam state),
    their values before it, for a revert, and ``saved`` (the persistent copies, see
    :func:`copy_into`). The state Adam creates on its first step is all zeros (step count
    included): its value before is zeros."""
    state = optimizer.state
    if alphas[0].is_cuda:  # the step count on the device, so that a revert can reach it
        for group in optimizer.param_groups:
            group["capturable"] = True
        for a in alphas:  # a state loaded from a CPU run keeps its count on the CPU
            if "step" in state.get(a, {}) and state[a]["step"].device != a.device:
                state[a]["step"] = state[a]["step"].to(a.device, torch.float32)
    fresh = {id(a) for a in alphas if a.grad is not None and not state.get(a)}
    before = alphas + state_tensors(optimizer, [a for a in alphas if id(a) not in fresh])
    saved = copy_into(saved, before)
    optimizer.step()
    created = state_tensors(optimizer, [a for a in alphas if id(a) in fresh])
    return before + created, saved + [torch.zeros_like(t) for t in created], saved
