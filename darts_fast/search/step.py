r"""One DARTS search step as one call, replayed from a CUDA graph on the GPU.

The body of the original ``train_search.py`` loop::

    architect.step(input_train, target_train, input_valid, target_valid, lr, optimizer, unrolled)
    optimizer.zero_grad()
    logits = model(input_train)
    loss = criterion(logits, target_train)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()

becomes ``loss, logits = step(input_train, target_train, input_valid, target_valid, lr)`` with
``step = SearchStep(model, architect, optimizer, grad_clip=5.0, unrolled=True)``. With
``architect=None`` it is the weight step alone (PC-DARTS' first epochs, before the architecture
steps begin); the validation batch is then not used. ``weights_first=True`` takes the weight step
first and the architecture step after it, on the weights just updated (GDAS' order); the loss and
logits returned are the weight step's either way.

On a GPU this step is thousands of small kernels (8 cells x 14 edges x up to 8 candidates, five
passes for second order): launching them takes longer than running them. With ``cuda_graph``
(the default on CUDA) each input shape runs eagerly for ``warmup`` calls (cuDNN's algorithm
choices, optimizer state and the architect's buffers settle), then the whole step is captured into
one CUDA graph and replayed from then on, the inputs copied into its static buffers. ``lr`` reaches
the architect as a device tensor, so a new rate needs no new graph; the weight optimizer's rates
are baked into the captured SGD kernels, so a graph is captured again when a scheduler changes
them (once an epoch in DARTS). Each captured shape keeps its own memory pool, about one eager
step's activations. Eager everywhere else (CPU included), with the same numbers. A model whose
``capturable`` attribute is False (``darts_fast.GDASNetwork``: its forward pass reads the sampled
candidates on the host) always runs eagerly.

Nothing inside the step reads a value on the host. A weight step whose loss, gradient or updated
weights are not finite is undone on the device (weights, BatchNorm statistics and optimizer state
as they were) and counted in ``skipped_steps``, a 0-dim device tensor; the architect skips and
counts its own steps the same way (``architect.skipped_steps``). The only exception is a weight
step while some weights have no optimizer state yet (the first step; with GDAS, every step until
each candidate has been sampled once): if it is not finite, the state it created is dropped
again, which reads the flag once.

The returned ``loss`` and ``logits`` are detached; in graph mode they are the graph's static
outputs, overwritten by the next call (consume or copy them before it).

Several processes (``torchrun``): give the DDP-wrapped model (and the architect built on it).
The weight step goes through DDP, which averages the gradients over the ranks; whether a step is
kept is agreed over the ranks (one all-reduce of a flag), so every rank keeps or undoes it alike.
BatchNorm running statistics stay per rank with ``broadcast_buffers=False``; DDP's default copies
rank 0's at every forward.
"""
import torch
import torch.nn as nn

from .. import kernels
from .distributed import all_ranks_agree
from .skip import all_finite, copy_into, count_skip, state_tensors


class CaptureError(RuntimeError):
    """The step does not run inside a CUDA graph (it synchronises with the host, say)."""


