"""The fused Architect against the reference (original) Architect."""
import functools
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast import kernels, reference

ARGS = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                             arch_weight_decay=1e-3)
ETA = 0.025


def networks(fused_cls, device, dtype, seed=0, steps=4):
    """Two identical search networks: one for the fused architect, one for the reference. Tests
    of the architect's logic rather than its numbers take cells of 2 nodes (steps=2): a third of
    the cost."""
    torch.manual_seed(seed)
    a = fused_cls(4, 10, 3, nn.CrossEntropyLoss(), steps=steps, multiplier=min(steps, 4))
    torch.manual_seed(seed)
    b = reference.Network(4, 10, 3, nn.CrossEntropyLoss(), steps=steps,
                          multiplier=min(steps, 4))
    return a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def batches(device, dtype, n=4, seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)  # noqa: E731
                    .to(device=device, dtype=dtype),
                    torch.randint(0, 10, (n,), generator=g).to(device))
    return (*make(), *make())


def sgd(model):
    return torch.optim.SGD(model.parameters(), ETA, momentum=ARGS.momentum,
                           weight_decay=ARGS.weight_decay)


def weight_step(model, optimizer, x, y):
    optimizer.zero_grad()
    model._loss(x, y).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5)
    optimizer.step()


def running_stats(model):
    """All BatchNorm running statistics of the model, as one vector."""
    return torch.cat([b.reshape(-1).double() for b in model.buffers() if b.is_floating_point()])


def assert_alpha_grads_close(fused_model, ref_model, tol):
    for a, b in zip(fused_model.arch_parameters(), ref_model.arch_parameters()):
        assert rel_err(a.grad, b.grad) < tol


@pytest.mark.parametrize("fused_net, dtype", [
    (darts_fast.Network, torch.float32), (darts_fast.Network, torch.float64),
    (reference.Network, torch.float64)], ids=["fused_net-float32", "fused_net-float64",
                                              "reference_net-float64"])
@pytest.mark.parametrize("unrolled", [True, False])
def test_matches_reference_over_two_search_steps(device, dtype, unrolled, fused_net):
    mf, mr = networks(fused_net, device, dtype)
    of, orr = sgd(mf), sgd(mr)
    af, ar = darts_fast.Architect(mf, ARGS), reference.Architect(mr, ARGS)
    tol = TOLERANCE[dtype]
    # float64 checks the algebra (8x8 images suffice); float32 the rounding at the contract's
    # tolerance, on 16x16 images (per-channel statistics over fewer pixels round worse).
    size = 16 if dtype == torch.float32 else 8
    for step in range(2):  # step 0: no momentum buffers yet; step 1: buffers present
        xt, yt, xv, yv = batches(device, dtype, seed=step, size=size)
        weights_before = [p.detach().clone() for p in mf.parameters()]
        af.step(xt, yt, xv, yv, ETA, of, unrolled)
        ar.step(xt, yt, xv, yv, ETA, orr, unrolled)
        assert_alpha_grads_close(mf, mr, tol)
        for p, before in zip(mf.parameters(), weights_before):
            assert torch.equal(p, before)  # restored bit for bit
        assert rel_err(running_stats(mf), running_stats(mr)) < tol
        weight_step(mf, of, xt, yt)
        weight_step(mr, orr, xt, yt)
    for a, b in zip(mf.arch_parameters(), mr.arch_parameters()):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("unrolled", [False, True])
def test_an_alpha_outside_the_loss_keeps_no_gradient(unrolled):
    # Network(4, 10, 2): both cells reduce, so alphas_normal takes no part in the loss; the
    # original leaves its gradient empty (first order) and Adam leaves it alone.
    torch.manual_seed(0)
    model = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss()).double()
    torch.manual_seed(0)
    ref = reference.Network(4, 10, 2, nn.CrossEntropyLoss()).double()
    before = model.alphas_normal.detach().clone()
    x, y, xv, yv = batches("cpu", torch.float64)
    darts_fast.Architect(model, ARGS).step(x, y, xv, yv, ETA, sgd(model), unrolled)
    assert model.alphas_normal.grad is None and torch.equal(model.alphas_normal, before)
    if not unrolled:  # the original's second order fails on such a network
        reference.Architect(ref, ARGS).step(x, y, xv, yv, ETA, sgd(ref), unrolled)
        assert ref.alphas_normal.grad is None
        assert rel_err(model.alphas_reduce, ref.alphas_reduce) < TOLERANCE[torch.float64]


