r"""ProxylessNAS' hardware loss on the alphas (its ``mul#log`` form), for any search whose
architecture step reads softmax(alpha) over DARTS' network: ProxylessNAS, DARTS, PC-DARTS, GDAS.

.. math::
    L = s \cdot CE \cdot \Big(\frac{\log E[\mathrm{cost}]}{\log \mathrm{ref}}\Big)^{p},
    \qquad E[\mathrm{cost}] = \mathrm{fixed} + \sum_{kinds} \sum_{e,k}
    \mathrm{softmax}(\alpha)_{e,k}\, c_{e,k}

with the authors' :math:`s = 0.2`, :math:`p = 0.3`, the per-candidate costs :math:`c` of a
table (``spaces.cnn.resources``: latency measured by ``darts-fast profile``, or multiply-adds or
parameters computed from the network) and the target ``ref``. The logarithms want costs above 1:
the units are milliseconds and millions.
"""
import torch

from ..spaces.cnn import resources

# Per cost: the table's key, the factor to the unit, the unit's name.
COSTS = {"latency": ("seconds", 1e3, "ms"), "flops": ("macs", 1e-6, "M multiply-adds"),
         "params": ("params", 1e-6, "M parameters")}


def mul_log_loss(ce, expected, reference, scale=0.2, power=0.3):
    r"""The authors' ``mul#log``: :math:`scale \cdot ce \cdot (\log expected / \log
    reference)^{power}`."""
    return scale * ce * (torch.log(expected) / torch.log(torch.as_tensor(
        reference, dtype=expected.dtype, device=expected.device))) ** power


class HardwareLoss:
    """An architect's ``loss_fn(model, batch)``: ``mul_log_loss`` of the model's loss and its
    expected ``cost`` ("latency", "flops" or "params") against ``reference`` (in the cost's
    unit). ``table``: the cost table (``resources.load_table``); None computes multiply-adds
    and parameters from ``model`` at ``image_size``. Refuses (ValueError) a table without the
    cost, a reference not above 1, and a network whose expected cost is not above 1."""

    def __init__(self, model, cost, reference, table=None, image_size=32):
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
        self.key, self.unit, self.words = COSTS[cost]
        if not reference > 1:
            raise ValueError(f"reference must be above 1 {self.words}, got {reference!r}")
        if table is None:
            if cost == "latency":
                raise ValueError("cost latency needs a measured table (darts-fast profile)")
            table = resources.supernet_costs(model, image_size)
        if self.key not in table["fixed"]:
            raise ValueError(f"the table holds {sorted(table['fixed'])}, not the {self.key} "
                             f"that cost {cost} reads")
        self.table, self.cost, self.reference = table, cost, reference
        with torch.no_grad():
            start = float(self.expected(model))
        if not start > 1:
            raise ValueError(f"the network's expected {cost} is {start:.4g} {self.words}; "
                             f"mul#log takes its logarithm and needs it above 1")

    def expected(self, model):
        """E[cost] of ``model``'s alphas, in the cost's unit (differentiable)."""
        return resources.expected_cost(model.alphas_normal, model.alphas_reduce, self.table,
                                       self.key) * self.unit

    def __call__(self, model, batch):
        return mul_log_loss(model._loss(*batch), self.expected(model), self.reference)
