r"""One node of DARTS' recurrent search cell (``DARTSCellSearch.cell`` of quark0/darts
``rnn/model_search.py``): wrapper, fake kernels and autograd.

For J predecessor states :math:`s_j` [B, H], their pre-activations
:math:`[c_j, h_j] = (s_j \odot m) W_i` [B, 2H] and the probabilities :math:`p_{jk}` of the
K = 4 activations :math:`f_k` = (tanh, relu, sigmoid, identity):

.. math::
    u_{jk} = s_j + \sigma(c_j) (f_k(h_j) - s_j), \qquad y = \sum_j \sum_k p_{jk} u_{jk},

.. math::
    \frac{\partial L}{\partial s_j} = g (1 - \sigma(c_j)) \sum_k p_{jk}, \qquad
    \frac{\partial L}{\partial c_j} = g \sigma(c_j) (1 - \sigma(c_j))
        \sum_k p_{jk} (f_k(h_j) - s_j),

.. math::
    \frac{\partial L}{\partial h_j} = g \sigma(c_j) \sum_k p_{jk} f_k'(h_j), \qquad
    \frac{\partial L}{\partial p_{jk}} = \sum_{b, n} g_{bn} u_{jk, bn}, \qquad
    g = \frac{\partial L}{\partial y}.

The J x K terms :math:`u_{jk}` are never materialised, and the backward keeps only the inputs:
it computes the activations again. Schemas in ``csrc/ops.cpp``, kernels in
``csrc/cpu/rnn_node_cpu.cpp`` and ``csrc/cuda/rnn_node_cuda.cu``.
"""
import torch

from ._common import (check_one_device, composite_grads, ops, register_autograd, register_fake,
                      requires)

ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")  # the column order of probs


@requires("rnn_node", "rnn_node_backward")
def rnn_node(states: torch.Tensor, ch: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``sum_j sum_k probs[j, k] * (s_j + sigmoid(c_j) * (f_k(h_j) - s_j))`` in one pass, [B, H];
    differentiable once in ``states``, ``ch`` and ``probs``.

    ``states``: [J, B, H], J >= 1, the predecessor states (the highway uses them unmasked).
    ``ch``: [J, B, 2H], each state's pre-activations, ``c_j`` (first H columns) then ``h_j``.
    ``probs``: [J, 4], the probabilities of tanh, relu, sigmoid and identity per predecessor
    (the softmax of the alphas' rows with the ``none`` column dropped). float32/float64;
    float16/bfloat16 accumulate in float32 and take ``probs`` in their dtype or float32. Any
    strides (non-contiguous inputs are copied). relu'(0) = 0, as in torch.

    The gradient of ``probs`` is reduced in a fixed order, so it has the same bits on every run.
    The fused backward is not itself differentiable: the second-order DARTS architect takes the
    second derivative by finite differences and needs none. Under ``create_graph=True`` (the
    exact hypergradient) the backward differentiates the formula written in torch ops instead,
    which materialises the J x K terms and keeps them for the second derivative.
    """
    return ops.rnn_node(states, ch, probs)


def _check_rnn_node(op, states, ch, probs):
    check_one_device(op, [("states", states), ("ch", ch), ("probs", probs)])
    torch._check(states.dim() == 3,
                 lambda: f"{op}: states must be 3-D [J, B, H], got shape {tuple(states.shape)}")
    J, B, H = states.shape
    torch._check(J >= 1, lambda: f"{op}: states must hold at least one predecessor state "
                                 f"(J >= 1), got shape {tuple(states.shape)}")
    torch._check(ch.dim() == 3 and ch.shape[0] == J and ch.shape[1] == B and ch.shape[2] == 2 * H,
                 lambda: f"{op}: ch must have shape [J, B, 2H] = [{J}, {B}, {2 * H}] (c then h "
                         f"of every predecessor state), got {list(ch.shape)}")
    torch._check(ch.dtype == states.dtype,
                 lambda: f"{op}: ch has dtype {ch.dtype} but states have dtype {states.dtype}")
    torch._check(probs.dim() == 2 and probs.shape[0] == J and probs.shape[1] == len(ACTIVATIONS),
                 lambda: f"{op}: probs must have shape [J, 4] = [{J}, 4] (tanh, relu, sigmoid, "
                         f"identity per predecessor), got {list(probs.shape)}")


@register_fake("rnn_node")
def _rnn_node_fake(states, ch, probs):
    _check_rnn_node("rnn_node", states, ch, probs)
    return states.new_empty(states.shape[1:])


@register_fake("rnn_node_backward")
def _rnn_node_backward_fake(grad, states, ch, probs, needs_grad):
    _check_rnn_node("rnn_node_backward", states, ch, probs)
    check_one_device("rnn_node_backward", [("states", states), ("grad", grad)])
    torch._check(grad.shape == states.shape[1:],
                 lambda: f"rnn_node_backward: grad must have the output's shape [B, H] = "
                         f"{list(states.shape[1:])}, got {list(grad.shape)}")
    return tuple(t.new_empty(t.shape if need else (0,))
                 for t, need in zip((states, ch, probs), needs_grad))


def _rnn_node_composite(states, ch, probs):
    H = states.shape[-1]
    gate, h = ch[..., :H].sigmoid(), ch[..., H:]
    acts = torch.stack([h.tanh(), h.relu(), h.sigmoid(), h])  # [4, J, B, H]
    terms = states + gate * (acts - states)
    return torch.einsum("kjbn,jk->bn", terms, probs.to(terms.dtype))


def _rnn_node_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _rnn_node_backward(ctx, grad):
    states, ch, probs = ctx.saved_tensors
    needs = [bool(need) for need in ctx.needs_input_grad]
    if torch.is_grad_enabled():
        # create_graph=True: a backward that its own backward can differentiate.
        return tuple(composite_grads(_rnn_node_composite, (states, ch, probs), needs, grad))
    grads = ops.rnn_node_backward(grad, states, ch, probs, needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


register_autograd("rnn_node", _rnn_node_backward, _rnn_node_setup_context,
                  backward_op="rnn_node_backward")
