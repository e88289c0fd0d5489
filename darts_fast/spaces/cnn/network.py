"""The DARTS search network (cells of mixed operations), one definition for the fused and the
reference mixed operation.

``Network(C, num_classes, layers, criterion, mixed_op=...)`` builds the same modules, parameter
names and order, and consumes the global RNG the same way as the original, whichever mixed-op
class it is given; so a state_dict loads into either, and one seed gives the same initial weights
and alphas.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotypes import PRIMITIVES, Genotype
from .mixed_op import MixedOp
from .operations import FactorizedReduce, GlobalAvgPool, ReLUConvBN, is_reduction, stem


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 mixed_op):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride))

    def forward(self, s0, s1, weights, edge_weights=None, indices=None):
        """``edge_weights`` (PC-DARTS' edge normalisation): one factor per edge, scaling its mixed
        op's whole output. ``indices`` (GDAS): the sampled candidate of each edge (``indices[e]`` a
        Python int); each edge then computes that candidate alone (``forward_gdas``)."""
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for _ in range(self._steps):
            if indices is None:
                edges = (self._ops[offset + j](h, weights[offset + j])
                         for j, h in enumerate(states))
            else:
                edges = (self._ops[offset + j].forward_gdas(h, weights[offset + j],
                                                            indices[offset + j])
                         for j, h in enumerate(states))
            if edge_weights is not None:
                edges = (edge_weights[offset + j] * e for j, e in enumerate(edges))
            s = sum(edges)
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    """The DARTS search network. Alphas (``alphas_normal``, ``alphas_reduce``, 14x8 each) are leaf
    tensors with ``requires_grad``, not parameters: absent from ``parameters()`` and
    ``state_dict()``, as in the original; ``.to()``/``.cuda()``/``.double()`` move them too.

    ``mixed_op``: the mixed-operation class (default: the fused ``darts_fast.MixedOp``).
    ``recompute``: the fused mixed ops keep only their input for the backward pass and compute
    their candidates again there (see ``darts_fast.MixedOp``): far less memory, the same numbers,
    one more forward pass.
    ``fold_batch_norm``: the fused mixed ops fold their candidates' final BatchNorm into the
    weighted sum (the default; see ``darts_fast.MixedOp``).
    ``memory_format``: the layout activations take inside the network. ``"auto"`` (the default)
    is channels_last for CPU inputs, where it makes the convolutions of a search step about 25%
    faster, and the input's own layout elsewhere; ``None`` keeps the input's layout. Only the
    internal activations change: inputs, weights and state_dict keep their layout.
    """

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, mixed_op=MixedOp, memory_format="auto", recompute=False,
                 fold_batch_norm=True):
        super().__init__()
        for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers),
                            ("steps", steps), ("multiplier", multiplier),
                            ("stem_multiplier", stem_multiplier)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Network: {name} must be a positive integer, got {value!r}")
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._criterion = criterion
        self._steps = steps
        self._multiplier = multiplier
        self._stem_multiplier = stem_multiplier
        self._mixed_op = mixed_op
        base = mixed_op.func if isinstance(mixed_op, functools.partial) else mixed_op
        fused = isinstance(base, type) and issubclass(base, MixedOp)
        if recompute and not fused:
            raise ValueError(f"Network: recompute needs darts_fast.MixedOp, got mixed_op="
                             f"{getattr(mixed_op, '__name__', mixed_op)}")
        self._recompute = recompute
        self._fold_batch_norm = fold_batch_norm
        if memory_format not in ("auto", None, torch.channels_last, torch.contiguous_format):
            raise ValueError(f"Network: memory_format must be 'auto', None, torch.channels_last "
                             f"or torch.contiguous_format, got {memory_format!r}")
        self._memory_format = memory_format

        C_curr = stem_multiplier * C
        self.stem = stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            cell = Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                        reduction_prev, functools.partial(mixed_op, recompute=recompute,
                                                          fold_batch_norm=fold_batch_norm)
                        if fused else mixed_op)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)
        self._initialize_alphas()

    def _initialize_alphas(self):
        k = sum(2 + i for i in range(self._steps))
        num_ops = len(PRIMITIVES)
        self.alphas_normal = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def _apply(self, fn, *args, **kwargs):
        # Alphas are not parameters, so Module._apply would leave them behind; convert their data
        # in place so that optimizers holding them keep working.
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            for alpha in self._arch_parameters:
                alpha.data = fn(alpha.data)
        return self

    def arch_parameters(self):
        return self._arch_parameters

    def new(self):
        """A fresh network of the same configuration, device and dtype, holding copies of this
        one's alphas (weights newly initialised: consumes the global RNG like the original)."""
        model_new = type(self)(self._C, self._num_classes, self._layers, self._criterion,
                               self._steps, self._multiplier, self._stem_multiplier,
                               mixed_op=self._mixed_op, memory_format=self._memory_format,
                               recompute=self._recompute,
                               fold_batch_norm=self._fold_batch_norm)
        ref = self.alphas_normal
        model_new.to(device=ref.device, dtype=ref.dtype)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def forward(self, input):
        memory_format = self._memory_format
        if memory_format == "auto":
            memory_format = torch.channels_last if input.device.type == "cpu" else None
        if memory_format is not None and input.dim() == 4:
            input = input.contiguous(memory_format=memory_format)
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, *self._cell_weights(cell.reduction))
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def _cell_weights(self, reduction):
        """What a cell weighs its edges with: the softmax of the alphas over the candidates."""
        return (F.softmax(self.alphas_reduce if reduction else self.alphas_normal, dim=-1),)

    def _loss(self, input, target):
        return self._criterion(self(input), target)

    def genotype(self):
        """The discrete cells: per node the 2 strongest incoming edges (by their best non-none
        softmax weight; ties to the lower index) and per edge its best non-none op."""
        with torch.no_grad():
            normal = F.softmax(self.alphas_normal, dim=-1).cpu().numpy()
            reduce = F.softmax(self.alphas_reduce, dim=-1).cpu().numpy()
        return self._genotype(normal, reduce)

    def _genotype(self, normal, reduce):
        """The genotype of per-edge candidate weights (numpy [edges, candidates])."""
        none = PRIMITIVES.index("none")

        def parse(weights):
            gene = []
            n, start = 2, 0
            for i in range(self._steps):
                W = weights[start:start + n]
                edges = sorted(
                    range(i + 2),
                    key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none),
                )[:2]
                for j in edges:
                    k_best = None
                    for k in range(len(W[j])):
                        if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                            k_best = k
                    gene.append((PRIMITIVES[k_best], j))
                start += n
                n += 1
            return gene

        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse(normal), normal_concat=concat, reduce=parse(reduce),
                        reduce_concat=concat)
