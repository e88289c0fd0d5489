"""SearchStep against the original loop body, its device-side skip of non-finite steps, and (on
CUDA) its captured graph against the eager step."""
import copy
import types

import pytest
import torch
import torch.nn as nn
from helpers import rel_err

import darts_fast
from darts_fast import reference
from darts_fast.cli.runtime import determinism
from darts_fast.search.step import SearchStep

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
LRS = [0.025, 0.025, 0.02, 0.02, 0.015]  # a new rate recaptures the graph


def setup(device, dtype=torch.float32, network=darts_fast.Network, architect=darts_fast.Architect,
          seed=0):
    torch.manual_seed(seed)
    # Two nodes per cell instead of four: the step's logic at a third of the cost.
    model = network(4, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2).to(device=device,
                                                                               dtype=dtype)
    optimizer = torch.optim.SGD(model.parameters(), LRS[0], momentum=ARGS.momentum,
                                weight_decay=ARGS.weight_decay)
    return model, optimizer, architect(model, ARGS)


def batch(device, dtype, seed, n=4):
    g = torch.Generator().manual_seed(100 + seed)
    return [torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64).to(device, dtype),
            torch.randint(0, 10, (n,), generator=g).to(device),
            torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64).to(device, dtype),
            torch.randint(0, 10, (n,), generator=g).to(device)]


