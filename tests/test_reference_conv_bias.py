"""GDAS' authors' construction options of the candidate operations (``candidate_ops(...,
conv_bias, track_running_stats)``), in float64 against plain compositions of torch functions
written here: through the modules' forward and through the fused mixed op's path
(``forward_from_relu``), values and the gradients of the input and of every parameter, biases
included; the depthwise convolution given a bias; and the reference GDAS network built with
them."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import rel_err

from darts_fast import reference
from darts_fast.layers import depthwise
from darts_fast.spaces.cnn.genotypes import PRIMITIVES
from darts_fast.spaces.cnn.operations import candidate_ops

C = 4
TOL = 1e-10
CANDIDATES = [*PRIMITIVES, "sep_conv_7x7", "conv_7x1_1x7"]


def batch_norm(y, bn, training):
    """An affine-free BatchNorm by its formula, ``(y - mean) / sqrt(var + eps)``: the batch's mean
    and biased variance per channel, or in eval mode the running ones where ``bn`` keeps them."""
    if training or bn.running_mean is None:
        mean = y.mean((0, 2, 3), keepdim=True)
        var = ((y - mean) ** 2).mean((0, 2, 3), keepdim=True)
    else:
        mean, var = (t.view(1, -1, 1, 1) for t in (bn.running_mean, bn.running_var))
    return (y - mean) / torch.sqrt(var + bn.eps)


class Recorded(dict):
    """The op's parameters by name, recording which the composition reads."""

    def __init__(self, op):
        super().__init__(op.named_parameters())
        self.read = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)


def plain(primitive, stride, op, x, training):
    """The candidate as the authors' operations compute it, with ``op``'s parameters: a bias on
    every convolution but the depthwise ones."""
    p = Recorded(op)
    relu = F.relu(x)
    if primitive == "none":
        y = x[:, :, ::stride, ::stride] * 0.0
    elif primitive == "max_pool_3x3":
        y = batch_norm(F.max_pool2d(x, 3, stride, 1), op[1], training)
    elif primitive == "avg_pool_3x3":
        y = batch_norm(F.avg_pool2d(x, 3, stride, 1, count_include_pad=False), op[1], training)
    elif primitive == "skip_connect":
        y = x if stride == 1 else batch_norm(torch.cat([
            F.conv2d(relu, p["conv_1.weight"], p["conv_1.bias"], stride=2),
            F.conv2d(relu[:, :, 1:, 1:], p["conv_2.weight"], p["conv_2.bias"], stride=2)], 1),
            op.bn, training)
    elif primitive.startswith("sep_conv"):
        pad = int(primitive[-1]) // 2
        y = F.conv2d(relu, p["op.1.weight"], None, stride, pad, groups=C)
        y = batch_norm(F.conv2d(y, p["op.2.weight"], p["op.2.bias"]), op.op[3], training)
        y = F.conv2d(F.relu(y), p["op.5.weight"], None, 1, pad, groups=C)
        y = batch_norm(F.conv2d(y, p["op.6.weight"], p["op.6.bias"]), op.op[7], training)
    elif primitive.startswith("dil_conv"):
        pad = int(primitive[-1]) - 1
        y = F.conv2d(relu, p["op.1.weight"], None, stride, pad, 2, groups=C)
        y = batch_norm(F.conv2d(y, p["op.2.weight"], p["op.2.bias"]), op.op[3], training)
    else:  # conv_7x1_1x7
        y = F.conv2d(relu, p["1.weight"], p["1.bias"], (1, stride), (0, 3))
        y = batch_norm(F.conv2d(y, p["2.weight"], p["2.bias"], (stride, 1), (3, 0)), op[3],
                       training)
    assert p.read == set(p), set(p) - p.read  # every parameter, biases included, in its place
    return y


def randomise_running_stats(op, generator):
    with torch.no_grad():
        for m in op.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.uniform_(0.5, 2.0, generator=generator)


def candidate(primitive, stride, **options):
    torch.manual_seed(0)
    return candidate_ops(C, stride, [primitive], **options)[0].double()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("primitive", CANDIDATES)
