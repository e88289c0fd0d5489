"""An image folder decoded again each epoch, in DataLoader workers (``--loader stream``): the
worker half of the original ImageNet transforms, whose output is uint8 crops of one size, so the
rest (flip, colour jitter, normalisation: ``augmentation.flip_augment``) runs batched on the
training device.

  * training: torchvision's ``RandomResizedCrop(size)``: a box of 8% to 100% of the image's area
    and aspect ratio 3/4 to 4/3 (10 tries, then the centre's largest box within those ratios),
    resized to ``size`` x ``size``, bilinear;
  * evaluation: ``Resize(size * 256 / 224)`` and ``CenterCrop(size)`` (224 of 256 at ImageNet's
    size).

The random draws come from torch's generator in each worker, which DataLoader seeds from the
main process's: one seed, the same crops. An image that fails to decode here (one the header scan
let through, cut short) is replaced by the next image of the set and named on stderr, once:
``--bad_images refuse`` decodes every image before the first step instead.
"""
import math
import sys

import torch
from torch.utils.data import Dataset

from .image_folder import BadImage, decode

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_box(width, height, generator=None):
    """torchvision's ``RandomResizedCrop.get_params`` on a ``width`` x ``height`` image:
    (left, top, box width, box height) in pixels."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*SCALE, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def eval_resize(size):
    """The side the shorter side is resized to before the centre ``size`` crop."""
    return int(round(size * 256 / 224))


class StreamDataset(Dataset):
    """uint8 [channels, size, size] crops of ``paths`` with their labels: random resized crops
    when ``train``, else the evaluation crop."""

    def __init__(self, paths, labels, size, channels, train):
        self.paths, self.labels = paths, torch.as_tensor(labels)
        self.size, self.channels, self.train = size, channels, train
        self._reported = set()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                pixels = self._crop(self.paths[j])
            except BadImage as e:
                if e.path not in self._reported:
                    self._reported.add(e.path)
                    print(f"darts-fast: skipped an unusable image, replaced by the next: {e}",
                          file=sys.stderr)
                continue
            return torch.from_numpy(pixels).permute(2, 0, 1), self.labels[j]
        raise BadImage(self.paths[i], "no image of the data set can be decoded")

    def _crop(self, path):
        if not self.train:
            side = eval_resize(self.size)
            pixels = decode(path, side, self.channels)
            offset = (side - self.size) // 2
            return pixels[offset:offset + self.size, offset:offset + self.size].copy()
        # The box is drawn from the size of the image as opened: one read of the file.
        return decode(path, self.size, self.channels, box=random_resized_box)
