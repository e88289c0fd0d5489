r"""SDARTS-RS (Chen & Hsieh 2020, "Stabilizing Differentiable Architecture Search via
Perturbation-based Regularization"; xiangning-chen/SmoothDARTS): the weight step sees the
architecture weights smoothed by uniform noise, which flattens the validation loss landscape in
the alphas and keeps the search away from the sharp minima where skip-connections take over.

After the architecture step, for the weight step only, each cell's table of candidate weights
becomes, row by row (an edge),

.. math::
    \tilde w = \mathrm{clip}\big(\mathrm{softmax}(\alpha) + u\big),\quad
    u \sim U[-\epsilon, \epsilon]^{K},

where ``clip`` clamps each entry to [0, 1], puts 1 on the row's largest entry (of the sum before
clamping) when every entry clamped to 0, and divides the row by its sum (the authors'
``model.clip()``). The alphas themselves are left as they were; the authors copy the noisy table
into them and restore them after the step, which computes the same. The noise radius rises
linearly over the search, :math:`\epsilon_e = 0.03 + (\epsilon_{max} - 0.03)\, e / E` at epoch
``e`` (from 0) of ``E``.

Everything stays on the device (``epsilon`` is a device tensor), so a captured search step keeps
drawing new noise at every replay.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

START = 0.03  # the authors' radius at the first epoch


def epsilon_at(epoch, epochs, largest):
    """The radius of epoch ``epoch`` (0-based) of ``epochs``: linear from 0.03 to ``largest``."""
    return START + (largest - START) * epoch / epochs


def perturbed(alphas, epsilon):
    """``clip(softmax(alphas) + U[-epsilon, epsilon])`` row by row, without a gradient."""
    with torch.no_grad():
        noisy = F.softmax(alphas, dim=-1)
        epsilon = epsilon.to(noisy.dtype)
        # uniform_(-epsilon, epsilon)'s formula, with epsilon on the device.
        noisy = noisy + (torch.rand_like(noisy) * (2 * epsilon) - epsilon)
        table = noisy.clamp(0, 1)
        empty = table.sum(-1, keepdim=True) == 0
        largest = F.one_hot(noisy.argmax(-1), noisy.shape[-1]).to(torch.bool)
        table = torch.where(empty & largest, torch.ones_like(table), table)
        return table / table.sum(-1, keepdim=True)


class AlphaNoise:
    """The weight step's context for ``search.step.SearchStep(weight_context=...)``: inside it the
    network computes with ``perturbed`` tables (``Network.weights_override``).
    ``set_epsilon`` sets the radius (a float), once per epoch."""

    def __init__(self, model):
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) \
            else model
        if not hasattr(self.model, "weights_override"):
            raise TypeError(f"AlphaNoise: {type(self.model).__name__} has no weights_override; "
                            f"the noise applies to darts_fast.Network's candidate weights")
        # float64: the radius as given, rounded once to the alphas' dtype.
        self.epsilon = torch.zeros((), dtype=torch.float64,
                                   device=self.model.alphas_normal.device)

    def set_epsilon(self, epsilon):
        self.epsilon.fill_(epsilon)

    def __call__(self):
        return self

    def __enter__(self):
        model = self.model
        model.weights_override = (perturbed(model.alphas_normal, self.epsilon),
                                  perturbed(model.alphas_reduce, self.epsilon))
        return self

    def __exit__(self, *exc):
        self.model.weights_override = None
