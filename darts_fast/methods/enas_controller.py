r"""ENAS' micro-search controller (Pham et al. 2018) and its REINFORCE trainer, as the authors'
TensorFlow code computes them (``MicroController`` and the micro search script).

The controller is an LSTM without biases, ``lstm_num_layers`` layers of ``lstm_size`` units,
layer :math:`l` taking :math:`[x, h^{l}]` (:math:`x`: its input, the layer below's output above
the first) through ``w_lstm[l]``:

.. math::
    [i, f, o, g] = [x, h] W, \quad c' = \sigma(i) \tanh(g) + \sigma(f) c, \quad
    h' = \sigma(o) \tanh(c').

One pass draws the normal cell and then the reduction cell, the LSTM state carried over. A cell
starts with two steps on ``g_emb`` whose top outputs :math:`h_0, h_1` are the keys of the cell's
inputs 0 and 1 (their anchors, the LSTM input after choosing them, are zero). Node :math:`n`
(from 2) then takes, each after one LSTM step:
  * two inputs, independently, from the attention logits over the keys :math:`h_j, j < n`,
    :math:`a_j = v^\top \tanh(W_1^\top h_j + W_2^\top h)` (``w_attn_1``, ``w_attn_2``, ``v_attn``),
    scaled as :math:`C \tanh(a / T)`; the next LSTM input is the chosen input's anchor;
  * two candidates from :math:`\frac{C}{r} \tanh((h W_s + b_s) / T)` (``w_soft``, ``b_soft``;
    :math:`r` = ``op_tanh_reduce``), plus, in the normal cell only, the fixed bias
    :math:`+0.25` on the favoured candidates and :math:`-0.25` on the others; the next LSTM input
    is the candidate's row of ``w_emb``;
then one more LSTM step whose top output is the node's anchor and key, and the next node starts
from ``g_emb``. :math:`C` = ``tanh_constant`` (``None``: no tanh, and :math:`r` unused),
:math:`T` = ``temperature`` (``None``: none). ``log_prob`` sums the log-softmax of the chosen
logits, ``entropy`` the entropies :math:`-\sum p \log p` of the decisions, as a constant (the
authors stop its gradient). Every weight starts uniform in :math:`[-0.1, 0.1]`, ``b_soft`` at 10
on the favoured candidates and 0 elsewhere.

The two pairs of a node are drawn independently, as the authors do, and may coincide: their
node then computes :math:`2\, o_k(x_j)` (it sums its two branches); ``sample`` returns such a
node as drawn, and ``SinglePathNetwork`` computes it so (the pair's weight 2).

The authors' settings (``src/cifar10/main.py``, ``scripts/cifar10_micro_search.sh``): one LSTM
layer of 64 units (``main.py`` builds the micro controller so, over the class' 32 and 2 layers),
``tanh_constant`` 1.10, ``op_tanh_reduce`` 2.5, no temperature, Adam (:math:`\beta_1 = 0,
\beta_2 = 0.999, \epsilon = 10^{-3}`, TensorFlow's form) at 0.0035 never decayed, no l2 penalty
nor clipping, entropy weight :math:`10^{-4}`, baseline decay 0.99, 10 samples a step, 30 steps
an epoch. Their 5 nodes choose among 5 candidates (sep_conv 3x3, sep_conv 5x5, avg_pool,
max_pool, identity), favouring their first two, the separable convolutions; ``favoured`` names
ours: with candidate :math:`k` on DARTS' column :math:`k + 1` (``none`` left out) the separable
convolutions are ``favoured=(3, 4)``; the default ``(0, 1)`` is the authors' literal choice.
"""
import math

import torch
import torch.nn as nn

from ..spaces.cnn.paths import Architecture


