"""The original DARTS augmentation on batches of uint8 images: a random 32x32 crop of the image
padded by 4, a horizontal flip, normalisation and an optional cutout, in a few batched ops on the
images' device; its random draws come from that device's default generator."""
import functools

import torch

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
PAD = 4


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
