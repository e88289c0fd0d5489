"""The command line against a hostile user: a search with no architecture step, results that
depend on the CPU thread count, help without defaults, a clamped batch reported as asked,
printed commands that break on odd folder names, and TensorBoard steps written twice."""
import contextlib
import io
import json
import os
import re
import shlex

import pytest
import torch
from test_cli import TINY, copy_of, error_of, run, state_of

from darts_fast import methods
from darts_fast.cli import loaders, main, report, runtime, search
from darts_fast.cli.ranks import Ranks


def captured(argv):
    """(exit code, stdout, stderr) of one in-process command."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(argv)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def step_threads():
    """The thread count torch had at each search step of the commands run inside."""
    counts, step = [], search.SearchJob.step
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search.SearchJob, "step",
                      lambda self, batch, lr: counts.append(torch.get_num_threads())
                      or step(self, batch, lr))
        yield counts


# --- a search must take architecture steps ------------------------------------------------------

def test_a_search_that_would_end_before_its_first_architecture_step_is_refused(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = ["--layers", "3", "--init_channels", "16", "--batch_size", "8", "--synthetic_size",
             "48", "--epochs", "2"]
    assert error_of(["search", "--method", "pc-darts", "--arch_start_epoch", "5", *small],
                    capsys) == (
        "darts-fast search: error: --arch_start_epoch 5 with --epochs 2: the run would end "
        "before its first architecture step, and the genotype would be read from the alphas' "
        "random initial values; give more --epochs than 5 or a smaller --arch_start_epoch")
    assert "--arch_start_epoch 15 (the pc-darts default) with --epochs 2" in error_of(
        ["search", "--method", "pc-darts", *small], capsys)
    assert "--arch_start_epoch 2 with --epochs 2" in error_of(
        ["search", "--arch_start_epoch", "2", *small], capsys)
    assert os.listdir(tmp_path) == []  # no runs/ folder either


@pytest.fixture(scope="module")
def warm_up_search(tmp_path_factory):
    """A PC-DARTS search stopped in its epoch of weight steps alone; its start banner."""
    folder = tmp_path_factory.mktemp("warm_up") / "run"
    code, _, err = captured(["search", "--method", "pc-darts", *TINY, "--epochs", "3",
                             "--arch_start_epoch", "1", "--stop_after_epoch", "1",
                             "--run_dir", folder])
    assert code == 0, err
    return folder, err


def test_the_banner_says_how_few_epochs_and_steps_update_the_alphas(warm_up_search):
    assert (", weight steps alone in epoch 1: only epochs 2-3 update the alphas (2 of 3 epochs, "
            "2 architecture steps) (--stop_after_epoch 1 stops before the first), synthetic "
            "data") in warm_up_search[1]


def test_a_resume_whose_epochs_leave_no_architecture_step_is_refused(warm_up_search, capsys):
    folder = warm_up_search[0]
    before = (folder / "config.json").read_text()
    assert error_of(["search", "--resume", folder, "--epochs", "1"], capsys) == (
        "darts-fast search: error: --arch_start_epoch 1 with --epochs 1: the run would end "
        "before its first architecture step, and the genotype would be read from the alphas' "
        "random initial values; give more --epochs than 1")
    assert (folder / "config.json").read_text() == before


# --- help -----------------------------------------------------------------------------------------

def help_entries(text):
    """{first option string: its help text on one line} of an argparse help page."""
    entries, name = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation, _, rest = line.strip().partition("  ")
            name = invocation.split(",")[0].split(" ")[0]
            entries[name] = rest.strip()
        elif name and line.startswith("    "):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def shown(value):
    if isinstance(value, list):
        return " ".join(shown(v) for v in value)
    return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"


@pytest.mark.parametrize("command", ["search", "train"])
def test_every_option_has_a_help_line_that_shows_its_default(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = main.build_parser()[1][command]
    entries = help_entries(parser.format_help())
    defaults = [m.defaults for m in methods.methods().values()]
    by_method = {name for values in defaults for name in values} if command == "search" else set()
    for action in parser._actions[1:]:  # after --help
        flag = action.option_strings[0]
        text = entries[flag]
        assert len(re.split(r"\(?default", text)[0].split()) >= 2, (flag, text)  # a description
        if action.dest in by_method:  # each method's own default
            for values in defaults:
                if action.dest in values:
                    assert re.search(rf"default.*\b{re.escape(shown(values[action.dest]))}\b",
                                     text), (flag, text)
        elif action.nargs == 0:
            assert text.endswith("(default off)") or "(default: " in text, (flag, text)
        elif action.default is not None:
            assert f"default {action.default}" in text, (flag, text)
        else:
            assert "default" in text, (flag, text)
    if command == "train":
        for flag, default, imagenet in (("--epochs", 600, 250), ("--layers", 20, 14),
                                        ("--init_channels", 36, 48), ("--batch_size", 96, 128)):
            assert entries[flag].endswith(f"(default {default}; {imagenet} with --dataset "
                                          f"imagenet)")
    else:
        assert entries["--batch_size"].endswith(
            "default by --method: darts 64, enas 64, gdas 256, pc-darts 256, pdarts 96, "
            "proxyless 64, random-ws 64, spos 64")


# --- what the log says: the batch used, busy cores ---------------------------------------------

def test_batches_of_names_the_batch_used_and_the_clamp():
    assert loaders.batches_of(8, [24, 24]) == "of 8"
    assert loaders.batches_of(100000, [24, 24]) == \
        "of 24; --batch_size 100000 clamped to the images a split holds"
    assert loaders.batches_of(20, [30, 18]) == \
        "of 20 and 18; --batch_size 20 clamped to the images a split holds"
    two = Ranks(rank=0, world=2, group=object())
    assert loaders.batches_of(16, [24, 24], two) == \
        "of 12 per process; --batch_size 16 clamped to the images a split holds"
    assert loaders.batches_of(8, [24, 24], two) == "of 8 per process"


def test_more_threads_than_cpus_are_refused(capsys):
    """--threads 99999 crashed OpenMP (segmentation fault)."""
    cpus = len(os.sched_getaffinity(0))
    assert error_of(["search", *TINY, "--threads", cpus + 1], capsys) == (
        f"darts-fast search: error: argument --threads: expected an integer from 1 to the {cpus} "
        f"CPUs this process may use, got {cpus + 1} (see darts-fast search --help)")


def test_oversubscription_is_judged_from_the_load_less_the_runs_own_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    # Two threads; another process keeps one core busy: 3 runnable threads, 1.3 cores ours.
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert report.oversubscription(2, cpu_seconds=13.0, seconds=10.0) == (
        "warning: 2 CPU threads, but only about 0.3 of 2 cores seem free (load average 3.0, "
        "this run's own use 1.3): threads waiting for a busy core can make each step many "
        "times slower; fewer --threads may run faster (on --resume with --allow_thread_change, "
        "which changes the numbers)")
    # One thread beside the same process: a core is free for it.
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 1.0, 1.0))
    assert report.oversubscription(1, cpu_seconds=10.0, seconds=10.0) is None
    # The run alone: its own threads are the load.
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 1.0, 1.0))
    assert report.oversubscription(2, cpu_seconds=19.0, seconds=10.0) is None


def test_the_log_names_the_clamped_batch_and_warns_once_of_busy_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    code, _, err = captured(["search", *TINY, "--synthetic_size", "48", "--batch_size",
                             "100000", "--epochs", "2", "--threads", "1",
                             "--run_dir", tmp_path / "run"])
    assert code == 0, err
    assert "synthetic data (1 + 1 batches of 24; --batch_size 100000 clamped to the images a " \
        "split holds), tensor loader; 1 CPU thread; run folder" in err
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("warning: 1 CPU thread, but only about 0.0 of") == 1, log


# --- threads, quoted commands, TensorBoard after a resume ----------------------------------------

# Inside runtime.cpu_threads(n), torch's default is n, as OMP_NUM_THREADS=n would set it.

def record_threads(folder, count):
    """Rewrites the thread count that the run in ``folder`` records (None: as an earlier version
    of darts-fast, which recorded none)."""
    from darts_fast.cli import checkpoint

    config, state = json.loads((folder / "config.json").read_text()), state_of(folder)
    for options in (config["options"], state["options"]):
        options.pop("threads")
        if count is not None:
            options["threads"] = count
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "checkpoint.pt", "wb") as f:
        checkpoint.serialize(state, f)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A search on --threads 1 where torch's default is 2, stopped after epoch 1, in a folder
    whose name a shell must quote; its output and the thread count of each step."""
    folder = tmp_path_factory.mktemp("threads") / "a run\nnamed 'odd'"
    with runtime.cpu_threads(2), step_threads() as counts:
        code, out, err = captured(["search", *TINY, "--epochs", "2", "--threads", "1",
                                   "--stop_after_epoch", "1", "--run_dir", folder])
        assert torch.get_num_threads() == 2  # restored after the run
    assert code == 0, err
    return folder, out, err, counts


