"""P-DARTS' and the collapse guards' benchmark cases, for ``family.py``:

  * a P-DARTS stage-3 search step (17 cells, 3 candidates per edge, the skip dropout on): the
    authors' ``train()`` body on their network (``reference.PDARTSNetwork``: a first-order
    architecture step with the alphas' gradient clipped, then the weight step) against
    darts_fast's network, SearchStep and Architect (captured into a CUDA graph on a GPU);
  * the dominant eigenvalue of the validation loss' Hessian in the alphas (RobustDARTS' quantity;
    Lanczos on exact Hessian-vector products, the command line's tolerance) against one fused
    second-order DARTS search step on the same network and batch size: what logging it each
    epoch costs, in steps.
"""
import types

import numpy as np
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.cli.guards import EIGENVALUE_TOLERANCE
from darts_fast.methods.pdarts import PDARTSNetwork
from darts_fast.search.hessian_eigenvalue import arch_hessian_eigenvalue
from darts_fast.search.step import SearchStep
from darts_fast.spaces.cnn.genotypes import PRIMITIVES

# P-DARTS' CIFAR-10 search: the third stage's 17 cells and the authors' batch of 96 on a GPU, a
# smaller batch and width on the CPU.
PDARTS_CONFIG = {"cpu": dict(C=8, layers=17, batch=16), "cuda": dict(C=16, layers=17, batch=96)}
PDARTS_ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4,
                                    arch_weight_decay=1e-3)
LR, CLIP, DROPOUT = 0.025, 5.0, 0.7


def stage3_switches(seed):
    """14 edges keeping 3 candidates each, ``none`` or the skip among them on some."""
    rng = np.random.default_rng(seed)
    return [[bool(on) for on in np.isin(np.arange(len(PRIMITIVES)),
                                        rng.choice(len(PRIMITIVES), 3, replace=False))]
            for _ in range(14)]


def batches(device, batch, size=32):
    g = torch.Generator().manual_seed(1)
    x, xv = (torch.randn(batch, 3, size, size, generator=g).to(device) for _ in "ab")
    y, yv = (torch.randint(0, 10, (batch,), generator=g).to(device) for _ in "ab")
    return x, y, xv, yv


def pdarts_step(impl, device, config):
    torch.manual_seed(0)
    fused = impl == "fused"
    network = PDARTSNetwork if fused else reference.PDARTSNetwork
    model = network(config["C"], 10, config["layers"], nn.CrossEntropyLoss(),
                    switches_normal=stage3_switches(0), switches_reduce=stage3_switches(1),
                    p=DROPOUT, last_stage=True).to(device)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=0.9, weight_decay=3e-4)
    x, y, xv, yv = batches(device, config["batch"], config.get("image", 32))
    if fused:
        step = SearchStep(model, darts_fast.Architect(model, PDARTS_ARGS, grad_clip=CLIP),
                          optimizer, grad_clip=CLIP, unrolled=False)

        def body():
            return step(x, y, xv, yv, LR)[0]
    else:
        adam = torch.optim.Adam(model.arch_parameters(), lr=6e-4, betas=(0.5, 0.999),
                                weight_decay=1e-3)

        def body():
            model.train()
            adam.zero_grad()
            model._criterion(model(xv), yv).backward()
            nn.utils.clip_grad_norm_(model.arch_parameters(), CLIP)
            adam.step()
            optimizer.zero_grad()
            loss = model._criterion(model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            return loss.detach()

    run = _synchronized(body, device)
    if fused and device.type == "cuda":
        for _ in range(step.warmup):  # the eager warm-up calls; the next call captures
            run()
    return run


def eigenvalue(impl, device, config):
    torch.manual_seed(0)
    model = darts_fast.Network(config["C"], 10, config["layers"], nn.CrossEntropyLoss())
    model.to(device)
    x, y, xv, yv = batches(device, config["batch"], config.get("image", 32))
    if impl == "eigenvalue":
        def body():
            return torch.tensor(arch_hessian_eigenvalue(model, (xv, yv), 1e-3,
                                                        tolerance=EIGENVALUE_TOLERANCE).value)
        return _synchronized(body, device)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=0.9, weight_decay=3e-4)
    step = SearchStep(model, darts_fast.Architect(model, PDARTS_ARGS), optimizer, grad_clip=CLIP,
                      unrolled=True)
    run = _synchronized(lambda: step(x, y, xv, yv, LR)[0], device)
    if device.type == "cuda":
        for _ in range(step.warmup):
            run()
    return run


def _synchronized(body, device):
    def run():
        result = body()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result
    return run
