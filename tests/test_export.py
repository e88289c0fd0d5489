"""darts_fast.export (save, load) and ``darts-fast export RUN``: the files give back the source
network's weights exactly and its logits within rounding, in this process and in a fresh one;
a search run's network is marked untrained; bad input gets one line, exit 2, nothing written."""
import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import filelock
import pytest
import torch

import darts_fast
from darts_fast import export
from darts_fast.cli import augmentation, checkpoint, main
from darts_fast.export_model import Deployed, build_network, network_spec
from darts_fast.spaces.cnn.eval_model import NetworkCIFAR
from darts_fast.spaces.cnn.genotypes import DARTS_V2, genotype_from_dict, genotype_to_dict
from darts_fast.spaces.cnn.resources import genotype_cost

# The tests' own torch.jit calls: TorchScript is deprecated, and the format libtorch loads.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated")
INPUT = {"dataset": "synthetic", "classes": ["cat", "dog"], "channels": 3, "size": 16,
         "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "stem": "cifar"}
TINY_TRAIN = ["--epochs", "1", "--layers", "2", "--init_channels", "4", "--synthetic_size", "32",
              "--batch_size", "16", "--device", "cpu"]
TINY_SEARCH = ["--epochs", "1", "--layers", "3", "--init_channels", "4", "--synthetic_size",
               "16", "--batch_size", "8", "--device", "cpu"]


def network(spec, dtype=torch.float64, seed=0):
    """The network of ``spec`` with its BatchNorm statistics moved off their initial values."""
    torch.manual_seed(seed)
    net = build_network(spec, "test").to(dtype).train()
    with torch.no_grad():
        net(torch.randn(4, spec["input"]["channels"], spec["input"]["size"],
                        spec["input"]["size"], dtype=dtype))
    return net


def images(spec, n=2, dtype=torch.float64, seed=1):
    size, channels = spec["input"]["size"], spec["input"]["channels"]
    return torch.rand((n, channels, size, size), dtype=dtype,
                      generator=torch.Generator().manual_seed(seed))


def assert_same_state(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# --- the library --------------------------------------------------------------------------------

def test_save_load_round_trip_gives_the_weights_exactly_and_the_logits(tmp_path):
    spec = network_spec(DARTS_V2, 4, 2, 3, True, INPUT)
    source = network(spec)
    x = images(spec)
    with torch.no_grad():
        want = source.eval()(((x - torch.tensor(INPUT["mean"], dtype=torch.float64)
                               .view(1, 3, 1, 1)) / torch.tensor(INPUT["std"],
                                                                  dtype=torch.float64)
                              .view(1, 3, 1, 1)))[0]
    source.train()
    record = export.save(source, spec, tmp_path / "out", x)
    assert source.training  # the caller's network is left as it was
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporaries left beside it
    folder = tmp_path / "out"
    for path in (folder, folder / "model.pt"):
        loaded = darts_fast.load(path)
        assert isinstance(loaded, Deployed) and not loaded.training
        assert isinstance(loaded.network, NetworkCIFAR) and loaded.spec == spec
        assert loaded.input == INPUT
        assert_same_state(loaded.network, source)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), want, rtol=1e-12, atol=1e-12)
            # The deployed module normalises; forward_normalized is the raw network's logits.
            normalised = (x - loaded.mean) / loaded.std
            torch.testing.assert_close(loaded.forward_normalized(normalised), want, rtol=1e-12,
                                       atol=1e-12)
    scripted = darts_fast.load(folder / "model.ts")
    assert scripted.spec == spec and scripted.input == INPUT
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.jit.load(folder / "model.ts")(x), want, rtol=1e-10,
                                   atol=1e-12)
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["format"] == "darts_fast-model-1" and saved["spec"] == spec
    on_disk = json.loads((folder / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    cost = genotype_cost(DARTS_V2, 4, 3, num_classes=2, image_size=16)
    assert (record["params"], record["flops"]) == (cost.params, cost.flops)
    assert set(record["files"]) >= {"model.pt", "model.ts"}
    # ONNX needs the onnx package (not a dependency) and is written for float32 networks only.
    assert record["skipped"]["model.onnx"] == "written for float32 networks only"


def test_grey_images_through_the_imagenet_stem_round_trip(tmp_path):
    grey = dict(INPUT, channels=1, size=32, mean=[0.5], std=[0.25], stem="imagenet")
    spec = network_spec(DARTS_V2, 4, 3, 2, False, grey)
    assert spec["class"] == "NetworkImageNet"
    source = network(spec)
    x = images(spec)
    export.save(source, spec, tmp_path / "out", x)
    for name in ("model.pt", "model.ts"):
        loaded = darts_fast.load(tmp_path / "out" / name)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), source.eval()((x - 0.5) / 0.25)[0],
                                       rtol=1e-10, atol=1e-12)
    assert_same_state(darts_fast.load(tmp_path / "out").network, source)


