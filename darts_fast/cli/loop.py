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

from . import epoch_end, stops
from .errors import Diverged
from .ranks import Ranks, Terminated
from .report import Meter, Progress, RunLog, evaluate, oversubscription
from .resume import open_run, restore, thread_change
from .runtime import determinism


class Job:
    """What search and train each define (see the module docstring)."""

    command = None
    finished = None  # the summary's first words when every epoch is done
    metric = Meter.metric
    lr_option = "--learning_rate"  # named when an epoch diverges
    data_info = None  # a CNN job's input description (image_data.DataInfo), kept in data.json
    notes = ()  # lines for the log before the first epoch (images skipped)

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

    def schedule_epochs(self):  # the epochs the scheduler anneals over
        return self.options.epochs

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

    def after_validation(self, epoch):
        """What the job decides from epoch ``epoch`` (0-based) before its checkpoint."""

    def rollback_epoch(self):
        """The epoch (count of epochs done) the run goes back to now (None: it goes on)."""
        return None

    def carried_over(self):
        """What a rollback keeps of the job as it is, for ``rolled_back``."""

    def rolled_back(self, carried):
        """After a rollback restored the job: changes what the rollback changes; the log line."""

    def epoch_checkpoints(self):
        """How many epochs' checkpoints the run folder keeps, for a rollback (0: none)."""
        return 0

    def stop_reason(self):
        """Why the run ended before its last epoch, once it did (None: it goes on)."""
        return None

    def epoch_text(self):
        """The job's own words in the epoch's log line ('' for none)."""
        return ""

    def write_outputs(self, run, log, epoch, rows):
        pass

    def describe(self):
        raise NotImplementedError

    def output_lines(self, run):
        """The job's own outputs, one "name: where" line each, for the closing summary."""
        raise NotImplementedError

    def summary(self, run, epoch):
        stopped = self.stop_reason()
        done = epoch >= self.options.epochs or stopped is not None
        first = f"{self.command} {stopped}" if stopped else self.finished if done else \
            f"stopped after epoch {epoch}"
        lines = [f"\n{first}: {run.path}",
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
                epoch_end.write_outputs(job, folder, log, start, rows)
            threads = job.options.threads
            log.info(f"{job.describe()}; {threads} CPU thread{'s' if threads > 1 else ''}; "
                     f"run folder {folder.path}"
                     + (f"; resuming after epoch {start}" if start else ""))
            for note in job.notes:
                log.info(note)
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
    """Runs the epochs from ``start``; returns the number of epochs done."""
    options = job.options
    last = min(options.epochs, options.stop_after_epoch or options.epochs)
    if job.stop_reason():
        _info(log, f"nothing to continue: the run {job.stop_reason()}")
        return start
    epoch, rows = epoch_end.roll_back(job, folder, log, start, rows)  # one decided before a kill
    while epoch < last:
        _epoch(job, folder, log, epoch, rows, first=epoch == start)
        epoch += 1
        if job.stop_reason():  # every rank decided alike
            _info(log, f"{job.command} {job.stop_reason()}")
            return epoch
        epoch, rows = epoch_end.roll_back(job, folder, log, epoch, rows)
    return last


def _epoch(job, folder, log, epoch, rows, first):
    """Epoch ``epoch`` (0-based): its steps, validation, checkpoint, outputs and log line."""
    options, ranks = job.options, job.ranks
    epoch_start, cpu_start = time.time(), time.process_time()
    job.begin_epoch(epoch)  # first: it may start a new schedule (a search's new stage)
    lr = job.learning_rate()
    meter = job.new_meter()
    before = _read(job.skip_counters())
    progress = Progress(epoch, options.epochs, job.steps_per_epoch(), meter, shown=ranks.leader)
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
        raise Diverged(stops.diverged(folder, epoch, "every step was skipped: the loss or the "
                                                     "gradients are not finite", job.lr_option))
    train_loss, train_metric = meter.means(ranks.sum_)
    job.end_epoch()
    valid_loss, valid_metric = job.validate()
    if not (math.isfinite(train_loss) and math.isfinite(valid_loss)
            and _all_finite(job.tensors_to_check())):
        raise Diverged(stops.diverged(folder, epoch, f"the loss or the weights are not finite "
                                                     f"(train loss {train_loss:.4g})",
                                      job.lr_option))
    job.check_ranks(epoch)
    job.after_validation(epoch)
    m = job.metric
    rows.append({"epoch": str(epoch + 1), "lr": f"{lr:.6g}",
                 "train_loss": f"{train_loss:.4f}", f"train_{m}": f"{train_metric:.2f}",
                 "valid_loss": f"{valid_loss:.4f}", f"valid_{m}": f"{valid_metric:.2f}",
                 "seconds": f"{time.time() - epoch_start:.1f}"})
    epoch_end.save_checkpoint(job, folder, epoch + 1, rows)
    if not ranks.leader:
        return
    epoch_end.write_outputs(job, folder, log, epoch + 1, rows)
    text = meter.text
    log.info(f"epoch {epoch + 1}/{options.epochs} lr {lr:.4g} | train loss {train_loss:.3f} "
             f"{text(train_metric)} | valid loss {valid_loss:.3f} {text(valid_metric)} | "
             f"{rows[-1]['seconds']} s" + job.epoch_text() + "".join(
                 f" | {n} {kind} step{'s' if n > 1 else ''} skipped (not finite)"
                 for kind, n in skipped.items() if n))
    if first and job.device.type == "cpu":  # once, from a whole epoch's figures
        warning = oversubscription(options.threads, time.process_time() - cpu_start,
                                   time.time() - epoch_start)
        if warning:
            log.info(warning)


def _read(counters):
    """The counters' values (one host synchronisation for all); 0 for a counter not made yet."""
    made = {kind: c for kind, c in counters.items() if c is not None}
    values = dict(zip(made, torch.stack(list(made.values())).tolist())) if made else {}
    return {kind: values.get(kind, 0) for kind in counters}


def _all_finite(tensors):
    with torch.no_grad():
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
