"""The images each command trains on (``image_data.HeldImages`` or ``StreamedImages``): CIFAR-10
(``cifar10.py``), an offline synthetic stand-in of its shape, or an image folder
(``image_folder.py``: the user's own images, or ImageNet), and the split of a search's images
into its training and validation parts.

An image folder without a ``val/`` folder holds out ``--val_fraction`` of each class as the test
images, the same ones for ``search`` and ``train`` (a draw of its own, whatever ``--seed``): a
search never sees the images its found network is tested on. The input's size, channels and
normalisation come from the training images unless given, so both commands agree on them too.
"""
import dataclasses
import math
import os

import numpy as np

from .augmentation import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from .cifar10 import NUM_CLASSES, DataError, load_cifar10
from .errors import UsageError
from .image_data import DataInfo, Decoder, HeldImages, StreamedImages, channel_statistics, \
    headers, parallel
from .image_folder import ImageFiles, list_images, report_bad, split_folders
from ..spaces.cnn.stems import SIZE_MULTIPLE, check_image_size, default_stem

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
IMAGENET_SIZE = 224
IMAGENET_JITTER = (0.4, 0.4, 0.4, 0.2)  # the original train_imagenet.py's ColorJitter
STATISTICS_SAMPLE = 500  # images decoded to estimate a streamed folder's mean and std
HOLDOUT_SEED = 20180624


