"""pt.darts' search network (``models/search_cnn.py``, ``models/search_cells.py``) on the fused
mixed op: the same modules under the same names (``net.stem``, ``net.cells.L.preproc0``,
``net.cells.L.dag.i.j._ops.k``, ``net.linear``; the alphas ``alpha_normal.i``,
``alpha_reduce.i``), hence the same state_dict, and one seed gives the same initial alphas and
weights (the same draws of the global RNG, in the same order).

Several ``device_ids`` are refused: ``nn.parallel.replicate`` copies a module's attributes, and
the fused mixed op's list of its candidates would still point at the first device's modules.
"""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...spaces.cnn.operations import GlobalAvgPool
from . import genotypes as gt
from .ops import FactorizedReduce, MixedOp, StdConv


class SearchCell(nn.Module):
    """``n_nodes`` nodes; node i sums ``dag[i][j](state_j, w_dag[i][j])`` over the cell inputs and
    the earlier nodes (j < i + 2); the output concatenates the nodes on channels."""

    def __init__(self, n_nodes, C_pp, C_p, C, reduction_p, reduction):
        super().__init__()
        self.reduction = reduction
        self.n_nodes = n_nodes
        # After a reduction cell, s0 has twice the resolution of s1.
        if reduction_p:
            self.preproc0 = FactorizedReduce(C_pp, C, affine=False)
        else:
            self.preproc0 = StdConv(C_pp, C, 1, 1, 0, affine=False)
        self.preproc1 = StdConv(C_p, C, 1, 1, 0, affine=False)
        self.dag = nn.ModuleList()
        for i in range(n_nodes):
            self.dag.append(nn.ModuleList(
                MixedOp(C, 2 if reduction and j < 2 else 1) for j in range(2 + i)))

    def forward(self, s0, s1, w_dag):
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, w_list in zip(self.dag, w_dag):
            states.append(sum(edge(s, w) for edge, s, w in zip(edges, states, w_list)))
        return torch.cat(states[2:], dim=1)


class SearchCNN(nn.Module):
    """Stem, ``n_layers`` cells (reductions at n_layers // 3 and 2 * n_layers // 3, where the
    channels double), global average pooling, ``linear``.

    ``memory_format``: the activations' layout inside the network; ``"auto"`` is channels_last
    for CPU inputs (faster convolutions there) and the input's own layout elsewhere, ``None``
    keeps the input's layout. Inputs, weights and the state_dict keep theirs."""

    def __init__(self, C_in, C, n_classes, n_layers, n_nodes=4, stem_multiplier=3,
                 memory_format="auto"):
        super().__init__()
        for name, value in (("C_in", C_in), ("C", C), ("n_classes", n_classes),
                            ("n_layers", n_layers), ("n_nodes", n_nodes),
                            ("stem_multiplier", stem_multiplier)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SearchCNN: {name} must be a positive integer, got {value!r}")
        if memory_format not in ("auto", None, torch.channels_last, torch.contiguous_format):
            raise ValueError(f"SearchCNN: memory_format must be 'auto', None, "
                             f"torch.channels_last or torch.contiguous_format, got "
                             f"{memory_format!r}")
        self.C_in = C_in
        self.C = C
        self.n_classes = n_classes
        self.n_layers = n_layers
        self.memory_format = memory_format
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(C_in, C_cur, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(C_cur))
        # The stem feeds both inputs of the first cell.
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for i in range(n_layers):
            reduction = i in (n_layers // 3, 2 * n_layers // 3)
            if reduction:
                C_cur *= 2
            self.cells.append(SearchCell(n_nodes, C_pp, C_p, C_cur, reduction_p, reduction))
            reduction_p = reduction
            C_pp, C_p = C_p, C_cur * n_nodes
        self.gap = GlobalAvgPool()
        self.linear = nn.Linear(C_p, n_classes)

    def forward(self, x, weights_normal, weights_reduce):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.C_in:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"SearchCNN: x must be [N, C_in={self.C_in}, H, W] images, got "
                             f"{shape}")
        memory_format = self.memory_format
        if memory_format == "auto":
            memory_format = torch.channels_last if x.device.type == "cpu" else None
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights_reduce if cell.reduction else weights_normal)
        out = self.gap(s1)
        return self.linear(out.view(out.size(0), -1))


