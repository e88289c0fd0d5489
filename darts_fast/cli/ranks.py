"""The processes of one run. ``darts-fast`` alone is one process; under ``torchrun`` (which puts
RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in the environment) every process is one
rank of a process group: NCCL when the ranks run on GPUs (rank r of a node on cuda:LOCAL_RANK),
gloo on CPUs.

Every rank computes; rank 0, the leader, alone holds the run folder, prints and writes. What
must be equal on every rank comes from the leader (a resumed checkpoint, or the failure to open
the run folder); the metrics are sums over the ranks. A rank that dies breaks the others'
next collective operation (or, if it hangs, the collective times out after --dist_timeout
seconds), and torchrun stops the other ranks of its node with SIGTERM (``Terminated``): every
rank ends with one line of its own that says so and which checkpointed epoch --resume continues
from (``RankFailure``), the last checkpoint kept.
"""
import datetime
import os
import re
import signal
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UsageError, first_line

_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def environment_rank():
    """This process's rank as torchrun set it (0 outside torchrun or when unreadable)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, which torchrun sends to every rank when one of them has failed."""


TERMINATED = ("terminated (SIGTERM, which torchrun sends every rank when one fails): another "
              "rank has probably stopped")

# gloo and NCCL name the line of their source that raised: '[/path/pair.cc:534] Connection
# closed by peer', 'NCCL error in: /path/ProcessGroupNCCL.cpp:3356, remote process exited'.
_SOURCE = re.compile(r"\[[^\]\s]*\.\w+:\d+\]\s*|\s+in:?\s+\S+\.\w+:\d+,?")


def error_text(error):
    """``error``'s type and first sentence, without the source locations of the libraries."""
    text = _SOURCE.sub(lambda m: "" if m.group().startswith("[") else ":", first_line(error))
    return f"{type(error).__name__}: {text.split('. ')[0][:300]}"


class Ranks:
    """The ranks of this run as seen from one of them; one process: ``Ranks()``."""

    def __init__(self, rank=0, world=1, group=None, backend=None):
        self.rank, self.world, self.group, self.backend = rank, world, group, backend
        # The last epoch rank 0 has checkpointed, as this rank knows it (None before rank 0 has
        # handed over the run's state).
        self.checkpointed = None
        self._confirming = self._terminated = False

    def wrap(self, model, device):
        """``model`` in DDP on several ranks (its BatchNorm statistics the ranks' own), as it is
        on one."""
        if not self.distributed:
            return model
        # The network's channels_last activations give some filter gradients other strides
        # than the filters' (mostly in size-1 dimensions): DDP copies those into its buckets.
        warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
        with warnings.catch_warnings():
            # Its successor, forward_sync_buffers, would also copy rank 0's buffers at start.
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None,
                broadcast_buffers=False)

    @property
    def leader(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.group is not None

    def sum_(self, tensor):
        """``tensor`` summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def share(self, obj=None):
        """The leader's ``obj`` on every rank (``obj`` itself for one process)."""
        if not self.distributed:
            return obj
        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def checkpoint_written(self, epoch):
        """Every rank calls this once rank 0 has written the checkpoint of ``epoch`` (the others
        wait for rank 0 here), so that a rank that stops can name the epoch --resume continues
        from. A SIGTERM meanwhile waits until the epoch is known."""
        self._confirming = True
        try:
            self.checkpointed = self.share(epoch)
        finally:
            self._confirming = False
        if self._terminated:
            raise Terminated()

    def stop(self):
        """This rank is ending after a failure of the ranks: further SIGTERMs (torchrun's, which
        come once it sees a rank fail) must not cut its report short."""
        if self.distributed:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _terminate(self, signum, frame):
        self.stop()
        self._terminated = True
        if not self._confirming:
            raise Terminated()

    def derived_seed(self, seed):
        """A seed of this rank's own random stream (its augmentation), independent of the other
        ranks' and of ``seed``'s own stream (which built the identical models)."""
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def close(self):
        if self.distributed:
            dist.destroy_process_group(self.group)
            self.group = None


def start(options, default_device):
    """(Ranks, device) of this process: under torchrun it joins the process group (--device
    cpu or cuda, each rank on its own GPU); otherwise one process on ``default_device``."""
    if not under_torchrun():
        return Ranks(), default_device
    missing = [name for name in _ENVIRONMENT if name not in os.environ]
    if missing:
        raise UsageError(f"under torchrun, but {', '.join(missing)} are not set in the "
                         f"environment; start the search with torchrun")
    try:
        rank, world, local = (int(os.environ[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets "
                         "them)") from None
    if options.device not in (None, "cpu", "cuda"):
        raise UsageError(f"--device {options.device}: under torchrun each rank takes the GPU "
                         f"of its LOCAL_RANK; give --device cuda or --device cpu")
    use_cuda = options.device == "cuda" or (options.device is None
                                            and torch.cuda.is_available())
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) are visible; start at most that many processes per "
                             f"node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=options.dist_timeout),
                                **({"device_id": device} if use_cuda else {}))
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"rank {rank} could not join the other {world - 1} rank(s) "
                         f"({first_line(e)})") from None
    ranks = Ranks(rank, world, dist.group.WORLD, backend)
    signal.signal(signal.SIGTERM, ranks._terminate)
    return ranks, device
