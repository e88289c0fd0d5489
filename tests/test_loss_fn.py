"""Architect and SearchStep on a recurrent step whose batch is ``(hidden, x, y)`` and whose
``_loss`` returns ``(loss, next hidden)``, as in the original rnn/ code: alpha gradients and whole
search steps against the formulas in plain torch, on one process and on two; the default loss
bit for bit as ``model._loss(*batch)``; the Architect's errors for a wrong ``loss_fn``."""
import datetime
import os
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from helpers import rel_err

import darts_fast
from darts_fast.search.step import SearchStep

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
ETA = 0.025
INPUTS, HIDDEN, CLASSES = 3, 5, 4
TOL = 1e-9  # float64; the finite difference divides rounding by 2R


class TinyRecurrent(nn.Module):
    """One recurrent step: the pre-activation ``x W_x^T + b_x + hidden W_h^T`` through tanh,
    sigmoid and identity, mixed by ``softmax(alpha)``, then a linear classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.input = nn.Linear(INPUTS, HIDDEN)
        self.recurrent = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.classifier = nn.Linear(HIDDEN, CLASSES)
        self.double()
        self.alpha = (0.5 * torch.randn(3, dtype=torch.float64)).requires_grad_()

    def arch_parameters(self):
        return [self.alpha]

    def _loss(self, hidden, x, y):
        pre = self.input(x) + self.recurrent(hidden)
        mix = torch.softmax(self.alpha, 0)
        h = mix[0] * torch.tanh(pre) + mix[1] * torch.sigmoid(pre) + mix[2] * pre
        return F.cross_entropy(self.classifier(h), y), h.detach()


def oracle_loss(w, alpha, hidden, x, y):
    """TinyRecurrent's loss and next hidden state from the weights ``w`` (in the order of
    ``parameters()``), written out."""
    w_x, b_x, w_h, w_o, b_o = w
    pre = x @ w_x.T + b_x + hidden @ w_h.T
    p = torch.exp(alpha - alpha.max())
    p = p / p.sum()
    h = p[0] * torch.tanh(pre) + p[1] / (1 + torch.exp(-pre)) + p[2] * pre
    logits = h @ w_o.T + b_o
    nll = torch.logsumexp(logits, 1) - logits.gather(1, y[:, None])[:, 0]
    return nll.mean(), h.detach()


grad = torch.autograd.grad


def leaf(t):
    return t.detach().clone().requires_grad_()


def expected_alpha_grad(w, alpha, bufs, train, valid, unrolled, hessian="finite_difference"):
    """The DARTS formulas of darts_fast.search.architect, on plain tensors."""
    a = leaf(alpha)
    if not unrolled:
        return grad(oracle_loss(w, a, *valid)[0], a)[0]
    w = [leaf(p) for p in w]
    g_train = grad(oracle_loss(w, a, *train)[0], w, create_graph=hessian == "exact")
    w1 = [leaf(p - ETA * (ARGS.momentum * b + g + ARGS.weight_decay * p))
          for p, g, b in zip(w, g_train, bufs)]
    dalpha, *v = grad(oracle_loss(w1, a, *valid)[0], [a, *w1])
    if hessian == "exact":
        return dalpha - ETA * grad(g_train, a, grad_outputs=v)[0]
    r = 0.01 / torch.cat([t.reshape(-1) for t in v]).norm()
    g_pos = grad(oracle_loss([p + r * t for p, t in zip(w, v)], a, *train)[0], a)[0]
    g_neg = grad(oracle_loss([p - r * t for p, t in zip(w, v)], a, *train)[0], a)[0]
    return dalpha - ETA * (g_pos - g_neg) / (2 * r)


def recurrent_batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HIDDEN, generator=g, dtype=torch.float64),
            torch.randn(n, INPUTS, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (n,), generator=g))


STRUCTURES = {  # two structures of a batch (hidden, x, y): to it, and back
    "tuple": (lambda b: b, lambda b: b),
    "nested-dict": (lambda b: {"hidden": b[0], "data": b[1:]}, lambda d: (d["hidden"], *d["data"]))}


def structured(structure):
    """The batch packer of ``structure``, and the architect's loss_fn that reads such batches."""
    wrap, unwrap = STRUCTURES[structure]
    return wrap, lambda model, batch: model._loss(*unwrap(batch))[0]


def sgd(model):
    return torch.optim.SGD(model.parameters(), ETA, momentum=ARGS.momentum,
                           weight_decay=ARGS.weight_decay)


