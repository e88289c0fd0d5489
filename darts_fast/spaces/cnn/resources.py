r"""Parameters, FLOPs and latency of the CNN space's candidates and genotypes.

"FLOPs" here are multiply-accumulates (MACs), as in the papers (DARTS' ~574M mobile-setting
numbers are MACs): those of the convolutions and linear layers, for one image, counted by
``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 per multiply-accumulate) halved;
BatchNorms, pools, activations and additions count nothing. Parameters are the trainable ones.

* ``genotype_cost``: a genotype's cost in ``NetworkCIFAR``, from a ``CostTable`` built once per
  configuration (a sum of table entries per genotype, for searches that score many);
* ``supernet_costs``: the search network's [edges, candidates] tables of MACs and parameters,
  ``measure_latency`` (``resources_latency``): its candidates' seconds per forward on a device;
  ``save_table``/``load_table`` (``resources_io``) keep such a table in a JSON file;
* ``expected_cost``: :math:`\text{fixed} + \sum_{kind} \sum_{e,k}
  \mathrm{softmax}_k(\alpha_{kind})_{e,k}\, T_{kind}[e, k]`, differentiable in the alphas
  (ProxylessNAS' expected latency, a FLOPs penalty for DARTS).
"""
import functools
import numbers
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .eval_model import AuxiliaryHeadCIFAR
from .genotypes import Genotype, validate_genotype
from .operations import FactorizedReduce, ReLUConvBN, build_candidate, reduction_cells
from .stems import cifar_stem
from .resources_io import load_table, save_table
from .resources_latency import (KINDS, check_int, eval_mode, measure_latency, module_key,
                                tabulate, trace)

__all__ = ["Cost", "CostTable", "cost_table", "genotype_cost", "supernet_costs",
           "expected_cost", "measure_latency", "save_table", "load_table", "count_module"]


class Cost(NamedTuple):
    params: int
    flops: int  # multiply-accumulates


