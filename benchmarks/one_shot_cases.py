"""The one-shot cases of ``one_shot.py``: each builds its network, optimizer and batches, and
returns a zero-argument function that runs one iteration (synchronising the device itself).

The formulations darts_fast is measured against are written here over the original DARTS
network's modules (``darts_fast.reference.Network``; the same seed gives it the same weights
as darts_fast's networks):

  * ``masked_all``: randomNAS' port, which sets DARTS' alphas to the one-hot of the path: every
    candidate of every edge computed and weighted by the mask (1 for the path's (edge,
    candidate), 0 elsewhere, the edges the path does not take all 0), no softmax;
  * ``stacked``: NNI's edge, ``torch.stack([op(x) for op in ops])`` times the mask, summed over
    the candidates;
  * ProxylessNAS' ``MixedEdge`` in its two-path mode (``proxyless_step``).
"""
import contextlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from cases import ETA, step_batches, synchronized

from darts_fast import reference
from darts_fast.methods.proxyless import ProxylessArchitect, ProxylessNetwork
from darts_fast.search.evolution import SPOSEvolution
from darts_fast.search.path_score import PathScorer
from darts_fast.search.step import SearchStep
from darts_fast.spaces.cnn.architecture import cell_edges, edge_count
from darts_fast.spaces.cnn.genotypes import PRIMITIVES
from darts_fast.spaces.cnn.paths import random_architecture
from darts_fast.spaces.cnn.single_path import SinglePathNetwork

STEPS = 4
# The candidates a path is drawn from: every one but ``none`` (SinglePathNetwork's default).
DRAWN = [k for k, name in enumerate(PRIMITIVES) if name != "none"]
# The weights' SGD (DARTS' search settings) and ProxylessNAS' architecture settings.
MOMENTUM, WEIGHT_DECAY = 0.9, 3e-4
PROXYLESS_ARGS = type("Args", (), dict(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                                       arch_learning_rate=1e-3, arch_weight_decay=0.0))()


