"""GDAS on the fused mixed op against its authors' formulations, re-derived here and in
darts_fast.reference: the sampled edge, the Gumbel sampling (retries included), a search step
(weights first), the genotype rule, the temperature schedule; and ``darts-fast search --method
gdas``."""
import json
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TOLERANCE, rel_err

import darts_fast
from darts_fast import reference
from darts_fast.cli import checkpoint, main
from darts_fast.methods import gdas
from darts_fast.search.step import SearchStep
from darts_fast.spaces.cnn.genotypes import PRIMITIVES, genotype_text, parse_genotype

TOL = TOLERANCE[torch.float64]
ARGS = dict(momentum=0.9, weight_decay=5e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)


# --- the sampled edge ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["folded", "unfolded", "recompute"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("index", range(len(PRIMITIVES)))
def test_one_active_candidate_matches_the_authors_edge(index, stride, variant):
    """``op(x) * w[index]`` of the authors' MixedOp: output, gradients of x, the weights and every
    parameter, and the BatchNorm statistics (of the sampled candidate only)."""
    torch.manual_seed(0)
    fused = darts_fast.MixedOp(8, stride, fold_batch_norm=variant != "unfolded",
                               recompute=variant == "recompute").double()
    torch.manual_seed(0)
    ref = reference.MixedOp(8, stride).double()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    w = F.one_hot(torch.tensor(index), 8).double() - probs.detach() + probs
    out_f, out_r = fused(x, w, [index]), ref._ops[index](x) * w[index]
    assert out_f.shape == (4, 8, 6 // stride, 6 // stride) and rel_err(out_f, out_r) < TOL
    g = torch.randn_like(out_f)
    for a, b in zip(torch.autograd.grad(out_f, [x, probs, *fused.parameters()], g,
                                        allow_unused=True, materialize_grads=True),
                    torch.autograd.grad(out_r, [x, probs, *ref.parameters()], g,
                                        allow_unused=True, materialize_grads=True)):
        assert rel_err(a, b) < TOL
    for (name, a), b in zip(fused.named_buffers(), ref.buffers()):
        assert rel_err(a, b) < TOL, name
    fused.eval(), ref.eval()
    assert rel_err(fused(x, w, [index]), ref._ops[index](x) * w[index]) < TOL


# --- the sampling -------------------------------------------------------------------------------

def authors_gumbel_prob(alphas, tau):
    """The authors' loop: draw until neither the noise nor the probabilities hold inf or nan."""
    while True:
        gumbels = -torch.empty_like(alphas).exponential_().log()
        probs = F.softmax((alphas.log_softmax(dim=1) + gumbels) / tau, dim=1)
        index = probs.max(-1, keepdim=True)[1]
        hardwts = torch.zeros_like(probs).scatter_(-1, index, 1.0) - probs.detach() + probs
        if torch.isinf(gumbels).any() or torch.isinf(probs).any() or torch.isnan(probs).any():
            continue
        return hardwts, index


def poison_draws(monkeypatch, poisoned):
    """Makes the noise draws numbered in ``poisoned`` (from 0) hold an infinite value, as an
    exponential draw of exactly 0 would; returns the list of draws made."""
    original = torch.Tensor.exponential_
    made = []

    def exponential_(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if len(made) in poisoned:
            out.view(-1)[3] = 0.0
        made.append(len(made))
        return out

    monkeypatch.setattr(torch.Tensor, "exponential_", exponential_)
    return made


def small_network(cls=gdas.GDASNetwork, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(8, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2, **kwargs).double()


@pytest.mark.parametrize("poisoned", [(), (0,), (1,), (0, 1), (0, 2), (1, 2, 3)])
@pytest.mark.parametrize("tau", [10.0, 0.1])
def test_sampling_matches_the_authors_draw_for_draw(monkeypatch, poisoned, tau):
    """Same seed, same candidates, hard weights and gradients, and the same random numbers used:
    the normal alphas take the first draw they keep, the reduction alphas the next."""
    model = small_network()
    model.tau = tau
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    made = poison_draws(monkeypatch, poisoned)
    torch.manual_seed(7)
    ours = model.sample()
    ours_made, after = len(made), torch.get_rng_state()
    made.clear()
    torch.manual_seed(7)
    theirs = [authors_gumbel_prob(a, tau) for a in model.arch_parameters()]
    assert len(made) == ours_made == 2 + len(poisoned)  # the retries happened
    assert torch.equal(torch.get_rng_state(), after)
    for (hard, index), (hard_a, index_a), alphas in zip(ours, theirs, model.arch_parameters()):
        assert index == index_a.view(-1).tolist() and torch.equal(hard, hard_a)
        g = torch.randn_like(hard)
        assert torch.equal(*(torch.autograd.grad(h, alphas, g)[0] for h in (hard, hard_a)))


def test_one_host_read_per_forward_pass(monkeypatch):
    model = small_network()
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).sum().backward()
    assert reads == ["tolist"]


def test_non_finite_alphas_are_refused_rather_than_redrawn_forever():
    model = small_network()
    with torch.no_grad():
        model.alphas_reduce[2, 3] = float("nan")
    with pytest.raises(ValueError, match="the alphas are not finite"):
        model.sample()
    model.tau = 0.0
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        model.sample()


# --- the search step ----------------------------------------------------------------------------

def authors_search_step(model, w_optimizer, a_optimizer, base, arch):
    """The authors' loop body: the weight step (gradient norm clipped to 5), then the
    architecture step on the architecture batch."""
    w_optimizer.zero_grad()
    F.cross_entropy(model(base[0]), base[1]).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5)
    w_optimizer.step()
    a_optimizer.zero_grad()
    F.cross_entropy(model(arch[0]), arch[1]).backward()
    a_optimizer.step()


def sgd(model):
    return torch.optim.SGD(model.parameters(), 0.025, momentum=ARGS["momentum"],
                           weight_decay=ARGS["weight_decay"], nesterov=True)


@pytest.mark.parametrize("options", [{}, {"conv_bias": True}, {"track_running_stats": False},
                                     {"conv_bias": True, "track_running_stats": False}])
def test_search_steps_match_the_authors(options):
    """Two steps of SearchStep(weights_first=True) with the first-order Architect on the fused
    network against the authors' loop on the reference network: each step's alpha gradients, and
    the alphas, weights, BatchNorm statistics and optimizer states after it; also with the
    authors' convolution biases and BatchNorms without running statistics."""
    fused, ref = small_network(**options), small_network(reference.GDASNetwork, **options)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert any(n.endswith(".bias") and "_ops" in n for n, _ in fused.named_parameters()) == \
        bool(options.get("conv_bias"))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
                torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]
    optimizer = sgd(fused)
    architect = darts_fast.Architect(fused, types.SimpleNamespace(**ARGS))
    step = SearchStep(fused, architect, optimizer, nn.CrossEntropyLoss(), grad_clip=5,
                      unrolled=False, weights_first=True)
    w_optimizer = sgd(ref)
    a_optimizer = torch.optim.Adam(ref.arch_parameters(), lr=ARGS["arch_learning_rate"],
                                   betas=(0.5, 0.999), weight_decay=ARGS["arch_weight_decay"])
    initial = [a.detach().clone() for a in fused.arch_parameters()]
    for k in range(2):
        base, arch = batches[2 * k], batches[2 * k + 1]
        torch.manual_seed(10 + k)
        step(*base, *arch, 0.025)
        torch.manual_seed(10 + k)
        authors_search_step(ref, w_optimizer, a_optimizer, base, arch)
        for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):
            assert rel_err(a.grad, b.grad) < TOL and rel_err(a, b) < TOL
        assert not any(torch.equal(a, b) for a, b in zip(fused.arch_parameters(), initial))
        for (name, a), b in zip(fused.state_dict().items(), ref.state_dict().values()):
            assert rel_err(a, b) < TOL, name
        for p, q in zip(fused.parameters(), ref.parameters()):
            assert optimizer.state[p].keys() == w_optimizer.state[q].keys()
            for key, value in optimizer.state[p].items():
                assert rel_err(value, w_optimizer.state[q][key]) < TOL


