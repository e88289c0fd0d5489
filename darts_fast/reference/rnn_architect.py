"""DARTS' recurrent architect as its authors wrote it (quark0/darts ``rnn/architect.py``): the
second-order step rebuilds the model with ``model.new()`` and ``load_state_dict`` every step and
takes the Hessian-vector product by a central finite difference, the hidden states carried in and
out as the search loop carries them.

Where it departs from the original: deprecated call forms are updated (``theta.sub(eta, d)``,
``p.add_(R, v)``, ``Variable``); the unrolled model stays on the model's device and dtype where
the original calls ``.cuda()``; ``optimizer.zero_grad()`` now sets the alpha gradient to None
where it zeroed it (the new gradient is the same).
Kept on purpose (see ``RNNArchitect``): the implicit gradient scaled by ``clip_coef`` also when
that is above 1 (no clipping happened); the tied embedding left out of the virtual step; the
weights left at ``w + R v - 2 R v + R v`` after the finite difference, not bit for bit ``w``; the
BatchNorm statistics updated and dropout masks drawn by every loss; fresh weights drawn from the
global RNG by ``model.new()`` every second-order step.
"""
import torch


def _concat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


def _clip(grads, max_norm):
    """Scale ``grads`` in place by ``clip_coef = max_norm / (||grads||_2 + 1e-6)`` when that is
    below 1; return ``clip_coef`` (a 0-dim tensor), whatever its value."""
    total_norm = 0
    for g in grads:
        total_norm += g.norm(2) ** 2
    total_norm = total_norm ** 0.5
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1:
        for g in grads:
            g.mul_(clip_coef)
    return clip_coef


class RNNArchitect:
    """The original DARTS recurrent architect; ``args`` holds ``wdecay``, ``clip``, ``arch_lr``
    and ``arch_wdecay`` (the search's options); the alphas step with
    ``Adam(lr=arch_lr, weight_decay=arch_wdecay)``, default betas.

    Second order (``unrolled=True``), with ``eta`` the network optimizer's learning rate and
    ``L_t``, ``L_v`` the training and validation losses from their hidden states:
    ``g = dL_t(w)/dw``, ``c = clip / (||g|| + 1e-6)``, ``g <- c g`` if ``c < 1``;
    ``w' = w - eta * (g + wdecay * w)`` (plain SGD, no momentum), except the tied embedding, which
    keeps ``w``: the unrolled model is loaded from the state_dict, whose ``decoder.weight``
    (unstepped) is loaded after ``encoder.weight``. ``dalpha = dL_v(w')/dalpha``,
    ``v = dL_v(w')/dw'`` clipped as ``g``; ``R = 0.01 / ||v||``;
    ``alpha.grad = dalpha - eta * c * (g+ - g-) / (2R)``, ``g+-`` the alpha gradients of ``L_t``
    at ``w +- R v``, ``c`` unbounded. First order: ``alpha.grad = dL_v(w)/dalpha``, the weights'
    gradients accumulated too.
    """

    def __init__(self, model, args):
        self.network_weight_decay = args.wdecay
        self.network_clip = args.clip
        self.model = model
        self.optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=args.arch_lr,
                                          weight_decay=args.arch_wdecay)

    def _compute_unrolled_model(self, hidden, input, target, eta):
        loss, _ = self.model._loss(hidden, input, target)
        theta = _concat(self.model.parameters()).detach()
        grads = torch.autograd.grad(loss, list(self.model.parameters()))
        clip_coef = _clip(grads, self.network_clip)
        dtheta = _concat(grads) + self.network_weight_decay * theta
        unrolled_model = self._construct_model_from_theta(theta.sub(dtheta, alpha=eta))
        return unrolled_model, clip_coef

    def step(self, hidden_train, input_train, target_train, hidden_valid, input_valid,
             target_valid, network_optimizer, unrolled):
        """One alpha step at ``eta = network_optimizer.param_groups[0]['lr']``; returns
        ``(next validation hidden, None)`` (the original's placeholder for a gradient norm)."""
        eta = network_optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad()
        if unrolled:
            hidden = self._backward_step_unrolled(hidden_train, input_train, target_train,
                                                  hidden_valid, input_valid, target_valid, eta)
        else:
            hidden = self._backward_step(hidden_valid, input_valid, target_valid)
        self.optimizer.step()
        return hidden, None

    def _backward_step(self, hidden, input, target):
        loss, hidden_next = self.model._loss(hidden, input, target)
        loss.backward()
        return hidden_next

    def _backward_step_unrolled(self, hidden_train, input_train, target_train, hidden_valid,
                                input_valid, target_valid, eta):
        unrolled_model, clip_coef = self._compute_unrolled_model(hidden_train, input_train,
                                                                 target_train, eta)
        unrolled_loss, hidden_next = unrolled_model._loss(hidden_valid, input_valid, target_valid)

        unrolled_loss.backward()
        dalpha = [v.grad for v in unrolled_model.arch_parameters()]
        dtheta = [v.grad for v in unrolled_model.parameters()]
        _clip(dtheta, self.network_clip)
        vector = [dt.detach() for dt in dtheta]
        implicit_grads = self._hessian_vector_product(vector, hidden_train, input_train,
                                                      target_train, r=1e-2)

        for g, ig in zip(dalpha, implicit_grads):
            g.sub_(ig, alpha=float(eta * clip_coef))

        for v, g in zip(self.model.arch_parameters(), dalpha):
            if v.grad is None:
                v.grad = g.detach()
            else:
                v.grad.copy_(g)
        return hidden_next

    def _construct_model_from_theta(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()

        params, offset = {}, 0
        for k, v in self.model.named_parameters():
            v_length = v.numel()
            params[k] = theta[offset: offset + v_length].view(v.size())
            offset += v_length

        assert offset == len(theta)
        model_dict.update(params)
        model_new.load_state_dict(model_dict)
        return model_new

    def _hessian_vector_product(self, vector, hidden, input, target, r=1e-2):
        R = (r / _concat(vector).norm()).item()
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.add_(v, alpha=R)
        loss, _ = self.model._loss(hidden, input, target)
        grads_p = torch.autograd.grad(loss, self.model.arch_parameters())

        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.sub_(v, alpha=2 * R)
        loss, _ = self.model._loss(hidden, input, target)
        grads_n = torch.autograd.grad(loss, self.model.arch_parameters())

        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.add_(v, alpha=R)

        return [(x - y).div_(2 * R) for x, y in zip(grads_p, grads_n)]
