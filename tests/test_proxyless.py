"""ProxylessNAS on the fused mixed op against its authors' MixedEdge, re-derived here in float64:
the draws, the binary gates' gradients and the alphas' gradient over the pair, the rescale after
Adam's step, the weight step's single path, the mul#log loss; and ``--method proxyless``."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast import reference
from darts_fast.cli import checkpoint, main
from darts_fast.methods import proxyless
from darts_fast.search import hardware_loss
from darts_fast.spaces.cnn import resources
from darts_fast.spaces.cnn.genotypes import PRIMITIVES

TOL = TOLERANCE[torch.float64]
ARGS = type("Args", (), dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=1e-3,
                             arch_weight_decay=0.0))()


def networks(seed=0):
    torch.manual_seed(seed)
    fused = proxyless.ProxylessNetwork(4, 10, 3, nn.CrossEntropyLoss()).double()
    torch.manual_seed(seed)
    ref = reference.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for a in fused.arch_parameters():
            a.normal_()
    return fused, ref


def authors_binarize(alphas):
    """MixedEdge.binarize in "two" mode for every edge: two candidates by multinomial over
    softmax(alpha) without replacement, the active one from the pair's softmax."""
    pair = torch.multinomial(F.softmax(alphas.detach(), dim=-1), 2)
    probs = F.softmax(alphas.detach().gather(1, pair), dim=-1)
    chosen = torch.multinomial(probs, 1)
    active = pair.gather(1, chosen)
    inactive = pair.gather(1, 1 - chosen)
    return active.view(-1).tolist(), inactive.view(-1).tolist()


def authors_forward(ref, x, draws, gates):
    """MixedEdge.forward in "two" mode: the active candidate times its gate plus the inactive
    one, detached, times its gate; ``gates[kind]`` leaf tensors [edges, candidates]."""
    s0 = s1 = ref.stem(x)
    for cell in ref.cells:
        kind = int(cell.reduction)
        (active, inactive), g = draws[kind], gates[kind]
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for _ in range(cell._steps):
            s = 0
            for j, h in enumerate(states):
                e, ops = offset + j, cell._ops[offset + j]._ops
                s = s + g[e, active[e]] * ops[active[e]](h) \
                    + g[e, inactive[e]] * ops[inactive[e]](h).detach()
            offset += len(states)
            states.append(s)
        s0, s1 = s1, torch.cat(states[-cell._multiplier:], dim=1)
    out = ref.global_pooling(s1)
    return ref.classifier(out.view(out.size(0), -1))


def authors_alpha_grad(alphas, draws, binary_grads):
    """set_arch_param_grad: d alpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the pair."""
    grad = torch.zeros_like(alphas)
    for e, (a, b) in enumerate(zip(*draws)):
        involved = [a, b]
        probs = F.softmax(torch.stack([alphas[e, k] for k in involved]), dim=0).detach()
        for i in range(2):
            for j in range(2):
                grad[e, involved[i]] += binary_grads[e, involved[j]] * probs[j] * (
                    float(i == j) - probs[i])
    return grad


def test_the_architecture_step_gradient_is_the_authors():
    fused, ref = networks()
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    torch.manual_seed(11)
    fused.mode = "two"
    loss = F.cross_entropy(fused(x), y)
    ours = torch.autograd.grad(loss, fused.arch_parameters())
    torch.manual_seed(11)
    draws = [authors_binarize(a) for a in fused.arch_parameters()]
    assert [[sorted(r) for r in p.tolist()] for p in fused.pairs] == \
        [[sorted(t) for t in zip(*d)] for d in draws]
    gates = []
    for active, _ in draws:
        g = torch.zeros_like(fused.alphas_normal.detach())
        g[range(len(active)), active] = 1.0
        gates.append(g.requires_grad_())
    loss_a = F.cross_entropy(authors_forward(ref, x, draws, gates), y)
    assert rel_err(loss, loss_a) < TOL
    binary_grads = torch.autograd.grad(loss_a, gates)
    for mine, alphas, d, bg in zip(ours, fused.arch_parameters(), draws, binary_grads):
        theirs = authors_alpha_grad(alphas.detach(), d, bg)
        assert rel_err(mine, theirs) < TOL
        assert (mine != 0).sum(1).le(2).all()  # only the pair's alphas move


