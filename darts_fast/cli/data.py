"""Images for the command line: CIFAR-10 from its python batches (a folder or the
``cifar-10-python.tar.gz`` archive) or an offline synthetic default; the original DARTS
augmentation (random 32x32 crop of the image padded by 4, horizontal flip, normalisation,
optional cutout); and two loaders that feed a step:

  * ``TensorLoader`` (the default): the whole uint8 data set lives on the training device and
    each batch is gathered and augmented there in a few batched ops: no workers, no host copies;
  * ``torch.utils.data.DataLoader`` over ``ImageDataset`` with worker processes and pinned memory
    (``--loader dataloader --workers N``).

On several processes (``torchrun``) both take this rank's shard of each pass (``ShardedOrder``).

Both draw their randomness from torch's generators (the training device's for ``TensorLoader``),
whose states the checkpoints keep, so a resumed run sees the same batches.
"""
import bz2
import functools
import gzip
import hashlib
import io
import lzma
import math
import os
import pickle
import tarfile
import zlib

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    SubsetRandomSampler,
)

from .errors import UsageError

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
NUM_CLASSES = 10
PAD = 4
# The official python batches: their sizes in cifar-10-python.tar.gz and the MD5 digests that
# torchvision checks. A flipped bit keeps a file's size and, inside the pixels, its structure:
# only the digest sees it, so a file of an official batch's name and size must have its digest.
OFFICIAL_BATCHES = {
    "data_batch_1": (31035704, "c99cafc152244af753f735de768cd75f"),
    "data_batch_2": (31035320, "d4bba439e000b95fd0a9bffe97cbabec"),
    "data_batch_3": (31035999, "54ebc095f3ab1f0389bbae665268c751"),
    "data_batch_4": (31035696, "634d18415352ddfa80567beed471001a"),
    "data_batch_5": (31035623, "482c414d41f54cd18b22e5b47cb7c3cb"),
    "test_batch": (31035526, "40351d587109b95175f43aff81a1287e"),
}
# What a batch's pickle may name: numpy's array reconstruction (numpy 1 and 2, pickle protocols
# 2 to 5). Anything else is refused before it is imported: a pickle can otherwise run code.
_BATCH_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                  ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
# Compressed archives by their first bytes; each opener checks its stream's checksum at its end.
_COMPRESSED = ((b"\x1f\x8b", gzip.open, "gzip"), (b"BZh", bz2.open, "bzip2"),
               (b"\xfd7zXZ\x00", lzma.open, "xz"))


class DataError(UsageError):
    """Missing or malformed data, with a message that names the file and what was expected."""


# --- reading ------------------------------------------------------------------------------------

def load_cifar10(source, train=True):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) from the CIFAR-10 python batches in the
    folder ``source`` (or its ``cifar-10-batches-py``), or in the archive ``source``. Damage is
    refused (DataError, naming the file), never trained on: a compressed archive is read to its
    checksum and its tar listing to its end, the batches are unpickled strictly, and a file the
    size of an official batch must have its MD5 digest."""
    names = CIFAR_TRAIN_FILES if train else (CIFAR_TEST_FILE,)
    if os.path.isdir(source):
        folder = os.path.join(source, "cifar-10-batches-py")
        folder = folder if os.path.isdir(folder) else source
        blobs = _read_folder(folder, names)
    elif os.path.isfile(source):
        blobs = _read_archive(source, names)
    elif os.path.exists(source):
        raise DataError(f"--data {source!r} is neither a folder nor a file (expected the CIFAR-10 "
                        f"folder of python batches or cifar-10-python.tar.gz)")
    else:
        raise DataError(f"--data {source!r} does not exist (expected the CIFAR-10 folder of "
                        f"python batches or cifar-10-python.tar.gz)")
    for name, (where, blob) in zip(names, blobs):
        _check_official(name, where, blob)
    images, labels = zip(*(_parse_batch(where, blob) for where, blob in blobs))
    if not sum(len(batch) for batch in labels):
        raise DataError(f"--data {source!r}: the CIFAR-10 {', '.join(names)} hold no images")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _missing(where, missing):
    return DataError(f"CIFAR-10 files missing in {where!r}: {', '.join(missing)} (expected the "
                     f"python batches {', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE})")


def _read_folder(folder, names):
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise _missing(folder, missing)
    blobs = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                blobs.append((path, f.read()))
        except OSError as e:
            raise DataError(f"CIFAR-10 file {path!r} cannot be read: {e.strerror}") from None
    return blobs


def _read_archive(path, names):
    raw = _archive_bytes(path)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
            # tarfile ends its listing at the first header it cannot read as if the archive
            # ended there: only the end's zero blocks may follow.
            if raw.count(0, archive.offset) != len(raw) - archive.offset:
                raise tarfile.ReadError(f"unreadable tar header at byte {archive.offset}")
            missing = [n for n in names if n not in members]
            if missing:
                raise _missing(path, missing)
            return [(f"{path}:{members[n].name}", archive.extractfile(members[n]).read())
                    for n in names]
    except tarfile.TarError as e:
        raise DataError(f"--data {path!r} is not a readable CIFAR-10 archive "
                        f"(cifar-10-python.tar.gz) or folder: it is damaged or of another "
                        f"format ({_reason(e)})") from None


def _archive_bytes(path):
    """The tar bytes of the archive ``path``, decompressed to the end of its stream so that its
    checksum is checked: tarfile stops reading before it, and would read damaged data."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"--data {path!r} cannot be read: {e.strerror}") from None
    opener, kind = next(((o, k) for m, o, k in _COMPRESSED if magic.startswith(m)), (open, None))
    try:
        with opener(path, "rb") as f:
            return f.read()
    except OSError as e:
        if e.errno is not None:  # the system's error, not the decompressor's
            raise DataError(f"--data {path!r} cannot be read: {e.strerror}") from None
        error = e
    except (EOFError, zlib.error, lzma.LZMAError) as e:
        error = e
    raise DataError(f"--data {path!r} is damaged: its {kind} stream is corrupt or cut short "
                    f"({_reason(error)}); download it again")