def test_printed_commands_quote_the_run_folder(stopped):
    folder, out = stopped[:2]
    metrics, _, resume = out.partition("\n  continue:  ")
    assert shlex.split(resume) == ["darts-fast", "search", "--resume", str(folder), "--threads",
                                   "1"]
    assert shlex.split(metrics.partition("; tensorboard")[2]) == ["--logdir", str(folder)]


def test_the_thread_count_is_set_and_recorded(stopped):
    folder, _, err, counts = stopped
    assert counts and set(counts) == {1}
    assert json.loads((folder / "config.json").read_text())["options"]["threads"] == 1
    assert state_of(folder)["options"]["threads"] == 1
    assert "; 1 CPU thread; run folder" in err


def test_a_resume_on_another_thread_count_is_refused(stopped, capsys):
    folder = stopped[0]
    files = {name: (folder / name).read_bytes() for name in
             ("config.json", "metrics.csv", "checkpoint.pt", "log.txt")}
    events = os.listdir(folder / "tensorboard")
    for default, given in ((2, []), (1, ["--threads", "2"])):  # torch's default, or given
        with runtime.cpu_threads(default):
            assert error_of(["search", "--resume", folder, *given], capsys) == (
                f"darts-fast search: error: the run in {str(folder)!r} was computed on 1 CPU "
                f"thread(s) and this process would use 2: the numbers would differ from a run "
                f"never stopped; resume with --threads 1 to continue it bit for bit, or add "
                f"--allow_thread_change to continue on 2")
    assert {name: (folder / name).read_bytes() for name in files} == files
    assert os.listdir(folder / "tensorboard") == events
    assert "--allow_thread_change is for --resume" in error_of(
        ["search", *TINY, "--allow_thread_change"], capsys)


