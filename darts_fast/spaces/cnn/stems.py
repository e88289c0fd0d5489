"""The stems that lift the input images to the channels of the first cells, search and
evaluation networks alike:

  * ``"cifar"``: one 3x3 convolution and BatchNorm at the input's resolution (the original's
    CIFAR networks), module ``stem``; both first cell inputs are its output;
  * ``"imagenet"``: the original's ``NetworkImageNet`` stem (and PC-DARTS' ImageNet search's):
    ``stem0`` = conv 3x3 stride 2 to C/2, BN, ReLU, conv 3x3 stride 2 to C, BN; ``stem1`` = ReLU,
    conv 3x3 stride 2, BN. The first cell reads ``stem0``'s output (s0, twice ``stem1``'s
    resolution) and ``stem1``'s (s1), so it starts as if after a reduction cell.

The image side ``size`` becomes ``size`` (cifar) or ``ceil(size / 8)`` (imagenet) at the first
cell; every reduction cell halves it again, rounding up. A factorized reduction (a reduction cell's
skip-connection, the next cell's preprocessing) concatenates the even and the odd pixels of its
input, which an odd side cannot give alike, in the original as here: the side must be a multiple
of ``SIZE_MULTIPLE[stem]`` (two reductions, and the ImageNet stem's reduction before them).
"""
import math

import torch.nn as nn

STEMS = ("cifar", "imagenet")
SIZE_MULTIPLE = {"cifar": 4, "imagenet": 32}


def check_stem(stem, in_channels, what):
    if stem not in STEMS:
        raise ValueError(f"{what}: stem must be one of {STEMS}, got {stem!r}")
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"{what}: in_channels must be a positive integer, got {in_channels!r}")


def cifar_stem(C_out, in_channels=3):
    """The 3x3 convolution and affine BatchNorm that lift the input to C_out channels."""
    return nn.Sequential(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(C_out))


def build_stems(module, stem, C_out, in_channels):
    """Gives ``module`` its stem modules (under the original's names); returns whether the first
    cell's s0 has twice the resolution of s1 (its ``reduction_prev``)."""
    if stem == "cifar":
        module.stem = cifar_stem(C_out, in_channels)
        return False
    module.stem0 = nn.Sequential(
        nn.Conv2d(in_channels, C_out // 2, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C_out // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(C_out // 2, C_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C_out),
    )
    module.stem1 = nn.Sequential(
        nn.ReLU(inplace=True),
        nn.Conv2d(C_out, C_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C_out),
    )
    return True


def run_stems(module, input):
    """The first cell's two inputs (s0, s1)."""
    if hasattr(module, "stem"):
        s = module.stem(input)
        return s, s
    s0 = module.stem0(input)
    return s0, module.stem1(s0)


def cell_resolution(stem, size, reductions):
    """The side of the feature maps after the stem and ``reductions`` reduction cells."""
    side = size if stem == "cifar" else math.ceil(math.ceil(math.ceil(size / 2) / 2) / 2)
    for _ in range(reductions):
        side = math.ceil(side / 2)
    return side


def default_stem(size):
    """The stem a network on ``size``-pixel images gets unless told: the CIFAR stem up to 64
    pixels (cells at the input's resolution), the ImageNet stem above (cells at 1/8 of it)."""
    return "cifar" if size <= 64 else "imagenet"


def check_image_size(stem, size, what):
    multiple = SIZE_MULTIPLE[stem]
    if size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise ValueError(f"{what} {size}: the {stem} stem needs a side that is a multiple of "
                         f"{multiple} (the reductions need even sides): {low} or "
                         f"{low + multiple}, say")
