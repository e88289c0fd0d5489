r"""P-DARTS (Chen et al. 2019, "Progressive Differentiable Architecture Search: Bridging the Depth
Gap between Search and Evaluation") on the fused DARTS mixed op: the authors' search network
(chenxin061/pdarts ``model_search.py``), its module tree, parameter names and numbers.

Each stage searches a new network whose edge :math:`e` keeps the candidates
:math:`K_e = \{k : \text{switches}[e][k]\}` (the same number on every edge; ``none`` among them
costs nothing, as in the fused ``MixedOp``) and computes

.. math:: \sum_{k \in K_e} w_{e,k}\, o_k(x), \qquad
          w_e = \mathrm{softmax}_k(\alpha_{e,k}),

over the edges instead (:math:`\mathrm{softmax}_e`) when one candidate is left, as the authors'
code does. Built with ``p > 0``, the stride-1 skip is :math:`o_{\text{skip}}(x) =
\mathrm{dropout}_p(x)`, a term of the fused sum (``Sequential(Identity(), Dropout(p))`` at the
authors' position, drawing its mask where theirs does); ``set_skip_dropout`` changes :math:`p`
between epochs (``skip_dropout_at``: the authors' schedule). The strided skip is not dropped.

Tables and genotype: the tables hold every column of ``primitives``, :math:`w_{e,k}` for the
kept candidates and 0 for the dropped ones, so that the outputs keep one column list however
the edges differ, and a genotype rule reads a table as it reads DARTS'. Before the last stage the
rule is DARTS' (a dropped candidate's 0 never beats a kept one's positive weight: the rule over
the kept candidates); at the last stage (``last_stage=True``) it is ``final_rule``, the cell the
authors parse from their final switches. The stage bookkeeping is in ``pdarts_switches``.

Departures: the authors draw the alphas with numpy's ``np.random.randn`` and keep them as
``nn.Parameter``\ s (in the state_dict); here, as in the rest of darts_fast and its reference,
``1e-3 * torch.randn`` leaf tensors drawn after the modules. On CPU the default
``memory_format="auto"`` runs channels_last, where a dropout mask is drawn in memory order, so
the masks differ from the authors' contiguous ones (the same distribution); ``memory_format=None``
on contiguous inputs draws the authors' masks. ``recompute=True`` is refused with ``p > 0``: the
recomputation would draw other masks.
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.architecture import ArchitectureTable, CellArchitecture, cell_edges, darts_rule
from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.mixed_op import MixedOp
from ..spaces.cnn.network import Cell, Network
from ..spaces.cnn.operations import Identity
from .pdarts_switches import (NUM_TO_DROP, check_switches, drop_candidates, final_rule,
                              skip_capped_genotypes)
from .registry import Method, MethodOptionError, register


def _registered_as(name):
    """The ``_ops`` the fused base classes read, registered under the authors' ``name`` once the
    base constructor has built them (as ``_ops``)."""
    return property(lambda self: self._modules[name if name in self._modules else "_ops"])


class PDARTSMixedOp(MixedOp):
    """``MixedOp(C, stride, switch, p)``: the candidates ``switch`` keeps (``switch[k]`` for
    ``primitives[k]``), under the authors' ``m_ops``."""

    _ops = _registered_as("m_ops")

    def __init__(self, C, stride, switch, p=0.0, primitives=PRIMITIVES, **options):
        if len(switch) != len(primitives):
            raise ValueError(f"PDARTSMixedOp: switch must have one entry per candidate "
                             f"({len(primitives)}), got {switch!r}")
        if p > 0 and options.get("recompute"):
            raise ValueError("PDARTSMixedOp: recompute would draw the skip's dropout mask again "
                             "in the backward pass; build with p=0 or recompute=False")
        self._p = p  # read by _candidates, which the base constructor calls
        super().__init__(C, stride, [name for name, on in zip(primitives, switch) if on],
                         **options)
        self.m_ops = self._modules.pop("_ops")

    def _candidates(self, C, stride, primitives, conv_bias, track_running_stats):
        ops = super()._candidates(C, stride, primitives, conv_bias, track_running_stats)
        if self._p > 0:
            for k, op in enumerate(ops):
                if isinstance(op, Identity):
                    ops[k] = nn.Sequential(op, nn.Dropout(self._p))
        return ops


class PDARTSCell(Cell):
    """DARTS' cell whose edge ``e`` is ``mixed_op(C, stride, switches[e])``, under the authors'
    ``cell_ops``."""

    _ops = _registered_as("cell_ops")

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 mixed_op, switches, **options):
        rows = iter(switches)  # the base builds the edges in the order of the rows

        def edge(C, stride):
            return mixed_op(C, stride, next(rows))

        super().__init__(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                         edge, **options)
        self.cell_ops = self._modules.pop("_ops")


