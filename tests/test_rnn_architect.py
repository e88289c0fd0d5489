"""DARTS' recurrent architect (darts_fast.reference.rnn_architect) against its formulas written
out here on the hand-written model (rnn_formulas), in float64: three steps of the original search
loop (architect step, then the clipped SGD weight step), the hidden states carried."""
import types

import pytest
import torch

import rnn_formulas as hand
from darts_fast.reference.rnn import RNNModelSearch
from darts_fast.reference.rnn_architect import RNNArchitect
from helpers import rel_err

NTOKEN, N, B, T = 50, 12, 3, 5
ETA, WDECAY, ARCH_LR, ARCH_WDECAY = 2.0, 1e-2, 3e-3, 1e-3
TOL = 1e-10


def setup(clip):
    torch.manual_seed(0)
    model = RNNModelSearch(NTOKEN, N, N, N, 0.0, 0.0, 0.0, 0.0, 0.0).double()
    with torch.no_grad():
        model.weights.copy_(0.5 * torch.randn(36, 5, dtype=torch.float64))
    args = types.SimpleNamespace(wdecay=WDECAY, clip=clip, arch_lr=ARCH_LR,
                                 arch_wdecay=ARCH_WDECAY)
    optimizer = torch.optim.SGD(model.parameters(), lr=ETA, weight_decay=WDECAY)
    return model, RNNArchitect(model, args), optimizer


def batches(step):
    g = torch.Generator().manual_seed(100 + step)
    return [(torch.randint(0, NTOKEN, (T, B), generator=g),
             torch.randint(0, NTOKEN, (T * B,), generator=g)) for _ in range(2)]


class HandAdam:
    """Adam with L2 weight decay and the default betas: ``g <- g + wd a``,
    ``m <- 0.9 m + 0.1 g``, ``v <- 0.999 v + 0.001 g^2``,
    ``a <- a - lr (m / (1 - 0.9^t)) / (sqrt(v / (1 - 0.999^t)) + 1e-8)``."""

    def __init__(self, a):
        self.a, self.m, self.v, self.t = a.clone(), torch.zeros_like(a), torch.zeros_like(a), 0

    def step(self, g):
        self.t += 1
        g = g + ARCH_WDECAY * self.a
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9 ** self.t), self.v / (1 - 0.999 ** self.t)
        self.a = self.a - ARCH_LR * m_hat / (torch.sqrt(v_hat) + 1e-8)


def loss_of(names, ws, alphas, hidden, tokens, target):
    return hand.search_loss(dict(zip(names, ws)), alphas, hidden, tokens, target)


def clipped(grads, clip):
    """``(grads * c if c < 1 else grads, c)``, ``c = clip / (||grads|| + 1e-6)``."""
    c = (clip / (torch.sqrt(sum((g * g).sum() for g in grads)) + 1e-6)).item()
    return ([g * c for g in grads] if c < 1 else list(grads)), c


def second_order(names, w, alphas, train, valid, clip):
    """``dalpha - eta c (g+ - g-) / (2R)`` at the virtual step ``w'`` (the tied embedding kept),
    ``dalpha`` alone, the validation hidden state at ``w'``, and ``c``."""
    a = alphas.detach()
    wr = [x.clone().requires_grad_() for x in w]
    g, c = clipped(torch.autograd.grad(loss_of(names, wr, a, *train)[0], wr), clip)
    w1 = [(x - ETA * (gi + WDECAY * x)).requires_grad_() for x, gi in zip(w, g)]
    emb = names.index("encoder.weight")
    w1[emb] = w[emb].clone().requires_grad_()
    a1 = a.clone().requires_grad_()
    loss_valid, h_next = loss_of(names, w1, a1, *valid)
    dalpha, *v = torch.autograd.grad(loss_valid, [a1] + w1)
    v, _ = clipped(v, clip)
    R = 1e-2 / torch.sqrt(sum((x * x).sum() for x in v))
    g_at = []
    for sign in (1, -1):
        a2 = a.clone().requires_grad_()
        ws = [x + sign * R * d for x, d in zip(w, v)]
        g_at.append(torch.autograd.grad(loss_of(names, ws, a2, *train)[0], a2)[0])
    return dalpha - ETA * c * (g_at[0] - g_at[1]) / (2 * R), dalpha, h_next, c


@pytest.mark.parametrize("unrolled, clip", [(False, 0.25), (True, 0.25), (True, 100.0)],
                         ids=["first-order", "second-order-clipped", "second-order-unclipped"])
def test_three_steps_against_the_formulas(unrolled, clip):
    model, architect, optimizer = setup(clip)
    names = [name for name, _ in model.named_parameters()]
    adam = HandAdam(model.weights.detach())
    hidden_train, hidden_valid = model.init_hidden(B), model.init_hidden(B)
    hand_hidden_valid = hidden_valid[0][0]
    for step in range(3):
        (x_train, y_train), (x_valid, y_valid) = batches(step)
        w = [p.detach().clone() for p in model.parameters()]
        assert rel_err(model.weights, adam.a) < TOL
        train = (hidden_train[0][0], x_train, y_train)
        valid = (hand_hidden_valid, x_valid, y_valid)
        if unrolled:
            expected, dalpha, h_expected, c = second_order(names, w, adam.a, train, valid, clip)
            # c scales the implicit gradient in either regime: below 1 (clipped) or above.
            assert (c < 1) == (clip < 1)
            assert rel_err(expected, dalpha) > 1e-4
        else:
            a = adam.a.clone().requires_grad_()
            wr = [x.clone().requires_grad_() for x in w]
            loss_valid, h_expected = loss_of(names, wr, a, *valid)
            expected, *expected_weight_grads = torch.autograd.grad(loss_valid, [a] + wr)

        optimizer.zero_grad()
        hidden_valid, placeholder = architect.step(hidden_train, x_train, y_train, hidden_valid,
                                                   x_valid, y_valid, optimizer, unrolled)
        assert placeholder is None
        assert rel_err(model.weights.grad, expected) < TOL
        assert rel_err(hidden_valid[0][0], h_expected) < TOL
        for p, x in zip(model.parameters(), w):  # put back, up to the finite difference's rounding
            assert rel_err(p, x) < 1e-14
            if not unrolled:  # the first-order step leaves dL_valid/dw in the weights' .grad
                assert rel_err(p.grad, expected_weight_grads.pop(0)) < TOL
        adam.step(expected)
        hidden_valid = [h.detach() for h in hidden_valid]
        hand_hidden_valid = h_expected.detach()

        optimizer.zero_grad()
        loss, hidden_train = model._loss(hidden_train, x_train, y_train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        hidden_train = [h.detach() for h in hidden_train]
    assert rel_err(model.weights, adam.a) < TOL


def test_the_unrolled_model_keeps_the_tied_embedding():
    model, architect, _ = setup(0.25)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) + 1
    torch.manual_seed(1)
    unrolled = architect._construct_model_from_theta(theta)
    for (name, p), q in zip(model.named_parameters(), unrolled.parameters()):
        # decoder.weight, loaded after encoder.weight from the unstepped state_dict, wins.
        assert torch.equal(q, p if name == "encoder.weight" else p + 1), name
    assert unrolled.decoder.weight is unrolled.encoder.weight
    assert unrolled.weights is not model.weights and torch.equal(unrolled.weights, model.weights)
    assert unrolled.weights.dtype == torch.float64