def test_onnx_export_where_the_package_is_installed(tmp_path):
    spec = network_spec(DARTS_V2, 4, 2, 2, False, INPUT)
    record = export.save(network(spec, torch.float32), spec, tmp_path / "out",
                         images(spec, dtype=torch.float32))
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript")):
        assert record["skipped"]["model.onnx"] == export.ONNX_MISSING
        assert "pip install onnx onnxscript" in export.ONNX_MISSING
        assert not (tmp_path / "out" / "model.onnx").exists()
        pytest.skip("onnx and onnxscript are not installed: the ONNX file was skipped, as it "
                    "says")
    assert "model.onnx" in record["files"]


def test_save_refuses_a_non_empty_folder_and_a_file_that_does_not_match(tmp_path, monkeypatch):
    spec = network_spec(DARTS_V2, 4, 2, 2, False, INPUT)
    source, x = network(spec), images(spec)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not an empty folder"):
        export.save(source, spec, tmp_path / "full", x)
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    with pytest.raises(export.ExportError, match="batch of 3 x 16 x 16"):
        export.save(source, spec, tmp_path / "out", x[:, :, :8])

    def wrong(module, inputs, **options):  # a TorchScript module whose numbers are not its own
        altered = copy.deepcopy(module)
        with torch.no_grad():
            altered.network.classifier.bias.add_(1e-3)
        return trace(altered, inputs, **options)

    trace = torch.jit.trace_module
    monkeypatch.setattr(torch.jit, "trace_module", wrong)
    with pytest.raises(export.ExportError, match="model.ts.*differs"):
        export.save(source, spec, tmp_path / "out", x)
    with pytest.raises(export.ExportError, match="model.ts.*differs"):
        export.save(source, spec, tmp_path / "new" / "deeper" / "out", x)
    # The half-written exports are gone, and the folders made for them.
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_load_refuses_what_is_not_an_export_naming_the_path(tmp_path):
    spec = network_spec(DARTS_V2, 4, 2, 2, False, INPUT)
    export.save(network(spec), spec, tmp_path / "out", images(spec))
    good = (tmp_path / "out" / "model.pt").read_bytes()

    def refused(path, match):
        with pytest.raises(export.ExportError, match=match) as e:
            darts_fast.load(path)
        assert str(path) in str(e.value)

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good[:len(good) // 2])
    refused(damaged, "damaged, partial")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(1000))
    refused(noise, "damaged, partial")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    refused(foreign, "not a darts_fast model")
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": export.FORMAT, "spec": spec, "state_dict": {}, "x": json.JSONEncoder()},
               pickled)  # an object only a full unpickling makes: weights_only refuses it
    refused(pickled, "damaged, partial")
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    del saved["state_dict"]["classifier.bias"]
    torch.save(saved, tmp_path / "missing.pt")
    refused(tmp_path / "missing.pt", "do not fit")
    saved["spec"]["kwargs"]["genotype"]["normal"][0][0] = "no_such_op"
    torch.save(saved, tmp_path / "bad_spec.pt")
    refused(tmp_path / "bad_spec.pt", "does not build")
    script = tmp_path / "other.ts"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    refused(script, "not a darts_fast export")
    ts = (tmp_path / "out" / "model.ts").read_bytes()
    (tmp_path / "cut.ts").write_bytes(ts[:len(ts) // 2])
    refused(tmp_path / "cut.ts", "damaged")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "neither model.pt nor model.ts")
    refused(tmp_path / "absent", "no such file or folder")


# --- the command --------------------------------------------------------------------------------

def run(argv):
    return main.main([str(a) for a in argv])


def error_of(argv, capsys):
    """The one error line of a command that must be refused with exit 2."""
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "train"
    assert run(["train", *TINY_TRAIN, "--genotype", "DARTS_V2", "--run_dir", folder]) == 0
    return folder


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "search"
    assert run(["search", *TINY_SEARCH, "--run_dir", folder]) == 0
    return folder


def copy_of(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("export"))
    return target


def run_input(folder):
    """The mean and std of the run's images: its data.json's, CIFAR-10's for a run without."""
    path = folder / "data.json"
    data = json.loads(path.read_text()) if path.exists() else \
        {"mean": augmentation.CIFAR_MEAN, "std": augmentation.CIFAR_STD}
    return (torch.tensor(data["mean"]).view(1, -1, 1, 1),
            torch.tensor(data["std"]).view(1, -1, 1, 1))


FRESH = """
import sys, torch
x = torch.load(sys.argv[2])
scripted = torch.jit.load(sys.argv[1] + "/model.ts")(x)
assert "darts_fast" not in sys.modules  # TorchScript runs without the package
import darts_fast
torch.save({"ts": scripted, "pt": darts_fast.load(sys.argv[1])(x),
            "ts_load": darts_fast.load(sys.argv[1] + "/model.ts")(x)}, sys.argv[3])
"""


def test_a_train_run_exported_runs_in_a_fresh_process_as_its_checkpoint(train_run, tmp_path,
                                                                         capsys):
    capsys.readouterr()
    assert run(["export", train_run, "--out", tmp_path / "model"]) == 0
    out = capsys.readouterr().out
    assert f"exported the train run {train_run} (epoch 1 of 1)" in out and "UNTRAINED" not in out
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "model"),
                           str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    got = torch.load(tmp_path / "logits.pt")
    state = checkpoint.load(str(train_run / "checkpoint.pt"))
    genotype = genotype_from_dict(json.loads((train_run / "genotype.json").read_text()))
    net = NetworkCIFAR(4, 10, 2, False, genotype)
    net.load_state_dict(state["model"])
    mean, std = run_input(train_run)
    with torch.no_grad():
        want = net.eval()((x - mean) / std)[0]
    for kind in ("pt", "ts", "ts_load"):
        torch.testing.assert_close(got[kind], want, rtol=1e-5, atol=1e-6)
    assert_same_state(darts_fast.load(tmp_path / "model").network, net)
    record = json.loads((tmp_path / "model" / "model.json").read_text())
    assert record["spec"]["source"]["trained"] and record["notes"] == []
    # A run of an earlier version, without data.json and network.json: CIFAR-10's images, the
    # network its options and genotype.json build.
    earlier = copy_of(train_run, tmp_path)
    for name in ("data.json", "network.json"):
        if (earlier / name).exists():
            os.remove(earlier / name)
    assert run(["export", earlier]) == 0
    again = darts_fast.load(earlier / "export")
    assert again.spec["kwargs"] == record["spec"]["kwargs"]
    assert again.input == record["spec"]["input"]
    assert_same_state(again.network, net)