def test_the_pair_keeps_its_log_sum_exp_after_the_step():
    fused, _ = networks()
    architect = proxyless.ProxylessArchitect(fused, ARGS)
    assert architect.optimizer.defaults["betas"] == (0.0, 0.999)
    before = [a.detach().clone() for a in fused.arch_parameters()]
    batch = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,)))
    torch.manual_seed(3)
    architect.step_batches(batch, batch, 0.025, None, unrolled=False)
    assert fused.mode == "one"
    for alphas, old, pair in zip(fused.arch_parameters(), before, fused.pairs):
        # The authors': offset = log(sum exp(new) / sum exp(old)) over the pair, subtracted.
        moved = alphas.detach().clone()
        for e, (a, b) in enumerate(pair.tolist()):
            assert math.isclose(math.log(math.exp(moved[e, a]) + math.exp(moved[e, b])),
                                math.log(math.exp(old[e, a]) + math.exp(old[e, b])),
                                rel_tol=1e-12, abs_tol=1e-12)
            moved[e, [a, b]] = old[e, [a, b]]
        assert torch.equal(moved, old)  # the other candidates untouched
        assert not torch.equal(alphas, old)


def test_the_weight_step_runs_one_candidate_drawn_from_the_softmax():
    fused, _ = networks()
    counts = torch.zeros_like(fused.alphas_normal.detach())
    torch.manual_seed(0)
    n = 3000
    for _ in range(n):
        for e, (k,) in enumerate(fused.sample_paths()[0][1]):
            counts[e, k] += 1
    probs = F.softmax(fused.alphas_normal.detach(), -1)
    assert (counts / n - probs).abs().max() < 5 * (0.25 / n) ** 0.5
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    fused._loss(x, torch.randint(0, 10, (4,))).backward()
    computed = [p.grad is not None for p in fused.parameters()]
    assert any(computed) and not all(computed)


def test_the_hardware_loss_is_mul_log_of_the_expected_cost():
    fused, _ = networks()
    loss_fn = hardware_loss.HardwareLoss(fused, "params", 1.5, table={
        kind: {"params": torch.full((14, 8), 1e5, dtype=torch.float64)} for kind in
        ("normal", "reduce")} | {"fixed": {"params": 1e6}})
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    torch.manual_seed(1)
    loss = loss_fn(fused, (x, y))
    torch.manual_seed(1)
    with torch.no_grad():
        ce = float(fused._loss(x, y))
    expected = 1.0 + 2 * 14 * 0.1  # every candidate 0.1M: any softmax gives 2.8M over 2 kinds
    assert math.isclose(float(loss), 0.2 * ce * (math.log(expected) / math.log(1.5)) ** 0.3,
                        rel_tol=1e-12)
    with pytest.raises(ValueError, match="above 1"):
        hardware_loss.HardwareLoss(fused, "params", 1.5)  # a 4-channel network: 0.01M


