"""The genes the search strategies of :mod:`darts_fast.search.evolution` edit, and what they share:
settings checks, scoring, and the plain values a checkpoint holds.

A gene is one ``(input, candidate)`` pair of a cell path (``spaces.cnn.paths``); pair ``n`` feeds
node ``n // 2 + 2`` and its sibling is pair ``n ^ 1``, the node's other pair. Every operator keeps
a node's two inputs distinct: an input is only ever drawn among the node's inputs other than the
sibling's.
"""
import math
import numbers

import numpy as np

from ..spaces.cnn.paths import Architecture, check_architecture, random_architecture


def mutate(arch, candidates, m_prob, rng):
    """SPOS' mutation on the DARTS genes: for each cell, for each pair ``n`` in order, with
    probability ``m_prob`` (``rng.random_sample() < m_prob``) the pair is redrawn: its input
    uniform over ``range(n // 2 + 2)`` less the sibling's input (the sibling's current one, so a
    sibling redrawn first counts with its new input), then its candidate uniform over
    ``candidates``. A redraw may give the pair back unchanged, as the authors' ``randint`` may."""
    cells = []
    for cell in arch:
        pairs = list(cell)
        for n in range(len(pairs)):
            if rng.random_sample() < m_prob:
                sibling = pairs[n ^ 1][0]
                inputs = [j for j in range(n // 2 + 2) if j != sibling]
                pairs[n] = (inputs[rng.randint(len(inputs))],
                            candidates[rng.randint(len(candidates))])
        cells.append(tuple(pairs))
    return Architecture(*cells)


def crossover(first, second, rng):
    """SPOS' crossover on the DARTS genes: for each cell, for each node in order, both pairs of
    the node from ``(first, second)[rng.randint(2)]`` (a node's inputs stay distinct)."""
    cells = []
    for a, b in zip(first, second):
        pairs = []
        for n in range(0, len(a), 2):
            pairs += (a, b)[rng.randint(2)][n:n + 2]
        cells.append(tuple(pairs))
    return Architecture(*cells)


def edits(arch, candidates):
    """The single edits of ``arch``: ``{kind: [(cell, n, alternatives), ...]}`` for the kinds
    ``"candidate"`` (pair ``n``'s candidate, any other of ``candidates``) and ``"input"`` (its
    input, any of the node's inputs but its own and the sibling's), listing only the positions
    with at least one alternative and only the kinds with at least one position."""
    found = {"candidate": [], "input": []}
    for c, cell in enumerate(arch):
        for n, (j, k) in enumerate(cell):
            others = [x for x in candidates if x != k]
            inputs = [i for i in range(n // 2 + 2) if i not in (j, cell[n ^ 1][0])]
            for kind, alternatives in (("candidate", others), ("input", inputs)):
                if alternatives:
                    found[kind].append((c, n, alternatives))
    return {kind: sites for kind, sites in found.items() if sites}


def edit(arch, candidates, rng):
    """Real et al.'s mutation on the DARTS genes, one change: the kind uniform over those
    :func:`edits` lists (``rng.randint``, in the order candidate, input), the position uniform
    over that kind's, the new value uniform over its alternatives."""
    sites = edits(arch, candidates)
    kinds = list(sites)
    kind = kinds[rng.randint(len(kinds))]
    c, n, alternatives = sites[kind][rng.randint(len(sites[kind]))]
    value = alternatives[rng.randint(len(alternatives))]
    j, k = arch[c][n]
    cell = list(arch[c])
    cell[n] = (j, value) if kind == "candidate" else (value, k)
    return Architecture(*(tuple(cell) if i == c else arch[i] for i in range(2)))


def integer(name, value, low):
    """``value`` as an int ``>= low``; a ValueError naming ``name`` otherwise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def arch_to_plain(arch):
    """An architecture as nested lists of ints (a JSON value)."""
    return [[[int(j), int(k)] for j, k in cell] for cell in arch]


def arch_from_plain(value):
    return Architecture(*(tuple((int(j), int(k)) for j, k in cell) for cell in value))


class Strategy:
    """What the strategies share: the space (``steps`` nodes, the allowed ``candidates``), the
    callbacks, the strategy's own ``numpy.random.RandomState(seed)``, the settings a checkpoint
    must agree with (all but ``length``, the one a resumed search may extend)."""

    name = None
    length = None

    def __init__(self, score, steps, candidates, sample, legal, seed, settings):
        self.steps = integer("steps", steps, 1)
        if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__iter__"):
            raise ValueError(f"candidates must be a sequence of candidate indices; "
                             f"got {candidates!r}")
        self.candidates = [integer("candidates", k, 0) for k in candidates]
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"candidates must be non-empty and distinct; got {candidates!r}")
        for what, f in (("score", score), ("sample", sample), ("legal", legal)):
            if not (callable(f) or (f is None and what != "score")):
                raise ValueError(f"{what} must be a callable; got {f!r}")
        if seed is not None:
            integer("seed", seed, 0)
        self._score, self._sample, self._legal = score, sample, legal
        self.rng = np.random.RandomState(seed)
        self.settings = dict(settings, steps=self.steps, candidates=list(self.candidates))

    def draw(self):
        """A random architecture: ``sample(rng)``, by default ``random_architecture``."""
        arch = (self._sample(self.rng) if self._sample is not None else
                random_architecture(self.steps, self.candidates, self.rng))
        return check_architecture(arch, self.steps, max(self.candidates) + 1, "sample(rng)")

    def draw_legal(self, wanted, tries, what):
        """``wanted`` random architectures within the budget, at most ``tries * wanted`` draws;
        a RuntimeError naming ``what`` when they fall short."""
        found = []
        for _ in range(tries * wanted):
            if len(found) == wanted:
                break
            arch = self.draw()
            if self.within_budget(arch):
                found.append(arch)
        if len(found) < wanted:
            raise RuntimeError(f"{what}: {len(found)} of {wanted} random architectures within "
                               f"the budget after {tries * wanted} draws")
        return found

    def within_budget(self, arch):
        return self._legal is None or bool(self._legal(arch))

    def evaluate(self, arch, **kwargs):
        value = float(self._score(arch, **kwargs))
        if math.isnan(value):
            raise ValueError(f"score returned NaN for {arch}")
        return value

    @staticmethod
    def top(scored):
        """The first of the best in ``scored``, a list of (architecture, score)."""
        if not scored:
            raise RuntimeError("no architecture has been scored yet: call step() first")
        return max(scored, key=lambda entry: entry[1])

    def _state(self, **values):
        name, keys, pos, has_gauss, gauss = self.rng.get_state()
        rng = {"bit_generator": name, "keys": [int(v) for v in keys], "pos": int(pos),
               "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
        return dict(values, strategy=self.name, settings=dict(self.settings), rng=rng)

    def _load(self, state):
        """Checks ``state`` against this search, restores the RNG, returns ``state``."""
        if state.get("strategy") != self.name:
            raise ValueError(f"state: a {state.get('strategy')!r} search's state, "
                             f"not {self.name!r}'s")
        for key, value in self.settings.items():
            if key != self.length and state["settings"].get(key) != value:
                raise ValueError(f"state: {key} was {state['settings'].get(key)!r} where this "
                                 f"search has {value!r}")
        rng = state["rng"]
        self.rng.set_state((rng["bit_generator"], np.array(rng["keys"], dtype=np.uint32),
                            rng["pos"], rng["has_gauss"], rng["cached_gaussian"]))
        return state
