import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
