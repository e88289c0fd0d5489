"""The recurrent search's benchmark cases (quark0/darts ``rnn/``), for ``family.py``: one node of
the search cell forward + backward, and one whole search step (architect step, then the weight
step with TAR and clipping), each as the authors' code computes it and on darts_fast."""
import types

import torch
import torch.nn.functional as F

from darts_fast import kernels, reference
from darts_fast.search.rnn_architect import RNNArchitect
from darts_fast.search.rnn_loss import weight_loss
from darts_fast.search.step import SearchStep
from darts_fast.spaces.rnn.search_model import RNNModelSearch

# The CPU shapes (batch 64, bptt 35, 300 units, PTB's 10,000 words) and on CUDA the
# authors' search batch of 256.
RNN_CONFIG = {"cpu": dict(ntoken=10000, nhid=300, batch=64, bptt=35),
              "cuda": dict(ntoken=10000, nhid=300, batch=256, bptt=35)}
ARGS = types.SimpleNamespace(wdecay=5e-7, clip=0.25, arch_lr=3e-3, arch_wdecay=1e-3)
DROPOUTS = (0.75, 0.25, 0.75, 0.2, 0.0)  # the search's dropout, dropouth, dropoutx, dropouti, e
LR, BETA = 20.0, 1e-3


def python_node(states, ch, probs):
    """The authors' loop for one node (``model_search.py``): each activation's highway terms
    materialised, weighted and summed over the predecessors, then over the activations."""
    H = states.shape[-1]
    c, h = ch[..., :H].sigmoid(), ch[..., H:]
    s = torch.zeros_like(states[0])
    for k, fn in enumerate((torch.tanh, torch.relu, torch.sigmoid, lambda x: x)):
        s = s + torch.sum(probs[:, k, None, None] * (states + c * (fn(h) - states)), dim=0)
    return s


def node(impl, device, config, predecessors=8):
    """The last node of the cell (8 predecessors) forward + backward."""
    g = torch.Generator().manual_seed(0)
    B, H = config["batch"], config["nhid"]
    states = torch.randn(predecessors, B, H, generator=g).to(device).requires_grad_()
    ch = torch.randn(predecessors, B, 2 * H, generator=g).to(device).requires_grad_()
    probs = torch.softmax(torch.randn(predecessors, 4, generator=g), -1).to(device)
    probs.requires_grad_()
    grad = torch.randn(B, H, generator=g).to(device)
    fn = {"reference": python_node, "compiled_reference": torch.compile(python_node),
          "fused": kernels.rnn_node}[impl]

    def run():
        fn(states, ch, probs).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return states.grad
    return run


def search_step(impl, device, config, unrolled=True):
    """One search step on a ``bptt`` x ``batch`` batch, the hidden states carried: the original
    loop body on the authors' model and architect ('reference'), or darts_fast's SearchStep
    (captured into a CUDA graph on a GPU)."""
    V, H, B, T = config["ntoken"], config["nhid"], config["batch"], config["bptt"]
    g = torch.Generator().manual_seed(1)
    x, xv = (torch.randint(0, V, (T, B), generator=g).to(device) for _ in range(2))
    y, yv = (torch.randint(0, V, (T * B,), generator=g).to(device) for _ in range(2))
    torch.manual_seed(0)
    fused = impl == "fused"
    model = (RNNModelSearch if fused else reference.RNNModelSearch)(V, H, H, H, *DROPOUTS)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=ARGS.wdecay)
    state = {"hidden": model.init_hidden(B), "valid": model.init_hidden(B)}
    if fused:
        step = SearchStep(model, RNNArchitect(model, ARGS), optimizer, grad_clip=ARGS.clip,
                          unrolled=unrolled, loss_fn=weight_loss(BETA))

        def body():
            loss, (state["hidden"], _) = step.step_batches((state["hidden"], x, y),
                                                           (state["valid"], xv, yv), LR)
            state["valid"] = step.architecture_output
            return loss
    else:
        architect = reference.RNNArchitect(model, ARGS)

        def body():
            model.train()
            valid, _ = architect.step(state["hidden"], x, y, state["valid"], xv, yv, optimizer,
                                      unrolled)
            optimizer.zero_grad()
            log_prob, hidden, raw, _ = model(x, state["hidden"], return_h=True)
            loss = F.nll_loss(log_prob.view(-1, V), y)
            (loss + BETA * (raw[-1][1:] - raw[-1][:-1]).pow(2).mean()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ARGS.clip)
            optimizer.step()
            state["hidden"] = [h.detach() for h in hidden]
            state["valid"] = [h.detach() for h in valid]
            return loss.detach()

    def run():
        loss = body()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss
    if fused and device.type == "cuda":
        for _ in range(step.warmup):  # the eager warm-up calls; the next call captures
            run()
    return run
