"""The fused DARTS mixed operation, a drop-in for the original ``MixedOp(C, stride)``.

It holds the same candidate modules under the same names (``_ops.0`` ... ``_ops.7``) and computes
the same ``sum_k w_k * op_k(x)``, with three differences in how, not what:
  * the weighted sum and its backward are one fused kernel each
    (``darts_fast.kernels.weighted_sum``);
  * ``none`` is neither computed nor stored: its term is exactly zero;
  * ``relu(x)``, the first step of every conv candidate, is computed once and shared.
Identity (``skip_connect`` at stride 1) contributes ``x`` itself, without a copy.

``fold_batch_norm=True`` (the default) also folds the final affine-free BatchNorm of every
candidate (convs, pools, factorized reduction) into the weighted sum
(``darts_fast.kernels.batch_norm_weighted_sum``): the normalised candidate outputs are neither
written nor kept for the backward pass. The BatchNorm modules stay where they are, with their
buffers: the op reads their settings and updates their running statistics as
``nn.BatchNorm2d`` does (training mode: batch statistics, momentum, unbiased running variance,
``num_batches_tracked``; eval mode: the running statistics), so state dicts and checkpoints are
those of the original. The max-pool candidate keeps no int64 indices for its backward pass
(``darts_fast.layers.max_pool``).

``auxiliary_skip=True`` adds DARTS-'s auxiliary skip-connection (Chu et al. 2021, "DARTS-:
Robustly Stepping out of Performance Collapse Without Indicators"): ``auxiliary_op``, the identity
(a ``FactorizedReduce`` at stride 2), built before the candidates as its authors do, and weighted
by one more entry at the end of ``weights``, the coefficient beta, as one more term of the fused
sum: ``sum_k w_k * op_k(x) + beta * auxiliary_op(x)``.

``recompute=True`` keeps only the op's input for the backward pass and computes the candidates
again there (``torch.utils.checkpoint``): a mixed op then stores one tensor instead of the
candidates' intermediates, for the cost of a second forward pass. The BatchNorm running statistics
are updated by the forward pass only: the recomputation runs on copies of them. Same numbers as
``recompute=False``; it works with ``torch.autograd.grad`` on any inputs, double backward (the
exact hypergradient) and ``torch.compile`` (whose functionalised graph applies the statistics'
update once by itself).
"""
import contextlib
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ...kernels import batch_norm_weighted_sum, statistics_dtype, weighted_sum
from ...layers import max_pool
from .genotypes import PRIMITIVES
from .operations import FactorizedReduce, Identity, Zero, candidate_ops