def test_a_non_finite_weight_step_drops_only_the_state_it_created():
    """Early in a GDAS search a step creates the momentum of the candidates it samples for the
    first time: undone, it drops that state and keeps the state of the others."""
    model = small_network()
    optimizer = sgd(model)
    architect = darts_fast.Architect(model, types.SimpleNamespace(**ARGS))
    step = SearchStep(model, architect, optimizer, grad_clip=5, unrolled=False,
                      weights_first=True)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    torch.manual_seed(0)
    step(x, y, x, y, 0.025)
    kept = {p: {k: v.clone() for k, v in optimizer.state[p].items()}
            for p in model.parameters() if optimizer.state.get(p)}
    weights = [p.detach().clone() for p in model.parameters()]
    assert 0 < len(kept) < len(weights)
    torch.manual_seed(1)  # draws candidates that step 1 did not sample
    step(torch.full_like(x, float("nan")), y, x, y, 0.025)
    created = [p for p in model.parameters() if p not in kept and p.grad is not None]
    assert created  # the undone step made state for these, and dropped it
    assert int(step.skipped_steps) == 1
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert {p for p in model.parameters() if optimizer.state.get(p)} == set(kept)
    for p, state in kept.items():
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in state.items())


def test_cuda_graph_is_refused():
    model = small_network()
    with pytest.raises(ValueError, match="reads the host in its forward pass"):
        SearchStep(model, None, sgd(model), cuda_graph=True)


