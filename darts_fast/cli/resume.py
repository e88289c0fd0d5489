"""A job's run folder opened before its epochs: a new one, or the one ``--resume`` names,
verified (``stored_run.py``) and checked to resume on the processes and the CPU threads the run
was computed on, its checkpoint restored into the job. On several processes rank 0 alone opens
the folder and hands the checkpoint's state to the others (or its failure, as an exit code)."""
import math

import torch

from . import checkpoint
from .errors import FollowerStopped, UsageError, first_line
from .run_dir import RunDir, RunDirError, metric_fields
from .stored_run import RESUMABLE, keep_data_info, reopen, stored_option, stored_options, verify


def open_run(job):
    """(run folder, checkpoint state or None, metrics rows, outputs behind) on rank 0; the state
    and rows on the other ranks (folder None), handed over by rank 0, which also restores the
    state into its job. A failure on rank 0 stops the other ranks with its exit code."""
    ranks = job.ranks
    if not ranks.leader:
        shared = ranks.share()
        if isinstance(shared, FollowerStopped):
            raise shared
        return None, *shared, False
    try:
        folder, state, rows, behind = _open_folder(job)
        try:
            if job.data_info is not None:  # before a checkpoint meets a network of other data
                keep_data_info(folder, job.data_info)
            restore(job, state)
            if job.options.resume:
                folder.update_options(stored_options(job.options))
        except BaseException:
            folder.close()
            raise
    except BaseException as e:
        ranks.share(FollowerStopped(2 if isinstance(e, UsageError) else 1))
        raise
    ranks.share((state, rows))
    return folder, state, rows, behind


def _open_folder(job):
    options = job.options
    stored = stored_options(options)
    if options.resume:
        folder = reopen(options.resume, options.saved_config)
    else:
        folder = RunDir.create(options.run_dir, job.command, stored)
    try:
        state, rows, behind = (verify(folder, [k for k in stored if k not in RESUMABLE],
                                      job.absent_options(), metric_fields(job.metric))
                               if options.resume else (None, [], False))
        if state is not None:
            _check_processes(state, job.ranks, folder.path)
            _check_threads(job, state, folder.path)
            if state["epoch"] > options.epochs:
                raise RunDirError(f"--epochs {options.epochs}: the run in {folder.path!r} has "
                                  f"already done {state['epoch']} epochs")
        return folder, state, rows, behind
    except BaseException:
        folder.close()
        raise


def _check_processes(state, ranks, where):
    """A run resumes on as many processes as it ran on: the shards and every rank's random
    streams are those of that number."""
    made = state.get("processes")
    now = ranks.world if ranks.distributed else None
    if made != now:
        was = (f"{made} torchrun process(es)" if made else "one process (without torchrun)")
        give = (f"under torchrun with {made} process(es) in all" if made else "without torchrun")
        raise RunDirError(f"the run in {where!r} ran on {was}; resume it {give} (a different "
                          f"number of processes would deal other shards)")


def _check_threads(job, state, where):
    """On the CPU a run resumes on the thread count its checkpoint was computed on, or with
    --allow_thread_change: another count sums in another order, and the numbers would differ
    from a run never stopped. On CUDA the count is recorded but not checked (the GPU's numbers
    do not depend on it)."""
    made, now = stored_option(state["options"], "threads"), job.options.threads
    if job.device.type != "cpu" or made in (None, now) or job.options.allow_thread_change:
        return
    raise RunDirError(f"the run in {where!r} was computed on {made} CPU thread(s) and this "
                      f"process would use {now}: the numbers would differ from a run never "
                      f"stopped; resume with --threads {made} to continue it bit for bit, or add "
                      f"--allow_thread_change to continue on {now}")


def thread_change(job, state):
    """The log line of a resumed CPU run on another (or an unrecorded) thread count; None when
    the count is the checkpoint's."""
    made, now = stored_option(state["options"], "threads"), job.options.threads
    if job.device.type != "cpu" or made == now:
        return None
    if made is None:
        return (f"the checkpoint does not record its CPU thread count (an earlier darts-fast "
                f"made it): resuming on {now}; on another count than it ran on, the numbers "
                f"differ from a run never stopped")
    return (f"--allow_thread_change: the checkpoint of epoch {state['epoch']} was computed on "
            f"{made} CPU thread(s), the epochs from now on run on {now}: the numbers differ from "
            f"a run never stopped")


def restore(job, state):
    """Loads a checkpoint into the job; returns the epochs it had done (0 for a new run). The
    RNG states go last, so that nothing after them draws from the generators."""
    if state is None:
        return 0
    try:
        job.prepare_restore(state)
        job.model.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        if job.scheduler is not None:
            job.scheduler.load_state_dict(state["scheduler"])
        job.restore_extra(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise RunDirError(f"the checkpoint does not fit the model its configuration builds "
                          f"({first_line(e)}); refusing to resume") from None
    if job.scheduler is not None:
        _stretch_schedule(job.scheduler, job.schedule_epochs())
    ranks = job.ranks
    if ranks.distributed:
        with torch.no_grad():
            own = state["buffers_ranks"][ranks.rank]
            for name, buffer in job.model.named_buffers():
                buffer.copy_(own[name])
    checkpoint.set_rng_states(state["rng_ranks"][ranks.rank] if ranks.distributed
                              else state["rng"])
    return state["epoch"]


def _stretch_schedule(scheduler, epochs):
    """A resumed run given other --epochs goes on with the cosine schedule of its new length:
    the rate of epoch e becomes eta_min + (lr_0 - eta_min) (1 + cos(pi e / epochs)) / 2, from
    which CosineAnnealingLR's own recursion carries on."""
    if scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    e = scheduler.last_epoch
    lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * e / epochs))
           / 2 for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
