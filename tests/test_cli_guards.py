"""The collapse guards from the command line: the per-epoch record, the early stops (the genotype
they keep, a stopped run that stays stopped), resume, a search that the eigenvalue leaves as it
was, and the guards' bad input."""
import csv
import json

import pytest
import torch
from test_cli import TINY, error_of, run, state_of

from darts_fast.cli import epoch_end, guards
from darts_fast.search import collapse
from darts_fast.search.hessian_eigenvalue import DominantEigenvalue

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini


def rows_of(folder, name):
    with open(folder / name) as f:
        return list(csv.DictReader(f))


def genotype_of(folder, name="genotype.json"):
    return json.loads((folder / name).read_text())


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """Two epochs with the guards that change the search (noise, auxiliary skip): straight
    through ("plain"), stopped after the first and resumed, and with the eigenvalue as well."""
    root = tmp_path_factory.mktemp("guarded")
    options = [*TINY, "--epochs", "2", "--alpha_noise", "--aux_skip", "1",
               "--aux_skip_decay", "cosine"]
    folders = {name: root / name for name in ("plain", "resumed", "eigenvalue")}
    assert run(["search", *options, "--run_dir", folders["plain"]]) == 0
    assert run(["search", *options, "--run_dir", folders["resumed"],
                "--stop_after_epoch", "1"]) == 0
    folders["first_epoch"] = state_of(folders["resumed"])
    assert run(["search", "--resume", folders["resumed"]]) == 0
    assert run(["search", *options, "--hessian_eigenvalue", "--run_dir",
                folders["eigenvalue"], "--stop_after_epoch", "1"]) == 0
    return folders


def test_the_record_of_each_epoch(guarded):
    rows = rows_of(guarded["plain"], "collapse.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        genotype = genotype_of(guarded["plain"], f"genotype_epoch_{int(r['epoch']):03d}.json")
        assert int(r["skips_normal"]) == sum(op == "skip_connect" for op, _ in genotype["normal"])
        assert r["eigenvalue"] == ""
    # the authors' schedules, at epochs 0 and 1 of 2
    assert [float(r["alpha_noise"]) for r in rows] == pytest.approx([0.03, 0.165])
    assert [float(r["aux_skip_beta"]) for r in rows] == pytest.approx([1.0, 0.5])
    assert (guarded["plain"] / "collapse.png").read_bytes()[:4] == b"\x89PNG"
    eigenvalue = float(rows_of(guarded["eigenvalue"], "collapse.csv")[0]["eigenvalue"])
    assert eigenvalue == eigenvalue  # a number, not NaN


def test_a_resumed_guarded_search_is_the_search_never_stopped(guarded):
    a, b = guarded["plain"], guarded["resumed"]
    assert (a / "collapse.csv").read_text() == (b / "collapse.csv").read_text()
    assert without_seconds(rows_of(a, "metrics.csv")) == without_seconds(rows_of(b, "metrics.csv"))
    sa, sb = state_of(a), state_of(b)
    for x, y in zip(sa["alphas"], sb["alphas"]):
        assert torch.equal(x, y)


def test_the_eigenvalue_leaves_the_search_as_it_was(guarded):
    """No draw from the search's generators, no BatchNorm statistics changed."""
    a, c = state_of(guarded["eigenvalue"]), guarded["first_epoch"]
    assert a["epoch"] == c["epoch"] == 1 and torch.equal(a["rng"]["torch"], c["rng"]["torch"])
    for x, y in zip(a["alphas"], c["alphas"]):
        assert torch.equal(x, y)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, c["model"][name]), name


