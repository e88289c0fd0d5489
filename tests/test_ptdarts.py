"""darts_fast.compat.ptdarts against a plain-PyTorch transcription of khanrc/pt.darts
(ptdarts_transcription.py), in float64 on tiny networks: the same state_dict and initial values
from one seed, then, from one state_dict, the same logits, loss, alpha gradients of
unrolled_backward (pt.darts' finite difference and the corrected one), weights, BatchNorm
statistics, genotypes and a pt.darts training sequence."""
import logging
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from helpers import rel_err

import ptdarts_transcription as pt
from darts_fast.compat import ptdarts
from darts_fast.spaces.cnn.genotypes import genotype_text, parse_genotype
from darts_fast.spaces.cnn.mixed_op import _RELU_FEATURES, _SEQUENTIAL_FEATURES
from darts_fast.spaces.genotype_text import GenotypeError

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOL = 1e-9
LR = 0.025
CONFIG = dict(C_in=3, C=4, n_classes=5, n_layers=3)


def models(seed=0, n_nodes=4, **config):
    """The adapter and the transcription, each built after ``manual_seed(seed)``, in float64; the
    transcription then loads the adapter's state_dict."""
    config = {**CONFIG, **config}
    torch.manual_seed(seed)
    a = ptdarts.SearchCNNController(*config.values(), nn.CrossEntropyLoss(), n_nodes=n_nodes)
    torch.manual_seed(seed)
    b = pt.SearchCNNController(*config.values(), nn.CrossEntropyLoss(), n_nodes=n_nodes)
    a, b = a.double(), b.double()
    b.load_state_dict(a.state_dict())
    return a, b


def batches(seed=1, n=3, size=8, steps=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g, dtype=torch.float64),
             torch.randint(0, CONFIG["n_classes"], (n,), generator=g)) for _ in range(2 * steps)]


def sgd(model):
    return torch.optim.SGD(model.weights(), LR, momentum=0.9, weight_decay=3e-4)


def weight_step(model, optimizer, X, y):
    optimizer.zero_grad()
    model.loss(X, y).backward()
    nn.utils.clip_grad_norm_(model.weights(), 5.)
    optimizer.step()