def test_the_command_line_searches_and_refuses_a_bad_cost(tmp_path, capsys):
    common = ["search", "--method", "proxyless", "--epochs", "2", "--arch_start_epoch", "1",
              "--layers", "3", "--init_channels", "4", "--batch_size", "32", "--synthetic_size",
              "320", "--seed", "1"]
    assert main.main([*common, "--cost", "flops", "--cost_reference", "1.5",
                      "--run_dir", str(tmp_path / "run")]) == 0
    genotype = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert len(genotype["normal"]) == 8
    assert "mul#log flops loss toward 1.5 M multiply-adds" in \
        (tmp_path / "run" / "log.txt").read_text()
    for argv, words in (
            ([*common, "--cost", "latency", "--cost_reference", "5"], "needs --cost_table"),
            ([*common, "--cost_table", "t.json"], "add --cost"),
            ([*common, "--cost", "flops"], "needs --cost_reference"),
            ([*common, "--cost", "params", "--cost_reference", "2"], "above 1"),
            ([*common, "--cost", "latency", "--cost_reference", "5", "--cost_table",
              str(tmp_path / "missing.json")], "missing.json"),
            (["search", "--method", "spos", "--cost", "flops", "--cost_reference", "2"],
             "no alphas"),
            (["search", "--method", "pdarts", "--cost", "flops", "--cost_reference", "2"],
             "no alphas")):
        capsys.readouterr()
        assert main.main([*argv, "--run_dir", str(tmp_path / "bad")]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_darts_searches_with_the_hardware_loss(tmp_path):
    """The DARTS family takes the same loss: one architect step with it moves the cheap
    candidates up against the costly ones, next to the same step without it; and the command
    line's --cost changes a DARTS search's alphas."""
    gains = []
    for cost in (None, "flops"):
        torch.manual_seed(0)
        model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss()).double()
        column = [PRIMITIVES.index(n) for n in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                                                 "dil_conv_5x5")]
        macs = torch.zeros(14, 8, dtype=torch.float64)
        macs[:, column] = 2e6  # the convolutions cost, the pools and skip nothing
        table = {"normal": {"macs": macs}, "reduce": {"macs": macs}, "fixed": {"macs": 1e6}}
        options = {} if cost is None else {
            "loss_fn": hardware_loss.HardwareLoss(model, cost, 1.1, table)}
        architect = darts_fast.Architect(model, ARGS, **options)
        batch = (torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,)))
        before = model.alphas_normal.detach().clone()
        architect.step_batches(batch, batch, 0.025, None, unrolled=False)
        moved = model.alphas_normal.detach() - before
        gains.append(float(moved[:, [1, 2, 3]].mean() - moved[:, column].mean()))
    assert gains[1] > gains[0] + 1e-4, gains  # Adam's first step moves each alpha by ~lr
    argv = ["search", "--epochs", "1", "--layers", "3", "--init_channels", "4",
            "--batch_size", "32", "--synthetic_size", "64"]
    alphas = []
    for name, extra in (("plain", []), ("cost", ["--cost", "flops", "--cost_reference", "1.1",
                                                  "--cost_table", str(tmp_path / "t.json")])):
        if extra:
            model = darts_fast.Network(4, 10, 3, nn.CrossEntropyLoss())
            resources.save_table(str(tmp_path / "t.json"), dict(
                resources.supernet_costs(model), fixed={"macs": 2e6, "params": 1e6}))
        assert main.main([*argv, *extra, "--run_dir", str(tmp_path / name)]) == 0
        alphas.append((tmp_path / name / "alphas_epoch_001.json").read_text())
    assert alphas[0] != alphas[1]


def test_a_stopped_and_resumed_proxyless_search_is_bit_identical(tmp_path):
    """The architecture steps every 5th step and the draws go on as in the search never
    stopped (the step count starts again each epoch; the generators are in the checkpoint)."""
    argv = ["search", "--method", "proxyless", "--epochs", "2", "--arch_start_epoch", "0",
            "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--synthetic_size",
            "96", "--seed", "2"]
    assert main.main([*argv, "--run_dir", str(tmp_path / "full")]) == 0
    assert main.main([*argv, "--run_dir", str(tmp_path / "parts"), "--stop_after_epoch",
                      "1"]) == 0
    assert main.main(["search", "--resume", str(tmp_path / "parts")]) == 0
    a, b = (checkpoint.load(str(tmp_path / name / "checkpoint.pt")) for name in ("full", "parts"))
    assert all(torch.equal(x, y) for x, y in zip(a["alphas"], b["alphas"]))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # 6 steps an epoch: the 5th of each is an architecture step, 2 in all.
    assert float(a["architect_optimizer"]["state"][0]["step"]) == 2.0
