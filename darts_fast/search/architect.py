r"""The fused DARTS architect, a drop-in for the original ``Architect(model, args)``.

Every loss below is ``loss_fn(model, batch)``, by default the original's ``model._loss(*batch)``
on the batches ``(input, target)`` of ``step``. ``step_batches`` takes whole batches of any
structure (the recurrent cell's ``(hidden, input, target)``, a dict, nestings of these):
:math:`L_{train}` is the loss on ``train_batch``, :math:`L_{val}` on ``valid_batch``.

Second order (``unrolled=True``), with :math:`w` the weights, :math:`\alpha` the architecture,
:math:`\mu` = ``args.momentum``, ``wd`` = ``args.weight_decay`` and ``buf`` the SGD momentum
buffers (zeros before the first SGD step):

.. math::
    w' = w - \eta\,(\mu\,buf + \nabla_w L_{train}(w, \alpha) + wd\,w)

    d\alpha = \nabla_\alpha L_{val}(w', \alpha), \qquad v = \nabla_{w'} L_{val}(w', \alpha)

    R = 0.01 / \lVert v \rVert, \qquad
    g^\pm = \nabla_\alpha L_{train}(w \pm R v, \alpha)

    \alpha.grad = d\alpha - \eta\,(g^+ - g^-) / (2R)

then one Adam step (betas 0.5, 0.999) on the alphas. First order: :math:`\alpha.grad =
\nabla_\alpha L_{val}(w, \alpha)`.

The numbers are the original's (within float rounding); what changes is how:
  * no new model per step: :math:`w'` and :math:`w \pm Rv` live in one persistent shadow copy of
    the weights that is swapped into the parameters (``p.data``) and swapped out again, so
    :math:`w` is restored bit for bit; the original builds ``model.new()`` and loads a state_dict
    every step (which also draws from the global RNG: this architect draws nothing);
  * the virtual step, the norm, the perturbation and the final combination are multi-tensor
    kernels over all weights at once; :math:`R` never leaves the device;
  * the BatchNorm running statistics end as the original's: the real model sees the passes at
    :math:`w`, :math:`w+Rv`, :math:`w-Rv`; the pass at :math:`w'` runs on swapped-in scratch
    buffers, in training mode, as the original's fresh model does;
  * first order computes only the alpha gradient: unlike the original it leaves the weights'
    ``.grad`` alone (the training loop zeroes those before its weight step anyway);
  * nothing is read on the host: a step whose losses or alpha gradient are not finite is undone on
    the device and counted in ``skipped_steps`` (see ``darts_fast.search.skip``), where the original
    would write nan into the alphas; ``eta`` may be a 0-dim device tensor. The step can thus be
    captured into a CUDA graph (``darts_fast.search.step``).

Several processes (``torchrun``): give the architect the DDP-wrapped model, or the model and a
``process_group``. Each rank computes on its shard; what the formulas need is averaged over the
ranks, one flattened all-reduce each: the training gradient of the virtual step, then
:math:`(d\alpha, v)` at :math:`w'`, then :math:`(g^+, g^-)` (first order: the alpha gradient).
The result is the formulas above on the shard-averaged gradients, with BatchNorm statistics per
shard (as DDP keeps them); :math:`\lVert v \rVert` is global, so every rank takes the same alpha
step.

``hessian="exact"`` replaces the finite difference by the exact mixed second derivative
:math:`\nabla^2_{\alpha, w} L_{train}(w, \alpha)\, v` (double backward). It is a different result
from the original: the finite difference does not converge across ReLU and max-pool kinks. In that
mode the real model sees one training pass per step (at :math:`w`), not three. ``grad_clip``
scales the alpha gradient down to that norm before Adam's step (P-DARTS' architecture step).
"""
import torch
import torch.nn as nn

from .. import kernels
from .distributed import mean_over_ranks
from .loss import loss_and_output, model_loss
from .skip import adam_step, all_finite, allocate_like, copy_into, count_skip
from .weights import check_weights, momentum_buffers, swap_in

_HESSIANS = ("finite_difference", "exact")


