r"""DARTS' recurrent search cell and language model (quark0/darts ``rnn/model_search.py``) on the
fused node kernel, a drop-in for the original's ``DARTSCellSearch`` and ``RNNModelSearch``: the
same constructor, parameter names, state_dict, alphas (``weights``, [36, 5]) and numbers.

Per time step, with ``p = softmax(weights)`` and ``m`` the variational mask of the states (none
in eval mode), node ``i`` (rows ``off .. off + i`` of ``p``) reads every state so far:

.. math::
    [c_j, h_j] = (s_j \odot m) W_i, \qquad
    s_{i+1} = BN\Big(\sum_j \sum_k p_{off+j, k}\, \big(s_j + \sigma(c_j) (f_k(h_j) - s_j)\big)\Big)

over the activations ``f_k`` = tanh, relu, sigmoid, identity (``none`` adds nothing), one
``BatchNorm1d(nhid, affine=False)`` for ``s_0`` and every node; ``h_t`` is the mean of
``s_1 .. s_8``. The inner sums are one ``kernels.rnn_node`` call per node: autograd keeps the
stacked states and their pre-activations, not the four activation outputs per edge that the
original's loop keeps, and the backward computes those again. The original masks every state
again for every node; here each state is masked once. Sums run over the activations first, then
the predecessors (the original: predecessors first), which changes only the rounding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels.rnn_node_ops import ACTIVATIONS, rnn_node
from ..alphas import LeafAlphas
from .genotypes import CONCAT, PRIMITIVES, STEPS, genotype_rule
from .model import DARTSCell, RNNModel

# The kernel's probability columns are the alphas' columns after ``none``.
_ACTIVATION_COLUMNS = [PRIMITIVES.index(name) for name in ACTIVATIONS]
assert PRIMITIVES.index("none") == 0 and _ACTIVATION_COLUMNS == [1, 2, 3, 4]


class DARTSCellSearch(DARTSCell):
    """The search cell; ``weights``, the alphas [36, 5], is set by the model that owns it."""

    def __init__(self, ninp, nhid, dropouth, dropoutx):
        super().__init__(ninp, nhid, dropouth, dropoutx, genotype=None)
        self.bn = nn.BatchNorm1d(nhid, affine=False)

    def cell(self, x, h_prev, x_mask, h_mask):
        s0 = self.bn(self._compute_init_state(x, h_prev, x_mask, h_mask))
        probs = F.softmax(self.weights, dim=-1)[:, 1:]
        states, masked = [s0], [s0 * h_mask if self.training else s0]
        offset = 0
        for i in range(STEPS):
            ch = torch.stack(masked).view(-1, self.nhid).mm(self._Ws[i])
            s = rnn_node(torch.stack(states), ch.view(i + 1, -1, 2 * self.nhid),
                         probs[offset:offset + i + 1])
            s = self.bn(s)
            states.append(s)
            masked.append(s * h_mask if self.training else s)
            offset += i + 1
        return torch.stack(states[-CONCAT:]).mean(dim=0)


class RNNModelSearch(LeafAlphas, RNNModel):
    """The search model: ``RNNModel`` on ``DARTSCellSearch``, the alphas ``weights`` [36, 5] =
    ``1e-3 * randn`` drawn after the weights (as the original draws them), shared with the cell.
    ``_loss(hidden, input, target)`` is ``(nll_loss, next hidden)``."""

    def __init__(self, ntoken, ninp, nhid, nhidlast, dropout=0.5, dropouth=0.5, dropoutx=0.5,
                 dropouti=0.5, dropoute=0.1):
        super().__init__(ntoken, ninp, nhid, nhidlast, dropout, dropouth, dropoutx, dropouti,
                         dropoute, cell_cls=DARTSCellSearch, genotype=None)
        self._args = (ntoken, ninp, nhid, nhidlast, dropout, dropouth, dropoutx, dropouti,
                      dropoute)
        self.weights = (1e-3 * torch.randn(sum(range(1, STEPS + 1)), len(PRIMITIVES))
                        ).requires_grad_(True)
        self._arch_parameters = [self.weights]
        for rnn in self.rnns:
            rnn.weights = self.weights

    def new(self):
        """A model of these arguments, device and dtype, with fresh weights (drawn from the
        global RNG, as the original's) and a copy of these alphas."""
        model_new = type(self)(*self._args).to(device=self.weights.device,
                                               dtype=self.weights.dtype)
        with torch.no_grad():
            model_new.weights.copy_(self.weights)
        return model_new

    def _loss(self, hidden, input, target):
        log_prob, hidden_next = self(input, hidden)
        return F.nll_loss(log_prob.view(-1, log_prob.size(2)), target), hidden_next

    def genotype(self):
        """``genotypes.genotype_rule`` on the softmax of the alphas."""
        with torch.no_grad():
            return genotype_rule(F.softmax(self.weights.detach(), dim=-1).cpu())