def test_new_keeps_the_temperature():
    model = small_network()
    model.tau = 0.5
    copy = model.new()
    assert type(copy) is gdas.GDASNetwork and copy.tau == 0.5
    assert all(torch.equal(a, b) for a, b in zip(copy.arch_parameters(),
                                                 model.arch_parameters()))


# --- genotype and temperature -------------------------------------------------------------------

def authors_parse(weights, steps):
    """The authors' rule: per node, every (op, input, weight) of the non-none candidates of its
    edges (rows named "node<-input", in sorted order), sorted by -weight (stable), top 2."""
    keys = sorted(f"{i}<-{j}" for i in range(steps) for j in range(i + 2))
    gene = []
    for i in range(steps):
        edges = [(op, j, weights[keys.index(f"{i}<-{j}")][k])
                 for j in range(i + 2) for k, op in enumerate(PRIMITIVES) if op != "none"]
        gene += [(op, j) for op, j, _ in sorted(edges, key=lambda e: -e[-1])[:2]]
    return gene


@pytest.mark.parametrize("fill", ["random", "ties"])
def test_genotype_is_the_authors_rule(fill):
    model = gdas.GDASNetwork(4, 10, 3, None)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=g) if fill == "random" else torch.zeros(a.shape))
    genotype = model.genotype()
    for alphas, got in ((model.alphas_normal, genotype.normal),
                        (model.alphas_reduce, genotype.reduce)):
        assert got == authors_parse(F.softmax(alphas, dim=-1).detach().numpy(), 4)
    assert list(genotype.normal_concat) == [2, 3, 4, 5]
    if fill == "ties":  # the first two candidates of input 0, one input twice
        assert genotype.normal[:2] == [("max_pool_3x3", 0), ("avg_pool_3x3", 0)]


def test_temperature_schedule():
    assert gdas.tau_at(0, 250) == 10.0
    for epoch in (1, 100, 249):
        assert gdas.tau_at(epoch, 250) == 10 - (10 - 0.1) * epoch / (250 - 1)
    assert gdas.tau_at(249, 250) == pytest.approx(0.1, abs=1e-12)
    assert gdas.tau_at(0, 1) == 10.0 and gdas.tau_at(1, 2, 5.0, 1.0) == 1.0


# --- the command line ---------------------------------------------------------------------------

TINY = ["search", "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--synthetic_size",
        "16", "--device", "cpu", "--method", "gdas"]


def state_of(folder):
    return checkpoint.load(str(folder / "checkpoint.pt"))


@pytest.fixture(scope="module")
def gdas_search(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gdas") / "run"
    taus = []
    sample = gdas.GDASNetwork.sample
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gdas.GDASNetwork, "sample", lambda self: taus.append(self.tau)
                      or sample(self))
        assert main.main([*map(str, TINY), "--epochs", "2", "--run_dir", str(folder)]) == 0
    return folder, taus


def test_gdas_search_outputs_and_defaults(gdas_search):
    folder, taus = gdas_search
    options = json.loads((folder / "config.json").read_text())["options"]
    assert {k: options[k] for k in ("learning_rate", "learning_rate_min", "weight_decay",
                                    "nesterov", "arch_learning_rate", "tau_max", "tau_min",
                                    "unrolled")} == \
        dict(learning_rate=0.025, learning_rate_min=0.001, weight_decay=5e-4, nesterov=True,
             arch_learning_rate=3e-4, tau_max=10.0, tau_min=0.1, unrolled=False)
    assert sorted(set(taus)) == [gdas.tau_at(1, 2), 10.0]  # epoch 1 at tau_min
    assert "gdas (tau 10 to 0.1, weight step first)" in (folder / "log.txt").read_text()
    for name in ("genotype.txt", "normal.png", "reduction.png", "alphas.png",
                 "alphas_epoch_002.json"):
        assert (folder / name).stat().st_size > 0
    model = gdas.GDASNetwork(4, 10, 3, None)
    with torch.no_grad():
        for alpha, saved in zip(model.arch_parameters(), state_of(folder)["alphas"]):
            alpha.copy_(saved)
    assert parse_genotype(str(folder / "genotype.json")) == parse_genotype(
        genotype_text(model.genotype()))


def test_stopped_and_resumed_gdas_search_is_bit_identical(gdas_search, tmp_path):
    full, parts = gdas_search[0], tmp_path / "parts"
    argv = [*map(str, TINY), "--epochs", "2", "--run_dir", str(parts)]
    assert main.main([*argv, "--stop_after_epoch", "1"]) == 0
    assert main.main(["search", "--resume", str(parts)]) == 0
    a, b = state_of(full), state_of(parts)
    assert all(torch.equal(x, y) for x, y in zip(a["alphas"], b["alphas"]))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (full / "metrics.csv").read_text().split("\n")[1].split(",")[1:6] == \
        (parts / "metrics.csv").read_text().split("\n")[1].split(",")[1:6]


