"""The command line's input pipeline alone, per loader (``bench_input_pipeline.py``; the report
sets it against the search step it feeds)."""
import functools
import os
import types

import torch
from cases import STEP_CONFIG, synchronize

# The input pipeline alone: one pass over PIPELINE_IMAGES augmented images in batches of the
# step's size, from the command line's loaders: CIFAR-sized arrays held in memory, and an image
# folder of 64x64 JPEG files, streamed (decoded and cropped each pass in the workers) or decoded
# once into memory (the one-time cost of a held folder, per image).
PIPELINE_IMAGES = 2048
PIPELINE_LOADERS = {"tensor": ("tensor", 0), "dataloader_0_workers": ("dataloader", 0),
                    "dataloader_2_workers": ("dataloader", 2),
                    "folder_stream_2_workers": ("stream", 2),
                    "folder_decode_2_workers": ("decode", 2)}
FOLDER_SIZE = 64


@functools.lru_cache(maxsize=None)
def _image_folder():
    """A folder of PIPELINE_IMAGES 64x64 JPEGs of 10 classes (made once per process)."""
    import tempfile

    from PIL import Image

    from darts_fast.cli import datasets

    root = tempfile.mkdtemp(prefix="darts-fast-pipeline-")
    images, labels = datasets.synthetic_images(PIPELINE_IMAGES, seed=0, size=FOLDER_SIZE)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return root


def input_pipeline(name, device):
    from darts_fast.cli import datasets, loaders
    from darts_fast.cli.image_data import DataInfo, Decoder, HeldImages, StreamedImages, parallel
    from darts_fast.cli.image_folder import list_images

    kind, workers = PIPELINE_LOADERS[name]
    options = types.SimpleNamespace(loader=kind, workers=workers, cutout=False, cutout_length=16,
                                    batch_size=STEP_CONFIG[torch.device(device).type]["batch"],
                                    seed=0)
    if kind in ("stream", "decode"):
        files = list_images(_image_folder())
        if kind == "decode":
            def run():
                pixels, _ = parallel(Decoder(FOLDER_SIZE, 3), files.paths, workers)
                return len(pixels)
            return run
        data = StreamedImages(files.paths, files.labels, DataInfo(
            "imagefolder", files.classes, 3, FOLDER_SIZE, (0.5,) * 3, (0.25,) * 3, "cifar"))
    else:
        images, labels = datasets.synthetic_images(PIPELINE_IMAGES, seed=0)
        data = HeldImages(images, labels, DataInfo(
            "synthetic", datasets.CIFAR_CLASSES, 3, 32, (0.5,) * 3, (0.25,) * 3, "cifar"))
    loader = loaders.loader(options, data, range(PIPELINE_IMAGES), torch.device(device),
                            augment=True, shuffle=True)

    def run():
        count = 0
        for x, _ in loader:
            count += len(x)
        synchronize(device)
        return count

    return run