def count_module(module, shape, dtype=torch.float32):
    """``Cost`` of ``module`` on an input of ``shape``: its trainable parameters' ``numel`` and
    its MACs, ``FlopCounterMode``'s total // 2, counted in eval mode on meta-device copies of its
    tensors (no memory, no computation, the module itself untouched)."""
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    state = {name: torch.empty_like(t, device="meta")
             for named in (module.named_parameters(), module.named_buffers())
             for name, t in named}
    x = torch.empty(shape, dtype=dtype, device="meta")
    with eval_mode(module), torch.no_grad(), FlopCounterMode(display=False) as counter:
        functional_call(module, state, (x,))
    return Cost(params, counter.get_total_flops() // 2)


def _built(build, shape):
    """The cost of the module ``build()`` makes, built on the meta device (no memory, no draws
    from the global RNG)."""
    with torch.device("meta"):
        return count_module(build(), shape)


class CostTable:
    r"""The cost of any genotype in ``NetworkCIFAR(C, num_classes, layers, auxiliary, .)`` on
    ``image_size`` images:

    .. math:: \text{cost}(g) = \text{fixed}(m_n, m_r) + \sum_{kind} \sum_{(o, j) \in g_{kind}}
              \sum_{\text{cells } i \text{ of the kind}} c_i(o, j < 2)

    with :math:`m_n, m_r` the lengths of ``normal_concat``/``reduce_concat`` (the cells' output
    channels, which the next cells' preprocessing and the classifier read), ``fixed`` the stem,
    the preprocessing, the classifier (and the auxiliary head's parameters with ``auxiliary``:
    it runs in training only, so its MACs are not the network's), and :math:`c_i(o, \text{input})`
    the cost of candidate :math:`o` in cell :math:`i` from one of the cell's inputs (stride 2 in a
    reduction cell) or from a node. Each distinct module is built and counted once, when a
    genotype first needs it."""

    def __init__(self, C=36, layers=20, num_classes=10, image_size=32, auxiliary=False):
        _check_config(C, layers, num_classes, image_size, auxiliary)
        self.C, self.layers, self.num_classes = C, layers, num_classes
        self.image_size, self.auxiliary = image_size, bool(auxiliary)
        reductions = reduction_cells(layers)
        self._cells, size, channels = [], image_size, C
        for i in range(layers):
            reduction = i in reductions
            channels *= 2 if reduction else 1
            self._cells.append((reduction, channels, size))
            size //= 2 if reduction else 1
        self._modules, self._edges, self._fixed = {}, {}, {}

    def _module(self, key, build, shape):
        if key not in self._modules:
            self._modules[key] = _built(build, shape)
        return self._modules[key]

    def _edge(self, kind, name, from_input):
        """Candidate ``name`` on an edge of every cell of ``kind``, summed."""
        key = (kind, name, from_input)
        if key not in self._edges:
            total = Cost(0, 0)
            for reduction, C, size in self._cells:
                if reduction != (kind == "reduce"):
                    continue
                stride = 2 if reduction and from_input else 1
                size_in = size if from_input or not reduction else size // 2
                c = self._module(("op", name, C, stride, size_in),
                                 lambda: build_candidate(name, C, stride, True),
                                 (1, C, size_in, size_in))
                total = Cost(total.params + c.params, total.flops + c.flops)
            self._edges[key] = total
        return self._edges[key]

    def _fixed_cost(self, multipliers):
        """Stem, preprocessing, classifier (auxiliary head) when the normal and reduction cells
        output ``multipliers`` nodes each, as ``NetworkCIFAR`` builds them."""
        if multipliers in self._fixed:
            return self._fixed[multipliers]
        size = self.image_size
        C_stem = 3 * self.C
        parts = [self._module(("stem", C_stem, size), lambda: cifar_stem(C_stem),
                              (1, 3, size, size))]
        C_pp, C_p, reduction_prev, C_aux = C_stem, C_stem, False, C_stem
        for i, (reduction, C, size) in enumerate(self._cells):
            if reduction_prev:
                parts.append(self._module(("fr", C_pp, C, 2 * size),
                                          lambda: FactorizedReduce(C_pp, C),
                                          (1, C_pp, 2 * size, 2 * size)))
            else:
                parts.append(self._module(("rcb", C_pp, C, size),
                                          lambda: ReLUConvBN(C_pp, C, 1, 1, 0),
                                          (1, C_pp, size, size)))
            parts.append(self._module(("rcb", C_p, C, size), lambda: ReLUConvBN(C_p, C, 1, 1, 0),
                                      (1, C_p, size, size)))
            C_pp, C_p = C_p, multipliers[reduction] * C
            reduction_prev = reduction
            if i == 2 * self.layers // 3:
                C_aux = C_p
        parts.append(self._module(("linear", C_p), lambda: nn.Linear(C_p, self.num_classes),
                                  (1, C_p)))
        if self.auxiliary:
            with torch.device("meta"):
                head = AuxiliaryHeadCIFAR(C_aux, self.num_classes)
            parts.append(Cost(sum(p.numel() for p in head.parameters()), 0))
        self._fixed[multipliers] = Cost(sum(p.params for p in parts), sum(p.flops for p in parts))
        return self._fixed[multipliers]

    def cost(self, genotype):
        """``Cost(params, flops)`` of ``NetworkCIFAR`` built with ``genotype``."""
        _check_genotype(genotype)
        params, flops = self._fixed_cost((len(genotype.normal_concat),
                                          len(genotype.reduce_concat)))
        for kind in KINDS:
            for name, j in getattr(genotype, kind):
                c = self._edge(kind, name, j < 2)
                params, flops = params + c.params, flops + c.flops
        return Cost(params, flops)


def _check_config(C, layers, num_classes, image_size, auxiliary):
    for name, value in (("C", C), ("layers", layers), ("num_classes", num_classes),
                        ("image_size", image_size)):
        check_int(name, value)
    if not isinstance(auxiliary, bool):
        raise ValueError(f"auxiliary must be a bool, got {auxiliary!r}")
    reductions = reduction_cells(layers)
    if auxiliary and len(reductions) < 2:
        raise ValueError(f"auxiliary: the head sits after the second reduction cell and needs "
                         f"layers >= 2, got layers={layers}")
    # Each reduction halves the resolution; the factorized reduction needs it even.
    if image_size % 2 ** len(reductions):
        raise ValueError(f"image_size must be a multiple of {2 ** len(reductions)} for "
                         f"{len(reductions)} reduction cells, got {image_size}")


def _check_genotype(genotype):
    if not all(hasattr(genotype, field) for field in Genotype._fields):
        raise ValueError(f"genotype: expected a Genotype(normal, normal_concat, reduce, "
                         f"reduce_concat), got {type(genotype).__name__}")
    try:
        for kind in KINDS:
            pairs = [tuple(pair) for pair in getattr(genotype, kind)]
            if any(len(p) != 2 or not isinstance(p[1], numbers.Integral) for p in pairs):
                raise ValueError(f"{kind} must hold (operation, input) pairs of a name and an "
                                 f"int, got {getattr(genotype, kind)!r}")
            concat = list(getattr(genotype, kind + "_concat"))
            if not all(isinstance(i, numbers.Integral) for i in concat):
                raise ValueError(f"{kind}_concat must hold ints, got {concat!r}")
        validate_genotype(genotype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"genotype: {e}") from None


@functools.lru_cache(maxsize=64)
def _cached_table(C, layers, num_classes, image_size, auxiliary):
    return CostTable(C, layers, num_classes, image_size, auxiliary)


def cost_table(C=36, layers=20, num_classes=10, image_size=32, auxiliary=False):
    """The ``CostTable`` of one configuration, built once and kept."""
    _check_config(C, layers, num_classes, image_size, auxiliary)
    return _cached_table(C, layers, num_classes, image_size, auxiliary)


def genotype_cost(genotype, C=36, layers=20, num_classes=10, image_size=32, auxiliary=False):
    """``Cost(params, flops)`` of ``NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)``:
    ``params`` its trainable parameters (the auxiliary head's only with ``auxiliary``), ``flops``
    the multiply-accumulates of its convolutions and linear layers for one ``image_size`` image
    at inference (eval mode: the auxiliary head does not run). DARTS_V2 at C=36, layers=20:
    3.3M parameters, as published."""
    return cost_table(C, layers, num_classes, image_size, auxiliary).cost(genotype)


def supernet_costs(network, image_size=32):
    """The search network's table (see ``resources_latency``) of ``macs`` and ``params``: per
    cell kind [edges, candidates], each candidate counted at the input it sees in a forward pass
    of one ``image_size`` image and summed over the cells of the kind (``none``: 0); ``fixed``
    everything outside the candidates (stem, preprocessing, classifier, a mixed op's own modules
    such as DARTS-' auxiliary skip). Each distinct candidate module is counted once."""
    traced, counted = trace(network, image_size, 1), {}

    def count(key):
        def measure(module, spec):
            k = module_key(module, spec)
            if k not in counted:  # one count serves both tables
                counted[k] = count_module(module, spec[0], spec[1])
            return float(getattr(counted[k], key))
        return measure

    macs = tabulate(traced, "macs", count("flops"))
    params = tabulate(traced, "params", count("params"))
    for kind in (*KINDS, "fixed"):
        macs[kind].update(params[kind])
    # Modules that never ran (a criterion held by the network) still hold parameters.
    macs["fixed"]["params"] += float(sum(p.numel() for m, spec in traced.fixed if spec is None
                                         for p in m.parameters() if p.requires_grad))
    return macs


def expected_cost(alphas_normal, alphas_reduce, table, key):
    r"""``table["fixed"][key] + sum_kind sum_{e,k} softmax(alphas_kind, -1)[e, k] *
    table[kind][key][e, k]``: a 0-dim tensor in the alphas' dtype and device, differentiable in
    them (ProxylessNAS' expected latency with ``key="seconds"``; a FLOPs penalty for DARTS with
    ``key="macs"``)."""
    if key not in table.get("fixed", {}):
        raise ValueError(f"key: the table holds {sorted(table.get('fixed', {}))}, got {key!r}")
    total = table["fixed"][key]
    for kind, alphas in zip(KINDS, (alphas_normal, alphas_reduce)):
        costs = table[kind][key]
        if not isinstance(alphas, torch.Tensor) or alphas.shape != costs.shape:
            raise ValueError(f"alphas_{kind}: must be a tensor [edges, candidates] "
                             f"{list(costs.shape)} like the table's, got "
                             f"{list(getattr(alphas, 'shape', [])) or type(alphas).__name__}")
        weights = F.softmax(alphas, dim=-1)
        total = total + (weights * costs.to(device=alphas.device, dtype=alphas.dtype)).sum()
    return total
