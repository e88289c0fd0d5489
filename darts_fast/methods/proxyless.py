r"""ProxylessNAS (Cai et al. 2019, "ProxylessNAS: Direct Neural Architecture Search on Target Task
and Hardware") on DARTS' cell space: binary gates over each edge's candidates, as the authors'
``MixedEdge`` computes them.

Weight step: each edge runs one candidate drawn from :math:`p = \mathrm{softmax}(\alpha)`.
Architecture step (the authors' "two" mode): each edge draws two candidates :math:`a \ne b`
from :math:`p` without replacement, then the active one of the pair from the pair's own softmax
:math:`\hat p = \mathrm{softmax}(\alpha_a, \alpha_b)`; the edge computes
:math:`g_a o_a(x) + g_b o_b(x)` with binary gates :math:`g` (1 for the active one, 0 for the
other), and the gate gradients :math:`\partial L / \partial g_j = \langle \nabla_{out} L,
o_j(x) \rangle` (the fused op's weight gradient) reach the pair's alphas as

.. math::
    \frac{\partial L}{\partial \alpha_i} = \sum_{j \in \{a, b\}} \frac{\partial L}{\partial g_j}
    \, \hat p_j (\delta_{ij} - \hat p_i),

which is the gradient of :math:`g = \mathrm{onehot} - \mathrm{sg}(\hat p) + \hat p`: the gates
are built that way, every other alpha of the edge gets 0. After Adam's step the pair is shifted
to keep its log-sum-exp (the authors' ``rescale_updated_arch_param``), so the candidates outside
the pair keep their probabilities. An architecture step follows every ``architecture_every``
(5) weight steps, after ``--arch_start_epoch`` (40) epochs of weight steps alone; Adam with lr
1e-3, betas (0, 0.999), no weight decay, as the authors' search script.

The hardware loss (``--cost``, the authors' ``mul#log``) is ``search.hardware_loss``, which any
search of the alphas may add.

Not as the authors wrote it:
  * the space is DARTS' cell (8 candidates, ``none`` among them, on 14 edges per cell kind, all
    cells of a kind sharing alphas and each forward pass' draw, as GDAS' draw is shared), not
    their MobileNetV2 blocks; the genotype is DARTS' rule on :math:`\mathrm{softmax}(\alpha)`;
  * the inactive candidate of a pair is computed inside the fused op with gate 0 instead of
    detached: its contribution to the gradients of earlier edges is exactly 0 either way;
  * the weights train with DARTS' search settings (SGD, cosine schedule).
"""
import torch
import torch.nn.functional as F

from ..search.architect import Architect
from ..spaces.cnn.architecture import CellArchitecture
from ..spaces.cnn.network import Network
from .registry import Method, register


class ProxylessNetwork(Network):
    """DARTS' search network whose edges run the candidates ProxylessNAS' binary gates draw:
    one per edge in ``mode`` "one" (weight steps), a gated pair in ``mode`` "two" (architecture
    steps; ``pairs`` then holds the pair of each edge of each cell kind, [edges, 2])."""

    # The forward pass reads the drawn candidates on the host.
    capturable = False

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, **options):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         **options)
        self.mode = "one"
        self.pairs = None
        self._sampled = None
        self.register_buffer("_ones", torch.ones_like(self.alphas_normal.detach()),
                             persistent=False)

    def forward(self, input):
        self._sampled = self.sample_pairs() if self.mode == "two" else self.sample_paths()
        try:
            return super().forward(input)
        finally:
            self._sampled = None

    def sample_paths(self):
        """One candidate per edge from softmax(alpha), the normal cells' then the reduction
        cells': ``[(weights, active)]``."""
        alphas = (self.alphas_normal, self.alphas_reduce)
        with torch.no_grad():
            drawn = [torch.multinomial(F.softmax(a, dim=-1), 1) for a in alphas]
        host = torch.cat(drawn, 1).tolist()  # one read for both kinds
        return [(self._ones, [(row[kind],) for row in host]) for kind in range(2)]

    def sample_pairs(self):
        """Per edge a pair without replacement from softmax(alpha), its active one from the
        pair's softmax; the gates onehot - sg(p) + p over the pair, 0 elsewhere."""
        sampled, pairs = [], []
        for alphas in (self.alphas_normal, self.alphas_reduce):
            with torch.no_grad():
                pair = torch.multinomial(F.softmax(alphas, dim=-1), 2)
            pair_probs = F.softmax(alphas.gather(1, pair), dim=-1)
            with torch.no_grad():
                chosen = torch.multinomial(pair_probs, 1)
            hard = torch.zeros_like(pair_probs).scatter_(1, chosen, 1.0)
            gates = torch.zeros_like(alphas).scatter(
                1, pair, hard - pair_probs.detach() + pair_probs)
            sampled.append(gates)
            pairs.append(pair)
        self.pairs = pairs
        host = torch.cat(pairs, 1).tolist()
        return [(gates, [tuple(row[2 * kind:2 * kind + 2]) for row in host])
                for kind, gates in enumerate(sampled)]

    def cell_architecture(self, reduction):
        weights, active = self._sampled[int(reduction)]
        return CellArchitecture(weights, active=active)


class ProxylessArchitect(Architect):
    """The architecture step in the two-path mode, the pair rescaled after Adam's step."""

    adam_betas = (0.0, 0.999)

    def step_batches(self, train_batch, valid_batch, eta, network_optimizer, unrolled):
        model = self.model
        before = [a.detach().clone() for a in model.arch_parameters()]
        model.mode = "two"
        try:
            output = super().step_batches(train_batch, valid_batch, eta, network_optimizer,
                                          unrolled=False)
        finally:
            model.mode = "one"
        with torch.no_grad():
            for alphas, old, pair in zip(model.arch_parameters(), before, model.pairs):
                shift = alphas.gather(1, pair).logsumexp(1) - old.gather(1, pair).logsumexp(1)
                alphas.scatter_add_(1, pair, -shift[:, None].expand(-1, 2))
        return output



class Proxyless(Method):
    name = "proxyless"
    summary = ("ProxylessNAS: binary gates, one sampled candidate per edge for the weights, two "
               "for the architecture step (every 5th step), an optional hardware loss")
    # DARTS' search settings for the weights; the authors' architecture settings: 40 warm-up
    # epochs of weight steps, then 120 epochs; Adam 1e-3 without weight decay.
    defaults = {"layers": 8, "batch_size": 64, "learning_rate": 0.025, "learning_rate_min": 0.001,
                "weight_decay": 3e-4, "nesterov": False, "epochs": 160,
                "arch_learning_rate": 1e-3, "arch_weight_decay": 0.0, "arch_start_epoch": 40}
    weights_first = True
    second_order = False
    architect_class = ProxylessArchitect
    architecture_every = 5
    one_process = ("each rank would draw its own candidates, and DDP would find weights that "
                   "some ranks did not use")

    def networks(self):
        return ProxylessNetwork, None

    def describe(self, options):
        return "(architecture step every 5th step)"


METHOD = register(Proxyless())
