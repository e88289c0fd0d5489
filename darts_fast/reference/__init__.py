"""The original DARTS algorithm in plain PyTorch: the test oracle and the benchmark baseline.

``MixedOp`` sums every candidate (``none`` included) in Python; ``Network`` is the shared search
network built from it; ``Architect`` is the original architect, which rebuilds the network with
``model.new()`` and ``load_state_dict`` on every second-order step and takes the Hessian-vector
product by a central finite difference. Kept faithful on purpose, quirks included (see
``Architect``); only deprecated call forms are updated for current PyTorch.
``PartialChannelMixedOp`` and ``PCNetwork`` are PC-DARTS' mixed op and network as its authors
wrote them (yuhuixu1993/PC-DARTS). ``MixedOp.forward_gdas`` and ``GDASNetwork`` are GDAS' edge
and network on that mixed op, the edge as its authors wrote it (D-X-Y/AutoDL-Projects).
"""
import functools

import numpy as np
import torch
import torch.nn as nn

from ..methods.gdas import GDASNetwork as _GDASNetwork
from ..methods.pc_darts import PCNetwork as _PCNetwork
from ..spaces.cnn.genotypes import PRIMITIVES
from ..spaces.cnn.network import Network as _Network
from ..spaces.cnn.operations import candidate_ops


class MixedOp(nn.Module):
    def __init__(self, C, stride, primitives=PRIMITIVES):
        super().__init__()
        self._ops = candidate_ops(C, stride, primitives)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))

    def forward_gdas(self, x, weights, index):
        return self._ops[index](x) * weights[index]


class Network(_Network):
    """The search network with the reference (Python-sum) mixed operation, in the input's own
    memory layout, with the original's adaptive global pooling."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, mixed_op=MixedOp, memory_format=None, recompute=False,
                 fold_batch_norm=True):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         mixed_op=mixed_op, memory_format=memory_format, recompute=recompute,
                         fold_batch_norm=fold_batch_norm)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)


class PartialChannelMixedOp(nn.Module):
    """PC-DARTS' mixed op as its authors wrote it: the Python sum over every candidate of the
    first C/k channels, concatenated with the others (pooled at stride 2), channel-shuffled."""

    def __init__(self, C, stride, k=4, primitives=PRIMITIVES):
        super().__init__()
        self._ops = candidate_ops(C // k, stride, primitives)
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k

    def forward(self, x, weights):
        part = x.shape[1] // self.k
        mixed = sum(w * op(x[:, :part]) for w, op in zip(weights, self._ops))
        rest = x[:, part:]
        ans = torch.cat([mixed, rest if mixed.shape[2] == x.shape[2] else self.mp(rest)], dim=1)
        b, c, h, w = ans.shape
        return ans.view(b, self.k, c // self.k, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class PCNetwork(_PCNetwork):
    """The PC-DARTS search network on the authors' mixed op, in the input's own memory layout,
    with the adaptive global pooling."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, k=4, mixed_op=None, memory_format=None, **options):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         k=k, mixed_op=mixed_op or functools.partial(PartialChannelMixedOp, k=k),
                         memory_format=memory_format, **options)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)


class GDASNetwork(_GDASNetwork):
    """The GDAS search network on the reference mixed op, in the input's own memory layout, with
    the adaptive global pooling; sampled as the authors sample (normal, then reduction: a loop
    that draws until the noise and the probabilities are finite, each check a host read), each
    edge of each cell reading its index on the host by itself."""

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4,
                 stem_multiplier=3, mixed_op=MixedOp, memory_format=None, **options):
        super().__init__(C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
                         mixed_op=mixed_op, memory_format=memory_format, **options)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def sample(self):
        return tuple(self._gumbel_prob(a) for a in (self.alphas_normal, self.alphas_reduce))

    def _gumbel_prob(self, alphas):
        while True:
            gumbels = -torch.empty_like(alphas).exponential_().log()
            probs = torch.softmax((alphas.log_softmax(dim=1) + gumbels) / self.tau, dim=1)
            index = probs.max(-1, keepdim=True)[1]
            hardwts = torch.zeros_like(probs).scatter_(-1, index, 1.0) - probs.detach() + probs
            if not (torch.isinf(gumbels).any() or torch.isinf(probs).any()
                    or torch.isnan(probs).any()):
                return hardwts, _IndexPerEdge(index)


