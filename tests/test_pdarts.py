"""P-DARTS on the fused mixed op against the authors' formulation (darts_fast.reference.pdarts):
the mixed op on shrunken candidate lists with the skip dropout, a whole network, the dropout
schedule, the genotype, and the stage bookkeeping on random probability tables."""
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, rel_err

from darts_fast.methods import pdarts
from darts_fast.methods.pdarts_switches import (drop_candidates, final_rule, final_switches,
                                                skip_capped_genotypes)
from darts_fast.reference import pdarts as authors
from darts_fast.search.architect import Architect
from darts_fast.search.step import SearchStep
from darts_fast.spaces.cnn.genotypes import PRIMITIVES

EDGES = 14


def switch(names):
    return [name in names for name in PRIMITIVES]


KEPT = {
    "all8": PRIMITIVES,
    "5-none-skip": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"],
    "5-no-none-no-skip": ["max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
                          "dil_conv_3x3"],
    "3-skip": ["skip_connect", "sep_conv_3x3", "dil_conv_5x5"],
    "3-none": ["none", "avg_pool_3x3", "sep_conv_5x5"],
}


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kept", KEPT)
def test_mixed_op_matches_the_authors(device, kept, stride, p, dtype, fold):
    row = switch(KEPT[kept])
    torch.manual_seed(0)
    fused = pdarts.PDARTSMixedOp(8, stride, row, p, fold_batch_norm=fold).to(device, dtype)
    torch.manual_seed(0)
    ref = authors.PDARTSMixedOp(8, stride, row, p).to(device, dtype)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert [(n, type(m).__name__) for n, m in fused.named_modules()] == \
        [(n, type(m).__name__) for n, m in ref.named_modules()]  # Dropout where theirs is
    dropped = p > 0 and stride == 1 and "skip_connect" in KEPT[kept]
    assert any(isinstance(m, nn.Dropout) for m in fused.modules()) == dropped
    x = torch.randn(2, 8, 6, 6, device=device, dtype=dtype, requires_grad=True)
    w = torch.softmax(torch.randn(len(KEPT[kept]), device=device, dtype=dtype), 0)
    w.requires_grad_()
    tol = TOLERANCE[dtype]
    outs = []
    for op in (fused, ref):
        torch.manual_seed(7)  # the same dropout mask
        outs.append(op(x, w))
    assert outs[0].shape == (2, 8, 6 // stride, 6 // stride)
    assert rel_err(outs[0], outs[1]) < tol
    g = torch.randn_like(outs[0])
    for a, b in zip(torch.autograd.grad(outs[0], [x, w, *fused.parameters()], g),
                    torch.autograd.grad(outs[1], [x, w, *ref.parameters()], g)):
        assert rel_err(a, b) < tol
    for a, b in zip(fused.buffers(), ref.buffers()):
        assert rel_err(a, b) < tol
    if dropped:  # another seed: another mask, the same for both
        again = []
        for op in (fused, ref):
            torch.manual_seed(8)
            again.append(op(x, w))
        assert rel_err(again[0], again[1]) < tol and rel_err(again[0], outs[0]) > 1e-3
    fused.eval(), ref.eval()
    assert rel_err(fused(x, w), ref(x, w)) < tol


def random_switches(rng, kept, must=(), never=()):
    """EDGES rows keeping ``kept`` candidates each, the names in ``must`` always, those in
    ``never`` never."""
    rows = []
    for _ in range(EDGES):
        free = [n for n in PRIMITIVES if n not in must and n not in never]
        names = list(must) + list(rng.choice(free, kept - len(must), replace=False))
        rows.append(switch(names))
    return rows


SHRUNKEN = np.random.default_rng(0)
SWITCHES = {5: (random_switches(SHRUNKEN, 5), random_switches(SHRUNKEN, 5, must=["none"])),
            3: (random_switches(SHRUNKEN, 3, must=["skip_connect"]),
                random_switches(SHRUNKEN, 3))}


def networks(kept, dtype=torch.float64, p=0.3, last_stage=False, **options):
    normal, reduce = SWITCHES[kept]
    built = []
    for cls, kwargs in ((pdarts.PDARTSNetwork, {"memory_format": None, **options}),
                        (authors.PDARTSNetwork, {})):
        torch.manual_seed(0)
        built.append(cls(8, 10, 5, nn.CrossEntropyLoss(), switches_normal=normal,
                         switches_reduce=reduce, p=p, last_stage=last_stage, **kwargs)
                     .to(dtype=dtype))
    return built


@pytest.mark.parametrize("kept", [5, 3])
def test_network_matches_the_authors(kept):
    fused, ref = networks(kept)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(),
                                                 ref.state_dict().values()))
    for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):  # drawn after the modules
        assert a.shape == (EDGES, kept) and torch.equal(a, b)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=g)
    grads = []
    for model in (fused, ref):
        torch.manual_seed(3)
        loss = model._loss(x, y)
        grads.append([loss, *torch.autograd.grad(loss, [*model.arch_parameters(),
                                                        *model.parameters()])])
    for a, b in zip(*grads):
        assert rel_err(a, b) < TOLERANCE[torch.float64]
    authors_again = authors.PDARTSNetwork(8, 10, 5, None, switches_normal=SWITCHES[kept][0],
                                          switches_reduce=SWITCHES[kept][1], p=0.3)
    authors_again.load_state_dict(fused.state_dict())


