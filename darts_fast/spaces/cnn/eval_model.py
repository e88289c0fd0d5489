"""The networks that train a found architecture (the original's NetworkCIFAR and
NetworkImageNet): cells built from a genotype, an auxiliary head, drop path.

Both take ``in_channels`` (1 for grayscale images) and ``image_size``, the side of the square
input, which only the auxiliary head reads: at the original's sizes (32 for CIFAR, 224 for
ImageNet) it pools as the original does; at other sizes its 5x5 average pool becomes an adaptive
pool to the same 2x2 map, so its weights keep their shapes."""
import torch
import torch.nn as nn

from .operations import (
    OPS,
    FactorizedReduce,
    GlobalAvgPool,
    Identity,
    ReLUConvBN,
    forward_fast,
    reduction_cells,
)
from .stems import build_stems, cell_resolution, run_stems


def drop_path(x, drop_prob):
    """Zero whole samples with probability drop_prob and rescale the rest."""
    if drop_prob > 0.0:
        keep_prob = 1.0 - drop_prob
        mask = torch.empty(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
        x = x.div(keep_prob).mul(mask)
    return x


class Cell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        if reduction:
            op_names, indices = zip(*genotype.reduce)
            concat = genotype.reduce_concat
        else:
            op_names, indices = zip(*genotype.normal)
            concat = genotype.normal_concat
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._ops = nn.ModuleList()
        for name, index in zip(op_names, indices):
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))
        self._indices = indices

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            hs = []
            for j in (2 * i, 2 * i + 1):
                op = self._ops[j]
                h = forward_fast(op, states[self._indices[j]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


def _auxiliary_pool(side, native, stride):
    """The original's 5x5 average pool on its ``native`` map, reaching 2x2; on another map side,
    an adaptive pool to 2x2 (a 5x5 window would not fit or would give another size)."""
    if side == native:
        return nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
    return nn.AdaptiveAvgPool2d(2)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the feature map after the second reduction (8x8 on CIFAR)."""

    def __init__(self, C, num_classes, side=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            _auxiliary_pool(side, 8, 3),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier after the second reduction (7x7 at 224 pixels); as in the original,
    without a BatchNorm after its 2x2 convolution."""

    def __init__(self, C, num_classes, side=7):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            _auxiliary_pool(side, 7, 2),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class NetworkCIFAR(nn.Module):
    """The original's CIFAR network: the CIFAR stem (3C channels), cells at the input's
    resolution."""

    stem_kind, stem_multiplier, native_size = "cifar", 3, 32
    auxiliary_head_class = AuxiliaryHeadCIFAR

    def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3,
                 image_size=None):
        super().__init__()
        name = type(self).__name__
        reductions = reduction_cells(layers)
        if auxiliary and len(reductions) < 2:
            raise ValueError(f"{name}: the auxiliary head sits after the second reduction "
                             f"cell and needs layers >= 2, got layers={layers}")
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f"{name}: in_channels must be a positive integer, got "
                             f"{in_channels!r}")
        image_size = self.native_size if image_size is None else image_size
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        C_curr = self.stem_multiplier * C
        reduction_prev = build_stems(self, self.stem_kind, C_curr, in_channels)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        C_to_auxiliary = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            side = cell_resolution(self.stem_kind, image_size, 2)
            self.auxiliary_head = self.auxiliary_head_class(C_to_auxiliary, num_classes, side)
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, input):
        logits_aux = None
        s0, s1 = run_stems(self, input)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1)), logits_aux


class NetworkImageNet(NetworkCIFAR):
    """The original's ImageNet network: the ImageNet stem (C channels), cells from 1/8 of the
    input's resolution; its final 7x7 average pool is the global average pool at 224 pixels and
    stays one at any size."""

    stem_kind, stem_multiplier, native_size = "imagenet", 1, 224
    auxiliary_head_class = AuxiliaryHeadImageNet