class Architect:
    """``loss_fn(model, batch)`` returns the loss (a 0-dim tensor) or ``(loss, output)``; by
    default it is ``model._loss(*batch)``, called with the model the architect steps (the module
    itself where a DDP wrapper is given). Subclasses override ``_read_args``, ``_virtual_step``,
    ``_direction`` (``search.rnn_architect``) or ``_finite_difference`` (``compat.ptdarts``)."""

    required_args = ("momentum", "weight_decay", "arch_learning_rate", "arch_weight_decay")
    adam_betas = (0.5, 0.999)

    def __init__(self, model, args, hessian="finite_difference", process_group=None,
                 loss_fn=None, grad_clip=None):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            # The passes go through the module itself: DDP reduces only what .backward()
            # accumulates, and the architect reduces its own gradients (see step).
            process_group = process_group if process_group is not None else model.process_group
            model = model.module
        if not callable(getattr(model, "arch_parameters", None)):
            raise TypeError(
                f"Architect: model must offer arch_parameters() (and parameters()), got "
                f"{type(model).__name__}"
            )
        if loss_fn is None and not callable(getattr(model, "_loss", None)):
            raise TypeError(f"Architect: model must offer _loss(input, target), or give "
                            f"loss_fn(model, batch), got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"Architect: loss_fn must be callable as loss_fn(model, batch), got "
                            f"{type(loss_fn).__name__}")
        for name in self.required_args:
            if not hasattr(args, name):
                raise TypeError(f"{type(self).__name__}: args must have the attribute {name!r}")
        if hessian not in _HESSIANS:
            raise ValueError(f"Architect: hessian must be one of {_HESSIANS}, got {hessian!r}")
        alphas = list(model.arch_parameters())
        if not alphas or not all(isinstance(a, torch.Tensor) and a.requires_grad for a in alphas):
            raise ValueError("Architect: model.arch_parameters() must return tensors that "
                             "require grad")
        arch_learning_rate, arch_weight_decay = self._read_args(args)
        if grad_clip is not None and not grad_clip >= 0:
            raise ValueError(f"Architect: grad_clip must be >= 0 or None, got {grad_clip!r}")
        self.model, self.hessian, self.grad_clip = model, hessian, grad_clip
        self.process_group = process_group
        self.loss_fn = self.default_loss_fn if loss_fn is None else loss_fn
        self.optimizer = torch.optim.Adam(
            alphas, lr=arch_learning_rate, betas=self.adam_betas,
            weight_decay=arch_weight_decay, capturable=alphas[0].is_cuda,
        )
        self._shadow_weights = None
        self._shadow_buffers = None
        self._saved_buffers = None
        self._saved_adam = None
        self.skipped_steps = None  # a 0-dim int64 tensor once a step has run

    default_loss_fn = staticmethod(model_loss)
    _finite_difference = staticmethod(kernels.multi_tensor_finite_difference)

    def _read_args(self, args):
        """Keeps the weights' update rule from ``args``; returns the alphas' Adam learning rate
        and weight decay."""
        self.network_momentum = args.momentum
        self.network_weight_decay = args.weight_decay
        return args.arch_learning_rate, args.arch_weight_decay

    def step(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer,
             unrolled):
        """The original's call: ``step_batches`` on the batches ``(input_train, target_train)``
        and ``(input_valid, target_valid)``, which must be tensors holding as many inputs as
        targets, the inputs of one sample shape."""
        _check_batch("train", input_train, target_train)
        _check_batch("valid", input_valid, target_valid)
        if input_train.shape[1:] != input_valid.shape[1:]:
            raise ValueError(
                f"Architect.step: input_train and input_valid must have the same sample shape, "
                f"got {tuple(input_train.shape)} and {tuple(input_valid.shape)}"
            )
        self.step_batches((input_train, target_train), (input_valid, target_valid), eta,
                          network_optimizer, unrolled)

    def step_batches(self, train_batch, valid_batch, eta, network_optimizer, unrolled):
        """One architecture step on two batches, each passed whole to ``loss_fn``. ``eta`` (the
        weights' learning rate) is a number or a 0-dim tensor; a device tensor lets a captured
        step replay with the rate of the moment. Returns the output that ``loss_fn`` gave with
        the validation loss (at :math:`w'` second order, at :math:`w` first order), None where it
        gives the loss alone.

        No host synchronisation. When a loss or the alpha gradient is not finite, the step is
        undone on the device, the way ``torch.amp.GradScaler`` skips an optimizer step: weights,
        BatchNorm statistics, alphas and Adam's state stay as they were, and ``skipped_steps``
        (a 0-dim tensor on the alphas' device) counts it."""
        self.optimizer.zero_grad()
        alphas = list(self.model.arch_parameters())
        buffers = list(self.model.buffers())
        self._saved_buffers = copy_into(self._saved_buffers, buffers)
        try:
            if unrolled:
                grads, checks, output = self._unrolled_grads(train_batch, valid_batch, eta,
                                                     network_optimizer)
            else:
                loss, output = self._loss_output(valid_batch)
                grads = torch.autograd.grad(loss, alphas, allow_unused=True)
                unused = [g is None for g in grads]
                loss, *grads = mean_over_ranks([loss, *_zeros_for_none(grads, alphas)],
                                               self.process_group)
                grads, checks = _none_where(unused, grads), [loss]
        except BaseException:
            if buffers:  # the foreach kernels refuse empty lists
                with torch.no_grad():
                    torch._foreach_copy_(buffers, self._saved_buffers)
            raise
        finite = all_finite([*checks, *(g for g in grads if g is not None)])
        # An alpha that takes no part in the loss (the normal cells' alphas of a network made only
        # of reduction cells) keeps no gradient, and Adam leaves it alone, as in the original.
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_([a for a in alphas if a.grad is not None], self.grad_clip)
        targets, saved, self._saved_adam = adam_step(self.optimizer, alphas, self._saved_adam)
        with torch.no_grad():
            kernels.multi_tensor_revert_(buffers + targets, self._saved_buffers + saved, finite)
            self.skipped_steps = count_skip(self.skipped_steps, finite)
        return output

    def _loss(self, batch):
        return self._loss_output(batch)[0]

    def _loss_output(self, batch):
        return loss_and_output(self.loss_fn(self.model, batch),
                               f"{type(self).__name__}: loss_fn(model, batch)")

    def _virtual_step(self, shadow, weights, grads, eta, network_optimizer, params):
        """Writes ``w'`` into ``shadow``; returns the factor of the implicit gradient, ``eta``."""
        bufs = momentum_buffers(network_optimizer, self.model, params)
        kernels.multi_tensor_virtual_step(shadow, weights, grads, bufs, eta,
                                          self.network_momentum, self.network_weight_decay)
        return eta

    def _direction(self, v):
        """The direction ``v`` of the finite difference, from the gradient at ``w'``."""
        return v

    def _unrolled_grads(self, train_batch, valid_batch, eta, network_optimizer):
        model = self.model
        params = list(model.parameters())
        alphas = list(model.arch_parameters())
        check_weights(params)
        exact = self.hessian == "exact"

        group = self.process_group
        loss_train = self._loss(train_batch)
        grad_w = torch.autograd.grad(loss_train, params, create_graph=exact)
        loss_train, *mean_grad_w = mean_over_ranks([loss_train, *grad_w], group)
        weights = [p.data for p in params]
        self._shadow_weights = allocate_like(self._shadow_weights, weights)
        shadow = self._shadow_weights
        with torch.no_grad():
            implicit = self._virtual_step(shadow, weights, [g.detach() for g in mean_grad_w], eta,
                                          network_optimizer, params)

        # The pass at w' must leave the model's BatchNorm statistics alone and, like the
        # original's freshly built model, runs in training mode.
        buffers = list(model.buffers())
        self._shadow_buffers = copy_into(self._shadow_buffers, buffers)
        buffer_data = [b.data for b in buffers]
        was_training = model.training
        try:
            swap_in(params, shadow)
            swap_in(buffers, self._shadow_buffers)
            model.train()
            loss_valid, output = self._loss_output(valid_batch)
            grads = torch.autograd.grad(loss_valid, alphas + params, allow_unused=True)
        finally:
            swap_in(params, weights)
            swap_in(buffers, buffer_data)
            model.train(was_training)
        unused = [g is None for g in grads[:len(alphas)]]
        loss_valid, *grads = mean_over_ranks([loss_valid, *_zeros_for_none(grads, alphas + params)],
                                             group)
        dalpha = grads[:len(alphas)]
        with torch.no_grad():
            v = self._direction(grads[len(alphas):])

        if exact:
            # Each rank differentiates its own training gradient along the common v; the mean of
            # those is the derivative of the mean gradient.
            hvp = mean_over_ranks(_grad(grad_w, alphas, grad_outputs=v), group)
            with torch.no_grad():
                hypergrad = [d - implicit * h for d, h in zip(dalpha, hvp)]
            return _none_where(unused, hypergrad), [loss_train, loss_valid], output

        with torch.no_grad():
            r = 0.01 / kernels.multi_tensor_norm(v)
            torch._foreach_copy_(shadow, weights)
            kernels.multi_tensor_axpy_(shadow, v, r)
        try:
            swap_in(params, shadow)
            loss_pos = self._loss(train_batch)
            grads_pos = _grad(loss_pos, alphas)
            with torch.no_grad():
                # As in the original, w - Rv is reached from w + Rv by subtracting 2Rv.
                kernels.multi_tensor_axpy_(shadow, v, -2 * r)
            loss_neg = self._loss(train_batch)
            grads_neg = _grad(loss_neg, alphas)
        finally:
            swap_in(params, weights)
        n = len(alphas)
        loss_pos, loss_neg, *grads_pm = mean_over_ranks(
            [loss_pos, loss_neg, *grads_pos, *grads_neg], group)
        grads_pos, grads_neg = grads_pm[:n], grads_pm[n:]
        with torch.no_grad():
            hypergrad = self._finite_difference(dalpha, grads_pos, grads_neg, r, implicit)
        return _none_where(unused, hypergrad), [loss_train, loss_valid, loss_pos, loss_neg], \
            output


def _check_batch(name, inputs, targets):
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"Architect.step: input_{name} and target_{name} must be tensors")
    if inputs.dim() == 0 or targets.dim() == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"Architect.step: input_{name} and target_{name} must hold the same "
                         f"number of samples, got shapes {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")


def _grad(outputs, inputs, grad_outputs=None):
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, allow_unused=True)
    return _zeros_for_none(grads, inputs)


def _zeros_for_none(grads, inputs):
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _none_where(unused, grads):
    return [None if u else g for u, g in zip(unused, grads)]