def authors_rate(drop_rate, epoch, epochs, eps_no_arch=10, scale_factor=0.2):
    """``model.module.p`` in the authors' epoch loop."""
    if epoch < eps_no_arch:
        return float(drop_rate) * (epochs - epoch - 1) / epochs
    return float(drop_rate) * np.exp(-(epoch - eps_no_arch) * scale_factor)


def test_skip_dropout_per_epoch_matches_update_p():
    fused, ref = networks(3, p=0.7)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=g)
    losses = set()
    for epoch in (0, 4, 9, 10, 13, 24):
        rate = pdarts.skip_dropout_at(0.7, epoch, 25)
        assert rate == pytest.approx(authors_rate(0.7, epoch, 25), rel=1e-15, abs=0)
        fused.set_skip_dropout(rate)
        ref.p = rate
        ref.update_p()
        rates = [[m.p for m in model.modules() if isinstance(m, nn.Dropout)]
                 for model in (fused, ref)]
        assert rates[0] == rates[1] and len(rates[0]) > 0 and set(rates[0]) == {rate}
        with torch.no_grad():
            torch.manual_seed(epoch)
            loss = fused._loss(x, y)
            torch.manual_seed(epoch)
            assert rel_err(loss, ref._loss(x, y)) < TOLERANCE[torch.float64]
        losses.add(loss.item())
    assert len(losses) == 6
    with pytest.raises(ValueError, match="built with p=0"):
        networks(3, p=0.0)[0].set_skip_dropout(0.1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fused.set_skip_dropout(1.5)


@pytest.mark.parametrize("last_stage", [False, True])
@pytest.mark.parametrize("kept", [5, 3])
def test_tables_and_genotype_match_the_authors(kept, last_stage):
    fused, ref = networks(kept, dtype=torch.float32, last_stage=last_stage)
    g = torch.Generator().manual_seed(kept + 10 * last_stage)
    with torch.no_grad():
        for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):
            a.copy_(torch.randn(a.shape, generator=g))
            b.copy_(a)
    for t, r in zip(fused.architecture_tables(), ref.architecture_tables()):
        assert t.candidates == r.candidates == tuple(PRIMITIVES) and t.edges == r.edges
        assert torch.equal(t.weights, r.weights)
    genotype = fused.genotype()
    assert genotype == ref.genotype()
    if last_stage:  # one candidate on two edges per node
        assert len(genotype.normal) == len(genotype.reduce) == 8
        assert all(name != "none" for name, _ in genotype.normal + genotype.reduce)


