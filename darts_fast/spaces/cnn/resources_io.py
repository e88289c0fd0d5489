"""The JSON files that keep a resource table (``resources_latency`` describes its fields), checked
against the search network they are used with when loaded."""
import json
import math
import os
import tempfile

import torch

from .resources_latency import KINDS, structure, trace

FORMAT = "darts_fast.resource_table"


def save_table(path, table, meta=None):
    """Writes ``table`` (and ``meta``, any JSON-serialisable notes) to the JSON file ``path``,
    atomically: a temporary file in its folder, then renamed over it."""
    try:
        doc = {"format": FORMAT, "version": 1,
               **{k: table[k] for k in ("candidates", "image_size", "batch_size", "cells")},
               "edges": [list(e) for e in table["edges"]],
               "shapes": [[list(s) for s in row] for row in table["shapes"]],
               "device": table.get("device"),
               **{kind: {k: v.tolist() for k, v in table[kind].items()} for kind in KINDS},
               "fixed": dict(table["fixed"]), "meta": {} if meta is None else meta}
        text = json.dumps(doc, indent=1)
    except (KeyError, AttributeError) as e:
        raise ValueError(f"table: not a resource table (lacks {e})") from None
    except TypeError as e:
        raise ValueError(f"meta: must be JSON-serialisable: {e}") from None
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".resources-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _parse(path, doc):
    """The table a file holds, its fields checked; ValueError naming the file otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a darts_fast resource table (format {FORMAT!r})")
    if doc.get("version") != 1:
        raise ValueError(f"{path}: resource table version {doc.get('version')!r}, 1 expected")
    try:
        table = dict(candidates=tuple(str(c) for c in doc["candidates"]),
                     edges=tuple((int(a), int(b)) for a, b in doc["edges"]),
                     cells=tuple(str(k) for k in doc["cells"]),
                     shapes=tuple(tuple(tuple(int(n) for n in s) for s in row)
                                  for row in doc["shapes"]),
                     image_size=int(doc["image_size"]), batch_size=int(doc["batch_size"]),
                     device=doc["device"], meta=doc["meta"],
                     fixed={str(k): float(v) for k, v in doc["fixed"].items()})
        for kind in KINDS:
            table[kind] = {str(k): torch.tensor(v, dtype=torch.float64)
                           for k, v in doc[kind].items()}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise ValueError(f"{path}: malformed resource table ({type(e).__name__}: {e})") from None
    if len(table["shapes"]) != len(table["cells"]) or \
            any(len(row) != len(table["edges"]) for row in table["shapes"]):
        raise ValueError(f"{path}: shapes must hold one shape per cell and edge")
    if not all(map(math.isfinite, table["fixed"].values())):
        raise ValueError(f"{path}: fixed must hold finite numbers, got {table['fixed']}")
    shape = (len(table["edges"]), len(table["candidates"]))
    for kind in KINDS:
        for key, values in table[kind].items():
            if tuple(values.shape) != shape or not torch.isfinite(values).all():
                raise ValueError(f"{path}: {kind} {key} must be finite numbers [edges, "
                                 f"candidates] {list(shape)}, got shape {list(values.shape)}")
    return table


def load_table(path, network):
    """The table saved at ``path``, checked against ``network``: ValueError naming what differs
    (candidates, edges, layers and cell kinds, then the edges' input shapes)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a darts_fast resource table (invalid JSON: {e})") from None
    table = _parse(path, doc)
    candidates, edges, kinds, _ = structure(network)
    for name, ours, theirs in (("candidates", table["candidates"], candidates),
                               ("edges", table["edges"], edges)):
        if ours != theirs:
            raise ValueError(f"{path}: {name} differ: the table's {list(ours)}, the network's "
                             f"{list(theirs)}")
    if len(table["cells"]) != len(kinds):
        raise ValueError(f"{path}: layers differ: the table holds {len(table['cells'])} cells, "
                         f"the network {len(kinds)}")
    if table["cells"] != kinds:
        raise ValueError(f"{path}: cell kinds differ: the table's {list(table['cells'])}, the "
                         f"network's {list(kinds)}")
    shapes = trace(network, table["image_size"], table["batch_size"]).layout["shapes"]
    if table["shapes"] != shapes:
        i, e = next((i, e) for i, row in enumerate(shapes) for e, s in enumerate(row)
                    if table["shapes"][i][e] != s)
        raise ValueError(f"{path}: shapes differ: cell {i} edge {e} takes "
                         f"{list(table['shapes'][i][e])} in the table, {list(shapes[i][e])} in "
                         f"the network (channels, image_size {table['image_size']}, batch_size "
                         f"{table['batch_size']})")
    return table
