"""pt.darts' search operations, module for module (``models/ops.py``: the same submodule names,
parameters, state_dict keys and RNG use), shaped for darts_fast's fused mixed op.

The fused ``MixedOp`` recognises a candidate by what it offers, not by its class:
  * the convs (``DilConv``, ``SepConv``) and ``FactorizedReduce`` start with a ReLU and end in an
    affine-free BatchNorm; they offer ``forward_from_relu(relu_x)`` (so ``relu(x)`` is computed
    once per edge), ``features_from_relu(relu_x)`` (what enters that BatchNorm) and
    ``final_batch_norm``, which the op folds into its weighted sum;
  * ``PoolBN`` is an ``nn.Sequential`` named ``pool``, ``bn`` (pt.darts' names): the op folds
    the Sequential's last module, its BatchNorm;
  * ``none`` is darts_fast's ``Zero``, which the op skips (an exact zero term), and
    ``skip_connect`` at stride 1 its ``Identity``, added as it is.
Values equal pt.darts' within float rounding; depthwise convolutions run through
``darts_fast.layers.depthwise`` (a faster input gradient on the CPU).
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import depthwise
from ...spaces.cnn.mixed_op import MixedOp as FusedMixedOp
from ...spaces.cnn.operations import Identity, Zero
from .genotypes import PRIMITIVES

# pt.darts' OPS for its search candidates: OPS[name](C, stride, affine).
OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: PoolBN("avg", C, 3, stride, 1, affine=affine),
    "max_pool_3x3": lambda C, stride, affine: PoolBN("max", C, 3, stride, 1, affine=affine),
    "skip_connect": lambda C, stride, affine: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


class PoolBN(nn.Sequential):
    """AvgPool (``count_include_pad=False``) or MaxPool, then BatchNorm: ``pool``, ``bn``."""

    def __init__(self, pool_type, C, kernel_size, stride, padding, affine=True):
        if pool_type.lower() == "max":
            pool = nn.MaxPool2d(kernel_size, stride, padding)
        elif pool_type.lower() == "avg":
            pool = nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=False)
        else:
            raise ValueError(f"PoolBN: pool_type must be 'max' or 'avg', got {pool_type!r}")
        super().__init__(OrderedDict(pool=pool, bn=nn.BatchNorm2d(C, affine=affine)))


class StdConv(nn.Module):
    """ReLU - Conv - BN in ``net`` (the cells' preprocessing)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C_in, C_out, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.net(x)


class _ReLUFirst(nn.Module):
    """A candidate whose ``net`` starts with a ReLU and ends in a BatchNorm."""

    def forward(self, x):
        return self.net(x)

    def forward_from_relu(self, relu_x):
        return self.final_batch_norm(self.features_from_relu(relu_x))


class DilConv(_ReLUFirst):
    """ReLU - depthwise (dilated) conv - pointwise conv - BN in ``net``."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def features_from_relu(self, relu_x):
        return self.net[2](depthwise.conv2d(self.net[1], relu_x))

    @property
    def final_batch_norm(self):
        return self.net[3]


class SepConv(_ReLUFirst):
    """Two ``DilConv`` of dilation 1 in ``net``, the second at stride 1."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine),
        )

    def features_from_relu(self, relu_x):
        return self.net[1].features_from_relu(F.relu(self.net[0].forward_from_relu(relu_x)))

    @property
    def final_batch_norm(self):
        return self.net[1].final_batch_norm


class FactorizedReduce(nn.Module):
    """``relu``, then ``conv1`` (1x1, stride 2) of x and ``conv2`` of ``x[:, :, 1:, 1:]``
    concatenated on channels, then ``bn``. Computed as stride-1 convolutions of the subsampled
    input (``x[:, :, ::2, ::2]`` and ``x[:, :, 1::2, 1::2]``, the same pixels), as darts_fast's
    own ``FactorizedReduce`` does to keep clear of oneDNN's strided 1x1 weight gradient on
    channels_last inputs."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        return self.forward_from_relu(self.relu(x))

    def forward_from_relu(self, relu_x):
        return self.bn(self.features_from_relu(relu_x))

    def features_from_relu(self, relu_x):
        return torch.cat([F.conv2d(relu_x[:, :, ::2, ::2], self.conv1.weight),
                          F.conv2d(relu_x[:, :, 1::2, 1::2], self.conv2.weight)], dim=1)

    @property
    def final_batch_norm(self):
        return self.bn


class MixedOp(FusedMixedOp):
    """pt.darts' ``MixedOp(C, stride)``: ``_ops.k`` is ``OPS[PRIMITIVES[k]](C, stride,
    affine=False)``, ``forward(x, weights) = sum_k weights[k] * _ops[k](x)``, computed by the
    fused op (``none``'s term, exactly zero, skipped; the BatchNorms folded into the sum with
    ``fold_batch_norm``; see ``darts_fast.MixedOp`` for ``recompute``)."""

    def __init__(self, C, stride, recompute=False, fold_batch_norm=True):
        super().__init__(C, stride, primitives=PRIMITIVES, recompute=recompute,
                         fold_batch_norm=fold_batch_norm)

    def _candidates(self, C, stride, primitives, conv_bias, track_running_stats):
        return nn.ModuleList(OPS[name](C, stride, affine=False) for name in primitives)