def probability_table(rng, switches, skip_bias=0.0):
    """Per edge the float32 softmax of small integer logits (many ties), one per kept
    candidate; ``skip_bias`` raises the skip's logit."""
    rows = []
    for row in switches:
        names = [n for n, on in zip(PRIMITIVES, row) if on]
        logits = rng.integers(0, 3, len(names)).astype(np.float32)
        logits += np.float32(skip_bias) * np.array([n == "skip_connect" for n in names])
        rows.append(torch.softmax(torch.from_numpy(logits), 0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("last_stage", [False, True])
@pytest.mark.parametrize("kept", [8, 5, 3])
def test_drop_candidates_matches_the_authors(kept, last_stage):
    rng = np.random.default_rng(kept)
    for trial in range(60):
        must = ["none"] if trial % 3 == 0 and kept < 8 else []
        never = ["none"] if trial % 3 == 1 and kept < 8 else []
        switches = random_switches(rng, kept, must, never)
        probs = probability_table(rng, switches)
        for num_to_drop in range(1, kept):
            expected = authors.drop_switches(switches, probs, num_to_drop, last_stage)
            assert drop_candidates(switches, probs, num_to_drop, last_stage) == expected


def test_final_switches_match_the_authors():
    rng = np.random.default_rng(1)
    for trial in range(200):
        switches = random_switches(rng, 3, ["none"] if trial % 2 else [])
        probs = probability_table(rng, switches)
        expected, _ = authors.final_switches(authors.drop_switches(switches, probs, 2, True),
                                             switches, probs)
        assert final_switches(switches, probs) == expected
        full = np.zeros((EDGES, len(PRIMITIVES)), dtype=np.float32)
        full[np.array(switches)] = probs.reshape(-1)
        assert final_rule(full, tuple(PRIMITIVES), 4) == \
            authors.parse_network(expected, expected).normal


def test_skip_capped_genotypes_match_the_authors():
    rng = np.random.default_rng(2)
    caps = []
    for trial in range(100):
        must = ["skip_connect"] + (["none"] if trial % 2 else [])
        normal = random_switches(rng, 3, must if trial % 4 else ["skip_connect"])
        reduce = random_switches(rng, 3)
        probs_normal = probability_table(rng, normal, skip_bias=trial % 3)
        probs_reduce = probability_table(rng, reduce)
        final_normal, zeroed = authors.final_switches(
            authors.drop_switches(normal, probs_normal, 2, True), normal, probs_normal)
        final_reduce, _ = authors.final_switches(
            authors.drop_switches(reduce, probs_reduce, 2, True), reduce, probs_reduce)
        expected = authors.skip_capped_genotypes(final_normal, normal, zeroed, final_reduce)
        got = skip_capped_genotypes(normal, reduce, probs_normal, probs_reduce)
        assert got == expected
        caps += [cap for cap, _ in got]
        for cap, genotype in got:
            assert sum(name == "skip_connect" for name, _ in genotype.normal) <= cap
    assert {0, 1, 2, 3, 4, 5} <= set(caps)  # the tables exercise the caps that need removals


def test_float32_loss_follows_float64():
    fused64, _ = networks(5, p=0.0)
    fused32 = pdarts.PDARTSNetwork(8, 10, 5, nn.CrossEntropyLoss(),
                                   switches_normal=SWITCHES[5][0], switches_reduce=SWITCHES[5][1])
    fused32.load_state_dict(fused64.state_dict())
    with torch.no_grad():
        for a, b in zip(fused32.arch_parameters(), fused64.arch_parameters()):
            a.copy_(b)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=g)
    loss64 = fused64._loss(x, y)
    loss32 = fused32._loss(x.float(), y)
    assert loss32.dtype == torch.float32 and rel_err(loss32, loss64) < 1e-5


def test_new_keeps_the_configuration():
    fused, _ = networks(3, p=0.7, last_stage=True)
    fused.set_skip_dropout(0.2)
    copy = fused.new()
    assert list(copy.state_dict()) == list(fused.state_dict())
    assert copy.genotype() == fused.genotype() and copy.p == 0.2
    assert all(torch.equal(a, b) for a, b in zip(copy.arch_parameters(), fused.arch_parameters()))


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="same number of candidates"):
        pdarts.PDARTSNetwork(8, 10, 3, None, switches_normal=[switch(PRIMITIVES)] * 13
                             + [switch(["sep_conv_3x3"])])
    with pytest.raises(ValueError, match="expected 14 rows of 8 bools"):
        pdarts.PDARTSNetwork(8, 10, 3, None, switches_normal=[switch(PRIMITIVES)] * 5)
    with pytest.raises(ValueError, match="recompute would draw the skip's dropout mask"):
        pdarts.PDARTSMixedOp(8, 1, switch(PRIMITIVES), 0.1, recompute=True)
    with pytest.raises(ValueError, match="num_to_drop must be in"):
        drop_candidates([switch(KEPT["3-skip"])], np.ones((1, 3)) / 3, 3, False)


def test_two_search_steps_match_the_authors_train_loop():
    """The authors' ``train()`` body: a first-order architecture step whose alpha gradient is
    clipped (to 5 there; to CLIP here, so that the clip bites) before Adam (6e-4, betas (0.5,
    0.999), decay 1e-3), then the weight step; the skip dropout on, on a shrunken stage."""
    fused, ref = networks(3, p=0.4)
    args = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4,
                                 arch_weight_decay=1e-3)
    sgd = [torch.optim.SGD(m.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
           for m in (fused, ref)]
    clip = 0.05
    step = SearchStep(fused, Architect(fused, args, grad_clip=clip), sgd[0], grad_clip=5.0,
                      unrolled=False)
    adam = torch.optim.Adam(ref.arch_parameters(), lr=6e-4, betas=(0.5, 0.999),
                            weight_decay=1e-3)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        x, vx = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in "ab")
        y, vy = (torch.randint(0, 10, (2,), generator=g) for _ in "ab")
        torch.manual_seed(7)
        step(x, y, vx, vy, 0.025)
        torch.manual_seed(7)
        ref.train()
        adam.zero_grad()
        ref._criterion(ref(vx), vy).backward()
        norm = nn.utils.clip_grad_norm_(ref.arch_parameters(), clip)
        adam.step()
        sgd[1].zero_grad()
        ref._criterion(ref(x), y).backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        sgd[1].step()
        assert norm > clip
    for a, b in zip([*fused.arch_parameters(), *fused.parameters()],
                    [*ref.arch_parameters(), *ref.parameters()]):
        assert rel_err(a, b) < 1e-9
