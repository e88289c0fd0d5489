"""The benchmark scenarios, shared by the pytest-benchmark files and the report script: each
builds its inputs and returns a zero-argument function that runs one iteration."""
import functools
import types

import torch
import torch.nn as nn

import darts_fast
from darts_fast import kernels, reference
from darts_fast.search.step import SearchStep

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
ETA = 0.025

# The search step of issue-sized runs: Network(8, 10, 5) at batch 16 on CPU, Network(16, 10, 8)
# at batch 64 (the DARTS search configuration) on CUDA.
STEP_CONFIG = {"cpu": dict(C=8, layers=5, batch=16), "cuda": dict(C=16, layers=8, batch=64)}


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, run, rounds, warmup=1, before=None):
    """``run`` timed by pytest-benchmark after ``warmup`` untimed calls (compilation, caches;
    ``before`` runs between them and the timing); with benchmarks disabled, as in the test pass,
    ``run`` runs once. Returns what the last call returned."""
    if not benchmark.enabled:
        return run()
    for _ in range(warmup):
        run()
    if before is not None:
        before()
    return benchmark.pedantic(run, rounds=rounds, iterations=1)


SEARCH_STEP_IMPLS = ["reference", "compiled_reference", "fused_unfolded", "fused",
                     "fused_recompute", "fused_graph", "fused_deterministic"]


def step_batches(device, batch, size):
    """The training and validation batches of a step case: (x, y, x_valid, y_valid)."""
    g = torch.Generator().manual_seed(1)
    x, xv = (torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(2))
    y, yv = (torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(2))
    return x, y, xv, yv


def search_step(impl, device, unrolled, batch=None, config=None,
                networks=(darts_fast.Network, reference.Network), args=ARGS):
    """One full search step (architect step, then the weight step on the same batch): the
    original algorithm ('reference'), the original with its network's forward compiled
    ('compiled_reference'), or darts_fast's SearchStep: eager ('fused'), eager without the
    BatchNorm fold ('fused_unfolded'), eager with the mixed ops recomputed in the backward pass
    ('fused_recompute'), captured into a CUDA graph
    ('fused_graph', CUDA only), eager with deterministic algorithms ('fused_deterministic': they
    stay on for the process). ``networks``: darts_fast's network class and the original's
    (PC-DARTS' pair, say); ``args``: the architect's settings and the weights' SGD ones."""
    config = dict(config or STEP_CONFIG[torch.device(device).type])
    batch = batch or config["batch"]
    torch.manual_seed(0)
    fused = impl.startswith("fused")
    network = networks[0] if fused else networks[1]
    model = network(config["C"], 10, config["layers"], nn.CrossEntropyLoss(),
                    recompute=impl == "fused_recompute",
                    fold_batch_norm=impl != "fused_unfolded").to(device)
    if impl == "compiled_reference":
        model.forward = torch.compile(model.forward)
    # cuDNN autotunes, as the original sets it, except under deterministic algorithms.
    torch.use_deterministic_algorithms(impl == "fused_deterministic")
    torch.backends.cudnn.benchmark = impl != "fused_deterministic"
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    architect = (darts_fast.Architect if fused else reference.Architect)(model, args)
    # CIFAR-10's image size, except in the test pass
    x, y, xv, yv = step_batches(device, batch, config.get("image", 32))
    if fused:
        search = SearchStep(model, architect, optimizer, grad_clip=5, unrolled=unrolled,
                            cuda_graph=impl == "fused_graph")

        def body():
            return search(x, y, xv, yv, ETA)[0]
    else:
        def body():
            architect.step(x, y, xv, yv, ETA, optimizer, unrolled)
            optimizer.zero_grad()
            loss = model._loss(x, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5)
            optimizer.step()
            return loss

    return synchronized(body, device)


def synchronized(body, device):
    """``body`` with the device synchronised after it, so that a timer around a call measures
    its kernels."""
    def step():
        result = body()
        synchronize(device)
        return result

    return step


# Untimed calls before a step is timed: compilation, cuDNN's choices; the graph's warm-up steps
# and its capture.
STEP_WARMUP = {"fused_graph": 4}


GDAS_STEP_IMPLS = ["reference", "fused"]
# GDAS' weight optimizer (its authors' configuration): Nesterov SGD, weight decay 5e-4.
GDAS_ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=5e-4, arch_learning_rate=3e-4,
                                  arch_weight_decay=1e-3)