def synthetic_images(n, seed, size=32, classes=NUM_CLASSES):
    """A learnable offline stand-in for CIFAR-10: ``size`` x ``size`` colour images of oriented
    stripes whose angle and frequency depend on the class, with random phase, contrast, colour
    and noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / float(size)
    angles = labels * (np.pi / classes) + rng.normal(0, 0.08, n)
    freqs = 2.0 + (labels % 3) * 1.5
    phases = rng.uniform(0, 2 * np.pi, n)
    proj = (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy)
    stripes = np.sin(2 * np.pi * freqs[:, None, None] * proj + phases[:, None, None])
    colours = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    images = 0.5 + 0.35 * stripes[..., None] * colours + rng.normal(0, 0.12, (n, size, size, 3))
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def search_data(options):
    """The training images of a search (a search's own split comes from these)."""
    if options.dataset in ("imagefolder", "imagenet"):
        return folder_data(options, with_test=False)[0]
    if options.dataset == "cifar10":
        return HeldImages(*load_cifar10(options.data, train=True), _cifar_info(options))
    return HeldImages(*synthetic_images(options.synthetic_size, seed=12345), _cifar_info(options))


def train_test_data(options):
    """The training and the test images of ``train``."""
    if options.dataset in ("imagefolder", "imagenet"):
        return folder_data(options, with_test=True)
    info = _cifar_info(options)
    if options.dataset == "cifar10":
        return (HeldImages(*load_cifar10(options.data, train=True), info),
                HeldImages(*load_cifar10(options.data, train=False), info))
    images, labels = synthetic_images(options.synthetic_size + options.synthetic_size // 4,
                                      seed=12345)
    split = options.synthetic_size
    return (HeldImages(images[:split], labels[:split], info),
            HeldImages(images[split:], labels[split:], info))


def _cifar_info(options):
    return DataInfo(options.dataset, CIFAR_CLASSES, 3, 32, CIFAR_MEAN, CIFAR_STD,
                    options.stem if options.stem != "auto" else "cifar")


def folder_data(options, with_test):
    """(training images, test images or None) of the image folder ``--data``; its ``notes``
    say what was skipped."""
    train_dir, val_dir = split_folders(options.data)
    train = list_images(train_dir)
    if len(train.classes) < 2:
        raise DataError(f"--data {options.data!r}: one class folder ({train.classes[0]!r}); a "
                        f"classifier needs at least two")
    if val_dir is not None:
        test = list_images(val_dir, train.classes)
    else:
        train, test = holdout(train, options.val_fraction)
    notes = []
    train, shapes = _usable(train, options, "training images", notes)
    info = _info(options, train, shapes)
    if with_test:
        test, _ = _usable(test, options, "test images", notes)
    streamed = options.loader == "stream"
    if streamed:
        if options.bad_images == "refuse":  # a file cut short shows only when decoded whole
            for files, what in ((train, "training images"), (test, "test images"))[:1 + with_test]:
                report_bad(parallel(Decoder(8, info.channels), files.paths, options.workers)[1],
                           "refuse", what)
        jitter = IMAGENET_JITTER if options.color_jitter else None
        sets = [StreamedImages(f.paths, f.labels, info, jitter) for f in (train, test)]
    else:
        _check_memory(len(train) + (len(test) if with_test else 0), info)
        sets = [_held(f, info, options, what, notes)
                for f, what in ((train, "training images"), (test, "test images"))[:1 + with_test]]
        if options.mean is None:  # the statistics of the images trained on
            mean, std = channel_statistics(sets[0].images)
            info = dataclasses.replace(info, mean=mean, std=std)
            for s in sets:
                s.info = info
    for s in sets:
        s.notes = notes
    return sets[0], (sets[1] if with_test else None)


def holdout(files, fraction):
    """(the rest, the held-out test images): ``ceil(fraction * n)`` images of each class of n,
    drawn with a fixed seed."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    test = np.zeros(len(files.labels), dtype=bool)
    for label in np.unique(files.labels):
        members = np.flatnonzero(files.labels == label)
        count = min(len(members) - 1, math.ceil(fraction * len(members)))
        test[rng.permutation(members)[:count]] = True
    if not test.any():
        raise DataError(f"--val_fraction {fraction} holds out no image: a class needs two images "
                        f"to give one to the test images (or give a val/ folder)")
    return _subset(files, ~test), _subset(files, test)


def _subset(files, keep):
    return ImageFiles(files.classes, tuple(p for p, k in zip(files.paths, keep) if k),
                      files.labels[keep])


def _usable(files, options, what, notes):
    """``files`` without the images whose header is bad (skipped or refused, by
    ``--bad_images``) and the (width, height, grey) of those kept."""
    shapes, keep = _kept(*headers(files.paths, options.workers), options, what, notes)
    return _subset(files, keep), shapes


def _kept(results, bad, options, what, notes):
    """The results of the images that were not ``bad`` and the mask of those images, after
    ``--bad_images`` skipped (noted) or refused the bad ones."""
    note = report_bad(bad, options.bad_images, what)
    if note:
        notes.append(note)
    keep = np.array([r is not None for r in results], dtype=bool)
    if not keep.any():
        raise DataError(f"--data {options.data!r}: none of the {what} can be used")
    return [r for r in results if r is not None], keep


def _info(options, train, shapes):
    """The input the network is built for: given by the options or read from the training
    images (size: the median shorter side, rounded down to what the stem takes; channels: grey
    only if every image is grey)."""
    imagenet = options.dataset == "imagenet"
    size = options.image_size or (IMAGENET_SIZE if imagenet else
                                  int(np.median([min(w, h) for w, h, _ in shapes])))
    stem = options.stem if options.stem != "auto" else \
        ("imagenet" if imagenet else default_stem(size))
    if options.image_size is None:
        size = max(SIZE_MULTIPLE[stem], size // SIZE_MULTIPLE[stem] * SIZE_MULTIPLE[stem])
    try:
        check_image_size(stem, size, "--image_size")
    except ValueError as e:
        raise DataError(str(e)) from None
    channels = options.channels or (1 if all(grey for _, _, grey in shapes) else 3)
    mean, std = options.mean, options.std
    if mean is None and (imagenet or options.loader == "stream"):
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet and channels == 3 else \
            _sampled_statistics(train, size, channels, options.workers)
    return DataInfo(options.dataset, train.classes, channels, size,
                    tuple(mean or ()), tuple(std or ()), stem)


def _sampled_statistics(files, size, channels, workers):
    picked = np.linspace(0, len(files.paths) - 1, min(STATISTICS_SAMPLE, len(files.paths)))
    paths = [files.paths[i] for i in np.unique(picked.astype(int))]
    pixels, _ = parallel(Decoder(size, channels), paths, workers)
    return channel_statistics(np.stack([p for p in pixels if p is not None]))


def _check_memory(count, info):
    """Refuses a held data set that would take more than half the machine's memory."""
    needed = count * info.size * info.size * info.channels
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    if needed > total // 2:
        raise DataError(f"{count} images at {info.size}x{info.size} take {needed / 2**30:.1f} GiB "
                        f"held in memory, more than half of this machine's "
                        f"{total / 2**30:.1f} GiB: use --loader stream (decoded each epoch) or a "
                        f"smaller --image_size")


def _held(files, info, options, what, notes):
    """The images of ``files`` decoded (in ``--workers`` processes) into one array."""
    pixels, keep = _kept(*parallel(Decoder(info.size, info.channels), files.paths,
                                   options.workers), options, what, notes)
    return HeldImages(np.stack(pixels), files.labels[keep], info)


def search_split(labels, options):
    """The indices of the images a search's weights and alphas learn from: the first
    ``--train_portion`` of the images and the rest, or with ``--subset W A`` the shares W and A
    of each class, drawn apart with ``--seed``."""
    n = len(labels)
    if options.subset is None:
        split = int(math.floor(options.train_portion * n))
        if split < 1 or split >= n:
            raise UsageError(f"--train_portion {options.train_portion} leaves an empty split of "
                             f"{n} images")
        return range(split), range(split, n)
    weights_share, arch_share = options.subset
    if weights_share + arch_share > 1:
        raise UsageError(f"--subset {weights_share} {arch_share}: the two shares are drawn apart "
                         f"and must add up to at most 1")
    rng = np.random.default_rng(options.seed)
    weights, arch = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        taken = max(1, round(weights_share * len(members)))
        weights.append(members[:taken])
        arch.append(members[taken:taken + max(1, round(arch_share * len(members)))])
    weights, arch = np.sort(np.concatenate(weights)), np.sort(np.concatenate(arch))
    if len(arch) == 0:
        raise UsageError(f"--subset {weights_share} {arch_share} leaves no image for the alphas "
                         f"({n} images)")
    return weights, arch
