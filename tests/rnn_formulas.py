"""DARTS' recurrent cell and language model (quark0/darts ``rnn/``) written out by hand, in plain
tensor arithmetic on a dict of named weights, one state, node, edge and activation at a time:
the independent side of the recurrent reference's tests. Nothing here imports darts_fast."""
import torch

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]  # alpha columns 1..4 (column 0: none)
STEPS = 8
EPS = 1e-5  # BatchNorm1d's default


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def activation(name, x):
    if name == "tanh":
        return torch.tanh(x)
    if name == "relu":
        return torch.where(x > 0, x, torch.zeros_like(x))
    if name == "sigmoid":
        return sigmoid(x)
    return x


def softmax_rows(a):
    e = torch.exp(a - a.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


class BatchNorm:
    """Affine-free batch normalisation of [B, n] rows shared by every call: in training mode
    ``(x - mean_B) / sqrt(var_B + eps)`` (biased variance) and the running estimates
    ``r <- 0.9 r + 0.1 stat`` (the unbiased variance); in eval mode the running estimates."""

    def __init__(self, n, dtype, training=True):
        self.mean = torch.zeros(n, dtype=dtype)
        self.var = torch.ones(n, dtype=dtype)
        self.count = 0
        self.training = training

    def __call__(self, x):
        if not self.training:
            return (x - self.mean) / torch.sqrt(self.var + EPS)
        B = x.shape[0]
        mean = x.sum(0) / B
        d = x - mean
        var = (d * d).sum(0) / B
        self.mean = 0.9 * self.mean + 0.1 * mean.detach()
        self.var = 0.9 * self.var + 0.1 * var.detach() * B / (B - 1)
        self.count += 1
        return d / torch.sqrt(var + EPS)


def first_state(p, x, h, x_mask, h_mask):
    """``s0 = h + sigmoid(c0) * (tanh(h0) - h)``, ``[c0, h0] = [x*x_mask, h*h_mask] @ W0``."""
    n = h.shape[1]
    a = torch.cat([x * x_mask, h * h_mask], dim=1) @ p["rnns.0._W0"]
    return h + sigmoid(a[:, :n]) * (torch.tanh(a[:, n:]) - h)


def search_step(p, alphas, bn, x, h, x_mask, h_mask):
    """One time step of the search cell: node i sums, over the activations k and the states j
    before it, ``softmax(alphas)[row_i + j, k] * (s_j + sigmoid(c) * (f_k(z) - s_j))`` with
    ``[c, z] = (s_j * h_mask) @ Ws[i]``, then ``bn``; the output is the mean of nodes 1..8."""
    n = h.shape[1]
    probs = softmax_rows(alphas)
    states = [bn(first_state(p, x, h, x_mask, h_mask))]
    row = 0
    for i in range(STEPS):
        W = p[f"rnns.0._Ws.{i}"]
        node = torch.zeros_like(h)
        for k, name in enumerate(ACTIVATIONS, start=1):
            for j, s in enumerate(states):
                a = (s * h_mask) @ W
                node = node + probs[row + j, k] * (
                    s + sigmoid(a[:, :n]) * (activation(name, a[:, n:]) - s))
        states.append(bn(node))
        row += i + 1
    return sum(states[1:]) / STEPS


def genotype_step(p, genotype, x, h, x_mask, h_mask):
    """One time step of the cell of ``genotype``: node i from its one predecessor j,
    ``s_i = s_j + sigmoid(c) * (f(z) - s_j)``; the output is the mean of the ``concat`` states."""
    n = h.shape[1]
    states = [first_state(p, x, h, x_mask, h_mask)]
    for i, (name, j) in enumerate(genotype.recurrent):
        s = states[j]
        a = (s * h_mask) @ p[f"rnns.0._Ws.{i}"]
        states.append(s + sigmoid(a[:, :n]) * (activation(name, a[:, n:]) - s))
    return sum(states[k] for k in genotype.concat) / len(genotype.concat)


def ones_masks(ntoken, batch, n, dtype):
    """The masks of a model without dropout (or in eval mode)."""
    return {"embedding": torch.ones(ntoken, 1, dtype=dtype),
            "input": torch.ones(1, batch, n, dtype=dtype),
            "x": torch.ones(batch, n, dtype=dtype), "h": torch.ones(batch, n, dtype=dtype),
            "output": torch.ones(1, batch, n, dtype=dtype)}


def language_model(p, step, tokens, hidden, masks):
    """``log_softmax(E (o_t * m_out) + b)`` [T*B, ntoken] and the last hidden state [B, n], with
    ``o_t = step(e_t, o_{t-1}, x_mask, h_mask)``, ``e_t = ((m_emb * E)[tokens_t]) * m_in``, ``E``
    the embedding (the tied decoder weight)."""
    E = p["encoder.weight"]
    emb = (masks["embedding"] * E)[tokens] * masks["input"]
    h = hidden
    outputs = []
    for t in range(tokens.shape[0]):
        h = step(emb[t], h, masks["x"], masks["h"])
        outputs.append(h)
    out = (torch.stack(outputs) * masks["output"]).reshape(-1, h.shape[1])
    logits = out @ E.t() + p["decoder.bias"]
    top = logits.max(dim=1, keepdim=True).values
    log_prob = logits - top - torch.log(torch.exp(logits - top).sum(dim=1, keepdim=True))
    return log_prob, h


def nll(log_prob, target):
    """``-mean_i log_prob[i, target_i]``."""
    return -log_prob[torch.arange(target.shape[0]), target].sum() / target.shape[0]


def search_model(p, alphas, bn, tokens, hidden, masks):
    """``language_model`` on the search cell."""
    return language_model(p, lambda x, h, xm, hm: search_step(p, alphas, bn, x, h, xm, hm),
                          tokens, hidden, masks)


def genotype_model(p, genotype, tokens, hidden, masks):
    """``language_model`` on the cell of ``genotype``."""
    return language_model(p, lambda x, h, xm, hm: genotype_step(p, genotype, x, h, xm, hm),
                          tokens, hidden, masks)


def search_loss(p, alphas, hidden, tokens, target):
    """The search model's training-mode loss without dropout and its next hidden state
    [B, n]: ``(nll, h_T)``."""
    n = hidden.shape[1]
    masks = ones_masks(p["encoder.weight"].shape[0], hidden.shape[0], n, hidden.dtype)
    log_prob, h = search_model(p, alphas, BatchNorm(n, hidden.dtype), tokens, hidden, masks)
    return nll(log_prob, target), h
