r"""GDAS (Dong & Yang 2019, "Searching for A Robust Neural Architecture in Four GPU Hours") on the
fused DARTS mixed op.

Every forward pass draws one candidate per edge, once for the normal cells and once for the
reduction cells (all cells of a kind share the draw), from the Gumbel-softmax of the alphas at
temperature :math:`\tau`:

.. math::
    g = -\log e,\ e \sim \mathrm{Exp}(1), \qquad
    p = \mathrm{softmax}\big((\log\mathrm{softmax}(\alpha) + g) / \tau\big), \qquad
    i = \arg\max p, \qquad h = \mathrm{onehot}(i) - \mathrm{sg}(p) + p.

The edge computes candidate :math:`i` alone and returns :math:`h_i\, o_i(x)`: :math:`h_i` is 1
in value and has the gradient of :math:`p_i`, through which every alpha of the edge learns. A draw
whose noise or probabilities are not finite is drawn again, as the authors do, but not forever:
a temperature the alphas' dtype cannot carry is refused (``check_tau``) and ``MAX_REDRAWS``
redraws in a row end in an error. :math:`\tau` falls linearly over the epochs (``tau_at``).

As the authors wrote it: the sampling and its use of the global random stream (the normal draw,
then the reduction draw, retries included: one seed gives the same candidates), the edge's
:math:`o_i(x)\, h_i`, both alpha matrices searched, the genotype rule (``pairs_rule``), and the
weights' learning rate: cosine from ``--learning_rate`` to ``--learning_rate_min`` over the
epochs, set once an epoch. The authors' scheduler is told the step within the epoch at every
step, but their ``CosineAnnealingLR`` reads it only during a warm-up, and their GDAS search has
none (``warmup 0``): its rate moves once an epoch too. Their convolutions before an affine-free
BatchNorm carry biases (``bias=not affine``) and whether their BatchNorms keep running statistics
is an option of their script: ``conv_bias=True`` and ``track_running_stats`` (``--conv_bias``,
``--no-track_running_stats``) build those; by default the convolutions have none, as DARTS',
and the BatchNorms keep running statistics. The biases cancel in the training-mode BatchNorm (a
zero gradient) but move the running means and add parameters.

Not as the authors wrote it:
  * the macro network is darts_fast's DARTS search network (``spaces.cnn.network.Network``: the
    stem, ``layers`` cells with reductions at ``layers // 3`` and ``2 * layers // 3``, global
    pooling, the classifier), not the authors' NASNet macro (N cells per stage, N=2 in their search,
    with the reductions between the stages, and a final BatchNorm and ReLU before the pooling). With
    6 layers the cells and their reductions sit where the authors' 6 cells do;
  * the candidates are DARTS' (``PRIMITIVES``, in its column order, the pools followed by an
    affine-free BatchNorm as in DARTS' search): the authors' space holds the same eight
    operations in another order, its pools without a BatchNorm;
  * the sampled candidates reach the host in one read per forward pass, both kinds of cell
    together, where the authors check each draw on the host and each edge of each cell reads its
    index on its own (118 reads per pass of an 8-cell network); a retry, rare, reads again.
    Because of that read the forward pass cannot be captured into a CUDA graph
    (``capturable``: ``SearchStep`` runs it eagerly);
  * the weight step clips the norm of the weights' gradients (5, as DARTS does). The authors'
    ``clip_grad_norm_(network.parameters(), 5)`` also counts their alphas, parameters there,
    whose gradients then hold the last architecture step's plus the weight step's: where the
    clip acts, their factor is smaller;
  * current PyTorch's ``zero_grad`` drops the gradients rather than zeroing them: the weights
    of the candidates that a step did not sample get no SGD update at all in it. On the PyTorch
    the authors ran, such weights, once they had a gradient, kept one of zeros, so momentum and
    weight decay went on moving them.

The search step is GDAS' order: the weight step first, then the first-order architecture step on
the validation batch, each pass with its own draw (``SearchStep(..., weights_first=True,
unrolled=False)`` with ``darts_fast.Architect``: Adam with betas (0.5, 0.999) on the alphas).
"""
import argparse
import itertools
import math

