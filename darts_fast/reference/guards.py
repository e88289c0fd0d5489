"""The collapse guards as their authors wrote them, on ``reference.Network``:

* DARTS- (Meituan-AutoML/DARTS-, ``src/search/model_search.py``, ``src/utils.DecayScheduler``):
  every mixed op adds ``auxiliary_op(x) * decay_rate``, the identity (``FactorizedReduce(C, C,
  affine=False)`` at stride 2) built before the candidates, the rate read from the search's one
  ``DecayScheduler`` (a module-level object there, the network's here);
* SDARTS-RS (xiangning-chen/SmoothDARTS, ``sota/cnn/model_search.py``, ``attacker/perturb.py``):
  the alphas' data replaced by their softmax, uniform noise added, ``clip()``, the weight step's
  forward with the alphas as the weights (``updateType='weight'``), the alphas restored;
* DARTS-ES (automl/RobustDARTS, ``src/utils.EVLocalAvg``): the local average of the dominant
  eigenvalues and the early-stop test, with ``ev_freq`` 1 (an eigenvalue every epoch).
"""
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.operations import FactorizedReduce, Identity
from .darts import Cell, Network, candidates


class DecayScheduler:
    """DARTS-'s schedule of the auxiliary skip's coefficient, ``decay_rate`` after ``step``."""

    def __init__(self, base_lr=1.0, T_max=50, T_start=0, T_stop=50, decay_type="cosine"):
        self.base_lr, self.T_max, self.T_start, self.T_stop = base_lr, T_max, T_start, T_stop
        self.decay_type = decay_type
        self.decay_rate = 1.0

    def step(self, epoch):
        if epoch >= self.T_start:
            if self.decay_type == "cosine":
                self.decay_rate = self.base_lr * (1 + math.cos(
                    math.pi * epoch / (self.T_max - self.T_start))) / 2.0 \
                    if epoch <= self.T_stop else self.decay_rate
            elif self.decay_type == "linear":
                self.decay_rate = self.base_lr * (self.T_max - epoch) / (
                    self.T_max - self.T_start) if epoch <= self.T_stop else self.decay_rate
            else:
                self.decay_rate = self.base_lr
        else:
            self.decay_rate = self.base_lr


class AuxiliarySkipMixedOp(nn.Module):
    def __init__(self, C, stride, scheduler, primitives=PRIMITIVES):
        super().__init__()
        self.scheduler = scheduler
        self.auxiliary_op = FactorizedReduce(C, C, affine=False) if stride == 2 else Identity()
        self._ops = candidates(C, stride, primitives)

    def forward(self, x, weights):
        res = sum(w * op(x) for w, op in zip(weights, self._ops))
        res += self.auxiliary_op(x) * self.scheduler.decay_rate
        return res


class DartsMinusNetwork(Network):
    """DARTS' network on ``AuxiliarySkipMixedOp``; ``beta_decay_scheduler`` its schedule."""

    def _make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev):
        if "beta_decay_scheduler" not in self.__dict__:
            self.beta_decay_scheduler = DecayScheduler()
        return Cell(self._steps, self._multiplier, C_prev_prev, C_prev, C, reduction,
                    reduction_prev, functools.partial(AuxiliarySkipMixedOp,
                                                      scheduler=self.beta_decay_scheduler))


class SDARTSNetwork(Network):
    """DARTS' network with SDARTS' ``updateType='weight'``: the alphas' values are the weights."""

    def forward(self, input, updateType="alpha"):
        if updateType == "alpha":
            return super().forward(input)
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            weights = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def softmax_arch_parameters(self):
        self._saved_arch_parameters = [p.clone() for p in self._arch_parameters]
        for p in self._arch_parameters:
            p.data.copy_(F.softmax(p, dim=-1))

    def restore_arch_parameters(self):
        for i, p in enumerate(self._arch_parameters):
            p.data.copy_(self._saved_arch_parameters[i])
        del self._saved_arch_parameters

    def clip(self):
        for p in self.arch_parameters():
            for line in p:
                max_index = line.argmax()
                line.data.clamp_(0, 1)
                if line.sum() == 0.0:
                    line.data[max_index] = 1.0
                line.data.div_(line.sum())


def random_alpha(model, epsilon):
    """SDARTS' ``Random_alpha``."""
    for p in model.arch_parameters():
        p.data.add_(torch.zeros_like(p).uniform_(-epsilon, epsilon))
    model.clip()


class EVLocalAvg:
    """RobustDARTS' tracker of the eigenvalues' local average (without the genotypes it keeps,
    and the last epoch's averages, which no early stop reads)."""

    def __init__(self, window=5, ev_freq=1, total_epochs=50):
        self.window, self.ev_freq, self.epochs = window, ev_freq, total_epochs
        self.stop_search = False
        self.stop_epoch = total_epochs - 1
        self.ev, self.ev_local_avg, self.la_epochs = [], [], {}
        self.la_start_idx, self.la_end_idx = 0, self.window

    def update(self, epoch, ev):
        self.ev.append(ev)
        if (len(self.ev) >= int(np.ceil(self.window / 2))) and (epoch < self.epochs - 1):
            if len(self.ev) < self.window:
                self.ev_local_avg.append(np.mean(self.ev))
            else:
                assert len(self.ev[self.la_start_idx: self.la_end_idx]) == self.window
                self.ev_local_avg.append(np.mean(self.ev[self.la_start_idx:self.la_end_idx]))
                self.la_start_idx += 1
                self.la_end_idx += 1
            self.la_epochs.update({epoch: int(epoch - int(self.ev_freq *
                                                          np.floor(self.window / 2)))})
        elif len(self.ev) < int(np.ceil(self.window / 2)):
            self.la_epochs.update({epoch: -1})

    def early_stop(self, epoch, factor=1.3, es_start_epoch=10, delta=4):
        if int(self.la_epochs[epoch] - self.ev_freq * delta) >= es_start_epoch:
            current_la = self.ev_local_avg[-1]
            previous_la = self.ev_local_avg[-1 - delta]
            self.stop_search = current_la / previous_la > factor
            if self.stop_search:
                self.stop_epoch = int(self.la_epochs[epoch] - self.ev_freq * delta)
