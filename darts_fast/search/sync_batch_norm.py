r"""BatchNorm over the whole batch of all the ranks of a search, on CPUs (gloo) and GPUs (NCCL).

Under DDP each rank normalises with its own shard's statistics, so a search on N processes is not
the single-process search on the concatenated batch. ``SyncBatchNorm2d`` takes the statistics over
all shards instead: per channel c, with the sums over the ranks :math:`n = \sum_r n_r`,
:math:`S_1 = \sum_r \sum x`, :math:`S_2 = \sum_r \sum x^2` (one all-reduce of
``[S_1, S_2, n]``, accumulated in float64),

.. math::
    \mu_c = S_1 / n, \qquad \sigma^2_c = S_2 / n - \mu_c^2, \qquad
    y = (x - \mu_c) / \sqrt{\sigma^2_c + eps} \cdot weight_c + bias_c

and the running statistics are updated with :math:`\mu_c` and the unbiased
:math:`\sigma^2_c\, n / (n - 1)`, as ``nn.BatchNorm2d`` does on the whole batch. The gradient
flows through the all-reduce (``darts_fast.search.distributed.sum_over_ranks``), twice for double
backward, so with DDP's averaging every gradient is the whole-batch one.

``torch.nn.SyncBatchNorm`` does the same on GPUs only; this module also runs under gloo, which
is what makes the equality testable on a CPU. In eval mode, or outside a process group, it is
``nn.BatchNorm2d``.
"""
import torch
import torch.distributed as dist
import torch.nn as nn

from ..spaces.cnn.mixed_op import MixedOp
from .distributed import sum_over_ranks


class SyncBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    @classmethod
    def convert(cls, module, process_group=None):
        """``module`` with every ``nn.BatchNorm2d`` replaced by a ``SyncBatchNorm2d`` holding
        the same parameters and buffers (in place below the top; returns the new top). Refuses
        a mixed op that folds its BatchNorms into the fused sum: the fold takes its statistics
        inside the kernel, per rank (build the network with ``fold_batch_norm=False``)."""
        for m in module.modules():
            if isinstance(m, MixedOp) and m.fold_batch_norm and any(m._folds):
                raise ValueError("SyncBatchNorm2d.convert: the network folds its BatchNorms "
                                 "into the fused mixed op, whose statistics are per rank; "
                                 "build it with fold_batch_norm=False")
        return _convert(cls, module, process_group)

    def forward(self, x):
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if not self.training or group is None:
            return super().forward(x)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm2d: expected input [N, {self.num_features}, H, W], "
                             f"got {list(x.shape)}")
        wide = torch.float64
        x_wide = x.to(wide)
        count = x.new_full((1,), x.numel() // self.num_features, dtype=wide)
        local = torch.cat([x_wide.sum((0, 2, 3)), (x_wide * x_wide).sum((0, 2, 3)), count])
        total = sum_over_ranks(local, group)
        c = self.num_features
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp(min=0)
        shape = (1, c, 1, 1)
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean, var, n):
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else \
            (1.0 / self.num_batches_tracked).to(self.running_mean.dtype)  # a cumulative average
        unbiased = var * n / (n - 1).clamp(min=1)
        for running, value in ((self.running_mean, mean), (self.running_var, unbiased)):
            running.mul_(1 - factor).add_(factor * value.to(running.dtype))


def _convert(cls, module, process_group):
    if type(module) is nn.BatchNorm2d:
        like = module.weight if module.affine else module.running_mean
        placed = {} if like is None else {"device": like.device, "dtype": like.dtype}
        new = cls(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats, process_group, **placed)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(cls, child, process_group))
    return module