def _reason(error):
    return f"{error.__class__.__name__}: {(str(error).splitlines() or [''])[0]}"


def _described(value):
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return f"of type {type(value).__name__}"


def _check_official(name, where, blob):
    """Refuses a file of an official batch's name and size whose content is not that batch."""
    size, md5 = OFFICIAL_BATCHES.get(name, (None, None))
    if len(blob) == size and hashlib.md5(blob).hexdigest() != md5:
        raise DataError(f"CIFAR-10 file {where!r} is damaged: it has the size of the official "
                        f"{name} but not its MD5 digest ({md5}); download CIFAR-10 again")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a python batch, refusing every global but numpy's array reconstruction."""

    def find_class(self, module, name):
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch holds")
        return super().find_class(module, name)


def _parse_batch(where, blob):
    expected = ("Expected a pickled dict with b'data', a uint8 array [N, 3072], and N integer "
                "b'labels' in 0..9")
    try:
        stream = io.BytesIO(blob)
        batch = _BatchUnpickler(stream, encoding="bytes").load()
        if stream.tell() != len(blob):
            raise pickle.UnpicklingError(f"{len(blob) - stream.tell()} bytes follow the pickle")
        data = batch[b"data"]
        labels = np.asarray(batch[b"labels" if b"labels" in batch else b"fine_labels"])
    except Exception as e:  # unpickling errors come in many types
        raise DataError(f"CIFAR-10 file {where!r} is damaged or malformed ({_reason(e)}). "
                        f"{expected}") from None
    # Strict: a damaged file must not be converted into something that trains.
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and (labels.dtype.kind in "iu" or labels.size == 0)
            and labels.shape == (data.shape[0],)):
        raise DataError(f"CIFAR-10 file {where!r} is damaged or malformed: got data "
                        f"{_described(data)} and labels {_described(labels)}. {expected}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"CIFAR-10 file {where!r} is damaged or malformed: labels must lie in "
                        f"0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


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


# --- augmentation -------------------------------------------------------------------------------

def augment(images, top, left, flip, cutout_centre=None, cutout_length=0):
    """The original's training transform on a batch, with its random draws given:
    ``images`` uint8 [B, 3, H, W]; ``top``, ``left`` in 0..2*PAD, the crop's corner in the image
    zero-padded by PAD; ``flip`` bool [B]; ``cutout_centre`` (rows, cols) of the square zeroed
    after normalisation, clipped at the border (as the original's Cutout)."""
    b, _, h, w = images.shape
    x = images.float().div_(255)
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(3, device=x.device)[None, :, None, None]
    x = normalize(padded[batch, channel, rows, cols])
    if cutout_length > 0:
        cy, cx = cutout_centre
        half = cutout_length // 2
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        inside_y = (ys >= (cy[:, None] - half).clamp(min=0)) & (ys < (cy[:, None] + half))
        inside_x = (xs >= (cx[:, None] - half).clamp(min=0)) & (xs < (cx[:, None] + half))
        x = x.masked_fill((inside_y[:, :, None] & inside_x[:, None, :])[:, None], 0.0)
    return x


def normalize(x):
    mean, std = _mean_std(x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=None)
def _mean_std(device):
    # Made once per device: building them per batch would copy from the host, and wait for the
    # device, on every step.
    return (torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1))


