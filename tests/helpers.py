"""Shared test helpers: devices, the relative error, tolerances."""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Relative tolerances of the drop-in contract: the reference's numbers within float rounding.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel_err(actual, expected):
    """Norm-wise relative error ||actual - expected|| / ||expected||, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = expected.norm()
    return ((actual - expected).norm() / (denom if denom > 0 else 1.0)).item()
