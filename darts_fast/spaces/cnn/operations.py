"""Candidate operations of the DARTS search space, module for module as in the original, so that
parameter names, order and initialisation (RNG use) are the same.

Operations that begin with a ReLU (sep/dil convs, the factorized reduction) also offer
``forward_from_relu(relu_x)``: the rest of the operation applied to an already rectified input,
and, as they all end in a BatchNorm, ``features_from_relu(relu_x)`` (what enters it) and
``final_batch_norm``, for the mixed op that folds that BatchNorm into its weighted sum.
The fused MixedOp uses it to compute ``relu(x)`` once for all of them, and it runs depthwise
convolutions through ``darts_fast.layers.depthwise`` (a faster input gradient); the values are
the same within float rounding.
"""
import inspect
import itertools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import depthwise

# Every entry: (C, stride, affine, conv_bias=False, track_running_stats=True). ``conv_bias`` puts
# a bias on the convolutions that GDAS' authors bias (D-X-Y/AutoDL-Projects, ``bias=not affine``
# before their affine-free BatchNorms): every one but the depthwise ones; ``track_running_stats``
# is every BatchNorm's. Entries without a convolution or a BatchNorm take both and need neither.
OPS = {
    "none": lambda C, stride, affine, conv_bias=False, track_running_stats=True: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)),
    "max_pool_3x3": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        nn.MaxPool2d(3, stride=stride, padding=1)),
    "skip_connect": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine, conv_bias,
                                                        track_running_stats)),
    "sep_conv_3x3": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        SepConv(C, C, 3, stride, 1, affine, conv_bias, track_running_stats)),
    "sep_conv_5x5": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        SepConv(C, C, 5, stride, 2, affine, conv_bias, track_running_stats)),
    "sep_conv_7x7": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        SepConv(C, C, 7, stride, 3, affine, conv_bias, track_running_stats)),
    "dil_conv_3x3": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        DilConv(C, C, 3, stride, 2, 2, affine, conv_bias, track_running_stats)),
    "dil_conv_5x5": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        DilConv(C, C, 5, stride, 4, 2, affine, conv_bias, track_running_stats)),
    # Not in the authors' GDAS space; biased as their own factorised 1x3 / 3x1 convolutions are
    # (GDAS_Reduction_Cell).
    "conv_7x1_1x7": lambda C, stride, affine, conv_bias=False, track_running_stats=True: (
        nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=conv_bias),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=conv_bias),
            nn.BatchNorm2d(C, affine=affine, track_running_stats=track_running_stats),
        )),
}


class _ReLUFirst(nn.Module):
    """An ``op`` Sequential whose first module is a ReLU."""

    def forward(self, x):
        return self.op(x)

    def forward_from_relu(self, relu_x):
        return self.final_batch_norm(self.features_from_relu(relu_x))

    def features_from_relu(self, relu_x):
        """What enters the final BatchNorm."""
        for module in itertools.islice(self.op, 1, len(self.op) - 1):
            relu_x = depthwise.conv2d(module, relu_x) if isinstance(module, nn.Conv2d) \
                else module(relu_x)
        return relu_x

    @property
    def final_batch_norm(self):
        return self.op[-1]


def forward_fast(op, x):
    """``op(x)``, through ``forward_from_relu`` where the op has it: the same values, with the
    depthwise convolutions' faster input gradient (for networks without mixed ops)."""
    if hasattr(op, "forward_from_relu"):
        return op.forward_from_relu(torch.relu(x))
    return op(x)


