"""The loaders that feed a step with augmented batches (``augmentation.py``), three of them:

  * ``TensorLoader`` (the default): the whole uint8 data set lives on the training device and
    each batch is gathered and augmented there in a few batched ops: no workers, no host copies;
  * ``torch.utils.data.DataLoader`` over ``ImageDataset`` with worker processes and pinned memory
    (``--loader dataloader --workers N``);
  * ``torch.utils.data.DataLoader`` over ``image_stream.StreamDataset`` (``--loader stream``): an
    image folder decoded and cropped in the workers each epoch, flipped, jittered and normalised
    on the device.

On several processes (``torchrun``) both take this rank's shard of each pass (``ShardedOrder``).

Both draw their randomness from torch's generators (the training device's for ``TensorLoader``),
whose states the checkpoints keep, so a resumed run sees the same batches.
"""
import math

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    SubsetRandomSampler,
)

from .augmentation import Normalization, flip_augment, random_augment
from .image_data import StreamedImages
from .image_stream import StreamDataset


class ImageDataset(Dataset):
    """uint8 NHWC images with labels, one sample at a time (for a DataLoader with workers)."""

    def __init__(self, images, labels, augment, cutout_length, normalize):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # a view: NCHW uint8
        self.labels = torch.from_numpy(labels)
        self.augment = augment
        self.cutout_length = cutout_length
        self.normalize = normalize

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i:i + 1]
        x = random_augment(x, self.cutout_length, self.normalize) if self.augment else \
            self.normalize(x.float() / 255)
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
                 cutout_length=0, shards=None, normalize=Normalization()):
        self.normalize = normalize
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
            x = random_augment(x, self.cutout_length, self.normalize) if self.augment else \
                self.normalize(x.float() / 255)
            yield x, self.labels[batch]


def loader(options, data, indices, device, augment, shuffle, ranks=None):
    """The loader ``options.loader`` names over ``data[indices]`` (``image_data.HeldImages`` or
    ``StreamedImages``; this rank's shards of them when ``ranks`` is distributed); batches
    arrive on ``device``. Its ``shards`` attribute is the ``ShardedOrder`` (None for one
    process)."""
    cutout = options.cutout_length if augment and options.cutout else 0
    normalize = Normalization(data.info.mean, data.info.std)
    shards = ShardedOrder(indices, ranks.rank, ranks.world, options.seed, shuffle) \
        if ranks is not None and ranks.distributed else None
    if options.loader == "tensor":
        return TensorLoader(data.images, data.labels, indices, options.batch_size, device,
                            augment, shuffle, cutout, shards, normalize)
    if isinstance(data, StreamedImages):
        info = data.info
        dataset = StreamDataset(data.paths, data.labels, info.size, info.channels, augment)
        jitter = data.jitter if augment else None
        transform = (lambda x: flip_augment(x, normalize, jitter)) if augment else \
            (lambda x: normalize(x.float().div_(255)))
    else:
        dataset = ImageDataset(data.images, data.labels, augment, cutout, normalize)
        transform = None
    sampler = shards if shards is not None else \
        (SubsetRandomSampler(indices) if shuffle else list(indices))
    return _ToDevice(DataLoader(dataset, batch_size=options.batch_size, sampler=sampler,
                                num_workers=options.workers,
                                pin_memory=device.type == "cuda",
                                persistent_workers=options.workers > 0), device, shards,
                     transform)


class _ToDevice:
    def __init__(self, loader, device, shards, transform=None):
        self.loader, self.device, self.shards = loader, device, shards
        self.transform = transform

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield (x if self.transform is None else self.transform(x),
                   y.to(self.device, non_blocking=True))


def endless(loader):
    """The batches of ``loader``, pass after pass: the search's validation batches, one per
    step, drawn from one iterator instead of a new one each step."""
    while True:
        yield from loader


def batches_of(batch_size, images, ranks=None):
    """'of 8 per process': the batch size used on splits of ``images`` images, each dealt over
    the ranks; a split smaller than --batch_size is one smaller batch, and the text says so."""
    distributed = ranks is not None and ranks.distributed
    dealt = [math.ceil(n / ranks.world) for n in images] if distributed else images
    used = list(dict.fromkeys(min(batch_size, n) for n in dealt))
    clamped = "" if used == [batch_size] else \
        f"; --batch_size {batch_size} clamped to the images a split holds"
    return f"of {' and '.join(map(str, used))}{' per process' if distributed else ''}{clamped}"
