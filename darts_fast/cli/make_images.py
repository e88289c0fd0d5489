"""``darts-fast make-images DIR``: writes a small image-folder data set of the synthetic images
(``datasets.synthetic_images``: striped images whose angle and frequency depend on the class) in
the layout ``--data`` reads: ``DIR/train/<class>/<n>.png`` and ``DIR/val/<class>/<n>.png``. It
tries a search, a training and an export on images of any size and class count without a
download."""
import os
import shutil
import tempfile

from PIL import Image

from .datasets import synthetic_images
from .errors import UsageError
from .options import positive_int, seed


def add_arguments(p):
    p.add_argument("folder", metavar="DIR", help="a new or empty folder to write the images to")
    p.add_argument("--size", type=positive_int, default=64, help="the images' side in pixels")
    p.add_argument("--classes", type=positive_int, default=5, help="the number of classes")
    p.add_argument("--train_per_class", type=positive_int, default=80,
                   help="training images per class")
    p.add_argument("--val_per_class", type=positive_int, default=20,
                   help="validation images per class")
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="the file format")
    p.add_argument("--grey", action="store_true", help="grey images instead of colour")
    p.add_argument("--seed", type=seed, default=0, help="seed of the images")


def run(args):
    folder = args.folder
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UsageError(f"DIR {folder!r} exists and is not an empty folder")
    if args.classes < 2:
        raise UsageError(f"--classes {args.classes}: a classifier needs at least 2 classes")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    # Written beside the target and renamed into place: a kill leaves no half data set there.
    staging = tempfile.mkdtemp(prefix=".make-images-", dir=parent)
    try:
        for split, per_class, offset in (("train", args.train_per_class, 0),
                                         ("val", args.val_per_class, 1)):
            _write_split(os.path.join(staging, split), args, per_class, args.seed * 2 + offset)
        if os.path.isdir(folder):
            os.rmdir(folder)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = args.classes * (args.train_per_class + args.val_per_class)
    print(f"{total} {args.size}x{args.size} {'grey' if args.grey else 'colour'} images of "
          f"{args.classes} classes in {folder} (train/ and val/)")
    return 0


def _write_split(folder, args, per_class, seed_):
    names = [f"class_{k}" for k in range(args.classes)]
    counts = dict.fromkeys(range(args.classes), 0)
    for name in names:
        os.makedirs(os.path.join(folder, name))
    rng_seed = seed_
    while min(counts.values()) < per_class:
        images, labels = synthetic_images(4 * per_class * args.classes, rng_seed, args.size,
                                          args.classes)
        rng_seed += 1000
        for image, label in zip(images, labels):
            if counts[label] == per_class:
                continue
            picture = Image.fromarray(image)
            if args.grey:
                picture = picture.convert("L")
            suffix = "png" if args.format == "png" else "jpg"
            picture.save(os.path.join(folder, names[label], f"{counts[label]:05d}.{suffix}"),
                         quality=95)
            counts[label] += 1
