"""The command line on image folders: make-images, a search and a training on generated images of
another size, class count and channel count, bad images, ImageNet's training recipe and
PC-DARTS' ImageNet search recipe on a tiny folder, and resuming on changed data."""
import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from darts_fast.cli import main

SMALL = ["--layers", "3", "--init_channels", "4", "--batch_size", "16", "--device", "cpu",
         "--workers", "0"]


def run(argv):
    return main.main([str(a) for a in argv])


def rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three classes of 32x32 grey JPEGs in train/ and val/."""
    folder = tmp_path_factory.mktemp("data") / "images"
    assert run(["make-images", folder, "--size", "32", "--classes", "3", "--train_per_class",
                "12", "--val_per_class", "4", "--grey", "--format", "jpeg"]) == 0
    return folder


@pytest.fixture(scope="module")
def searched(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "search"
    assert run(["search", "--data", images, *SMALL, "--epochs", "1", "--run_dir", folder]) == 0
    return folder


def test_make_images_writes_the_layout_and_refuses_a_used_folder(images, capsys):
    classes = sorted(p.name for p in (images / "train").iterdir())
    assert classes == ["class_0", "class_1", "class_2"]
    assert len(list((images / "val" / "class_2").iterdir())) == 4
    with Image.open(next((images / "train" / "class_0").iterdir())) as img:
        assert img.mode == "L" and img.size == (32, 32)
    assert run(["make-images", images]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_a_search_reads_the_size_classes_and_channels_of_the_folder(searched, images):
    info = json.loads((searched / "data.json").read_text())
    assert info["classes"] == ["class_0", "class_1", "class_2"]
    assert (info["channels"], info["size"], info["stem"]) == (1, 32, "cifar")
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255
                       for p in sorted((images / "train").glob("*/*.jpg"))])
    assert np.isclose(info["mean"][0], pixels.mean()) and np.isclose(info["std"][0], pixels.std())
    assert json.loads((searched / "config.json").read_text())["options"]["dataset"] == \
        "imagefolder"


def test_train_builds_the_network_for_the_folder(searched, images, tmp_path):
    folder = tmp_path / "train"
    assert run(["train", "--data", images, "--genotype", searched / "genotype.json", *SMALL,
                "--epochs", "1", "--auxiliary", "--run_dir", folder]) == 0
    spec = json.loads((folder / "network.json").read_text())
    assert spec["class"] == "NetworkCIFAR"
    assert {k: v for k, v in spec["kwargs"].items() if k != "genotype"} == \
        {"C": 4, "num_classes": 3, "layers": 3, "auxiliary": True, "in_channels": 1,
         "image_size": 32}
    assert json.loads((folder / "data.json").read_text()) == \
        json.loads((searched / "data.json").read_text())


def test_resuming_on_changed_data_is_refused(images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    folder = tmp_path / "run"
    assert run(["search", "--data", data, *SMALL, "--epochs", "2", "--stop_after_epoch", "1",
                "--run_dir", folder]) == 0
    shutil.copytree(data / "train" / "class_2", data / "train" / "class_3")
    shutil.copytree(data / "val" / "class_2", data / "val" / "class_3")
    capsys.readouterr()
    assert run(["search", "--resume", folder]) == 2
    err = capsys.readouterr().err
    assert "differs from the data the run" in err and "classes" in err


def test_bad_images_refused_write_nothing_and_skipped_are_logged(images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "train" / "class_1" / "broken.jpg").write_bytes(b"")
    folder = tmp_path / "refused"
    capsys.readouterr()
    assert run(["search", "--data", data, *SMALL, "--epochs", "1", "--bad_images", "refuse",
                "--run_dir", folder]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "0 bytes" in err and not folder.exists()
    folder = tmp_path / "skipped"
    assert run(["search", "--data", data, *SMALL, "--epochs", "1", "--run_dir", folder]) == 0
    assert "skipped 1 unusable training images" in (folder / "log.txt").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--image_size", "30"], "--image_size 30: the cifar stem needs a side that is a multiple"),
    (["--mean", "0.5"], "--mean and --std go together"),
    (["--mean", "0.5", "0.5", "--std", "0.2", "0.2"], "1 (grey) or 3 (RGB) values"),
    (["--dataset", "cifar10", "--image_size", "64"], "is for image folders"),
    (["--loader", "stream", "--cutout"], "--cutout applies to held images"),
    (["--color_jitter"], "--color_jitter is applied to --loader stream's crops"),
])
def test_bad_image_options_are_refused(images, tmp_path, capsys, argv, message):
    capsys.readouterr()
    assert run(["search", "--data", images, *SMALL, *argv, "--run_dir", tmp_path / "r"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_imagenet_training_recipe_on_a_tiny_folder(tmp_path, searched):
    data = tmp_path / "imagenet"
    assert run(["make-images", data, "--size", "80", "--classes", "2", "--train_per_class",
                "8", "--val_per_class", "2", "--format", "jpeg"]) == 0
    folder = tmp_path / "train"
    assert run(["train", "--dataset", "imagenet", "--data", data, "--image_size", "64",
                "--genotype", searched / "genotype.json", "--layers", "3", "--init_channels",
                "8", "--batch_size", "8", "--epochs", "2", "--auxiliary", "--device", "cpu",
                "--workers", "1", "--run_dir", folder]) == 0
    spec = json.loads((folder / "network.json").read_text())
    assert spec["class"] == "NetworkImageNet"
    options = json.loads((folder / "config.json").read_text())["options"]
    assert (options["label_smoothing"], options["lr_schedule"], options["weight_decay"]) == \
        (0.1, "step", 3e-5)
    assert options["loader"] == "stream" and options["color_jitter"] is True
    assert [float(r["lr"]) for r in rows(folder)] == pytest.approx([0.1, 0.097])
    info = json.loads((folder / "data.json").read_text())
    assert info["mean"] == [0.485, 0.456, 0.406] and info["stem"] == "imagenet"


def test_pc_darts_imagenet_search_recipe_on_a_tiny_folder(tmp_path):
    data = tmp_path / "imagenet"
    assert run(["make-images", data, "--size", "64", "--classes", "2", "--train_per_class",
                "16", "--val_per_class", "2", "--format", "jpeg"]) == 0
    folder = tmp_path / "search"
    assert run(["search", "--method", "pc-darts", "--dataset", "imagenet", "--data", data,
                "--image_size", "32", "--subset", "0.5", "0.25", "--warmup_epochs", "2",
                "--learning_rate_min", "0",
                "--learning_rate", "0.5", "--arch_learning_rate", "6e-3", "--arch_grad_clip", "5",
                "--arch_start_epoch",
                "1", "--epochs", "3", *SMALL, "--batch_size", "4", "--run_dir", folder]) == 0
    lrs = [float(r["lr"]) for r in rows(folder)]
    assert lrs[:2] == pytest.approx([0.25, 0.5])  # the warm-up, then the cosine's third epoch
    assert lrs[2] == pytest.approx(0.5 * (1 + np.cos(np.pi * 2 / 3)) / 2)
    banner = (folder / "log.txt").read_text().splitlines()[0]
    assert "(4 + 2 batches of 4)" in banner  # 8 and 4 of each class: half and a quarter
