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
from ..layers import max_pool
from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.mixed_op import MixedOp
from ..spaces.cnn.network import Network


class PartialChannelMixedOp(MixedOp):
    """The PC-DARTS mixed op: ``MixedOp(C // k, stride)`` on the first ``C // k`` channels (its
    candidates hold ``C // k`` channels, under the authors' names ``_ops.*``; ``mp`` pools the
    others at stride 2). The weighted sum, the concatenation and the shuffle are one kernel
    (``batch_norm_weighted_sum`` with ``rest`` and ``groups``): the sum is written straight into
    its shuffled channels, the other channels copied into theirs; no concatenated or shuffled
    intermediate."""

    def __init__(self, C, stride, k=4, primitives=PRIMITIVES, recompute=False,
                 fold_batch_norm=True):
        if not (isinstance(k, int) and k >= 1 and C % k == 0):
            raise ValueError(f"PartialChannelMixedOp: k must be a positive integer dividing "
                             f"C={C}, got {k!r}")
        super().__init__(C // k, stride, primitives, recompute, fold_batch_norm)
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        self.stride = stride

    def forward(self, x, weights):
        if self.k == 1:  # every channel goes through the candidates
            return super().forward(x, weights)
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
        return self._run(self._mix, x_part, weights[self._weight_index], self._computed, rest,
                         self.k)


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

    def _cell_weights(self, reduction):
        betas = self.betas_reduce if reduction else self.betas_normal
        return (*super()._cell_weights(reduction), self.edge_weights(betas))

    def genotype(self):
        with torch.no_grad():
            normal, reduce = (
                (F.softmax(alphas, dim=-1) * self.edge_weights(betas)[:, None]).cpu().numpy()
                for alphas, betas in ((self.alphas_normal, self.betas_normal),
                                      (self.alphas_reduce, self.betas_reduce)))
        return self._genotype(normal, reduce)
