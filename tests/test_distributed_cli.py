"""``darts-fast search`` on two processes (torchrun, gloo, CPU): one run folder written by rank 0,
a resume under torchrun that ends where the uninterrupted run ends, a killed rank that stops the
other with a clear message, and the options that make no sense there refused."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from darts_fast.cli import checkpoint, main

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

TINY = ["--layers", "3", "--init_channels", "4", "--batch_size", "4", "--synthetic_size", "24",
        "--device", "cpu", "--unrolled"]


def torchrun(*argv, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "darts_fast", "search", *map(str, argv)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs of a second-order search on two processes, uninterrupted and stopped after
    the first epoch then resumed."""
    folder = tmp_path_factory.mktemp("torchrun")
    whole, parts = folder / "whole", folder / "parts"
    code, err = torchrun(*TINY, "--epochs", "2", "--run_dir", whole)
    assert code == 0, err
    code, err = torchrun(*TINY, "--epochs", "2", "--stop_after_epoch", "1", "--run_dir", parts)
    assert code == 0, err
    code, resumed_err = torchrun("--resume", parts)
    assert code == 0, resumed_err
    return whole, parts, err + resumed_err


def test_resumed_two_process_search_ends_with_the_alphas_of_the_uninterrupted_one(runs):
    whole, parts, _ = runs
    a, b = (checkpoint.load(str(f / "checkpoint.pt")) for f in (whole, parts))
    assert a["epoch"] == b["epoch"] == 2 and a["processes"] == b["processes"] == 2
    assert all(torch.equal(x, y) for x, y in zip(a["alphas"], b["alphas"]))
    assert all(torch.equal(x, b["model"][k]) for k, x in a["model"].items())
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in a["metrics"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in b["metrics"]]
    # every rank kept its own BatchNorm statistics: rank 1's differ from rank 0's (the model's)
    ranks = a["buffers_ranks"]
    assert all(torch.equal(ranks[0][k], a["model"][k]) for k in ranks[0])
    assert any(not torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]
               if k.endswith("running_mean"))


def test_rank_zero_alone_reports_and_writes(runs):
    whole, _, err = runs
    # the stopped run's first epoch and the resumed run's second, each said once
    assert err.count("epoch 1/2 lr") == 1 and err.count("epoch 2/2 lr") == 1
    assert "on 2 processes (gloo" in err and "of 4 per process" in err
    assert "Traceback" not in err and "Warning" not in err
    log = (whole / "log.txt").read_text()
    assert log.count("epoch 1/2") == 1 and log.count("epoch 2/2") == 1
    assert sorted(p.name for p in whole.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_run_resumes_on_as_many_processes_as_it_ran_on(runs, tmp_path, capsys):
    whole, _, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(whole, copy)
    assert main.main(["search", "--resume", str(copy), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "ran on 2 torchrun process(es); resume it under torchrun with 2 process(es)" in err
    assert checkpoint.load(str(copy / "checkpoint.pt"))["epoch"] == 2  # nothing written


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_stops_the_other_with_a_clear_message(tmp_path):
    """Rank 1 dies (SIGKILL) after the first checkpoint; rank 0's next operation across the
    ranks fails at once, and it ends with exit 1, saying so and where to resume (started without
    torchrun, which would also stop rank 0 itself, with SIGTERM)."""
    folder = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    command = [sys.executable, "-m", "darts_fast", "search", *TINY[:-1], "--epochs", "50",
               "--run_dir", str(folder)]
    ranks = [subprocess.Popen(command, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not (folder / "checkpoint.pt").exists():
            assert time.monotonic() < deadline and ranks[0].poll() is None
            time.sleep(0.1)
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = ranks[0].communicate(timeout=60)
        assert time.monotonic() - killed < 30
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert ranks[0].returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("darts-fast search (rank 0): stopped: an operation across the ranks "
                           "failed: another rank has probably stopped"), err
    assert f"is checkpointed: continue with torchrun ... darts-fast search --resume {folder}" \
        in last
    assert checkpoint.load(str(folder / "checkpoint.pt"))["epoch"] >= 1


@pytest.mark.parametrize("argv,message", [
    (["search", "--reference"], "--reference runs in one process"),
    (["search", "--device", "cuda:1"], "under torchrun each rank takes the GPU of its "
                                       "LOCAL_RANK"),
    (["train", "--genotype", "DARTS"], "train runs in one process"),
])
def test_options_refused_under_torchrun(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main.main([*argv, "--synthetic_size", "16", "--run_dir", tmp_path / "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("darts-fast " + argv[0] + " (rank 1): error: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_sync_batch_norm_needs_torchrun(capsys, tmp_path):
    assert main.main(["search", "--sync_batch_norm", "--run_dir", tmp_path / "run"]) == 2
    assert "--sync_batch_norm takes BatchNorm statistics over the processes of a torchrun " \
           "search" in capsys.readouterr().err
