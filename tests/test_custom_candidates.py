"""A user's own candidate operation (``operations.register_candidate``) searched by the fused
mixed op, from the library and from the command line, and trained from the genotype it wins."""
import json

import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import reference
from darts_fast.cli.main import main
from darts_fast.spaces.cnn import operations
from darts_fast.spaces.cnn.genotypes import parse_genotype
from helpers import rel_err


def conv_bn(C, stride, affine, conv_bias=False, track_running_stats=True):
    """ReLU, a plain 3x3 convolution, BatchNorm: its BatchNorm folds into the weighted sum."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride, 1, bias=conv_bias),
                         nn.BatchNorm2d(C, affine=affine, track_running_stats=track_running_stats))


def subsample(C, stride, affine):
    """Every stride-th pixel, unchanged: no BatchNorm, the plain weighted sum (written the
    original's way, without GDAS' options)."""
    return nn.AvgPool2d(1, stride)


@pytest.fixture
def registered():
    operations.register_candidate("conv_bn_3x3", conv_bn)
    operations.register_candidate("subsample", subsample)
    yield ["none", "conv_bn_3x3", "subsample", "sep_conv_3x3"]
    for name in ("conv_bn_3x3", "subsample"):
        del operations.OPS[name]


@pytest.mark.parametrize("stride", [1, 2])
def test_the_fused_op_computes_registered_candidates(registered, stride):
    torch.manual_seed(0)
    fused = darts_fast.MixedOp(8, stride, registered).double()
    torch.manual_seed(0)
    plain = reference.MixedOp(8, stride, registered).double()
    assert fused._folds[1] and not fused._folds[2]  # the BatchNorm folds, the subsample not
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(4, dtype=torch.float64), 0).requires_grad_()
    out_f, out_p = fused(x, w), plain(x, w)
    assert rel_err(out_f, out_p) < 1e-10
    g = torch.randn_like(out_f)
    for a, b in zip(torch.autograd.grad(out_f, [x, w, *fused.parameters()], g),
                    torch.autograd.grad(out_p, [x, w, *plain.parameters()], g)):
        assert rel_err(a, b) < 1e-10
    for a, b in zip(fused.buffers(), plain.buffers()):
        assert rel_err(a, b) < 1e-10


def test_search_and_train_with_registered_candidates(registered, tmp_path):
    small = ["--synthetic_size", "32", "--batch_size", "16", "--epochs", "1", "--init_channels",
             "4", "--layers", "2", "--threads", "1", "--device", "cpu"]
    found = tmp_path / "search"
    assert main(["search", "--primitives", ",".join(registered), "--run_dir", str(found),
                 *small]) == 0
    alphas = json.loads((found / "alphas_epoch_001.json").read_text())
    assert alphas["candidates"] == registered and len(alphas["normal"][0]) == 4
    genotype = parse_genotype(str(found / "genotype.json"))
    assert {name for name, _ in genotype.normal + genotype.reduce} <= set(registered[1:])
    trained = tmp_path / "train"
    assert main(["train", "--genotype", str(found / "genotype.json"), "--run_dir", str(trained),
                 *small]) == 0
    assert json.loads((trained / "final.json").read_text())


@pytest.mark.parametrize("name, build, error", [
    ("sep_conv_3x3", conv_bn, "exists already"),
    ("a,b", conv_bn, "letters, digits"),
    ("", conv_bn, "letters, digits"),
    ("x$\\q$", conv_bn, "letters, digits"),
    ("conv\r", conv_bn, "letters, digits"),
    ("mine", "conv", "callable"),
])
def test_bad_registrations_are_refused(name, build, error):
    with pytest.raises((ValueError, TypeError), match=error):
        operations.register_candidate(name, build)


def test_an_unknown_candidate_on_the_command_line_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--primitives", "none,conv_9x9", "--run_dir", str(run)]) == 2
    assert "--primitives: " in capsys.readouterr().err and not run.exists()


def test_gdas_options_reach_a_registered_candidate(registered):
    """A network built with the authors' biases passes them on; one without them calls the
    builder as the original does, (C, stride, affine)."""
    model = darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), primitives=registered[:2],
                               conv_bias=True, track_running_stats=False)
    conv = model.cells[0]._ops[0]._ops[1][1]
    assert conv.bias is not None and model.cells[0]._ops[0]._ops[1][2].running_mean is None
    with pytest.raises(ValueError, match="'subsample' is built as \\(C, stride, affine\\) only"):
        darts_fast.Network(4, 10, 2, nn.CrossEntropyLoss(), primitives=registered[:3],
                           conv_bias=True)
