"""A two-process search that loses a rank after its first checkpoint: every rank left ends with
one line of its own that says so and which checkpointed epoch --resume continues from, without
the libraries' source paths, and exits 1 (or 143 when SIGTERM stopped it, as torchrun stops the
ranks of a node when one of them dies)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed_cli import TINY, free_port

from darts_fast.cli import checkpoint

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

SEARCH = ["-m", "darts_fast", "search", *TINY[:-1], "--epochs", "50"]  # first order: faster
# gloo's and NCCL's messages name the line of their source that raised.
SOURCE_PATH = re.compile(r"\.(?:cc|cpp|cu|h|hpp|py):\d+")
FAILED = ("stopped: an operation across the ranks failed: another rank has probably stopped, or "
          "hung past --dist_timeout (RuntimeError: ")
TERMINATED = ("stopped: terminated (SIGTERM, which torchrun sends every rank when one fails): "
              "another rank has probably stopped; ")


def wait_for_checkpoint(folder, processes):
    deadline = time.monotonic() + 120
    while not (folder / "checkpoint.pt").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.1)


def checkpointed(folder):
    return checkpoint.load(str(folder / "checkpoint.pt"))["epoch"]


def follower_kept(epoch):
    return f"epoch {epoch} is checkpointed in rank 0's run folder: --resume continues from it"


def leader_kept(epoch, folder):
    return (f"epoch {epoch} is checkpointed: continue with torchrun ... darts-fast search "
            f"--resume {folder} --threads 1")


def stop_line(err):
    """The one line of ``err`` that says why the rank stopped (checking that there is one)."""
    lines = [line for line in err.splitlines() if "stopped" in line]
    assert len(lines) == 1 and not SOURCE_PATH.search(err) and "Traceback" not in err, err
    return lines[0]


def start_ranks(folder, *options):
    """Both ranks, started as torchrun starts them but without it: nothing else stops them."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    return [subprocess.Popen([sys.executable, *SEARCH, *options, "--run_dir", str(folder)],
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stderr=subprocess.PIPE, text=True) for r in range(2)]


def end(processes):
    """(exit code, stderr) of each process that has ended by itself; kills the others."""
    for p in processes:
        if p.poll() is None:
            p.kill()
    return [(p.returncode, p.communicate()[1]) for p in processes]


def test_a_rank_that_torchrun_terminates_and_the_one_left_each_say_so_once(tmp_path):
    folder = tmp_path / "run"
    ranks = start_ranks(folder)
    try:
        wait_for_checkpoint(folder, ranks)
        ranks[1].send_signal(signal.SIGTERM)  # what torchrun does when another rank has died
        for p in ranks:
            p.wait(timeout=60)
    finally:
        (code0, err0), (code1, err1) = end(ranks)
    epoch = checkpointed(folder)
    assert code1 == 143 and stop_line(err1) == \
        f"darts-fast search (rank 1): {TERMINATED}{follower_kept(epoch)}", err1
    line = stop_line(err0)
    assert code0 == 1 and line.startswith(f"darts-fast search (rank 0): {FAILED}") and \
        line.endswith(f"); {leader_kept(epoch, folder)}"), err0


def test_a_rank_left_waiting_for_a_stopped_one_says_so_once_after_dist_timeout(tmp_path):
    folder = tmp_path / "run"
    ranks = start_ranks(folder, "--dist_timeout", "10")
    try:
        wait_for_checkpoint(folder, ranks)
        ranks[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        ranks[0].wait(timeout=60)
        assert time.monotonic() - stopped < 40
    finally:
        (code, err), _ = end(ranks)
    line = stop_line(err)
    # Rank 0 waits in a receive, or in a send when the stopped rank's buffers are full.
    assert code == 1 and line in [f"darts-fast search (rank 0): {FAILED}Timed out waiting "
                                  f"10000ms for {op} operation to complete); "
                                  f"{leader_kept(checkpointed(folder), folder)}"
                                  for op in ("recv", "send")], err
    assert line.split(": ", 1)[1] in (folder / "log.txt").read_text()  # the log has no prefix


def children(pid):
    """{RANK: process id} of the processes that ``pid`` started."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue  # ended meanwhile
        rank = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == pid and rank:
            found[int(rank[0])] = int(stat.parent.name)
    return found


def test_under_torchrun_the_rank_left_by_a_killed_rank_0_says_so_once(tmp_path):
    folder, logs = tmp_path / "run", tmp_path / "logs"
    # --redirects 2: each rank's stderr in its own file under --log-dir
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "2",
                            *SEARCH, "--run_dir", str(folder)],
                           stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    pids = {}
    try:
        wait_for_checkpoint(folder, [run])
        pids = children(run.pid)
        os.kill(pids[0], signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        [(_, err)] = end([run])
        for pid in pids.values():  # left running only if torchrun failed to stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    code = int(re.search(rf"exitcode\s*:\s*(-?\d+) \(pid: {pids[1]}\)", err).group(1))
    [rank1_log] = logs.glob("*/attempt_0/1/stderr.log")
    line, kept = stop_line(rank1_log.read_text()), follower_kept(checkpointed(folder))
    # torchrun's SIGTERM, or the broken connection to rank 0, whichever rank 1 meets first
    if code == 143:
        assert line == f"darts-fast search (rank 1): {TERMINATED}{kept}"
    else:
        assert code == 1 and line.startswith(f"darts-fast search (rank 1): {FAILED}") and \
            line.endswith(f"); {kept}"), line
