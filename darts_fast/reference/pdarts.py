r"""P-DARTS' search network and stage bookkeeping as its authors wrote them (chenxin061/pdarts).

Edge ``e`` computes :math:`\sum_k w_{e,k}\, o_k(x)` over the candidates ``switches[e]`` keeps
(one alpha column each), the stride-1 skip followed by ``Dropout(p)`` when ``p > 0``.

Where it departs from the original, besides ``reference.darts``' departures:
  * the alphas are ``1e-3 * torch.randn`` leaf tensors (the authors': ``nn.Parameter``\ s of
    numpy's ``np.random.randn``, in the state_dict, kept from the weights' optimizer by name);
  * the switches default to every candidate on every edge; ``last_stage`` says which genotype
    ``genotype()`` reads (its last drop leaves one candidate per edge, the authors' 2 of 3); the
    tables put the softmax of the alphas in the full PRIMITIVES columns, 0 where switched off;
  * ``main()``'s bookkeeping is written as functions of one cell kind (``drop_switches``,
    ``final_switches``, ``skip_capped_genotypes``) returning what it logs or reassigns, with
    copies of the rows for ``copy.deepcopy``, ``len(switches)`` for 14, the edge ranking it
    writes twice written once (``_keep_edges``), and a few loops as sums or comprehensions.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.architecture import ArchitectureTable
from ..spaces.cnn.genotypes import PRIMITIVES, Genotype
from ..spaces.cnn.operations import OPS, Identity
from .darts import Cell, Network, _parse


class PDARTSMixedOp(nn.Module):
    """``MixedOp(C, stride, switch, p)``: the switched-on candidates under ``m_ops``."""

    def __init__(self, C, stride, switch, p):
        super().__init__()
        self.m_ops = nn.ModuleList()
        self.p = p
        for i in range(len(switch)):
            if switch[i]:
                primitive = PRIMITIVES[i]
                op = OPS[primitive](C, stride, False)
                if 'pool' in primitive:
                    op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
                if isinstance(op, Identity) and p > 0:
                    op = nn.Sequential(op, nn.Dropout(self.p))
                self.m_ops.append(op)

    def update_p(self):
        for op in self.m_ops:
            if isinstance(op, nn.Sequential) and isinstance(op[0], Identity):
                op[1].p = self.p

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.m_ops))


class PDARTSCell(Cell):
    """DARTS' cell whose edge ``e`` is ``PDARTSMixedOp(C, stride, switches[e], p)``, the edges
    under the authors' ``cell_ops``."""

    _ops = property(lambda self: self._modules["cell_ops" if "cell_ops" in self._modules
                                               else "_ops"])

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 switches, p):
        rows = iter(switches)  # the edges are built in the order of the rows
        super().__init__(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                         lambda C, stride: PDARTSMixedOp(C, stride, switch=next(rows), p=p))
        self.p = p
        self.cell_ops = self._modules.pop("_ops")

    def update_p(self):
        for op in self.cell_ops:
            op.p = self.p
            op.update_p()


class PDARTSNetwork(Network):
    """Alphas ``[edges, switches on in row 0]``; the cells weigh the edges with their softmax over
    the candidates, over the edges when there is one (the authors' ``size(1) == 1`` branch).
    ``update_p()`` passes ``self.p`` to every skip's dropout."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, switches_normal=None, switches_reduce=None, p=0.0,
                 last_stage=False, recompute=False, fold_batch_norm=True):
        every = [[True] * len(PRIMITIVES) for _ in range(sum(2 + i for i in range(steps)))]
        self.p = p
        self.switches_normal = switches_normal or every
        self.switches_reduce = switches_reduce or every
        self.switch_on = sum(1 for on in self.switches_normal[0] if on)
        self.last_stage = last_stage
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         recompute, fold_batch_norm)

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        switches = self.switches_reduce if reduction else self.switches_normal
        return PDARTSCell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                          reduction_prev, switches, self.p)

    def _configuration(self):
        return {**super()._configuration(), "switches_normal": self.switches_normal,
                "switches_reduce": self.switches_reduce, "p": self.p,
                "last_stage": self.last_stage}

    def _initialize_alphas(self):
        k = sum(1 for i in range(self._steps) for n in range(2 + i))
        num_ops = self.switch_on
        self.alphas_normal = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            weights = F.softmax(alphas, dim=0 if alphas.size(1) == 1 else -1)
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def update_p(self):
        for cell in self.cells:
            cell.p = self.p
            cell.update_p()

    def _probs(self):  # as train_search.py reads them
        return tuple(F.softmax(a, dim=-1).detach().cpu().numpy() for a in self.arch_parameters())

    def architecture_tables(self):
        """The probabilities in the full PRIMITIVES columns, 0 where switched off."""
        edges = tuple((j, i + 2) for i in range(self._steps) for j in range(i + 2))
        tables = []
        for name, prob, switches in zip(("normal", "reduce"), self._probs(),
                                        (self.switches_normal, self.switches_reduce)):
            full = np.zeros((len(switches), len(PRIMITIVES)), dtype=prob.dtype)
            full[np.array(switches)] = prob.reshape(-1)
            tables.append(ArchitectureTable(name, torch.from_numpy(full), None, edges,
                                            tuple(PRIMITIVES)))
        return tuple(tables)

    def genotype(self):
        """Last stage: ``parse_network`` of the final switches; else ``_parse`` of the tables."""
        if not self.last_stage:
            return self._genotype(*(_parse(t.weights.numpy(), self._steps)
                                    for t in self.architecture_tables()))
        (normal, _), (reduce, _) = (
            final_switches(drop_switches(switches_2, prob, self.switch_on - 1, True),
                           switches_2, prob)
            for switches_2, prob in zip((self.switches_normal, self.switches_reduce),
                                        self._probs()))
        return parse_network(normal, reduce)


def drop_switches(switches_in, prob, num_to_drop, last_stage):
    """``main()``'s drop after a stage (``get_min_k_no_zero`` after the last)."""
    switches = [list(row) for row in switches_in]
    for i in range(len(switches)):
        idxs = [j for j in range(len(PRIMITIVES)) if switches[i][j]]
        if last_stage:
            drop = get_min_k_no_zero(prob[i, :], idxs, num_to_drop)
        else:
            drop = get_min_k(prob[i, :], num_to_drop)
        for idx in drop:
            switches[i][idxs[idx]] = False
    return switches