def test_allow_thread_change_continues_and_says_so(stopped, tmp_path):
    folder = copy_of(stopped[0], tmp_path)
    record_threads(folder, 2)  # as a run on 2 threads records it
    with step_threads() as counts:
        assert run(["search", "--resume", folder, "--threads", "1",
                    "--allow_thread_change"]) == 0
    assert counts and set(counts) == {1}
    assert "--allow_thread_change: the checkpoint of epoch 1 was computed on 2 CPU thread(s), " \
        "the epochs from now on run on 1: the numbers differ from a run never stopped" in \
        (folder / "log.txt").read_text()
    assert state_of(folder)["options"]["threads"] == 1  # what the next resume must match
    assert "allow_thread_change" not in json.loads((folder / "config.json").read_text())[
        "options"]


def test_a_run_of_an_earlier_version_without_a_thread_count_resumes(stopped, tmp_path):
    folder = copy_of(stopped[0], tmp_path)
    record_threads(folder, None)
    with runtime.cpu_threads(2):
        assert run(["search", "--resume", folder, "--threads", "1"]) == 0
    assert "the checkpoint does not record its CPU thread count (an earlier darts-fast made " \
        "it): resuming on 1" in (folder / "log.txt").read_text()
    assert state_of(folder)["options"]["threads"] == 1


def test_a_resume_on_the_recorded_threads_is_bit_identical_and_rewrites_tensorboard_steps_once(
        stopped, tmp_path):
    """Killed after epoch 1's checkpoint, with its events written but not its metrics row: the
    resume on the recorded thread count writes epoch 1's outputs again, ends as the run never
    stopped, and TensorBoard shows each epoch once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    full = tmp_path / "full"
    with runtime.cpu_threads(2):
        assert run(["search", *TINY, "--epochs", "2", "--threads", "1", "--run_dir", full]) == 0
        folder = copy_of(stopped[0], tmp_path)
        header = (folder / "metrics.csv").read_text().splitlines()[0]
        (folder / "metrics.csv").write_text(header + "\n")
        assert run(["search", "--resume", folder, "--threads", "1"]) == 0
    for a, b in zip(state_of(full)["alphas"], state_of(folder)["alphas"]):
        assert torch.equal(a, b)
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    rows = (folder / "metrics.csv").read_text().strip().splitlines()[1:]
    losses = events.Scalars("loss/train")
    assert [s.step for s in losses] == [1, 2]
    assert [s.value for s in losses] == pytest.approx(
        [float(r.split(",")[2]) for r in rows], abs=1e-4)
    assert [i.step for i in events.Images("alphas/normal")] == [1, 2]
