"""The one-shot family from the command line: ``darts-fast search --method spos|random-ws|enas``
(outputs, bit-identical resume, refusals) and ``darts-fast evolve`` (each strategy, the budget,
resume, the scores against the scorer run by hand, bad input that writes nothing)."""
import csv
import json

import pytest
import torch
import torch.nn as nn

from darts_fast import PCNetwork
from darts_fast.cli import checkpoint, datasets, loaders, main
from darts_fast.search.path_score import PathScorer
from darts_fast.spaces.cnn.genotypes import parse_genotype
from darts_fast.spaces.cnn.paths import from_genotype
from darts_fast.spaces.cnn.single_path import SinglePathNetwork

TINY = ["--layers", "3", "--init_channels", "4", "--batch_size", "32", "--synthetic_size",
        "128", "--seed", "3"]


def state_of(folder):
    return checkpoint.load(str(folder / "checkpoint.pt"))


def search(folder, method, *extra, epochs=2):
    assert main.main(["search", "--method", method, *TINY, "--epochs", str(epochs), *extra,
                      "--run_dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def spos_run(tmp_path_factory):
    return search(tmp_path_factory.mktemp("spos") / "run", "spos")


@pytest.mark.parametrize("method,extra", [
    ("spos", []), ("random-ws", ["--eval_samples", "6", "--eval_batches", "1",
                                 "--eval_rescored", "2"]),
    ("enas", ["--controller_steps", "2", "--controller_samples", "3"])])
def test_stopped_and_resumed_searches_are_bit_identical(method, extra, spos_run, tmp_path):
    full = spos_run if method == "spos" else search(tmp_path / "full", method, *extra)
    parts = tmp_path / "parts"
    assert main.main(["search", "--method", method, *TINY, "--epochs", "2", *extra,
                      "--run_dir", str(parts), "--stop_after_epoch", "1"]) == 0
    assert main.main(["search", "--resume", str(parts)]) == 0
    a, b = state_of(full), state_of(parts)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.dumps(a.get("searcher"), default=str) == json.dumps(b.get("searcher"),
                                                                    default=str)
    log = (full / "log.txt").read_text()
    assert f"weight-sharing {method}" in log
    genotype = full / "genotype.json"
    assert genotype.exists() == (method != "spos")  # SPOS' comes from darts-fast evolve
    if method != "spos":
        assert genotype.read_text() == (parts / "genotype.json").read_text()
        assert json.loads(genotype.read_text())["trained_network"]["params"] > 0


@pytest.mark.parametrize("extra,words", [
    (["--unrolled"], "first order only"), (["--hessian_eigenvalue"], "watches the alphas"),
    (["--early_stop", "skips"], "watches the alphas"), (["--tau_max", "2"], "gdas option")])
def test_what_a_supernet_cannot_run_with_is_refused(extra, words, tmp_path, capsys):
    assert main.main(["search", "--method", "spos", *TINY, *extra, "--run_dir",
                      str(tmp_path / "run")]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "run").exists()


def evolve(run, folder, *extra):
    return main.main(["evolve", str(run), "--population", "4", "--select", "2", "--mutations",
                      "1", "--crossovers", "1", "--recalibration_batches", "2",
                      "--eval_batches", "2", "--run_dir", str(folder), *extra])


def test_evolve_scores_are_the_scorer_by_hand_and_resume_goes_on(spos_run, tmp_path):
    assert evolve(spos_run, tmp_path / "full", "--generations", "3") == 0
    assert evolve(spos_run, tmp_path / "parts", "--generations", "2") == 0
    assert main.main(["evolve", "--resume", str(tmp_path / "parts"), "--generations", "3"]) == 0
    history = [(tmp_path / name / "history.csv").read_text() for name in ("full", "parts")]
    assert history[0] == history[1] and len(history[0].splitlines()) == 1 + 12
    # The best one's score, by hand: the supernet, 2 recalibration batches, 2 validation ones.
    options = json.loads((spos_run / "config.json").read_text())["options"]
    model = SinglePathNetwork(4, 10, 3, nn.CrossEntropyLoss())
    model.load_state_dict(state_of(spos_run)["model"])
    ns = type("Options", (), dict(options))
    data = datasets.search_data(ns)
    split = int(options["train_portion"] * len(data))  # the original's split of the images
    train, valid = (loaders.loader(ns, data, idx, torch.device("cpu"), False, False)
                    for idx in (range(split), range(split, len(data))))
    best = json.loads((tmp_path / "full" / "genotype.json").read_text())
    arch = from_genotype(parse_genotype(json.dumps(best)), model._primitives, 4)
    valid_two = [b for _, b in zip(range(2), valid)]
    assert PathScorer(model, lambda: train, recalibration=2)(arch, valid_two) == best["score"]
    with open(tmp_path / "full" / "history.csv") as f:
        scores = [float(row["score"]) for row in csv.DictReader(f)]
    assert best["score"] == pytest.approx(max(scores), abs=1e-6)


@pytest.mark.parametrize("strategy,extra", [
    ("regularized", ["--sample_size", "2", "--cycles", "8"]),
    ("random", ["--samples", "5", "--rescored", "2"])])
def test_the_other_strategies_write_their_genotype(strategy, extra, spos_run, tmp_path):
    argv = ["evolve", str(spos_run), "--strategy", strategy, "--eval_batches", "1",
            "--run_dir", str(tmp_path / "run"), *extra]
    if strategy == "regularized":
        argv += ["--population", "4", "--recalibration_batches", "1"]
    assert main.main(argv) == 0
    assert json.loads((tmp_path / "run" / "genotype.json").read_text())["score"] >= 0


def test_the_budget_holds_and_an_impossible_one_stops_cleanly(spos_run, tmp_path, capsys):
    assert evolve(spos_run, tmp_path / "run", "--generations", "2", "--max_params", "2.9") == 0
    with open(tmp_path / "run" / "history.csv") as f:
        assert all(int(row["params"]) <= 2.9e6 for row in csv.DictReader(f))
    assert evolve(spos_run, tmp_path / "none", "--max_params", "0.01") == 2
    assert "the evolution stopped" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # refused: nothing left behind


@pytest.mark.parametrize("argv,words", [
    (["evolve", "{tmp}"], "not a darts-fast search"),
    (["evolve", "{spos}", "--cycles", "3"], "--cycles is a regularized option"),
    (["evolve"], "give the search run folder"),
    (["evolve", "{spos}", "--mutations", "40"], "mutations + crossovers"),
    (["evolve", "--resume", "{spos}"], "not an evolution's run folder")])
def test_bad_evolve_commands_write_nothing(argv, words, spos_run, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    argv = [a.format(tmp=tmp_path, spos=spos_run) for a in argv]
    assert main.main([*argv, "--run_dir", str(tmp_path / "out")]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_evolve_refuses_a_supernet_of_another_network(spos_run, tmp_path, capsys):
    """A PC-DARTS search's checkpoint: its partial-channel edges are not DARTS' network."""
    run = tmp_path / "pc"
    run.mkdir()
    config = json.loads((spos_run / "config.json").read_text())
    config["options"]["method"] = "pc-darts"
    (run / "config.json").write_text(json.dumps(config))
    state = dict(state_of(spos_run), model=PCNetwork(4, 10, 3, nn.CrossEntropyLoss()).state_dict())
    with open(run / "checkpoint.pt", "wb") as f:
        checkpoint.serialize(state, f)
    assert main.main(["evolve", str(run), "--run_dir", str(tmp_path / "out")]) == 2
    assert "is not DARTS' network" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_killed_evolution_resumes_and_a_damaged_or_held_one_is_refused(spos_run, tmp_path,
                                                                          capsys):
    """Killed after its first generation (a KeyboardInterrupt inside the next), the evolution
    resumes to the same history; a truncated checkpoint and a folder in use are refused."""
    from darts_fast.cli import evolve as evolve_module
    from darts_fast.cli.run_dir import hold

    steps = []
    original = evolve_module.SPOSEvolution.step

    def step(self):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return original(self)

    evolve_module.SPOSEvolution.step = step
    try:
        assert evolve(spos_run, tmp_path / "killed", "--generations", "2") == 130
    finally:
        evolve_module.SPOSEvolution.step = original
    assert "evolve --resume" in capsys.readouterr().err
    assert main.main(["evolve", "--resume", str(tmp_path / "killed")]) == 0
    assert evolve(spos_run, tmp_path / "whole", "--generations", "2") == 0
    assert (tmp_path / "killed" / "history.csv").read_text() == \
        (tmp_path / "whole" / "history.csv").read_text()
    lock = hold(str(tmp_path / "whole"))
    try:
        assert main.main(["evolve", "--resume", str(tmp_path / "whole")]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        lock.release()
    ckpt = tmp_path / "whole" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main.main(["evolve", "--resume", str(tmp_path / "whole")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main.main(["evolve", "--resume", str(tmp_path / "whole"), "--seed", "4"]) == 2
    assert "--seed cannot change on resume" in capsys.readouterr().err