class PDARTSNetwork(Network):
    """The P-DARTS search network of one stage: ``switches_normal`` / ``switches_reduce``
    ([edges][candidates] bools; None: every candidate, the first stage), the skip dropout ``p``
    it is built with, ``last_stage`` (which genotype rule reads it); other keywords as
    ``Network``'s. ``p`` holds the current dropout rate."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, switches_normal=None, switches_reduce=None, p=0.0,
                 last_stage=False, **options):
        primitives = tuple(options.get("primitives", PRIMITIVES))
        edges = len(cell_edges(steps)) if isinstance(steps, int) else 0
        self.switches_normal = check_switches(switches_normal, edges, primitives,
                                              "switches_normal")
        self.switches_reduce = check_switches(switches_reduce, edges, primitives,
                                              "switches_reduce")
        if sum(self.switches_normal[0]) != sum(self.switches_reduce[0]):
            raise ValueError("PDARTSNetwork: switches_normal and switches_reduce must keep as "
                             "many candidates per edge (the alphas' columns)")
        _check_rate(p)
        self.p = self._built_p = p
        self._last_stage = bool(last_stage)
        self._options = options
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         mixed_op=functools.partial(PDARTSMixedOp, p=p), **options)

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev, mixed_op):
        return PDARTSCell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                          reduction_prev, mixed_op,
                          self.switches_reduce if reduction else self.switches_normal,
                          **self._op_options)

    def _initialize_alphas(self):
        edges, kept = len(self.switches_normal), sum(self.switches_normal[0])
        self.alphas_normal = (1e-3 * torch.randn(edges, kept)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(edges, kept)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def new(self):
        """A network of this configuration (switches, dropout, stage), device and dtype, with
        fresh weights (drawn from the global RNG) and copies of these alphas."""
        model_new = type(self)(self._C, self._num_classes, self._layers, self._criterion,
                               self._steps, self._multiplier, self._stem_multiplier,
                               self.switches_normal, self.switches_reduce, self._built_p,
                               self._last_stage, **self._options)
        if self._built_p > 0:
            model_new.set_skip_dropout(self.p)
        ref = self.alphas_normal
        model_new.to(device=ref.device, dtype=ref.dtype)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def set_skip_dropout(self, p):
        """The dropout rate after every stride-1 skip from now on (the authors' ``model.p = p;
        model.update_p()``). A network built with ``p=0`` has no dropout to set, as the
        authors'."""
        _check_rate(p)
        if p > 0 and self._built_p == 0:
            raise ValueError("set_skip_dropout: the network was built with p=0, without dropout "
                             "after the skips; build it with p > 0")
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(p)
        self.p = p

    def cell_architecture(self, reduction):
        alphas = self.alphas_reduce if reduction else self.alphas_normal
        if alphas.shape[1] == 1:
            return CellArchitecture(F.softmax(alphas, dim=0))
        return super().cell_architecture(reduction)

    @property
    def genotype_rule(self):
        return final_rule if self._last_stage else darts_rule

    def architecture_tables(self):
        """Per cell kind, the softmax of the alphas over each edge's kept candidates (as the
        authors read them to drop candidates, one candidate or more) in the full columns of
        ``primitives``, 0 for the dropped ones."""
        edges = cell_edges(self._steps)
        tables = []
        with torch.no_grad():
            for name, alphas, switches in (("normal", self.alphas_normal, self.switches_normal),
                                           ("reduce", self.alphas_reduce, self.switches_reduce)):
                probs = F.softmax(alphas.detach(), dim=-1).cpu()
                weights = probs.new_zeros(len(switches), len(self._primitives))
                weights[torch.tensor(switches)] = probs.flatten()
                tables.append(ArchitectureTable(name, weights, None, edges, self._primitives))
        return tuple(tables)


def _check_rate(p):
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"PDARTSNetwork: the skip dropout rate p must be in [0, 1], got {p!r}")


def skip_dropout_at(rate, epoch, epochs, weights_only_epochs=10, decay=0.2):
    r"""The authors' skip dropout of ``epoch`` (from 0) in a stage of ``epochs``:
    :math:`r\,(E - e - 1)/E` while only the weights train (:math:`e <` ``weights_only_epochs``),
    then :math:`r\,\exp(-\text{decay}\,(e - \text{weights\_only\_epochs}))`."""
    if epoch < weights_only_epochs:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-decay * (epoch - weights_only_epochs))


def _probs(alphas):
    return F.softmax(alphas.detach(), dim=-1).cpu().tolist()


