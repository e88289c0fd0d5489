"""Candidate operations and cell genotypes of the DARTS CNN search space.

``PRIMITIVES`` keeps the original column order of every alpha matrix.
"""
from collections import namedtuple

from ..genotype_text import GenotypeError, parse_spec
from .operations import OPS

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

# The cells published with DARTS (first- and second-order search on CIFAR-10).
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS = DARTS_V2

NAMED = {"DARTS": DARTS, "DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2}


def genotype_to_dict(genotype):
    return {
        "normal": [[op, int(j)] for op, j in genotype.normal],
        "normal_concat": [int(i) for i in genotype.normal_concat],
        "reduce": [[op, int(j)] for op, j in genotype.reduce],
        "reduce_concat": [int(i) for i in genotype.reduce_concat],
    }


def genotype_text(genotype):
    """The original's Genotype(...) text, ready to paste into DARTS' genotypes.py."""
    d = genotype_to_dict(genotype)
    parts = [f"{key}={[tuple(e) for e in d[key]] if key in ('normal', 'reduce') else d[key]}"
             for key in ("normal", "normal_concat", "reduce", "reduce_concat")]
    return "Genotype(" + ", ".join(parts) + ")"


def genotype_from_dict(d):
    if not isinstance(d, dict):
        raise GenotypeError(f"a genotype must be an object with normal, normal_concat, reduce, "
                            f"reduce_concat; got {type(d).__name__}")
    missing = [k for k in Genotype._fields if k not in d]
    if missing:
        raise GenotypeError(f"genotype lacks {', '.join(missing)}")
    try:
        genotype = Genotype(
            normal=[(str(op), int(j)) for op, j in d["normal"]],
            normal_concat=[int(i) for i in d["normal_concat"]],
            reduce=[(str(op), int(j)) for op, j in d["reduce"]],
            reduce_concat=[int(i) for i in d["reduce_concat"]],
        )
    except (TypeError, ValueError) as e:
        raise GenotypeError(f"genotype is malformed: {e}; expected lists of [op, input] pairs and "
                            f"lists of node numbers") from None
    validate_genotype(genotype)
    return genotype


def check_primitives(primitives, who):
    """``primitives`` as a tuple, refused unless it holds known, distinct candidate names, one at
    least besides ``none`` (``who`` names the caller in the message)."""
    if isinstance(primitives, str) or not all(isinstance(p, str) for p in primitives):
        raise ValueError(f"{who}: primitives must be a sequence of candidate names, got "
                         f"{primitives!r}")
    primitives = tuple(primitives)
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"{who}: primitives holds unknown candidates {', '.join(unknown)} "
                         f"(known: {', '.join(OPS)}; add one with "
                         f"operations.register_candidate)")
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"{who}: primitives names a candidate twice: {', '.join(primitives)}")
    if not [p for p in primitives if p != "none"]:
        raise ValueError(f"{who}: primitives must name at least one operation besides 'none'")
    return primitives


def validate_genotype(genotype):
    for kind in ("normal", "reduce"):
        edges = getattr(genotype, kind)
        if not edges or len(edges) % 2:
            raise GenotypeError(f"genotype {kind} must hold two (op, input) pairs per node, "
                                f"got {len(edges)} pairs")
        for n, (op, j) in enumerate(edges):
            node = n // 2
            # 'none' (a zero branch) is the original's too: random search with weight sharing
            # draws it.
            if op not in OPS:
                known = ", ".join(OPS)
                raise GenotypeError(f"genotype {kind}: unknown operation {op!r} (known: {known})")
            if not 0 <= j < node + 2:
                raise GenotypeError(f"genotype {kind}: node {node} takes input {j}, but only "
                                    f"states 0..{node + 1} exist before it")
        concat = getattr(genotype, kind + "_concat")
        steps = len(edges) // 2
        # The cell's inputs are not among its outputs: in a reduction cell they have twice the
        # resolution of the nodes, and the original never concatenates them.
        if not concat or any(not 2 <= i < steps + 2 for i in concat):
            raise GenotypeError(f"genotype {kind}_concat must name intermediate nodes "
                                f"2..{steps + 1}, got {list(concat)}")


def parse_genotype(spec):
    """A genotype from a JSON file path, a known name (DARTS, DARTS_V1, DARTS_V2), JSON text or
    the text of the original's ``Genotype(normal=[...], normal_concat=..., reduce=[...],
    reduce_concat=...)``."""
    return parse_spec(spec, NAMED, Genotype._fields, genotype_from_dict,
                      "Genotype(normal=[(op, input), ...], normal_concat=[...], reduce=[...], "
                      "reduce_concat=[...])")