def assert_states_close(a, b, tol=TOL):
    """Every alpha, weight and BatchNorm statistic (num_batches_tracked exactly), within ``tol``
    of its norm or, below 1, absolutely (a running mean after a pool of normalised inputs is
    rounding noise around 0)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if sa[key].is_floating_point():
            assert (sa[key] - sb[key]).norm() <= tol * max(sb[key].norm(), 1.0), key
        else:
            assert torch.equal(sa[key], sb[key]), key


def test_one_seed_gives_ptdarts_state_dict_and_values():
    torch.manual_seed(0)
    a = ptdarts.SearchCNNController(*CONFIG.values(), nn.CrossEntropyLoss())
    torch.manual_seed(0)
    b = pt.SearchCNNController(*CONFIG.values(), nn.CrossEntropyLoss())
    sa, sb = a.state_dict(), b.state_dict()
    assert [(k, v.shape) for k, v in sa.items()] == [(k, v.shape) for k, v in sb.items()]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "net.cells.1.dag.3.4._ops.3.net.1.net.2.weight" in sa
    assert "net.cells.2.preproc0.conv2.weight" in sa
    assert "net.cells.0.dag.0.0._ops.0.bn.running_mean" in sa
    assert [n for n, _ in a.named_weights()] == [n for n, _ in b.net.named_parameters()]
    assert [n for n, _ in a.named_alphas()] == [f"alpha_{kind}.{i}" for kind in
                                                ("normal", "reduce") for i in range(4)]
    assert [tuple(p.shape) for p in a.alpha_normal] == [(i + 2, 8) for i in range(4)]
    assert ptdarts.PRIMITIVES == pt.PRIMITIVES


def test_logits_loss_and_running_statistics():
    a, b = models()
    (X, y), _ = batches()
    assert rel_err(a(X), b(X)) < TOL
    assert rel_err(a.loss(X, y), b.loss(X, y)) < TOL
    assert_states_close(a, b)  # two training passes' statistics
    a.eval(), b.eval()
    assert rel_err(a(X), b(X)) < TOL


@pytest.mark.parametrize("finite_difference", ["corrected", "ptdarts"])
@pytest.mark.parametrize("momentum_buffers", [False, True])
def test_unrolled_backward(finite_difference, momentum_buffers):
    a, b = models()
    (trn_X, trn_y), (val_X, val_y) = batches()
    wa, wb = sgd(a), sgd(b)
    if momentum_buffers:
        weight_step(a, wa, trn_X, trn_y)
        weight_step(b, wb, trn_X, trn_y)
    weights = [w.detach().clone() for w in a.weights()]
    weight_grads = [None if w.grad is None else w.grad.clone() for w in a.weights()]
    ptdarts.Architect(a, 0.9, 3e-4, finite_difference).unrolled_backward(
        trn_X, trn_y, val_X, val_y, LR, wa)
    pt.Architect(b, 0.9, 3e-4, finite_difference).unrolled_backward(
        trn_X, trn_y, val_X, val_y, LR, wb)
    for x, y in zip(a.alphas(), b.alphas()):
        assert rel_err(x.grad, y.grad) < TOL
    assert all(torch.equal(w, v) for w, v in zip(weights, a.weights()))  # bit for bit
    assert all(g is None and w.grad is None or torch.equal(g, w.grad)
               for g, w in zip(weight_grads, a.weights()))
    assert_states_close(a, b)  # weights, and the statistics of the passes on net


def test_unrolled_backward_in_eval_mode_keeps_the_mode():
    """pt.darts' v_net, copied while training, runs the pass at w' in training mode; the passes on
    net run in net's mode (here: eval, its running statistics)."""
    a, b = models(n_nodes=2)
    architects = ptdarts.Architect(a, 0.9, 3e-4), pt.Architect(b, 0.9, 3e-4, "corrected")
    a.eval(), b.eval()
    (trn_X, trn_y), (val_X, val_y) = batches()
    for model, architect in zip((a, b), architects):
        architect.unrolled_backward(trn_X, trn_y, val_X, val_y, LR, sgd(model))
    for x, y in zip(a.alphas(), b.alphas()):
        assert rel_err(x.grad, y.grad) < TOL
    assert not any(m.training for m in a.modules())
    assert_states_close(a, b)


def test_every_candidate_but_identity_and_none_folds_its_batch_norm():
    """The fused path on pt.darts' modules: pools (a Sequential pool, bn), convs and the
    factorized reduction fold their BatchNorm into the weighted sum; none is not computed."""
    for stride in (1, 2):
        op = ptdarts.MixedOp(4, stride)
        folds = dict(zip(ptdarts.PRIMITIVES, op._folds))
        expected = {"max_pool_3x3": _SEQUENTIAL_FEATURES, "avg_pool_3x3": _SEQUENTIAL_FEATURES,
                    "skip_connect": _RELU_FEATURES if stride == 2 else 0,
                    "none": 0, **{name: _RELU_FEATURES for name in ptdarts.PRIMITIVES[3:7]}}
        assert folds == expected
        assert ptdarts.PRIMITIVES.index("none") not in op._computed


def test_the_two_finite_differences_differ_as_documented():
    """pt.darts' hessian is the corrected one times eps^2: the tests above can tell them
    apart."""
    grads = {}
    for fd in ("corrected", "ptdarts"):
        a, b = models()
        (trn_X, trn_y), (val_X, val_y) = batches()
        ptdarts.Architect(a, 0.9, 3e-4, fd).unrolled_backward(trn_X, trn_y, val_X, val_y, LR,
                                                              sgd(a))
        grads[fd] = torch.cat([x.grad.view(-1) for x in a.alphas()])
    assert rel_err(grads["corrected"], grads["ptdarts"]) > 1e3 * TOL


def test_virtual_step_is_ptdarts_v_net_weights():
    a, b = models()
    (trn_X, trn_y), _ = batches()
    wa, wb = sgd(a), sgd(b)
    weight_step(a, wa, trn_X, trn_y)
    weight_step(b, wb, trn_X, trn_y)
    reference = pt.Architect(b, 0.9, 3e-4)
    w_prime = ptdarts.Architect(a, 0.9, 3e-4).virtual_step(trn_X, trn_y, LR, wa)
    reference.virtual_step(trn_X, trn_y, LR, wb)
    for x, y in zip(w_prime, reference.v_net.weights()):
        assert rel_err(x, y) < TOL
    assert_states_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("finite_difference", ["corrected", "ptdarts"])
