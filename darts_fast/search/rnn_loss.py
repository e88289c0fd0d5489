r"""The weight step's loss of DARTS' recurrent search (quark0/darts ``rnn/train_search.py``) as a
``loss_fn`` for ``SearchStep``: the negative log-likelihood of the batch plus activation
regularisation (AR) and temporal activation regularisation (TAR) on the cell's outputs,

.. math::
    L = NLL + a\, \mathrm{mean}(o^2) + b\, \mathrm{mean}((h_{t+1} - h_t)^2),

with :math:`h` the cell's outputs [T, B, nhid] (``raw_outputs``), :math:`o` those after the output
dropout, ``a`` = ``alpha`` (AR, 0 in the search) and ``b`` = ``beta`` (TAR, 1e-3). The
architect's losses are the NLL alone, as in the original."""
import torch.nn.functional as F


def weight_loss(beta, alpha=0.0):
    """``loss_fn(model, (hidden, input, target))`` returning ``(L, (next hidden, NLL))``, the NLL
    being what the original reports as the training loss."""

    def loss_fn(model, batch):
        hidden, input, target = batch
        log_prob, hidden_next, raw_outputs, outputs = model(input, hidden, return_h=True)
        nll = F.nll_loss(log_prob.view(-1, log_prob.size(2)), target)
        loss = nll
        if alpha > 0:
            loss = loss + alpha * outputs[-1].pow(2).mean()
        if beta > 0:
            h = raw_outputs[-1]
            loss = loss + beta * (h[1:] - h[:-1]).pow(2).mean()
        return loss, (hidden_next, nll)

    return loss_fn