def _number(name, value, low=0.0, high=math.inf, open_low=True, allow_none=False):
    """``value`` as a float in (low, high) (``[low, high)`` unless ``open_low``)."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if open_low else low <= value) and value < high):
        raise ValueError(f"{name} must be a number in {'(' if open_low else '['}{low}, {high})"
                         f"{' or None' if allow_none else ''}; got {value!r}")
    return float(value)


def _count(name, value, low):
    if type(value) is not int or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


class Controller(nn.Module):
    """The micro controller (module docstring): ``sample``, ``evaluate`` and ``greedy`` walk the
    same LSTM path, drawing, replaying or taking the argmax of every decision."""

    def __init__(self, steps=4, num_candidates=7, lstm_size=64, lstm_num_layers=1,
                 tanh_constant=1.10, op_tanh_reduce=2.5, temperature=None, favoured=(0, 1)):
        super().__init__()
        self.steps = _count("steps", steps, 1)
        self.num_candidates = _count("num_candidates", num_candidates, 2)
        self.lstm_size = size = _count("lstm_size", lstm_size, 1)
        _count("lstm_num_layers", lstm_num_layers, 1)
        self.tanh_constant = _number("tanh_constant", tanh_constant, allow_none=True)
        self.op_tanh_reduce = _number("op_tanh_reduce", op_tanh_reduce)
        self.temperature = _number("temperature", temperature, allow_none=True)
        favoured = tuple(favoured)
        if len(set(favoured)) != len(favoured) or not all(
                type(k) is int and 0 <= k < num_candidates for k in favoured):
            raise ValueError(f"favoured must be distinct candidates in [0, {num_candidates}); "
                             f"got {favoured!r}")
        self.favoured = favoured
        self.w_lstm = nn.ParameterList(
            nn.Parameter(torch.empty(2 * size, 4 * size)) for _ in range(lstm_num_layers))
        self.g_emb = nn.Parameter(torch.empty(1, size))
        self.w_emb = nn.Parameter(torch.empty(num_candidates, size))
        self.w_soft = nn.Parameter(torch.empty(size, num_candidates))
        self.b_soft = nn.Parameter(torch.empty(num_candidates))
        self.w_attn_1 = nn.Parameter(torch.empty(size, size))
        self.w_attn_2 = nn.Parameter(torch.empty(size, size))
        self.v_attn = nn.Parameter(torch.empty(size))
        fixed = torch.full((num_candidates,), -0.25)
        fixed[list(favoured)] = 0.25
        self.register_buffer("b_soft_no_learn", fixed, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        """The authors' initialisation, from the global random stream."""
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)
        with torch.no_grad():
            self.b_soft.zero_()
            self.b_soft[list(self.favoured)] = 10.0

    def _lstm(self, x, c, h):
        next_c, next_h = [], []
        for w, c_l, h_l in zip(self.w_lstm, c, h):
            i, f, o, g = (torch.cat([x, h_l], 1) @ w).chunk(4, 1)
            c_l = torch.sigmoid(i) * torch.tanh(g) + torch.sigmoid(f) * c_l
            x = torch.sigmoid(o) * torch.tanh(c_l)
            next_c.append(c_l)
            next_h.append(x)
        return next_c, next_h

    def _scale(self, logits, constant):
        if self.temperature is not None:
            logits = logits / self.temperature
        return logits if constant is None else constant * torch.tanh(logits)

    def _walk(self, choose):
        """One pass over both cells; ``choose(log_p)`` picks each decision in turn from its
        log-softmax (a node's two inputs, then its two candidates). Returns ``(Architecture,
        log_prob, entropy)``."""
        zero = self.g_emb.new_zeros(1, self.lstm_size)
        c = h = [zero] * len(self.w_lstm)
        log_prob, entropy = zero.new_zeros(()), zero.new_zeros(())
        op_constant = (None if self.tanh_constant is None
                       else self.tanh_constant / self.op_tanh_reduce)
        cells = []
        for fixed_bias in (self.b_soft_no_learn, None):
            x = self.g_emb
            anchors, keys = [], []
            for _ in range(2):
                c, h = self._lstm(x, c, h)
                anchors.append(zero)
                keys.append(h[-1] @ self.w_attn_1)
            pairs = []
            for _node in range(self.steps):
                decisions = []
                for kind in ("input", "input", "candidate", "candidate"):
                    c, h = self._lstm(x, c, h)
                    if kind == "input":
                        scores = torch.tanh(torch.cat(keys) + h[-1] @ self.w_attn_2) @ self.v_attn
                        logits = self._scale(scores, self.tanh_constant)
                    else:
                        logits = self._scale((h[-1] @ self.w_soft)[0] + self.b_soft, op_constant)
                        if fixed_bias is not None:
                            logits = logits + fixed_bias
                    log_p = torch.log_softmax(logits, 0)
                    k = choose(log_p)
                    log_prob = log_prob + log_p[k]
                    entropy = entropy - (log_p.exp() * log_p).sum().detach()
                    decisions.append(k)
                    x = anchors[k] if kind == "input" else self.w_emb[k:k + 1]
                c, h = self._lstm(x, c, h)
                anchors.append(h[-1])
                keys.append(h[-1] @ self.w_attn_1)
                x = self.g_emb
                pairs += [(decisions[0], decisions[2]), (decisions[1], decisions[3])]
            cells.append(tuple(pairs))
        return Architecture(*cells), log_prob, entropy

    def sample(self, generator=None):
        """``(Architecture, log_prob, entropy)`` of one draw from ``generator`` (the global
        stream when None; a generator on the controller's device). ``log_prob`` carries the
        gradient; ``entropy`` does not. A node's two pairs may coincide (module docstring)."""
        def draw(log_p):
            return int(torch.multinomial(log_p.detach().exp(), 1, generator=generator))
        return self._walk(draw)

    def evaluate(self, architecture):
        """``(log_prob, entropy)`` of ``architecture`` on the path that samples it."""
        decisions = iter(self._decisions(architecture))
        return self._walk(lambda log_p: next(decisions))[1:]

    @torch.no_grad()
    def greedy(self):
        """The architecture taking the most likely choice at every decision."""
        return self._walk(lambda log_p: int(log_p.argmax()))[0]

    def _decisions(self, architecture):
        """The decisions of ``architecture`` in walk order; a ValueError for a malformed one."""
        def valid(pair, node):
            return (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and all(type(v) is int for v in pair)
                    and 0 <= pair[0] < node and 0 <= pair[1] < self.num_candidates)
        if not (isinstance(architecture, (tuple, list)) and len(architecture) == 2 and all(
                isinstance(cell, (tuple, list)) and len(cell) == 2 * self.steps
                and all(valid(pair, n // 2 + 2) for n, pair in enumerate(cell))
                for cell in architecture)):
            raise ValueError(f"architecture must be (normal, reduce), {2 * self.steps} int pairs "
                             f"(input, candidate) each, node n's inputs in [0, n), candidates in "
                             f"[0, {self.num_candidates}); got {architecture!r}")
        return [v for cell in architecture for n in range(0, 2 * self.steps, 2)
                for v in (cell[n][0], cell[n + 1][0], cell[n][1], cell[n + 1][1])]


class Reinforce:
    r"""The authors' controller training. Each ``step`` draws ``num_aggregate`` architectures
    with the same weights; for each, in turn,

    .. math::
        R = \mathrm{reward\_fn}(a) + w_H H, \quad b \leftarrow b - (1 - \delta)(b - R), \quad
        \ell = -\log p(a)\, (R - b),

    the baseline :math:`b` (from 0) moving before its sample's loss, as their graph orders it.
    ``.grad`` then holds the mean of the :math:`\nabla \ell` (their sync-replicas optimizer
    averages the aggregated gradients) and one Adam step follows, TensorFlow's form:
    :math:`m \leftarrow \beta_1 m + (1 - \beta_1) g`, :math:`v \leftarrow \beta_2 v + (1 -
    \beta_2) g^2`, :math:`\theta \leftarrow \theta - \mathrm{lr} \frac{\sqrt{1 - \beta_2^t}}{1 -
    \beta_1^t} \frac{m}{\sqrt{v} + \epsilon}`.
    """

    def __init__(self, controller, lr=0.0035, entropy_weight=1e-4, baseline_decay=0.99,
                 num_aggregate=10, betas=(0.0, 0.999), eps=1e-3):
        if not isinstance(controller, Controller):
            raise ValueError(f"controller must be a Controller; got {type(controller).__name__}")
        self.controller = controller
        self.lr = _number("lr", lr)
        self.entropy_weight = _number("entropy_weight", entropy_weight, open_low=False)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers; got {betas!r}")
        self.betas = tuple(_number("betas", b, high=1.0, open_low=False) for b in betas)
        self.baseline_decay = _number("baseline_decay", baseline_decay, high=1.0, open_low=False)
        self.num_aggregate = _count("num_aggregate", num_aggregate, 1)
        self.eps = _number("eps", eps)
        self.params = list(controller.parameters())
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps_taken, self.baseline = 0, 0.0

    def step(self, reward_fn, generator=None):
        """One controller step; ``reward_fn(architecture)`` -> a finite float (a validation
        accuracy; otherwise a ValueError, the baseline and Adam left as they were). Returns the
        means over the samples of ``accuracy``, ``reward``, ``entropy`` and ``loss``
        (:math:`\\ell`), and the ``baseline`` after the step."""
        self.controller.zero_grad(set_to_none=True)
        start, totals = self.baseline, dict(accuracy=[], reward=[], entropy=[], loss=[])
        for _ in range(self.num_aggregate):
            architecture, log_prob, entropy = self.controller.sample(generator)
            value = reward_fn(architecture)
            try:
                accuracy = float(value)
            except (TypeError, ValueError):
                accuracy = math.nan
            if not math.isfinite(accuracy):
                self.baseline = start
                raise ValueError(f"reward_fn returned {value!r} for {architecture}: the reward "
                                 f"must be a finite number")
            reward = accuracy + self.entropy_weight * float(entropy)
            self.baseline -= (1 - self.baseline_decay) * (self.baseline - reward)
            loss = -log_prob * (reward - self.baseline)
            (loss / self.num_aggregate).backward()
            for key, v in zip(totals, (accuracy, reward, entropy, loss.detach())):
                totals[key].append(float(v))
        self._adam()
        means = {key: sum(v) / self.num_aggregate for key, v in totals.items()}
        return dict(means, baseline=self.baseline)

    @torch.no_grad()
    def _adam(self):
        t = self.steps_taken = self.steps_taken + 1
        beta1, beta2 = self.betas
        rate = self.lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.sub_(rate * m / (v.sqrt() + self.eps))

    def state_dict(self):
        """The controller's weights, Adam's moments and step count, and the baseline."""
        return dict(controller={k: v.clone() for k, v in self.controller.state_dict().items()},
                    exp_avg=[m.clone() for m in self.exp_avg],
                    exp_avg_sq=[v.clone() for v in self.exp_avg_sq],
                    steps_taken=self.steps_taken, baseline=self.baseline)

    def load_state_dict(self, state):
        """Restores ``state_dict()``'s output; a ValueError for one of another controller."""
        keys = {"controller", "exp_avg", "exp_avg_sq", "steps_taken", "baseline"}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"state must hold {sorted(keys)}")
        for name in ("exp_avg", "exp_avg_sq"):
            if [tuple(t.shape) for t in state[name]] != [tuple(p.shape) for p in self.params]:
                raise ValueError(f"state's {name} does not fit the controller's parameters")
        try:
            self.controller.load_state_dict(state["controller"])
        except RuntimeError as error:
            raise ValueError(f"state's controller does not fit: {error}") from None
        with torch.no_grad():
            for mine, theirs in zip(self.exp_avg + self.exp_avg_sq,
                                    list(state["exp_avg"]) + list(state["exp_avg_sq"])):
                mine.copy_(theirs)
        self.steps_taken = int(state["steps_taken"])
        self.baseline = float(state["baseline"])
