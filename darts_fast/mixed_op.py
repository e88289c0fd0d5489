"""The fused DARTS mixed operation, a drop-in for the original ``MixedOp(C, stride)``.

It holds the same candidate modules under the same names (``_ops.0`` ... ``_ops.7``) and computes
the same ``sum_k w_k * op_k(x)``, with three differences in how, not what:
  * the weighted sum and its backward are one fused kernel each
    (``darts_fast.kernels.weighted_sum``);
  * ``none`` is neither computed nor stored: its term is exactly zero;
  * ``relu(x)``, the first step of every conv candidate, is computed once and shared.
Identity (``skip_connect`` at stride 1) contributes ``x`` itself, without a copy.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotypes import PRIMITIVES
from .kernels import weighted_sum
from .operations import Zero, candidate_ops


class MixedOp(nn.Module):
    def __init__(self, C, stride, primitives=PRIMITIVES):
        super().__init__()
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
        relu_x = F.relu(x) if any(self._from_relu) else None
        outs = [
            self._ops[k].forward_from_relu(relu_x) if from_relu else self._ops[k](x)
            for k, from_relu in zip(self._computed, self._from_relu)
        ]
        return weighted_sum(outs, weights[self._weight_index])
