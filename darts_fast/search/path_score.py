"""How a trained supernet scores one of its paths: top-1 accuracy on validation batches, with the
path's BatchNorm statistics recalibrated first or as training left them.

The supernet's running statistics mix every path that trained; SPOS' authors therefore reset
them (mean 0, variance 1) and run ``recalibration`` training batches through the path in
training mode (no gradients) before evaluating in eval mode. randomNAS evaluates with the
statistics as training left them (``recalibration=0``); ENAS' controller reward takes the
batch's own statistics (``batch_statistics``: training mode). Either way the supernet's buffers
are put back after each score, so scores do not depend on the order of evaluation and the supernet
leaves an evolution as it entered it.
"""
import itertools

import torch
import torch.nn as nn


class PathScorer:
    """``scorer(architecture, batches)``: the fraction of the validation ``batches`` (an
    iterable of (input, target)) that the path classifies right. ``model``: a
    ``SinglePathNetwork``; ``train_batches``: a callable returning a fresh iterable of training
    batches, cycled if shorter than ``recalibration``."""

    def __init__(self, model, train_batches=None, recalibration=200, batch_statistics=False):
        if not (isinstance(recalibration, int) and recalibration >= 0):
            raise ValueError(f"PathScorer: recalibration must be an integer >= 0 (batches), got "
                             f"{recalibration!r}")
        if recalibration and train_batches is None:
            raise ValueError("PathScorer: recalibration needs train_batches")
        if recalibration and batch_statistics:
            raise ValueError("PathScorer: batch_statistics scores with each batch's own "
                             "statistics; recalibrated ones would go unused")
        self.model, self.train_batches = model, train_batches
        self.recalibration, self.batch_statistics = recalibration, batch_statistics
        self.scored = 0

    @torch.no_grad()
    def __call__(self, architecture, batches):
        model = self.model
        buffers = [b.clone() for b in model.buffers()]
        training = model.training
        try:
            with model.use_path(architecture):
                if self.recalibration:
                    self._recalibrate()
                model.train(self.batch_statistics)
                right = total = 0
                for x, y in batches:
                    right += (model(x).argmax(1) == y).sum()
                    total += y.numel()
            if total == 0:
                raise ValueError("PathScorer: no validation batches to score on")
            self.scored += 1
            return float(right) / total
        finally:
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
            model.train(training)

    def _recalibrate(self):
        model = self.model
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.reset_running_stats()
        model.train()
        done = 0
        while done < self.recalibration:
            before = done
            for x, _ in itertools.islice(self.train_batches(), self.recalibration - done):
                model(x)
                done += 1
            if done == before:
                raise ValueError("PathScorer: train_batches() gave no batches to recalibrate on")
