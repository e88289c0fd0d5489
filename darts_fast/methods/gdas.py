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
:math:`o_i(x)\, h_i`, both alpha matrices searched, and the genotype rule (``genotype``).

Not as the authors wrote it:
  * the macro network is darts_fast's DARTS search network (``search_model.Network``: the stem,
    ``layers`` cells with reductions at ``layers // 3`` and ``2 * layers // 3``, global pooling,
    the classifier), not the authors' NASNet macro (N cells per stage, N=2 in their search, with
    the reductions between the stages, and a final BatchNorm and ReLU before the pooling). With 6
    layers the cells and their reductions sit where the authors' 6 cells do;
  * the candidates are DARTS' (``PRIMITIVES``, in its column order, the pools followed by an
    affine-free BatchNorm as in DARTS' search): the authors' space holds the same eight
    operations in another order, its pools without a BatchNorm;
  * the sampled candidates reach the host in one read per forward pass, both kinds of cell
    together, where the authors check each draw on the host and each edge of each cell reads its
    index on its own (118 reads per pass of an 8-cell network); a retry, rare, reads again.
    Because of that read the forward pass cannot be captured into a CUDA graph
    (``capturable``: ``SearchStep`` runs it eagerly);
  * ``darts-fast search`` steps the cosine learning rate once an epoch, as DARTS does; the
    authors' scheduler moves it at every step;
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
import itertools
import math

import torch
import torch.nn.functional as F

from ..spaces.cnn.genotypes import PRIMITIVES, Genotype
from ..spaces.cnn.network import Network

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

    def _cell_weights(self, reduction):
        hardwts, indices = self._sampled[int(reduction)]
        return hardwts, None, indices

    def genotype(self):
        """The authors' rule for this space: per node, every (candidate, input) pair over the
        non-none candidates of its incoming edges, ranked by softmax weight (ties keep the order
        of inputs, then candidates); the two strongest are kept, possibly from one input."""
        none = PRIMITIVES.index("none")

        def parse(weights):
            gene, start = [], 0
            for node in range(self._steps):
                pairs = [(PRIMITIVES[k], j, weights[start + j][k])
                         for j in range(node + 2) for k in range(len(PRIMITIVES)) if k != none]
                gene += [(op, j) for op, j, _ in sorted(pairs, key=lambda p: -p[2])[:2]]
                start += node + 2
            return gene

        with torch.no_grad():
            normal, reduce = (F.softmax(a, dim=-1).cpu().numpy()
                              for a in (self.alphas_normal, self.alphas_reduce))
        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse(normal), normal_concat=concat, reduce=parse(reduce),
                        reduce_concat=concat)
