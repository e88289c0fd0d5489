r"""The fused architect of DARTS' recurrent search, a drop-in for the original ``rnn/architect.py``
``Architect(model, args)``: the same ``step(hidden_train, input_train, target_train,
hidden_valid, input_valid, target_valid, network_optimizer, unrolled)``, returning the next
validation hidden state.

Second order, with :math:`\eta` the weights' learning rate of the step, ``clip``, ``wdecay`` from
``args`` and :math:`L_{train}`, :math:`L_{val}` the losses from their hidden states:

.. math::
    g = \nabla_w L_{train}(w, \alpha), \qquad c = clip / (\lVert g \rVert + 10^{-6})

    w' = w - \eta\,(\min(c, 1)\, g + wdecay\, w) \quad\text{(the tied embedding keeps } w)

    d\alpha = \nabla_\alpha L_{val}(w', \alpha), \qquad
    v = \min(c_v, 1) \nabla_{w'} L_{val}(w', \alpha), \quad
    c_v = clip / (\lVert \nabla_{w'} L_{val} \rVert + 10^{-6})

    R = 0.01 / \lVert v \rVert, \qquad
    \alpha.grad = d\alpha - \eta\, c\, (g^+ - g^-) / (2R), \qquad
    g^\pm = \nabla_\alpha L_{train}(w \pm R v, \alpha)

then Adam (default betas, ``arch_lr``, ``arch_wdecay``) on the alphas. ``c`` scales the implicit
gradient unbounded, also when it is above 1 and nothing was clipped, and the tied embedding stays
out of the virtual step (the original's ``load_state_dict`` loads the unstepped
``decoder.weight`` last): both as the authors' code computes them. First order:
:math:`\alpha.grad = \nabla_\alpha L_{val}(w, \alpha)`.

Everything else is ``search.architect.Architect``'s: one shadow copy of the weights instead of
``model.new()`` every step (so no weights drawn from the global RNG), the multi-tensor kernels,
:math:`c` and :math:`R` on the device, a non-finite step undone and counted, ``hessian="exact"``
for the exact mixed second derivative in place of the finite difference (scaled by
:math:`\eta c` as well). The hidden states go in with the batches ``(hidden, input, target)``;
the validation pass's next hidden state comes out, as the search loop carries it.
"""
import torch

from .. import kernels
from .architect import Architect


def _loss_and_hidden(model, batch):
    """The original model's ``_loss(hidden, input, target)``: ``(loss, next hidden)``."""
    return model._loss(*batch)


class RNNArchitect(Architect):
    """``args`` holds ``wdecay``, ``clip``, ``arch_lr`` and ``arch_wdecay`` (the original
    search's names); ``loss_fn(model, (hidden, input, target))`` defaults to ``model._loss``."""

    required_args = ("wdecay", "clip", "arch_lr", "arch_wdecay")
    adam_betas = (0.9, 0.999)
    default_loss_fn = staticmethod(_loss_and_hidden)

    def _read_args(self, args):
        self.network_weight_decay = args.wdecay
        self.network_clip = args.clip
        return args.arch_lr, args.arch_wdecay

    def step(self, hidden_train, input_train, target_train, hidden_valid, input_valid,
             target_valid, network_optimizer, unrolled):
        """The original's call, at ``eta = network_optimizer.param_groups[0]['lr']``; returns
        ``(next validation hidden, None)``, None where the original returns it too."""
        eta = network_optimizer.param_groups[0]["lr"]
        hidden = self.step_batches((hidden_train, input_train, target_train),
                                   (hidden_valid, input_valid, target_valid), eta,
                                   network_optimizer, unrolled)
        return hidden, None

    def _virtual_step(self, shadow, weights, grads, eta, network_optimizer, params):
        clip_coef = self._clip_coef(grads)
        scaled = torch._foreach_mul(grads, torch.clamp(clip_coef, max=1.0))
        kernels.multi_tensor_virtual_step(shadow, weights, scaled, [], eta, 0.0,
                                          self.network_weight_decay)
        tied = [i for i, p in enumerate(params) if id(p) in self._tied_ids()]
        if tied:
            torch._foreach_copy_([shadow[i] for i in tied], [weights[i] for i in tied])
        return clip_coef * eta

    def _direction(self, v):
        return torch._foreach_mul(v, torch.clamp(self._clip_coef(v), max=1.0))

    def _clip_coef(self, grads):
        """``clip / (||grads|| + 1e-6)`` as a 0-dim tensor on the device (clip_grad_norm's)."""
        return self.network_clip / (kernels.multi_tensor_norm(grads) + 1e-6)

    def _tied_ids(self):
        """The weights registered under more than one name (the decoder tied to the
        embedding)."""
        seen, tied = set(), set()
        for _, p in self.model.named_parameters(remove_duplicate=False):
            (tied if id(p) in seen else seen).add(id(p))
        return tied