import torch
import torch.nn.functional as F

from .. import reference
from ..spaces.cnn.architecture import CellArchitecture, pairs_rule
from ..spaces.cnn.network import Network
from .registry import Method, MethodOptionError, register

# Draws redrawn in a row before the sampling gives up. A draw of finite alphas is redrawn when an
# exponential draw is exactly 0 (rare: about one draw in 1e5 in float32) or when the logits
# divided by tau overflow, which every later draw repeats: so many are never redrawn by chance.
MAX_REDRAWS = 100


def tau_limits(dtype):
    """The temperatures that ``dtype`` carries: its smallest normal number to its largest. A
    smaller tau rounds to a subnormal or 0 and the logits divided by it overflow (every draw
    would be redrawn); a larger one rounds to inf (every draw would be uniform)."""
    info = torch.finfo(dtype)
    return info.tiny, info.max


def check_tau(tau, dtype):
    """Refuses a temperature that is not a number the alphas' ``dtype`` carries."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"GDASNetwork: tau must be a finite number > 0, got {tau!r}")
    low, high = tau_limits(dtype)
    if not low <= tau <= high:
        raise ValueError(f"GDASNetwork: tau {tau:g} is outside what the alphas' {dtype} carries "
                         f"({low:g} to {high:g})")


def tau_at(epoch, epochs, tau_max=10.0, tau_min=0.1):
    """The temperature of ``epoch`` (from 0) in a search of ``epochs`` epochs: ``tau_max`` at the
    first epoch, ``tau_min`` at the last, linear between (a one-epoch search keeps
    ``tau_max``)."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


def gumbel_noise(alphas):
    """One draw of Gumbel noise shaped like ``alphas``, from the global random stream."""
    return -torch.empty_like(alphas).exponential_().log()


def hard_sample(alphas, gumbels, tau):
    """(hard weights, indices [edges, 1], whether the draw must be redrawn: a 0-dim tensor) of the
    noise ``gumbels``."""
    probs = F.softmax((alphas.log_softmax(dim=1) + gumbels) / tau, dim=1)
    index = probs.max(-1, keepdim=True)[1]
    hardwts = torch.zeros_like(probs).scatter_(-1, index, 1.0) - probs.detach() + probs
    redraw = torch.isinf(gumbels).any() | torch.isinf(probs).any() | torch.isnan(probs).any()
    return hardwts, index, redraw


class GDASNetwork(Network):
    """DARTS' search network whose edges each run one sampled candidate. ``tau``: the
    temperature of the draws (10 at first, as the authors'; set it every epoch with
    ``tau_at``)."""

    # The forward pass reads the sampled candidates on the host.
    capturable = False
    genotype_rule = staticmethod(pairs_rule)

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, **options):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         **options)
        self.tau = 10.0
        self._sampled = None  # the draw of the forward pass under way

    def new(self):
        model_new = super().new()
        model_new.tau = self.tau
        return model_new

    def sample(self):
        """One draw for the normal cells, then one for the reduction cells:
        ``((hard weights, indices), (hard weights, indices))``, the indices a list of ints."""
        check_tau(self.tau, self.alphas_normal.dtype)
        alphas = (self.alphas_normal, self.alphas_reduce)
        noise = [gumbel_noise(a) for a in alphas]
        draws = [hard_sample(a, g, self.tau) for a, g in zip(alphas, noise)]
        host = torch.cat([torch.cat([index.view(-1), redraw.view(1).long()])
                          for _, index, redraw in draws]).tolist()
        n = len(host) // 2
        if host[n - 1] or host[-1]:
            return self._sample_again(noise)
        return (draws[0][0], host[:n - 1]), (draws[1][0], host[n:-1])

    def _sample_again(self, noise):
        """The authors' retries: the draws of noise, those made and then new ones, go in turn to
        the normal alphas until one is kept, then to the reduction alphas."""
        noise, sampled = iter(noise), []
        for alphas in (self.alphas_normal, self.alphas_reduce):
            for redraws in itertools.count():
                gumbels = next(noise, None)
                if gumbels is None:
                    gumbels = gumbel_noise(alphas)
                hardwts, index, redraw = hard_sample(alphas, gumbels, self.tau)
                if not redraw:
                    break
                if not bool(torch.isfinite(alphas).all()):  # every draw would be redrawn
                    raise ValueError("GDASNetwork: the alphas are not finite")
                if redraws == MAX_REDRAWS:
                    raise RuntimeError(
                        f"GDASNetwork: {MAX_REDRAWS + 1} draws in a row held inf or nan with "
                        f"finite alphas at tau {self.tau:g}: the logits divided by tau overflow "
                        f"{alphas.dtype}; raise tau")
            sampled.append((hardwts, index.view(-1).tolist()))
        return tuple(sampled)

    def forward(self, input):
        self._sampled = self.sample()
        try:
            return super().forward(input)
        finally:
            self._sampled = None

    def cell_architecture(self, reduction):
        hardwts, indices = self._sampled[int(reduction)]
        return CellArchitecture(hardwts, active=[(k,) for k in indices])