def test_search_step_sequence(finite_difference):
    """pt.darts' train loop: the alpha step (Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3)
    after unrolled_backward, then the weight step (SGD, momentum 0.9, weight decay 3e-4, clip 5)."""
    pair = models()
    runs = []
    for model, architect_cls in zip(pair, (ptdarts.Architect, pt.Architect)):
        w_optim = sgd(model)
        alpha_optim = torch.optim.Adam(model.alphas(), 3e-4, betas=(0.5, 0.999),
                                       weight_decay=1e-3)
        runs.append((model, w_optim, alpha_optim,
                     architect_cls(model, 0.9, 3e-4, finite_difference)))
    data = batches(steps=3)
    for step in range(3):
        (trn_X, trn_y), (val_X, val_y) = data[2 * step], data[2 * step + 1]
        for model, w_optim, alpha_optim, architect in runs:
            alpha_optim.zero_grad()
            architect.unrolled_backward(trn_X, trn_y, val_X, val_y, LR, w_optim)
            alpha_optim.step()
            weight_step(model, w_optim, trn_X, trn_y)
        assert_states_close(*pair)
        assert pair[0].genotype() == pair[1].genotype()


def test_genotype_rule_on_raw_alphas():
    a, b = models(n_nodes=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for x, y in zip(a.alphas(), b.alphas()):
            x.copy_(torch.randn(x.shape, generator=g, dtype=x.dtype))
            x[:, -1] += 10  # the strongest 'none' is never chosen
            y.copy_(x)
    genotype = a.genotype()
    assert genotype == b.genotype()
    assert genotype.normal_concat == range(2, 5)
    assert [len(node) for node in genotype.normal] == [2, 2, 2]
    assert all(op != "none" for node in genotype.normal + genotype.reduce for op, _ in node)


def test_genotype_text_round_trip_and_darts_fast_form():
    a, _ = models()
    genotype = a.genotype()
    assert ptdarts.from_str(str(genotype)) == genotype
    flat = ptdarts.to_darts_fast(genotype)
    assert flat.normal == [edge for node in genotype.normal for edge in node]
    assert parse_genotype(genotype_text(flat)) == flat
    assert ptdarts.from_darts_fast(flat) == genotype
    with pytest.raises(GenotypeError, match="lacks"):
        ptdarts.from_str("Genotype(normal=[])")
    with pytest.raises(GenotypeError):
        ptdarts.from_str("__import__('os')")


def test_print_alphas_restores_formats(caplog):
    a, _ = models()
    logger = logging.getLogger("ptdarts-test")
    handler = logging.StreamHandler()
    formatter = logging.Formatter("X %(message)s")
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="ptdarts-test"):
            a.print_alphas(logger)
    finally:
        logger.removeHandler(handler)
    assert "# Alpha - normal" in caplog.text and "# Alpha - reduce" in caplog.text
    assert handler.formatter is formatter


def test_bad_arguments_are_named():
    a, _ = models()
    with pytest.raises(ValueError, match="C_in=3"):
        a(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite_difference"):
        ptdarts.Architect(a, 0.9, 3e-4, finite_difference="central")
    with pytest.raises(TypeError, match="SearchCNNController"):
        ptdarts.Architect(nn.Linear(2, 2), 0.9, 3e-4)
    with pytest.raises(ValueError, match="device_ids"):
        ptdarts.SearchCNNController(3, 4, 5, 3, nn.CrossEntropyLoss(), device_ids=[0, 1])
    with pytest.raises(ValueError, match="n_nodes"):
        ptdarts.SearchCNNController(3, 4, 5, 3, nn.CrossEntropyLoss(), n_nodes=0)


def test_example_search_script_runs():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ptdarts_search.py"), "--epochs", "1",
         "--layers", "2", "--init_channels", "2", "--batch_size", "2", "--n_samples", "4",
         "--image_size", "8"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "genotype = Genotype(normal=[[(" in out.stdout
    assert 'darts-fast train --genotype "Genotype(' in out.stdout
