"""The two kinds of data set a CNN command trains on, and what a network knows of its input:

  * ``HeldImages``: every image decoded once, at its final size, into one uint8 array (CIFAR-10,
    the synthetic set, image folders by default); the loaders gather and augment its batches on
    the training device (``augmentation.random_augment``);
  * ``StreamedImages``: an image folder decoded again each epoch in DataLoader workers
    (``image_stream``), for data sets too large to hold (ImageNet).

``DataInfo`` is what a network needs to know of its input: runs keep it in ``data.json`` and
exports carry it.
"""
import dataclasses

import numpy as np
from torch.utils.data import DataLoader, Dataset

from .image_folder import BadImage, decode, inspect


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """The input a network is built for: ``classes`` (names, in label order), ``channels``
    (1 grey, 3 RGB), ``size`` (the square side), the per-channel ``mean`` and ``std`` of the
    [0, 1] pixels that normalise them, the ``stem`` ("cifar" or "imagenet")."""
    dataset: str
    classes: tuple
    channels: int
    size: int
    mean: tuple
    std: tuple
    stem: str

    @property
    def num_classes(self):
        return len(self.classes)

    def network_options(self):
        """The search network's input options where they differ from the original's (RGB, the
        CIFAR stem), which networks without them then still take."""
        if (self.channels, self.stem) == (3, "cifar"):
            return {}
        return {"in_channels": self.channels, "stem": self.stem}

    def to_json(self):
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_json(cls, saved, where):
        """The DataInfo ``saved`` holds; ValueError naming ``where`` if it holds none."""
        try:
            info = cls(str(saved["dataset"]), tuple(str(c) for c in saved["classes"]),
                       int(saved["channels"]), int(saved["size"]),
                       tuple(float(m) for m in saved["mean"]),
                       tuple(float(s) for s in saved["std"]), str(saved["stem"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} is not a data description ({type(e).__name__}: {e})") \
                from None
        ok = info.channels in (1, 3) and info.size > 0 and len(info.classes) > 0 and \
            len(info.mean) == len(info.std) == info.channels and min(info.std) > 0 and \
            info.stem in ("cifar", "imagenet")
        if not ok:
            raise ValueError(f"{where} is not a valid data description: {saved!r}")
        return info


@dataclasses.dataclass
class HeldImages:
    """``images`` uint8 [N, size, size, channels], ``labels`` int64 [N]."""
    images: np.ndarray
    labels: np.ndarray
    info: DataInfo
    notes: list = dataclasses.field(default_factory=list)  # what was skipped, for the log

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class StreamedImages:
    """The image files ``paths`` with ``labels``, decoded per epoch (``image_stream``);
    ``jitter``: the colour jitter of training batches (brightness, contrast, saturation, hue) or
    None."""
    paths: tuple
    labels: np.ndarray
    info: DataInfo
    jitter: tuple = None
    notes: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.labels)


def channel_statistics(images):
    """The per-channel mean and standard deviation of uint8 [N, H, W, C] images, as [0, 1]
    pixels (in float64, a chunk at a time)."""
    c = images.shape[-1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    for chunk in np.array_split(images, max(1, len(images) // 256)):
        pixels = chunk.reshape(-1, c).astype(np.float64) / 255.0
        total += pixels.sum(0)
        squares += np.square(pixels).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-3).tolist())


class _Apply(Dataset):
    def __init__(self, function, paths):
        self.function, self.paths = function, paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.function(self.paths[i]), None
        except BadImage as e:
            return i, None, e


def _items(batch):
    return batch


def parallel(function, paths, workers):
    """``function(path)`` of every path, computed in ``workers`` DataLoader processes: a list of
    results (None where the image was bad) and the ``BadImage``s, in path order."""
    results, bad = [None] * len(paths), []
    loader = DataLoader(_Apply(function, paths), batch_size=32, num_workers=workers,
                        collate_fn=_items)
    for batch in loader:
        for i, result, error in batch:
            results[i] = result
            if error is not None:
                bad.append(error)
    return results, sorted(bad, key=lambda e: e.path)


def headers(paths, workers):
    """(width, height, grey) of each image (None for a bad one) and the BadImages."""
    return parallel(inspect, paths, workers)


class Decoder:
    """``decode`` at one size and channel count, picklable for the workers."""

    def __init__(self, size, channels):
        self.size, self.channels = size, channels

    def __call__(self, path):
        return decode(path, self.size, self.channels)