class GDAS(Method):
    name = "gdas"
    summary = "one Gumbel-sampled candidate per edge, weight step first"
    # D-X-Y/AutoDL-Projects, its NASNet-space search script and configurations, whose 2 cells per
    # stage make 6 cells, reduced where 6 layers of the DARTS network reduce.
    defaults = {"layers": 6, "batch_size": 256, "learning_rate": 0.025, "learning_rate_min": 0.001,
                "weight_decay": 5e-4, "nesterov": True, "epochs": 250, "arch_learning_rate": 3e-4,
                "arch_start_epoch": 0, "tau_max": 10.0, "tau_min": 0.1, "conv_bias": False,
                "track_running_stats": True}
    weights_first = True
    second_order = False
    one_process = ("each rank would draw its own candidates (the ranks' random streams differ "
                   "for their augmentations) and DDP would find weights that some ranks did not "
                   "use")

    def networks(self):
        return GDASNetwork, reference.GDASNetwork

    def add_options(self, group, kinds):
        # The search's alphas are float32: a temperature outside its normal numbers hangs or
        # flattens the Gumbel-softmax.
        low, high = tau_limits(torch.float32)
        temperature = kinds.number(float, low, high, what=f"a finite number > 0 that float32 "
                                                          f"carries ({low:g} to {high:g})")
        group.add_argument("--tau_max", type=temperature, default=None,
                           help="the Gumbel-softmax temperature of the first epoch")
        group.add_argument("--tau_min", type=temperature, default=None,
                           help="the temperature of the last epoch, reached linearly")
        group.add_argument("--conv_bias", action=argparse.BooleanOptionalAction, default=None,
                           help="a bias on every convolution before an affine-free BatchNorm, "
                                "as the authors' cells have (it cancels in training but moves "
                                "the running means and adds parameters)")
        group.add_argument("--track_running_stats", action=argparse.BooleanOptionalAction,
                           default=None,
                           help="the candidates' and preprocessing's BatchNorms keep running "
                                "statistics (the authors' script's option; without them "
                                "evaluation uses batch statistics)")

    def network_options(self, options):
        return {"conv_bias": options.conv_bias,
                "track_running_stats": options.track_running_stats}

    def check(self, options):
        if options.tau_min > options.tau_max:
            raise MethodOptionError(
                f"--tau_min {options.tau_min:g} must not exceed --tau_max {options.tau_max:g} "
                f"(the temperature falls from tau_max to tau_min)")

    def begin_epoch(self, model, epoch, options):
        model.tau = tau_at(epoch, options.epochs, options.tau_max, options.tau_min)

    def describe(self, options):
        return f"(tau {options.tau_max:g} to {options.tau_min:g}, weight step first)"


METHOD = register(GDAS())
