"""ENAS' micro controller and its REINFORCE trainer against a replay of the authors' formulas
written here (float64): the LSTM path and its log-probability and entropy, the sampling
distribution, the aggregated policy gradient with the moving baseline, TensorFlow's Adam, a toy
reward, and the state round trip."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from darts_fast.methods.enas_controller import Controller, Reinforce
from darts_fast.spaces.cnn.paths import check_architecture


def leaves(controller, grad=False):
    """The controller's parameters as float64 leaves, by name."""
    return {k: v.detach().double().clone().requires_grad_(grad)
            for k, v in controller.state_dict().items()}


def walk_order(architecture):
    """Per node: its first input, its second, then its first candidate, its second."""
    order = []
    for cell in architecture:
        for n in range(0, len(cell), 2):
            (j1, k1), (j2, k2) = cell[n], cell[n + 1]
            order += [j1, j2, k1, k2]
    return order


def replay(P, decisions, steps, tanh_constant=1.10, op_tanh_reduce=2.5, temperature=None,
           favoured=(0, 1)):
    """The authors' sampler teacher-forced on ``decisions``: the log-softmax of every decision,
    in order. ``P``: float64 parameters by name."""
    size = P["g_emb"].shape[1]
    layers = sum(k.startswith("w_lstm.") for k in P)
    n_cand = P["b_soft"].shape[0]
    no_learn = torch.tensor([0.25 if k in favoured else -0.25 for k in range(n_cand)],
                            dtype=torch.float64)

    def lstm(x, c, h):
        out_c, out_h = [], []
        for layer in range(layers):
            z = torch.mm(torch.cat([x, h[layer]], 1), P[f"w_lstm.{layer}"])
            i, f, o, g = (z[:, q * size:(q + 1) * size] for q in range(4))
            cell = torch.sigmoid(i) * torch.tanh(g) + torch.sigmoid(f) * c[layer]
            x = torch.sigmoid(o) * torch.tanh(cell)
            out_c.append(cell)
            out_h.append(x)
        return out_c, out_h

    def squash(logits, constant):
        if temperature is not None:
            logits = logits / temperature
        return logits if constant is None else constant * torch.tanh(logits)

    zero = torch.zeros(1, size, dtype=torch.float64)
    c, h = [zero] * layers, [zero] * layers
    it, out = iter(decisions), []
    op_c = None if tanh_constant is None else tanh_constant / op_tanh_reduce
    for normal in (True, False):
        x = P["g_emb"]
        anchors, keys = [zero, zero], []
        for _ in range(2):
            c, h = lstm(x, c, h)
            keys.append(torch.mm(h[-1], P["w_attn_1"]))
        for _ in range(steps):
            for _ in range(2):
                c, h = lstm(x, c, h)
                hidden = torch.tanh(torch.cat(keys, 0) + torch.mm(h[-1], P["w_attn_2"]))
                out.append(F.log_softmax(squash(torch.mv(hidden, P["v_attn"]), tanh_constant), 0))
                x = anchors[next(it)]
            for _ in range(2):
                c, h = lstm(x, c, h)
                logits = squash(torch.mm(h[-1], P["w_soft"])[0] + P["b_soft"], op_c)
                out.append(F.log_softmax(logits + no_learn if normal else logits, 0))
                x = P["w_emb"][next(it)].view(1, size)
            c, h = lstm(x, c, h)
            anchors.append(h[-1])
            keys.append(torch.mm(h[-1], P["w_attn_1"]))
            x = P["g_emb"]
    return out


def totals(log_softmaxes, decisions):
    log_prob = sum(lp[k] for lp, k in zip(log_softmaxes, decisions))
    entropy = sum(-(lp.exp() * lp).sum() for lp in log_softmaxes)
    return log_prob, entropy


SETTINGS = [dict(), dict(lstm_size=16, lstm_num_layers=2, temperature=1.7, favoured=(2, 5)),
            dict(steps=2, num_candidates=5, tanh_constant=None, favoured=())]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("settings", SETTINGS)
def test_sample_and_evaluate_match_the_replay(settings, dtype):
    torch.manual_seed(0)
    controller = Controller(**settings).to(dtype)
    sizes = ("lstm_size", "lstm_num_layers", "num_candidates")
    kw = {k: v for k, v in settings.items() if k not in sizes}
    kw.setdefault("steps", 4)
    generator = torch.Generator().manual_seed(3)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for _ in range(3):
        arch, log_prob, entropy = controller.sample(generator)
        assert log_prob.requires_grad and log_prob.dim() == 0 and entropy.dim() == 0
        decisions = walk_order(arch)
        ref_lp, ref_ent = totals(replay(leaves(controller), decisions, **kw), decisions)
        assert abs(log_prob.item() - ref_lp.item()) < tol * abs(ref_lp.item())
        assert abs(entropy.item() - ref_ent.item()) < tol * ref_ent.item()
        assert all(torch.equal(a, b) for a, b in
                   zip(controller.evaluate(arch), (log_prob, entropy)))
    greedy = controller.greedy()
    decisions = walk_order(greedy)
    for lp, k in zip(replay(leaves(controller), decisions, **kw), decisions):
        assert lp[k] >= lp.max() - tol


