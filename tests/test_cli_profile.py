"""``darts-fast profile`` (darts_fast.cli.profile): the latency table it writes loads against the
network ``darts-fast search --method proxyless`` builds with the same options, its totals agree
with sums taken here, and every bad input is refused, naming its option, before anything is
written."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn

from darts_fast.cli import profile
from darts_fast.cli.errors import UsageError
from darts_fast.cli.options import Parser
from darts_fast.methods.proxyless import ProxylessNetwork
from darts_fast.spaces.cnn.resources import load_table

# A small network: 3 cells (two reductions) of 4 channels on 8x8 images, timed briefly.
CANDIDATES = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]
SMALL = ["--init_channels", "4", "--layers", "3", "--primitives", ",".join(CANDIDATES),
         "--image_size", "8", "--repeats", "2", "--warmup", "1", "--device", "cpu"]


def parse(argv):
    """The options as the command line's parser (which reports bad input as UsageError) reads
    them."""
    parser = Parser(prog="darts-fast profile")
    profile.add_arguments(parser)
    return parser.parse_args(argv)


def profiled(path, *argv):
    assert profile.run(parse([*argv, "--out", str(path)])) == 0
    return path


def search_network(C=4, layers=3, primitives=CANDIDATES):
    """The network ``darts-fast search --method proxyless`` builds with these options."""
    return ProxylessNetwork(C, 10, layers, nn.CrossEntropyLoss(), primitives=primitives)


def test_table_loads_against_the_search_network(tmp_path, capsys):
    path = profiled(tmp_path / "latency.json", *SMALL, "--method", "proxyless", "--with_costs")
    network = search_network()
    table = load_table(str(path), network)
    assert table["candidates"] == tuple(CANDIDATES)
    assert table["cells"] == ("normal", "reduce", "reduce")
    assert (table["image_size"], table["batch_size"]) == (8, 1)
    for kind in ("normal", "reduce"):
        seconds = table[kind]["seconds"]
        assert seconds.shape == (14, len(CANDIDATES))
        assert (seconds[:, 0] == 0).all()  # none
        assert torch.isfinite(seconds).all() and (seconds[:, 1:] > 0).all()
    assert math.isfinite(table["fixed"]["seconds"]) and table["fixed"]["seconds"] > 0
    meta = table["meta"]
    uniform = table["fixed"]["seconds"] + sum(
        table[kind]["seconds"][e].mean().item() for kind in ("normal", "reduce")
        for e in range(14))
    assert meta["uniform_seconds"] == pytest.approx(uniform, rel=1e-9)
    assert meta["options"]["layers"] == 3 and meta["options"]["device"] == "cpu"
    # Every candidate of every cell and everything outside them: the network's weights.
    weights = sum(p.numel() for p in network.parameters())
    assert meta["costs"]["params"]["supernet"] == weights
    assert meta["costs"]["macs"]["supernet"] > meta["costs"]["macs"]["uniform"] > 0
    out = capsys.readouterr().out
    assert str(path) in out and "cpu" in out and f"{uniform * 1e3:.4g} ms" in out
    assert "slowest:" in out and "fastest:" in out and "none" not in out.split("slowest:")[1]


def test_costs_stay_out_of_meta_unless_asked(tmp_path, capsys):
    path = profiled(tmp_path / "t.json", *SMALL, "--method", "darts")
    assert "costs" not in json.loads(path.read_text())["meta"]
    assert "MACs:" in capsys.readouterr().out
    load_table(str(path), search_network())  # darts' network is proxyless' too


def test_default_layers_are_the_methods_and_other_layers_are_refused(tmp_path):
    small = [a for a in SMALL if a not in ("--layers", "3")]
    default = profiled(tmp_path / "default.json", *small)
    table = load_table(str(default), search_network(layers=8))
    assert len(table["cells"]) == 8
    other = profiled(tmp_path / "five.json", *small, "--layers", "5")
    with pytest.raises(ValueError, match="layers differ"):
        load_table(str(other), search_network(layers=8))


def test_an_existing_out_is_refused_without_force(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("kept")
    with pytest.raises(UsageError, match="--out.*--force"):
        profiled(path, *SMALL)
    assert path.read_text() == "kept" and os.listdir(tmp_path) == ["table.json"]
    profiled(path, *SMALL, "--force")
    load_table(str(path), search_network())


@pytest.mark.parametrize("where", ["missing/table.json", "folder"])
def test_an_out_without_its_folder_or_a_folder_is_refused(tmp_path, where):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UsageError, match="--out"):
        profiled(tmp_path / where, *SMALL)
    assert sorted(os.listdir(tmp_path)) == ["folder"] and not os.listdir(tmp_path / "folder")


@pytest.mark.parametrize("method, words", [("pc-darts", "full channels"),
                                           ("spos", "full channels"),
                                           ("no-such-method", "not a registered method")])
def test_other_methods_are_refused(tmp_path, method, words):
    with pytest.raises(UsageError, match=f"--method.*{words}"):
        profiled(tmp_path / "t.json", *SMALL, "--method", method)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("option, value", [
    ("--repeats", "0"), ("--warmup", "-1"), ("--batch_size", "0"), ("--image_size", "x"),
    ("--init_channels", "0"), ("--layers", "1.5"), ("--primitives", "sep_conv_3x3,bogus"),
    ("--primitives", "none,none"), ("--device", "tpu"), ("--threads", "0")])
def test_bad_values_are_refused_naming_the_option(tmp_path, option, value):
    with pytest.raises(UsageError, match=f"argument {option}"):
        parse([*SMALL, option, value, "--out", str(tmp_path / "t.json")])


def test_out_is_required():
    with pytest.raises(UsageError, match="--out"):
        parse(SMALL)


def test_an_image_size_the_reductions_cannot_halve_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--image_size 6.*multiple of 4"):
        profiled(tmp_path / "t.json", *SMALL, "--image_size", "6")
    assert not os.listdir(tmp_path)