def test_early_stop_skips_stops_where_the_normal_cell_holds_two(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run(["search", *TINY, "--epochs", "4", "--early_stop", "skips",
                "--run_dir", folder]) == 0
    rows = rows_of(folder, "collapse.csv")
    first = next((int(r["epoch"]) for r in rows if int(r["skips_normal"]) >= 2), None)
    assert first is not None, rows  # the tiny network's cells hold skip-connections at once
    assert len(rows) == first and len(rows_of(folder, "metrics.csv")) == first
    assert genotype_of(folder) == genotype_of(folder, f"genotype_epoch_{first:03d}.json")
    out = capsys.readouterr().out
    assert f"stopped after epoch {first}: the normal cell holds" in out and "continue:" not in out
    before = (folder / "checkpoint.pt").read_bytes()
    assert run(["search", "--resume", folder]) == 0
    assert "nothing to continue" in capsys.readouterr().out + \
        (folder / "log.txt").read_text()
    assert (folder / "checkpoint.pt").read_bytes() == before
    assert len(rows_of(folder, "metrics.csv")) == first


class QuickHessianStop(collapse.HessianStop):
    """DARTS-ES on a window of one epoch, against the epoch before, from the first epoch."""

    def __init__(self):
        super().__init__(window=1, delta=1, start_epoch=0)


def test_early_stop_hessian_keeps_the_genotype_where_the_eigenvalue_began_to_grow(
        tmp_path, monkeypatch):
    values = iter([1.0, 1.1, 2.0, 2.1, 2.2])
    monkeypatch.setattr(guards, "HessianStop", QuickHessianStop)
    monkeypatch.setattr(guards, "arch_hessian_eigenvalue",
                        lambda *a, **k: DominantEigenvalue(next(values), 1, True))
    folder = tmp_path / "run"
    assert run(["search", *TINY, "--epochs", "5", "--early_stop", "hessian",
                "--run_dir", folder]) == 0
    rows = rows_of(folder, "collapse.csv")
    assert [float(r["eigenvalue"]) for r in rows] == [1.0, 1.1, 2.0]  # 2.0 / 1.1 > 1.3
    kept = genotype_of(folder)
    assert kept == genotype_of(folder, "genotype_epoch_002.json") and kept["epoch"] == 2
    assert (folder / "genotype.txt").read_text().strip() == kept["text"]
    state = state_of(folder)
    assert state["epoch"] == 3 and state["guards"]["stopped"]["kept"] == 2


@pytest.mark.parametrize("argv, words", [
    (["--method", "pc-darts", "--alpha_noise"], "--alpha_noise is defined on DARTS'"),
    (["--method", "gdas", "--aux_skip", "1"], "--aux_skip is defined on DARTS'"),
    (["--reference", "--aux_skip", "1"], "--aux_skip is a darts_fast option"),
    (["--aux_skip", "0"], "expected a finite number > 0"),
    (["--alpha_noise", "nan"], "expected a finite number > 0"),
    (["--early_stop", "never"], "invalid choice"),
    (["--aux_skip_decay", "cosine"], "give --aux_skip BETA too"),
])
def test_bad_guards_are_refused_before_anything_is_written(tmp_path, capsys, argv, words):
    folder = tmp_path / "run"
    line = error_of(["search", *TINY, *argv, "--run_dir", folder], capsys)
    assert words in line
    assert not folder.exists()


def scripted_eigenvalue(self, batch):
    """A rise after epoch 3 at the first weight decay, none at the second: DARTS-ADA rolls back
    once. A function of the run's own state, so that a resumed run sees the same values."""
    epoch = len(self.history)
    if self.ada["weight_decay"] == pytest.approx(3e-4):
        return [1.0, 1.1, 2.0, 2.5][epoch], True
    return [None, None, 1.2, 1.3][epoch], True


@pytest.fixture
def quick_ada(monkeypatch):
    monkeypatch.setattr(guards, "HessianStop", QuickHessianStop)
    monkeypatch.setattr(guards.Guards, "_eigenvalue", scripted_eigenvalue)


# Epoch 3 rolls back to epoch 2; with --arch_start_epoch 3 the third epoch, run again, trains
# the weights alone, as it did the first time.
ADA = [*TINY, "--epochs", "4", "--adaptive_regularisation", "--arch_start_epoch", "3"]


@pytest.fixture(scope="module")
def ada_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ada") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guards, "HessianStop", QuickHessianStop)
        patch.setattr(guards.Guards, "_eigenvalue", scripted_eigenvalue)
        assert run(["search", *ADA, "--run_dir", folder]) == 0
    return folder


def test_adaptive_regularisation_rolls_back_and_raises_the_weight_decay(ada_run):
    rows = rows_of(ada_run, "collapse.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    # epoch 3's rise (2.0 against 1.1) sends the run back to epoch 2, the weight decay x3
    assert [float(r["weight_decay"]) for r in rows] == pytest.approx([3e-4] * 2 + [9e-4] * 2)
    assert [float(r["eigenvalue"]) for r in rows] == [1.0, 1.1, 1.2, 1.3]
    state = state_of(ada_run)
    assert state["epoch"] == 4 and state["guards"]["ada"]["iteration"] == 2
    assert all(g["weight_decay"] == pytest.approx(9e-4)
               for g in state["optimizer"]["param_groups"])
    assert len(rows_of(ada_run, "metrics.csv")) == 4
    assert "DARTS-ADA" in (ada_run / "log.txt").read_text()
    kept = sorted(p.name for p in ada_run.glob("checkpoint_epoch_*.pt"))
    assert kept == [f"checkpoint_epoch_{e:03d}.pt" for e in range(1, 5)]
    # the weight-only epochs, the third run again after the rollback, leave the alphas alone
    alphas = [genotype_of(ada_run, f"alphas_epoch_{e:03d}.json") for e in (1, 2, 3, 4)]
    assert all(a["normal"] == alphas[0]["normal"] for a in alphas[:3])
    assert alphas[3]["normal"] != alphas[0]["normal"]


def test_a_rollback_cut_short_by_a_kill_is_done_on_resume(ada_run, tmp_path, quick_ada,
                                                          monkeypatch):
    killed = tmp_path / "killed"
    roll_back = epoch_end.roll_back

    def killed_before_the_rollback(job, folder, log, epoch, rows):
        if job.rollback_epoch() is not None:
            raise KeyboardInterrupt  # after epoch 3's checkpoint, before the rollback's
        return roll_back(job, folder, log, epoch, rows)

    monkeypatch.setattr(epoch_end, "roll_back", killed_before_the_rollback)
    assert run(["search", *ADA, "--run_dir", killed]) == 130
    assert state_of(killed)["epoch"] == 3 and state_of(killed)["guards"]["rollback"] == 2
    monkeypatch.setattr(epoch_end, "roll_back", roll_back)
    assert run(["search", "--resume", killed]) == 0
    assert (ada_run / "collapse.csv").read_text() == (killed / "collapse.csv").read_text()
    assert without_seconds(rows_of(ada_run, "metrics.csv")) == \
        without_seconds(rows_of(killed, "metrics.csv"))
    a, b = state_of(ada_run), state_of(killed)
    assert all(torch.equal(x, y) for x, y in zip(a["alphas"], b["alphas"]))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_adaptive_regularisation_refuses_a_second_stop_rule(tmp_path, capsys):
    line = error_of(["search", *TINY, "--adaptive_regularisation", "--early_stop", "skips",
                     "--run_dir", tmp_path / "run"], capsys)
    assert "give one of them" in line
