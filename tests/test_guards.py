"""The collapse guards against their authors' formulations (darts_fast.reference.guards): DARTS-'s
auxiliary skip on the fused mixed op and network, SDARTS-RS' noisy weight step, DARTS-ES' stop
rule, DARTS+'s rule, and the schedules."""
import types

import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast.reference import guards as authors
from darts_fast.search import alpha_noise, collapse
from darts_fast.search.step import SearchStep

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride", [1, 2])
def test_auxiliary_skip_mixed_op_matches_darts_minus(stride, dtype, fold):
    scheduler = authors.DecayScheduler(base_lr=0.7, T_max=10, decay_type="linear")
    scheduler.step(3)
    torch.manual_seed(0)
    fused = darts_fast.MixedOp(8, stride, auxiliary_skip=True, fold_batch_norm=fold).to(dtype)
    torch.manual_seed(0)
    ref = authors.AuxiliarySkipMixedOp(8, stride, scheduler).to(dtype)
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 8, 8, 8, dtype=dtype, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=dtype), 0).requires_grad_()
    beta = torch.tensor([scheduler.decay_rate], dtype=dtype)
    out_f, out_r = fused(x, torch.cat([w, beta])), ref(x, w)
    tol = TOLERANCE[dtype]
    assert rel_err(out_f, out_r) < tol
    g = torch.randn_like(out_f)
    for a, b in zip(torch.autograd.grad(out_f, [x, w, *fused.parameters()], g),
                    torch.autograd.grad(out_r, [x, w, *ref.parameters()], g)):
        assert rel_err(a, b) < tol
    for a, b in zip(fused.buffers(), ref.buffers()):
        assert rel_err(a, b) < tol
    with pytest.raises(ValueError, match="auxiliary skip's beta last"):
        fused(x, w)


@pytest.mark.slow
def test_auxiliary_skip_network_matches_darts_minus():
    """Loss and gradients of a whole network, its beta set per epoch as the authors decay it."""
    torch.manual_seed(1)
    fused = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss(), auxiliary_skip=True).double()
    torch.manual_seed(1)
    ref = authors.DartsMinusNetwork(4, 10, 3, nn.CrossEntropyLoss()).double()
    assert list(fused.state_dict()) == list(ref.state_dict())
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    for epoch in (0, 20):
        beta = collapse.auxiliary_skip_beta(epoch, 50, 1.0, "cosine")
        fused.set_auxiliary_skip(beta)
        ref.beta_decay_scheduler.step(epoch)
        assert ref.beta_decay_scheduler.decay_rate == pytest.approx(beta, rel=1e-12)
        loss_f, loss_r = fused._loss(x, y), ref._loss(x, y)
        assert rel_err(loss_f, loss_r) < 1e-10
        inputs_f = [*fused.parameters(), *fused.arch_parameters()]
        inputs_r = [*ref.parameters(), *ref.arch_parameters()]
        for a, b in zip(torch.autograd.grad(loss_f, inputs_f), torch.autograd.grad(loss_r,
                                                                                   inputs_r)):
            assert rel_err(a, b) < 1e-9
    assert "auxiliary_skip_beta" not in fused.state_dict()
    assert fused.new().auxiliary_skip_beta.item() == pytest.approx(beta)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_auxiliary_skip_schedule_is_the_authors(decay):
    scheduler = authors.DecayScheduler(base_lr=2.0, T_max=30, T_start=0, T_stop=30,
                                       decay_type=decay)
    for epoch in range(30):
        scheduler.step(epoch)
        assert collapse.auxiliary_skip_beta(epoch, 30, 2.0, decay) == \
            pytest.approx(scheduler.decay_rate, rel=1e-12, abs=1e-15)


def test_perturbed_table_is_sdarts_clip():
    """Large noise empties some rows (every entry clamped to 0): their largest entry becomes 1.
    The seed is the first that draws such a row."""
    model = authors.SDARTSNetwork(4, 10, 3, nn.CrossEntropyLoss()).double()
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    for seed in range(500):
        torch.manual_seed(seed)
        noisy = [torch.softmax(a, -1) + 1.5 * (2 * torch.rand_like(a) - 1) for a in alphas]
        if any((n <= 0).all(1).any() for n in noisy):
            break
    else:
        pytest.fail("no seed below 500 empties a row")
    torch.manual_seed(seed)
    model.softmax_arch_parameters()
    authors.random_alpha(model, 1.5)
    expected = [a.detach().clone() for a in model.arch_parameters()]
    torch.manual_seed(seed)
    got = [alpha_noise.perturbed(a, torch.tensor(1.5)) for a in alphas]
    for g, e in zip(got, expected):
        assert rel_err(g, e) < 1e-12
        assert torch.allclose(g.sum(1), torch.ones(14, dtype=torch.float64))


