"""The epoch loop that search and train share, and the run around it: open the run folder (new,
or verified on --resume), restore the checkpoint, run the epochs (checkpoint first, then the
outputs), stop cleanly on a non-finite loss or an interruption.

A job (``search.SearchJob``, ``train.TrainJob``) brings its model, optimizer, scheduler and
criterion, and says how an epoch's batches are drawn, what one step does, what else a checkpoint
holds and which outputs an epoch leaves.

On several processes (``ranks.Ranks``) every rank runs the epochs on its shard; rank 0 alone opens
the run folder, logs and writes, and hands a resumed checkpoint to the others; the epoch's means
are sums over the ranks; the checkpoint holds every rank's RNG states."""
import contextlib
import math
import os
import random
import time

import numpy as np
import torch

from . import checkpoint, visualize
from .errors import Diverged, FollowerStopped, RankFailure, UsageError, first_line
from .ranks import Ranks, Terminated
from .report import Meter, Progress, RunLog
from .run_dir import RESUMABLE, RunDir, RunDirError, stored_options


def auto_device(options):
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Job:
    """What search and train each define (see the module docstring)."""

    command = None
    finished = None  # the summary's first words when every epoch is done

    def __init__(self, options, model, optimizer, scheduler, criterion, device, ranks=None):
        self.options, self.model, self.optimizer = options, model, optimizer
        self.scheduler, self.criterion, self.device = scheduler, criterion, device
        self.ranks = ranks if ranks is not None else Ranks()

    def begin_epoch(self, epoch):
        pass

    def steps_per_epoch(self):
        raise NotImplementedError

    def batches(self):
        """The batches of one epoch, each as ``step`` takes it."""
        raise NotImplementedError

    def step(self, batch, lr):
        """One training step; returns (loss, logits, target) as tensors, unsynchronised."""
        raise NotImplementedError

    def eval_batches(self):
        raise NotImplementedError

    def extra_state(self):
        return {}

    def restore_extra(self, state):
        pass

    def skip_counters(self):
        """Device counters of the steps skipped as not finite, by kind ({} when the job's steps
        are never skipped), read once per epoch."""
        return {}

    def tensors_to_check(self):
        """The tensors that must stay finite (weights, and alphas for a search)."""
        return list(self.model.parameters())

    def check_ranks(self, epoch):
        """Raises Diverged when what every rank must hold alike differs between the ranks."""

    def write_outputs(self, run, log, epoch, rows):
        pass

    def describe(self):
        raise NotImplementedError

    def output_lines(self, run):
        """The job's own outputs, one "name: where" line each, for the closing summary."""
        raise NotImplementedError

    def summary(self, run, epoch):
        done = epoch >= self.options.epochs
        lines = [f"\n{self.finished if done else f'stopped after epoch {epoch}'}: {run.path}",
                 *self.output_lines(run),
                 f"metrics:   {run.file('metrics.csv')}; tensorboard --logdir {run.path}"]
        if not done:
            lines.append(f"continue:  darts-fast {self.command} --resume {run.path}")
        return "\n  ".join(lines)


