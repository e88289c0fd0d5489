"""The architecture parameters as DARTS' authors keep them: leaf tensors, not module parameters.
Shared by the search models of both spaces and by the reference: it moves tensors, it computes
nothing."""
import torch


class LeafAlphas:
    """Mixin of a search model whose ``_arch_parameters`` are leaf tensors with
    ``requires_grad``, absent from ``parameters()`` and ``state_dict()`` as in the authors' code.
    ``.to()``, ``.double()`` and ``.cuda()`` move them by hand, in place, so that an optimizer (and
    a cell) holding them keeps the same tensor."""

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            for alpha in self._arch_parameters:
                alpha.data = fn(alpha.data)
        return self

    def arch_parameters(self):
        return self._arch_parameters
