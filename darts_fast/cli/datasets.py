"""The images each command trains on: CIFAR-10 (``cifar10.py``) or an offline synthetic stand-in
of its shape, and the split of a search's images into its training and validation parts."""
import math

import numpy as np

from .cifar10 import NUM_CLASSES, load_cifar10


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


def search_data(options):
    """The training images of a search: CIFAR-10's training set, or the synthetic default."""
    if options.dataset == "cifar10":
        return load_cifar10(options.data, train=True)
    return synthetic_images(options.synthetic_size, seed=12345)


def train_test_data(options):
    if options.dataset == "cifar10":
        return load_cifar10(options.data, train=True), load_cifar10(options.data, train=False)
    images, labels = synthetic_images(options.synthetic_size + options.synthetic_size // 4,
                                      seed=12345)
    split = options.synthetic_size
    return (images[:split], labels[:split]), (images[split:], labels[split:])


def split_point(n, portion):
    return int(math.floor(portion * n))