@contextlib.contextmanager
def determinism(enabled):
    """With ``enabled``: deterministic algorithms only, and cuDNN without autotuning, for the
    duration; otherwise cuDNN autotunes its convolutions, as the original sets it."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if enabled:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:3]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def run(job):
    """Runs ``job`` in its run folder; returns the exit code."""
    with determinism(job.options.deterministic):
        return _run(job)


def _run(job):
    ranks = job.ranks
    folder = log = None
    try:
        folder, state, rows, behind = _open(job)
        start = state["epoch"] if state else 0
        if not ranks.leader:
            _restore(job, state)  # rank 0 restored its job while opening the folder
        else:
            log = RunLog(folder, job.command, start)
            if behind:  # a kill cut the checkpointed epoch's outputs short
                _write_outputs(job, folder, log, start, rows)
            log.info(f"{job.describe()}; run folder {folder.path}"
                     + (f"; resuming after epoch {start}" if start else ""))
        last = _epochs(job, folder, log, start, rows)
    except KeyboardInterrupt as e:
        if folder is None:
            raise
        done = folder.checkpoint_epoch
        _info(log, f"{_signal_name(e)}; {f'epoch {done} is checkpointed: ' if done else ''}"
                   f"continue with {_command(job)} --resume {folder.path}")
        return 143 if isinstance(e, Terminated) else 130
    except Diverged as e:
        _info(log, f"stopped: {e}")
        raise
    except RuntimeError as e:
        if not ranks.distributed:
            raise
        failure = RankFailure(_lost(job, folder, e))
        _info(log, f"stopped: {failure}")
        raise failure from None
    finally:
        if log:
            log.close()
        if folder:
            folder.close()
    if ranks.leader:
        print(job.summary(folder, last))
    return 0


def _open(job):
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
            _restore(job, state)
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
        folder = RunDir.reopen(options.resume, options.saved_config)
    else:
        folder = RunDir.create(options.run_dir, job.command, stored)
    try:
        state, rows, behind = (folder.verify([k for k in stored if k not in RESUMABLE])
                               if options.resume else (None, [], False))
        if state is not None:
            _check_processes(state, job.ranks, folder.path)
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


def _info(log, message):
    """A log line from rank 0 (the other ranks have no log)."""
    if log:
        log.info(message)


def _command(job):
    return ("torchrun ... " if job.ranks.distributed else "") + f"darts-fast {job.command}"


def _signal_name(e):
    return "terminated (SIGTERM; torchrun stops every rank when one fails)" \
        if isinstance(e, Terminated) else "interrupted"


def _lost(job, folder, error):
    first = first_line(error).split(". ")[0]
    kept = (f"epoch {folder.checkpoint_epoch} is checkpointed: continue with {_command(job)} "
            f"--resume {folder.path}" if folder and folder.checkpoint_epoch else
            "no epoch had been checkpointed" if folder else "rank 0 keeps the last checkpoint")
    return (f"an operation across the ranks failed: another rank has probably stopped, or hung "
            f"past --dist_timeout ({type(error).__name__}: {first[:300]}); {kept}")


def _restore(job, state):
    """Loads a checkpoint into the job; returns the epochs it had done (0 for a new run). The
    RNG states go last, so that nothing after them draws from the generators."""
    if state is None:
        return 0
    try:
        job.model.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        job.scheduler.load_state_dict(state["scheduler"])
        job.restore_extra(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise RunDirError(f"the checkpoint does not fit the model its configuration builds "
                          f"({first_line(e)}); refusing to resume") from None
    _stretch_schedule(job.scheduler, job.options.epochs)
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


def _epochs(job, folder, log, start, rows):
    options, ranks = job.options, job.ranks
    last = min(options.epochs, options.stop_after_epoch or options.epochs)
    for epoch in range(start, last):
        epoch_start = time.time()
        lr = job.scheduler.get_last_lr()[0]
        job.begin_epoch(epoch)
        meter = Meter(skip_non_finite=True, device=job.device)
        before = _read(job.skip_counters())
        progress = Progress(epoch, options.epochs, job.steps_per_epoch(), meter,
                            shown=ranks.leader)
        steps = 0
        try:
            for batch in job.batches():
                meter.add(*job.step(batch, lr))
                progress.step()
                steps += 1
        finally:
            progress.close()
        skipped = {kind: n - before[kind] for kind, n in _read(job.skip_counters()).items()}
        if steps and any(n == steps for n in skipped.values()):
            raise Diverged(_diverged(folder, epoch, "every step was skipped: the loss or the "
                                                    "gradients are not finite"))
        train_loss, train_acc = meter.means(ranks.sum_)
        job.scheduler.step()
        valid_loss, valid_acc = evaluate(job.model, job.eval_batches(), job.criterion,
                                         ranks.sum_, job.device)
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)
                and _all_finite(job.tensors_to_check())):
            raise Diverged(_diverged(folder, epoch, f"the loss or the weights are not finite "
                                                    f"(train loss {train_loss:.4g})"))
        job.check_ranks(epoch)
        rows.append({"epoch": str(epoch + 1), "lr": f"{lr:.6g}",
                     "train_loss": f"{train_loss:.4f}", "train_acc": f"{train_acc:.2f}",
                     "valid_loss": f"{valid_loss:.4f}", "valid_acc": f"{valid_acc:.2f}",
                     "seconds": f"{time.time() - epoch_start:.1f}"})
        rng = ranks.gather(checkpoint.rng_states())
        # The ranks' own BatchNorm statistics (rank 0's are the model's), for an exact resume.
        buffers = ranks.gather({n: b.cpu() for n, b in job.model.named_buffers()}) \
            if ranks.distributed else None
        if not ranks.leader:
            continue
        folder.save_checkpoint({
            "command": job.command, "run_id": folder.config["run_id"],
            "options": folder.config["options"], "epoch": epoch + 1, "metrics": list(rows),
            "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
            "scheduler": job.scheduler.state_dict(), **job.extra_state(),
            "rng": rng[0], **({"processes": ranks.world, "rng_ranks": rng,
                               "buffers_ranks": buffers} if ranks.distributed else {}),
        })
        _write_outputs(job, folder, log, epoch + 1, rows)
        log.info(f"epoch {epoch + 1}/{options.epochs} lr {lr:.4g} | train loss {train_loss:.3f} "
                 f"acc {train_acc:.1f}% | valid loss {valid_loss:.3f} acc {valid_acc:.1f}% | "
                 f"{rows[-1]['seconds']} s" + "".join(
                     f" | {n} {kind} step{'s' if n > 1 else ''} skipped (not finite)"
                     for kind, n in skipped.items() if n))
    return last


def _diverged(folder, epoch, what):
    """The message of a stop at ``epoch`` (every rank decides alike; rank 0 alone has the
    folder and prints)."""
    if folder is None:
        return what
    kept = (f"the checkpoint of epoch {folder.checkpoint_epoch} is kept in {folder.path}"
            if folder.checkpoint_epoch else "no epoch had been checkpointed")
    return f"epoch {epoch + 1} diverged: {what}; {kept}. A smaller --learning_rate may help"


def _read(counters):
    """The counters' values (one host synchronisation for all); 0 for a counter not made yet."""
    made = {kind: c for kind, c in counters.items() if c is not None}
    values = dict(zip(made, torch.stack(list(made.values())).tolist())) if made else {}
    return {kind: values.get(kind, 0) for kind in counters}


def _all_finite(tensors):
    with torch.no_grad():
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _write_outputs(job, folder, log, epoch, rows):
    # metrics.csv last: when it holds the epoch, so does every other output (see verify).
    folder.write_bytes("curves.png", visualize.curves_png(rows))
    log.scalars(epoch, rows[-1])
    job.write_outputs(folder, log, epoch, rows)
    folder.write_metrics(rows)


def evaluate(model, batches, criterion, sum_over_ranks=None, device="cpu"):
    """(mean loss, accuracy in %) of ``model`` in eval mode over ``batches`` (over every rank's
    batches, with ``sum_over_ranks``)."""
    model.eval()
    meter = Meter(device=device)
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            meter.add(criterion(logits, y), logits, y)
    return meter.means(sum_over_ranks)
