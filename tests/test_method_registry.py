"""Adding a search method is one module and one registry entry: nothing in the library or the
command line is edited. The shortest such method is this file's fixture: each candidate weighted
by its own sigmoid (Fair DARTS' independent weights) instead of the softmax over the edge."""
import json

import pytest
import torch
import torch.nn as nn

import darts_fast
from darts_fast import methods, reference
from darts_fast.cli.main import main
from darts_fast.spaces.cnn.architecture import CellArchitecture


class SigmoidNetwork(darts_fast.Network):
    def cell_architecture(self, reduction):
        return CellArchitecture(
            torch.sigmoid(self.alphas_reduce if reduction else self.alphas_normal))


class SigmoidDARTS(methods.Method):
    name = "sigmoid-darts"
    summary = "every candidate weighted by its own sigmoid"
    defaults = methods.get("darts").defaults

    def networks(self):
        return SigmoidNetwork, SigmoidNetwork


@pytest.fixture
def sigmoid_method():
    method = methods.register(SigmoidDARTS())
    yield method
    methods.unregister(method.name)


SMALL = ["--synthetic_size", "32", "--batch_size", "16", "--init_channels", "4", "--layers",
         "2", "--threads", "1", "--device", "cpu"]


def test_a_registered_method_runs_from_the_command_line(sigmoid_method, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--method", "sigmoid-darts", "--epochs", "2", "--stop_after_epoch",
                 "1", "--run_dir", str(run), *SMALL]) == 0
    assert "fused first-order sigmoid-darts search" in "".join(capsys.readouterr())
    assert main(["search", "--resume", str(run), "--threads", "1"]) == 0
    alphas = torch.load(run / "checkpoint.pt", weights_only=False)["state"]["alphas"]
    # The genotype the run wrote is the one the authors' rule reads off its alphas.
    torch.manual_seed(0)
    oracle = reference.Network(4, 10, 2, nn.CrossEntropyLoss())
    with torch.no_grad():
        for mine, saved in zip(oracle.arch_parameters(), alphas):
            mine.copy_(saved)
    written = json.loads((run / "genotype.json").read_text())
    assert [tuple(e) for e in written["normal"]] == list(oracle.genotype().normal)
    assert [tuple(e) for e in written["reduce"]] == list(oracle.genotype().reduce)


def test_the_method_computes_with_its_own_weights(sigmoid_method):
    """The network's cells weigh each candidate by sigmoid(alpha): a cell given those weights
    directly computes the same."""
    torch.manual_seed(0)
    model = SigmoidNetwork(4, 10, 2, nn.CrossEntropyLoss(), memory_format=None).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    s = model.stem(x)
    cell = model.cells[0]
    expected = cell(s, s, torch.sigmoid(model.alphas_normal))
    assert torch.equal(cell(s, s, model.cell_architecture(False)), expected)
    assert not torch.allclose(expected, cell(s, s, torch.softmax(model.alphas_normal, -1)))


def test_help_lists_it_and_a_run_of_an_unregistered_method_is_refused(tmp_path, capsys):
    methods.register(SigmoidDARTS())
    try:
        with pytest.raises(SystemExit):
            main(["search", "--help"])
        # argparse may wrap the help at a hyphen
        assert "sigmoid-darts: every candidate weighted by its own sigmoid" in \
            " ".join(capsys.readouterr().out.split()).replace("- ", "-")
        run = tmp_path / "run"
        assert main(["search", "--method", "sigmoid-darts", "--epochs", "2",
                     "--stop_after_epoch", "1", "--run_dir", str(run), *SMALL]) == 0
    finally:
        methods.unregister("sigmoid-darts")
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--threads", "1"]) == 2
    assert "sigmoid-darts" in capsys.readouterr().err


def test_registering_twice_or_a_non_method_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        methods.register(SigmoidDARTS.__new__(type("X", (SigmoidDARTS,), {"name": "darts"})))
    with pytest.raises(TypeError, match="Method instance"):
        methods.register(object())


class SharedOptionMethod(methods.Method):
    """A method with an option that GDAS has too, a text option, and no reference."""
    name = "shared-test"
    summary = "shares --tau_max with gdas"
    defaults = {**methods.get("darts").defaults, "tau_max": 5.0, "schedule": "cosine"}

    def networks(self):
        return SigmoidNetwork, None

    def add_options(self, group, kinds):
        group.add_argument("--tau_max", type=float, default=None, help="shared with gdas")
        group.add_argument("--schedule", choices=["cosine", "linear"], default=None,
                           help="a text option")


def test_methods_may_share_options_and_take_text_defaults(tmp_path, capsys):
    methods.register(SharedOptionMethod())
    try:
        with pytest.raises(SystemExit):
            main(["search", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "shared-test: --layers 8" in text and "--schedule cosine" in text
        run = tmp_path / "run"
        assert main(["search", "--method", "shared-test", "--tau_max", "3", "--reference",
                     "--run_dir", str(run), *SMALL]) == 2
        assert "--reference: shared-test has no formulation" in capsys.readouterr().err
        assert main(["search", "--method", "darts", "--schedule", "linear", "--run_dir",
                     str(run), *SMALL]) == 2
        assert "--schedule is a shared-test option, not a darts one" in capsys.readouterr().err
        assert not run.exists()
    finally:
        methods.unregister("shared-test")


def test_a_config_whose_method_is_not_a_name_is_refused(sigmoid_method, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--epochs", "2", "--stop_after_epoch", "1", "--run_dir", str(run),
                 *SMALL]) == 0
    config = json.loads((run / "config.json").read_text())
    config["options"]["method"] = ["darts"]
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "method" in err, err