def test_reference_gdas_search(tmp_path, capsys):
    assert main.main([*map(str, TINY), "--epochs", "1", "--reference", "--run_dir",
                      str(tmp_path / "run")]) == 0
    assert "reference first-order gdas" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--tau_max", "5"], "--tau_max is a gdas option, not a darts one (add --method gdas)"),
    (["--method", "pc-darts", "--tau_min", "0.5"], "--tau_min is a gdas option, not a pc-darts"),
    (["--method", "gdas", "--partial_channels", "2"],
     "--partial_channels is a pc-darts option, not a gdas one"),
    (["--method", "gdas", "--tau_max", "nan"], "--tau_max: expected a finite number > 0"),
    (["--method", "gdas", "--tau_min", "0"], "--tau_min: expected a finite number > 0"),
    (["--method", "gdas", "--tau_max", "1", "--tau_min", "2"],
     "--tau_min 2 must not exceed --tau_max 1"),
    (["--method", "gdas", "--unrolled"], "--unrolled is for a second-order search; gdas "
                                         "searches first order only"),
    (["--method", "gdas", "--hessian", "exact"], "--hessian exact is for a second-order search"),
    (["--conv_bias"], "--conv_bias is a gdas option, not a darts one"),
    (["--method", "pc-darts", "--no-track_running_stats"],
     "--track_running_stats is a gdas option, not a pc-darts one"),
])
def test_refused_options(argv, message, capsys, tmp_path):
    assert main.main(["search", *argv, "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_refused_under_torchrun(monkeypatch, capsys, tmp_path):
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    assert main.main(["search", "--method", "gdas", "--synthetic_size", "16", "--device", "cpu",
                      "--run_dir", str(tmp_path / "run")]) == 2
    assert "--method gdas runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_method_defaults_and_nesterov():
    parser, commands = main.build_parser()

    def resolved(*argv):
        return main.resolve_options(parser.parse_args(["search", *argv]), commands["search"], [])

    for argv, nesterov in (([], True), (["--no-nesterov"], False)):
        options = resolved("--method", "gdas", *argv)
        assert (options.nesterov, options.epochs, options.batch_size, options.layers) == \
            (nesterov, 250, 256, 6)
    options = resolved()
    assert (options.nesterov, options.weight_decay, options.learning_rate_min, options.epochs,
            options.layers, options.tau_max) == (False, 3e-4, 0.001, 50, 8, None)


def test_the_authors_biases_and_batch_statistics_from_the_command_line(tmp_path):
    """--conv_bias and --no-track_running_stats reach the network, are kept with the run and
    survive a resume."""
    folder = tmp_path / "run"
    argv = [*map(str, TINY), "--epochs", "2", "--stop_after_epoch", "1", "--threads", "1",
            "--conv_bias",
            "--no-track_running_stats", "--run_dir", str(folder)]
    assert main.main(argv) == 0
    options = json.loads((folder / "config.json").read_text())["options"]
    assert (options["conv_bias"], options["track_running_stats"]) == (True, False)
    weights = torch.load(folder / "checkpoint.pt", weights_only=False)["state"]["model"]
    assert "cells.0.preprocess1.op.1.bias" in weights
    assert not any(name.endswith("running_mean") and "_ops" in name for name in weights)
    assert main.main(["search", "--resume", str(folder), "--threads", "1"]) == 0


def test_a_gdas_run_made_before_the_bias_options_resumes_with_the_defaults(tmp_path):
    """Its config.json and checkpoint lack conv_bias and track_running_stats: it ran without
    biases and with running statistics, and resumes so."""
    folder = tmp_path / "run"
    assert main.main([*map(str, TINY), "--epochs", "2", "--stop_after_epoch", "1", "--threads",
                      "1", "--run_dir", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    state = checkpoint.load(str(folder / "checkpoint.pt"))
    for options in (config["options"], state["options"]):
        del options["conv_bias"], options["track_running_stats"]
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "checkpoint.pt", "wb") as f:
        checkpoint.serialize(state, f)
    # A resume that ends before it checkpoints again leaves the new options in config.json only.
    assert main.main(["search", "--resume", str(folder), "--threads", "1", "--epochs", "1"]) == 0
    assert json.loads((folder / "config.json").read_text())["options"]["conv_bias"] is False
    assert main.main(["search", "--resume", str(folder), "--threads", "1"]) == 0
    weights = checkpoint.load(str(folder / "checkpoint.pt"))["model"]
    assert "cells.0.preprocess1.op.2.running_mean" in weights
    assert "cells.0.preprocess1.op.1.bias" not in weights
