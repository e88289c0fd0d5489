"""DARTS' supernet run one path at a time: the weight-sharing network of the single-path methods
(SPOS, random search with weight sharing, ENAS, and the evolutions that score its paths).

The modules, parameter names and initialisation are ``Network``'s (a state_dict loads into
either); a forward pass computes one ``paths.Architecture``: each node's two ``(input,
candidate)`` pairs, every other edge and candidate left out, not computed and not in the graph.
So a weight step gives gradients to the sampled candidates alone, and the optimizer leaves the
others as they are (PyTorch's SGD skips parameters without a gradient: no momentum, no weight
decay; as SPOS' authors arrange by setting those gradients to None). A sampled edge runs its
candidate through the fused op with weight 1: ``o_k(x)`` exactly, the BatchNorm folded.

The path of a forward pass is ``path`` when set (``use_path``: scoring one architecture), else
one drawn from ``sampler`` (a callable returning an Architecture: a method's distribution, ENAS'
controller). The default sampler is ``random_path``: randomNAS' uniform draw (``paths.
random_architecture``) from numpy's global generator, over the candidates other than ``none``
(SPOS: every choice computes something) or, with ``sample_none``, over every column (randomNAS
draws ``none`` too).
The network's alphas exist, as ``Network``'s, for its state_dict and initialisation to stay the
original's; no single-path method reads them.
"""
import contextlib

import numpy as np
import torch

from .architecture import CellArchitecture, edge_count
from .network import Network
from .paths import cell_active, check_architecture, random_architecture


class SinglePathNetwork(Network):
    # A path is Python on the host: each step's graph differs.
    capturable = False

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, sampler=None, sample_none=False, **options):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         **options)
        if options.get("auxiliary_skip"):
            raise ValueError("SinglePathNetwork: auxiliary_skip weights every candidate; a "
                             "single path has none to weigh")
        self.sampler = sampler or self.random_path
        self.sample_none = sample_none
        self.drawn = [k for k, name in enumerate(self._primitives)
                      if sample_none or name != "none"]
        if not self.drawn:
            raise ValueError("SinglePathNetwork: the candidates hold nothing but 'none' to draw")
        self.path = None
        self._active = None
        # The weight of a sampled candidate: 1, a buffer so that it follows .to() and dtype.
        self.register_buffer("_ones", torch.ones(edge_count(steps), len(self._primitives)),
                             persistent=False)

    def new(self):
        model_new = super().new()
        model_new.sample_none, model_new.drawn = self.sample_none, self.drawn
        if self.sampler != self.random_path:
            model_new.sampler = self.sampler
        return model_new

    def random_path(self):
        return random_architecture(self._steps, self.drawn, np.random)

    @contextlib.contextmanager
    def use_path(self, architecture):
        """Every forward pass inside computes ``architecture``."""
        saved = self.path
        self.path = check_architecture(architecture, self._steps, len(self._primitives))
        try:
            yield self
        finally:
            self.path = saved

    def forward(self, input):
        path = self.path
        if path is None:
            path = check_architecture(self.sampler(), self._steps, len(self._primitives),
                                      "the sampler's architecture")
        self._active = []
        for cell in path:
            active, repeated = cell_active(cell, self._steps)
            weights = self._ones
            if repeated:  # a pair taken twice by its node: its output counts twice
                weights = self._ones.clone()
                for e, k in repeated:
                    weights[e, k] += 1
            self._active.append((weights, active))
        try:
            return super().forward(input)
        finally:
            self._active = None

    def cell_architecture(self, reduction):
        weights, active = self._active[int(reduction)]
        return CellArchitecture(weights, active=active)