def test_eval_mode_model_unrolls_in_training_mode():
    mf, mr = networks(darts_fast.Network, "cpu", torch.float64, steps=2)
    mf.eval()
    mr.eval()
    data = batches("cpu", torch.float64)
    darts_fast.Architect(mf, ARGS).step(*data, ETA, sgd(mf), True)
    reference.Architect(mr, ARGS).step(*data, ETA, sgd(mr), True)
    assert_alpha_grads_close(mf, mr, 1e-10)
    assert not mf.training


def test_draws_nothing_from_the_global_rng():
    mf, _ = networks(darts_fast.Network, "cpu", torch.float32, steps=2)
    data = batches("cpu", torch.float32)
    architect = darts_fast.Architect(mf, ARGS)
    state = torch.get_rng_state()
    architect.step(*data, ETA, sgd(mf), True)
    assert torch.equal(state, torch.get_rng_state())


class SmoothNet(nn.Module):
    """A model with only the original API (no new()), smooth everywhere (softplus, avg-pool), so
    that the finite difference converges to the exact hypergradient."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4, 10)
        self.alpha = (0.1 * torch.randn(3, dtype=torch.float64)).requires_grad_()

    def arch_parameters(self):
        return [self.alpha]

    def forward_with(self, x, w1, b1, w2, b2, wf, bf):
        h = F.softplus(F.conv2d(x, w1, b1, padding=1))
        candidates = [self.bn(F.softplus(F.conv2d(h, w2, b2, padding=1))),
                      F.avg_pool2d(h, 3, 1, 1), h]
        mixed = kernels.weighted_sum(candidates, torch.softmax(self.alpha, 0))
        return F.linear(mixed.mean((2, 3)), wf, bf)

    def forward(self, x):
        return self.forward_with(x, *self.parameters())

    def _loss(self, x, y):
        return F.cross_entropy(self(x), y)


def smooth_pair():
    torch.manual_seed(0)
    a = SmoothNet().double()
    torch.manual_seed(0)
    b = SmoothNet().double()
    return a, b


def exact_hypergradient(model, xt, yt, xv, yv):
    """d/dalpha L_val(w'(alpha), alpha) by differentiating through the unrolled step itself."""
    params = list(model.parameters())
    loss_train = model._loss(xt, yt)
    grads = torch.autograd.grad(loss_train, params, create_graph=True)
    unrolled = [p - ETA * (g + ARGS.weight_decay * p) for p, g in zip(params, grads)]
    loss_valid = F.cross_entropy(model.forward_with(xv, *unrolled), yv)
    return torch.autograd.grad(loss_valid, model.alpha)[0]


def test_exact_hessian_on_a_smooth_model():
    exact_model, fd_model = smooth_pair()
    data = [t.double() if t.is_floating_point() else t for t in batches("cpu", torch.float64, 8)]
    oracle_model, _ = smooth_pair()
    expected = exact_hypergradient(oracle_model, *data)
    darts_fast.Architect(exact_model, ARGS, hessian="exact").step(*data, ETA, sgd(exact_model),
                                                                  True)
    darts_fast.Architect(fd_model, ARGS).step(*data, ETA, sgd(fd_model), True)
    assert rel_err(exact_model.alpha.grad, expected) < 1e-10
    # The finite difference converges to it on a smooth model.
    assert rel_err(fd_model.alpha.grad, expected) < 1e-6


def test_exact_hessian_differs_from_the_original_on_relu_networks():
    mf, mr = networks(darts_fast.Network, "cpu", torch.float64)
    data = batches("cpu", torch.float64)
    darts_fast.Architect(mf, ARGS, hessian="exact").step(*data, ETA, sgd(mf), True)
    reference.Architect(mr, ARGS).step(*data, ETA, sgd(mr), True)
    errors = [rel_err(a.grad, b.grad) for a, b in zip(mf.arch_parameters(),
                                                         mr.arch_parameters())]
    assert max(errors) > 1e-6  # a different result, as documented


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_exact_hessian_of_the_fused_network_is_the_plain_networks(fold):
    """The exact hypergradient differentiates the fused ops' backward again: on the fused
    network it equals the one autograd gives through the authors' plain network."""
    mf, mr = networks(darts_fast.Network, "cpu", torch.float64)
    if not fold:
        mf, _ = networks(functools.partial(darts_fast.Network, fold_batch_norm=False), "cpu",
                         torch.float64)
    data = batches("cpu", torch.float64, size=8)
    for model in (mf, mr):
        darts_fast.Architect(model, ARGS, hessian="exact").step(*data, ETA, sgd(model), True)
    assert_alpha_grads_close(mf, mr, 1e-9)


class TestBadInput:
    def setup_method(self):
        self.model, _ = networks(darts_fast.Network, "cpu", torch.float32, steps=2)
        self.optimizer = sgd(self.model)
        self.data = list(batches("cpu", torch.float32))
        self.architect = darts_fast.Architect(self.model, ARGS)

    def assert_untouched(self, fn):
        weights = [p.detach().clone() for p in self.model.parameters()]
        buffers = [b.clone() for b in self.model.buffers()]
        alphas = [a.detach().clone() for a in self.model.arch_parameters()]
        fn()
        for now, before in zip([*self.model.parameters(), *self.model.buffers(),
                                *self.model.arch_parameters()], weights + buffers + alphas):
            assert torch.equal(now, before)

    def test_model_without_arch_parameters(self):
        with pytest.raises(TypeError, match="model must offer arch_parameters"):
            darts_fast.Architect(nn.Linear(2, 2), ARGS)

    def test_args_missing_a_field(self):
        with pytest.raises(TypeError, match="'arch_weight_decay'"):
            darts_fast.Architect(self.model, types.SimpleNamespace(
                momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4))

    def test_unknown_hessian(self):
        with pytest.raises(ValueError, match="hessian must be one of"):
            darts_fast.Architect(self.model, ARGS, hessian="fast")

    def test_optimizer_without_the_model_weights(self):
        other = torch.optim.SGD([nn.Parameter(torch.ones(1))], 0.1)

        def step():
            with pytest.raises(ValueError, match="does not hold the model's weights"):
                self.architect.step(*self.data, ETA, other, True)

        self.assert_untouched(step)

    @pytest.mark.parametrize("which", [1, 3])
    def test_mismatched_batches(self, which):
        self.data[which] = self.data[which][:-1]

        def step():
            with pytest.raises(ValueError, match="must hold the same number of samples"):
                self.architect.step(*self.data, ETA, self.optimizer, True)

        self.assert_untouched(step)

    def test_mismatched_sample_shapes(self):
        self.data[2] = self.data[2][:, :, :8, :8]
        with pytest.raises(ValueError, match="same sample shape"):
            self.architect.step(*self.data, ETA, self.optimizer, True)

    @pytest.mark.parametrize("unrolled", [True, False])
    def test_non_finite_loss(self, unrolled):
        self.data[2] = self.data[2].clone()
        self.data[2][0, 0, 0, 0] = float("nan")
        self.assert_untouched(lambda: self.architect.step(*self.data, ETA, self.optimizer,
                                                          unrolled))
        assert self.architect.skipped_steps.item() == 1


@pytest.mark.parametrize("skip_at, unrolled", [(0, True), (1, False)])
def test_a_skipped_step_leaves_no_trace(skip_at, unrolled):
    """Steps with a NaN batch among good ones: alphas and Adam's state end bit for bit as in a
    run without those steps, also when the very first step (which creates Adam's state) is
    skipped. The skips are counted on the device."""
    results = []
    for with_nan in (True, False):
        model, _ = networks(darts_fast.Network, "cpu", torch.float32, steps=2)
        optimizer, architect = sgd(model), darts_fast.Architect(model, ARGS)
        for step in range(2):
            data = batches("cpu", torch.float32, seed=step)
            if step == skip_at and with_nan:
                bad = list(data)
                bad[2] = bad[2].clone()  # the validation batch: both orders read it
                bad[2][1, 2, 3, 4] = float("inf")
                architect.step(*bad, ETA, optimizer, unrolled)
            architect.step(*data, ETA, optimizer, unrolled)
        state = [t for a in model.arch_parameters()
                 for t in architect.optimizer.state[a].values()]
        results.append(([a.detach() for a in model.arch_parameters()], state,
                        [b.clone() for b in model.buffers()], architect.skipped_steps.item()))
    (alphas, state, buffers, skipped), (alphas0, state0, buffers0, skipped0) = results
    assert (skipped, skipped0) == (1, 0)
    for a, b in zip(alphas + state + buffers, alphas0 + state0 + buffers0):
        assert torch.equal(a, b)


def test_eta_as_a_tensor_gives_the_same_bits():
    """eta enters the second-order step only."""
    runs = []
    for eta in (ETA, torch.tensor(ETA)):
        model, _ = networks(darts_fast.Network, "cpu", torch.float32, steps=2)
        optimizer, architect = sgd(model), darts_fast.Architect(model, ARGS)
        for step in range(2):
            data = batches("cpu", torch.float32, seed=step)
            architect.step(*data, eta, optimizer, True)
            weight_step(model, optimizer, *data[:2])
        runs.append([a.detach() for a in model.arch_parameters()])
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
