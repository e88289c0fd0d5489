"""The command line: search and train runs, resume, outputs, the data readers, and what bad input
and hostile use get (one line, exit 2, nothing written; a run folder nothing can corrupt)."""
import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time

import filelock
import numpy as np
import pytest
import torch

from darts_fast.cli import (
    augmentation,
    checkpoint,
    cifar10,
    datasets,
    loaders,
    main,
    run_dir,
    stored_run,
)
from darts_fast.cli.image_data import DataInfo, HeldImages
from darts_fast.spaces.cnn.genotypes import DARTS_V2, genotype_text, parse_genotype

# One batch per split and epoch: the smallest runs that still exercise every path.
TINY = ["--layers", "3", "--init_channels", "4", "--batch_size", "8", "--synthetic_size", "16",
        "--device", "cpu"]


def run(argv):
    return main.main([str(a) for a in argv])


def state_of(folder):
    return checkpoint.load(str(folder / "checkpoint.pt"))


def error_of(argv, capsys, after_work=False):
    """The error line of a command that must fail with exit 2; a command rejected before it
    starts (not ``after_work``) prints nothing else."""
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and ": error: " in lines[-1], err
    assert after_work or len(lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A two-epoch first-order search: read by tests, copied by those that damage it."""
    folder = tmp_path_factory.mktemp("searches") / "run"
    assert run(["search", *TINY, "--epochs", "2", "--run_dir", folder]) == 0
    return folder


def copy_of(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


# --- runs, resume and outputs -------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_second_order_search(tmp_path_factory):
    folder = tmp_path_factory.mktemp("searches") / "unrolled"
    assert run(["search", *TINY, "--epochs", "2", "--unrolled", "--run_dir", folder]) == 0
    return folder


def test_resumed_deterministic_recomputed_search_ends_with_the_same_alphas_bit_for_bit(
        finished_second_order_search, tmp_path):
    """Stopped after epoch 1 and resumed, with --deterministic and --recompute (which change the
    memory, not the numbers): the alphas, genotype and curves of the run without a break."""
    full, parts = finished_second_order_search, tmp_path / "parts"
    assert run(["search", *TINY, "--epochs", "2", "--unrolled", "--deterministic", "--recompute",
                "--run_dir", parts, "--stop_after_epoch", "1"]) == 0
    assert state_of(parts)["epoch"] == 1
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    assert run(["search", "--resume", parts]) == 0
    for a, b in zip(state_of(full)["alphas"], state_of(parts)["alphas"]):
        assert torch.equal(a, b)
    assert (full / "genotype.txt").read_text() == (parts / "genotype.txt").read_text()
    rows = (parts / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"]
    assert [r.split(",")[1:6] for r in rows] == [
        r.split(",")[1:6] for r in (full / "metrics.csv").read_text().strip().splitlines()]


def test_kill_9_during_a_search_resumes_bit_identical(finished_search, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "darts_fast", "search", *TINY, "--epochs", "2",
                             "--run_dir", str(killed)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # while epoch 1's outputs are written, or early in epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run(["search", "--resume", killed]) == 0
    # finished_search ran the same command without a break.
    for a, b in zip(state_of(finished_search)["alphas"], state_of(killed)["alphas"]):
        assert torch.equal(a, b)
    assert (finished_search / "metrics.csv").read_text().count("\n") == \
        (killed / "metrics.csv").read_text().count("\n")
    assert not [n for n in os.listdir(killed) if ".tmp-" in n]


def test_search_outputs(finished_search, capsys):
    out = finished_search
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]  # plain torch reads it
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
    assert (model.genotype().normal, model.genotype().reduce) == (genotype.normal, genotype.reduce)
    alphas = json.loads((out / "alphas_epoch_001.json").read_text())
    assert np.allclose(np.sum(alphas["normal"], axis=1), 1.0, atol=1e-6)
    for picture in ("normal.png", "reduction.png", "alphas.png", "curves.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2/2" in (out / "log.txt").read_text()
    events = os.listdir(out / "tensorboard")
    assert events and events[0].startswith("events.out.tfevents")


def test_tensorboard_events_hold_the_curves(finished_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_search / "tensorboard"))
    events.Reload()
    rows = (finished_search / "metrics.csv").read_text().strip().splitlines()[1:]
    losses = [s.value for s in events.Scalars("loss/train")]
    assert losses == pytest.approx([float(r.split(",")[2]) for r in rows], abs=1e-4)
    assert "alphas/normal" in events.Tags()["images"]


def test_train_runs_and_resumes(tmp_path):
    args = ["train", *TINY, "--epochs", "2", "--genotype", "DARTS_V2", "--auxiliary", "--cutout"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run([*args, "--run_dir", full]) == 0
    assert run([*args, "--run_dir", parts, "--stop_after_epoch", "1"]) == 0
    assert run(["train", "--resume", parts]) == 0
    a, b = state_of(full)["model"], state_of(parts)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    final = json.loads((full / "final.json").read_text())
    assert final["epochs_done"] == 2 and 0 <= final["test_acc"] <= 100


def test_a_run_of_an_earlier_version_resumes(finished_search, tmp_path):
    """config.json as versions before --nesterov and the gdas temperatures wrote it: the run
    resumes with the values it ran with and ends as the unbroken run."""
    parts = tmp_path / "parts"
    assert run(["search", *TINY, "--epochs", "2", "--run_dir", parts,
                "--stop_after_epoch", "1"]) == 0
    config = json.loads((parts / "config.json").read_text())
    state = state_of(parts)
    for name in set(stored_run.ADDED_LATER) & set(config["options"]):  # a search's of them
        del config["options"][name], state["options"][name]
    (parts / "config.json").write_text(json.dumps(config))
    with open(parts / "checkpoint.pt", "wb") as f:
        checkpoint.serialize(state, f)
    assert run(["search", "--resume", parts]) == 0
    for a, b in zip(state_of(finished_search)["alphas"], state_of(parts)["alphas"]):
        assert torch.equal(a, b)
    # The resume rewrote config.json with them; a checkpoint of an earlier version still lacks
    # them when a resumed run stops before it writes its own.
    state = state_of(parts)
    for name in set(stored_run.ADDED_LATER) & set(state["options"]):
        del state["options"][name]
    with open(parts / "checkpoint.pt", "wb") as f:
        checkpoint.serialize(state, f)
    assert "nesterov" in json.loads((parts / "config.json").read_text())["options"]
    assert run(["search", "--resume", parts, "--epochs", "3"]) == 0


def test_resume_with_more_epochs_continues_the_schedule(finished_search, tmp_path):
    folder = copy_of(finished_search, tmp_path)
    assert run(["search", "--resume", folder, "--epochs", "3", "--no_cuda_graph"]) == 0
    rows = (folder / "metrics.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 3 and json.loads((folder / "config.json").read_text())[
        "options"]["epochs"] == 3
    # Epochs 1-2 ran the 2-epoch cosine; epoch 3 takes the 3-epoch cosine's rate for epoch 3.
    lrs = [float(r.split(",")[1]) for r in rows]
    assert lrs[:2] == pytest.approx([0.025, 0.001 + 0.024 * 0.5], rel=1e-5)
    assert lrs[2] == pytest.approx(0.001 + 0.024 * (1 + np.cos(np.pi * 2 / 3)) / 2, rel=1e-5)


def test_first_order_search_with_an_alpha_outside_the_loss(tmp_path):
    # With two layers every cell reduces: the normal alphas take no part in the loss, keep no
    # gradient and, as in the original, stay as initialised.
    out = tmp_path / "run"
    assert run(["search", *TINY, "--layers", "2", "--epochs", "1", "--original_valid_sampling",
                "--run_dir", out]) == 0
    torch.manual_seed(2)
    from darts_fast import Network

    initial = Network(4, 10, 2, None).alphas_normal
    assert torch.equal(state_of(out)["alphas"][0], initial)


# --- data ---------------------------------------------------------------------------------------

def write_cifar(folder, n=20, broken=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [*cifar10.CIFAR_TRAIN_FILES, cifar10.CIFAR_TEST_FILE]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            if name == broken:
                f.write(b"not a pickle")
            else:
                pickle.dump(batch, f)
    return folder


def test_cifar_reader_folder_and_archive(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    images, labels = cifar10.load_cifar10(str(tmp_path), train=True)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    first = np.asarray(batch[b"data"][0]).reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(images[20], first)  # channel planes become HWC pixels
    assert labels[20] == batch[b"labels"][0]
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_archive = cifar10.load_cifar10(str(archive), train=True)
    assert np.array_equal(from_archive[0], images) and np.array_equal(from_archive[1], labels)
    test_images, _ = cifar10.load_cifar10(str(archive), train=False)
    assert test_images.shape == (20, 32, 32, 3)


def test_batched_augmentation_equals_the_per_image_transform():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    top, left = torch.tensor([0, 8, 3, 4, 8, 1]), torch.tensor([8, 0, 5, 4, 2, 7])
    flip = torch.tensor([True, False, True, False, False, True])
    centre = (torch.tensor([0, 31, 10, 16, 5, 2]), torch.tensor([31, 0, 20, 16, 9, 30]))
    got = augmentation.augment(images, top, left, flip, centre, cutout_length=16)
    mean = torch.tensor(augmentation.CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(augmentation.CIFAR_STD).view(3, 1, 1)
    for i in range(6):  # the original's order: pad+crop, flip, to [0,1], normalise, cutout
        padded = np.pad(images[i].numpy(), ((0, 0), (4, 4), (4, 4)))
        crop = padded[:, top[i]:top[i] + 32, left[i]:left[i] + 32]
        crop = crop[:, :, ::-1] if flip[i] else crop
        x = (torch.from_numpy(crop.copy()).float() / 255 - mean) / std
        cy, cx = int(centre[0][i]), int(centre[1][i])
        x[:, max(cy - 8, 0):min(cy + 8, 32), max(cx - 8, 0):min(cx + 8, 32)] = 0
        assert torch.allclose(got[i], x, atol=1e-6)


def test_loaders_cover_the_split_and_resume_the_same_batches():
    images, labels = datasets.synthetic_images(40, seed=0)
    data = HeldImages(images, labels, DataInfo("synthetic", datasets.CIFAR_CLASSES, 3, 32,
                                               augmentation.CIFAR_MEAN, augmentation.CIFAR_STD,
                                               "cifar"))
    options = main.build_parser()[0].parse_args(["search", "--batch_size", "16"])
    for kind in ("tensor", "dataloader"):
        options.loader, options.workers = kind, 0
        loader = loaders.loader(options, data, range(10, 40), torch.device("cpu"),
                                augment=False, shuffle=True)
        torch.manual_seed(0)
        first = [y for _, y in loader]
        assert sorted(torch.cat(first).tolist()) == sorted(labels[10:40].tolist())
        assert [len(y) for y in first] == [16, 14]
        torch.manual_seed(0)
        assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in loader]))


def test_sharded_order_deals_disjoint_equal_shards_pass_after_pass():
    """Two ranks: each pass a new permutation, the same on both ranks, dealt as DistributedSampler
    deals it (padded with its start, every second index); a copy set to the same pass count
    (a resumed run) deals the same shards."""
    indices = range(10, 25)  # 15 indices: one padded
    shards = [loaders.ShardedOrder(indices, rank, 2, seed=3, shuffle=True) for rank in range(2)]
    passes = [[list(s) for s in shards] for _ in range(3)]
    for dealt in passes:
        assert [len(d) for d in dealt] == [8, 8]
        assert sorted(dealt[0] + dealt[1][:-1]) == list(indices)
        order = [i for pair in zip(*dealt) for i in pair]
        assert order[15] == order[0]  # the padding repeats the pass's first index
    assert passes[0] != passes[1] != passes[2]
    resumed = loaders.ShardedOrder(indices, 1, 2, seed=3, shuffle=True)
    resumed.passes = 2
    assert list(resumed) == passes[2][1]
    images, labels = datasets.synthetic_images(30, seed=0)
    loader = loaders.TensorLoader(images, labels, indices, 3, torch.device("cpu"), False, True,
                                  shards=loaders.ShardedOrder(indices, 0, 2, seed=3, shuffle=True))
    assert len(loader) == 3
    assert torch.cat([y for _, y in loader]).tolist() == labels[passes[0][0]].tolist()


def test_search_on_cifar_archive(tmp_path):
    folder = write_cifar(tmp_path / "cifar", n=8)
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert run(["search", *TINY, "--epochs", "1", "--data", archive, "--loader", "dataloader",
                "--workers", "1", "--run_dir", tmp_path / "run"]) == 0


def test_pc_darts_search_on_cifar_files_with_its_authors_schedule(tmp_path, capsys):
    """--method pc-darts: the authors' defaults where not given, weight steps alone until
    --arch_start_epoch (the alphas and betas as initialised), then architecture steps; resumed
    across that boundary; edge weights in the alphas file; the PC-DARTS genotype rule."""
    from darts_fast import PCNetwork
    from darts_fast.cli.runtime import seed_everything

    cifar = write_cifar(tmp_path / "cifar", n=8)
    folder = tmp_path / "run"
    argv = ["search", "--method", "pc-darts", "--layers", "3", "--init_channels", "8",
            "--batch_size", "8", "--device", "cpu", "--data", cifar, "--epochs", "2",
            "--arch_start_epoch", "1", "--run_dir", folder]
    assert run([*argv, "--stop_after_epoch", "1"]) == 0
    options = json.loads((folder / "config.json").read_text())["options"]
    assert (options["learning_rate"], options["arch_learning_rate"],
            options["partial_channels"]) == (0.1, 6e-4, 4)
    seed_everything(2)
    fresh = PCNetwork(8, 10, 3, torch.nn.CrossEntropyLoss(), k=4)
    first = state_of(folder)["alphas"]
    assert len(first) == 4 and all(torch.equal(a, b.detach())
                                   for a, b in zip(first, fresh.arch_parameters()))
    assert "pc-darts (k=4) search" in capsys.readouterr().err
    assert run(["search", "--resume", folder]) == 0
    last = state_of(folder)["alphas"]
    assert all(not torch.equal(a, b) for a, b in zip(first, last))
    with torch.no_grad():
        for param, saved in zip(fresh.arch_parameters(), last):
            param.copy_(saved)
    assert json.loads((folder / "genotype.json").read_text())["text"] == \
        genotype_text(fresh.genotype())
    alphas = json.loads((folder / "alphas_epoch_002.json").read_text())
    assert torch.allclose(torch.tensor(alphas["normal_edges"]),
                          fresh.edge_weights(last[2]).float())


def test_gdas_search_on_cifar_files(tmp_path, capsys):
    """--method gdas on CIFAR-10 files: the authors' defaults where not given, the alphas moved,
    the GDAS genotype rule, the pictures."""
    from darts_fast import GDASNetwork

    cifar = write_cifar(tmp_path / "cifar", n=8)
    folder = tmp_path / "run"
    assert run(["search", "--method", "gdas", "--layers", "3", "--init_channels", "8",
                "--batch_size", "8", "--device", "cpu", "--data", cifar, "--epochs", "2",
                "--run_dir", folder]) == 0
    options = json.loads((folder / "config.json").read_text())["options"]
    assert (options["learning_rate"], options["weight_decay"], options["nesterov"],
            options["tau_max"]) == (0.025, 5e-4, True, 10.0)
    assert "gdas (tau 10 to 0.1, weight step first) search" in capsys.readouterr().err
    model = GDASNetwork(8, 10, 3, None)
    alphas = state_of(folder)["alphas"]
    assert not any(torch.equal(a, b.detach()) for a, b in zip(alphas, model.arch_parameters()))
    with torch.no_grad():
        for param, saved in zip(model.arch_parameters(), alphas):
            param.copy_(saved)
    assert json.loads((folder / "genotype.json").read_text())["text"] == \
        genotype_text(model.genotype())
    for name in ("normal.png", "reduction.png", "alphas.png", "curves.png"):
        assert (folder / name).stat().st_size > 0


def test_missing_and_malformed_data(tmp_path, capsys):
    assert "does not exist" in error_of(["search", *TINY, "--data", tmp_path / "nowhere",
                                         "--run_dir", tmp_path / "r1"], capsys)
    write_cifar(tmp_path / "partial")
    os.remove(tmp_path / "partial" / "data_batch_3")
    err = error_of(["search", *TINY, "--data", tmp_path / "partial", "--run_dir",
                    tmp_path / "r2"], capsys)
    assert "CIFAR-10 files missing" in err and "data_batch_3" in err
    write_cifar(tmp_path / "broken", broken="data_batch_1")
    err = error_of(["search", *TINY, "--data", tmp_path / "broken", "--run_dir",
                    tmp_path / "r3"], capsys)
    assert "data_batch_1" in err and "malformed" in err
    (tmp_path / "file").write_text("x")
    assert "not a readable CIFAR-10 archive" in error_of(
        ["search", *TINY, "--data", tmp_path / "file"], capsys)
    assert "--data is for --dataset cifar10" in error_of(
        ["search", *TINY, "--dataset", "synthetic", "--data", tmp_path / "broken"], capsys)
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


# --- bad input: one line, exit 2, nothing written -----------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["search", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["search", "--batch_size", "-4"], "--batch_size: expected a positive integer, got -4"),
    (["search", "--learning_rate", "-0.1"], "--learning_rate: expected a finite number >= 0"),
    (["search", "--learning_rate", "nan"], "--learning_rate: expected a finite number >= 0"),
    (["search", "--weight_decay", "inf"], "--weight_decay: expected a finite number >= 0"),
    (["search", "--momentum", "-0.9"], "--momentum: expected a number in [0, 1)"),
    (["search", "--seed", "-1"], "--seed: expected an integer seed"),
    (["search", "--seed", str(2**32)], "--seed: expected an integer seed"),
    (["train", "--drop_path_prob", "2.0", "--genotype", "DARTS"],
     "--drop_path_prob: expected a number in [0, 1)"),
    (["search", "--device", "mps"], "--device: expected cpu, cuda or cuda:N, got 'mps'"),
    (["search", "--device", "meta"], "--device: expected cpu, cuda or cuda:N, got 'meta'"),
    (["search", "--resume", ""], "--resume: expected a folder, got an empty name"),
    (["search", "--hessian", "exact", "--reference"], "--hessian exact is a darts_fast option"),
    (["search", "--recompute", "--reference"], "--recompute is a darts_fast option"),
    (["search", "--partial_channels", "2"], "--partial_channels is a pc-darts option"),
    (["search", "--method", "pc-darts", "--partial_channels", "3"],
     "--partial_channels 3 must divide --init_channels 16"),
    (["search", "--method", "nasnet"], "argument --method: invalid choice: 'nasnet'"),
    (["train", *TINY, "--genotype", "DARTS", "--auxiliary", "--layers", "1"],
     "needs layers >= 2"),
])
def test_bad_options(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in error_of(argv, capsys)
    assert os.listdir(tmp_path) == []  # no runs/ folder either


@pytest.mark.parametrize("genotype,message", [
    ("DARTS_V9", "neither a file, a known name"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     "two (op, input) pairs per node"),
    ("Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "unknown operation"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 5)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "takes input 5"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[0, 2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])",
     "must name intermediate nodes 2..2"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "malformed"),
    ("Genotype(normal=range('a'), normal_concat=[2], reduce=[], reduce_concat=[2])", "malformed"),
    ("Genotype(normal=range(10**12), normal_concat=[2], reduce=[], reduce_concat=[2])",
     "malformed"),
    ("Genotype(normal=__import__('os'), normal_concat=[2], reduce=[], reduce_concat=[2])",
     "malformed"),
    ('{"normal": []}', "lacks normal_concat"),
])
def test_bad_genotypes(tmp_path, capsys, genotype, message):
    assert message in error_of(["train", *TINY, "--genotype", genotype, "--run_dir",
                                tmp_path / "r"], capsys)
    assert not (tmp_path / "r").exists()


def test_genotype_file_that_is_not_text(tmp_path, capsys):
    (tmp_path / "g.json").write_bytes(b"\xff\xfe\x00binary")
    assert "cannot be read as text" in error_of(
        ["train", *TINY, "--genotype", tmp_path / "g.json"], capsys)


def test_genotype_forms():
    assert parse_genotype("DARTS_V2") == DARTS_V2
    assert parse_genotype(genotype_text(DARTS_V2)) == DARTS_V2
    text = genotype_text(DARTS_V2).replace("[2, 3, 4, 5]", "range(2, 6)")
    assert parse_genotype(text) == DARTS_V2


# --- the run folder -----------------------------------------------------------------------------

def test_a_held_run_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    # flock locks belong to open files, so a lock held here stands for another process's.
    with filelock.FileLock(str(folder / ".lock"), timeout=0):
        err = error_of(["search", *TINY, "--epochs", "1", "--run_dir", folder], capsys)
    assert "in use by another darts-fast process" in err
    assert os.listdir(folder) == [".lock"]


def test_default_folders_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {run_dir._new_default_folder("search") for _ in range(3)}
    assert len(names) == 3 and all(os.path.isdir(n) for n in names)


def test_a_folder_with_outputs_is_never_reused(finished_search, tmp_path, capsys):
    folder = copy_of(finished_search, tmp_path)
    before = (folder / "checkpoint.pt").read_bytes()
    assert "use --resume" in error_of(["search", *TINY, "--run_dir", folder], capsys)
    assert (folder / "checkpoint.pt").read_bytes() == before
    os.remove(folder / "checkpoint.pt")
    assert "not empty" in error_of(["search", *TINY, "--run_dir", folder], capsys)
    assert "metrics of 2 epoch(s) but no checkpoint.pt" in error_of(
        ["search", "--resume", folder], capsys)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert "not empty" in error_of(["search", *TINY, "--run_dir", tmp_path / "mine"], capsys)


def test_resume_refuses_flags_it_would_ignore(finished_search, capsys):
    err = error_of(["search", "--resume", finished_search, "--learning_rate", "0.1"], capsys)
    assert "--learning_rate cannot change on resume" in err
    assert "--deterministic cannot change on resume" in error_of(
        ["search", "--resume", finished_search, "--deterministic"], capsys)
    assert "already done 2 epochs" in error_of(
        ["search", "--resume", finished_search, "--epochs", "1"], capsys)
    assert "is a search run, not a train run" in error_of(
        ["train", "--resume", finished_search], capsys)


def test_corrupt_checkpoint_is_detected_and_kept(finished_search, tmp_path, capsys):
    folder = copy_of(finished_search, tmp_path)
    path = folder / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    weight = state_of(folder)["model"]["stem.0.weight"]
    inside_a_tensor = raw.find(weight.numpy().tobytes()[:64]) + 40
    for where in (inside_a_tensor, len(raw) - 30):  # a weight's bytes; the zip directory
        damaged = bytearray(raw)
        damaged[where] ^= 0xFF
        path.write_bytes(bytes(damaged))
        assert "corrupt or partial" in error_of(["search", "--resume", folder], capsys)
        assert path.read_bytes() == bytes(damaged)  # nothing overwritten
    path.write_bytes(bytes(raw[:len(raw) // 2]))
    assert "corrupt or partial" in error_of(["search", "--resume", folder], capsys)


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / "config.json").write_bytes(b"\x00\x01binary"), "not readable JSON"),
    (lambda f: (f / "config.json").write_text('{"command": "search", "run_id": 3}'),
     "not a darts-fast run configuration"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:40]),
     "not readable JSON"),
    (lambda f: _edit_config(f, lambda c: c["options"].update(learning_rate="fast")),
     "holds a bad option"),
    (lambda f: _edit_config(f, lambda c: c["options"].update(momentum=0.5)),
     "differs from the checkpoint in momentum"),
    (lambda f: _edit_config(f, lambda c: c.update(run_id="another")), "belongs to another run"),
    (lambda f: _edit_config(f, lambda c: c["options"].update(extra=1)), "unknown: extra"),
    (lambda f: (f / "metrics.csv").write_text("epoch,lr\n1,2\n"), "not this run's metrics"),
    (lambda f: (f / "metrics.csv").write_bytes(b"\xff\xfe\x00"), "cannot be read"),
    (lambda f: (f / "metrics.csv").write_text(
        (f / "metrics.csv").read_text().replace("\n2,", "\n2,9")), "does not match"),
    (lambda f: (f / "metrics.csv").write_text(
        (f / "metrics.csv").read_text().splitlines()[0] + "\n"), "does not match"),
])
def test_foreign_or_corrupt_run_files_are_refused(finished_search, tmp_path, capsys, damage,
                                                   message):
    folder = copy_of(finished_search, tmp_path)
    damage(folder)
    before = {n: (folder / n).read_bytes() for n in ("checkpoint.pt", "metrics.csv")}
    assert message in error_of(["search", "--resume", folder], capsys)
    assert {n: (folder / n).read_bytes() for n in before} == before


def _edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_checkpoint_of_another_architecture_or_command_is_refused(finished_search, tmp_path,
                                                                    capsys):
    b = tmp_path / "b"
    assert run(["train", *TINY, "--genotype", "DARTS", "--epochs", "2", "--layers", "2",
                "--stop_after_epoch", "1", "--run_dir", b]) == 0
    (b / "checkpoint.pt").write_bytes((finished_search / "checkpoint.pt").read_bytes())
    assert "belongs to another run" in error_of(["train", "--resume", b], capsys)


def test_disk_full_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        # Fail once the first epoch's files are written: in epoch 2's checkpoint.
        if calls["n"] and os.path.exists(out / "genotype_epoch_001.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    err = error_of(["search", *TINY, "--epochs", "2", "--run_dir", out], capsys, after_work=True)
    assert "No space left on device" in err and "checkpoint of epoch 1 is intact" in err
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert state_of(out)["epoch"] == 1
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    assert run(["search", "--resume", out]) == 0


def test_unwritable_folders_fail_before_any_work(tmp_path, monkeypatch, capsys, finished_search):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot be created" in error_of(["search", *TINY, "--run_dir", blocker / "run"],
                                           capsys)
    folder = copy_of(finished_search, tmp_path)

    def read_only(fd):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", read_only)
    err = error_of(["search", "--resume", folder, "--epochs", "3"], capsys)
    assert "Read-only file system" in err and "config.json" in err
    assert "epoch 3" not in (folder / "log.txt").read_text()


def test_temporaries_of_killed_writes_are_removed(finished_search, tmp_path):
    folder = copy_of(finished_search, tmp_path)
    (folder / ".checkpoint.pt.tmp-12345").write_bytes(b"partial")
    (folder / "checkpoint.pt.tmp-999").write_bytes(b"partial")
    assert run(["search", "--resume", folder]) == 0
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]


def test_outputs_cut_short_by_a_kill_are_written_on_resume(finished_search, tmp_path):
    folder = copy_of(finished_search, tmp_path)
    rows = (folder / "metrics.csv").read_text().splitlines()
    (folder / "metrics.csv").write_text("\n".join(rows[:-1]) + "\n")  # epoch 2 checkpointed only
    os.remove(folder / "alphas_epoch_002.json")
    assert run(["search", "--resume", folder]) == 0
    assert (folder / "metrics.csv").read_text().splitlines() == rows
    assert (folder / "alphas_epoch_002.json").read_text() == \
        (finished_search / "alphas_epoch_002.json").read_text()


def test_interrupt_before_the_first_checkpoint_can_be_resumed(tmp_path, monkeypatch, capsys):
    from darts_fast.cli import search

    out = tmp_path / "run"
    monkeypatch.setattr(search.SearchJob, "step",
                        lambda self, batch, lr: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run(["search", *TINY, "--epochs", "1", "--run_dir", out]) == 130
    assert f"continue with darts-fast search --resume {out}" in capsys.readouterr().err
    monkeypatch.undo()
    assert run(["search", "--resume", out]) == 0
    assert state_of(out)["epoch"] == 1


def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = run(["train", *TINY, "--genotype", "DARTS", "--epochs", "3", "--layers", "2",
                "--learning_rate", "1e30", "--grad_clip", "1e30", "--run_dir", out])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "diverged" in err.splitlines()[-1] and "Traceback" not in err
    if (out / "checkpoint.pt").exists():
        state = state_of(out)
        assert all(torch.isfinite(t).all() for t in state["model"].values()
                   if t.is_floating_point())
    assert not (out / "final.json").exists() or json.loads((out / "final.json").read_text())[
        "epochs_done"] < 3


def test_a_search_whose_every_step_is_skipped_stops(tmp_path, capsys):
    """--learning_rate 1e30 overflows the weights at every step: each step is undone on the
    device, and an epoch of nothing but skipped steps stops the run before its checkpoint."""
    out = tmp_path / "run"
    code = run(["search", *TINY, "--epochs", "2", "--learning_rate", "1e30", "--run_dir", out])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "epoch 1 diverged: every step was skipped" in err.splitlines()[-1]
    assert not (out / "checkpoint.pt").exists()


def test_a_skipped_step_is_reported_and_left_out_of_the_means(tmp_path, monkeypatch):
    from darts_fast.search.step import SearchStep

    calls = []
    step = SearchStep.__call__

    def first_batch_poisoned(self, x, *rest):
        calls.append(1)
        if len(calls) == 1:
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")
        return step(self, x, *rest)

    monkeypatch.setattr(SearchStep, "__call__", first_batch_poisoned)
    out = tmp_path / "run"
    args = [*TINY, "--synthetic_size", "32", "--unrolled"]  # two steps an epoch
    assert run(["search", *args, "--epochs", "1", "--run_dir", out]) == 0
    log = (out / "log.txt").read_text()
    assert "| 1 weight step skipped (not finite) | 1 architecture step skipped" in log, log
    row = (out / "metrics.csv").read_text().splitlines()[1].split(",")
    assert np.isfinite(float(row[2]))  # the train loss of the one step that counted


def test_checkpoint_integrity_and_rng_round_trip(tmp_path):
    torch.manual_seed(3)
    states = checkpoint.rng_states()
    buffer = io.BytesIO()
    checkpoint.serialize({"rng": states, "x": torch.arange(4.0)}, buffer)
    (tmp_path / "c.pt").write_bytes(buffer.getvalue())
    loaded = checkpoint.load(str(tmp_path / "c.pt"))
    expected = torch.rand(3)
    checkpoint.set_rng_states(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    saved["state"]["x"][0] = 7.0  # altered content, well-formed file
    torch.save(saved, tmp_path / "c.pt")
    with pytest.raises(checkpoint.CheckpointError, match="does not match its checksum"):
        checkpoint.load(str(tmp_path / "c.pt"))