class PDARTS(Method):
    name = "pdarts"
    summary = ("progressive: stages of deeper networks on fewer candidates per edge, dropout "
               "on the skip-connections, a cap on them in the final cell")
    # chenxin061/pdarts train_search.py with the CIFAR-10 README's --add_layers 6 12 and
    # --dropout_rate 0.1 0.4 0.7; --epochs 25 per stage there, all three stages here.
    defaults = {"layers": 5, "batch_size": 96, "learning_rate": 0.025, "learning_rate_min": 0.0,
                "weight_decay": 3e-4, "nesterov": False, "epochs": 75, "arch_learning_rate": 6e-4,
                "arch_start_epoch": 10, "add_layers": [6, 12], "dropout_rate": [0.1, 0.4, 0.7],
                "max_skip": 2}
    second_order = hardware_loss = False
    one_process = "its stages build new networks, which one DDP wrapper does not follow"

    def networks(self):
        return PDARTSNetwork, None

    def add_options(self, group, kinds):
        group.add_argument("--add_layers", type=kinds.non_negative_int, nargs=2, default=None,
                           metavar="N", help="cells the second and the third stage add to "
                                             "--layers")
        group.add_argument("--dropout_rate", type=kinds.fraction, nargs=3, default=None,
                           metavar="P", help="each stage's dropout after the stride-1 "
                                             "skip-connections, before its decay")
        group.add_argument("--max_skip", type=kinds.non_negative_int, default=None, metavar="M",
                           help="the most skip-connections the final normal cell keeps")

    def check(self, options):
        stages = self.stages(options)
        if options.epochs % stages:
            raise MethodOptionError(f"--epochs {options.epochs}: pdarts runs {stages} stages "
                                    f"of equal length; give a multiple of {stages}")
        if options.arch_start_epoch >= options.epochs // stages:
            raise MethodOptionError(
                f"--arch_start_epoch {options.arch_start_epoch} counts in each stage of "
                f"{options.epochs // stages} epochs: give fewer than that, or more --epochs")
        if options.primitives is not None:
            raise MethodOptionError("--primitives: pdarts drops 3, 2 and 2 of its authors' 8 "
                                    "candidates per edge; it searches those")
        if options.early_stop or options.adaptive_regularisation:
            flag = "--early_stop" if options.early_stop else "--adaptive_regularisation"
            raise MethodOptionError(f"{flag}: pdarts ends each stage by its schedule (the "
                                    f"Hessian changes size between stages); its guard against "
                                    f"skip-connections is --max_skip")
        if options.recompute and any(options.dropout_rate):
            raise MethodOptionError("--recompute would draw the skip-connections' dropout masks "
                                    "again in the backward pass; give --dropout_rate 0 0 0 or "
                                    "leave --recompute out")

    def stages(self, options):
        return len(NUM_TO_DROP)

    def stage_network(self, stage, options, previous):
        network = {"p": options.dropout_rate[stage], "last_stage": stage == len(NUM_TO_DROP) - 1,
                   "layers": options.layers + ([0] + list(options.add_layers))[stage]}
        if previous is not None:
            for cell in ("normal", "reduce"):
                network[f"switches_{cell}"] = drop_candidates(
                    getattr(previous, f"switches_{cell}"),
                    _probs(getattr(previous, f"alphas_{cell}")), NUM_TO_DROP[stage - 1], False)
        return network

    def begin_epoch(self, model, epoch, options):
        stage_epochs = options.epochs // self.stages(options)
        rate = options.dropout_rate[epoch // stage_epochs]
        if rate > 0:
            model.set_skip_dropout(skip_dropout_at(rate, epoch % stage_epochs, stage_epochs,
                                                   options.arch_start_epoch))

    def architect_options(self, options):
        return {"grad_clip": options.grad_clip}  # the authors clip the alphas' gradient too

    def final_genotypes(self, model, options):
        capped = skip_capped_genotypes(model.switches_normal, model.switches_reduce,
                                       _probs(model.alphas_normal), _probs(model.alphas_reduce),
                                       steps=model._steps, multiplier=model._multiplier)
        kept = dict(capped).get(options.max_skip, model.genotype())
        return kept, [("final", model.genotype())] + [
            (f"at most {cap} skip-connections", genotype) for cap, genotype in capped]

    def describe(self, options):
        stage = options.epochs // self.stages(options)
        cells = [options.layers + a for a in [0, *options.add_layers]]
        return (f"({self.stages(options)} stages of {stage} epochs: "
                f"{', '.join(map(str, cells))} cells, 8, 5, 3 candidates per edge, skip dropout "
                f"{', '.join(f'{r:g}' for r in options.dropout_rate)}; at most "
                f"{options.max_skip} skip-connections in the final normal cell)")


METHOD = register(PDARTS())
