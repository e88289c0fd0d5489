"""The network's weights as the architect handles them: their checks, SGD's momentum buffers,
and swapping other values into the parameters and out again."""


def check_weights(params):
    """The multi-tensor kernels take one dtype and device for all the weights."""
    if not params:
        raise ValueError("Architect.step: the model has no parameters")
    p0 = params[0]
    for p in params:
        if p.dtype != p0.dtype or p.device != p0.device:
            raise ValueError(
                f"Architect.step: all model weights must share one dtype and device, found "
                f"{p0.dtype} on {p0.device} and {p.dtype} on {p.device}"
            )


def momentum_buffers(network_optimizer, model, params):
    """The SGD momentum buffers of every weight, or [] (zeros) when any is missing, as in the
    original (which falls back to zeros before the first SGD step)."""
    if not hasattr(network_optimizer, "param_groups") or not hasattr(network_optimizer, "state"):
        raise TypeError("Architect.step: network_optimizer must be a torch.optim.Optimizer")
    held = {id(p) for group in network_optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if id(p) not in held]
    if missing:
        raise ValueError(
            f"Architect.step: network_optimizer does not hold the model's weights "
            f"({len(missing)} missing, e.g. {missing[0]!r})"
        )
    bufs = [network_optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    return [] if any(b is None for b in bufs) else bufs


def swap_in(tensors, data):
    """``t.data = d`` for each pair: the parameters keep their identity (the optimizers and
    autograd's leaves), their values are swapped."""
    for t, d in zip(tensors, data):
        t.data = d
