r"""PC-DARTS' search network as its authors wrote it (yuhuixu1993/PC-DARTS, ``model_search.py``),
with the departures of ``reference.darts`` and the proportion ``k`` an argument (4 there).

The mixed op runs its candidates on the first :math:`C/k` channels, concatenates their weighted
sum with the other channels (max-pooled 2x2 when the edge reduces) and shuffles the channels in
:math:`k` groups. Each node scales its incoming edges by the softmax of their betas,
:math:`\mathrm{softmax}(\beta_{\text{node}})_j`, and the genotype ranks the edges by the
candidate weights times that factor.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.genotypes import PRIMITIVES
from .darts import Cell, Network, _parse, candidates


def channel_shuffle(x, groups):
    """Output channel ``c * groups + g`` is input channel ``g * C / groups + c``."""
    batchsize, num_channels, height, width = x.shape
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class PartialChannelMixedOp(nn.Module):
    r""":math:`\mathrm{shuffle}_k([\sum_o w_o\, o(x_{:C/k}),\ \mathrm{pool}(x_{C/k:})])`, the pool
    only where the candidates reduce the resolution."""

    def __init__(self, C, stride, k=4, primitives=PRIMITIVES):
        super().__init__()
        self._ops = candidates(C // k, stride, primitives)
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, :dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return channel_shuffle(ans, self.k)


class PCCell(Cell):
    """The DARTS cell whose edges ``e`` are scaled by ``weights2[e]``."""

    def forward(self, s0, s1, weights, weights2):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j])
                    for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class PCNetwork(Network):
    """The DARTS network on partial-channel edges; betas (one per edge, ``betas_normal``,
    ``betas_reduce``) drawn after the alphas and listed after them in ``arch_parameters()``."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, k=4, recompute=False, fold_batch_norm=True):
        self._k = k  # read by _make_cell, which the base constructor calls
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         recompute, fold_batch_norm)

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        return PCCell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                      reduction_prev, functools.partial(PartialChannelMixedOp, k=self._k))

    def _configuration(self):
        return {**super()._configuration(), "k": self._k}

    def _initialize_alphas(self):
        super()._initialize_alphas()
        k = self.alphas_normal.shape[0]
        self.betas_normal = (1e-3 * torch.randn(k)).requires_grad_(True)
        self.betas_reduce = (1e-3 * torch.randn(k)).requires_grad_(True)
        self._arch_parameters += [self.betas_normal, self.betas_reduce]

    def _edge_weights(self, betas):
        """The authors' loop: the softmax of the first node's 2 betas, then of each next node's
        ``n`` betas, concatenated."""
        n, start = 3, 2
        weights2 = F.softmax(betas[0:2], dim=-1)
        for _ in range(self._steps - 1):
            end = start + n
            weights2 = torch.cat([weights2, F.softmax(betas[start:end], dim=-1)], dim=0)
            start = end
            n += 1
        return weights2

    def _edge_scales(self):
        return self._edge_weights(self.betas_normal), self._edge_weights(self.betas_reduce)

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            if cell.reduction:
                weights = F.softmax(self.alphas_reduce, dim=-1)
                weights2 = self._edge_weights(self.betas_reduce)
            else:
                weights = F.softmax(self.alphas_normal, dim=-1)
                weights2 = self._edge_weights(self.betas_normal)
            s0, s1 = s1, cell(s0, s1, weights, weights2)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def genotype(self):
        """DARTS' rule on each edge's softmax weights times its edge factor."""
        with torch.no_grad():
            normal, reduce = (
                (F.softmax(alphas, dim=-1) * self._edge_weights(betas)[:, None]).cpu().numpy()
                for alphas, betas in ((self.alphas_normal, self.betas_normal),
                                      (self.alphas_reduce, self.betas_reduce)))
        return self._genotype(_parse(normal, self._steps), _parse(reduce, self._steps))
