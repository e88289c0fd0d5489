"""The image-folder reader (``cli/image_folder.py``, ``image_data.py``, ``datasets.py``) on
generated files, bad ones included, and the device half of the ImageNet transforms, each against
an independent computation."""
import argparse
import colorsys
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from darts_fast.cli import augmentation, datasets
from darts_fast.cli.cifar10 import DataError
from darts_fast.cli.image_data import channel_statistics
from darts_fast.cli.image_folder import decode, inspect, list_images
from darts_fast.cli.image_stream import StreamDataset, random_resized_box


def _options(data, **given):
    defaults = dict(dataset="imagefolder", data=str(data), image_size=None, channels=None,
                    stem="auto", mean=None, std=None, val_fraction=0.25, bad_images="skip",
                    color_jitter=False, loader="tensor", workers=0, subset=None,
                    train_portion=0.5, seed=2)
    return argparse.Namespace(**{**defaults, **given})


def _write(path, array, **save):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **save)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 16x16 colour PNGs with known pixels (a class folder nested one level
    deeper, a hidden file and a text file that are not images), and the pixels by path."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = {}
    for label, name in enumerate(("cat", "dog")):
        for i in range(6):
            sub = "nested" if i == 5 else ""
            path = os.path.join(root, name, sub, f"{i}.png")
            pixels[path] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            _write(path, pixels[path])
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    return root, pixels


def test_listing_follows_the_image_folder_layout(folder):
    root, pixels = folder
    files = list_images(str(root))
    assert files.classes == ("cat", "dog")
    assert sorted(files.paths) == sorted(pixels)
    assert [int(label) for label in files.labels] == [0] * 6 + [1] * 6
    assert all(("cat" in p) == (label == 0) for p, label in zip(files.paths, files.labels))


def test_an_image_of_the_target_size_decodes_to_its_own_pixels(folder):
    _, pixels = folder
    for path, want in pixels.items():
        assert np.array_equal(decode(path, 16, 3), want)
        grey = decode(path, 16, 1)[..., 0].astype(np.float64)
        # Pillow's L conversion: ITU-R 601-2 luma, rounded.
        luma = want.astype(np.float64) @ np.array([299, 587, 114]) / 1000
        assert np.abs(grey - luma).max() <= 1


def test_resizing_keeps_the_centre_of_the_shorter_side(tmp_path):
    """A 40x20 image whose left and right fifths differ from its middle: the 10-pixel decode
    resizes the shorter side to 10 (20x10) and keeps the middle half, within the middle band
    by more than the bilinear filter's reach."""
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :8] = 50
    image[:, 8:32] = 200
    image[:, 32:] = 90
    _write(tmp_path / "wide.png", image)
    got = decode(str(tmp_path / "wide.png"), 10, 3)
    assert got.shape == (10, 10, 3)
    assert np.array_equal(got, np.full((10, 10, 3), 200, dtype=np.uint8))


