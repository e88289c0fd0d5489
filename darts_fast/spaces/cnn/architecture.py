r"""How the cell search space describes an architecture, apart from any method.

A cell of ``steps`` nodes has ``sum_{i<steps} (2 + i)`` edges: node ``i`` (numbered from 2, the
cell's two inputs being 0 and 1) takes one edge from each earlier node. Each edge holds one mixed
op over ``candidates`` (the column names of its table). A method turns its architecture
parameters into a ``CellArchitecture`` per cell kind (what the cells compute with) and an
``ArchitectureTable`` per cell kind (what the genotype rule, the alphas files, the pictures and
TensorBoard read); nothing downstream reads a method's parameters by name.

The genotype rules map a table to the discrete cell: ``darts_rule`` (DARTS, PC-DARTS) and
``pairs_rule`` (GDAS).
"""
from typing import NamedTuple, Optional, Sequence

import torch


class CellArchitecture(NamedTuple):
    r"""What a cell computes its edges with. Edge ``e`` from state :math:`h` gives

    .. math:: s_e\,\sum_{k \in A_e} w_{e,k}\, o_k(h)

    with ``weights`` :math:`w` [edges, candidates], ``edge_scale`` :math:`s` [edges] (PC-DARTS'
    edge normalisation; 1 when None) and ``active`` :math:`A_e` (the candidates edge ``e`` runs,
    as Python ints: one for GDAS' sampled edge; none for an edge a single path leaves out, which
    is then not computed; every candidate when None)."""

    weights: torch.Tensor
    edge_scale: Optional[torch.Tensor] = None
    active: Optional[Sequence[Sequence[int]]] = None


class ArchitectureTable(NamedTuple):
    """One cell kind's architecture as the outputs show it: ``weights`` [edges, candidates] (the
    candidate weights, e.g. softmax of the alphas, on the CPU), ``edge_scale`` [edges] or None,
    ``edges`` the (from node, to node) pair of each row, ``candidates`` the column names."""

    name: str
    weights: torch.Tensor
    edge_scale: Optional[torch.Tensor]
    edges: tuple
    candidates: tuple

    def ranking(self):
        """The weights a genotype rule ranks: each row times its edge's scale."""
        if self.edge_scale is None:
            return self.weights
        return self.weights * self.edge_scale[:, None]


def cell_edges(steps):
    """The (from node, to node) pair of each edge, in the order of the alphas' rows."""
    return tuple((j, i + 2) for i in range(steps) for j in range(i + 2))


def edge_count(steps):
    return len(cell_edges(steps))


def darts_rule(weights, candidates, steps):
    """DARTS' rule: per node, the 2 incoming edges whose strongest non-``none`` candidate weighs
    most (ties to the lower input), each with that candidate (ties to the lower column)."""
    allowed = [k for k, name in enumerate(candidates) if name != "none"]
    gene, start = [], 0
    for node in range(steps):
        rows = weights[start:start + node + 2]
        best = [max(allowed, key=lambda k, row=row: (row[k], -k)) for row in rows]
        inputs = sorted(range(node + 2), key=lambda j: -rows[j][best[j]])[:2]
        gene += [(candidates[best[j]], j) for j in inputs]
        start += node + 2
    return gene


def pairs_rule(weights, candidates, steps):
    """GDAS' rule: per node, every (candidate, input) pair over the non-``none`` candidates of its
    incoming edges, ranked by weight (ties keep the order of inputs, then candidates); the two
    strongest are kept, possibly from one input."""
    allowed = [k for k, name in enumerate(candidates) if name != "none"]
    gene, start = [], 0
    for node in range(steps):
        pairs = [(candidates[k], j, weights[start + j][k])
                 for j in range(node + 2) for k in allowed]
        gene += [(name, j) for name, j, _ in sorted(pairs, key=lambda p: -p[2])[:2]]
        start += node + 2
    return gene