class _IndexPerEdge:
    """Sampled indices that each edge reads on the host when it runs."""

    def __init__(self, index):
        self.index = index

    def __getitem__(self, edge):
        return self.index[edge].item()


def _concat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


class Architect:
    """The original DARTS architect.

    Second order (``unrolled=True``): ``w' = w - eta*(mu*buf + dL_train/dw + wd*w)`` in a new model;
    ``dalpha = dL_val(w')/dalpha``, ``v = dL_val(w')/dw'``; ``R = 0.01/||v||``;
    ``alpha.grad = dalpha - eta * (g+ - g-) / (2R)`` with ``g+-`` the alpha gradients of
    ``L_train`` at ``w +- R v``. First order: ``alpha.grad = dL_val(w)/dalpha`` (and, as in the
    original, weight gradients are accumulated too).
    """

    def __init__(self, model, args):
        self.network_momentum = args.momentum
        self.network_weight_decay = args.weight_decay
        self.model = model
        self.optimizer = torch.optim.Adam(
            self.model.arch_parameters(), lr=args.arch_learning_rate, betas=(0.5, 0.999),
            weight_decay=args.arch_weight_decay,
        )

    def _compute_unrolled_model(self, input, target, eta, network_optimizer):
        loss = self.model._loss(input, target)
        theta = _concat(self.model.parameters()).data
        try:
            moment = _concat(
                network_optimizer.state[v]["momentum_buffer"] for v in self.model.parameters()
            ).mul_(self.network_momentum)
        except (KeyError, TypeError, AttributeError):
            moment = torch.zeros_like(theta)
        dtheta = (
            _concat(torch.autograd.grad(loss, self.model.parameters())).data
            + self.network_weight_decay * theta
        )
        return self._construct_model_from_theta(theta.sub(moment + dtheta, alpha=eta))

    def step(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer,
             unrolled):
        self.optimizer.zero_grad()
        if unrolled:
            self._backward_step_unrolled(input_train, target_train, input_valid, target_valid,
                                         eta, network_optimizer)
        else:
            self._backward_step(input_valid, target_valid)
        self.optimizer.step()

    def _backward_step(self, input_valid, target_valid):
        loss = self.model._loss(input_valid, target_valid)
        loss.backward()

    def _backward_step_unrolled(self, input_train, target_train, input_valid, target_valid, eta,
                                network_optimizer):
        unrolled_model = self._compute_unrolled_model(input_train, target_train, eta,
                                                      network_optimizer)
        unrolled_loss = unrolled_model._loss(input_valid, target_valid)
        unrolled_loss.backward()
        dalpha = [v.grad for v in unrolled_model.arch_parameters()]
        vector = [v.grad.data for v in unrolled_model.parameters()]
        implicit_grads = self._hessian_vector_product(vector, input_train, target_train)
        for g, ig in zip(dalpha, implicit_grads):
            g.data.sub_(ig.data, alpha=eta)
        for v, g in zip(self.model.arch_parameters(), dalpha):
            if v.grad is None:
                v.grad = g.data.clone()
            else:
                v.grad.data.copy_(g.data)

    def _construct_model_from_theta(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()
        params, offset = {}, 0
        for k, v in self.model.named_parameters():
            v_length = int(np.prod(v.size()))
            params[k] = theta[offset: offset + v_length].view(v.size())
            offset += v_length
        assert offset == len(theta)
        model_dict.update(params)
        model_new.load_state_dict(model_dict)
        return model_new

    def _hessian_vector_product(self, vector, input, target, r=1e-2):
        R = (r / _concat(vector).norm()).item()
        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)
        loss = self.model._loss(input, target)
        grads_p = torch.autograd.grad(loss, self.model.arch_parameters())

        for p, v in zip(self.model.parameters(), vector):
            p.data.sub_(v, alpha=2 * R)
        loss = self.model._loss(input, target)
        grads_n = torch.autograd.grad(loss, self.model.arch_parameters())

        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)

        return [(x - y).div_(2 * R) for x, y in zip(grads_p, grads_n)]
