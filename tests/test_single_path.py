"""The single-path supernet (SPOS, random search with weight sharing, ENAS) against the path
computed by hand from the original DARTS modules, the architecture encoding, the uniform draw,
the untouched weights of the candidates a step did not use, and the path scorer."""
import collections
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import TOLERANCE, rel_err

from darts_fast import reference
from darts_fast.search.path_score import PathScorer
from darts_fast.spaces.cnn import paths
from darts_fast.spaces.cnn.genotypes import DARTS_V2, PRIMITIVES
from darts_fast.spaces.cnn.single_path import SinglePathNetwork

TOL = TOLERANCE[torch.float64]


def networks(seed=0, sample_none=False):
    torch.manual_seed(seed)
    fused = SinglePathNetwork(4, 10, 3, nn.CrossEntropyLoss(), sample_none=sample_none).double()
    torch.manual_seed(seed)
    ref = reference.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def path_by_hand(ref, architecture, x):
    """The original modules, each chosen candidate computed alone: ``op_k(states[j])`` summed per
    node, as the trained network of the genotype would compute it with the supernet's weights."""
    s0 = s1 = ref.stem(x)
    for cell in ref.cells:
        pairs = architecture.reduce if cell.reduction else architecture.normal
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for node in range(cell._steps):
            total = 0
            for j, k in pairs[2 * node:2 * node + 2]:
                total = total + cell._ops[offset + j]._ops[k](states[j])
            offset += len(states)
            states.append(total)
        s0, s1 = s1, torch.cat(states[-cell._multiplier:], dim=1)
    out = ref.global_pooling(s1)
    return ref.classifier(out.view(out.size(0), -1))


def test_a_path_equals_its_candidates_computed_alone():
    fused, ref = networks()
    arch = paths.random_architecture(4, range(1, 8), np.random.RandomState(3))
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    with fused.use_path(arch):
        loss_f = nn.functional.cross_entropy(fused(x), y)
    loss_r = nn.functional.cross_entropy(path_by_hand(ref, arch, x), y)
    assert rel_err(loss_f, loss_r) < TOL
    loss_f.backward(), loss_r.backward()
    for (name, a), b in zip(fused.named_parameters(), ref.parameters()):
        assert (a.grad is None) == (b.grad is None), name  # unused: no gradient at all
        if a.grad is not None:
            assert rel_err(a.grad, b.grad) < TOL, name
    assert any(p.grad is None for p in fused.parameters())
    ref_buffers = dict(ref.named_buffers())
    for name, a in fused.named_buffers():
        if name != "_ones":
            assert rel_err(a, ref_buffers[name]) < TOL, name  # only the path's BatchNorms moved


def test_a_pair_taken_twice_counts_twice():
    """ENAS' node of one pair drawn twice: op(h) + op(h)."""
    fused, ref = networks()
    arch = paths.random_architecture(4, range(1, 8), np.random.RandomState(4))
    twice = paths.Architecture(arch.normal[:2] * 4, arch.reduce[:1] * 2 + arch.reduce[2:])
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with fused.use_path(twice):
        assert rel_err(fused(x), path_by_hand(ref, twice, x)) < TOL


def test_sgd_leaves_the_unused_candidates_alone():
    fused, _ = networks()
    opt = torch.optim.SGD(fused.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    first, second = (paths.random_architecture(4, range(1, 8), np.random.RandomState(s))
                     for s in (0, 1))
    for arch in (first, second):
        before = [p.detach().clone() for p in fused.parameters()]
        opt.zero_grad()
        with fused.use_path(arch):
            fused._loss(x, y).backward()
        opt.step()
        for p, b in zip(fused.parameters(), before):
            if p.grad is None:  # no momentum from the first step, no decay
                assert torch.equal(p, b)


def test_genotypes_round_trip_and_bad_paths_are_refused():
    arch = paths.from_genotype(DARTS_V2, PRIMITIVES, 4)
    assert paths.to_genotype(arch, PRIMITIVES, 4) == DARTS_V2._replace(
        normal_concat=[2, 3, 4, 5], reduce_concat=[2, 3, 4, 5])
    fused, _ = networks()
    for bad, words in (([(0, 1), (1, 1), (0, 1), (3, 1)] + [(0, 1), (1, 1)] * 2,
                        "pair 3 must be (input, candidate) with input in [0, 3)"),
                       ([(0, 9)] * 8, "candidate in [0, 8)"),
                       ("x", "two cell paths")):
        with pytest.raises(ValueError, match=re.escape(words)):
            with fused.use_path((bad, arch.reduce) if bad != "x" else bad):
                pass
    with pytest.raises(ValueError, match="lacks"):
        paths.from_genotype(DARTS_V2, ["none", "skip_connect"], 4)


@pytest.mark.parametrize("sample_none", [False, True])
def test_the_draw_is_uniform_over_what_the_authors_draw_from(sample_none):
    fused, _ = networks(sample_none=sample_none)
    np.random.seed(0)
    n = 4000
    ops, inputs = collections.Counter(), collections.Counter()
    for _ in range(n):
        arch = fused.sampler()
        paths.check_architecture(arch, 4, 8)
        ops.update(k for _, k in arch.normal)
        inputs.update(tuple(sorted(j for j, _ in arch.normal[6:8])) for _ in [0])
    drawn = range(8) if sample_none else range(1, 8)
    assert set(ops) == set(drawn)
    expected = 8 * n / len(drawn)
    assert all(abs(ops[k] - expected) < 5 * expected ** 0.5 for k in drawn)
    # The last node picks 2 of its 5 inputs: 10 pairs, each 1/10.
    assert len(inputs) == 10 and all(abs(c - n / 10) < 5 * (n / 10) ** 0.5
                                     for c in inputs.values())


def test_the_draw_is_randomnas_draw_for_draw():
    """Their sample_arch, transcribed: four candidates per node, then the two cells' inputs."""
    fused, _ = networks(sample_none=True)
    np.random.seed(5)
    ours = fused.sampler()
    np.random.seed(5)
    normal, reduce = [], []
    for i in range(4):
        ops = np.random.choice(range(8), 4)
        nodes_in_normal = np.random.choice(range(i + 2), 2, replace=False)
        nodes_in_reduce = np.random.choice(range(i + 2), 2, replace=False)
        normal.extend([(nodes_in_normal[0], ops[0]), (nodes_in_normal[1], ops[1])])
        reduce.extend([(nodes_in_reduce[0], ops[2]), (nodes_in_reduce[1], ops[3])])
    assert ours == (tuple(normal), tuple(reduce))


def test_the_scorer_recalibrates_and_puts_the_statistics_back():
    fused, ref = networks()
    arch = paths.random_architecture(4, range(1, 8), np.random.RandomState(1))
    train = [(torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,)))
             for _ in range(3)]
    valid = [(torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,)))]
    buffers = [b.clone() for b in fused.buffers()]
    score = PathScorer(fused, lambda: train, recalibration=5)(arch, valid)
    assert all(torch.equal(a, b) for a, b in zip(buffers, fused.buffers()))
    # By hand: statistics reset, 5 training-mode passes (the 3 batches, then 2 again), eval.
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        for x, _ in train + train[:2]:
            path_by_hand(ref, arch, x)
        ref.eval()
        x, y = valid[0]
        expected = (path_by_hand(ref, arch, x).argmax(1) == y).double().mean().item()
    assert score == expected
    with pytest.raises(ValueError, match="recalibration"):
        PathScorer(fused, None, recalibration=2)
    with pytest.raises(ValueError, match="no batches"):
        PathScorer(fused, lambda: [], recalibration=2)(arch, valid)
