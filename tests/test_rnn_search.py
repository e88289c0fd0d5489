"""The fused recurrent search (spaces.rnn.search_model, search.rnn_architect, search.rnn_loss
with SearchStep) against the authors' formulation (darts_fast.reference.rnn*), in float64:
outputs, losses, gradients and BatchNorm statistics with the dropout masks fixed by seeding;
three search steps first and second order with the hidden states carried; the genotype rule on
random and tied tables; float32 against float64; a non-finite step undone."""
import types

import pytest
import torch
import torch.nn.functional as F

from darts_fast import reference
from darts_fast.reference.rnn_architect import RNNArchitect as ReferenceArchitect
from darts_fast.search.rnn_architect import RNNArchitect
from darts_fast.search.rnn_loss import weight_loss
from darts_fast.search.step import SearchStep
from darts_fast.spaces.rnn.search_model import RNNModelSearch
from helpers import rel_err

NTOKEN, N, B, T = 40, 10, 4, 6
DROPOUTS = (0.3, 0.2, 0.25, 0.1, 0.1)  # dropout, dropouth, dropoutx, dropouti, dropoute
NO_DROPOUT = (0.0,) * 5
LR, WDECAY, CLIP, BETA = 2.0, 5e-7, 0.25, 1e-3


def pair(dropouts=NO_DROPOUT, dtype=torch.float64):
    """The reference and the fused model from the same seed (the same weights and alphas)."""
    models = []
    for cls in (reference.RNNModelSearch, RNNModelSearch):
        torch.manual_seed(0)
        models.append(cls(NTOKEN, N, N, N, *dropouts).to(dtype))
    return models


def tokens(seed, rows=T):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, NTOKEN, (rows, B), generator=g),
            torch.randint(0, NTOKEN, (rows * B,), generator=g))


def test_same_parameters_state_dict_and_alphas_as_the_original():
    ref, fused = pair()
    assert list(ref.state_dict()) == list(fused.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                 fused.state_dict().values()))
    assert torch.equal(ref.weights, fused.weights) and fused.weights.shape == (36, 5)
    assert fused.arch_parameters() == [fused.weights] and fused.rnns[0].weights is fused.weights
    assert fused.decoder.weight is fused.encoder.weight


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_loss_gradients_and_statistics_match_the_reference(training):
    ref, fused = pair(DROPOUTS)
    x, y = tokens(1)
    hidden = [torch.randn(1, B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))]
    got = []
    for model in (ref, fused):
        with torch.no_grad():
            model.weights.copy_(torch.randn(36, 5, generator=torch.Generator().manual_seed(3)))
        model.train(training)
        torch.manual_seed(7)  # the same masks in both
        loss, hidden_next = model._loss(hidden, x, y)
        loss.backward()
        got.append((loss.detach(), hidden_next[0].detach(),
                    [p.grad for p in model.parameters()], model.weights.grad,
                    [b.clone() for b in model.buffers()]))
    (l0, h0, g0, a0, b0), (l1, h1, g1, a1, b1) = got
    assert rel_err(l1, l0) < 1e-13 and rel_err(h1, h0) < 1e-12
    assert all(rel_err(p, q) < 1e-11 for p, q in zip(g1, g0))
    assert rel_err(a1, a0) < 1e-11
    assert all(rel_err(p, q) < 1e-12 for p, q in zip(b1, b0))


def test_float32_follows_float64():
    models = [pair(dtype=dtype)[1] for dtype in (torch.float64, torch.float32)]
    x, y = tokens(4)
    out = []
    for model in models:
        loss, _ = model._loss(model.init_hidden(B), x, y)
        loss.backward()
        out.append((loss.double(), model.weights.grad.double(),
                    model.rnns[0]._Ws[3].grad.double()))
    assert rel_err(out[1][0], out[0][0]) < 1e-6
    assert rel_err(out[1][1], out[0][1]) < 1e-3 and rel_err(out[1][2], out[0][2]) < 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_genotype_rule_is_the_authors_parse(seed):
    ref, fused = pair()
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(36, 5, generator=g, dtype=torch.float64)
    if seed % 2:  # ties everywhere: rounded to a few levels
        table = table.mul(1.5).round()
    for model in (ref, fused):
        with torch.no_grad():
            model.weights.copy_(table)
    assert fused.genotype() == ref.genotype()
    assert isinstance(fused.genotype().concat, range)


def test_new_copies_alphas_on_device_and_dtype():
    _, fused = pair()
    with torch.no_grad():
        fused.weights.add_(1.0)
    copy = fused.new()
    assert copy.weights is not fused.weights and torch.equal(copy.weights, fused.weights)
    assert copy.weights.dtype == torch.float64 and copy.rnns[0].weights is copy.weights


def args(clip=CLIP):
    return types.SimpleNamespace(wdecay=WDECAY, clip=clip, arch_lr=3e-3, arch_wdecay=1e-3)


