"""DARTS' search network as its authors wrote it (quark0/darts, ``cnn/model_search.py``): the mixed
op's Python sum over every candidate, ``none`` included; the cell; the network; the genotype rule.

Where it departs from the original, for current PyTorch and for the tests:
  * the alphas are leaf tensors made on the CPU that move with the module (``.to()``,
    ``.double()``), where the original makes them with ``.cuda()``;
  * ``new()`` builds this network's configuration (steps, multiplier, stem multiplier, and a
    method's own options) on its device and dtype; the original's builds the default
    configuration on CUDA;
  * the activations keep the input's memory layout, and the global pooling is the original's
    ``nn.AdaptiveAvgPool2d(1)``;
  * ``MixedOp`` takes the candidate names (``primitives``) and GDAS' construction options, and
    carries GDAS' edge (``forward_gdas``);
  * the keywords ``recompute`` and ``fold_batch_norm`` and ``architecture_tables()`` serve the
    command line, which builds and reads this network as it does darts_fast's.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.architecture import ArchitectureTable
from ..spaces.cnn.genotypes import PRIMITIVES, Genotype
from ..spaces.cnn.operations import OPS, FactorizedReduce, ReLUConvBN, build_candidate
from ..spaces.alphas import LeafAlphas


def candidates(C, stride, primitives=PRIMITIVES, conv_bias=False, track_running_stats=True):
    """The authors' candidate list of one edge: ``OPS[p](C, stride, affine=False)`` in
    ``primitives`` order, each pool followed by an affine-free BatchNorm. ``conv_bias`` and
    ``track_running_stats``: GDAS' options (``operations.OPS``)."""
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"primitives: expected names of operations.OPS, got unknown "
                         f"{', '.join(map(repr, unknown))}")
    ops = nn.ModuleList()
    for primitive in primitives:
        op = build_candidate(primitive, C, stride, False, conv_bias, track_running_stats)
        if "pool" in primitive:
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False,
                                                  track_running_stats=track_running_stats))
        ops.append(op)
    return ops


class MixedOp(nn.Module):
    r"""One edge: ``forward(x, weights)`` is DARTS' :math:`\sum_k w_k\, o_k(x)` over every
    candidate; ``forward_gdas(x, weights, index)`` is GDAS' edge (D-X-Y/AutoDL-Projects'
    ``MixedOp.forward_gdas``), :math:`o_i(x)\, w_i` for the sampled ``index`` alone."""

    def __init__(self, C, stride, primitives=PRIMITIVES, conv_bias=False,
                 track_running_stats=True):
        super().__init__()
        self._ops = candidates(C, stride, primitives, conv_bias, track_running_stats)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))

    def forward_gdas(self, x, weights, index):
        return self._ops[index](x) * weights[index]


class Cell(nn.Module):
    r"""DARTS' search cell: node ``i`` sums the edges from every earlier state,
    :math:`s_{i+2} = \sum_{j<i+2} \mathrm{edge}_{(i,j)}(s_j)`; the output concatenates the last
    ``multiplier`` states. ``mixed_op(C, stride)`` builds each edge."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 mixed_op=MixedOp):
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

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(LeafAlphas, nn.Module):
    """DARTS' search network: the stem, ``layers`` cells (reductions at ``layers // 3`` and
    ``2 * layers // 3``), global pooling, the classifier; alphas ``[edges, candidates]`` drawn
    after the weights, ``1e-3 * randn``. Each cell weighs its edges with
    ``softmax(alphas, dim=-1)``.

    ``recompute`` and ``fold_batch_norm``: the fused mixed op's options, taken so that one call
    builds either network. This one stores every candidate's output and normalises each in its
    own BatchNorm whatever ``fold_batch_norm`` says (the same numbers); ``recompute=True``, which
    needs the fused op, is refused."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, recompute=False, fold_batch_norm=True):
        super().__init__()
        if recompute:
            raise ValueError(f"{type(self).__name__}: recompute needs darts_fast.MixedOp; the "
                             f"reference stores every candidate's output (expected "
                             f"recompute=False, got {recompute!r})")
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._criterion = criterion
        self._steps = steps
        self._multiplier = multiplier
        self._stem_multiplier = stem_multiplier

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            if reduction:
                C_curr *= 2
            self.cells.append(self._make_cell(C_prev_prev, C_prev, C_curr, reduction,
                                              reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._initialize_alphas()

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        return Cell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                    reduction_prev)

    def _configuration(self):
        """The keyword arguments that rebuild this network (``new()``)."""
        return {"steps": self._steps, "multiplier": self._multiplier,
                "stem_multiplier": self._stem_multiplier}

    def _initialize_alphas(self):
        k = sum(1 for i in range(self._steps) for _ in range(2 + i))
        num_ops = len(PRIMITIVES)
        self.alphas_normal = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def new(self):
        """A network of this configuration, device and dtype, with fresh weights (drawn from the
        global RNG) and copies of these alphas."""
        model_new = type(self)(self._C, self._num_classes, self._layers, self._criterion,
                               **self._configuration())
        alpha = self.alphas_normal
        model_new.to(device=alpha.device, dtype=alpha.dtype)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            weights = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal,
                                dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def _loss(self, input, target):
        return self._criterion(self(input), target)

    def architecture_tables(self):
        """The normal and the reduction cells' candidate weights as a search's outputs show them
        (``ArchitectureTable``s, detached, on the CPU): no part of the authors' code."""
        edges = tuple((j, i + 2) for i in range(self._steps) for j in range(i + 2))
        with torch.no_grad():
            return tuple(
                ArchitectureTable(name, F.softmax(alphas, dim=-1).cpu(),
                                  None if scale is None else scale.cpu(), edges, tuple(PRIMITIVES))
                for name, alphas, scale in zip(("normal", "reduce"),
                                               (self.alphas_normal, self.alphas_reduce),
                                               self._edge_scales()))

    def _edge_scales(self):
        """Per cell kind, the factor of each edge's output (None: none)."""
        return None, None

    def genotype(self):
        """Per node, the two incoming edges whose strongest non-``none`` softmax weight is the
        largest (a stable sort: ties to the lower input), each with that candidate (the first
        of equal ones)."""
        with torch.no_grad():
            normal = F.softmax(self.alphas_normal, dim=-1).cpu().numpy()
            reduce = F.softmax(self.alphas_reduce, dim=-1).cpu().numpy()
        return self._genotype(_parse(normal, self._steps), _parse(reduce, self._steps))

    def _genotype(self, normal, reduce):
        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def _parse(weights, steps):
    """The authors' ``_parse`` of ``weights`` [edges, candidates] (numpy)."""
    none = PRIMITIVES.index("none")
    gene = []
    n, start = 2, 0
    for i in range(steps):
        end = start + n
        W = weights[start:end]
        edges = sorted(range(i + 2),
                       key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                    k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start = end
        n += 1
    return gene
