"""Max pooling that keeps no indices for the backward pass.

``nn.MaxPool2d`` under autograd stores, besides its input, the int64 index of every output's
maximum: twice the bytes of a float32 output, the largest single tensor a mixed op keeps. This
version stores the input only (which the mixed op keeps for its other candidates anyway) and
finds the maxima again in the backward pass, for the cost of one more pooling. Values and
gradients are ``nn.MaxPool2d``'s exactly (the same kernel picks the same maxima); the backward
is itself differentiable (double backward works).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def max_pool2d(pool, x):
    """``pool(x)`` for an ``nn.MaxPool2d`` ``pool``, without stored indices."""
    if pool.return_indices:
        return pool(x)
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    args = (_pair(pool.kernel_size), _pair(stride), _pair(pool.padding), _pair(pool.dilation),
            pool.ceil_mode)
    return _MaxPool2d.apply(x, args)


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(x, args):
        return F.max_pool2d(x, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.args = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # The pooling again, now with its indices, and its backward, which routes g to them (and
        # is differentiable in g: double backward works).
        _, indices = torch.ops.aten.max_pool2d_with_indices(x.detach(), *ctx.args)
        return torch.ops.aten.max_pool2d_with_indices_backward(g, x, *ctx.args, indices), None


def is_max_pool(module):
    return type(module) is nn.MaxPool2d
