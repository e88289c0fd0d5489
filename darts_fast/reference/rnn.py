"""DARTS' recurrent search cell and search model as the authors wrote them (quark0/darts
``rnn/model_search.py``): every activation on every edge, weighted by the softmax of the alphas,
one BatchNorm; the genotype rule. They build on the cell and language model of a genotype
(``spaces.rnn.model``, the original's ``rnn/model.py``, which the fused search model builds
on too), exported here.

Where it departs from the original, for current PyTorch and for the tests (the departures of
``spaces.rnn.model`` apply too):
  * the alphas (``weights``) are a leaf tensor made on the CPU that moves with the module
    (``.to()``, ``.double()``), where the original makes them with ``.cuda()``;
  * ``RNNModelSearch`` takes its arguments by keyword too, and ``new()`` builds the copy with all
    of them on this model's device and dtype (the original's ``RNNModelSearch(*args)`` takes
    positional arguments alone and its ``new()`` leaves the weights on the CPU).
Kept on purpose: one BatchNorm (one set of running statistics) for s0 and every node of every
time step; the highway term on the unmasked state.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.rnn.genotypes import CONCAT, PRIMITIVES, STEPS, Genotype
from ..spaces.alphas import LeafAlphas
from ..spaces.rnn.model import DARTSCell, RNNModel

__all__ = ["DARTSCell", "DARTSCellSearch", "RNNModel", "RNNModelSearch"]


class DARTSCellSearch(DARTSCell):
    r"""DARTS' recurrent search cell: ``s_0 = BN(...)`` as in ``DARTSCell``; node ``i`` (0-based
    here, rows ``off = i(i+1)/2 .. off+i`` of ``p = softmax(weights)``) from every state so far:
    ``[c_j, z_j] = (s_j * h_mask) @ _Ws[i]``, ``u_jk = s_j + sigmoid(c_j) * (f_k(z_j) - s_j)``,
    ``s_{i+1} = BN(sum_k sum_j p[off+j, k] u_jk)`` over the activations (``none`` skipped), one
    ``BatchNorm1d(nhid, affine=False)`` for all; ``h_t = mean(s_1..s_8)``. ``weights``, the
    alphas [36, 5], is set by the model that owns the cell."""

    def __init__(self, ninp, nhid, dropouth, dropoutx):
        super().__init__(ninp, nhid, dropouth, dropoutx, genotype=None)
        self.bn = nn.BatchNorm1d(nhid, affine=False)

    def cell(self, x, h_prev, x_mask, h_mask):
        s0 = self._compute_init_state(x, h_prev, x_mask, h_mask)
        s0 = self.bn(s0)
        probs = F.softmax(self.weights, dim=-1)

        offset = 0
        states = s0.unsqueeze(0)
        for i in range(STEPS):
            if self.training:
                masked_states = states * h_mask.unsqueeze(0)
            else:
                masked_states = states
            ch = masked_states.view(-1, self.nhid).mm(self._Ws[i]).view(i + 1, -1, 2 * self.nhid)
            c, h = torch.split(ch, self.nhid, dim=-1)
            c = c.sigmoid()

            s = torch.zeros_like(s0)
            for k, name in enumerate(PRIMITIVES):
                if name == "none":
                    continue
                fn = self._get_activation(name)
                unweighted = states + c * (fn(h) - states)
                s += torch.sum(probs[offset:offset + i + 1, k].unsqueeze(-1).unsqueeze(-1)
                               * unweighted, dim=0)
            s = self.bn(s)
            states = torch.cat([states, s.unsqueeze(0)], 0)
            offset += i + 1
        return torch.mean(states[-CONCAT:], dim=0)


class RNNModelSearch(LeafAlphas, RNNModel):
    """DARTS' recurrent search model: ``RNNModel`` on ``DARTSCellSearch`` with the alphas
    ``weights`` [36, 5] = ``1e-3 * randn`` drawn after the weights, shared with the cell."""

    def __init__(self, ntoken, ninp, nhid, nhidlast, dropout=0.5, dropouth=0.5, dropoutx=0.5,
                 dropouti=0.5, dropoute=0.1):
        super().__init__(ntoken, ninp, nhid, nhidlast, dropout, dropouth, dropoutx, dropouti,
                         dropoute, cell_cls=DARTSCellSearch, genotype=None)
        self._args = (ntoken, ninp, nhid, nhidlast, dropout, dropouth, dropoutx, dropouti,
                      dropoute)
        self._initialize_arch_parameters()

    def new(self):
        """A model of these arguments, device and dtype, with fresh weights (drawn from the
        global RNG) and a copy of these alphas."""
        model_new = type(self)(*self._args)
        model_new.to(device=self.weights.device, dtype=self.weights.dtype)
        with torch.no_grad():
            for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
                x.copy_(y)
        return model_new

    def _initialize_arch_parameters(self):
        k = sum(i for i in range(1, STEPS + 1))
        self.weights = torch.randn(k, len(PRIMITIVES)).mul_(1e-3).requires_grad_(True)
        self._arch_parameters = [self.weights]
        for rnn in self.rnns:
            rnn.weights = self.weights

    def _loss(self, hidden, input, target):
        """``(nll_loss(log_prob, target), next hidden)``, ``target`` [T * B]."""
        log_prob, hidden_next = self(input, hidden, return_h=False)
        loss = F.nll_loss(log_prob.view(-1, log_prob.size(2)), target)
        return loss, hidden_next

    def genotype(self):
        """Per node ``i``, the one predecessor whose strongest non-``none`` softmax weight is the
        largest (a stable sort: ties to the lower state), with that activation (the first of
        equal ones); ``concat = range(1, 9)``."""
        with torch.no_grad():
            probs = F.softmax(self.weights, dim=-1).cpu().tolist()
        gene = _parse(probs)
        return Genotype(recurrent=gene, concat=range(STEPS + 1)[-CONCAT:])


def _parse(probs):
    """The authors' ``_parse`` of ``probs`` [36, 5] (lists)."""
    none = PRIMITIVES.index("none")
    gene = []
    start = 0
    for i in range(STEPS):
        end = start + i + 1
        W = probs[start:end]
        j = sorted(range(i + 1),
                   key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[0]
        k_best = None
        for k in range(len(W[j])):
            if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                k_best = k
        gene.append((PRIMITIVES[k_best], j))
        start = end
    return gene