def final_switches(switches_in, switches_2, prob_in):
    """The end of ``main()``: the cell's switches from those left by the last drop, the last
    stage's ``switches_2`` and ``prob_in``; and ``prob`` with ``none`` zeroed (the skip cap's)."""
    prob = np.copy(prob_in)
    final = [0 for idx in range(len(switches_in))]
    for i in range(len(switches_in)):
        if switches_2[i][0] == True:  # noqa: E712  (the authors' comparison)
            prob[i][0] = 0
        final[i] = max(prob[i])
    return _keep_edges(switches_in, final), prob


def _keep_edges(switches_in, final):
    """Edges 0, 1, then per next node ``sorted``'s last two by ``final``; the others off."""
    keep, n, start = [0, 1], 3, 2
    for i in range(3):
        end = start + n
        tb = final[start:end]
        edge = sorted(range(n), key=lambda x: tb[x])
        keep += [edge[-1] + start, edge[-2] + start]
        start, n = end, n + 1
    return [list(row) if i in keep else [False] * len(PRIMITIVES)
            for i, row in enumerate(switches_in)]


def skip_capped_genotypes(switches_normal, switches_normal_2, normal_prob, switches_reduce):
    """"Restricting skipconnect": ``[(max_sk, genotype)]`` as the loop logs them."""
    logged = []
    for sks in range(0, 9):
        max_sk = 8 - sks
        num_sk = check_sk_number(switches_normal)
        if not num_sk > max_sk:
            continue
        while num_sk > max_sk:
            normal_prob = delete_min_sk_prob(switches_normal, switches_normal_2, normal_prob)
            switches_normal = keep_1_on(switches_normal_2, normal_prob)
            switches_normal = keep_2_branches(switches_normal, normal_prob)
            num_sk = check_sk_number(switches_normal)
        logged.append((max_sk, parse_network(switches_normal, switches_reduce)))
    return logged


def parse_network(switches_normal, switches_reduce):
    def _parse_switches(switches):
        n, start, gene, step = 2, 0, [], 4
        for i in range(step):
            end = start + n
            for j in range(start, end):
                for k in range(len(switches[j])):
                    if switches[j][k]:
                        gene.append((PRIMITIVES[k], j - start))
            start, n = end, n + 1
        return gene
    concat = range(2, 6)
    return Genotype(normal=_parse_switches(switches_normal), normal_concat=concat,
                    reduce=_parse_switches(switches_reduce), reduce_concat=concat)


def get_min_k(input_in, k):
    input = np.copy(input_in)
    index = []
    for i in range(k):
        idx = np.argmin(input)
        index.append(idx)
        input[idx] = 1
    return index


def get_min_k_no_zero(w_in, idxs, k):
    w = np.copy(w_in)
    index = []
    zf = 0 in idxs
    if zf:
        w = w[1:]
        index.append(0)
        k = k - 1
    for i in range(k):
        idx = np.argmin(w)
        w[idx] = 1
        index.append(idx + 1 if zf else idx)
    return index


def check_sk_number(switches):
    return sum(1 for i in range(len(switches)) if switches[i][3])


def delete_min_sk_prob(switches_in, switches_bk, probs_in):
    def _get_sk_idx(switches_in, switches_bk, k):
        if not switches_in[k][3]:
            return -1
        return sum(1 for i in range(3) if switches_bk[k][i])
    probs_out = np.copy(probs_in)
    sk_prob = [1.0 for i in range(len(switches_bk))]
    for i in range(len(switches_in)):
        idx = _get_sk_idx(switches_in, switches_bk, i)
        if not idx == -1:
            sk_prob[i] = probs_out[i][idx]
    d_idx = np.argmin(sk_prob)
    idx = _get_sk_idx(switches_in, switches_bk, d_idx)
    probs_out[d_idx][idx] = 0.0
    return probs_out


def keep_1_on(switches_in, probs):
    switches = [list(row) for row in switches_in]
    for i in range(len(switches)):
        idxs = [j for j in range(len(PRIMITIVES)) if switches[i][j]]
        drop = get_min_k_no_zero(probs[i, :], idxs, 2)
        for idx in drop:
            switches[i][idxs[idx]] = False
    return switches


def keep_2_branches(switches_in, probs):
    final_prob = [max(probs[i]) for i in range(len(switches_in))]
    return _keep_edges(switches_in, final_prob)
