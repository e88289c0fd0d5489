"""CIFAR-10 from its python batches, in a folder or in the ``cifar-10-python.tar.gz`` archive,
read strictly: damage (a corrupt or cut archive, a foreign pickle, a flipped bit in an official
batch, malformed arrays) is refused with a ``DataError`` that names the file, never trained on.
"""
import bz2
import gzip
import hashlib
import io
import lzma
import os
import pickle
import tarfile
import zlib

import numpy as np

from .errors import UsageError

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
NUM_CLASSES = 10
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
