"""Single-path one-shot methods on DARTS' cell space: a weight-sharing supernet trained one
uniformly drawn path per step (``spaces.cnn.single_path.SinglePathNetwork``), its architecture
chosen afterwards by scoring paths on the trained weights.

* SPOS (Guo et al. 2020, "Single Path One-Shot Neural Architecture Search with Uniform
  Sampling"): each step draws per node two inputs and for each a candidate other than ``none``;
  the weights the path does not use keep no gradient, so SGD moves them neither by momentum nor
  by weight decay, as the authors arrange. ``darts-fast evolve RUN`` then runs their
  evolutionary search over the trained supernet (or regularised evolution, or random search).
* Random search with weight sharing (Li & Talwalkar 2019, "Random Search and Reproducibility for
  Neural Architecture Search"): the same training with their draw (``none`` among the
  candidates), then at the end of the search their evaluation: rounds of 1000 random
  architectures scored on 10 validation batches, the best 10 of each round on the whole
  validation split; genotype.json is the best of those.

Both train the weights with DARTS' search settings (SGD, cosine schedule, the 8-cell network):
the authors of SPOS trained a ShuffleNet-like chain on ImageNet, whose settings do not carry over.
The network's alphas stay at their initial values: nothing reads them.
"""
import itertools

from ..search.evolution import RandomSearch
from ..search.path_score import PathScorer
from ..spaces.cnn.paths import to_genotype
from ..spaces.cnn.single_path import SinglePathNetwork
from .registry import Method, MethodOptionError, register

# DARTS' train_search.py: the weights' settings of both supernets.
SUPERNET_DEFAULTS = {"layers": 8, "batch_size": 64, "learning_rate": 0.025,
                     "learning_rate_min": 0.001, "weight_decay": 3e-4, "nesterov": False,
                     "epochs": 50, "arch_learning_rate": 3e-4, "arch_start_epoch": 0}
# randomNAS' evaluation.
EVALUATION_DEFAULTS = {"eval_samples": 1000, "eval_batches": 10, "eval_rescored": 10}


class SinglePathMethod(Method):
    """A supernet trained one path per step, without alphas or an architecture step."""

    defaults = SUPERNET_DEFAULTS
    architect_class = None
    alphas = hardware_loss = False
    second_order = False
    one_process = ("each rank would draw its own path, and DDP would find weights that some "
                   "ranks did not use")

    def networks(self):
        return SinglePathNetwork, None


class SPOS(SinglePathMethod):
    name = "spos"
    summary = ("single-path one-shot: one uniformly drawn path per step; then darts-fast evolve "
               "chooses the architecture")

    def output_lines(self, run, found):
        return [f"supernet:  {run.file('checkpoint.pt')}; choose its architecture with: "
                f"darts-fast evolve {run.path}"]


SPOS_METHOD = register(SPOS())


class RandomEvaluation:
    """randomNAS' evaluation at the end of the search (``evolution.RandomSearch``): each round
    scores ``--eval_samples`` random architectures on ``--eval_batches`` validation batches (one
    iterator going on from architecture to architecture, as theirs), then its best
    ``--eval_rescored`` on the whole validation split; rounds: ``--eval_rounds``, by default
    theirs, max(1, B / 10000) with B the search's weight steps. BatchNorm statistics as the
    supernet's training left them (their model.eval())."""

    def __init__(self, model, options):
        self.model, self.options = model, options
        self.search = None

    def end_epoch(self, job, epoch):
        o = self.options
        if epoch + 1 < o.epochs:
            return
        scorer = PathScorer(self.model, recalibration=0)
        valid = job.endless_valid()

        def score(arch, full):
            batches = job.valid_loader if full else itertools.islice(valid, o.eval_batches)
            return scorer(arch, batches)

        rounds = o.eval_rounds or max(1, o.epochs * job.steps_per_epoch() // 10000)
        self.search = RandomSearch(score, self.model._steps, self.model.drawn, seed=o.seed,
                                   rounds=rounds, samples=o.eval_samples,
                                   rescored=o.eval_rescored)
        while not self.search.done:
            self.search.step()

    def genotype(self):
        if self.search is None:
            return None
        model = self.model
        return to_genotype(self.search.best()[0], model._primitives, model._steps,
                           model._multiplier)

    def text(self):
        if self.search is None:
            return ""
        best = self.search.best()[1]
        return (f" | {len(self.search.history)} random architectures scored, the best "
                f"{100 * best:.2f}% on the validation split")

    def state_dict(self):
        return None if self.search is None else self.search.state_dict()

    def load_state_dict(self, state):
        if state is not None:
            self.search = RandomSearch(lambda arch, full: 0.0, self.model._steps,
                                       self.model.drawn, seed=self.options.seed)
            self.search.load_state_dict(state)


class RandomWeightSharing(SinglePathMethod):
    name = "random-ws"
    defaults = {**SUPERNET_DEFAULTS, **EVALUATION_DEFAULTS}
    summary = ("random search with weight sharing: one random path per step, then random "
               "architectures scored on the supernet")

    def add_options(self, group, kinds):
        for name, words in (
                ("eval_samples", "random architectures each evaluation round scores"),
                ("eval_batches", "validation batches of each first score"),
                ("eval_rescored", "architectures of each round scored again on the whole "
                                  "validation split")):
            group.add_argument(f"--{name}", type=kinds.positive_int, default=None,
                               help=f"the {words}")
        group.add_argument("--eval_rounds", type=kinds.positive_int, default=None,
                           help="evaluation rounds (default: max(1, weight steps / 10000), as "
                                "the authors')")

    def network_options(self, options):
        return {"sample_none": True}

    def check(self, options):
        if options.eval_rescored > options.eval_samples:
            raise MethodOptionError(f"--eval_rescored {options.eval_rescored} must not exceed "
                                    f"--eval_samples {options.eval_samples}")

    def searcher(self, model, options):
        return RandomEvaluation(model, options)

    def output_lines(self, run, found):
        return [f"genotype:  {run.file('genotype.json')} (the best of the random architectures)"
                if found else "genotype:  written after the last epoch's evaluation",
                f"supernet:  {run.file('checkpoint.pt')} (darts-fast evolve {run.path} searches "
                f"it again)"]


RANDOM_WS_METHOD = register(RandomWeightSharing())
