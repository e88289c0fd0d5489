"""The options that say which images a CNN command reads and how (``datasets.py``), and their
checks: ``--data`` is CIFAR-10 (its python batches or archive) or an image folder, told apart by
what it holds unless ``--dataset`` says."""
import argparse
import os

from .errors import UsageError
from .options import folder_name, non_negative_int, number, portion, positive, positive_int

finite = number(float, what="a finite number")


def add_data_options(p):
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=["synthetic", "cifar10", "imagefolder", "imagenet"],
                      default=None,
                      help="cifar10 (--data: its python batches), imagefolder (--data: your "
                           "images, one sub-folder per class, optionally in train/ and val/), "
                           "imagenet (an image folder with train/ and val/, read with the "
                           "original's ImageNet settings) or the offline synthetic set; "
                           "default: cifar10 or imagefolder by what --data holds, synthetic "
                           "without --data")
    data.add_argument("--data", type=folder_name, default=None,
                      help="the CIFAR-10 folder or cifar-10-python.tar.gz, or an image folder "
                           "(default: none, the synthetic data)")
    data.add_argument("--synthetic_size", type=positive_int, default=2000,
                      help="number of synthetic training images (default %(default)s)")
    data.add_argument("--loader", choices=["tensor", "dataloader", "stream"], default=None,
                      help="tensor: the decoded data set on the training device, batches "
                           "augmented there; dataloader: the same through a torch DataLoader "
                           "with --workers; stream: an image folder decoded again each epoch in "
                           "--workers processes, for sets too large to hold (random resized "
                           "crops); default: stream for imagenet, else tensor")
    data.add_argument("--workers", type=non_negative_int, default=2,
                      help="worker processes that decode images (and of --loader dataloader) "
                           "(default %(default)s)")
    data.add_argument("--cutout", action="store_true",
                      help="cut a random square out of each training image")
    data.add_argument("--cutout_length", type=positive_int, default=16,
                      help="the side of --cutout's square, in pixels")
    images = p.add_argument_group("image folders")
    images.add_argument("--image_size", type=positive_int, default=None,
                        help="the side of the square images the network sees: each image's "
                             "shorter side is resized to it and the centre kept (default: the "
                             "median shorter side of the training images; 224 for imagenet)")
    images.add_argument("--channels", type=int, choices=[1, 3], default=None,
                        help="1 (grey) or 3 (RGB) input channels (default: 1 if every training "
                             "image is grey, else 3)")
    images.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto",
                        help="the network's stem: cifar (cells at the input's resolution) or "
                             "imagenet (three stride-2 convolutions: cells at 1/8 of it); auto: "
                             "cifar up to 64 pixels, imagenet above and for --dataset imagenet "
                             "(default auto)")
    images.add_argument("--mean", type=finite, nargs="+", default=None, metavar="M",
                        help="the per-channel mean of the [0, 1] pixels that normalisation "
                             "subtracts (default: measured on the training images; ImageNet's "
                             "for imagenet)")
    images.add_argument("--std", type=positive, nargs="+", default=None, metavar="S",
                        help="the per-channel standard deviation normalisation divides by "
                             "(default: with --mean's)")
    images.add_argument("--val_fraction", type=portion, default=0.1,
                        help="an image folder without val/: the share of each class held out "
                             "as test images, the same for search and train (default "
                             "%(default)s)")
    images.add_argument("--bad_images", choices=["skip", "refuse"], default="skip",
                        help="images that cannot be read (empty, truncated, not an image, "
                             "16-bit): skip them, named in the log, or refuse the data set "
                             "(default %(default)s)")
    images.add_argument("--color_jitter", action=argparse.BooleanOptionalAction, default=None,
                        help="the original ImageNet colour jitter on training images "
                             "(brightness, contrast, saturation 0.4, hue 0.2; --loader stream) "
                             "(default: on for train --dataset imagenet, else off)")


def check_data_options(options, command):
    """Resolves what the data options leave to the data (``--dataset``, ``--loader``,
    ``--color_jitter``) and refuses combinations that cannot work, before anything is read."""
    if options.dataset is None:
        options.dataset = _guess_dataset(options.data) if options.data else "synthetic"
    if options.dataset != "synthetic" and not options.data:
        what = "CIFAR-10 folder or archive" if options.dataset == "cifar10" else "image folder"
        raise UsageError(f"--dataset {options.dataset} needs --data (the {what})")
    if options.dataset == "synthetic" and options.data:
        raise UsageError("--data is for --dataset cifar10, imagefolder or imagenet; the "
                         "synthetic data set reads no files")
    folder = options.dataset in ("imagefolder", "imagenet")
    if options.loader is None:
        options.loader = "stream" if options.dataset == "imagenet" else "tensor"
    if options.color_jitter is None:
        options.color_jitter = options.dataset == "imagenet" and command == "train"
    if not folder:
        given = [name for name in ("image_size", "channels", "mean", "std")
                 if getattr(options, name) is not None]
        if given or options.loader == "stream" or options.color_jitter:
            what = given[0] if given else ("loader stream" if options.loader == "stream"
                                           else "color_jitter")
            raise UsageError(f"--{what} is for image folders (--dataset imagefolder or "
                             f"imagenet); {options.dataset} images are 32x32 RGB")
    if options.cutout and options.loader == "stream":
        raise UsageError("--cutout applies to held images (--loader tensor or dataloader); "
                         "--loader stream's random resized crops take none")
    if options.color_jitter and options.loader != "stream":
        raise UsageError("--color_jitter is applied to --loader stream's crops; add "
                         "--loader stream or leave --color_jitter out")
    if (options.mean is None) != (options.std is None):
        raise UsageError("--mean and --std go together: give both, one value per channel")
    if options.mean is not None:
        channels = options.channels
        if len(options.mean) != len(options.std) or channels and len(options.mean) != channels:
            raise UsageError(f"--mean and --std need one value per input channel, got "
                             f"{len(options.mean)} and {len(options.std)}"
                             + (f" for --channels {channels}" if channels else ""))
        if len(options.mean) not in (1, 3):
            raise UsageError(f"--mean and --std take 1 (grey) or 3 (RGB) values, got "
                             f"{len(options.mean)}")
        options.channels = channels or len(options.mean)


def _guess_dataset(data):
    """cifar10 for a file (the archive) or a folder of CIFAR-10 batches, else imagefolder."""
    if os.path.isfile(data):
        return "cifar10"
    for folder in (data, os.path.join(data, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, "data_batch_1")) or \
                os.path.isfile(os.path.join(folder, "test_batch")):
            return "cifar10"
    return "imagefolder" if os.path.isdir(data) else "cifar10"
