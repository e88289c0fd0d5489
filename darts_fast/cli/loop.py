"""The epoch loop that search and train share, and the run around it: open the run folder (new,
or verified on --resume) and restore the checkpoint (``resume.py``), run the epochs (checkpoint
first, then the outputs), stop cleanly on a non-finite loss or an interruption (``stops.py``).

A job (``search.SearchJob``, ``train.TrainJob``, and the recurrent space's ``rnn_search`` and
``rnn_train`` jobs) brings its model, optimizer, scheduler (or None) and criterion, and says how
an epoch's batches are drawn, what one step does, how an epoch is validated, what else a
checkpoint holds and which outputs an epoch leaves. Each split's figures are its mean loss and
the job's ``metric``: accuracy (``acc``, the image jobs) or perplexity (``ppl``, the language
models), the columns of metrics.csv.

On several processes (``ranks.Ranks``) every rank runs the epochs on its shard; rank 0 alone opens
the run folder, logs and writes, and hands a resumed checkpoint to the others; the epoch's means
are sums over the ranks; the checkpoint holds every rank's RNG states."""
import math
import shlex
import time

import torch

from . import checkpoint, stops, visualize
from .errors import Diverged
from .ranks import Ranks, Terminated
from .report import Meter, Progress, RunLog, oversubscription
from .resume import open_run, restore, thread_change
from .run_dir import metric_fields
from .runtime import determinism


class Job:
    """What search and train each define (see the module docstring)."""

    command = None
    finished = None  # the summary's first words when every epoch is done
    metric = Meter.metric
    lr_option = "--learning_rate"  # named when an epoch diverges

    def __init__(self, options, model, optimizer, scheduler, criterion, device, ranks=None):
        self.options, self.model, self.optimizer = options, model, optimizer
        self.scheduler, self.criterion, self.device = scheduler, criterion, device
        self.ranks = ranks if ranks is not None else Ranks()

    def begin_epoch(self, epoch):
        pass

    def new_meter(self):
        """The meter of an epoch's training steps: ``add`` takes what ``step`` returns."""
        return Meter(skip_non_finite=True, device=self.device)

    def learning_rate(self):
        """The learning rate of the epoch about to run, as metrics.csv records it."""
        return self.scheduler.get_last_lr()[0]

    def end_epoch(self):
        """After an epoch's steps, before its validation."""
        self.scheduler.step()

    def validate(self):
        """(mean loss, metric) of the model on the validation batches after an epoch."""
        return evaluate(self.model, self.eval_batches(), self.criterion, self.ranks.sum_,
                        self.device)

    def steps_per_epoch(self):
        raise NotImplementedError

    def batches(self):
        """The batches of one epoch, each as ``step`` takes it."""
        raise NotImplementedError

    def step(self, batch, lr):
        """One training step; returns what the job's meter adds (the image jobs: loss, logits,
        target), tensors unsynchronised."""
        raise NotImplementedError

    def eval_batches(self):
        raise NotImplementedError

    def extra_state(self):
        return {}

    def absent_options(self):
        """What this job's run ran with where its stored options lack one (an option added
        after the run was made), beyond ``stored_run.ADDED_LATER``."""
        return {}

    def prepare_restore(self, state):
        """Before a checkpoint is loaded: makes the job's objects of the kinds it was saved from
        (an optimizer that the run replaced by another kind, say)."""

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
            lines.append(f"continue:  {stops.resume_command(self, run.path)}")
        return "\n  ".join(lines)


def run(job):
    """Runs ``job`` in its run folder; returns the exit code."""
    with determinism(job.options.deterministic):
        return _run(job)