def reference_loop(model, batches, unrolled, clip):
    """The original ``train_search.py`` loop body on the reference, hidden states carried."""
    architect = ReferenceArchitect(model, args(clip))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WDECAY)
    hidden, hidden_valid = model.init_hidden(B), model.init_hidden(B)
    losses = []
    for (x, y), (xv, yv) in batches:
        model.train()
        hidden_valid, _ = architect.step(hidden, x, y, hidden_valid, xv, yv, optimizer, unrolled)
        optimizer.zero_grad()
        log_prob, hidden, raw, _ = model(x, hidden, return_h=True)
        nll = F.nll_loss(log_prob.view(-1, NTOKEN), y)
        loss = nll + BETA * (raw[-1][1:] - raw[-1][:-1]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        hidden = [h.detach() for h in hidden]
        hidden_valid = [h.detach() for h in hidden_valid]
        losses.append(nll.detach())
    return losses, hidden, hidden_valid


def fused_loop(model, batches, unrolled, clip, hessian="finite_difference"):
    architect = RNNArchitect(model, args(clip), hessian=hessian)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WDECAY)
    step = SearchStep(model, architect, optimizer, grad_clip=clip, unrolled=unrolled,
                      loss_fn=weight_loss(BETA))
    hidden, hidden_valid = model.init_hidden(B), model.init_hidden(B)
    losses = []
    for (x, y), (xv, yv) in batches:
        _, (hidden, nll) = step.step_batches((hidden, x, y), (hidden_valid, xv, yv), LR)
        hidden_valid = step.architecture_output
        losses.append(nll)
    return losses, hidden, hidden_valid, architect


def search_batches():
    # Drawn before the loops: the reference's model.new() draws from the global RNG.
    return [(tokens(10 + s, rows), tokens(20 + s)) for s, rows in enumerate((T, 3, T))]


@pytest.mark.parametrize("unrolled, clip", [(False, CLIP), (True, CLIP), (True, 100.0)],
                         ids=["first-order", "second-order", "second-order-unclipped"])
def test_three_search_steps_match_the_original_loop(unrolled, clip):
    ref, fused = pair()
    batches = search_batches()
    ref_losses, ref_hidden, ref_valid = reference_loop(ref, batches, unrolled, clip)
    losses, hidden, valid, architect = fused_loop(fused, batches, unrolled, clip)
    assert int(architect.skipped_steps) == 0
    assert rel_err(fused.weights, ref.weights) < 1e-9
    assert all(rel_err(p, q) < 1e-9 for p, q in zip(fused.parameters(), ref.parameters()))
    assert all(rel_err(p, q) < 1e-9 for p, q in zip(fused.buffers(), ref.buffers()))
    assert rel_err(hidden[0], ref_hidden[0]) < 1e-9 and rel_err(valid[0], ref_valid[0]) < 1e-9
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(losses, ref_losses))
    # The steps moved the alphas (the comparison is not of untouched values).
    assert (fused.weights - pair()[1].weights).abs().max() > 1e-3


def test_exact_hypergradient_is_the_double_backward_formula():
    """One step: the alphas' gradient against the formula of the module docstring written with
    autograd's double backward and torch.func on the reference model."""
    ref, fused = pair()
    (x, y), (xv, yv) = search_batches()[0]
    hidden = ref.init_hidden(B)
    named = dict(ref.named_parameters())
    loss, _ = ref._loss(hidden, x, y)
    g = torch.autograd.grad(loss, list(named.values()), create_graph=True)
    c = CLIP / (torch.sqrt(sum((gi.detach() ** 2).sum() for gi in g)) + 1e-6)
    w1 = {n: (p if n == "encoder.weight" else p - LR * (min(c, 1) * gi + WDECAY * p)).detach()
          .requires_grad_() for (n, p), gi in zip(named.items(), g)}
    log_prob, _ = torch.func.functional_call(ref, w1, (xv, hidden))
    loss_valid = F.nll_loss(log_prob.view(-1, NTOKEN), yv)
    dalpha, *v = torch.autograd.grad(loss_valid, [ref.weights, *w1.values()])
    v = [vi * min(CLIP / (torch.sqrt(sum((u ** 2).sum() for u in v)) + 1e-6), 1) for vi in v]
    hvp = torch.autograd.grad(g, ref.weights, grad_outputs=v)[0]
    expected = dalpha - LR * c * hvp

    optimizer = torch.optim.SGD(fused.parameters(), lr=LR, weight_decay=WDECAY)
    RNNArchitect(fused, args(), hessian="exact").step(hidden, x, y, hidden, xv, yv, optimizer,
                                                      True)
    assert rel_err(fused.weights.grad, expected) < 1e-10
    assert rel_err(dalpha, expected) > 1e-2  # the implicit term is no rounding


def test_a_non_finite_step_is_undone_and_counted():
    _, fused = pair()
    architect = RNNArchitect(fused, args())
    optimizer = torch.optim.SGD(fused.parameters(), lr=LR, weight_decay=WDECAY)
    (x, y), (xv, yv) = search_batches()[0]
    before = [t.clone() for t in (fused.weights, *fused.parameters(), *fused.buffers())]
    bad = [torch.full((1, B, N), float("nan"), dtype=torch.float64)]
    architect.step(bad, x, y, fused.init_hidden(B), xv, yv, optimizer, True)
    assert int(architect.skipped_steps) == 1
    after = (fused.weights, *fused.parameters(), *fused.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