def momentum_buffers(optimizer, params):
    return [optimizer.state[p]["momentum_buffer"] if optimizer.state.get(p)
            else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("unrolled, hessian", [(False, "finite_difference"),
                                               (True, "finite_difference"), (True, "exact")])
def test_alpha_gradients_match_the_formulas(structure, unrolled, hessian):
    """Architecture steps before and after a weight step (no momentum buffers, then some): the
    alpha gradients; the weights restored bit for bit."""
    wrap, loss_fn = structured(structure)
    model = TinyRecurrent()
    optimizer = sgd(model)
    architect = darts_fast.Architect(model, ARGS, hessian=hessian, loss_fn=loss_fn)
    for step in range(2):
        train, valid = recurrent_batch(2 * step), recurrent_batch(2 * step + 1)
        weights = [p.detach().clone() for p in model.parameters()]
        expected = expected_alpha_grad(weights, model.alpha,
                                       momentum_buffers(optimizer, model.parameters()),
                                       train, valid, unrolled, hessian)
        architect.step_batches(wrap(train), wrap(valid), ETA, optimizer, unrolled)
        assert rel_err(model.alpha.grad, expected) < TOL
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
        optimizer.zero_grad()
        model._loss(*train)[0].backward()
        optimizer.step()
    assert int(architect.skipped_steps) == 0


@pytest.mark.parametrize("structure", STRUCTURES)
def test_search_steps_thread_the_hidden_state(structure):
    """Three second-order SearchSteps whose weight loss returns (loss, next hidden), the hidden
    state carried from each step's output into the next batch, against the same loop in plain
    torch (SGD with momentum and clipping, Adam on the alphas)."""
    wrap, unwrap = STRUCTURES[structure]
    model = TinyRecurrent()
    optimizer = sgd(model)
    step = SearchStep(model, darts_fast.Architect(model, ARGS, loss_fn=structured(structure)[1]),
                      optimizer, grad_clip=0.5, unrolled=True,
                      loss_fn=lambda m, b: m._loss(*unwrap(b)))
    w = [leaf(p) for p in model.parameters()]
    alpha = leaf(model.alpha)
    w_sgd = torch.optim.SGD(w, ETA, momentum=ARGS.momentum, weight_decay=ARGS.weight_decay)
    adam = torch.optim.Adam([alpha], ARGS.arch_learning_rate, betas=(0.5, 0.999),
                            weight_decay=ARGS.arch_weight_decay)
    hidden = expected_hidden = torch.zeros(6, HIDDEN, dtype=torch.float64)
    for k in range(3):
        _, x, y = recurrent_batch(2 * k)
        valid = recurrent_batch(2 * k + 1)
        loss, hidden = step.step_batches(wrap((hidden, x, y)), wrap(valid), ETA)
        train = (expected_hidden, x, y)
        alpha.grad = expected_alpha_grad(w, alpha, momentum_buffers(w_sgd, w), train, valid, True)
        adam.step()
        w_sgd.zero_grad()
        expected_loss, expected_hidden = oracle_loss(w, alpha.detach(), *train)
        expected_loss.backward()
        nn.utils.clip_grad_norm_(w, 0.5)
        w_sgd.step()
        assert rel_err(loss, expected_loss) < TOL and rel_err(hidden, expected_hidden) < TOL
    assert rel_err(model.alpha, alpha) < TOL
    assert all(rel_err(p, q) < TOL for p, q in zip(model.parameters(), w))


def test_a_non_finite_batch_is_skipped_whatever_its_structure():
    """A nan hidden state in a nested dict batch: the architect's and the weight step are undone
    and counted, the run ends bit for bit as one without that batch."""
    wrap, loss_fn = structured("nested-dict")
    runs = []
    for with_nan in (True, False):
        model = TinyRecurrent()
        optimizer = sgd(model)
        architect = darts_fast.Architect(model, ARGS, loss_fn=loss_fn)
        step = SearchStep(model, architect, optimizer, unrolled=True, loss_fn=loss_fn)
        for k in range(2):
            train, valid = recurrent_batch(2 * k), recurrent_batch(2 * k + 1)
            if with_nan:
                bad = (torch.full_like(train[0], float("nan")), *train[1:])
                loss, output = step.step_batches(wrap(bad), wrap(valid), ETA)
                assert output is None and not torch.isfinite(loss)
            step.step_batches(wrap(train), wrap(valid), ETA)
        runs.append(([t.detach().clone() for t in [model.alpha, *model.parameters()]],
                     int(step.skipped_steps), int(architect.skipped_steps)))
    (tensors, skipped, arch_skipped), (tensors0, skipped0, arch_skipped0) = runs
    assert (skipped, arch_skipped, skipped0, arch_skipped0) == (2, 2, 0, 0)
    assert all(torch.equal(a, b) for a, b in zip(tensors, tensors0))


@pytest.mark.parametrize("unrolled", [True, False])
def test_the_default_loss_is_model_loss_bit_for_bit(unrolled):
    """``Architect(model, args).step(x, y, xv, yv, ...)`` and ``step_batches((x, y), (xv, yv),
    ...)`` with ``loss_fn=lambda m, b: m._loss(*b)`` given: the same alphas, to the bit."""
    runs = []
    for explicit in (False, True):
        torch.manual_seed(0)
        model = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss())
        optimizer = sgd(model)
        architect = (darts_fast.Architect(model, ARGS, loss_fn=lambda m, b: m._loss(*b))
                     if explicit else darts_fast.Architect(model, ARGS))
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, xv = torch.randn(2, 4, 3, 8, 8, generator=g)
            y, yv = torch.randint(0, 10, (2, 4), generator=g)
            if explicit:
                architect.step_batches((x, y), (xv, yv), ETA, optimizer, unrolled)
            else:
                architect.step(x, y, xv, yv, ETA, optimizer, unrolled)
            optimizer.zero_grad()
            model._loss(x, y).backward()
            optimizer.step()
        runs.append([t.detach().clone() for t in [*model.arch_parameters(),
                                                  *model.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# --- two processes ------------------------------------------------------------------------------
WORLD = 2


def worker(rank, init_file, out_dir):
    """Each rank steps on its half of each batch (nested dicts); the architect averages."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        wrap, loss_fn = structured("nested-dict")
        grads = {}
        for unrolled in (False, True):
            model = TinyRecurrent()
            architect = darts_fast.Architect(model, ARGS, process_group=dist.group.WORLD,
                                             loss_fn=loss_fn)
            half = [tuple(t[3 * rank:3 * rank + 3] for t in recurrent_batch(s)) for s in (0, 1)]
            architect.step_batches(wrap(half[0]), wrap(half[1]), ETA, sgd(model), unrolled)
            grads[unrolled] = model.alpha.grad
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks done before either tears gloo down: a rank that closes its pairs while the
        # other still reads them aborts it (std::terminate in gloo's threads).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_average_to_the_whole_batch(tmp_path):
    """The model has no BatchNorm and equal shards: the averaged formulas are those of the whole
    batch."""
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    model = TinyRecurrent()
    weights = [p.detach() for p in model.parameters()]
    expected = {unrolled: expected_alpha_grad(weights, model.alpha, [0 * p for p in weights],
                                              recurrent_batch(0), recurrent_batch(1), unrolled)
                for unrolled in (False, True)}
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert all(rel_err(grads[u], expected[u]) < TOL for u in expected)


# --- bad loss functions -------------------------------------------------------------------------

class TestArchitectBadLossFn:
    def setup_method(self):
        self.model = TinyRecurrent()
        self.batches = recurrent_batch(0), recurrent_batch(1)

    @pytest.mark.parametrize("unrolled", [True, False])
    @pytest.mark.parametrize("result, error, message", [
        (lambda loss: (loss, None, None), TypeError,
         r"loss_fn\(model, batch\) must return a 0-dim loss tensor or \(loss, output\), got a "
         r"tuple of 3"),
        (lambda loss: loss.item(), TypeError, "got a float"),
        (lambda loss: loss.reshape(1), ValueError, r"got a tensor of shape \(1,\)"),
    ])
    def test_result(self, unrolled, result, error, message):
        alpha = self.model.alpha.detach().clone()
        architect = darts_fast.Architect(self.model, ARGS,
                                         loss_fn=lambda m, b: result(m._loss(*b)[0]))
        with pytest.raises(error, match=message):
            architect.step_batches(*self.batches, ETA, sgd(self.model), unrolled)
        assert torch.equal(self.model.alpha, alpha)

    def test_default_on_a_loss_with_hidden_state(self):
        architect = darts_fast.Architect(self.model, ARGS)
        with pytest.raises(TypeError, match=r"model\._loss\(\*batch\) must return the loss as a "
                                            r"0-dim tensor, got a tuple of 2; .* give Architect a"):
            architect.step_batches(*self.batches, ETA, sgd(self.model), False)

    @pytest.mark.parametrize("loss_fn, message", [
        ("cross_entropy", "loss_fn must be callable as loss_fn"),
        (None, r"model must offer _loss\(input, target\), or give loss_fn")])
    def test_construction(self, loss_fn, message):
        model = nn.Linear(2, 2)  # no _loss
        model.arch_parameters = lambda: [torch.zeros(2, requires_grad=True)]
        with pytest.raises(TypeError, match=message):
            darts_fast.Architect(model, ARGS, loss_fn=loss_fn)
