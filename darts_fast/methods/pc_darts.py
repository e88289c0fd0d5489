r"""PC-DARTS (Xu et al. 2020, "Partially-Connected Differentiable Architecture Search") on the fused
DARTS mixed op: the authors' module tree, parameter names and numbers.

Partial channel connections: an edge's candidates see only the first :math:`C/k` channels of its
input; their weighted sum is concatenated with the other channels (max-pooled 2x2 at stride 2)
and the result shuffled in groups of :math:`k`:

.. math::
    \text{out} = \text{shuffle}_k\big(\big[\textstyle\sum_o w_o\, o(x_{:C/k}),\;
    \text{pool}(x_{C/k:})\big]\big).

Edge normalisation: per node, a softmax over the betas of its incoming edges scales each edge's
whole output; the genotype ranks a node's edges by the candidate weights times the edge's
factor, as the authors' code does.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import dense_layout
from .. import reference
from ..layers import max_pool
from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.mixed_op import MixedOp, weight_rows
from ..spaces.cnn.network import Network
from .registry import Method, MethodOptionError, register


class PartialChannelMixedOp(MixedOp):
    """The PC-DARTS mixed op: ``MixedOp(C // k, stride)`` on the first ``C // k`` channels (its
    candidates hold ``C // k`` channels, under the authors' names ``_ops.*``; ``mp`` pools the
    others at stride 2). The weighted sum, the concatenation and the shuffle are one kernel
    (``batch_norm_weighted_sum`` with ``rest`` and ``groups``): the sum is written straight into
    its shuffled channels, the other channels copied into theirs; no concatenated or shuffled
    intermediate."""

    def __init__(self, C, stride, k=4, primitives=PRIMITIVES, recompute=False,
                 fold_batch_norm=True, conv_bias=False, track_running_stats=True):
        if not (isinstance(k, int) and k >= 1 and C % k == 0):
            raise ValueError(f"PartialChannelMixedOp: k must be a positive integer dividing "
                             f"C={C}, got {k!r}")
        super().__init__(C // k, stride, primitives, recompute, fold_batch_norm, conv_bias,
                         track_running_stats)
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        self.stride = stride

    def forward(self, x, weights, active=None):
        if self.k == 1:  # every channel goes through the candidates
            return super().forward(x, weights, active)
        self._check_weights(weights)
        if x.dim() != 4 or x.shape[1] % self.k:
            raise ValueError(f"PartialChannelMixedOp: x must be 4-D with a multiple of k="
                             f"{self.k} channels, got shape {tuple(x.shape)}")
        part = x.shape[1] // self.k
        # The candidates' channels in one dense copy: the pools and the identity would each copy
        # the slice. The kernel reads the other channels in place, a slice of x or, at stride 2,
        # of x pooled whole (a pool would copy their slice first; pooling is per channel).
        x_part = x[:, :part].contiguous(memory_format=dense_layout(x))
        rest = max_pool.max_pool2d(self.mp, x)[:, part:] if self.stride == 2 else x[:, part:]
        active = range(len(self._ops)) if active is None else self._check_active(active)
        ks = [k for k in active if k in self._computed]
        if not ks:  # only 'none': zeros in the candidates' channels
            zero = self._ops[active[0]](x_part) * weights[active[0]]
            return channel_shuffle(torch.cat([zero, rest], 1), self.k)
        return self._run(self._mix, x_part, weight_rows(weights, ks), ks, rest, self.k)


def channel_shuffle(x, groups):
    """The channels of ``x`` [N, C, H, W] read group-interleaved: output channel ``c * groups + g``
    is input channel ``g * C / groups + c``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PCNetwork(Network):
    """The PC-DARTS search network: DARTS' network on partial-channel mixed ops, with betas
    (``betas_normal``, ``betas_reduce``: one per edge) after the alphas in ``arch_parameters()``
    and drawn after them from the global RNG, as the authors do."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, k=4, mixed_op=None, **options):
        mixed_op = mixed_op or functools.partial(PartialChannelMixedOp, k=k)
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         mixed_op=mixed_op, **options)

    def _initialize_alphas(self):
        super()._initialize_alphas()
        edges = self.alphas_normal.shape[0]
        self.betas_normal = (1e-3 * torch.randn(edges)).requires_grad_(True)
        self.betas_reduce = (1e-3 * torch.randn(edges)).requires_grad_(True)
        self._arch_parameters += [self.betas_normal, self.betas_reduce]

    def edge_weights(self, betas):
        """Per node, the softmax over the betas of its incoming edges, concatenated."""
        parts, start = [], 0
        for node in range(self._steps):
            parts.append(F.softmax(betas[start:start + node + 2], dim=-1))
            start += node + 2
        return torch.cat(parts)

    def cell_architecture(self, reduction):
        betas = self.betas_reduce if reduction else self.betas_normal
        return super().cell_architecture(reduction)._replace(edge_scale=self.edge_weights(betas))

    def edge_scales(self):
        """The genotype ranks a node's edges by the candidate weights times these, as the
        authors' code does."""
        return self.edge_weights(self.betas_normal), self.edge_weights(self.betas_reduce)


class PCDARTS(Method):
    name = "pc-darts"
    summary = "partial channel connections and edge normalisation"
    # yuhuixu1993/PC-DARTS train_search.py.
    defaults = {"layers": 8, "batch_size": 256, "learning_rate": 0.1, "learning_rate_min": 0.001,
                "weight_decay": 3e-4, "nesterov": False, "epochs": 50, "arch_learning_rate": 6e-4,
                "arch_start_epoch": 15, "partial_channels": 4}

    def networks(self):
        return PCNetwork, reference.PCNetwork

    def add_options(self, group, kinds):
        group.add_argument("--partial_channels", type=kinds.positive_int, default=None,
                           metavar="K", help="the candidates see 1/K of the channels")

    def network_options(self, options):
        return {"k": options.partial_channels}

    def check(self, options):
        if options.init_channels % options.partial_channels:
            raise MethodOptionError(
                f"--partial_channels {options.partial_channels} must divide --init_channels "
                f"{options.init_channels} (the candidates see 1/K of each edge's channels)")

    def describe(self, options):
        return f"(k={options.partial_channels})"


METHOD = register(PCDARTS())
