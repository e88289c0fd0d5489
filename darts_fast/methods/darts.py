"""DARTS (Liu et al. 2019): every candidate of every edge weighted by the softmax of the alphas,
first or second order (``spaces.cnn.network.Network``, ``search.architect.Architect``)."""
from .. import reference
from ..spaces.cnn.network import Network
from .registry import Method, register


class DARTS(Method):
    name = "darts"
    summary = "the original: every candidate, weighted by the softmax of the alphas"
    # The original train_search.py.
    defaults = {"layers": 8, "batch_size": 64, "learning_rate": 0.025, "learning_rate_min": 0.001,
                "weight_decay": 3e-4, "nesterov": False, "epochs": 50, "arch_learning_rate": 3e-4,
                "arch_start_epoch": 0}

    def networks(self):
        return Network, reference.Network


METHOD = register(DARTS())