def gdas_search_step(impl, device, batch=None, config=None):
    """One GDAS search step (the weight step, then the first-order architecture step on the
    validation batch), on the search-step cases' network and batch: the authors' formulation
    ('reference': reference.GDASNetwork, its edges running ``op(x) * w[index]`` and reading their
    indices on the host one by one, then the authors' loop body) or darts_fast's
    (``GDASNetwork`` on the fused op, one host read per forward pass, ``SearchStep`` with
    ``weights_first=True``; eager: the host read rules out a CUDA graph). The same seed gives
    both the same candidates, step by step, so a round times the same sampled networks."""
    config = dict(config or STEP_CONFIG[torch.device(device).type])
    batch = batch or config["batch"]
    torch.manual_seed(0)
    fused = impl == "fused"
    network = darts_fast.GDASNetwork if fused else reference.GDASNetwork
    model = network(config["C"], 10, config["layers"], nn.CrossEntropyLoss()).to(device)
    # Sampled networks meet convolutions they have not run yet for many steps: cuDNN's autotuning
    # would be timed with them. The authors' search turns it off too.
    torch.backends.cudnn.benchmark = False
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=GDAS_ARGS.momentum,
                                weight_decay=GDAS_ARGS.weight_decay, nesterov=True)
    architect = (darts_fast.Architect if fused else reference.Architect)(model, GDAS_ARGS)
    x, y, xv, yv = step_batches(device, batch, config.get("image", 32))
    if fused:
        search = SearchStep(model, architect, optimizer, grad_clip=5, unrolled=False,
                            weights_first=True)

        def body():
            return search(x, y, xv, yv, ETA)[0]
    else:
        def body():
            optimizer.zero_grad()
            loss = model._loss(x, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5)
            optimizer.step()
            architect.step(x, y, xv, yv, ETA, optimizer, False)
            return loss

    return synchronized(body, device)


MIXED_OP_IMPLS = ["reference", "compiled_reference", "fused_unfolded", "fused"]


def mixed_op(impl, device, C=16, HW=32, stride=1, batch=64):
    """MixedOp forward+backward: the original ('reference'), torch.compile of it
    ('compiled_reference'), darts_fast's with ('fused') and without ('fused_unfolded') the
    BatchNorm fold."""
    torch.manual_seed(0)
    if impl.startswith("fused"):
        op = darts_fast.MixedOp(C, stride, fold_batch_norm=impl == "fused").to(device)
    else:
        op = reference.MixedOp(C, stride).to(device)
        if impl == "compiled_reference":
            op = torch.compile(op)
    x = torch.randn(batch, C, HW, HW, device=device, requires_grad=True)
    w = torch.softmax(torch.randn(8, device=device), 0).requires_grad_()
    g = torch.randn(batch, C, HW // stride, HW // stride, device=device)

    def run():
        result = torch.autograd.grad(op(x, w), [x, w, *op.parameters()], g)
        synchronize(device)
        return result

    return run


@functools.cache
def _network_weight_shapes():
    return [p.shape for p in darts_fast.Network(16, 10, 8, None).parameters()]


def multi_tensor_lists(device, count=4):
    """Lists shaped like the weights of Network(16, 10, 8) (1.93M weights in 458 tensors)."""
    torch.manual_seed(0)
    return [[torch.randn(s, device=device) for s in _network_weight_shapes()]
            for _ in range(count)]


def multi_tensor_update(name, impl, device):
    """The architect's multi-tensor updates: a Python loop over tensors, torch._foreach_*, or the
    fused darts_fast kernel."""
    w, g, buf, v = multi_tensor_lists(device)
    out = [torch.empty_like(t) for t in w]
    r = torch.tensor(0.01, device=device)
    mu, wd = ARGS.momentum, ARGS.weight_decay

    if name == "virtual_step":
        if impl == "fused":
            def fn():
                kernels.multi_tensor_virtual_step(out, w, g, buf, ETA, mu, wd)
        elif impl == "foreach":
            def fn():
                moment = torch._foreach_mul(buf, mu)
                dtheta = torch._foreach_add(g, w, alpha=wd)
                torch._foreach_add_(moment, dtheta)
                torch._foreach_copy_(out, w)
                torch._foreach_add_(out, moment, alpha=-ETA)
        else:
            def fn():
                for o, wi, gi, bi in zip(out, w, g, buf):
                    torch.sub(wi, mu * bi + (gi + wd * wi), alpha=ETA, out=o)
    elif name == "norm":
        if impl == "fused":
            fn = lambda: kernels.multi_tensor_norm(v)  # noqa: E731
        elif impl == "foreach":
            fn = lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))  # noqa
        else:
            fn = lambda: torch.cat([t.reshape(-1) for t in v]).norm()  # noqa: E731
    elif name == "axpy":
        if impl == "fused":
            fn = lambda: kernels.multi_tensor_axpy_(out, v, r)  # noqa: E731
        elif impl == "foreach":
            fn = lambda: torch._foreach_add_(out, torch._foreach_mul(v, r))  # noqa: E731
        else:
            def fn():
                for o, vi in zip(out, v):
                    o.add_(vi, alpha=r.item())
    else:
        raise ValueError(name)

    def run():
        result = fn()
        synchronize(device)
        return result

    return run
