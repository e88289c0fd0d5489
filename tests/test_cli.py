"""The command line: search and train runs, resume, outputs, data reading and bad input."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from darts_fast import checkpoint, cli, data
from darts_fast.genotypes import DARTS_V2, genotype_text, parse_genotype

TINY = ["--layers", "3", "--init_channels", "4", "--batch_size", "8", "--synthetic_size", "32",
        "--device", "cpu"]


def run(argv):
    return cli.main([str(a) for a in argv])


def alphas_of(run_dir):
    return checkpoint.load(os.path.join(run_dir, "checkpoint.pt"))["alphas"]


def test_search_resume_ends_with_the_same_alphas_bit_for_bit(tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    args = ["search", *TINY, "--epochs", "3", "--unrolled"]
    assert run([*args, "--run_dir", full]) == 0
    assert run([*args, "--run_dir", parts, "--stop_after_epoch", "1"]) == 0
    assert checkpoint.load(parts / "checkpoint.pt")["epoch"] == 1
    assert run(["search", "--resume", parts]) == 0
    for a, b in zip(alphas_of(full), alphas_of(parts)):
        assert torch.equal(a, b)
    assert (full / "genotype.txt").read_text() == (parts / "genotype.txt").read_text()
    rows = (parts / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]


def test_search_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["search", *TINY, "--epochs", "2", "--run_dir", out]) == 0
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 2
    genotype = parse_genotype(str(out / "genotype.json"))
    assert parse_genotype((out / "genotype.txt").read_text()) == genotype
    assert json.loads((out / "genotype_epoch_002.json").read_text())["text"] == \
        genotype_text(genotype)
    # The genotype written is the one the saved alphas give.
    from darts_fast import Network

    model = Network(4, 10, 3, None)
    with torch.no_grad():
        for a, saved in zip(model.arch_parameters(), state["alphas"]):
            a.copy_(saved)
    assert model.genotype().normal == genotype.normal
    alphas = json.loads((out / "alphas_epoch_001.json").read_text())
    assert np.allclose(np.sum(alphas["normal"], axis=1), 1.0, atol=1e-6)
    for picture in ("normal.png", "reduction.png", "alphas.png", "curves.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "genotype.json" in capsys.readouterr().out


def test_train_runs_and_resumes(tmp_path):
    args = ["train", *TINY, "--epochs", "2", "--genotype", "DARTS_V2", "--auxiliary", "--cutout"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run([*args, "--run_dir", full]) == 0
    assert run([*args, "--run_dir", parts, "--stop_after_epoch", "1"]) == 0
    assert run(["train", "--resume", parts]) == 0
    a = checkpoint.load(full / "checkpoint.pt")["model"]
    b = checkpoint.load(parts / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    final = json.loads((full / "final.json").read_text())
    assert final["epochs_done"] == 2 and 0 <= final["test_acc"] <= 100
    assert (full / "curves.png").exists()


def write_cifar(folder, n=20, broken=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [*data.CIFAR_TRAIN_FILES, data.CIFAR_TEST_FILE]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            if name == broken:
                f.write(b"not a pickle")
            else:
                pickle.dump(batch, f)
    return folder


def test_cifar_reader(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    images, labels = data.load_cifar10(str(tmp_path), train=True)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    first = np.asarray(batch[b"data"][0]).reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(images[20], first)  # channel planes become HWC pixels
    assert labels[20] == batch[b"labels"][0]
    test_images, _ = data.load_cifar10(str(folder), train=False)
    assert test_images.shape == (20, 32, 32, 3)
    dataset = data.ImageDataset(images, labels, augment=True, cutout_length=16)
    x, y = dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_search_on_cifar_folder(tmp_path):
    folder = write_cifar(tmp_path / "cifar", n=8)
    assert run(["search", *TINY, "--epochs", "1", "--data", folder,
                "--run_dir", tmp_path / "run"]) == 0


def error_of(argv, capsys):
    with pytest.raises(SystemExit) as e:
        code = run(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,message", [
    (["search", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["search", "--batch_size", "-4"], "--batch_size: expected a positive integer, got -4"),
    (["train", "--epochs", "-1", "--genotype", "DARTS"], "expected a positive integer, got -1"),
])
def test_bad_numbers(argv, message, capsys):
    assert message in error_of(argv, capsys)


def test_missing_and_malformed_data(tmp_path, capsys):
    err = error_of(["search", *TINY, "--data", tmp_path / "nowhere", "--run_dir",
                    tmp_path / "r1"], capsys)
    assert "does not exist" in err
    write_cifar(tmp_path / "partial")
    os.remove(tmp_path / "partial" / "data_batch_3")
    err = error_of(["search", *TINY, "--data", tmp_path / "partial", "--run_dir",
                    tmp_path / "r2"], capsys)
    assert "CIFAR-10 files missing" in err and "data_batch_3" in err
    write_cifar(tmp_path / "broken", broken="data_batch_1")
    err = error_of(["search", *TINY, "--data", tmp_path / "broken", "--run_dir",
                    tmp_path / "r3"], capsys)
    assert "data_batch_1" in err and "malformed" in err


@pytest.mark.parametrize("genotype,message", [
    ("DARTS_V9", "neither a file, a known name"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     "two (op, input) pairs per node"),
    ("Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "unknown operation"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 5)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "takes input 5"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "malformed"),
    ('{"normal": []}', "lacks normal_concat"),
])
def test_bad_genotypes(tmp_path, capsys, genotype, message):
    err = error_of(["train", *TINY, "--genotype", genotype, "--run_dir", tmp_path / "r"], capsys)
    assert message in err


def test_genotype_forms():
    assert parse_genotype("DARTS_V2") == DARTS_V2
    assert parse_genotype(genotype_text(DARTS_V2)) == DARTS_V2
    text = genotype_text(DARTS_V2).replace("[2, 3, 4, 5]", "range(2, 6)")
    assert parse_genotype(text) == DARTS_V2


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = error_of(["search", *TINY, "--run_dir", blocker / "run"], capsys)
    assert "is not writable" in err


def test_corrupt_checkpoint_is_detected_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["search", *TINY, "--epochs", "2", "--stop_after_epoch", "1",
                "--run_dir", out]) == 0
    capsys.readouterr()
    path = out / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    err = error_of(["search", "--resume", out], capsys)
    assert "corrupt or partial" in err
    assert path.read_bytes() == bytes(raw)  # nothing overwritten
    path.write_bytes(bytes(raw[:len(raw) // 2]))
    assert "corrupt or partial" in error_of(["search", "--resume", out], capsys)


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["search", *TINY, "--epochs", "1", "--run_dir", out]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    err = error_of(["search", *TINY, "--epochs", "1", "--run_dir", out], capsys)
    assert "already holds a run" in err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"epoch": 1}, str(path))
    good = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        checkpoint.save({"epoch": 2}, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
