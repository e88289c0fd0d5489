"""The process's settings that a run's numbers depend on: the device, the seeds of the random
generators, torch's CPU thread count and deterministic algorithms."""
import contextlib
import os
import random

import numpy as np
import torch


def auto_device(options):
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def cpu_threads(count):
    """torch's CPU operations on ``count`` threads for the duration (on the CPU the numbers
    depend on the count: a reduction split over other threads sums in another order)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def determinism(enabled):
    """With ``enabled``: deterministic algorithms only, and cuDNN without autotuning, for the
    duration; otherwise cuDNN autotunes its convolutions, as the original sets it."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if enabled:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:3]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
