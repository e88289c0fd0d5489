"""DARTS' recurrent cell of a genotype and its language model as the authors wrote them
(quark0/darts ``rnn/model.py``, with the dropouts of ``rnn/utils.py``): the variational masks,
locked dropout, embedded dropout and the decoder tied to the embedding. The search cell and model
(``rnn/model_search.py``) build on these: the fused one in ``spaces.rnn.search_model``, the
authors' in ``reference.rnn``. Nothing here is fused: a genotype's node computes one activation,
not the search cell's four per edge.

Where it departs from the original, for current PyTorch and for the tests:
  * the variational masks are drawn as the original's ``mask2d`` draws them (CPU generator,
    float32), then moved to the input's device and dtype instead of ``.cuda()``;
  * ``embedded_dropout`` looks the words up with ``F.embedding`` and the embedding's own
    ``padding_idx`` (None), where the original passed ``-1`` (its "no padding" then) to the
    removed ``embed._backend``: ``-1`` would now make the last word a padding index. Its
    ``scale`` argument, which no caller passes, is left out;
  * ``F.tanh``, ``F.sigmoid`` and ``Variable`` become ``torch.tanh``, ``torch.sigmoid`` and
    tensors; the constructor's ``assert``s are ``ValueError``s naming the argument, and a
    genotype is validated (``spaces.rnn.genotypes.validate_genotype``) before its cell is built.
Kept on purpose: the highway term on the unmasked state; masks drawn in training mode even when
a dropout is 0; ``init_weights`` drawing the tied embedding twice, after ``nn.Embedding`` and
``nn.Linear`` drew their own initialisations.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotypes import STEPS, validate_genotype

INITRANGE = 0.04

_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid,
                "identity": lambda x: x}


def mask2d(B, D, keep_prob, like):
    """A variational dropout mask [B, D]: ``floor(U + keep_prob) / keep_prob`` with U uniform on
    [0, 1) (CPU generator, float32): ``1 / keep_prob`` with probability ``keep_prob``, else 0;
    returned on ``like``'s device and dtype."""
    m = torch.floor(torch.rand(B, D) + keep_prob) / keep_prob
    return m.to(device=like.device, dtype=like.dtype)


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence: ``x * m / (1 - dropout)``, ``m`` ~ Bernoulli(1 -
    dropout) of shape [1, B, D] (drawn on ``x``'s device), the same at every time step; the
    identity in eval mode or for ``dropout = 0``."""

    def forward(self, x, dropout=0.5):
        if not self.training or not dropout:
            return x
        m = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - dropout)
        mask = m.div_(1 - dropout).expand_as(x)
        return mask * x


def embedded_dropout(embed, words, dropout=0.1):
    """Word dropout: ``(m * W)[words]``, ``W = embed.weight`` [ntoken, ninp], ``m`` [ntoken, 1]
    ~ Bernoulli(1 - dropout) / (1 - dropout) (drawn on ``W``'s device): a dropped word's
    embedding is zero wherever it occurs in the batch."""
    if dropout:
        mask = embed.weight.new_empty((embed.weight.size(0), 1)).bernoulli_(1 - dropout)
        mask = mask.expand_as(embed.weight) / (1 - dropout)
        masked_embed_weight = mask * embed.weight
    else:
        masked_embed_weight = embed.weight
    return F.embedding(words, masked_embed_weight, embed.padding_idx, embed.max_norm,
                       embed.norm_type, embed.scale_grad_by_freq, embed.sparse)


class DARTSCell(nn.Module):
    r"""The recurrent cell of ``genotype`` over a sequence ``inputs`` [T, B, ninp] from
    ``hidden`` [1, B, nhid]. Per time step, with ``h = h_{t-1}``:
    ``[c0, h0] = [x_t * x_mask, h * h_mask] @ _W0``, ``s_0 = h + sigmoid(c0) * (tanh(h0) - h)``;
    node ``i`` with ``(f, j)``: ``[c, z] = (s_j * h_mask) @ _Ws[i-1]``,
    ``s_i = s_j + sigmoid(c) * (f(z) - s_j)``; ``h_t = mean(s_k for k in concat)``.
    In training mode the masks (``mask2d``, keep probabilities ``1 - dropoutx`` and
    ``1 - dropouth``) are drawn once per call; in eval mode there are none. ``genotype=None``
    (the search cell, a subclass) gives ``STEPS`` node matrices."""

    def __init__(self, ninp, nhid, dropouth, dropoutx, genotype):
        super().__init__()
        self.nhid = nhid
        self.dropouth = dropouth
        self.dropoutx = dropoutx
        self.genotype = genotype
        if genotype is not None:
            validate_genotype(genotype)
        steps = len(genotype.recurrent) if genotype is not None else STEPS
        self._W0 = nn.Parameter(
            torch.empty(ninp + nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE))
        self._Ws = nn.ParameterList([
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE))
            for _ in range(steps)])

    def forward(self, inputs, hidden):
        """``(hiddens [T, B, nhid], hiddens[-1] [1, B, nhid])``."""
        T, B = inputs.size(0), inputs.size(1)
        if self.training:
            x_mask = mask2d(B, inputs.size(2), 1. - self.dropoutx, inputs)
            h_mask = mask2d(B, hidden.size(2), 1. - self.dropouth, inputs)
        else:
            x_mask = h_mask = None
        hidden = hidden[0]
        hiddens = []
        for t in range(T):
            hidden = self.cell(inputs[t], hidden, x_mask, h_mask)
            hiddens.append(hidden)
        hiddens = torch.stack(hiddens)
        return hiddens, hiddens[-1].unsqueeze(0)

    def _compute_init_state(self, x, h_prev, x_mask, h_mask):
        if self.training:
            xh_prev = torch.cat([x * x_mask, h_prev * h_mask], dim=-1)
        else:
            xh_prev = torch.cat([x, h_prev], dim=-1)
        c0, h0 = torch.split(xh_prev.mm(self._W0), self.nhid, dim=-1)
        c0 = c0.sigmoid()
        h0 = h0.tanh()
        return h_prev + c0 * (h0 - h_prev)

    def _get_activation(self, name):
        return _ACTIVATIONS[name]

    def cell(self, x, h_prev, x_mask, h_mask):
        s0 = self._compute_init_state(x, h_prev, x_mask, h_mask)
        states = [s0]
        for i, (name, pred) in enumerate(self.genotype.recurrent):
            s_prev = states[pred]
            if self.training:
                ch = (s_prev * h_mask).mm(self._Ws[i])
            else:
                ch = s_prev.mm(self._Ws[i])
            c, h = torch.split(ch, self.nhid, dim=-1)
            c = c.sigmoid()
            h = self._get_activation(name)(h)
            states.append(s_prev + c * (h - s_prev))
        return torch.mean(torch.stack([states[i] for i in self.genotype.concat], -1), -1)


class RNNModel(nn.Module):
    """DARTS' language model: ``log_softmax(decoder(lockdrop(rnn(lockdrop(e, dropouti)),
    dropout)))`` with ``e = embedded_dropout(encoder, input, dropoute)`` (``dropoute`` in training
    mode only) and the decoder's weight tied to the encoder's. ``cell_cls=DARTSCell`` needs a
    ``genotype``; another cell class (the search cell) takes none."""

    def __init__(self, ntoken, ninp, nhid, nhidlast, dropout=0.5, dropouth=0.5, dropoutx=0.5,
                 dropouti=0.5, dropoute=0.1, cell_cls=DARTSCell, genotype=None):
        super().__init__()
        if not ninp == nhid == nhidlast:
            raise ValueError(f"{type(self).__name__}: ninp, nhid and nhidlast must be equal (one "
                             f"cell, decoder tied to the embedding), got {ninp}, {nhid}, "
                             f"{nhidlast}")
        if cell_cls is DARTSCell and genotype is None:
            raise ValueError(f"{type(self).__name__}: cell_cls=DARTSCell needs a genotype "
                             f"(expected a Genotype(recurrent, concat), got None)")
        if cell_cls is not DARTSCell and genotype is not None:
            raise ValueError(f"{type(self).__name__}: genotype must be None for cell_cls="
                             f"{cell_cls.__name__}, which holds every activation; got "
                             f"{genotype!r}")
        self.lockdrop = LockedDropout()
        self.encoder = nn.Embedding(ntoken, ninp)
        if cell_cls is DARTSCell:
            rnns = [cell_cls(ninp, nhid, dropouth, dropoutx, genotype)]
        else:
            rnns = [cell_cls(ninp, nhid, dropouth, dropoutx)]
        self.rnns = nn.ModuleList(rnns)
        self.decoder = nn.Linear(ninp, ntoken)
        self.decoder.weight = self.encoder.weight
        self.init_weights()

        self.ninp = ninp
        self.nhid = nhid
        self.nhidlast = nhidlast
        self.dropout = dropout
        self.dropouti = dropouti
        self.dropoute = dropoute
        self.ntoken = ntoken
        self.cell_cls = cell_cls

    def init_weights(self):
        with torch.no_grad():
            self.encoder.weight.uniform_(-INITRANGE, INITRANGE)
            self.decoder.bias.fill_(0)
            self.decoder.weight.uniform_(-INITRANGE, INITRANGE)

    def forward(self, input, hidden, return_h=False):
        """``input`` [T, B] word indices, ``hidden`` a list of [1, B, nhid] (one per cell):
        ``(log_prob [T, B, ntoken], next hidden list)``; with ``return_h`` also the cells' raw
        outputs and the dropped output."""
        batch_size = input.size(1)
        emb = embedded_dropout(self.encoder, input, dropout=self.dropoute if self.training else 0)
        emb = self.lockdrop(emb, self.dropouti)

        raw_output = emb
        new_hidden = []
        raw_outputs = []
        outputs = []
        for layer, rnn in enumerate(self.rnns):
            raw_output, new_h = rnn(raw_output, hidden[layer])
            new_hidden.append(new_h)
            raw_outputs.append(raw_output)
        hidden = new_hidden

        output = self.lockdrop(raw_output, self.dropout)
        outputs.append(output)

        logit = self.decoder(output.view(-1, self.ninp))
        log_prob = F.log_softmax(logit, dim=-1)
        model_output = log_prob.view(-1, batch_size, self.ntoken)
        if return_h:
            return model_output, hidden, raw_outputs, outputs
        return model_output, hidden

    def init_hidden(self, bsz):
        """``[zeros(1, bsz, nhid)]`` on the weights' device and dtype."""
        weight = next(self.parameters())
        return [weight.new_zeros(1, bsz, self.nhid)]
