"""``darts-fast search --method pdarts``: the stages (a new, deeper network on the candidates the
last stage kept, as the authors drop them), the final genotype under the skip cap as the authors
compute it, resume across and within stages, and what the method refuses."""
import json
import shutil

import numpy as np
import pytest
import torch
from test_cli import TINY, error_of, run, state_of

from darts_fast.reference import pdarts as authors
from darts_fast.spaces.cnn.genotypes import PRIMITIVES, genotype_to_dict

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

# Three stages of two epochs on 2, 3 and 4 cells; the first epoch of each trains weights alone.
STAGED = [*TINY, "--method", "pdarts", "--layers", "2", "--add_layers", "1", "2", "--epochs",
          "6", "--arch_start_epoch", "1"]


def probs_of(folder, epoch, switches):
    """The softmax of each edge's alphas over its kept candidates after ``epoch``, from the
    tables the run wrote (every column, 0 where dropped)."""
    tables = json.loads((folder / f"alphas_epoch_{epoch:03d}.json").read_text())
    return [np.array([[w for w, on in zip(row, keep) if on]
                      for row, keep in zip(tables[cell], switches[i])])
            for i, cell in enumerate(("normal", "reduce"))]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdarts")
    folders = {name: root / name for name in ("straight", "stopped")}
    assert run(["search", *STAGED, "--run_dir", folders["straight"]]) == 0
    # stopped after stage 1, then in stage 2, then resumed to the end
    assert run(["search", *STAGED, "--run_dir", folders["stopped"], "--stop_after_epoch",
                "2"]) == 0
    assert run(["search", "--resume", folders["stopped"], "--stop_after_epoch", "3"]) == 0
    assert run(["search", "--resume", folders["stopped"]]) == 0
    return folders


def test_each_stage_keeps_what_the_authors_keep(staged):
    folder = staged["straight"]
    every = [[True] * len(PRIMITIVES) for _ in range(14)]
    switches = [every, every]
    for stage, (last_epoch, dropped) in enumerate(((2, 3), (4, 2))):
        probs = probs_of(folder, last_epoch, switches)
        switches = [authors.drop_switches(s, p, dropped, False) for s, p in zip(switches, probs)]
        kept = probs_of(folder, last_epoch + 1, switches)  # the next stage's own columns
        assert all(p.shape == (14, 8 - 3 - 2 * stage) and (p > 0).all() for p in kept)
    state = state_of(folder)
    assert state["stage"] == 2 and state["stage_network"]["layers"] == 4
    assert [state["stage_network"]["switches_normal"],
            state["stage_network"]["switches_reduce"]] == switches


def test_the_final_genotype_is_the_authors_under_the_skip_cap(staged):
    folder = staged["straight"]
    network = state_of(folder)["stage_network"]
    last = [network["switches_normal"], network["switches_reduce"]]
    probs = probs_of(folder, 6, last)
    final, zeroed = zip(*(authors.final_switches(authors.drop_switches(s, p, 2, True), s, p)
                          for s, p in zip(last, probs)))
    uncapped = authors.parse_network(*final)
    capped = authors.skip_capped_genotypes(final[0], last[0], zeroed[0], final[1])
    kept = json.loads((folder / "genotype.json").read_text())
    expected = dict(capped).get(2, uncapped)
    assert {k: kept[k] for k in ("normal", "reduce")} == \
        {k: genotype_to_dict(expected)[k] for k in ("normal", "reduce")}
    named = json.loads((folder / "genotypes.json").read_text())
    assert [g["name"] for g in named] == ["final"] + [f"at most {cap} skip-connections"
                                                      for cap, _ in capped]
    assert named[0]["normal"] == genotype_to_dict(uncapped)["normal"]


def test_resumed_stages_are_the_search_never_stopped(staged):
    a, b = staged["straight"], staged["stopped"]
    for file in ("genotype.json", "genotypes.json", "collapse.csv"):
        assert (a / file).read_text() == (b / file).read_text(), file
    rows = [[line.rsplit(",", 1)[0] for line in (f / "metrics.csv").read_text().splitlines()]
            for f in (a, b)]  # without the seconds
    assert rows[0] == rows[1]
    sa, sb = state_of(a), state_of(b)
    assert all(torch.equal(x, y) for x, y in zip(sa["alphas"], sb["alphas"]))
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "7"], "give a multiple of 3"),
    (["--epochs", "6", "--arch_start_epoch", "2"], "counts in each stage of 2 epochs"),
    (["--unrolled"], "searches first order only"),
    (["--early_stop", "skips"], "its guard against skip-connections is --max_skip"),
    (["--primitives", "none,skip_connect"], "pdarts drops 3, 2 and 2"),
    (["--dropout_rate", "0.1", "0.2"], "expected 3 argument"),
    (["--dropout_rate", "0.1", "0.2", "1.5"], "expected a number in [0, 1)"),
    (["--reference"], "no formulation of its authors"),
    (["--adaptive_regularisation"], "its guard against skip-connections is --max_skip"),
    (["--recompute"], "--recompute would draw the skip-connections' dropout masks"),
])
def test_bad_pdarts_options_are_refused(tmp_path, capsys, argv, words):
    folder = tmp_path / "run"
    line = error_of(["search", *TINY, "--method", "pdarts", *argv, "--run_dir", folder], capsys)
    assert words in line
    assert not folder.exists()


def test_pdarts_options_need_the_method(tmp_path, capsys):
    line = error_of(["search", *TINY, "--max_skip", "1", "--run_dir", tmp_path / "run"], capsys)
    assert "--max_skip is a pdarts option" in line


@pytest.mark.parametrize("value", [[1, "-h"], [1, True], "6"])
def test_a_tampered_list_option_is_refused(staged, tmp_path, capsys, value):
    folder = tmp_path / "run"
    shutil.copytree(staged["straight"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["options"]["add_layers"] = value
    (folder / "config.json").write_text(json.dumps(config))
    line = error_of(["search", "--resume", folder], capsys)
    assert "add_layers" in line


def test_a_staged_run_resumes_with_its_own_epochs(staged, capsys):
    line = error_of(["search", "--resume", staged["straight"], "--epochs", "9"], capsys)
    assert "resume it with its --epochs 6" in line
    line = error_of(["search", "--resume", staged["straight"], "--recompute"], capsys)
    assert "--recompute would draw the skip-connections' dropout masks" in line