def test_sampling_frequencies_match_the_softmax():
    """Normal cell, node 2: both inputs and the first candidate have logits independent of the
    draws (the anchors of inputs 0 and 1 are zero); the second candidate's marginal sums over
    the first."""
    torch.manual_seed(1)
    controller = Controller(steps=1, num_candidates=4)
    with torch.no_grad():
        for name, p in controller.named_parameters():
            p.mul_(1.0 if name == "b_soft" else 8.0)
    P, n = leaves(controller), 3000
    base = replay(P, [0, 0, 0, 0] + [0] * 4, 1)
    probs = [base[0].exp(), base[1].exp(), base[2].exp()]
    probs.append(sum(base[2][k].exp() * replay(P, [0, 0, k, 0] + [0] * 4, 1)[3].exp()
                     for k in range(4)))
    generator = torch.Generator().manual_seed(7)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(n):
        (j1, k1), (j2, k2) = controller.sample(generator)[0].normal
        for row, v in enumerate((j1, j2, k1, k2)):
            counts[row, v] += 1
    assert probs[1].max() > 0.8 and probs[2].min() < 0.12  # far from uniform
    for row, p in enumerate(probs):
        freq = counts[row, :len(p)] / n
        assert ((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt() + 1e-3).all(), (row, freq, p)


def test_samples_are_paths_and_seeded():
    torch.manual_seed(2)
    controller = Controller()
    generator = torch.Generator().manual_seed(11)
    repeated = 0
    for _ in range(100):
        arch = controller.sample(generator)[0]
        for cell in arch:
            assert all(0 <= j < n // 2 + 2 and 0 <= k < 7 for n, (j, k) in enumerate(cell))
        if any(cell[n] == cell[n + 1] for cell in arch for n in range(0, 8, 2)):
            repeated += 1
        assert check_architecture(arch, 4, 7) == arch
    assert 0 < repeated < 100  # the authors' independent draws do repeat pairs
    a = controller.sample(torch.Generator().manual_seed(5))
    b = controller.sample(torch.Generator().manual_seed(5))
    torch.manual_seed(9)
    c = controller.sample()
    torch.manual_seed(9)
    d = controller.sample()
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and c[0] == d[0]
    for bad in [((0, 0),) * 8, (((0, 0), (2, 0)) * 4, ((0, 0),) * 8),
                (((0, 0),) * 8, ((0, 7),) * 8), (((0, True),) * 8,) * 2]:
        with pytest.raises(ValueError, match="architecture"):
            controller.evaluate(bad)


def test_reinforce_gradient_baseline_and_adam():
    """Two steps of three samples each: every sample's ``-log p (R - b)`` with ``b`` moved by
    its own reward first, the mean's gradient, and TensorFlow's Adam with beta1 = 0."""
    torch.manual_seed(3)
    controller = Controller(steps=2, num_candidates=5).double()
    ew, decay, lr, eps, beta2 = 0.01, 0.9, 0.01, 1e-3, 0.999
    trainer = Reinforce(controller, lr=lr, entropy_weight=ew, baseline_decay=decay,
                        num_aggregate=3)
    archs = []

    def accuracy(arch):
        return sum(k == 1 for _, k in arch.normal) / 4 + 0.1 * arch.reduce[0][0]

    def reward_fn(arch):
        archs.append(arch)
        return accuracy(arch)

    b, v = 0.0, {k: torch.zeros_like(p) for k, p in leaves(controller).items()}
    for t in (1, 2):
        P, archs[:] = leaves(controller, grad=True), []
        out = trainer.step(reward_fn, torch.Generator().manual_seed(t))
        loss, rewards, entropies = 0.0, [], []
        for arch in archs:
            decisions = walk_order(arch)
            log_prob, entropy = totals(replay(P, decisions, 2), decisions)
            reward = accuracy(arch) + ew * entropy.item()
            b = decay * b + (1 - decay) * reward
            loss = loss - log_prob * (reward - b) / 3
            rewards.append(reward)
            entropies.append(entropy.item())
        assert out["baseline"] == pytest.approx(b, rel=1e-12)
        assert out["reward"] == pytest.approx(sum(rewards) / 3, rel=1e-12)
        assert out["entropy"] == pytest.approx(sum(entropies) / 3, rel=1e-12)
        assert out["loss"] == pytest.approx(loss.item(), rel=1e-10, abs=1e-14)
        grads = dict(zip(P, torch.autograd.grad(loss, list(P.values()))))
        rate = lr * math.sqrt(1 - beta2 ** t)
        for name, p in controller.named_parameters():
            g = grads[name]
            assert torch.allclose(p.grad, g, rtol=1e-9, atol=1e-13), name
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            expected = P[name].detach() - rate * g / (v[name].sqrt() + eps)
            assert torch.allclose(p.detach(), expected, rtol=1e-12, atol=1e-14), name


def test_toy_reward_is_learned():
    """Reward 1 when normal node 2's first candidate is 3. The authors' tanh bounds the candidate
    logits to +-C / r (at most 0.29 for one of 7 candidates), so this runs without it."""
    torch.manual_seed(0)
    controller = Controller(steps=1, favoured=(), tanh_constant=None)
    trainer = Reinforce(controller, num_aggregate=5)
    generator = torch.Generator().manual_seed(1)

    def p_target():
        return replay(leaves(controller), [0] * 8, 1, tanh_constant=None, favoured=())[2][3].exp()

    assert p_target() < 0.2
    for _ in range(200):
        trainer.step(lambda arch: float(arch.normal[0][1] == 3), generator)
    assert p_target() > 0.9


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(4)
    trainer = Reinforce(Controller(steps=2), num_aggregate=3)
    generator = torch.Generator().manual_seed(5)

    def reward_fn(arch):
        return 0.1 * sum(k for _, k in arch.normal) / 8

    for _ in range(3):
        trainer.step(reward_fn, generator)
    state, rng = copy.deepcopy(trainer.state_dict()), generator.get_state()
    first = [trainer.step(reward_fn, generator) for _ in range(2)]
    torch.manual_seed(99)
    resumed = Reinforce(Controller(steps=2), num_aggregate=3)
    resumed.load_state_dict(state)
    generator.set_state(rng)
    assert [resumed.step(reward_fn, generator) for _ in range(2)] == first
    for a, b in zip(trainer.controller.parameters(), resumed.controller.parameters()):
        assert torch.equal(a, b)
    assert trainer.state_dict()["baseline"] == resumed.state_dict()["baseline"]
    with pytest.raises(ValueError, match="state"):
        Reinforce(Controller(num_candidates=5)).load_state_dict(state)


@pytest.mark.parametrize("kwargs,name", [
    (dict(steps=0), "steps"), (dict(steps=2.0), "steps"), (dict(num_candidates=1),
                                                          "num_candidates"),
    (dict(lstm_size=0), "lstm_size"), (dict(lstm_num_layers=0), "lstm_num_layers"),
    (dict(tanh_constant=0.0), "tanh_constant"), (dict(tanh_constant=math.nan), "tanh_constant"),
    (dict(op_tanh_reduce=-1), "op_tanh_reduce"), (dict(temperature=math.inf), "temperature"),
    (dict(favoured=(1, 1)), "favoured"), (dict(favoured=(7,)), "favoured")])
def test_bad_controller_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Controller(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=0), "lr"), (dict(lr=math.inf), "lr"), (dict(entropy_weight=-1e-4), "entropy_weight"),
    (dict(baseline_decay=1.0), "baseline_decay"), (dict(num_aggregate=0), "num_aggregate"),
    (dict(betas=(0.9,)), "betas"), (dict(betas=(0.0, 1.0)), "betas"), (dict(eps=0), "eps"),
    (dict(controller=torch.nn.Linear(2, 2)), "controller")])
def test_bad_trainer_settings(kwargs, name):
    kwargs.setdefault("controller", Controller(steps=1))
    with pytest.raises(ValueError, match=name):
        Reinforce(**kwargs)


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5x", None])
def test_non_finite_reward_is_refused(value):
    trainer = Reinforce(Controller(steps=1), num_aggregate=3)
    before = copy.deepcopy(trainer.state_dict())
    calls = []

    def reward_fn(arch):
        calls.append(arch)
        return 0.5 if len(calls) < 2 else value

    with pytest.raises(ValueError, match="reward"):
        trainer.step(reward_fn)
    after = trainer.state_dict()
    assert after["baseline"] == before["baseline"] and after["steps_taken"] == 0
    assert all(torch.equal(after["controller"][k], v) for k, v in before["controller"].items())
