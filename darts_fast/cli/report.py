"""What a run tells its user while it runs: a ``tqdm`` bar per epoch on a terminal, log lines (on
stderr and in ``log.txt``), TensorBoard event files under ``tensorboard/`` (``tensorboard --logdir
runs``) and the running means of loss and accuracy (or perplexity), kept on the device."""
import logging
import math
import os
import sys
import time

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

LOG_FILE = "log.txt"
TENSORBOARD = "tensorboard"


class Meter:
    """Sums of loss, correct predictions and samples over an epoch, on the device: adding a step
    costs no host synchronisation; ``means()`` costs one. With ``skip_non_finite``, a step whose
    loss is not finite (a step the search skipped) is left out."""

    metric = "acc"

    def __init__(self, skip_non_finite=False, device="cpu"):
        self.skip_non_finite = skip_non_finite
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        # [loss * samples, correct, samples]

    def add(self, loss, logits, target):
        loss = loss.detach().double()
        samples = torch.full_like(loss, len(target))
        correct = (logits.detach().argmax(1) == target).sum().double()
        sums = torch.stack([loss * samples, correct, samples])
        if self.skip_non_finite:
            sums = torch.where(torch.isfinite(loss), sums, 0)
        self.sums = self.sums + sums

    def means(self, sum_over_ranks=None):
        """(mean loss, accuracy in %); nan for both when no step counted. ``sum_over_ranks``
        (in place, ``Ranks.sum_``) makes them the means over every rank's steps."""
        sums = self.sums.clone()
        if sum_over_ranks is not None:
            sum_over_ranks(sums)
        loss, correct, samples = sums.tolist()
        if samples == 0:
            return float("nan"), float("nan")
        return loss / samples, 100.0 * correct / samples

    @staticmethod
    def text(value):
        return f"acc {value:.1f}%"


class TokenMeter:
    """Sums of a language model's per-token loss (the mean negative log-likelihood of a step,
    weighted by the step's tokens) and of the tokens, on the device. ``means()`` gives the mean
    loss over the tokens and the perplexity ``exp(mean loss)``; a step whose loss is not finite
    is left out with ``skip_non_finite``, as by ``Meter``."""

    metric = "ppl"

    def __init__(self, skip_non_finite=False, device="cpu"):
        self.skip_non_finite = skip_non_finite
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [loss * tokens, tokens]

    def add(self, loss, tokens):
        loss = loss.detach().double()
        sums = torch.stack([loss * tokens, torch.full_like(loss, tokens)])
        if self.skip_non_finite:
            sums = torch.where(torch.isfinite(loss), sums, 0)
        self.sums = self.sums + sums

    def means(self, sum_over_ranks=None):
        """(mean loss, perplexity); nan for both when no step counted."""
        sums = self.sums.clone()
        if sum_over_ranks is not None:
            sum_over_ranks(sums)
        loss, tokens = sums.tolist()
        if tokens == 0:
            return float("nan"), float("nan")
        return loss / tokens, perplexity(loss / tokens)

    @staticmethod
    def text(value):
        return f"ppl {value:.2f}"


def perplexity(loss):
    """``exp(loss)``; inf where that overflows a float (a loss past about 709 nats)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class Progress:
    """A bar over one epoch's steps, live on a terminal only (and on rank 0 only: ``shown``); its
    loss/accuracy (or perplexity) postfix, that process's own, is read from the device at most
    once a second."""

    def __init__(self, epoch, epochs, steps, meter, shown=True):
        self.meter = meter
        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                        file=sys.stderr, disable=not (shown and sys.stderr.isatty()),
                        dynamic_ncols=True)
        self.shown = time.monotonic()

    def step(self):
        self.bar.update(1)
        if not self.bar.disable and time.monotonic() - self.shown >= 1.0:
            loss, value = self.meter.means()
            self.bar.set_postfix_str(f"loss {loss:.3f} {self.meter.text(value)}")
            self.shown = time.monotonic()

    def close(self):
        self.bar.close()


def available_cpus():
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def oversubscription(threads, cpu_seconds, seconds):
    """A warning when fewer cores seem free than the run has CPU threads, else None. The load
    average of the last minute counts the runnable threads, this run's waiting ones included;
    less the cores this process kept busy over ``seconds`` (``cpu_seconds`` of CPU time), it is
    the demand on the cores from elsewhere. An OpenMP thread that waits for a core holds up the
    others at every parallel region: steps can run many times slower."""
    if not hasattr(os, "getloadavg"):
        return None
    cores = available_cpus()
    load, own = os.getloadavg()[0], cpu_seconds / max(seconds, 1e-9)
    free = cores - max(0.0, load - own)
    if threads <= free + 0.5:  # half a core of slack for the average's noise
        return None
    return (f"warning: {threads} CPU thread{'s' if threads > 1 else ''}, but only about "
            f"{max(free, 0.0):.1f} of {cores} cores seem free (load average {load:.1f}, this run's "
            f"own use {own:.1f}): threads waiting for a busy core can make each step many times "
            f"slower; fewer --threads may run faster (on --resume with --allow_thread_change, "
            f"which changes the numbers)")


class RunLog:
    """Log lines and TensorBoard events of one run; ``close()`` detaches both."""

    def __init__(self, run, command, first_step):
        self.logger = logging.getLogger(f"darts_fast.cli.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        screen = logging.StreamHandler(sys.stderr)
        screen.setFormatter(logging.Formatter(f"darts-fast {command}: %(message)s"))
        self.file = logging.FileHandler(run.file(LOG_FILE), encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger.addHandler(screen)
        self.logger.addHandler(self.file)
        # TensorBoard drops the events of steps from ``first_step`` on that earlier event files
        # hold: those a stopped or killed run wrote after its last complete epoch.
        self.events = SummaryWriter(run.file(TENSORBOARD), purge_step=first_step)

    def info(self, message):
        self.logger.info(message)

    def rewind(self, first_step):
        """TensorBoard drops the events from ``first_step`` on (a run rolled back)."""
        self.events.close()
        self.events = SummaryWriter(self.events.log_dir, purge_step=first_step)

    def to_file(self, message):
        """A line in the log file alone: one that its caller prints itself."""
        self.file.handle(self.logger.makeRecord(self.logger.name, logging.INFO, "", 0, message,
                                                None, None))

    def scalars(self, epoch, row):
        """Each figure of a metrics row but its epoch and seconds, as ``loss/train``,
        ``acc/valid``, ``ppl/train``, ``lr``."""
        for key in [k for k in row if k not in ("epoch", "seconds")]:
            split, _, name = key.partition("_")
            self.events.add_scalar(f"{name}/{split}" if name else key, float(row[key]), epoch)

    def close(self):
        self.events.close()
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()


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