class MixedOp(nn.Module):
    def __init__(self, C, stride, primitives=PRIMITIVES, recompute=False, fold_batch_norm=True,
                 conv_bias=False, track_running_stats=True, auxiliary_skip=False):
        super().__init__()
        self.recompute = recompute
        self.fold_batch_norm = fold_batch_norm
        if auxiliary_skip:
            self.auxiliary_op = FactorizedReduce(
                C, C, affine=False, conv_bias=conv_bias,
                track_running_stats=track_running_stats) if stride == 2 else Identity()
        self._ops = self._candidates(C, stride, primitives, conv_bias, track_running_stats)
        computed = [k for k, op in enumerate(self._ops) if not isinstance(op, Zero)]
        if not computed:
            raise ValueError("MixedOp: primitives must name at least one operation besides 'none'")
        # The terms of the sum: the candidates, then the auxiliary skip (not a candidate: its
        # weight is beta, not an alpha's).
        self._terms = [*self._ops, *([self.auxiliary_op] if auxiliary_skip else [])]
        self._auxiliary = [len(self._ops)] if auxiliary_skip else []
        self._computed = computed + self._auxiliary
        # Per term k: whether it starts from relu(x), how its BatchNorm folds.
        self._from_relu = [hasattr(op, "forward_from_relu") for op in self._terms]
        self._folds = [_fold_kind(op) for op in self._terms]

    def _candidates(self, C, stride, primitives, conv_bias, track_running_stats):
        """The candidate modules, in ``primitives`` order (a method's op may build them its own
        way)."""
        return candidate_ops(C, stride, primitives, conv_bias, track_running_stats)

    def forward(self, x, weights, active=None):
        r"""``sum_k weights[k] * op_k(x)`` over the candidates ``active`` names (Python ints, in
        any order; every candidate when None): one for GDAS, SPOS and ENAS, two for
        ProxylessNAS. Only those candidates are computed; every weight they name gets its
        gradient (GDAS' straight-through weights then reach every alpha)."""
        self._check_weights(weights)
        if active is None:
            return self._run(self._mix, x, weight_rows(weights, self._computed), self._computed)
        active = self._check_active(active)
        ks = [k for k in active if k in self._computed] + self._auxiliary
        if not ks:  # only 'none': a zero output, and zero gradients
            return self._ops[active[0]](x) * weights[active[0]]
        return self._run(self._mix, x, weight_rows(weights, ks), ks)

    def _check_active(self, active):
        """``active`` as a list of distinct candidate indices."""
        n = len(self._ops)
        if isinstance(active, (str, bytes)) or not hasattr(active, "__iter__"):
            raise ValueError(f"MixedOp: active must be a sequence of candidate indices, got "
                             f"{active!r}")
        active = list(active)
        if not active or any(not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n
                             for k in active) or len(set(active)) != len(active):
            raise ValueError(f"MixedOp: active must name distinct candidates, ints in [0, {n}), "
                             f"one at least; got {active!r}")
        return active

    def _check_weights(self, weights):
        if weights.dim() != 1 or weights.shape[0] != len(self._terms):
            extra = " and the auxiliary skip's beta last" if self._auxiliary else ""
            raise ValueError(
                f"MixedOp: weights must be 1-D with one entry per candidate operation{extra} "
                f"({len(self._terms)}), got shape {tuple(weights.shape)}"
            )

    def _run(self, mix, *args):
        """``mix(*args)``, recomputed in the backward pass with ``recompute``."""
        if self.recompute and torch.is_grad_enabled():
            if torch.compiler.is_compiling():
                return checkpoint(mix, *args, use_reentrant=False, preserve_rng_state=False)
            return checkpoint(mix, *args, use_reentrant=False, preserve_rng_state=False,
                              context_fn=self._recompute_contexts)
        return mix(*args)

    def _recompute_contexts(self):
        return contextlib.nullcontext(), _RunningStatsCopied(self)

    def _mix(self, x, weights, ks, rest=None, groups=1):
        """``sum_j weights[j] * op_ks[j](x)``; with ``rest`` (PC-DARTS), that sum concatenated
        with ``rest`` and shuffled in ``groups`` groups, in the same kernel."""
        # The kernels take one dtype; the original's w * op(x) computes in x's (0-dim weights do
        # not promote), so weights of another dtype (float32 under autocast) are cast as there.
        weights = weights.to(x.dtype)
        relu_x = F.relu(x) if any(self._from_relu[k] for k in ks) else None
        if self.fold_batch_norm and any(self._folds[k] for k in ks):
            return self._mix_folded(x, relu_x, weights, ks, rest, groups)
        outs = [self._terms[k].forward_from_relu(relu_x) if self._from_relu[k]
                else self._terms[k](x) for k in ks]
        if rest is None:
            return weighted_sum(outs, weights)
        # Unnormalised candidates: batch_norm_weighted_sum with statistics 0 and 1, which is
        # exactly the weighted sum (x - 0) * 1.
        fixed = [False] * len(outs)
        mean, invstd = _fixed_statistics([None] * len(outs), fixed, outs[0], 0.0)
        return batch_norm_weighted_sum(outs, weights, mean, invstd, fixed, 0.0, rest, groups)[0]

    def _mix_folded(self, x, relu_x, weights, ks, rest, groups):
        ys, bns = [], []
        for k in ks:
            op, fold = self._terms[k], self._folds[k]
            if fold == _RELU_FEATURES:
                ys.append(op.features_from_relu(relu_x))
                bns.append(op.final_batch_norm)
            elif fold == _SEQUENTIAL_FEATURES:
                y = x
                for module in itertools.islice(op, len(op) - 1):
                    y = max_pool.max_pool2d(module, y) if max_pool.is_max_pool(module) \
                        else module(y)
                ys.append(y)
                bns.append(op[-1])
            else:
                ys.append(op.forward_from_relu(relu_x) if self._from_relu[k] else op(x))
                bns.append(None)
        eps = next(bn.eps for bn in bns if bn is not None)
        if any(bn is not None and bn.eps != eps for bn in bns):
            raise ValueError("MixedOp: the folded BatchNorms must share one eps; build the op "
                             "with fold_batch_norm=False to give them different ones")
        batch_stats = [bn is not None and (bn.training or bn.running_mean is None) for bn in bns]
        if any(batch_stats):
            _check_batch_size(ys[0])
        mean, invstd = _fixed_statistics(bns, batch_stats, ys[0], eps)
        out, mean, _, var = batch_norm_weighted_sum(ys, weights, mean, invstd, batch_stats, eps,
                                                    rest, groups)
        updated = [k for k, bn in enumerate(bns)
                   if batch_stats[k] and bn.training and bn.track_running_stats]
        if updated:
            n = ys[0].numel() // ys[0].shape[1]
            # Rows as views: indexing with a list would copy the list to the device, which a
            # CUDA graph capture does not allow.
            means, variances = mean.unbind(0), var.unbind(0)
            _update_running_stats([bns[k] for k in updated], [means[k] for k in updated],
                                  [variances[k] for k in updated], n)
        return out


