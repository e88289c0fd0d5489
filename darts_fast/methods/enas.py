"""ENAS' micro search (Pham et al. 2018, "Efficient Neural Architecture Search via Parameter
Sharing") on DARTS' cell space: an LSTM controller (``enas_controller.Controller``) samples
the architectures, the weight-sharing supernet (``SinglePathNetwork``) trains one sampled
architecture per step, and after each epoch's weight steps the controller learns by REINFORCE
(``enas_controller.Reinforce``) from the accuracy of its samples, each on one validation
minibatch with that batch's BatchNorm statistics (the authors' ``is_training=True`` reward pass,
whose statistics updates are not run: the supernet's running statistics stay as they were).

As the authors: the controller's settings (one LSTM layer of 64 units, tanh constant 1.10,
op_tanh_reduce 2.5, Adam 0.0035 with their betas and epsilon, entropy weight 1e-4, baseline decay
0.99), 30 controller steps of 10 samples per epoch, 150 epochs, the favoured candidates (their
two separable convolutions: DARTS' ``sep_conv_3x3`` and ``sep_conv_5x5``), two independent input
draws per node (a node may take one pair twice and sums it twice). Not as theirs: the cell space
is DARTS' (4 nodes, the candidates other than ``none``, DARTS' macro network) where theirs has 5
nodes over 5 candidates, and the weights train with DARTS' search settings. The genotype of each
epoch is the controller's most likely architecture (``greedy``).
"""
import torch

from ..search.path_score import PathScorer
from ..spaces.cnn.paths import Architecture, to_genotype
from .enas_controller import Controller, Reinforce
from .registry import MethodOptionError, register
from .single_path import SUPERNET_DEFAULTS, SinglePathMethod

# The candidates the authors' controller favours (their separable convolutions).
FAVOURED = ("sep_conv_3x3", "sep_conv_5x5")


class ControllerSearch:
    """The controller, its trainer, and the supernet's sampler that draws from it."""

    def __init__(self, model, options):
        self.model, self.options = model, options
        columns = [model._primitives[k] for k in model.drawn]
        self.controller = Controller(
            steps=model._steps, num_candidates=len(columns),
            favoured=tuple(i for i, name in enumerate(columns) if name in FAVOURED)).to(
                model.alphas_normal.device)
        self.trainer = Reinforce(self.controller, lr=options.controller_lr,
                                 entropy_weight=options.entropy_weight,
                                 num_aggregate=options.controller_samples)
        self.last = None
        model.sampler = self.sample

    def columns(self, architecture):
        """The controller's candidate numbers as the supernet's columns."""
        drawn = self.model.drawn
        return Architecture(*(tuple((j, drawn[k]) for j, k in cell) for cell in architecture))

    def sample(self):
        with torch.no_grad():
            return self.columns(self.controller.sample()[0])

    def end_epoch(self, job, epoch):
        scorer = PathScorer(self.model, recalibration=0, batch_statistics=True)
        valid = job.endless_valid()

        def reward(architecture):
            return scorer(self.columns(architecture), [next(valid)])

        for _ in range(self.options.controller_steps):
            self.last = self.trainer.step(reward)

    def genotype(self):
        model = self.model
        with torch.no_grad():
            greedy = self.columns(self.controller.greedy())
        return to_genotype(greedy, model._primitives, model._steps, model._multiplier)

    def text(self):
        if self.last is None:
            return ""
        return (f" | controller: reward {self.last['reward']:.3f}, baseline "
                f"{self.last['baseline']:.3f}, entropy {self.last['entropy']:.2f}")

    def state_dict(self):
        return {"trainer": self.trainer.state_dict(), "last": self.last}

    def load_state_dict(self, state):
        self.trainer.load_state_dict(state["trainer"])
        self.last = state["last"]


class ENAS(SinglePathMethod):
    name = "enas"
    summary = ("ENAS: an LSTM controller samples the supernet's architectures and learns by "
               "REINFORCE from their validation accuracy")
    defaults = {**SUPERNET_DEFAULTS, "epochs": 150, "controller_steps": 30,
                "controller_samples": 10, "controller_lr": 0.0035, "entropy_weight": 1e-4}

    def add_options(self, group, kinds):
        group.add_argument("--controller_steps", type=kinds.positive_int, default=None,
                           help="the controller's REINFORCE steps after each epoch")
        group.add_argument("--controller_samples", type=kinds.positive_int, default=None,
                           help="the architectures each controller step samples and scores")
        group.add_argument("--controller_lr", type=kinds.positive, default=None,
                           help="the controller's Adam learning rate")
        group.add_argument("--entropy_weight", type=kinds.non_negative, default=None,
                           help="the weight of the samples' entropy in the reward")

    def check(self, options):
        if options.primitives is not None and not set(FAVOURED) <= set(
                options.primitives.split(",")):
            raise MethodOptionError(f"--primitives: the controller favours "
                                    f"{' and '.join(FAVOURED)}, as its authors' favours their "
                                    f"separable convolutions; keep them among the candidates")

    def searcher(self, model, options):
        return ControllerSearch(model, options)


METHOD = register(ENAS())