def test_a_search_run_exports_its_genotype_untrained_from_its_seed(search_run, tmp_path,
                                                                   capsys):
    capsys.readouterr()
    assert run(["export", search_run, "--init_channels", "4", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    note = f"untrained: train it with darts-fast train --genotype {search_run}/genotype.json"
    assert "UNTRAINED" in out and note.split(": ", 1)[1] in out
    folder = search_run / "export"
    record = json.loads((folder / "model.json").read_text())
    assert record["notes"] == [note] and record["spec"]["source"]["trained"] is False
    found = json.loads((search_run / "genotype.json").read_text())
    assert record["spec"]["kwargs"]["genotype"] == genotype_to_dict(genotype_from_dict(found))
    assert (record["spec"]["kwargs"]["C"], record["spec"]["kwargs"]["layers"]) == (4, 2)
    # The weights come from the run's seed: a second export gives the same ones.
    assert run(["export", search_run, "--init_channels", "4", "--layers", "2", "--out",
                tmp_path / "again"]) == 0
    assert_same_state(darts_fast.load(folder).network, darts_fast.load(tmp_path / "again").network)
    shutil.rmtree(folder)


def test_export_refuses_bad_input_with_one_line_and_writes_nothing(train_run, search_run,
                                                                   tmp_path, capsys):
    before = sorted(os.listdir(train_run))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "not an empty folder" in error_of(["export", train_run, "--out", tmp_path / "full"],
                                             capsys)
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    assert "train run, which exports the network it trained" in error_of(
        ["export", train_run, "--layers", "3", "--out", tmp_path / "a"], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in error_of(["export", tmp_path / "empty"], capsys)
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in error_of(["export", tmp_path / "file"], capsys)
    with filelock.FileLock(str(train_run / ".lock"), timeout=0):
        assert "in use by another darts-fast process" in error_of(
            ["export", train_run, "--out", tmp_path / "b"], capsys)
    assert sorted(os.listdir(train_run)) == before

    damaged = copy_of(train_run, tmp_path)
    blob = (damaged / "checkpoint.pt").read_bytes()
    (damaged / "checkpoint.pt").write_bytes(blob[:len(blob) // 2])
    assert "corrupt or partial" in error_of(["export", damaged], capsys)
    assert not (damaged / "export").exists()
    os.remove(damaged / "checkpoint.pt")
    assert "no checkpoint.pt" in error_of(["export", damaged], capsys)

    shutil.rmtree(damaged)
    no_genotype = copy_of(search_run, tmp_path)
    os.remove(no_genotype / "genotype.json")
    assert "holds no genotype.json" in error_of(["export", no_genotype], capsys)
    config = json.loads((no_genotype / "config.json").read_text())
    (no_genotype / "config.json").write_text(json.dumps(
        dict(config, options=dict(config["options"], space="rnn"))))
    assert "export handles CNN runs" in error_of(["export", no_genotype], capsys)
    (no_genotype / "config.json").write_text(json.dumps(dict(config, command="evolve")))
    assert "is not a train or search run" in error_of(["export", no_genotype], capsys)
    assert not (no_genotype / "export").exists()
    assert sorted(os.listdir(tmp_path)) == ["copy", "empty", "file", "full"]
