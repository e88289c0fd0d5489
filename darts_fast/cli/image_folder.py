"""Image-folder data sets (torchvision's ``ImageFolder`` layout): one sub-folder per class, its
images anywhere below it; either ``train/`` and ``val/`` folders of that layout or one such folder
(``split_folder``). Images are read with Pillow, in any mode it decodes to 8-bit grey or colour.

A bad image (zero bytes, not an image, truncated, 16-bit or float pixels) is named with its path
and the reason, and then skipped or refused (``--bad_images``), before the first step.
"""
import os
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .cifar10 import DataError

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".gif", ".tif", ".tiff",
            ".webp")
# Modes that convert to 8-bit grey or RGB without losing what the pixels mean.
EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV"}
GREY = {"1", "L", "LA", "La"}
# What Pillow raises for a file it cannot decode (an image too large to be safe included).
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, EOFError,
                    Image.DecompressionBombError)


class ImageFiles(NamedTuple):
    """The images of one split: their paths, class indices and the class names (sorted)."""
    classes: tuple
    paths: tuple
    labels: np.ndarray


class BadImage(Exception):
    """An image that cannot be used: its path and why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def split_folders(root):
    """(train folder, val folder or None) of the data set at ``root``."""
    if not os.path.isdir(root):
        raise DataError(f"--data {root!r} is not a folder (expected an image folder: one "
                        f"sub-folder of images per class, or train/ and val/ folders of them)")
    train = os.path.join(root, "train")
    if os.path.isdir(train):
        val = os.path.join(root, "val")
        return train, (val if os.path.isdir(val) else None)
    return root, None


def list_images(folder, classes=None):
    """The images below ``folder``'s class sub-folders (hidden entries skipped, files without an
    image suffix ignored), in sorted order. ``classes``: the training split's class names, which
    another split's folders must be among."""
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not
                   e.name.startswith("."))
    if not found:
        raise DataError(f"--data: {folder!r} holds no class folders (expected one sub-folder of "
                        f"images per class)")
    if classes is None:
        classes = tuple(found)
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"--data: {folder!r} has class folders the training images lack: "
                            f"{', '.join(unknown[:5])}")
    paths, labels = [], []
    for name in found:
        before = len(paths)
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, name)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            paths += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(SUFFIXES)]
        if len(paths) == before:
            raise DataError(f"--data: class folder {os.path.join(folder, name)!r} holds no "
                            f"images (expected files ending in {', '.join(SUFFIXES)})")
        labels += [classes.index(name)] * (len(paths) - before)
    return ImageFiles(tuple(classes), tuple(paths), np.asarray(labels, dtype=np.int64))


def inspect(path):
    """(width, height, grey) of the image at ``path`` from its header; BadImage if it has none
    or its pixels are not 8-bit."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            mode, size = img.mode, img.size
    except BAD_IMAGE_ERRORS as e:
        raise BadImage(path, f"not a readable image ({_reason(e)})") from None
    if mode not in EIGHT_BIT:
        raise BadImage(path, f"{mode} pixels (16-bit or float): expected 8-bit grey or colour")
    if min(size) < 1:
        raise BadImage(path, f"no pixels ({size[0]}x{size[1]})")
    return size[0], size[1], mode in GREY


def decode(path, size, channels, box=None):
    """The image at ``path`` as uint8 [size, size, channels]: its shorter side resized to
    ``size`` and the centre cut out, or, with ``box(width, height)`` giving (left, top, width,
    height) in pixels of the opened image, that box resized to ``size`` x ``size``. Bilinear
    resampling; BadImage if it cannot be decoded whole."""
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as img:
            if box is None:
                img.draft(mode, (size, size))  # JPEG: decode at a scale still >= size
            img = img.convert(mode)
            w, h = img.size
            if box is None:
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                img = img.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - size) // 2, (nh - size) // 2
                img = img.crop((left, top, left + size, top + size))
            else:
                left, top, bw, bh = box(w, h)
                img = img.resize((size, size), Image.BILINEAR,
                                 box=(left, top, left + bw, top + bh))
            pixels = np.array(img, dtype=np.uint8)  # writable: torch takes it as it is
    except BAD_IMAGE_ERRORS as e:
        raise BadImage(path, f"cannot be decoded ({_reason(e)})") from None
    return pixels if channels == 3 else pixels[..., None]


def _reason(e):
    text = str(e).split("\n")[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def report_bad(bad, policy, what):
    """Skips (a warning line) or refuses (DataError) the ``bad`` images, named with their
    paths; returns the warning line, or None when none was bad."""
    if not bad:
        return None
    shown = "; ".join(str(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5
                                                   else "")
    if policy == "refuse":
        raise DataError(f"{len(bad)} of the {what} cannot be used (--bad_images refuse): {shown}")
    return f"skipped {len(bad)} unusable {what} (--bad_images skip): {shown}"
