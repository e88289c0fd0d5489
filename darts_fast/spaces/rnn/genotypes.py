"""Candidate activations and cell genotypes of DARTS' recurrent search space.

A genotype names, for each node ``i = 1..len(recurrent)``, the pair ``(f, j)``: node ``i``
computes ``[c, h] = s_j @ W_i``, ``s_i = s_j + sigmoid(c) * (f(h) - s_j)`` from the state ``s_j``,
``j < i`` (``s_0`` is made from the input and the previous hidden state). The cell's output is the
mean of the states ``concat`` names. ``PRIMITIVES`` keeps the original column order of the alpha
matrix; the search cell has ``STEPS`` nodes and averages the last ``CONCAT`` states.
"""
import numbers
from collections import namedtuple

from ..genotype_text import GenotypeError, parse_spec

Genotype = namedtuple("Genotype", "recurrent concat")

PRIMITIVES = ["none", "tanh", "relu", "sigmoid", "identity"]
STEPS = 8
CONCAT = 8

# ENAS' cell (Pham et al. 2018) in this notation, as the DARTS authors transcribed it.
ENAS = Genotype(
    recurrent=[("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3),
               ("relu", 4), ("relu", 7), ("relu", 8), ("relu", 8), ("relu", 8)],
    concat=[2, 5, 6, 9, 10, 11],
)
# The cells published with DARTS (first- and second-order search on PTB).
DARTS_V1 = Genotype(
    recurrent=[("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1),
               ("relu", 5), ("relu", 1)],
    concat=[1, 2, 3, 4, 5, 6, 7, 8],
)
DARTS_V2 = Genotype(
    recurrent=[("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2),
               ("sigmoid", 5), ("tanh", 3), ("relu", 5)],
    concat=[1, 2, 3, 4, 5, 6, 7, 8],
)
DARTS = DARTS_V2

NAMED = {"DARTS": DARTS, "DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "ENAS": ENAS}

_ACTIVATIONS = [p for p in PRIMITIVES if p != "none"]


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def genotype_to_dict(genotype):
    """``{"recurrent": [[f, j], ...], "concat": [i, ...]}``: JSON-ready."""
    return {"recurrent": [[op, int(j)] for op, j in genotype.recurrent],
            "concat": [int(i) for i in genotype.concat]}


def genotype_text(genotype):
    """The original's Genotype(...) text, ready to paste into DARTS' ``rnn/genotypes.py``."""
    d = genotype_to_dict(genotype)
    return (f"Genotype(recurrent={[tuple(pair) for pair in d['recurrent']]}, "
            f"concat={d['concat']})")


def validate_genotype(genotype):
    """Refuse, naming the fault, a genotype that is not a recurrent cell: ``recurrent`` must be a
    non-empty sequence of ``(f, j)`` pairs, ``f`` an activation of ``PRIMITIVES`` other than
    ``none``, ``0 <= j < i`` for node ``i``; ``concat`` distinct states ``0..len(recurrent)``."""
    recurrent = genotype.recurrent
    if isinstance(recurrent, str) or not isinstance(recurrent, (list, tuple)) or not recurrent:
        raise GenotypeError(f"genotype recurrent must be a non-empty list of (activation, "
                            f"predecessor) pairs, one per node, got {recurrent!r}")
    for i, pair in enumerate(recurrent, start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                and _is_int(pair[1])):
            raise GenotypeError(f"genotype recurrent: node {i} must be an (activation, "
                                f"predecessor) pair such as ('tanh', 0), got {pair!r}")
        op, j = pair
        if op not in _ACTIVATIONS:
            raise GenotypeError(f"genotype recurrent: node {i} has unknown activation {op!r} "
                                f"(known: {', '.join(_ACTIVATIONS)})")
        if not 0 <= j < i:
            raise GenotypeError(f"genotype recurrent: node {i} takes state {j}, but only states "
                                f"0..{i - 1} exist before it")
    concat = genotype.concat
    if (not isinstance(concat, (list, tuple, range)) or not concat
            or not all(_is_int(k) for k in concat)):
        raise GenotypeError(f"genotype concat must be a non-empty list of state numbers, got "
                            f"{concat!r}")
    outside = [k for k in concat if not 0 <= k <= len(recurrent)]
    if outside:
        raise GenotypeError(f"genotype concat names states {outside}, but the cell has states "
                            f"0..{len(recurrent)}")
    if len(set(concat)) != len(concat):
        raise GenotypeError(f"genotype concat names a state twice: {list(concat)}")


def genotype_from_dict(d):
    """The genotype of ``{"recurrent": [[f, j], ...], "concat": [...]}``, validated; pairs
    become tuples and ``concat`` a list."""
    if not isinstance(d, dict):
        raise GenotypeError(f"a recurrent genotype must be an object with recurrent and concat; "
                            f"got {type(d).__name__}")
    missing = [k for k in Genotype._fields if k not in d]
    if missing:
        raise GenotypeError(f"genotype lacks {', '.join(missing)} (a recurrent genotype has "
                            f"recurrent and concat)")
    genotype = Genotype(recurrent=d["recurrent"], concat=d["concat"])
    validate_genotype(genotype)
    return Genotype(recurrent=[(op, int(j)) for op, j in genotype.recurrent],
                    concat=[int(k) for k in genotype.concat])


def parse_genotype(spec):
    """A genotype from a JSON file path, a known name (DARTS, DARTS_V1, DARTS_V2, ENAS), JSON
    text, or the text of the original's ``Genotype(recurrent=[...], concat=...)`` (``concat``
    may be ``range(a, b)``)."""
    return parse_spec(spec, NAMED, Genotype._fields, genotype_from_dict,
                      "Genotype(recurrent=[(activation, predecessor), ...], concat=[...])")


def genotype_rule(probs):
    """DARTS' recurrent genotype from ``probs`` [36, 5], the softmax of the alphas (rows: node
    ``i``'s predecessors ``0..i`` in turn; columns: ``PRIMITIVES``): per node the one predecessor
    whose strongest activation other than ``none`` is the strongest, with that activation; ties go
    to the lower predecessor and the earlier activation, as the authors' sort and loop give them.
    ``concat`` is the search cell's last ``CONCAT`` states, a ``range`` as in the original."""
    none = PRIMITIVES.index("none")
    keep = [k for k in range(len(PRIMITIVES)) if k != none]
    recurrent, start = [], 0
    for i in range(STEPS):
        rows = probs[start:start + i + 1, keep]
        j = int(rows.max(dim=1).values.argmax())  # argmax: the first of equal values
        recurrent.append((PRIMITIVES[keep[int(rows[j].argmax())]], j))
        start += i + 1
    return Genotype(recurrent=recurrent, concat=range(STEPS + 1)[-CONCAT:])