@pytest.mark.slow
def test_noisy_weight_step_matches_sdarts():
    """Two first-order steps (architecture step, then the weight step on the noisy weights)."""
    torch.manual_seed(2)
    fused = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
    torch.manual_seed(2)
    ref = authors.SDARTSNetwork(4, 10, 3, nn.CrossEntropyLoss()).double()
    opt_f = torch.optim.SGD(fused.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    opt_r = torch.optim.SGD(ref.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    noise = alpha_noise.AlphaNoise(fused)
    step = SearchStep(fused, darts_fast.Architect(fused, ARGS), opt_f, grad_clip=5.0,
                      unrolled=False, weight_context=noise)
    architect_r = darts_fast.reference.Architect(ref, ARGS)
    data = torch.Generator().manual_seed(3)
    for epoch in range(2):
        epsilon = alpha_noise.epsilon_at(epoch, 10, 0.3)
        noise.set_epsilon(epsilon)
        x, vx = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=data) for _ in "ab")
        y, vy = (torch.randint(0, 10, (4,), generator=data) for _ in "ab")
        torch.manual_seed(10 + epoch)
        step(x, y, vx, vy, 0.05)
        torch.manual_seed(10 + epoch)
        ref.train()
        architect_r.step(x, y, vx, vy, 0.05, opt_r, unrolled=False)
        opt_r.zero_grad()
        ref.softmax_arch_parameters()
        authors.random_alpha(ref, epsilon)
        loss = ref._criterion(ref(x, updateType="weight"), y)
        loss.backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        opt_r.step()
        ref.restore_arch_parameters()
    for a, b in zip([*fused.parameters(), *fused.arch_parameters()],
                    [*ref.parameters(), *ref.arch_parameters()]):
        assert rel_err(a, b) < 1e-9
    assert fused.weights_override is None
    assert alpha_noise.epsilon_at(9, 10, 0.3) == pytest.approx(0.03 + 0.27 * 0.9)


@pytest.mark.parametrize("seed", range(6))
def test_hessian_stop_is_robust_darts(seed):
    """The first stop, its epoch and every local average, on random walks of eigenvalues (some
    growing fast enough to stop)."""
    g = torch.Generator().manual_seed(seed)
    epochs = 50
    steps = torch.exp(0.12 * torch.randn(epochs, generator=g, dtype=torch.float64) + 0.02 * seed)
    values = (0.1 * torch.cumprod(steps, 0)).tolist()
    ours, theirs = collapse.HessianStop(), authors.EVLocalAvg(total_epochs=epochs)
    stopped = expected = None
    for epoch, value in enumerate(values):
        kept = ours.update(epoch, value, last=epoch == epochs - 1)
        theirs.update(epoch, value)
        if epoch != epochs - 1:
            theirs.early_stop(epoch)
        if ours.local_average(epoch) is not None and epoch != epochs - 1:  # theirs: none there
            assert ours.local_average(epoch) == pytest.approx(theirs.ev_local_avg[-1], rel=1e-12)
        if stopped is None and kept is not None:
            stopped = (epoch, kept)
        if expected is None and theirs.stop_search:
            expected = (epoch, theirs.stop_epoch)
    assert stopped == expected
    if seed in (4, 5):
        assert stopped is not None  # the fast-growing walks stop


def test_hessian_stop_resumes_from_its_state():
    values = [1.0] * 12 + [2.0 ** k for k in range(1, 9)]
    whole, first = collapse.HessianStop(), collapse.HessianStop()
    decisions = [whole.update(e, v, False) for e, v in enumerate(values)]
    for e, v in enumerate(values[:14]):
        first.update(e, v, False)
    second = collapse.HessianStop()
    second.load_state_dict(first.state_dict())
    assert [second.update(e, v, False) for e, v in enumerate(values) if e >= 14] == decisions[14:]
    assert any(d is not None for d in decisions)
    with pytest.raises(ValueError, match="expected epoch"):
        second.update(3, 1.0, False)


def test_skip_stop():
    tables = [torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]] * 3)] * 2
    rule = collapse.SkipStop([4, 5, 6, 7], stable_epochs=3)
    assert rule.update(0, 1, tables) is None
    assert rule.update(1, 2, tables) == 1  # two skip-connections
    assert "2 skip-connections" in rule.reason(2)
    rule = collapse.SkipStop([4, 5, 6, 7], stable_epochs=3)
    assert [rule.update(e, 0, tables) for e in range(3)] == [None, None, 2]  # 3 epochs alike
    assert "held for 3 epochs" in rule.reason(0)
    changed = [torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.7, 0.5, 0.6, 0.4]] * 3)] * 2
    rule = collapse.SkipStop([4, 5, 6, 7], stable_epochs=3)
    assert [rule.update(e, 0, t) for e, t in enumerate(
        [tables, tables, changed, changed, changed])] == [None, None, None, None, 4]
    # a change among the parameter-free candidates alone is no change of the ranking
    free = [torch.tensor([[0.9, 0.0, 0.0, 0.1, 0.4, 0.5, 0.6, 0.7]] * 3)] * 2
    rule = collapse.SkipStop([4, 5, 6, 7], stable_epochs=3)
    assert [rule.update(e, 0, t) for e, t in enumerate([tables, tables, free])] == \
        [None, None, 2]
