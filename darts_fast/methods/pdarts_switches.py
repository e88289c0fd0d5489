r"""P-DARTS' search space approximation on switch tables: which candidates each edge keeps after
a stage, the final cell, and the cells under a cap on the skip-connections.

``switches`` [edges][candidates]: ``switches[e][k]`` is True where edge ``e`` keeps
``candidates[k]``; ``probs`` [edges][kept]: per edge the softmax of its alphas, one column per
kept candidate in ``candidates`` order (the network's alphas give them). With
:math:`p_{e,c}` that table:

* after a stage, edge ``e`` drops its ``num_to_drop`` smallest :math:`p_{e,c}` (ties: the lower
  column); after the last stage ``none``, where kept, goes first;
* the final cell keeps, on edge ``e``, :math:`c_e = \arg\max_{c \ne \text{none}} p_{e,c}` (ties:
  the later column), and per node the two inputs :math:`j` with the largest
  :math:`p_{e_j, c_{e_j}}` (ties: the later input);
* the skip cap, for each cap from ``max_skips`` down to 0 that the normal cell exceeds, zeroes
  the :math:`p` of its weakest skip-connection (ties: the lower edge) and rebuilds the final
  cell from the last stage's switches, until the cell is within the cap.

On probability rows (entries in [0, 1], at most one equal to 1) these are the authors' results
(chenxin061/pdarts ``train_search.py``: ``get_min_k``, ``get_min_k_no_zero``, the final ranking,
``delete_min_sk_prob``, ``keep_1_on``, ``keep_2_branches``), ties included; the authors write the
ranking for 4 nodes, here any ``steps``.
"""
from ..spaces.cnn.genotypes import PRIMITIVES, Genotype

# Candidates each edge drops after each stage: 8 -> 5 -> 3 -> 1 (the last in the final cell).
NUM_TO_DROP = (3, 2, 2)


def check_switches(switches, edges, candidates, name):
    """``switches`` as lists of bools: ``edges`` rows of ``len(candidates)``, each keeping the
    same number of candidates, one at least (None: every candidate on every edge)."""
    if switches is None:
        return [[True] * len(candidates) for _ in range(edges)]
    rows = [list(row) for row in switches]
    if (len(rows) != edges or any(len(row) != len(candidates) for row in rows)
            or any(not isinstance(on, bool) for row in rows for on in row)):
        raise ValueError(f"{name}: expected {edges} rows of {len(candidates)} bools (one per "
                         f"candidate of {', '.join(candidates)}), got {switches!r}")
    kept = {sum(row) for row in rows}
    if len(kept) != 1 or 0 in kept:
        raise ValueError(f"{name}: every edge must keep the same number of candidates, one at "
                         f"least (one alpha column each); got {sorted(sum(r) for r in rows)}")
    return rows


def _kept(row):
    return [k for k, on in enumerate(row) if on]


def drop_candidates(switches, probs, num_to_drop, last_stage, candidates=PRIMITIVES):
    """The switches after a stage: each edge without its ``num_to_drop`` weakest candidates."""
    out = []
    for row, p in zip(switches, probs):
        kept = _kept(row)
        if not 1 <= num_to_drop < len(kept):
            raise ValueError(f"drop_candidates: num_to_drop must be in [1, {len(kept)}) for "
                             f"edges keeping {len(kept)} candidates, got {num_to_drop}")
        order = sorted(range(len(kept)), key=lambda c: (p[c], c))
        if last_stage:
            order.sort(key=lambda c: candidates[kept[c]] != "none")  # stable: none first
        dropped = {kept[c] for c in order[:num_to_drop]}
        out.append([on and k not in dropped for k, on in enumerate(row)])
    return out


def _strongest(row, p, candidates):
    """(column, weight) of the edge's strongest kept candidate other than ``none`` (ties: the
    later), or None."""
    best = None
    for c, k in enumerate(_kept(row)):
        if candidates[k] != "none" and (best is None or p[c] >= best[1]):
            best = (k, p[c])
    return best


def final_switches(switches, probs, candidates=PRIMITIVES, steps=4):
    """The switches of the final cell from the last stage's ``switches`` and ``probs``: one
    candidate on two edges per node, the rest off."""
    best = [_strongest(row, p, candidates) for row, p in zip(switches, probs)]
    out = [[False] * len(row) for row in switches]
    start = 0
    for node in range(steps):
        inputs = [j for j in range(node + 2) if best[start + j] is not None]
        for j in sorted(inputs, key=lambda j: (best[start + j][1], j))[-2:]:
            out[start + j][best[start + j][0]] = True
        start += node + 2
    return out


def cell_genes(switches, candidates=PRIMITIVES, steps=4):
    """The genotype's list of a cell: per node, its inputs in order, each with every candidate
    its edge keeps (the authors' ``parse_network``)."""
    genes, start = [], 0
    for node in range(steps):
        genes += [(candidates[k], j) for j in range(node + 2)
                  for k in _kept(switches[start + j])]
        start += node + 2
    return genes


def switches_genotype(normal, reduce, candidates=PRIMITIVES, steps=4, multiplier=4):
    concat = range(2 + steps - multiplier, steps + 2)
    return Genotype(normal=cell_genes(normal, candidates, steps), normal_concat=concat,
                    reduce=cell_genes(reduce, candidates, steps), reduce_concat=concat)


def final_rule(weights, candidates, steps):
    """The last stage's genotype rule on a table ``weights`` [edges, candidates] holding every
    column (0 for the switched-off candidates, which a kept candidate's positive softmax weight
    always beats): the final cell's genes."""
    every = [[True] * len(candidates) for _ in weights]
    return cell_genes(final_switches(every, weights, candidates, steps), candidates, steps)


def skip_capped_genotypes(switches_normal, switches_reduce, probs_normal, probs_reduce,
                          candidates=PRIMITIVES, steps=4, multiplier=4, max_skips=8):
    """``[(cap, genotype)]``, one per cap from ``max_skips`` down to 0 that the normal cell,
    as capped so far, exceeds; from the last stage's switches and probabilities."""
    skip = candidates.index("skip_connect") if "skip_connect" in candidates else None
    probs = [list(row) for row in probs_normal]
    normal = final_switches(switches_normal, probs, candidates, steps)
    reduce = final_switches(switches_reduce, probs_reduce, candidates, steps)

    def skips():
        return [] if skip is None else [e for e, row in enumerate(normal) if row[skip]]

    def column(e):  # the skip's column in the probabilities of edge e
        return sum(switches_normal[e][:skip])

    capped = []
    for cap in range(max_skips, -1, -1):
        if len(skips()) <= cap:
            continue
        while len(skips()) > cap:
            weakest = min(skips(), key=lambda e: (probs[e][column(e)], e))
            if probs[weakest][column(weakest)] == 0:  # zeroing it again would change nothing
                raise ValueError(f"skip_capped_genotypes: edge {weakest} keeps its skip at "
                                 f"weight 0; no candidate of it outweighs the skip")
            probs[weakest][column(weakest)] = 0.0
            normal = final_switches(switches_normal, probs, candidates, steps)
        capped.append((cap, switches_genotype(normal, reduce, candidates, steps, multiplier)))
    return capped