def random_augment(images, cutout_length):
    """``augment`` with its parameters drawn from the default generator of the images' device."""
    b, _, h, w = images.shape
    device = images.device
    top, left = torch.randint(0, 2 * PAD + 1, (2, b), device=device)
    flip = torch.rand(b, device=device) < 0.5
    centre = torch.randint(0, h, (2, b), device=device) if cutout_length > 0 else None
    return augment(images, top, left, flip, centre, cutout_length)


class ImageDataset(Dataset):
    """uint8 NHWC images with labels, one sample at a time (for a DataLoader with workers)."""

    def __init__(self, images, labels, augment, cutout_length=0):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # a view: NCHW uint8
        self.labels = torch.from_numpy(labels)
        self.augment = augment
        self.cutout_length = cutout_length

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i:i + 1]
        x = random_augment(x, self.cutout_length) if self.augment else normalize(x.float() / 255)
        return x[0], self.labels[i]


class ShardedOrder:
    """This rank's share of ``indices`` in each pass, dealt as ``DistributedSampler`` deals them:
    one order for all ranks (a permutation drawn from ``seed`` and the pass number when
    ``shuffle``), padded by repeating its start to a multiple of ``world``, every world-th index
    from position ``rank`` on. The ranks' shards are disjoint up to the padding and equally long,
    so every rank takes the same number of steps. ``passes`` counts the passes drawn; a
    checkpoint keeps it, so a resumed run deals the same shards."""

    def __init__(self, indices, rank, world, seed, shuffle):
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.sampler = DistributedSampler(self.indices, num_replicas=world, rank=rank,
                                          shuffle=shuffle, seed=seed)
        self.passes = 0

    def __len__(self):
        return len(self.sampler)

    def next_pass(self):
        """This rank's indices of the next pass, as an int64 tensor."""
        self.sampler.set_epoch(self.passes)
        self.passes += 1
        return self.indices[list(self.sampler)]

    def __iter__(self):  # a DataLoader's sampler
        return iter(self.next_pass().tolist())


class TensorLoader:
    """Batches of ``indices`` (reshuffled each pass when ``shuffle``) gathered from the uint8 data
    set held on ``device`` and augmented there; with ``shards`` (a ``ShardedOrder`` over the
    same indices), this rank's shard of each pass."""

    def __init__(self, images, labels, indices, batch_size, device, augment, shuffle,
                 cutout_length=0, shards=None):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.batch_size = batch_size
        self.augment, self.shuffle, self.cutout_length = augment, shuffle, cutout_length
        self.shards = shards

    def __len__(self):
        dealt = self.indices if self.shards is None else self.shards
        return math.ceil(len(dealt) / self.batch_size)

    def __iter__(self):
        if self.shards is not None:
            order = self.shards.next_pass()
        else:
            order = self.indices[torch.randperm(len(self.indices))] if self.shuffle else \
                self.indices
        order = order.to(self.images.device)
        for batch in order.split(self.batch_size):
            x = self.images[batch]
            x = random_augment(x, self.cutout_length) if self.augment else \
                normalize(x.float() / 255)
            yield x, self.labels[batch]


def loader(options, images, labels, indices, device, augment, shuffle, ranks=None):
    """The loader ``options.loader`` names over ``images[indices]`` (this rank's shards of them
    when ``ranks`` is distributed); batches arrive on ``device``. Its ``shards`` attribute is
    the ``ShardedOrder`` (None for one process)."""
    cutout = options.cutout_length if augment and options.cutout else 0
    shards = ShardedOrder(indices, ranks.rank, ranks.world, options.seed, shuffle) \
        if ranks is not None and ranks.distributed else None
    if options.loader == "tensor":
        return TensorLoader(images, labels, indices, options.batch_size, device, augment,
                            shuffle, cutout, shards)
    dataset = ImageDataset(images, labels, augment, cutout)
    sampler = shards if shards is not None else \
        (SubsetRandomSampler(indices) if shuffle else list(indices))
    return _ToDevice(DataLoader(dataset, batch_size=options.batch_size, sampler=sampler,
                                num_workers=options.workers,
                                pin_memory=device.type == "cuda",
                                persistent_workers=options.workers > 0), device, shards)


class _ToDevice:
    def __init__(self, loader, device, shards):
        self.loader, self.device, self.shards = loader, device, shards

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def endless(loader):
    """The batches of ``loader``, pass after pass: the search's validation batches, one per
    step, drawn from one iterator instead of a new one each step."""
    while True:
        yield from loader
