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
import shlex
import time

import numpy as np
import torch

from . import checkpoint, visualize
from .errors import Diverged, FollowerStopped, RankFailure, UsageError, first_line
from .ranks import TERMINATED, Ranks, Terminated, error_text
from .report import Meter, Progress, RunLog, oversubscription
from .run_dir import RESUMABLE, RunDir, RunDirError, stored_option, stored_options


def auto_device(options):
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def batches_of(batch_size, images, ranks=None):
    """'of 8 per process': the batch size used on splits of ``images`` images, each dealt over
    the ranks; a split smaller than --batch_size is one smaller batch, and the text says so."""
    distributed = ranks is not None and ranks.distributed
    dealt = [math.ceil(n / ranks.world) for n in images] if distributed else images
    used = list(dict.fromkeys(min(batch_size, n) for n in dealt))
    clamped = "" if used == [batch_size] else \
        f"; --batch_size {batch_size} clamped to the images a split holds"
    return f"of {' and '.join(map(str, used))}{' per process' if distributed else ''}{clamped}"


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
                 f"metrics:   {run.file('metrics.csv')}; "
                 f"{shlex.join(['tensorboard', '--logdir', run.path])}"]
        if not done:
            lines.append(f"continue:  {_resume_command(self, run.path)}")
        return "\n  ".join(lines)


@contextlib.contextmanager
def cpu_threads(count):
    """torch's CPU operations on ``count`` threads for the duration (on the CPU the numbers
    depend on the count: a reduction split over other threads sums in another order)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


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
        ranks.checkpointed = start
        if not ranks.leader:
            _restore(job, state)  # rank 0 restored its job while opening the folder
        else:
            # The events of the epochs this process writes again replace those left behind.
            log = RunLog(folder, job.command, start if behind else start + 1)
            if behind:  # a kill cut the checkpointed epoch's outputs short
                _write_outputs(job, folder, log, start, rows)
            threads = job.options.threads
            log.info(f"{job.describe()}; {threads} CPU thread{'s' if threads > 1 else ''}; "
                     f"run folder {folder.path}"
                     + (f"; resuming after epoch {start}" if start else ""))
            change = _thread_change(job, state) if state is not None else None
            if change:
                log.info(change)
        last = _epochs(job, folder, log, start, rows)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            raise _failure(job, folder, log, e) from None
        if folder is None:
            raise
        done = folder.checkpoint_epoch
        _info(log, f"interrupted; {f'epoch {done} is checkpointed: ' if done else ''}"
                   f"continue with {_resume_command(job, folder.path)}")
        return 130
    except Diverged as e:
        _info(log, f"stopped: {e}")
        raise
    except RuntimeError as e:
        if not ranks.distributed:
            raise
        raise _failure(job, folder, log, e) from None
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


def _thread_change(job, state):
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


def _info(log, message):
    """A log line from rank 0 (the other ranks have no log)."""
    if log:
        log.info(message)


def _command(job):
    return ("torchrun ... " if job.ranks.distributed else "") + f"darts-fast {job.command}"


def _resume_command(job, path):
    """The command that continues the run in ``path``, quoted for a shell; on the CPU with the
    run's thread count, which another default count would not resume on."""
    threads = f" --threads {job.options.threads}" if job.device.type == "cpu" else ""
    return f"{_command(job)} --resume {shlex.quote(path)}{threads}"


def _failure(job, folder, log, error):
    """The RankFailure that ends this rank after ``error`` (torchrun's SIGTERM, or a failed
    operation across the ranks): main prints it, with the rank; rank 0's log file keeps it too."""
    job.ranks.stop()
    failure = RankFailure(_lost(job, folder, error), 143 if isinstance(error, Terminated) else 1)
    if log:
        log.to_file(f"stopped: {failure}")
    return failure


def _lost(job, folder, error):
    what = TERMINATED if isinstance(error, Terminated) else (
        f"an operation across the ranks failed: another rank has probably stopped, or hung past "
        f"--dist_timeout ({error_text(error)})")
    # Rank 0 knows its folder; the others know the last epoch rank 0 said it had checkpointed
    # (None: rank 0 had not handed over the run's state yet).
    done = folder.checkpoint_epoch if folder else job.ranks.checkpointed
    if done is None:
        kept = "rank 0 keeps the last checkpoint"
    elif not done:
        kept = "no epoch had been checkpointed"
    elif folder:
        kept = f"epoch {done} is checkpointed: continue with {_resume_command(job, folder.path)}"
    else:
        kept = f"epoch {done} is checkpointed in rank 0's run folder: --resume continues from it"
    return f"{what}; {kept}"


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
        epoch_start, cpu_start = time.time(), time.process_time()
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
            ranks.checkpoint_written(epoch + 1)
            continue
        folder.save_checkpoint({
            "command": job.command, "run_id": folder.config["run_id"],
            "options": folder.config["options"], "epoch": epoch + 1, "metrics": list(rows),
            "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
            "scheduler": job.scheduler.state_dict(), **job.extra_state(),
            "rng": rng[0], **({"processes": ranks.world, "rng_ranks": rng,
                               "buffers_ranks": buffers} if ranks.distributed else {}),
        })
        ranks.checkpoint_written(epoch + 1)
        _write_outputs(job, folder, log, epoch + 1, rows)
        log.info(f"epoch {epoch + 1}/{options.epochs} lr {lr:.4g} | train loss {train_loss:.3f} "
                 f"acc {train_acc:.1f}% | valid loss {valid_loss:.3f} acc {valid_acc:.1f}% | "
                 f"{rows[-1]['seconds']} s" + "".join(
                     f" | {n} {kind} step{'s' if n > 1 else ''} skipped (not finite)"
                     for kind, n in skipped.items() if n))
        if epoch == start and job.device.type == "cpu":  # once, from a whole epoch's figures
            warning = oversubscription(options.threads, time.process_time() - cpu_start,
                                       time.time() - epoch_start)
            if warning:
                log.info(warning)
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