class SearchCNNController(nn.Module):
    """pt.darts' controller: the alphas (``alpha_normal``, ``alpha_reduce``: ParameterLists of
    [i + 2, len(PRIMITIVES)] tensors, node i; ``1e-3 * randn``, drawn before the network, normal
    then reduce per node), ``net`` (``SearchCNN``) and ``criterion``.

    ``forward(x) = net(x, softmax(alpha_normal), softmax(alpha_reduce))`` (softmax over the
    candidates of each edge); ``weights()`` are ``net``'s parameters, ``alphas()`` the alphas.
    ``device_ids``: one device at most (see the module's docstring); None runs on the device of
    the parameters. ``memory_format``: see ``SearchCNN``."""

    def __init__(self, C_in, C, n_classes, n_layers, criterion, n_nodes=4, stem_multiplier=3,
                 device_ids=None, memory_format="auto"):
        super().__init__()
        device_ids = [] if device_ids is None else list(device_ids)
        if len(device_ids) > 1:
            raise ValueError(f"SearchCNNController: device_ids must name one device at most, got "
                             f"{device_ids}; this network runs on one device (several processes "
                             f"with torchrun for several GPUs)")
        if not callable(criterion):
            raise TypeError(f"SearchCNNController: criterion must be callable as "
                            f"criterion(logits, y), got {type(criterion).__name__}")
        if not isinstance(n_nodes, int) or isinstance(n_nodes, bool) or n_nodes <= 0:
            raise ValueError(f"SearchCNNController: n_nodes must be a positive integer, got "
                             f"{n_nodes!r}")
        self.n_nodes = n_nodes
        self.criterion = criterion
        self.device_ids = device_ids
        n_ops = len(gt.PRIMITIVES)
        self.alpha_normal = nn.ParameterList()
        self.alpha_reduce = nn.ParameterList()
        for i in range(n_nodes):
            self.alpha_normal.append(nn.Parameter(1e-3 * torch.randn(i + 2, n_ops)))
            self.alpha_reduce.append(nn.Parameter(1e-3 * torch.randn(i + 2, n_ops)))
        self._alphas = [(n, p) for n, p in self.named_parameters() if "alpha" in n]
        self.net = SearchCNN(C_in, C, n_classes, n_layers, n_nodes, stem_multiplier,
                             memory_format)

    def forward(self, x):
        weights_normal = [F.softmax(alpha, dim=-1) for alpha in self.alpha_normal]
        weights_reduce = [F.softmax(alpha, dim=-1) for alpha in self.alpha_reduce]
        return self.net(x, weights_normal, weights_reduce)

    def loss(self, X, y):
        return self.criterion(self.forward(X), y)

    def print_alphas(self, logger):
        """Logs the softmax of every alpha, the handlers' formats set to the bare message
        meanwhile."""
        formatters = [handler.formatter for handler in logger.handlers]
        for handler in logger.handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
        try:
            logger.info("####### ALPHA #######")
            logger.info("# Alpha - normal")
            for alpha in self.alpha_normal:
                logger.info(F.softmax(alpha, dim=-1))
            logger.info("\n# Alpha - reduce")
            for alpha in self.alpha_reduce:
                logger.info(F.softmax(alpha, dim=-1))
            logger.info("#####################")
        finally:
            for handler, formatter in zip(logger.handlers, formatters):
                handler.setFormatter(formatter)

    def genotype(self):
        """pt.darts' ``Genotype`` (see ``genotypes.parse``), every node concatenated."""
        concat = range(2, 2 + self.n_nodes)
        return gt.Genotype(normal=gt.parse(self.alpha_normal, k=2), normal_concat=concat,
                           reduce=gt.parse(self.alpha_reduce, k=2), reduce_concat=concat)

    def weights(self):
        return self.net.parameters()

    def named_weights(self):
        return self.net.named_parameters()

    def alphas(self):
        for _, p in self._alphas:
            yield p

    def named_alphas(self):
        yield from self._alphas
