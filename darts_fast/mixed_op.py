"""The fused DARTS mixed operation, a drop-in for the original ``MixedOp(C, stride)``.

It holds the same candidate modules under the same names (``_ops.0`` ... ``_ops.7``) and computes
the same ``sum_k w_k * op_k(x)``, with three differences in how, not what:
  * the weighted sum and its backward are one fused kernel each
    (``darts_fast.kernels.weighted_sum``);
  * ``none`` is neither computed nor stored: its term is exactly zero;
  * ``relu(x)``, the first step of every conv candidate, is computed once and shared.
Identity (``skip_connect`` at stride 1) contributes ``x`` itself, without a copy.

``recompute=True`` keeps only the op's input for the backward pass and computes the candidates
again there (``torch.utils.checkpoint``): a mixed op then stores one tensor instead of the
candidates' intermediates, for the cost of a second forward pass. The BatchNorm running statistics
are updated by the forward pass only: the recomputation runs on copies of them. Same numbers as
``recompute=False``; it works with ``torch.autograd.grad`` on any inputs, double backward (the
exact hypergradient) and ``torch.compile`` (whose functionalised graph applies the statistics'
update once by itself).
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .genotypes import PRIMITIVES
from .kernels import weighted_sum
from .operations import Zero, candidate_ops


class MixedOp(nn.Module):
    def __init__(self, C, stride, primitives=PRIMITIVES, recompute=False):
        super().__init__()
        self.recompute = recompute
        self._ops = candidate_ops(C, stride, primitives)
        computed = [k for k, op in enumerate(self._ops) if not isinstance(op, Zero)]
        if not computed:
            raise ValueError("MixedOp: primitives must name at least one operation besides 'none'")
        self._computed = computed
        self._from_relu = [hasattr(self._ops[k], "forward_from_relu") for k in computed]
        contiguous = computed == list(range(computed[0], computed[-1] + 1))
        self._weight_index = slice(computed[0], computed[-1] + 1) if contiguous else computed

    def forward(self, x, weights):
        if weights.dim() != 1 or weights.shape[0] != len(self._ops):
            raise ValueError(
                f"MixedOp: weights must be 1-D with one entry per candidate operation "
                f"({len(self._ops)}), got shape {tuple(weights.shape)}"
            )
        if self.recompute and torch.is_grad_enabled():
            if torch.compiler.is_compiling():
                return checkpoint(self._mix, x, weights, use_reentrant=False,
                                  preserve_rng_state=False)
            return checkpoint(self._mix, x, weights, use_reentrant=False,
                              preserve_rng_state=False, context_fn=self._recompute_contexts)
        return self._mix(x, weights)

    def _recompute_contexts(self):
        return contextlib.nullcontext(), _RunningStatsCopied(self)

    def _mix(self, x, weights):
        relu_x = F.relu(x) if any(self._from_relu) else None
        outs = [
            self._ops[k].forward_from_relu(relu_x) if from_relu else self._ops[k](x)
            for k, from_relu in zip(self._computed, self._from_relu)
        ]
        return weighted_sum(outs, weights[self._weight_index])


class _RunningStatsCopied:
    """While active, every BatchNorm under ``module`` keeps its running statistics in copies, so
    a recomputation updates those and leaves the real ones as the forward pass left them.
    Re-enterable: a double backward recomputes again."""

    _NAMES = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = [(m, name, m._buffers[name]) for m in self.module.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      for name in self._NAMES if m._buffers.get(name) is not None]
        for m, name, buffer in self.saved:
            m._buffers[name] = buffer.clone()

    def __exit__(self, *exc):
        for m, name, buffer in self.saved:
            m._buffers[name] = buffer