def run_cells(net, input, edge):
    """The reference network's forward pass with ``edge(cell, e, h)`` as the output of the
    cell's edge ``e`` (alphas' row order) on the state ``h``."""
    s0 = s1 = net.stem(input)
    for cell in net.cells:
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for _ in range(cell._steps):
            s = sum(edge(cell, offset + j, h) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        s0, s1 = s1, torch.cat(states[-cell._multiplier:], dim=1)
    out = net.global_pooling(s1)
    return net.classifier(out.view(out.size(0), -1))


def one_hot(cell_path, steps, like):
    """The path of one cell kind as DARTS' weights [edges, candidates]: 1 per (edge, candidate)
    pair of the path (2 for a pair taken twice), 0 elsewhere; ``like``'s device and dtype."""
    mask = torch.zeros(edge_count(steps), len(PRIMITIVES), dtype=like.dtype)
    row = {edge: e for e, edge in enumerate(cell_edges(steps))}
    for n, (j, k) in enumerate(cell_path):
        mask[row[(j, n // 2 + 2)], k] += 1
    return mask.to(like.device)


class MaskedNetwork(reference.Network):
    """The reference network computing the path of ``use_path`` (the interface of
    ``SinglePathNetwork``, so that ``PathScorer`` scores either) with every candidate: each
    edge the authors' ``MixedOp`` (``sum(w * op(x))``) under the one-hot weights, or with
    ``stacked`` NNI's stack-and-sum. The masks are made once per path, as randomNAS sets its
    alphas once per architecture."""

    def __init__(self, *args, stacked=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.stacked = stacked
        self.masks = None

    @contextlib.contextmanager
    def use_path(self, architecture):
        saved = self.masks
        self.masks = [one_hot(cell, self._steps, self.alphas_normal) for cell in architecture]
        try:
            yield self
        finally:
            self.masks = saved

    def forward(self, input):
        return self.masked_forward(input, *self.masks)

    def masked_forward(self, input, mask_normal, mask_reduce):
        def edge(cell, e, h):
            mask = (mask_reduce if cell.reduction else mask_normal)[e]
            if not self.stacked:
                return cell._ops[e](h, mask)
            out = torch.stack([op(h) for op in cell._ops[e]._ops])
            return (out * mask.view(-1, *[1] * h.dim())).sum(0)

        return run_cells(self, input, edge)


def _network(cls, config, device, **options):
    torch.manual_seed(0)
    model = cls(config["C"], 10, config["layers"], nn.CrossEntropyLoss(), **options)
    return model.to(device, getattr(torch, config.get("dtype", "float32")))


def _batches(config, device, dtype):
    x, y, xv, yv = step_batches(device, config["batch"], config.get("image", 32))
    return x.to(dtype), y, xv.to(dtype), yv


def single_path_step(impl, device, config):
    """One weight step on one random path (a fresh one per call, from a seeded generator, so
    every impl runs the same paths): forward, backward, gradient clipping at 5, SGD (momentum
    0.9, weight decay 3e-4). ``fused``: SinglePathNetwork, its sampler drawing the path, through
    ``SearchStep(model, None, ...)``; ``masked_all``, ``compiled_masked_all`` (torch.compile of
    its forward pass, the masks as its inputs) and ``stacked``: MaskedNetwork, the optimizer
    over every weight (the masked candidates get zero gradients, so weight decay and momentum
    move them as in randomNAS). Returns the step's loss."""
    rng = np.random.RandomState(0)

    def draw():
        return random_architecture(STEPS, DRAWN, rng)

    if impl == "fused":
        model = _network(SinglePathNetwork, config, device, sampler=draw)
    else:
        model = _network(MaskedNetwork, config, device, stacked=impl == "stacked")
        if impl == "compiled_masked_all":
            model.masked_forward = torch.compile(model.masked_forward)
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    x, y, xv, yv = _batches(config, device, model.alphas_normal.dtype)
    if impl == "fused":
        search = SearchStep(model, None, optimizer, grad_clip=5)

        def body():
            return search(x, y, xv, yv, ETA)[0]
    else:
        def body():
            with model.use_path(draw()):
                optimizer.zero_grad()
                loss = model._loss(x, y)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5)
                optimizer.step()
            return loss.detach()

    return synchronized(body, device)


class GatedNetwork(reference.Network):
    """The reference network with ProxylessNAS' ``MixedEdge`` in "two" mode on every edge:
    ``g_a o_a(x) + g_b o_b(x).detach()`` over the edge's pair (active ``a``, inactive ``b``),
    the other candidates not computed; ``gates``: a binary leaf tensor [edges, candidates] per
    cell kind, all the cells of a kind sharing it, as the alphas."""

    draws = gates = None

    def forward(self, input):
        def edge(cell, e, h):
            (active, inactive), g = self.draws[cell.reduction], self.gates[cell.reduction]
            ops = cell._ops[e]._ops
            a, b = active[e], inactive[e]
            return g[e, a] * ops[a](h) + g[e, b] * ops[b](h).detach()

        return run_cells(self, input, edge)


def authors_architecture_step(model, optimizer, batch):
    """ProxylessNAS' ``gradient_step`` in "two" mode: per edge two candidates drawn from
    softmax(alpha) without replacement, the active one from the pair's softmax (``binarize``);
    the forward pass with binary gate leaves, ``zero_grad`` and ``loss.backward()`` (the weights'
    gradients too, as the authors' step computes them); the alphas' gradient from the gates',
    d alpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the pair, edge by edge
    (``set_arch_param_grad``); Adam; the pair shifted back to its log-sum-exp
    (``rescale_updated_arch_param``). Returns the loss."""
    alphas = model.arch_parameters()
    draws, gates, pairs = [], [], []
    with torch.no_grad():
        for a in alphas:
            pair = torch.multinomial(F.softmax(a, dim=-1), 2)
            chosen = torch.multinomial(F.softmax(a.gather(1, pair), dim=-1), 1)
            active, inactive = pair.gather(1, chosen), pair.gather(1, 1 - chosen)
            gates.append(torch.zeros_like(a).scatter_(1, active, 1.0).requires_grad_())
            draws.append((active.view(-1).tolist(), inactive.view(-1).tolist()))
            pairs.append(pair.tolist())
    model.draws, model.gates = draws, gates
    model.zero_grad()
    loss = model._loss(*batch)
    loss.backward()
    before = []
    with torch.no_grad():
        for a, g, kind_pairs in zip(alphas, gates, pairs):
            a.grad = torch.zeros_like(a)
            for e, involved in enumerate(kind_pairs):
                probs = F.softmax(a[e, involved], dim=0)
                for i in range(2):
                    for j in range(2):
                        a.grad[e, involved[i]] += g.grad[e, involved[j]] * probs[j] * (
                            float(i == j) - probs[i])
            before.append(a.clone())
    optimizer.step()
    with torch.no_grad():
        for a, old, kind_pairs in zip(alphas, before, pairs):
            for e, involved in enumerate(kind_pairs):
                offset = torch.log(a[e, involved].exp().sum() / old[e, involved].exp().sum())
                a[e, involved] -= offset
    return loss.detach()


def proxyless_step(impl, device, config):
    """One ProxylessNAS architecture step on the validation batch, the alphas set to N(0, 1)
    draws so that the pairs vary: ``fused``: ProxylessArchitect's
    ``step_batches`` on ProxylessNetwork (the pair in the fused op, the inactive one with gate
    0); ``reference``: ``authors_architecture_step`` on GatedNetwork, Adam with the same
    settings (lr 1e-3, betas (0, 0.999), no weight decay). The same seed gives both the same
    draws. Returns the alphas after the step, both kinds."""
    fused = impl == "fused"
    model = _network(ProxylessNetwork if fused else GatedNetwork, config, device)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    optimizer = torch.optim.SGD(model.parameters(), ETA, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    x, y, xv, yv = _batches(config, device, model.alphas_normal.dtype)
    if fused:
        architect = ProxylessArchitect(model, PROXYLESS_ARGS)

        def body():
            architect.step_batches((x, y), (xv, yv), ETA, optimizer, unrolled=False)
            return torch.cat([a.detach() for a in model.arch_parameters()])
    else:
        adam = torch.optim.Adam(model.arch_parameters(), PROXYLESS_ARGS.arch_learning_rate,
                                betas=(0.0, 0.999), weight_decay=0.0)

        def body():
            authors_architecture_step(model, adam, (xv, yv))
            return torch.cat([a.detach() for a in model.arch_parameters()])

    return synchronized(body, device)


def evolution_generation(impl, device, config):
    """One generation of SPOS' evolution: ``population`` random paths scored by ``PathScorer``
    (the BatchNorm statistics recalibrated on ``recalibration`` training batches, then top-1 on
    ``validation`` batches), on a trained-as-built supernet: ``fused``: SinglePathNetwork;
    ``masked``: MaskedNetwork (every candidate computed under the one-hot weights). The n-th
    call runs the evolution of seed n, so the impls score the same paths. Returns the best
    score."""
    evo = config["evolution"]
    model = _network(SinglePathNetwork if impl == "fused" else MaskedNetwork, evo, device)
    dtype = model.alphas_normal.dtype
    g = torch.Generator().manual_seed(2)

    def batches(count):
        return [(torch.randn(evo["batch"], 3, evo.get("image", 32), evo.get("image", 32),
                             generator=g).to(device, dtype),
                 torch.randint(0, 10, (evo["batch"],), generator=g).to(device))
                for _ in range(count)]

    train, valid = batches(evo["recalibration"]), batches(evo["validation"])
    scorer = PathScorer(model, lambda: train, recalibration=evo["recalibration"])
    seeds = iter(range(10**6))

    def body():
        search = SPOSEvolution(lambda arch: scorer(arch, valid), STEPS, DRAWN,
                               seed=next(seeds), population=evo["population"], generations=1,
                               mutations=evo["population"] // 2,
                               crossovers=evo["population"] // 2)
        return torch.tensor(search.step()["best"])

    return synchronized(body, device)
