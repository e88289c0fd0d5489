"""Datasets for the command line: CIFAR-10 from its python batches on local disk, and an offline
synthetic default; with the original DARTS augmentation (random crop with padding 4, horizontal
flip, normalisation, optional cutout)."""
import math
import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
NUM_CLASSES = 10


class DataError(ValueError):
    """Missing or malformed data, with a message that names the file and what was expected."""


def _cifar_dir(root):
    nested = os.path.join(root, "cifar-10-batches-py")
    return nested if os.path.isdir(nested) else root


def load_cifar10(root, train=True):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) from the CIFAR-10 python batches in ``root``
    (or ``root/cifar-10-batches-py``)."""
    if not os.path.isdir(root):
        raise DataError(f"CIFAR-10 folder {root!r} does not exist")
    folder = _cifar_dir(root)
    names = CIFAR_TRAIN_FILES if train else (CIFAR_TEST_FILE,)
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise DataError(
            f"CIFAR-10 files missing in {folder!r}: {', '.join(missing)} (expected the python "
            f"batches {', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE})"
        )
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            batch_labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")),
                                      dtype=np.int64)
        except Exception as e:  # unpickling errors come in many types
            raise DataError(f"CIFAR-10 file {path!r} is malformed: {e.__class__.__name__}: {e}. "
                            f"Expected a pickled dict with b'data' and b'labels'") from None
        if data.ndim != 2 or data.shape[1] != 3072 or batch_labels.shape != (data.shape[0],):
            raise DataError(f"CIFAR-10 file {path!r} is malformed: expected data of shape "
                            f"[N, 3072] and N labels, got {data.shape} and {batch_labels.shape}")
        if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= NUM_CLASSES):
            raise DataError(f"CIFAR-10 file {path!r} is malformed: labels must lie in 0..9")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def synthetic_images(n, seed):
    """A learnable offline stand-in for CIFAR-10: 32x32 colour images of oriented stripes whose
    angle and frequency depend on the class, with random phase, contrast, colour and noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    angles = labels * (np.pi / NUM_CLASSES) + rng.normal(0, 0.08, n)
    freqs = 2.0 + (labels % 3) * 1.5
    phases = rng.uniform(0, 2 * np.pi, n)
    proj = (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy)
    stripes = np.sin(2 * np.pi * freqs[:, None, None] * proj + phases[:, None, None])
    colours = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    images = 0.5 + 0.35 * stripes[..., None] * colours + rng.normal(0, 0.12, (n, 32, 32, 3))
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


class ImageDataset(Dataset):
    """uint8 NHWC images with labels; training augmentation as the original's transforms, drawn
    from torch's global RNG so that a checkpoint of the RNG states resumes the same batches."""

    def __init__(self, images, labels, augment, cutout_length=0):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # a view: NCHW uint8
        self.labels = torch.from_numpy(labels)
        self.augment = augment
        self.cutout_length = cutout_length
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255)
        if self.augment:
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = padded[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = (x - self.mean) / self.std
        if self.augment and self.cutout_length > 0:
            x = cutout(x, self.cutout_length)
        return x, self.labels[i]


def cutout(x, length):
    """Zero a length x length square (clipped at the border) centred at a random pixel."""
    h, w = x.shape[-2:]
    cy, cx = torch.randint(0, h, ()).item(), torch.randint(0, w, ()).item()
    y0, y1 = max(cy - length // 2, 0), min(cy + length // 2, h)
    x0, x1 = max(cx - length // 2, 0), min(cx + length // 2, w)
    x = x.clone()
    x[:, y0:y1, x0:x1] = 0
    return x


def search_data(args):
    """The training images for a search: CIFAR-10's training set, or the synthetic default."""
    if args.dataset == "cifar10":
        return load_cifar10(args.data, train=True)
    return synthetic_images(args.synthetic_size, seed=12345)


def train_test_data(args):
    if args.dataset == "cifar10":
        return load_cifar10(args.data, train=True), load_cifar10(args.data, train=False)
    images, labels = synthetic_images(args.synthetic_size + args.synthetic_size // 4, seed=12345)
    split = args.synthetic_size
    return (images[:split], labels[:split]), (images[split:], labels[split:])


def split_point(n, portion):
    return int(math.floor(portion * n))