def original_body(model, architect, optimizer, data, lr, unrolled):
    """The loop body of the original train_search.py."""
    x, y, xv, yv = data
    model.train()
    architect.step(x, y, xv, yv, lr, optimizer, unrolled)
    optimizer.zero_grad()
    logits = model(x)
    loss = model._criterion(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return loss, logits


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def everything(model, optimizer, architect):
    state = [t for p in model.parameters() for t in optimizer.state[p].values()]
    adam = [t for s in architect.optimizer.state.values() for t in s.values()]
    return [*model.parameters(), *model.arch_parameters(), *model.buffers(), *state, *adam]


@pytest.mark.parametrize("impl, unrolled", [("fused", True), ("fused", False),
                                            ("reference", False)])
def test_equals_the_original_loop_body(impl, unrolled):
    network, architect_cls = ((darts_fast.Network, darts_fast.Architect) if impl == "fused"
                              else (reference.Network, reference.Architect))
    runs = []
    for use_step in (True, False):
        model, optimizer, architect = setup("cpu", network=network, architect=architect_cls)
        step = SearchStep(model, architect, optimizer, grad_clip=5.0, unrolled=unrolled)
        losses = []
        for i, lr in enumerate(LRS[:3]):
            set_lr(optimizer, lr)
            data = batch("cpu", torch.float32, i)
            loss, _ = (step(*data, lr) if use_step else
                            original_body(model, architect, optimizer, data, lr, unrolled))
            losses.append(loss.detach())
        runs.append((losses, [t.detach().clone() for t in everything(model, optimizer,
                                                                     architect)]))
    (losses, tensors), (losses0, tensors0) = runs
    assert all(torch.equal(a, b) for a, b in zip(losses + tensors, losses0 + tensors0))


def test_a_non_finite_step_is_undone_and_counted():
    """Batches with an inf before each good one: at the first step (which creates the optimizers'
    state) and at a later one. The run ends bit for bit as a run without those batches."""
    runs = []
    for with_bad in (True, False):
        model, optimizer, architect = setup("cpu")
        step = SearchStep(model, architect, optimizer, unrolled=True)
        for i in range(2):
            data = batch("cpu", torch.float32, i)
            if with_bad:
                bad = [t.clone() for t in data]
                bad[0][0, 0, 0, 0] = bad[2][0, 0, 0, 0] = float("inf")
                loss, _ = step(*bad, LRS[0])
                assert not torch.isfinite(loss)
            step(*data, LRS[0])
        runs.append(([t.detach().clone() for t in everything(model, optimizer, architect)],
                     step.skipped_steps.item(), architect.skipped_steps.item()))
    (tensors, skipped, arch_skipped), (tensors0, skipped0, arch_skipped0) = runs
    assert (skipped, arch_skipped, skipped0, arch_skipped0) == (2, 2, 0, 0)
    assert len(tensors) == len(tensors0)
    assert all(torch.equal(a, b) for a, b in zip(tensors, tensors0))


def test_exploding_weights_are_undone():
    """A finite loss and gradient whose update overflows the weights: the step is undone."""
    model, optimizer, architect = setup("cpu", dtype=torch.float32)
    step = SearchStep(model, architect, optimizer, grad_clip=None, unrolled=False)
    step(*batch("cpu", torch.float32, 0), 0.025)
    before = [t.detach().clone() for t in everything(model, optimizer, architect)]
    set_lr(optimizer, 1e38)
    step(*batch("cpu", torch.float32, 1), 1e38)
    weights = list(model.parameters())
    assert step.skipped_steps.item() == 1
    assert all(torch.equal(a, b) for a, b in zip(weights, before[:len(weights)]))


class TestBadInput:
    def test_cuda_graph_on_cpu(self):
        model, optimizer, architect = setup("cpu")
        with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
            SearchStep(model, architect, optimizer, cuda_graph=True)

    def test_negative_grad_clip(self):
        model, optimizer, architect = setup("cpu")
        with pytest.raises(ValueError, match="grad_clip must be a number >= 0 or None"):
            SearchStep(model, architect, optimizer, grad_clip=-1)

    def test_no_criterion(self):
        _, optimizer, architect = setup("cpu")
        with pytest.raises(TypeError, match="give a criterion"):
            SearchStep(nn.Sequential(nn.Linear(2, 2)), architect, optimizer)

    def test_warmup(self):
        model, optimizer, architect = setup("cpu")
        with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
            SearchStep(model, architect, optimizer, warmup=0)

    @pytest.mark.parametrize("result, error, message", [
        (lambda loss: [loss, None, None], TypeError, (r"loss_fn\(model, batch\) must return a "
                                                      r"0-dim loss tensor or \(loss, output\), "
                                                      r"got a list of 3")),
        (lambda loss: (loss.reshape(1, 1), None), ValueError, r"shape \(1, 1\)"),
        (lambda loss: None, TypeError, "got None"),
    ])
    def test_loss_fn_result(self, result, error, message):
        model, optimizer, architect = setup("cpu")
        step = SearchStep(model, architect, optimizer,
                          loss_fn=lambda m, b: result(m._loss(*b)))
        data = batch("cpu", torch.float32, 0)
        weights = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(error, match=message):
            step.step_batches(data[:2], data[2:], LRS[0])
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))

    def test_criterion_and_loss_fn(self):
        model, optimizer, architect = setup("cpu")
        with pytest.raises(ValueError, match="give criterion or loss_fn, not both"):
            SearchStep(model, architect, optimizer, nn.CrossEntropyLoss(),
                       loss_fn=lambda m, b: m._loss(*b))

    def test_batch_form_without_loss_fn(self):
        model, optimizer, _ = setup("cpu")
        x, y, xv, yv = batch("cpu", torch.float32, 0)
        with pytest.raises(TypeError, match=r"without loss_fn a batch must be \(input, target\), "
                                            r"got a dict"):
            SearchStep(model, None, optimizer).step_batches({"x": x, "y": y}, (xv, yv), LRS[0])

    def test_batch_form_with_the_original_architect(self):
        model, optimizer, architect = setup("cpu", network=reference.Network,
                                            architect=reference.Architect)
        data = batch("cpu", torch.float32, 0)
        with pytest.raises(TypeError, match="the architect must offer step_batches"):
            SearchStep(model, architect, optimizer).step_batches(data[:2], data[2:], LRS[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("unrolled", [True, False])
def test_cuda_graph_replay_equals_the_eager_step(unrolled):
    """Warm-up, capture, replay across a rate change and a second shape; alphas and weights
    within 1e-6 of the eager step, float32; no host synchronisation while replaying."""
    runs = []
    for cuda_graph in (True, False):
        model, optimizer, architect = setup("cuda", dtype=torch.float32)
        step = SearchStep(model, architect, optimizer, unrolled=unrolled, cuda_graph=cuda_graph,
                          warmup=2)
        losses = []
        for i, lr in enumerate(LRS + [LRS[-1]] * 2):
            set_lr(optimizer, lr)
            data = batch("cuda", torch.float32, i, n=4 if i != 3 else 3)
            if cuda_graph and i >= 5:
                torch.cuda.set_sync_debug_mode("error")
            try:
                loss, _ = step(*data, lr)
                losses.append(loss.clone())
            finally:
                torch.cuda.set_sync_debug_mode("default")
        runs.append((torch.stack(losses), [t.detach().clone() for t in
                                           [*model.parameters(), *model.arch_parameters()]]))
    (losses, tensors), (losses0, tensors0) = runs
    assert rel_err(losses, losses0) < 1e-6
    assert max(rel_err(a, b) for a, b in zip(tensors, tensors0)) < 1e-6
    assert len(step._graphs) == 0  # the eager run captured nothing


def scaled_loss(model, batch):
    """A loss_fn on batches {"data": (x, y), "scale": a number}, returning (loss, a dict)."""
    x, y = batch["data"]
    logits = model(x)
    return model._criterion(logits, y) * batch["scale"], {"logits": logits}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_batches_of_any_structure():
    """step_batches on dict batches holding a number, which a graph holds as captured: a new
    number is a new graph. Losses, outputs, alphas and weights within 1e-6 of the eager step;
    no host synchronisation while replaying."""
    runs = []
    for cuda_graph in (True, False):
        model, optimizer, _ = setup("cuda", dtype=torch.float32)
        architect = darts_fast.Architect(model, ARGS, loss_fn=lambda m, b: scaled_loss(m, b)[0])
        step = SearchStep(model, architect, optimizer, unrolled=True, cuda_graph=cuda_graph,
                          warmup=1, loss_fn=scaled_loss)
        outputs = []
        for i in range(6):
            x, y, xv, yv = batch("cuda", torch.float32, i)
            scale = 1.0 if i < 3 else 0.5
            if cuda_graph and i == 2:
                torch.cuda.set_sync_debug_mode("error")
            try:
                loss, out = step.step_batches({"data": (x, y), "scale": scale},
                                              {"data": (xv, yv), "scale": scale}, LRS[0])
                outputs += [loss.clone(), out["logits"].clone()]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        runs.append((outputs, [t.detach().clone() for t in
                               [*model.parameters(), *model.arch_parameters()]]))
        assert len(step._graphs) == (2 if cuda_graph else 0)
    (outputs, tensors), (outputs0, tensors0) = runs
    assert max(rel_err(a, b) for a, b in zip(outputs + tensors, outputs0 + tensors0)) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_architect_step_does_not_synchronise():
    _, optimizer, architect = setup("cuda", dtype=torch.float32)
    data = batch("cuda", torch.float32, 0)
    lr = torch.tensor(0.025, device="cuda")
    for unrolled in (True, False, True):
        torch.cuda.set_sync_debug_mode("error")
        try:
            architect.step(*data, lr, optimizer, unrolled)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert architect.skipped_steps.item() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_deterministic_searches_are_bit_identical(cuda_graph):
    """With the command line's --deterministic settings, two identical GPU searches end with the
    same bits (without them cuDNN's autotuned, atomics-based kernels usually differ)."""
    runs = []
    with determinism(True):
        for _ in range(2):
            model, optimizer, architect = setup("cuda", dtype=torch.float32)
            step = SearchStep(model, architect, optimizer, unrolled=True, cuda_graph=cuda_graph,
                              warmup=1)
            for i in range(4):
                step(*batch("cuda", torch.float32, i, n=8), LRS[0])
            runs.append([t.detach().clone() for t in [*model.arch_parameters(),
                                                      *model.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_released_graphs_take_the_modules_settings_of_now():
    """A graph holds a dropout rate as it was at its capture: after ``release_graphs`` the step
    captures again with the rate set since (P-DARTS' skip dropout, once an epoch). With the rate
    0 the step is deterministic: the new graph's step equals an eager one from the same state."""
    from darts_fast.methods.pdarts import PDARTSNetwork

    torch.manual_seed(0)
    model = PDARTSNetwork(4, 10, 3, nn.CrossEntropyLoss(), p=0.5).cuda()
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9)
    architect = darts_fast.Architect(model, ARGS)
    step = SearchStep(model, architect, optimizer, unrolled=False, cuda_graph=True, warmup=2)
    for i in range(4):  # two eager calls, the capture, a replay
        step(*batch("cuda", torch.float32, i), 0.025)
    model.set_skip_dropout(0.0)
    step.release_graphs()
    twin_model, twin_optimizer, twin_architect = copy.deepcopy((model, optimizer, architect))
    twin = SearchStep(twin_model, twin_architect, twin_optimizer, unrolled=False,
                      cuda_graph=False)
    data = batch("cuda", torch.float32, 4)
    captured, eager = step(*data, 0.025)[0].clone(), twin(*data, 0.025)[0]
    assert len(step._graphs) == 1 and rel_err(captured, eager) < 1e-5
    assert max(rel_err(a, b) for a, b in zip([*model.parameters(), *model.arch_parameters()],
                                             [*twin_model.parameters(),
                                              *twin_model.arch_parameters()])) < 1e-5