def test_modes_convert_and_bad_files_are_named(tmp_path):
    rgb = np.full((8, 8, 3), 120, dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg")
    for name in ("palette.png", "alpha.png", "photo.jpg", "print.jpg"):
        assert np.abs(decode(str(tmp_path / name), 8, 3).astype(int) - 120).max() <= 3, name
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(tmp_path / "deep.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.jpg", quality=95)
    whole = (tmp_path / "noise.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    reasons = {"empty.png": "0 bytes", "text.jpg": "not a readable image", "deep.png": "16-bit"}
    for name, reason in reasons.items():
        with pytest.raises(Exception) as e:
            inspect(str(tmp_path / name))
        assert str(tmp_path / name) in str(e.value) and reason in str(e.value)
    inspect(str(tmp_path / "cut.jpg"))  # its header is whole: only decoding finds the cut
    with pytest.raises(Exception, match="cut.jpg: cannot be decoded"):
        decode(str(tmp_path / "cut.jpg"), 8, 3)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """An image folder with train/ and val/, 8x8 grey images, and three bad training files."""
    root = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(1)
    for split, count in (("train", 5), ("val", 2)):
        for name in ("a", "b"):
            for i in range(count):
                _write(os.path.join(root, split, name, f"{i}.png"),
                       rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (root / "train" / "a" / "zero.png").write_bytes(b"")
    (root / "train" / "b" / "junk.png").write_text("junk")
    whole = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "b" / "cut.png").write_bytes(whole[:len(whole) - 30])
    return root


def test_bad_images_are_skipped_with_their_paths_or_refused(damaged):
    train, test = datasets.folder_data(_options(damaged), with_test=True)
    assert len(train) == 10 and len(test) == 4  # the val/ folder, not a held-out share
    assert train.info.channels == 1 and train.info.size == 8 and train.info.stem == "cifar"
    notes = " ".join(train.notes)
    assert "skipped 2 unusable training images" in notes  # zero bytes, not an image
    assert "skipped 1 unusable training images" in notes  # cut short: found when decoded
    for name in ("zero.png", "junk.png", "cut.png"):
        assert name in notes
    with pytest.raises(DataError, match="2 of the training images cannot be used") as e:
        datasets.folder_data(_options(damaged, bad_images="refuse"), with_test=True)
    assert "zero.png" in str(e.value) and "junk.png" in str(e.value)


def test_statistics_are_those_of_the_training_images(damaged):
    train, test = datasets.folder_data(_options(damaged, channels=3), with_test=True)
    pixels = train.images.astype(np.float64).reshape(-1, 3) / 255
    assert np.allclose(train.info.mean, pixels.mean(0), atol=1e-12)
    assert np.allclose(train.info.std, pixels.std(0), atol=1e-12)
    assert test.info == train.info
    mean, std = channel_statistics(test.images)
    assert not np.allclose(mean, train.info.mean)  # the test images are not mixed in


def test_held_out_share_is_per_class_and_fixed(folder):
    root, _ = folder
    first = datasets.folder_data(_options(root, seed=1), with_test=True)
    second = datasets.folder_data(_options(root, seed=9), with_test=True)
    for a, b in zip(first, second):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    train, test = first
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]  # ceil(0.25 * 6) of each class
    held = {im.tobytes() for im in test.images}
    assert not held & {im.tobytes() for im in train.images}


def test_subsets_are_per_class_and_disjoint():
    labels = np.repeat(np.arange(4), 40)
    weights, arch = datasets.search_split(labels, _options(".", subset=[0.1, 0.025]))
    assert not set(weights.tolist()) & set(arch.tolist())
    assert np.bincount(labels[weights]).tolist() == [4] * 4
    assert np.bincount(labels[arch]).tolist() == [1] * 4


def test_random_resized_box_keeps_within_its_ranges():
    generator = torch.Generator().manual_seed(0)
    for width, height in ((300, 200), (50, 400), (64, 64)):
        for _ in range(200):
            left, top, w, h = random_resized_box(width, height, generator)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            fallback = (w == width or h == height) and not 0.08 <= w * h / (width * height)
            if not fallback and w * h < width * height:
                assert 0.08 * 0.9 <= w * h / (width * height) <= 1.0
                assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_streamed_evaluation_crop_is_the_centre_of_the_resized_image(folder):
    root, pixels = folder
    paths = sorted(pixels)
    dataset = StreamDataset(paths, np.zeros(len(paths), dtype=np.int64), 14, 3, train=False)
    x, _ = dataset[0]
    side = round(14 * 256 / 224)  # 16: the image itself, its centre 14x14 kept
    assert side == 16
    assert torch.equal(x, torch.from_numpy(pixels[paths[0]][1:15, 1:15]).permute(2, 0, 1))


def test_color_jitter_equals_the_per_image_formulas():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 4, 5, dtype=torch.float64)
    state = torch.get_rng_state()
    got = augmentation.color_jitter(x.clone(), 0.4, 0.4, 0.4, 0.2)
    torch.set_rng_state(state)
    b = torch.empty(3, 1, 1, 1).uniform_(0.6, 1.4).double()
    c = torch.empty(3, 1, 1, 1).uniform_(0.6, 1.4).double()
    s = torch.empty(3, 1, 1, 1).uniform_(0.6, 1.4).double()
    h = torch.empty(3, 1, 1).uniform_(-0.2, 0.2).double()
    for i in range(3):
        img = (x[i] * b[i]).clamp(0, 1).numpy()
        luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        img = np.clip(c[i].item() * img + (1 - c[i].item()) * luma.mean(), 0, 1)
        luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        img = np.clip(s[i].item() * img + (1 - s[i].item()) * luma, 0, 1)
        want = np.empty_like(img)
        for y in range(4):
            for z in range(5):
                hh, ss, vv = colorsys.rgb_to_hsv(*img[:, y, z])
                want[:, y, z] = colorsys.hsv_to_rgb(math.fmod(hh + h[i].item() + 1, 1), ss, vv)
        assert np.abs(got[i].numpy() - want).max() < 1e-6


def test_a_folder_that_cannot_train_a_classifier_is_refused(tmp_path, monkeypatch):
    _write(str(tmp_path / "one" / "only" / "0.png"), np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="one class folder .*'only'.* at least two"):
        datasets.folder_data(_options(tmp_path / "one"), with_test=False)
    for name in ("a", "b"):
        _write(str(tmp_path / "single" / name / "0.png"), np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="--val_fraction 0.25 holds out no image"):
        datasets.folder_data(_options(tmp_path / "single"), with_test=True)
    # Held in memory, the images would take more than half of a 1 MiB machine.
    for name in ("a", "b"):
        _write(str(tmp_path / "big" / name / "0.png"), np.zeros((8, 8), dtype=np.uint8))
        _write(str(tmp_path / "big" / name / "1.png"), np.zeros((8, 8), dtype=np.uint8))
    sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 256 if name == "SC_PHYS_PAGES" else
                        4096 if name == "SC_PAGE_SIZE" else sysconf(name))
    with pytest.raises(DataError, match="more than half of this machine's .*--loader stream"):
        datasets.folder_data(_options(tmp_path / "big", image_size=512, val_fraction=0.5),
                             with_test=True)
