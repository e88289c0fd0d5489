"""One discrete architecture of the cell space, as the single-path methods sample, mutate and
score it on the supernet (SPOS, random search with weight sharing, evolution, ENAS).

A cell is a ``CellPath``: for each of its ``steps`` nodes, in order, two ``(input, candidate)``
pairs, ``input`` a node number below the node's own (0 and 1 are the cell's inputs) and
``candidate`` a column of the alphas (an index into the space's candidate names). An
``Architecture`` is ``(normal, reduce)``, one path per cell kind, as randomNAS writes it: a
genotype with indices for names. randomNAS' draws and the mutations take two different inputs
per node; a node may also take two candidates of one input (GDAS' rule can) or one pair twice
(ENAS' controller draws the two inputs independently; the node then sums the pair's output
twice, as the authors' cell does).
"""
from typing import NamedTuple, Tuple

from .architecture import cell_edges
from .genotypes import Genotype

CellPath = Tuple[Tuple[int, int], ...]


class Architecture(NamedTuple):
    normal: CellPath
    reduce: CellPath


def random_architecture(steps, candidates, rng):
    """randomNAS' ``sample_arch``: per node, four candidates drawn with replacement from
    ``candidates`` (the normal cell's two, then the reduction cell's), then the normal cell's two
    inputs and the reduction cell's two, each pair without replacement among the node's inputs.
    ``rng``: ``numpy.random`` or a ``numpy.random.RandomState`` (its ``choice``)."""
    candidates = list(candidates)
    normal, reduce = [], []
    for i in range(steps):
        ops = rng.choice(len(candidates), 4)
        inputs_normal = rng.choice(i + 2, 2, replace=False)
        inputs_reduce = rng.choice(i + 2, 2, replace=False)
        normal += [(int(inputs_normal[0]), candidates[ops[0]]),
                   (int(inputs_normal[1]), candidates[ops[1]])]
        reduce += [(int(inputs_reduce[0]), candidates[ops[2]]),
                   (int(inputs_reduce[1]), candidates[ops[3]])]
    return Architecture(tuple(normal), tuple(reduce))


def check_architecture(architecture, steps, num_candidates, what="architecture"):
    """``architecture`` as an ``Architecture`` of int pairs; a ValueError naming ``what`` and the
    faulty pair otherwise."""
    if not (isinstance(architecture, (tuple, list)) and len(architecture) == 2):
        raise ValueError(f"{what} must be (normal, reduce), two cell paths; got {architecture!r}")
    cells = []
    for kind, cell in zip(("normal", "reduce"), architecture):
        if not (isinstance(cell, (tuple, list)) and len(cell) == 2 * steps):
            raise ValueError(f"{what}: the {kind} cell must hold {2 * steps} (input, candidate) "
                             f"pairs, two per node; got {cell!r}")
        pairs = []
        for n, pair in enumerate(cell):
            node = n // 2 + 2
            ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in pair)
            if not ok or not (0 <= pair[0] < node and 0 <= pair[1] < num_candidates):
                raise ValueError(f"{what}: the {kind} cell's pair {n} must be (input, candidate) "
                                 f"with input in [0, {node}) and candidate in "
                                 f"[0, {num_candidates}); got {pair!r}")
            pairs.append((pair[0], pair[1]))
        cells.append(tuple(pairs))
    return Architecture(*cells)


def cell_active(cell, steps):
    """The candidates each edge of the cell runs, in the alphas' row order: ``()`` for an edge
    the path does not take (the cell skips it), the distinct candidates of its pairs for the
    others; and the pairs that repeat, ``[(edge row, candidate)]`` (weight 2, not 1)."""
    edges = cell_edges(steps)
    row = {edge: e for e, edge in enumerate(edges)}
    active, repeated = [[] for _ in edges], []
    for n, (j, k) in enumerate(cell):
        e = row[(j, n // 2 + 2)]
        if k in active[e]:
            repeated.append((e, k))
        else:
            active[e].append(k)
    return [tuple(a) for a in active], repeated


def to_genotype(architecture, candidates, steps, multiplier=4):
    """The genotype of ``architecture`` (``candidates``: the column names)."""
    concat = list(range(2 + steps - multiplier, steps + 2))
    normal, reduce = ([(candidates[k], j) for j, k in cell] for cell in architecture)
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def from_genotype(genotype, candidates, steps):
    """The path of a genotype over ``candidates``; a ValueError for a name they lack or a cell of
    another size."""
    index = {name: k for k, name in enumerate(candidates)}
    cells = []
    for kind, cell in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        missing = sorted({name for name, _ in cell if name not in index})
        if missing:
            raise ValueError(f"genotype: the {kind} cell names {', '.join(missing)}, which the "
                             f"search space lacks (it has {', '.join(candidates)})")
        cells.append(tuple((int(j), index[name]) for name, j in cell))
    return check_architecture(cells, steps, len(candidates), "genotype")
