"""The original DARTS augmentation on batches of uint8 images: a random crop of the image
zero-padded by ``pad`` (``pad_for(size)``: 4 on CIFAR's 32 pixels), a horizontal flip,
normalisation and an optional cutout, in a few batched ops on the images' device; its random draws
come from that device's default generator. ``Normalization`` holds a data set's per-channel mean
and std; ``flip_augment`` is the device half of the ImageNet training transform."""
import functools

import torch

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_for(size):
    """The crop's padding on ``size``-pixel images: an eighth of the side, as CIFAR's 4 of 32."""
    return max(1, size // 8)


class Normalization:
    """``(x - mean) / std`` per channel, with the constants made once per device: building them
    per batch would copy from the host, and wait for the device, on every step."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x):
        mean, std = _constants(self.mean, self.std, x.device)
        return (x - mean) / std


@functools.lru_cache(maxsize=None)
def _constants(mean, std, device):
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1))


def augment(images, top, left, flip, cutout_centre=None, cutout_length=0, pad=4,
            normalize=Normalization()):
    """The original's training transform on a batch, with its random draws given:
    ``images`` uint8 [B, C, H, W]; ``top``, ``left`` in 0..2*pad, the crop's corner in the image
    zero-padded by ``pad``; ``flip`` bool [B]; ``cutout_centre`` (rows, cols) of the square zeroed
    after normalisation, clipped at the border (as the original's Cutout)."""
    b, c, h, w = images.shape
    x = images.float().div_(255)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
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


def random_augment(images, cutout_length, normalize=Normalization()):
    """``augment`` with its parameters drawn from the default generator of the images' device."""
    b, _, h, w = images.shape
    device = images.device
    pad = pad_for(h)
    top, left = torch.randint(0, 2 * pad + 1, (2, b), device=device)
    flip = torch.rand(b, device=device) < 0.5
    centre = torch.randint(0, h, (2, b), device=device) if cutout_length > 0 else None
    return augment(images, top, left, flip, centre, cutout_length, pad, normalize)


def flip_augment(images, normalize, jitter=None):
    """The device half of the ImageNet training transform, on a batch of crops the workers made
    (``image_stream``): a random horizontal flip and, with ``jitter`` (brightness, contrast,
    saturation, hue), the colour jitter, then normalisation."""
    b = images.shape[0]
    x = images.float().div_(255)
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if jitter is not None:
        x = color_jitter(x, *jitter)
    return normalize(x)


def color_jitter(x, brightness, contrast, saturation, hue):
    r"""torchvision's ``ColorJitter`` on a batch of [0, 1] images, one draw per image: brightness
    ``x b``, contrast ``b x + (1 - b) mean(grey(x))``, saturation ``s x + (1 - s) grey(x)`` (each
    factor uniform in [1 - v, 1 + v], clamped to [0, 1] after each), then the hue shifted by a
    uniform draw in [-hue, hue] turns. torchvision applies the four in a random order per image;
    here they run in this fixed order. Grey images take brightness and contrast only."""
    b, c = x.shape[:2]

    def factor(v):
        return torch.empty(b, 1, 1, 1, device=x.device).uniform_(1 - v, 1 + v)

    x = (x * factor(brightness)).clamp_(0, 1)
    grey = _grey(x)
    f = factor(contrast)
    x = (f * x + (1 - f) * grey.mean(dim=(1, 2, 3), keepdim=True)).clamp_(0, 1)
    if c == 1:
        return x
    f = factor(saturation)
    x = (f * x + (1 - f) * _grey(x)).clamp_(0, 1)
    shift = torch.empty(b, 1, 1, device=x.device).uniform_(-hue, hue)
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + shift, 1.0), s, v)


def _grey(x):
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h / 6.0, 1.0) * (delta > 0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([torch.stack(c, 1) for c in
                           ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return choices.gather(0, i[None, :, None].expand(1, -1, 3, -1, -1))[0]