class SearchStep:
    def __init__(self, model, architect, optimizer, criterion=None, grad_clip=5.0, unrolled=True,
                 cuda_graph=None, warmup=3, weights_first=False):
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        criterion = criterion if criterion is not None else getattr(inner, "_criterion", None)
        if not callable(criterion):
            raise TypeError("SearchStep: give a criterion, or a model with a _criterion "
                            "attribute, as the original Network has")
        if grad_clip is not None and not grad_clip >= 0:
            raise ValueError(f"SearchStep: grad_clip must be a number >= 0 or None, got "
                             f"{grad_clip!r}")
        if not (isinstance(warmup, int) and warmup >= 1):
            raise ValueError(f"SearchStep: warmup must be an integer >= 1, got {warmup!r}")
        device = next(model.parameters()).device
        capturable = getattr(inner, "capturable", True)
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and capturable
        if cuda_graph and not capturable:
            raise ValueError(f"SearchStep: cuda_graph=True, but {type(inner).__name__} reads the "
                             f"host in its forward pass, which a CUDA graph cannot capture")
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"SearchStep: cuda_graph=True needs the model on a CUDA device, "
                             f"it is on {device}")
        self.model, self.architect, self.optimizer = model, architect, optimizer
        self.process_group = model.process_group \
            if isinstance(model, nn.parallel.DistributedDataParallel) else None
        self.criterion, self.grad_clip, self.unrolled = criterion, grad_clip, unrolled
        self.cuda_graph, self.warmup, self.weights_first = cuda_graph, warmup, weights_first
        self.skipped_steps = None  # a 0-dim int64 tensor once a step has run
        self._saved = None
        self._lr = torch.zeros((), dtype=torch.float64, device=device) if cuda_graph else None
        self._calls = {}   # input signature -> eager calls so far
        self._graphs = {}  # input signature -> _Graph, for the optimizer's current rates

    def __call__(self, input_train, target_train, input_valid, target_valid, lr):
        inputs = (input_train, target_train, input_valid, target_valid)
        if not self.cuda_graph:
            return self._step(*inputs, lr)
        signature = tuple((t.shape, t.dtype, t.device) for t in inputs)
        rates = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        graph = self._graphs.get(signature)
        if graph is not None and graph.rates == rates:
            return graph.replay(inputs, self._lr, lr)
        if graph is not None or (self._calls.get(signature, 0) >= self.warmup
                                 and not self._stateless()):
            self._graphs = {s: g for s, g in self._graphs.items() if g.rates == rates}
            self._graphs[signature] = _Graph(self, inputs, rates)
            return self._graphs[signature].replay(inputs, self._lr, lr)
        self._calls[signature] = self._calls.get(signature, 0) + 1
        return _on_side_stream(lambda: self._step(*inputs, lr))

    def _stateless(self):
        """The weights without optimizer state yet: the next weight step creates theirs."""
        return [p for p in self._params() if not self.optimizer.state.get(p)]

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _step(self, input_train, target_train, input_valid, target_valid, lr):
        self.model.train()

        def architecture_step():
            if self.architect is not None:
                self.architect.step(input_train, target_train, input_valid, target_valid, lr,
                                    self.optimizer, unrolled=self.unrolled)

        if not self.weights_first:
            architecture_step()
        outputs = self._weight_step(input_train, target_train)
        if self.weights_first:
            architecture_step()
        return outputs

    def _weight_step(self, x, y):
        model, optimizer = self.model, self.optimizer
        params = self._params()
        buffers = list(model.buffers())
        stateless = self._stateless()
        changed = params + buffers + state_tensors(optimizer, params)
        self._saved = copy_into(self._saved, changed)
        optimizer.zero_grad()
        logits = model(x)
        loss = self.criterion(logits, y)
        loss.backward()
        with_grad = [p for p in model.parameters() if p.grad is not None]
        if self.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(with_grad, self.grad_clip)
        else:
            grad_norm = kernels.multi_tensor_norm([p.grad for p in with_grad])
        optimizer.step()
        with torch.no_grad():
            finite = all_ranks_agree(
                all_finite([loss, grad_norm, kernels.multi_tensor_norm(params)]),
                self.process_group)
            kernels.multi_tensor_revert_(changed, self._saved, finite)
            self.skipped_steps = count_skip(self.skipped_steps, finite)
        if stateless and not bool(finite):  # the one host read: see the module docstring
            for p in stateless:
                optimizer.state.pop(p, None)
        return loss.detach(), logits.detach()


class _Graph:
    """One captured step: static input buffers, the CUDA graph, its static outputs."""

    def __init__(self, search_step, inputs, rates):
        self.rates = rates
        self.inputs = [t.clone() for t in inputs]
        self.graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (a DataLoader's pinning thread) may go on.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = search_step._step(*self.inputs, search_step._lr)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CaptureError(f"SearchStep: the step could not be captured into a CUDA graph "
                               f"({first}); cuda_graph=False runs it eagerly") from e

    def replay(self, inputs, lr_tensor, lr):
        for static, t in zip(self.inputs, inputs):
            static.copy_(t, non_blocking=True)
        lr_tensor.fill_(lr)
        self.graph.replay()
        return self.outputs


def _on_side_stream(fn):
    """``fn()`` on a side stream, as CUDA graph warm-up wants (lazy initialisations then happen
    outside the stream that captures); ordered with the current stream both ways."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        outputs = fn()
    torch.cuda.current_stream().wait_stream(stream)
    for t in outputs:
        t.record_stream(torch.cuda.current_stream())
    return outputs
