"""The device fixture of the tests and the benchmarks: every device this machine has."""
import pytest
import torch

from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
