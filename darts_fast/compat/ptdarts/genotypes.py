"""pt.darts' genotypes: its candidate order, its ``Genotype`` form and its rule for reading a cell
from the raw alphas; conversions to darts_fast's flat genotype.

pt.darts' ``Genotype.normal`` is a list of per-node lists of ``(op, j)`` pairs (two per node),
where darts_fast's (and the original DARTS') is one flat list of pairs; the concat fields are
``range(2, 2 + n_nodes)`` in both.
"""
import torch

from ...spaces.cnn import genotypes as flat
from ...spaces.genotype_text import GenotypeError, parse_spec

# The same fields as darts_fast's (and the original's); only the cells' form differs.
Genotype = flat.Genotype

# pt.darts' column order of every alpha matrix: DARTS' candidates with ``none`` moved last
# (``parse`` relies on it).
PRIMITIVES = [*(p for p in flat.PRIMITIVES if p != "none"), "none"]


def parse(alpha, k):
    """pt.darts' gene of one cell kind from its raw alphas (no softmax): per node (``alpha[i]``,
    [i + 2, len(PRIMITIVES)]), each edge j takes its strongest op other than ``none``,
    ``best_j = argmax_o alpha[i][j, o]`` over o < len(PRIMITIVES) - 1, scored by that alpha; the
    node keeps its ``k`` edges of highest score, strongest first: ``[(PRIMITIVES[best_j], j),
    ...]``. Ties go as ``torch.topk`` breaks them, as in pt.darts."""
    if PRIMITIVES[-1] != "none":
        raise ValueError("parse: PRIMITIVES must end with 'none'")
    gene = []
    for edges in alpha:
        if edges.dim() != 2 or edges.shape[1] != len(PRIMITIVES):
            raise ValueError(f"parse: every alpha must be [edges, {len(PRIMITIVES)}], got shape "
                             f"{tuple(edges.shape)}")
        edge_max, best = torch.topk(edges.detach()[:, :-1], 1)
        _, top_edges = torch.topk(edge_max.view(-1), k)
        gene.append([(PRIMITIVES[best[j].item()], j.item()) for j in top_edges])
    return gene


def from_str(s):
    """A ``Genotype`` from pt.darts' printed text, ``Genotype(normal=[[(op, j), ...], ...],
    normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))``, read as literals
    (pt.darts ``eval``\\ s it)."""
    def from_dict(d):
        missing = [f for f in Genotype._fields if f not in d]
        if missing:
            raise GenotypeError(f"from_str: the genotype lacks {', '.join(missing)}")
        try:
            return Genotype(normal=_gene(d["normal"]), normal_concat=_concat(d["normal_concat"]),
                            reduce=_gene(d["reduce"]), reduce_concat=_concat(d["reduce_concat"]))
        except (TypeError, ValueError) as e:
            raise GenotypeError(f"from_str: malformed pt.darts genotype: {e}") from None
    if not isinstance(s, str) or not s.strip().startswith("Genotype("):
        raise GenotypeError(f"from_str: s must be Genotype(...) text, got {s!r:.80}")
    return parse_spec(s, {}, Genotype._fields, from_dict,
                      "Genotype(normal=[[(op, j), ...], ...], normal_concat=range(2, 6), "
                      "reduce=[...], reduce_concat=range(2, 6))")


def _gene(nodes):
    return [[(str(op), int(j)) for op, j in node] for node in nodes]


def _concat(nodes):
    """pt.darts' ``range(a, b)`` where the text's (parsed as a list) is one."""
    nodes = [int(i) for i in nodes]
    consecutive = nodes and nodes == list(range(nodes[0], nodes[-1] + 1))
    return range(nodes[0], nodes[-1] + 1) if consecutive else nodes


def to_darts_fast(genotype):
    """darts_fast's (the original DARTS') flat ``Genotype`` of a pt.darts one, validated: what
    ``darts-fast train --genotype`` takes (``genotype_text`` of it, or the JSON of
    ``genotype_to_dict``)."""
    converted = flat.Genotype(
        normal=[tuple(edge) for node in genotype.normal for edge in node],
        normal_concat=list(genotype.normal_concat),
        reduce=[tuple(edge) for node in genotype.reduce for edge in node],
        reduce_concat=list(genotype.reduce_concat),
    )
    flat.validate_genotype(converted)
    return converted


def from_darts_fast(genotype):
    """pt.darts' nested ``Genotype`` of a darts_fast (original DARTS) flat one: two edges per
    node."""
    flat.validate_genotype(genotype)

    def nest(edges):
        return [list(edges[i:i + 2]) for i in range(0, len(edges), 2)]
    return Genotype(normal=nest(genotype.normal), normal_concat=_concat(genotype.normal_concat),
                    reduce=nest(genotype.reduce), reduce_concat=_concat(genotype.reduce_concat))