def _run(job):
    ranks = job.ranks
    folder = log = None
    try:
        folder, state, rows, behind = open_run(job)
        start = state["epoch"] if state else 0
        ranks.checkpointed = start
        if not ranks.leader:
            restore(job, state)  # rank 0 restored its job while opening the folder
        else:
            # The events of the epochs this process writes again replace those left behind.
            log = RunLog(folder, job.command, start if behind else start + 1)
            if behind:  # a kill cut the checkpointed epoch's outputs short
                _write_outputs(job, folder, log, start, rows)
            threads = job.options.threads
            log.info(f"{job.describe()}; {threads} CPU thread{'s' if threads > 1 else ''}; "
                     f"run folder {folder.path}"
                     + (f"; resuming after epoch {start}" if start else ""))
            change = thread_change(job, state) if state is not None else None
            if change:
                log.info(change)
        last = _epochs(job, folder, log, start, rows)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            raise stops.rank_failure(job, folder, log, e) from None
        if folder is None:
            raise
        done = folder.checkpoint_epoch
        _info(log, f"interrupted; {f'epoch {done} is checkpointed: ' if done else ''}"
                   f"continue with {stops.resume_command(job, folder.path)}")
        return 130
    except Diverged as e:
        _info(log, f"stopped: {e}")
        raise
    except RuntimeError as e:
        if not ranks.distributed:
            raise
        raise stops.rank_failure(job, folder, log, e) from None
    finally:
        if log:
            log.close()
        if folder:
            folder.close()
    if ranks.leader:
        print(job.summary(folder, last))
    return 0


def _info(log, message):
    """A log line from rank 0 (the other ranks have no log)."""
    if log:
        log.info(message)


def _epochs(job, folder, log, start, rows):
    options, ranks = job.options, job.ranks
    last = min(options.epochs, options.stop_after_epoch or options.epochs)
    for epoch in range(start, last):
        epoch_start, cpu_start = time.time(), time.process_time()
        lr = job.learning_rate()
        job.begin_epoch(epoch)
        meter = job.new_meter()
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
            raise Diverged(stops.diverged(folder, epoch, "every step was skipped: the loss or "
                                                         "the gradients are not finite",
                                          job.lr_option))
        train_loss, train_metric = meter.means(ranks.sum_)
        job.end_epoch()
        valid_loss, valid_metric = job.validate()
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)
                and _all_finite(job.tensors_to_check())):
            raise Diverged(stops.diverged(folder, epoch, f"the loss or the weights are not "
                                                         f"finite (train loss {train_loss:.4g})",
                                          job.lr_option))
        job.check_ranks(epoch)
        m = job.metric
        rows.append({"epoch": str(epoch + 1), "lr": f"{lr:.6g}",
                     "train_loss": f"{train_loss:.4f}", f"train_{m}": f"{train_metric:.2f}",
                     "valid_loss": f"{valid_loss:.4f}", f"valid_{m}": f"{valid_metric:.2f}",
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
            **({"scheduler": job.scheduler.state_dict()} if job.scheduler is not None else {}),
            **job.extra_state(),
            "rng": rng[0], **({"processes": ranks.world, "rng_ranks": rng,
                               "buffers_ranks": buffers} if ranks.distributed else {}),
        })
        ranks.checkpoint_written(epoch + 1)
        _write_outputs(job, folder, log, epoch + 1, rows)
        text = meter.text
        log.info(f"epoch {epoch + 1}/{options.epochs} lr {lr:.4g} | train loss {train_loss:.3f} "
                 f"{text(train_metric)} | valid loss {valid_loss:.3f} {text(valid_metric)} | "
                 f"{rows[-1]['seconds']} s" + "".join(
                     f" | {n} {kind} step{'s' if n > 1 else ''} skipped (not finite)"
                     for kind, n in skipped.items() if n))
        if epoch == start and job.device.type == "cpu":  # once, from a whole epoch's figures
            warning = oversubscription(options.threads, time.process_time() - cpu_start,
                                       time.time() - epoch_start)
            if warning:
                log.info(warning)
    return last


def _read(counters):
    """The counters' values (one host synchronisation for all); 0 for a counter not made yet."""
    made = {kind: c for kind, c in counters.items() if c is not None}
    values = dict(zip(made, torch.stack(list(made.values())).tolist())) if made else {}
    return {kind: values.get(kind, 0) for kind in counters}


def _all_finite(tensors):
    with torch.no_grad():
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _write_outputs(job, folder, log, epoch, rows):
    # metrics.csv last: when it holds the epoch, so does every other output (see stored_run.verify).
    folder.write_bytes("curves.png", visualize.curves_png(rows, job.metric))
    log.scalars(epoch, rows[-1])
    job.write_outputs(folder, log, epoch, rows)
    folder.write_metrics(rows, metric_fields(job.metric))


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
