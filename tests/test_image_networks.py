"""Networks for images of any size and channel count: the ImageNet stem and ``NetworkImageNet``
(the original's), grey input, the auxiliary heads at other sizes, the search network on the
ImageNet stem (PC-DARTS' ImageNet search network's layout)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import rel_err

from darts_fast import Network, PCNetwork
from darts_fast.spaces.cnn.eval_model import NetworkCIFAR, NetworkImageNet
from darts_fast.spaces.cnn.genotypes import DARTS_V2
from darts_fast.spaces.cnn.operations import FactorizedReduce
from darts_fast.spaces.cnn.stems import cell_resolution, check_image_size


def _weights(network):
    return sum(p.numel() for name, p in network.named_parameters() if "auxiliary" not in name)


def test_network_imagenet_has_the_published_size_and_the_original_layout():
    # DARTS (second order) on ImageNet, C=48, 14 cells: 4.7M parameters (Liu et al., table 3).
    assert round(_weights(NetworkImageNet(48, 1000, 14, True, DARTS_V2)) / 1e6, 1) == 4.7
    C = 8
    net = NetworkImageNet(C, 5, 6, True, DARTS_V2)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if "cells" not in k}
    # The original's module indices: stem0 = conv, BN, ReLU, conv, BN; stem1 = ReLU, conv, BN;
    # the auxiliary head without a BatchNorm after its 2x2 convolution.
    assert shapes["stem0.0.weight"] == (C // 2, 3, 3, 3)
    assert shapes["stem0.3.weight"] == (C, C // 2, 3, 3)
    assert shapes["stem1.1.weight"] == (C, C, 3, 3)
    assert shapes["auxiliary_head.features.5.weight"] == (768, 128, 2, 2)
    assert "auxiliary_head.features.6.weight" not in shapes
    assert isinstance(net.cells[0].preprocess0, FactorizedReduce)  # s0 has twice s1's size


def test_network_imagenet_pools_as_the_original_at_224_pixels():
    torch.manual_seed(0)
    net = NetworkImageNet(4, 3, 3, True, DARTS_V2).double().train()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    maps = []
    net.cells[-1].register_forward_hook(lambda m, i, o: maps.append(o))
    logits, aux = net(x)
    assert maps[0].shape[-2:] == (7, 7)
    want = net.classifier(F.avg_pool2d(maps[0], 7).flatten(1))  # the original's AvgPool2d(7)
    assert rel_err(logits, want) < 1e-12
    assert isinstance(net.auxiliary_head.features[1], nn.AvgPool2d) and aux.shape == (2, 3)


def test_feature_sizes_follow_cell_resolution_at_any_size():
    for network, stem, sizes in ((NetworkCIFAR, "cifar", (20, 36, 64)),
                                 (NetworkImageNet, "imagenet", (32, 64, 96))):
        for size in sizes:
            net = network(4, 3, 5, True, DARTS_V2, in_channels=1, image_size=size).train()
            maps = []
            for i in (0, 1, 3):  # before, after the first and after the second reduction
                net.cells[i].register_forward_hook(lambda m, i, o: maps.append(o.shape[-1]))
            logits, aux = net(torch.randn(2, 1, size, size))
            assert maps == [cell_resolution(stem, size, r) for r in (0, 1, 2)], (stem, size)
            assert logits.shape == aux.shape == (2, 3)


def test_image_sizes_the_reductions_cannot_halve_are_refused():
    check_image_size("cifar", 36, "--image_size")
    check_image_size("imagenet", 224, "--image_size")
    for stem, size, hint in (("cifar", 30, "28 or 32"), ("imagenet", 100, "96 or 128")):
        with pytest.raises(ValueError, match=f"--image_size {size}: .* {hint}"):
            check_image_size(stem, size, "--image_size")


def test_float32_matches_float64_on_the_image_networks():
    torch.manual_seed(1)
    for net in (NetworkImageNet(8, 4, 5, True, DARTS_V2, in_channels=1, image_size=64),
                Network(4, 4, 5, nn.CrossEntropyLoss(), in_channels=1, stem="imagenet")):
        net.train()
        x = torch.randn(3, 1, 64, 64, dtype=torch.float64)
        out64 = net.double()(x)
        out32 = net.float()(x.float())
        first = (lambda o: o[0]) if isinstance(out64, tuple) else (lambda o: o)
        assert rel_err(first(out32).double(), first(out64)) < 1e-4


def test_search_network_on_the_imagenet_stem_has_pc_darts_layout():
    C = 4
    net = PCNetwork(C, 5, 5, nn.CrossEntropyLoss(), stem="imagenet", in_channels=3)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("stem")}
    # PC-DARTS' model_search_imagenet: stem0 3 -> 3C/2 -> 3C, stem1 3C -> 3C, all stride 2.
    assert shapes["stem0.0.weight"] == (3 * C // 2, 3, 3, 3)
    assert shapes["stem0.3.weight"] == (3 * C, 3 * C // 2, 3, 3)
    assert shapes["stem1.1.weight"] == (3 * C, 3 * C, 3, 3)
    assert not hasattr(net, "stem")
    copy = net.new()
    assert copy.state_dict().keys() == net.state_dict().keys()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 4])
    loss = net._loss(x, y)
    loss.backward()
    assert net.stem0[0].weight.grad is not None and torch.isfinite(loss)
