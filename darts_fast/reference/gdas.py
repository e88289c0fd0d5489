r"""GDAS' search cell, sampling and genotype rule as their authors wrote them
(D-X-Y/AutoDL-Projects, ``search_cells.py``'s ``NASNetSearchCell`` and
``search_model_gdas_nasnet.py``'s ``NASNetworkGDAS``), in DARTS' search network
(``reference.darts``, with its departures).

Each forward pass draws, for the normal cells and then for the reduction cells, until the noise
and the probabilities are finite (each check a host read; forever for alphas that are not
finite, as there):

.. math::
    g = -\log e,\ e \sim \mathrm{Exp}(1), \qquad
    p = \mathrm{softmax}\big((\log\mathrm{softmax}(\alpha) + g) / \tau\big), \qquad
    h = \mathrm{onehot}(\arg\max p) - \mathrm{sg}(p) + p;

each edge reads its sampled index on the host and returns :math:`o_i(x)\, h_i`.

Kept as darts_fast's GDAS has it, for the comparison: DARTS' macro network (no final BatchNorm
and ReLU before the pooling; the logits alone returned), DARTS' candidates in their column
order, the pools followed by an affine-free BatchNorm, and the alphas as leaf tensors
``alphas_normal`` / ``alphas_reduce``. ``conv_bias`` and ``track_running_stats`` build the cells
as the authors' search does (``affine=False`` there: every convolution of the cells but the
depthwise ones with a bias; their script's ``--track_running_stats``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.operations import FactorizedReduce, ReLUConvBN
from .darts import MixedOp, Network


class GDASCell(nn.Module):
    """The authors' search cell: edge ``"i<-j"`` (into node ``i`` from state ``j``) reads row
    ``edge2index["i<-j"]`` of the weights and indices, the rank of its name among the sorted
    names (the order of creation, up to 9 nodes)."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 conv_bias=False, track_running_stats=True):
        super().__init__()
        self.reduction = reduction
        options = {"conv_bias": conv_bias, "track_running_stats": track_running_stats}
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False, **options)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False, **options)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False, **options)
        self._steps = steps
        self._multiplier = multiplier
        # DARTS' module names (_ops.<n>, in the order of creation) for the authors' edges dict.
        self._ops = nn.ModuleList()
        self._edge_module = {}
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._edge_module[f"{i}<-{j}"] = len(self._ops)
                self._ops.append(MixedOp(C, stride, **options))
        self.edge_keys = sorted(self._edge_module)
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}

    def forward_gdas(self, s0, s1, weightss, indexs):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            clist = []
            for j, h in enumerate(states):
                node_str = f"{i}<-{j}"
                op = self._ops[self._edge_module[node_str]]
                weights = weightss[self.edge2index[node_str]]
                index = indexs[self.edge2index[node_str]].item()
                clist.append(op.forward_gdas(h, weights, index))
            states.append(sum(clist))
        return torch.cat(states[-self._multiplier:], dim=1)


class GDASNetwork(Network):
    """``tau``: the temperature of the draws (10 at first, as the authors'; their search sets
    it every epoch, falling linearly from ``tau_max`` to ``tau_min``)."""

    # Each edge reads its sampled index on the host.
    capturable = False

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, conv_bias=False, track_running_stats=True, recompute=False,
                 fold_batch_norm=True):
        # Read by _make_cell, which the base constructor calls.
        self._conv_bias = conv_bias
        self._track_running_stats = track_running_stats
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         recompute, fold_batch_norm)
        self.edge2index = self.cells[0].edge2index
        self.tau = 10

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        return GDASCell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                        reduction_prev, self._conv_bias, self._track_running_stats)

    def _configuration(self):
        return {**super()._configuration(), "conv_bias": self._conv_bias,
                "track_running_stats": self._track_running_stats}

    def new(self):
        model_new = super().new()
        model_new.tau = self.tau
        return model_new

    def _gumbel_prob(self, xins):
        while True:
            gumbels = -torch.empty_like(xins).exponential_().log()
            logits = (xins.log_softmax(dim=1) + gumbels) / self.tau
            probs = F.softmax(logits, dim=1)
            index = probs.max(-1, keepdim=True)[1]
            one_h = torch.zeros_like(logits).scatter_(-1, index, 1.0)
            hardwts = one_h - probs.detach() + probs
            if torch.isinf(gumbels).any() or torch.isinf(probs).any() or \
                    torch.isnan(probs).any():
                continue
            return hardwts, index

    def forward(self, inputs):
        normal_hardwts, normal_index = self._gumbel_prob(self.alphas_normal)
        reduce_hardwts, reduce_index = self._gumbel_prob(self.alphas_reduce)
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            if cell.reduction:
                hardwts, index = reduce_hardwts, reduce_index
            else:
                hardwts, index = normal_hardwts, normal_index
            s0, s1 = s1, cell.forward_gdas(s0, s1, hardwts, index)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def genotype(self):
        """Per node, every (candidate, input, weight) over the non-``none`` candidates of its
        incoming edges, sorted by descending softmax weight (stable: inputs, then candidates,
        in order); the first two, possibly from one input."""
        def _parse(weights):
            gene = []
            for i in range(self._steps):
                edges = []
                for j in range(2 + i):
                    ws = weights[self.edge2index[f"{i}<-{j}"]]
                    for k, op_name in enumerate(PRIMITIVES):
                        if op_name != "none":
                            edges.append((op_name, j, ws[k]))
                edges = sorted(edges, key=lambda x: -x[-1])
                gene += [(op_name, j) for op_name, j, _ in edges[:2]]
            return gene

        with torch.no_grad():
            normal = _parse(torch.softmax(self.alphas_normal, dim=-1).cpu().numpy())
            reduce = _parse(torch.softmax(self.alphas_reduce, dim=-1).cpu().numpy())
        return self._genotype(normal, reduce)
