"""Checkpoints that are written atomically and verified when read.

File layout: a magic line, the SHA-256 of the payload, then the payload (``torch.save`` bytes). A
checkpoint is first written to a temporary file in the same folder, flushed to disk, then renamed
over the old one: an interrupted write leaves the last good checkpoint in place, and a truncated
or altered file is detected by its digest.
"""
import hashlib
import io
import os

import torch

MAGIC = b"darts_fast-checkpoint-v1\n"


class CheckpointError(ValueError):
    """A missing, partial or corrupt checkpoint."""


def save(state, path):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path!r} is not a darts_fast checkpoint (or its header is damaged)")
    digest, _, payload = data[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or partial: its content does not "
                              f"match its checksum")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {e}") from None


def rng_states():
    import random

    import numpy as np

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states):
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
