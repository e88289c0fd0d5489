r"""pt.darts' ``Architect(net, w_momentum, w_weight_decay)`` on darts_fast's multi-tensor
architect, without pt.darts' deep copy of the network (``v_net``).

``unrolled_backward(trn_X, trn_y, val_X, val_y, xi, w_optim)`` sets ``alpha.grad`` of every alpha
of ``net`` (a ``SearchCNNController``), with :math:`w` = ``net.weights()``, :math:`\mu` =
``w_momentum``, ``wd`` = ``w_weight_decay`` and ``buf`` ``w_optim``'s momentum buffers (zeros
before its first step):

.. math::
    w' = w - \xi\,(\mu\,buf + \nabla_w L_{trn}(w, \alpha) + wd\,w)

    d\alpha = \nabla_\alpha L_{val}(w', \alpha), \qquad dw = \nabla_{w'} L_{val}(w', \alpha)

    \epsilon = 0.01 / \lVert dw \rVert, \qquad
    g^\pm = \nabla_\alpha L_{trn}(w \pm \epsilon\,dw, \alpha)

    \alpha.grad = d\alpha - \xi\,h

with the hessian-vector product :math:`h = (g^+ - g^-) / (2\epsilon)` by default
(``finite_difference="corrected"``, the original DARTS' formula), or, with
``finite_difference="ptdarts"``, pt.darts' own :math:`h = (g^+ - g^-)\,\epsilon / 2`: its code
writes ``(p - n) / 2.*eps``, which Python reads as ``((p - n) / 2) * eps`` (khanrc/pt.darts
issues #34, #43). The option gives pt.darts' numbers; its second-order term is then
:math:`\epsilon^2` times the intended one, which leaves :math:`\alpha.grad` close to
:math:`d\alpha` alone wherever :math:`\lVert dw \rVert` is well above 0.01.

What differs from pt.darts is how, not what: :math:`w'` and :math:`w \pm \epsilon\,dw` are written
into one persistent shadow copy of the weights swapped into the parameters, and the virtual step,
the norm, the perturbation and the combination are multi-tensor kernels
(``darts_fast.Architect``). ``net``'s BatchNorm running statistics end as pt.darts leaves them:
``net`` sees the passes at :math:`w`, :math:`w + \epsilon\,dw` and :math:`w - \epsilon\,dw`; the
pass at :math:`w'` (pt.darts': on ``v_net``) runs in training mode on scratch statistics.
:math:`w` is restored bit for bit (pt.darts adds :math:`\epsilon\,dw` back, within rounding). An
alpha that takes no part in the loss keeps ``grad`` None (pt.darts raises there).
"""
import types

import torch
import torch.nn as nn

from ... import kernels
from ...search.architect import Architect as FusedArchitect

_FINITE_DIFFERENCES = ("corrected", "ptdarts")


class _Weights(nn.Module):
    """The controller as darts_fast's architect takes a model: ``parameters()`` are its
    weights (``net``'s), ``arch_parameters()`` its alphas, ``training`` is ``net``'s."""

    def __init__(self, controller):
        super().__init__()
        self.net = controller.net
        self.arch_parameters = lambda: list(controller.alphas())
        self.controller_loss = controller.loss

    @property
    def training(self):
        return self.net.training

    @training.setter
    def training(self, mode):
        # nn.Module sets its own flag, then its children's: net's is the one read back.
        pass


def _controller_loss(model, batch):
    return model.controller_loss(*batch)


class Architect(FusedArchitect):
    """``net``: a ``SearchCNNController`` (``weights()``, ``alphas()``, ``loss(X, y)`` and
    ``net``); ``finite_difference``: ``"corrected"`` (the default) or ``"ptdarts"`` (see the
    module's docstring). darts_fast's ``step(...)`` works too, with pt.darts' alpha optimiser
    settings (Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3)."""

    required_args = ("momentum", "weight_decay")

    def __init__(self, net, w_momentum, w_weight_decay, finite_difference="corrected"):
        for name in ("weights", "alphas", "loss", "net"):
            if not hasattr(net, name):
                raise TypeError(f"Architect: net must be a SearchCNNController (weights(), "
                                f"alphas(), loss(X, y), net), it lacks {name!r}")
        if finite_difference not in _FINITE_DIFFERENCES:
            raise ValueError(f"Architect: finite_difference must be one of "
                             f"{_FINITE_DIFFERENCES}, got {finite_difference!r}")
        self.net = net
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.finite_difference = finite_difference
        super().__init__(_Weights(net), types.SimpleNamespace(
            momentum=w_momentum, weight_decay=w_weight_decay), loss_fn=_controller_loss)

    def _read_args(self, args):
        """The weights' rule from ``args``; the alphas' Adam (of ``step``) takes pt.darts'
        defaults, ``alpha_lr`` 3e-4 and ``alpha_weight_decay`` 1e-3."""
        self.network_momentum = args.momentum
        self.network_weight_decay = args.weight_decay
        return 3e-4, 1e-3

    def virtual_step(self, trn_X, trn_y, xi, w_optim):
        """:math:`w'` (see the module's docstring), one tensor per weight in ``net.weights()``
        order; the weights stay as they are. pt.darts writes it into ``v_net`` instead; the
        training pass at :math:`w` updates ``net``'s BatchNorm statistics in both."""
        params = list(self.model.parameters())
        grads = torch.autograd.grad(self._loss((trn_X, trn_y)), params)
        shadow = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            self._virtual_step(shadow, [p.data for p in params], list(grads), xi, w_optim,
                               params)
        return shadow

    def unrolled_backward(self, trn_X, trn_y, val_X, val_y, xi, w_optim):
        """Sets ``alpha.grad`` (replacing what was there) to the unrolled hypergradient;
        ``xi`` is the weights' learning rate, ``w_optim`` their SGD optimiser."""
        grads, _, _ = self._unrolled_grads((trn_X, trn_y), (val_X, val_y), xi, w_optim)
        for alpha, grad in zip(self.model.arch_parameters(), grads):
            alpha.grad = grad

    def _finite_difference(self, dalpha, grads_pos, grads_neg, r, eta):
        if self.finite_difference == "ptdarts":
            # dalpha - eta (g+ - g-) / (2 / eps) is pt.darts' dalpha - eta ((g+ - g-) / 2) eps.
            r = torch.reciprocal(r)
        return kernels.multi_tensor_finite_difference(dalpha, grads_pos, grads_neg, r, eta)