def test_biased_candidate_matches_its_plain_composition(primitive, stride, mode):
    """In eval mode the biases enter through the running means; in training mode the batch mean
    takes away those of the convs that feed a BatchNorm (all but conv_7x1_1x7's first, whose
    bias the zero padding of the next conv makes vary over the image): the output does not
    depend on them and their gradient is 0."""
    op = candidate(primitive, stride, conv_bias=True)
    g = torch.Generator().manual_seed(1)
    randomise_running_stats(op, g)
    op.train(mode == "train")
    x = torch.randn(3, C, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    params = dict(op.named_parameters())
    expected = plain(primitive, stride, op, x, mode == "train")
    grad_out = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    expected_grads = torch.autograd.grad(expected, [x, *params.values()], grad_out,
                                         allow_unused=True, materialize_grads=True)
    paths = {"forward": op}
    if hasattr(op, "forward_from_relu"):
        paths["forward_from_relu"] = lambda x: op.forward_from_relu(torch.relu(x))
    for path, run in paths.items():
        out = run(x)
        assert rel_err(out, expected) < TOL, path
        grads = torch.autograd.grad(out, [x, *params.values()], grad_out, allow_unused=True,
                                    materialize_grads=True)
        for name, a, b in zip(["x", *params], grads, expected_grads):
            if mode == "train" and name.endswith("bias") and name != "1.bias":
                assert a.abs().max() < 1e-12 and b.abs().max() < 1e-12, (path, name)
            else:
                assert rel_err(a, b) < TOL, (path, name)
    if mode == "eval" and stride == 2 and primitive != "none" and "pool" not in primitive:
        assert any(n.endswith("bias") and grad.abs().max() > 1e-3
                   for n, grad in zip(["x", *params], expected_grads))


@pytest.mark.parametrize("stride", [1, 2])
def test_biases_sit_where_the_authors_put_them_and_the_defaults_have_none(stride):
    """Parameter counts by hand: a separable conv holds two depthwise k x k filters and two 1x1
    convs, a dilated conv one of each, the factorized reduction two C -> C/2 1x1 convs; with
    conv_bias every 1x1 conv (and each half of the reduction) adds C biases."""
    n = 16
    count = {False: 2 * (9 * n + n * n) + 2 * (25 * n + n * n) + (9 * n + n * n) + (25 * n + n * n)
             + (n * n if stride == 2 else 0)}
    count[True] = count[False] + 6 * n + (n if stride == 2 else 0)
    for conv_bias in (False, True):
        ops = candidate_ops(n, stride, PRIMITIVES, conv_bias=conv_bias)
        assert sum(p.numel() for p in ops.parameters()) == count[conv_bias]
        for conv in (m for m in ops.modules() if isinstance(m, nn.Conv2d)):
            assert (conv.bias is not None) == (conv_bias and conv.groups == 1)
        assert all(m.track_running_stats and m.running_mean is not None
                   for m in ops.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("primitive", CANDIDATES)
def test_without_running_statistics_eval_mode_takes_the_batchs(primitive, stride):
    op = candidate(primitive, stride, conv_bias=True, track_running_stats=False)
    assert list(op.buffers()) == []
    assert all(not m.track_running_stats for m in op.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(3, C, 8, 8, dtype=torch.float64)
    training = op(x)
    op.eval()
    assert list(op.buffers()) == []
    assert rel_err(op(x), plain(primitive, stride, op, x, True)) < TOL
    assert rel_err(op(x), training) < TOL


def test_a_biased_depthwise_conv_keeps_its_bias():
    """The custom input gradient takes a filter alone: a depthwise conv with a bias (none of the
    candidates' has one) runs as the module does, bias added, and gradchecks."""
    conv = nn.Conv2d(3, 3, 3, 2, 2, 2, groups=3, bias=True).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, conv.weight, None, 2, 2, 2, 3) + conv.bias.view(1, -1, 1, 1)
    assert rel_err(depthwise.conv2d(conv, x), expected) < 1e-14
    assert torch.autograd.gradcheck(lambda x: depthwise.conv2d(conv, x), (x,))
    g = torch.randn(expected.shape, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(depthwise.conv2d(conv, x), [conv.bias], g),
                    torch.autograd.grad(expected, [conv.bias], g)):
        assert rel_err(a, b) < 1e-14 and rel_err(a, g.sum((0, 2, 3))) < 1e-14


@pytest.mark.parametrize("primitive, stride", [("sep_conv_3x3", 2), ("dil_conv_5x5", 1),
                                               ("skip_connect", 2)])
def test_fused_path_gradchecks_with_biases(primitive, stride):
    op = candidate(primitive, stride, conv_bias=True)
    randomise_running_stats(op, torch.Generator().manual_seed(2))
    op.eval()
    x = torch.randn(2, C, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: op.forward_from_relu(torch.relu(x)), (x,))


def cell_biases(C, layers, steps):
    """Bias elements of a GDAS search network's cells, by hand: per cell its two 1x1
    preprocessing convs (or the factorized reduction's two halves) give C; per edge the two
    separable and two dilated convs' 1x1 convs give 2C + 2C + C + C, and a reducing edge's
    factorized reduction C more."""
    total, C_cell = 0, C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        C_cell *= 2 if reduction else 1
        edges = sum(2 + n for n in range(steps))
        total += 2 * C_cell + edges * 6 * C_cell + (2 * steps if reduction else 0) * C_cell
    return total


def test_reference_gdas_network_with_the_authors_options():
    model = reference.GDASNetwork(4, 10, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2,
                                  conv_bias=True, track_running_stats=False)
    biases = {n: p for n, p in model.named_parameters() if n.endswith("bias")}
    assert sum(p.numel() for n, p in biases.items() if n.startswith("cells.")) == \
        cell_biases(4, 3, 2) == 992
    assert "stem.0.bias" not in biases
    assert [n for n, _ in model.named_buffers()] == ["stem.1.running_mean", "stem.1.running_var",
                                                    "stem.1.num_batches_tracked"]
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
    torch.manual_seed(0)
    model._loss(x, y).backward()
    model.tau = 0.5
    copy = model.new()
    assert copy.tau == 0.5 and list(copy.state_dict()) == list(model.state_dict())
    assert sum(p.numel() for p in copy.parameters()) == sum(p.numel() for p in model.parameters())
