"""The DARTS search network (cells of mixed operations).

``Network(C, num_classes, layers, criterion, mixed_op=...)`` builds the same modules, parameter
names and order, and consumes the global RNG the same way as the original, whichever mixed-op
class it is given; so a state_dict loads into either, and one seed gives the same initial weights
and alphas. A method's network subclasses it and says what its cells compute with
(``cell_architecture``), what the outputs show (``architecture_tables``) and which genotype rule
reads them (``genotype_rule``).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..alphas import LeafAlphas
from .architecture import ArchitectureTable, CellArchitecture, cell_edges, darts_rule, edge_count
from .genotypes import PRIMITIVES, Genotype, check_primitives
from .mixed_op import MixedOp
from .operations import FactorizedReduce, GlobalAvgPool, ReLUConvBN, is_reduction
from .stems import build_stems, check_stem, run_stems


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 mixed_op, conv_bias=False, track_running_stats=True):
        super().__init__()
        self.reduction = reduction
        options = dict(affine=False, conv_bias=conv_bias, track_running_stats=track_running_stats)
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, **options)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, **options)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, **options)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride))

    def forward(self, s0, s1, architecture):
        """``architecture``: a ``CellArchitecture``, or the edges' weights alone (the original
        ``cell(s0, s1, weights)``)."""
        if isinstance(architecture, torch.Tensor):
            architecture = CellArchitecture(architecture)
        weights, scale, active = architecture
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for _ in range(self._steps):
            # A single path leaves edges out (no candidate active): they are not computed.
            taken = [j for j in range(len(states)) if active is None or active[offset + j]]
            if not taken:
                raise ValueError(f"Cell: node {len(states)} has no active edge")
            edges = (self._ops[offset + j](states[j], weights[offset + j])
                     if active is None else
                     self._ops[offset + j](states[j], weights[offset + j], active[offset + j])
                     for j in taken)
            if scale is not None:
                edges = (scale[offset + j] * e for j, e in zip(taken, edges))
            s = sum(edges)
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(LeafAlphas, nn.Module):
    """The DARTS search network. Alphas (``alphas_normal``, ``alphas_reduce``, [edges, candidates]
    each: 14x8 with the defaults) are leaf tensors with ``requires_grad``, not parameters: absent
    from ``parameters()`` and ``state_dict()``, as in the original; ``.to()``/``.cuda()``/
    ``.double()`` move them too.

    ``mixed_op``: the mixed-operation class (default: the fused ``darts_fast.MixedOp``); another
    class is built as ``mixed_op(C, stride)``, with ``primitives``, ``conv_bias`` and
    ``track_running_stats`` added where they differ from their defaults.
    ``recompute``: the fused mixed ops keep only their input for the backward pass and compute
    their candidates again there (see ``darts_fast.MixedOp``): far less memory, the same numbers,
    one more forward pass.
    ``fold_batch_norm``: the fused mixed ops fold their candidates' final BatchNorm into the
    weighted sum (the default; see ``darts_fast.MixedOp``).
    ``primitives``: the candidate names of every edge (default ``PRIMITIVES``, the columns of the
    alphas, in order; any names of ``operations.OPS``, see ``operations.register_candidate``).
    ``conv_bias``, ``track_running_stats``: every convolution before an affine-free BatchNorm
    carries a bias, and whether those BatchNorms keep running statistics (GDAS' authors' options;
    see ``operations.OPS``).
    ``auxiliary_skip``: DARTS-'s auxiliary skip-connection on every mixed op, weighted by the
    network's ``auxiliary_skip_beta`` (a 0-dim buffer, not in the state_dict: its authors decay
    it per epoch; ``set_auxiliary_skip``); see ``darts_fast.MixedOp``.
    ``memory_format``: the layout activations take inside the network. ``"auto"`` (the default)
    is channels_last for CPU inputs, where it makes the convolutions of a search step about 25%
    faster, and the input's own layout elsewhere; ``None`` keeps the input's layout. Only the
    internal activations change: inputs, weights and state_dict keep their layout.
    """

    # Reads an ArchitectureTable's ranking into the cell's genotype (architecture.py).
    genotype_rule = staticmethod(darts_rule)

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, mixed_op=MixedOp, memory_format="auto", recompute=False,
                 fold_batch_norm=True, primitives=PRIMITIVES, conv_bias=False,
                 track_running_stats=True, auxiliary_skip=False, in_channels=3, stem="cifar"):
        super().__init__()
        check_stem(stem, in_channels, "Network")
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
        self._input = dict(in_channels=in_channels, stem=stem)
        self._primitives = check_primitives(primitives, "Network")
        self._mixed_op = mixed_op
        base = mixed_op.func if isinstance(mixed_op, functools.partial) else mixed_op
        fused = isinstance(base, type) and issubclass(base, MixedOp)
        if recompute and not fused:
            raise ValueError(f"Network: recompute needs darts_fast.MixedOp, got mixed_op="
                             f"{getattr(mixed_op, '__name__', mixed_op)}")
        if auxiliary_skip and not fused:
            raise ValueError(f"Network: auxiliary_skip needs darts_fast.MixedOp, got mixed_op="
                             f"{getattr(mixed_op, '__name__', mixed_op)}")
        self._recompute = recompute
        self._auxiliary_skip = auxiliary_skip
        # SDARTS' weight step replaces the softmax of the alphas by these (``perturbed``).
        self.weights_override = None
        self._fold_batch_norm = fold_batch_norm
        self._op_options = dict(conv_bias=conv_bias, track_running_stats=track_running_stats)
        if memory_format not in ("auto", None, torch.channels_last, torch.contiguous_format):
            raise ValueError(f"Network: memory_format must be 'auto', None, torch.channels_last "
                             f"or torch.contiguous_format, got {memory_format!r}")
        self._memory_format = memory_format

        # A mixed op that is not darts_fast's gets only the options that differ from the
        # defaults: the original's MixedOp(C, stride) works as it is.
        edge_options = dict(recompute=recompute, fold_batch_norm=fold_batch_norm) if fused else {}
        if self._primitives != tuple(PRIMITIVES):
            edge_options["primitives"] = self._primitives
        if conv_bias:
            edge_options["conv_bias"] = True
        if not track_running_stats:
            edge_options["track_running_stats"] = False
        if auxiliary_skip:
            edge_options["auxiliary_skip"] = True
            # A device tensor: a captured step reads each epoch's value.
            self.register_buffer("auxiliary_skip_beta", torch.ones(()), persistent=False)
        C_curr = stem_multiplier * C
        reduction_prev = build_stems(self, stem, C_curr, in_channels)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            cell = self._make_cell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   functools.partial(mixed_op, **edge_options))
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)
        self._initialize_alphas()

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev, mixed_op):
        """One cell, its edges built by ``mixed_op(C, stride)`` (a method's network may build
        its own kind of cell)."""
        return Cell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                    reduction_prev, mixed_op, **self._op_options)

    def _initialize_alphas(self):
        k = edge_count(self._steps)
        num_ops = len(self._primitives)
        self.alphas_normal = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, num_ops)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def new(self):
        """A fresh network of the same configuration, device and dtype, holding copies of this
        one's alphas (weights newly initialised: consumes the global RNG like the original)."""
        model_new = type(self)(self._C, self._num_classes, self._layers, self._criterion,
                               self._steps, self._multiplier, self._stem_multiplier,
                               mixed_op=self._mixed_op, memory_format=self._memory_format,
                               recompute=self._recompute,
                               fold_batch_norm=self._fold_batch_norm,
                               primitives=self._primitives,
                               auxiliary_skip=self._auxiliary_skip, **self._op_options,
                               **self._input)
        if self._auxiliary_skip:
            model_new.auxiliary_skip_beta = self.auxiliary_skip_beta.clone()
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
        s0, s1 = run_stems(self, input)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.cell_architecture(cell.reduction))
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def cell_architecture(self, reduction):
        """What the normal (or reduction) cells compute with: the softmax of the alphas over the
        candidates (or ``weights_override``), then the auxiliary skip's beta."""
        if self.weights_override is not None:
            weights = self.weights_override[1 if reduction else 0]
        else:
            weights = F.softmax(self.alphas_reduce if reduction else self.alphas_normal, dim=-1)
        if self._auxiliary_skip:
            beta = self.auxiliary_skip_beta.to(weights.dtype).expand(weights.shape[0], 1)
            weights = torch.cat([weights, beta], 1)
        return CellArchitecture(weights)

    def set_auxiliary_skip(self, beta):
        """DARTS-'s coefficient of the auxiliary skip-connections, from now on."""
        if not self._auxiliary_skip:
            raise ValueError("set_auxiliary_skip: the network was built without auxiliary_skip")
        self.auxiliary_skip_beta.fill_(beta)

    def edge_scales(self):
        """The per-edge output scales of the normal and the reduction cells (None: none)."""
        return None, None

    def architecture_tables(self):
        """The normal and the reduction cells' ``ArchitectureTable`` (detached, on the CPU)."""
        edges = cell_edges(self._steps)
        with torch.no_grad():
            return tuple(
                ArchitectureTable(name, F.softmax(alphas.detach(), dim=-1).cpu(),
                                  None if scale is None else scale.detach().cpu(), edges,
                                  self._primitives)
                for name, alphas, scale in zip(("normal", "reduce"),
                                               (self.alphas_normal, self.alphas_reduce),
                                               self.edge_scales()))

    def _loss(self, input, target):
        return self._criterion(self(input), target)

    def genotype(self):
        """The discrete cells: ``genotype_rule`` on each table's ranking."""
        normal, reduce = (self.genotype_rule(t.ranking().numpy(), t.candidates, self._steps)
                          for t in self.architecture_tables())
        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)
