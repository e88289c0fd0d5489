"""The darts_fast operators: typed wrappers, fake (meta) kernels and autograd, one module per op
family (:mod:`.weighted_sum_ops`, :mod:`.batch_norm_weighted_sum_ops`,
:mod:`.multi_tensor_ops`, :mod:`.rnn_node_ops`) and what they share (:mod:`._common`).

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA kernels in ``csrc/cpu`` and
``csrc/cuda``. Importing this package loads them (``darts_fast._C``). Where that library cannot
be loaded, the package still imports and each kernel function raises a RuntimeError, when
called, that names the failure and the rebuild command; :func:`has_ops` tells beforehand.
"""
from ._common import dense_layout, has_ops, statistics_dtype, unavailable
from .batch_norm_weighted_sum_ops import batch_norm_weighted_sum
from .multi_tensor_ops import (multi_tensor_axpy_, multi_tensor_finite_difference,
                               multi_tensor_norm, multi_tensor_revert_, multi_tensor_virtual_step,
                               scalar)
from .rnn_node_ops import rnn_node
from .weighted_sum_ops import weighted_sum

__all__ = [
    "batch_norm_weighted_sum", "dense_layout", "has_ops", "multi_tensor_axpy_",
    "multi_tensor_finite_difference", "multi_tensor_norm", "multi_tensor_revert_",
    "multi_tensor_virtual_step", "rnn_node", "scalar", "statistics_dtype", "unavailable",
    "weighted_sum",
]
