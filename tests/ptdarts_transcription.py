"""khanrc/pt.darts' search, transcribed in plain PyTorch (no darts_fast code): the oracle of
test_ptdarts.py and the baseline of benchmarks/ptdarts.py.

models/ops.py, models/search_cells.py, models/search_cnn.py (one device), genotypes.parse and
architect.py, with pt.darts' deep copy of the network (``v_net``) and its finite difference
``(p - n) / 2.*eps`` (``hessian="ptdarts"``) or the corrected ``(p - n) / (2 * eps)``
(``hessian="corrected"``).
"""
import copy
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
PRIMITIVES = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5", "none"]


class PoolBN(nn.Module):
    def __init__(self, kind, C, stride):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else \
            nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(C, affine=False)

    def forward(self, x):
        return self.bn(self.pool(x))


class StdConv(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(C_in, C_out, 1, 1, 0, bias=False),
                                 nn.BatchNorm2d(C_out, affine=False))

    def forward(self, x):
        return self.net(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride, padding, dilation):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C, C, k, stride, padding, dilation=dilation, groups=C, bias=False),
            nn.Conv2d(C, C, 1, 1, 0, bias=False),
            nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.net(x)


class SepConv(nn.Module):
    def __init__(self, C, k, stride, padding):
        super().__init__()
        self.net = nn.Sequential(DilConv(C, k, stride, padding, 1), DilConv(C, k, 1, padding, 1))

    def forward(self, x):
        return self.net(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride] * 0.


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=False)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, C, stride):
    if name == "max_pool_3x3":
        return PoolBN("max", C, stride)
    if name == "avg_pool_3x3":
        return PoolBN("avg", C, stride)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(C, C)
    if name == "none":
        return Zero(stride)
    k, dilation = int(name[-1]), 2 if name.startswith("dil") else 1
    if dilation == 2:
        return DilConv(C, k, stride, (k - 1), 2)
    return SepConv(C, k, stride, (k - 1) // 2)


class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList(make_op(name, C, stride) for name in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class SearchCell(nn.Module):
    def __init__(self, n_nodes, C_pp, C_p, C, reduction_p, reduction):
        super().__init__()
        self.reduction = reduction
        self.preproc0 = FactorizedReduce(C_pp, C) if reduction_p else StdConv(C_pp, C)
        self.preproc1 = StdConv(C_p, C)
        self.dag = nn.ModuleList()
        for i in range(n_nodes):
            row = nn.ModuleList()
            for j in range(2 + i):
                row.append(MixedOp(C, 2 if reduction and j < 2 else 1))
            self.dag.append(row)

    def forward(self, s0, s1, w_dag):
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, w_list in zip(self.dag, w_dag):
            states.append(sum(edges[j](s, w) for j, (s, w) in enumerate(zip(states, w_list))))
        return torch.cat(states[2:], dim=1)


class SearchCNN(nn.Module):
    def __init__(self, C_in, C, n_classes, n_layers, n_nodes, stem_multiplier):
        super().__init__()
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(C_in, C_cur, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(C_cur))
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for i in range(n_layers):
            reduction = i in [n_layers // 3, 2 * n_layers // 3]
            if reduction:
                C_cur *= 2
            self.cells.append(SearchCell(n_nodes, C_pp, C_p, C_cur, reduction_p, reduction))
            reduction_p = reduction
            C_pp, C_p = C_p, C_cur * n_nodes
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(C_p, n_classes)

    def forward(self, x, weights_normal, weights_reduce):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights_reduce if cell.reduction else weights_normal)
        out = self.gap(s1)
        return self.linear(out.view(out.size(0), -1))


def parse(alpha, k):
    gene = []
    for edges in alpha:
        edge_max, primitive_indices = torch.topk(edges[:, :-1], 1)
        _, topk_edge_indices = torch.topk(edge_max.view(-1), k)
        gene.append([(PRIMITIVES[primitive_indices[e]], e.item()) for e in topk_edge_indices])
    return gene


class SearchCNNController(nn.Module):
    def __init__(self, C_in, C, n_classes, n_layers, criterion, n_nodes=4, stem_multiplier=3):
        super().__init__()
        self.n_nodes = n_nodes
        self.criterion = criterion
        self.alpha_normal = nn.ParameterList()
        self.alpha_reduce = nn.ParameterList()
        for i in range(n_nodes):
            self.alpha_normal.append(nn.Parameter(1e-3 * torch.randn(i + 2, len(PRIMITIVES))))
            self.alpha_reduce.append(nn.Parameter(1e-3 * torch.randn(i + 2, len(PRIMITIVES))))
        self._alphas = [(n, p) for n, p in self.named_parameters() if "alpha" in n]
        self.net = SearchCNN(C_in, C, n_classes, n_layers, n_nodes, stem_multiplier)

    def forward(self, x):
        return self.net(x, [F.softmax(a, dim=-1) for a in self.alpha_normal],
                        [F.softmax(a, dim=-1) for a in self.alpha_reduce])

    def loss(self, X, y):
        return self.criterion(self.forward(X), y)

    def genotype(self):
        concat = range(2, 2 + self.n_nodes)
        return Genotype(normal=parse(self.alpha_normal, 2), normal_concat=concat,
                        reduce=parse(self.alpha_reduce, 2), reduce_concat=concat)

    def weights(self):
        return self.net.parameters()

    def alphas(self):
        return (p for _, p in self._alphas)


class Architect:
    def __init__(self, net, w_momentum, w_weight_decay, hessian="ptdarts"):
        self.net = net
        self.v_net = copy.deepcopy(net)
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.hessian = hessian

    def virtual_step(self, trn_X, trn_y, xi, w_optim):
        loss = self.net.loss(trn_X, trn_y)
        gradients = torch.autograd.grad(loss, self.net.weights())
        with torch.no_grad():
            for w, vw, g in zip(self.net.weights(), self.v_net.weights(), gradients):
                m = w_optim.state[w].get("momentum_buffer", 0.) * self.w_momentum
                vw.copy_(w - xi * (m + g + self.w_weight_decay * w))
            for a, va in zip(self.net.alphas(), self.v_net.alphas()):
                va.copy_(a)

    def unrolled_backward(self, trn_X, trn_y, val_X, val_y, xi, w_optim):
        self.virtual_step(trn_X, trn_y, xi, w_optim)
        loss = self.v_net.loss(val_X, val_y)
        v_alphas, v_weights = tuple(self.v_net.alphas()), tuple(self.v_net.weights())
        v_grads = torch.autograd.grad(loss, v_alphas + v_weights)
        dalpha, dw = v_grads[:len(v_alphas)], v_grads[len(v_alphas):]
        hessian = self.compute_hessian(dw, trn_X, trn_y)
        with torch.no_grad():
            for alpha, da, h in zip(self.net.alphas(), dalpha, hessian):
                alpha.grad = da - xi * h

    def compute_hessian(self, dw, trn_X, trn_y):
        eps = 0.01 / torch.cat([w.view(-1) for w in dw]).norm()
        with torch.no_grad():
            for p, d in zip(self.net.weights(), dw):
                p += eps * d
        dalpha_pos = torch.autograd.grad(self.net.loss(trn_X, trn_y), self.net.alphas())
        with torch.no_grad():
            for p, d in zip(self.net.weights(), dw):
                p -= 2. * eps * d
        dalpha_neg = torch.autograd.grad(self.net.loss(trn_X, trn_y), self.net.alphas())
        with torch.no_grad():
            for p, d in zip(self.net.weights(), dw):
                p += eps * d
        if self.hessian == "ptdarts":
            return [(p - n) / 2. * eps for p, n in zip(dalpha_pos, dalpha_neg)]
        return [(p - n) / (2. * eps) for p, n in zip(dalpha_pos, dalpha_neg)]