class ReLUConvBN(_ReLUFirst):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, conv_bias=False,
                 track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=conv_bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class DilConv(_ReLUFirst):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True,
                 conv_bias=False, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=conv_bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class SepConv(_ReLUFirst):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, conv_bias=False,
                 track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=conv_bias),
            nn.BatchNorm2d(C_in, affine=affine, track_running_stats=track_running_stats),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=conv_bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The ``none`` operation: zeros of the (strided) input's shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convs, concatenated on channels.

    Each is computed as a stride-1 1x1 convolution of the subsampled input,
    ``conv_1.weight * x[:, :, ::2, ::2]`` and ``conv_2.weight * x[:, :, 1::2, 1::2]``: the
    original's numbers (``conv_2`` reads ``x[:, :, 1:, 1:]`` at stride 2, the same pixels), with
    ``conv_1``/``conv_2`` kept as modules for their parameters. The stride-2 form is avoided
    because oneDNN's AVX2 weight gradient of a strided 1x1 convolution overruns its workspace on
    channels_last inputs with fewer channels than its block (uxlfoundation/oneDNN#6035): a hang,
    a corrupted heap or wrong weight gradients on AMD and older Intel CPUs.
    """

    def __init__(self, C_in, C_out, affine=True, conv_bias=False, track_running_stats=True):
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=conv_bias)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=conv_bias)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x):
        return self.forward_from_relu(self.relu(x))

    def forward_from_relu(self, relu_x):
        return self.bn(self.features_from_relu(relu_x))

    def features_from_relu(self, relu_x):
        """What enters the final BatchNorm."""
        return torch.cat([F.conv2d(relu_x[:, :, ::2, ::2], self.conv_1.weight, self.conv_1.bias),
                          F.conv2d(relu_x[:, :, 1::2, 1::2], self.conv_2.weight,
                                   self.conv_2.bias)], dim=1)

    @property
    def final_batch_norm(self):
        return self.bn


class GlobalAvgPool(nn.Module):
    """The networks' global pooling: ``nn.AdaptiveAvgPool2d(1)``'s numbers, as a mean over H and W.
    Its backward is deterministic on CUDA (adaptive pooling's is not, and raises under
    ``torch.use_deterministic_algorithms``)."""

    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


def candidate_ops(C, stride, primitives, conv_bias=False, track_running_stats=True):
    """The candidate operations of one mixed edge, in ``primitives`` order. Pools are followed by
    a BatchNorm without affine parameters; every BatchNorm is built with ``affine=False``.

    ``conv_bias``: every convolution but the depthwise ones carries a bias, as in GDAS' authors'
    operations. A bias just before a BatchNorm that takes batch statistics changes nothing (the
    batch mean takes it away, and its gradient is 0); it enters through the running mean, which
    eval mode subtracts. ``track_running_stats``: every BatchNorm's; without running statistics the
    BatchNorms normalise with the batch's statistics in eval mode too."""
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"primitives: unknown operation(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(OPS)}")
    ops = nn.ModuleList()
    for primitive in primitives:
        op = build_candidate(primitive, C, stride, False, conv_bias, track_running_stats)
        if "pool" in primitive:
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False,
                                                  track_running_stats=track_running_stats))
        ops.append(op)
    return ops


def build_candidate(name, C, stride, affine, conv_bias=False, track_running_stats=True):
    """``OPS[name]``'s module. GDAS' options are passed only where they are asked for, so that an
    entry written the original's way, ``(C, stride, affine)``, builds as it did."""
    build = OPS[name]
    if not conv_bias and track_running_stats:
        return build(C, stride, affine)
    try:
        inspect.signature(build).bind(C, stride, affine, conv_bias, track_running_stats)
    except TypeError:
        raise ValueError(f"candidate {name!r} is built as (C, stride, affine) only: it cannot "
                         f"take conv_bias={conv_bias} and track_running_stats="
                         f"{track_running_stats}; give its builder those two parameters") from None
    return build(C, stride, affine, conv_bias, track_running_stats)


def register_candidate(name, build):
    """Adds the candidate operation ``name`` to the search space: ``build(C, stride, affine)``
    returns a module that maps C channels to C channels at ``stride`` (1, or 2 on a reduction
    cell's input edges); a network built with GDAS' options calls ``build(C, stride, affine,
    conv_bias, track_running_stats)``.

    The name then works in a network's ``primitives``, in ``darts-fast search --primitives`` (from
    a program that registers it and calls ``darts_fast.cli.main.main``) and in genotypes, whose
    evaluation network builds it with ``affine=True``. In the fused ``MixedOp`` an
    ``nn.Sequential`` that ends in an affine-free ``nn.BatchNorm2d`` has that BatchNorm folded
    into the weighted sum; any other module is computed as it is and weighted by the plain
    weighted sum. As in the original, a name holding ``pool`` gets an affine-free BatchNorm after
    it in the search network."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(f"register_candidate: name must be letters, digits and _ . + - only "
                         f"(it appears in --primitives, genotype texts and pictures), got "
                         f"{name!r}")
    if name in OPS:
        raise ValueError(f"register_candidate: a candidate named {name!r} exists already")
    if not callable(build):
        raise TypeError(f"register_candidate: build must be callable, got {build!r}")
    OPS[name] = build


def reduction_cells(layers):
    """The indices of the cells that halve the resolution (and double the channels): the cells
    at one and two thirds of the depth (one cell when they coincide)."""
    return sorted({layers // 3, 2 * layers // 3})


def is_reduction(i, layers):
    return i in reduction_cells(layers)
