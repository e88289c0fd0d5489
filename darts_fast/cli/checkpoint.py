"""Checkpoint contents: plain ``torch.save`` files that ``torch.load(path, weights_only=True)``
reads, with a digest of their content for integrity.

The file holds ``{"format": FORMAT, "sha256": digest, "state": state}``. The digest covers every
key, number, string and tensor byte of ``state`` in a fixed order, so a truncated file (which
torch cannot open) and an altered one (whose content no longer matches) are both refused. The RNG
states are stored as tensors and plain numbers, so nothing needs unpickling beyond what
``weights_only`` allows.
"""
import hashlib
import io
import random

import numpy as np
import torch

FORMAT = "darts_fast-checkpoint-2"


class CheckpointError(ValueError):
    """A missing, partial, corrupt or foreign checkpoint."""


def serialize(state, f):
    """Writes the checkpoint of ``state`` to the binary file ``f``."""
    # Serialised in memory first: torch.save turns a failed write of ``f`` (a full disk) into a
    # RuntimeError that names no cause, where one plain write raises the OSError that does.
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": digest(state), "state": state}, buffer)
    f.write(buffer.getbuffer())


def load(path):
    """The verified state saved in ``path``; CheckpointError for anything else."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path!r}") from None
    except Exception as e:  # torch reports truncation and damage in many exception types
        raise CheckpointError(f"checkpoint {path!r} is corrupt or partial and cannot be read "
                              f"({e.__class__.__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a darts_fast checkpoint")
    if digest(saved.get("state")) != saved.get("sha256"):
        raise CheckpointError(f"checkpoint {path!r} is corrupt or partial: its content does not "
                              f"match its checksum")
    return saved["state"]


def digest(state):
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"checkpoint state cannot hold a {type(obj).__name__}")


def rng_states():
    """Every RNG a run draws from, as tensors and numbers."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["words"].tolist()), p["gauss_next"]))
