r"""Rules that stop a search before its cells collapse into skip-connections, and DARTS-'s
coefficient schedule. Each rule sees one epoch at a time and keeps what it needs as plain numbers
(``state_dict``), so a resumed search decides as one never stopped.

``HessianStop``, DARTS-ES (Zela et al. 2020, "Understanding and Robustifying Differentiable
Architecture Search"; automl/RobustDARTS ``utils.EVLocalAvg``): with :math:`\lambda_e` the dominant
eigenvalue of the validation loss' Hessian in the alphas after epoch ``e`` (0-based), the local
average over ``window`` epochs

.. math::
    \bar\lambda_e = \mathrm{mean}(\lambda_{\max(0,\, e-w+1)} \ldots \lambda_e),
    \quad \text{defined from } e = \lceil w/2 \rceil - 1,

stands for epoch :math:`e - \lfloor w/2 \rfloor`. The search stops after epoch ``e`` (not the
last) when :math:`\bar\lambda_e / \bar\lambda_{e-\delta} > \text{factor}` and
:math:`e - \lfloor w/2 \rfloor - \delta \ge` ``start_epoch``; it returns the genotype of epoch
:math:`e - \lfloor w/2 \rfloor - \delta`, where the eigenvalue began to grow. The
authors' constants: ``window`` 5, ``factor`` 1.3, ``delta`` 4, ``start_epoch`` 10 (an eigenvalue
every epoch).
Departure: a non-positive earlier average never stops the search (its ratio has no meaning).

``SkipStop``, DARTS+ (Liang et al. 2019, "DARTS+: Improved Differentiable Architecture Search
with Early Stopping"): stop when the normal cell's genotype holds ``max_skips`` (2) or more
skip-connections, or when the ranking of the learnable candidates' weights on every edge has not
changed over the last ``stable_epochs`` (10) epochs; the genotype is the stop epoch's own.

``auxiliary_skip_beta``, DARTS- (Chu et al. 2021; Meituan-AutoML/DARTS- ``DecayScheduler``): the
auxiliary skip's coefficient at epoch ``e`` of ``E``, from ``beta`` down to 0: linear
:math:`\beta (E - e) / E` (the authors' scripts) or cosine :math:`\beta (1 + \cos(\pi e / E)) / 2`.
"""
import math

import torch


class HessianStop:
    name = "hessian"

    def __init__(self, window=5, factor=1.3, delta=4, start_epoch=10):
        self.window, self.factor, self.delta, self.start_epoch = window, factor, delta, start_epoch
        self.eigenvalues, self.averages = [], {}  # averages: epoch -> local average

    def update(self, epoch, eigenvalue, last):
        """Records epoch ``epoch``'s eigenvalue; returns the epoch whose genotype the search
        keeps when it stops here, else None. ``last``: this is the search's last epoch."""
        if epoch != len(self.eigenvalues):
            raise ValueError(f"HessianStop: expected epoch {len(self.eigenvalues)}, got {epoch}")
        self.eigenvalues.append(float(eigenvalue))
        if len(self.eigenvalues) < math.ceil(self.window / 2):
            return None
        # Kept at the last epoch too: a run resumed with more --epochs reads it later.
        recent = self.eigenvalues[max(0, epoch - self.window + 1):]
        self.averages[epoch] = sum(recent) / len(recent)
        stop = epoch - self.window // 2 - self.delta
        previous = self.averages.get(epoch - self.delta)
        if last or stop < self.start_epoch or previous is None or previous <= 0:
            return None
        return stop if self.averages[epoch] / previous > self.factor else None

    def local_average(self, epoch):
        """The local average computed after ``epoch`` (None where there is none)."""
        return self.averages.get(epoch)

    def state_dict(self):
        return {"eigenvalues": list(self.eigenvalues),
                "averages": {str(e): a for e, a in self.averages.items()}}

    def load_state_dict(self, state):
        self.eigenvalues = [float(v) for v in state["eigenvalues"]]
        self.averages = {int(e): float(a) for e, a in state["averages"].items()}


class SkipStop:
    name = "skips"

    def __init__(self, learnable, max_skips=2, stable_epochs=10):
        """``learnable``: the column indices of the candidates with weights (their ranking is
        watched)."""
        self.learnable = list(learnable)
        self.max_skips, self.stable_epochs = max_skips, stable_epochs
        self.ranking, self.unchanged = None, 0

    def update(self, epoch, normal_skips, tables):
        """Returns ``epoch`` when the search stops after it, else None. ``normal_skips``: the
        skip-connections in the normal cell's genotype; ``tables``: the cells' [edges,
        candidates] weights."""
        columns = torch.tensor(self.learnable, dtype=torch.long)
        ranking = [torch.argsort(t[:, columns], dim=1, descending=True, stable=True).tolist()
                   for t in tables]
        self.unchanged = self.unchanged + 1 if ranking == self.ranking else 0
        self.ranking = ranking
        # unchanged: the epochs after the first of those with this ranking
        if normal_skips >= self.max_skips or self.unchanged + 1 >= self.stable_epochs:
            return epoch
        return None

    def reason(self, normal_skips):
        if normal_skips >= self.max_skips:
            return f"the normal cell holds {normal_skips} skip-connections"
        return (f"the ranking of the learnable candidates held for {self.unchanged + 1} "
                f"epochs")

    def state_dict(self):
        return {"ranking": self.ranking, "unchanged": self.unchanged}

    def load_state_dict(self, state):
        self.ranking, self.unchanged = state["ranking"], int(state["unchanged"])


def auxiliary_skip_beta(epoch, epochs, beta, decay="linear"):
    """DARTS-'s coefficient at epoch ``epoch`` (0-based) of ``epochs``."""
    if decay == "linear":
        return beta * (epochs - epoch) / epochs
    if decay == "cosine":
        return beta * (1 + math.cos(math.pi * epoch / epochs)) / 2
    raise ValueError(f"auxiliary_skip_beta: decay must be 'linear' or 'cosine', got {decay!r}")