def weight_rows(weights, ks):
    """``weights[ks]`` for a list of Python ints: a view where they are consecutive, else rows
    stacked on the device (a list index would copy the list to the device, which a CUDA graph
    capture does not allow)."""
    if ks == list(range(ks[0], ks[0] + len(ks))):
        return weights[ks[0]:ks[0] + len(ks)]
    return torch.stack([weights[k] for k in ks])


# How a candidate's final BatchNorm folds into the weighted sum (0: it does not).
_RELU_FEATURES, _SEQUENTIAL_FEATURES = 1, 2


def _foldable(bn):
    return type(bn) is nn.BatchNorm2d and not bn.affine


def _fold_kind(op):
    """_RELU_FEATURES for an op with ``features_from_relu`` before an affine-free BatchNorm,
    _SEQUENTIAL_FEATURES for a Sequential that ends in one (the pools), 0 otherwise (identity,
    candidates without such a BatchNorm: weighted as they are)."""
    if hasattr(op, "features_from_relu") and _foldable(op.final_batch_norm):
        return _RELU_FEATURES
    if isinstance(op, nn.Sequential) and len(op) > 1 and _foldable(op[-1]):
        return _SEQUENTIAL_FEATURES
    return 0


def _check_batch_size(y):
    # nn.BatchNorm2d's check, with its message: one value per channel has no variance. An empty
    # batch passes, as there: its output is empty and the running statistics stay.
    if y.numel() // y.shape[1] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{list(y.shape)}")


def _fixed_statistics(bns, batch_stats, y, eps):
    """[K, C] mean and invstd for the rows that do not take batch statistics: the running
    statistics of a BatchNorm in eval mode, 0 and 1 for a candidate without one."""
    dtype = statistics_dtype(y.dtype)
    K, C = len(bns), y.shape[1]
    mean = torch.zeros(K, C, dtype=dtype, device=y.device)
    invstd = torch.ones(K, C, dtype=dtype, device=y.device)
    running = [k for k, bn in enumerate(bns) if bn is not None and not batch_stats[k]]
    if running:
        mean[running] = torch.stack([bns[k].running_mean for k in running]).to(dtype)
        invstd[running] = torch.rsqrt(torch.stack([bns[k].running_var for k in running])
                                      .to(dtype) + eps)
    return mean, invstd


@torch.no_grad()
def _update_running_stats(bns, means, variances, n):
    """``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance, and
    ``num_batches_tracked += 1``, as nn.BatchNorm2d does in training mode (momentum None: the
    cumulative average); a few multi-tensor ops for all the candidates of the mixed op. ``means``
    and ``variances``: one [C] tensor per BatchNorm (biased variances)."""
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    if n == 0:  # an empty batch is counted but has no statistics, as in nn.BatchNorm2d
        return
    factors = [bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
               for bn in bns]
    unbiased = torch._foreach_mul(list(variances), n / (n - 1))
    for running, batch in (([bn.running_mean for bn in bns], means),
                           ([bn.running_var for bn in bns], unbiased)):
        torch._foreach_mul_(running, [1.0 - f for f in factors])
        torch._foreach_add_(running, torch._foreach_mul([b.to(r.dtype) for b, r in
                                                         zip(batch, running)], factors))


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
