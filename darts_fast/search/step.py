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
logits returned are the weight step's either way. ``weight_context``, a callable returning a
context manager, is entered around the weight step's forward and backward passes (SDARTS' noise
on the architecture weights, ``search.alpha_noise``).

Batches of another structure (the recurrent cell's ``(hidden, input, target)``, a dict, nestings
of these) go whole through ``step.step_batches(train_batch, valid_batch, lr)``: the weight step's
loss is ``loss_fn(model, train_batch)``, which returns the loss or ``(loss, output)``, and the
architect's ``step_batches`` takes both batches (``darts_fast.Architect`` with its own
``loss_fn``). The call returns ``(loss, output)``, output None where ``loss_fn`` gives none;
``step.architecture_output`` is then what the architect's ``step_batches`` returned (the
validation pass's output: the recurrent search carries its next validation hidden state).
Without ``loss_fn`` the loss is the original's ``criterion(model(x), y)`` on a batch ``(x, y)``,
and the output the logits. ``model`` here is the one given, DDP wrapper included.

On a GPU this step is thousands of small kernels (8 cells x 14 edges x up to 8 candidates, five
passes for second order): launching them takes longer than running them. With ``cuda_graph``
(the default on CUDA) each input shape runs eagerly for ``warmup`` calls (cuDNN's algorithm
choices, optimizer state and the architect's buffers settle), then the whole step is captured into
one CUDA graph and replayed from then on, the inputs copied into its static buffers. ``lr`` reaches
the architect as a device tensor, so a new rate needs no new graph; the weight optimizer's rates
are baked into the captured SGD kernels, so a graph is captured again when a scheduler changes
them (once an epoch in DARTS). A shape keeps one graph, for its latest rates: the recurrent
search, whose rate follows the sequence length, keeps one per length. Each captured shape keeps
its own memory pool, about one eager step's activations. Eager everywhere else (CPU included),
with the same numbers. A model whose ``capturable`` attribute is False
(``darts_fast.GDASNetwork``: its forward pass reads the sampled candidates on the host) always
runs eagerly.

The batches may hold values other than tensors (numbers, strings, None): a graph holds those as
they were at its capture, so they belong to the input signature as the shapes do, each value
with its own warm-up and graph. They must be hashable; one that changes at every call keeps the
step eager (make it a tensor).

Nothing inside the step reads a value on the host. A weight step whose loss, gradient or updated
weights are not finite is undone on the device (weights, BatchNorm statistics and optimizer state
as they were) and counted in ``skipped_steps``, a 0-dim device tensor; the architect skips and
counts its own steps the same way (``architect.skipped_steps``). The only exception is a weight
step while some weights have no optimizer state yet (the first step; with GDAS, every step until
each candidate has been sampled once): if it is not finite, the state it created is dropped
again, which reads the flag once.

The returned ``loss`` and output tensors are detached; in graph mode they are the graph's static
outputs, overwritten by the next call (consume or copy them before it).

Several processes (``torchrun``): give the DDP-wrapped model (and the architect built on it).
The weight step goes through DDP, which averages the gradients over the ranks; whether a step is
kept is agreed over the ranks (one all-reduce of a flag), so every rank keeps or undoes it alike.
BatchNorm running statistics stay per rank with ``broadcast_buffers=False``; DDP's default copies
rank 0's at every forward.
"""
import contextlib

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from .. import kernels
from .distributed import all_ranks_agree
from .loss import criterion_loss, loss_and_output
from .skip import all_finite, copy_into, count_skip, state_tensors


class CaptureError(RuntimeError):
    """The step does not run inside a CUDA graph (it synchronises with the host, say)."""


class SearchStep:
    def __init__(self, model, architect, optimizer, criterion=None, grad_clip=5.0, unrolled=True,
                 cuda_graph=None, warmup=3, weights_first=False, loss_fn=None,
                 weight_context=None):
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if loss_fn is None:
            criterion = criterion if criterion is not None else getattr(inner, "_criterion", None)
            if not callable(criterion):
                raise TypeError("SearchStep: give a criterion, or a model with a _criterion "
                                "attribute, as the original Network has, or a loss_fn")
            loss_fn = criterion_loss(criterion)
        elif criterion is not None:
            raise ValueError("SearchStep: give criterion or loss_fn, not both (loss_fn computes "
                             "the whole loss)")
        elif not callable(loss_fn):
            raise TypeError(f"SearchStep: loss_fn must be callable as loss_fn(model, batch), "
                            f"got {type(loss_fn).__name__}")
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
        self.loss_fn, self.grad_clip, self.unrolled = loss_fn, grad_clip, unrolled
        self.cuda_graph, self.warmup, self.weights_first = cuda_graph, warmup, weights_first
        self.weight_context = weight_context or contextlib.nullcontext
        self.skipped_steps = None  # a 0-dim int64 tensor once a step has run
        self._saved = None
        self._lr = torch.zeros((), dtype=torch.float64, device=device) if cuda_graph else None
        self._calls = {}   # input signature -> eager calls so far
        self._graphs = {}  # input signature -> _Graph, for the rates of its latest call
        self.architecture_output = None

    def __call__(self, input_train, target_train, input_valid, target_valid, lr):
        """The original loop body's step; the architect gets the original's
        ``step(input_train, target_train, input_valid, target_valid, ...)``."""
        return self._run(((input_train, target_train), (input_valid, target_valid)), lr,
                         pairs=True)

    def step_batches(self, train_batch, valid_batch, lr):
        """The step on whole batches: ``loss_fn(model, train_batch)`` for the weights, the
        architect's ``step_batches(train_batch, valid_batch, ...)``."""
        if self.architect is not None and not callable(getattr(self.architect, "step_batches",
                                                               None)):
            raise TypeError(f"SearchStep.step_batches: the architect must offer "
                            f"step_batches(train_batch, valid_batch, eta, network_optimizer, "
                            f"unrolled), as darts_fast.Architect does; "
                            f"{type(self.architect).__name__} does not")
        return self._run((train_batch, valid_batch), lr, pairs=False)

    def release_graphs(self):
        """Drops the captured graphs: the next call captures again. For what a graph holds as
        it was at its capture beside the rates: a module's Python settings (a dropout rate),
        optimizer state replaced by ``load_state_dict``, another weight decay."""
        self._graphs.clear()

    def _run(self, batches, lr, pairs):
        loss, output, self.architecture_output = self._outputs(batches, lr, pairs)
        return loss, output

    def _outputs(self, batches, lr, pairs):
        if not self.cuda_graph:
            return self._step(*batches, lr, pairs)
        signature, tensors = _signature(batches, pairs)
        rates = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        graph = self._graphs.get(signature)
        if graph is not None and graph.rates == rates:
            return graph.replay(tensors, self._lr, lr)
        if graph is not None or (self._calls.get(signature, 0) >= self.warmup
                                 and not self._stateless()):
            self._graphs[signature] = None  # its memory pool goes before the new one is made
            self._graphs[signature] = _Graph(self, batches, pairs, rates)
            return self._graphs[signature].replay(tensors, self._lr, lr)
        self._calls[signature] = self._calls.get(signature, 0) + 1
        return _on_side_stream(lambda: self._step(*batches, lr, pairs))

    def _stateless(self):
        """The weights without optimizer state yet: the next weight step creates theirs."""
        return [p for p in self._params() if not self.optimizer.state.get(p)]

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _step(self, train_batch, valid_batch, lr, pairs):
        """``pairs``: the batches are ``(input, target)`` pairs, for the original's
        ``architect.step`` (darts_fast.reference.Architect has no other)."""
        self.model.train()

        def architecture_step():
            if self.architect is None:
                return None
            if pairs:
                self.architect.step(*train_batch, *valid_batch, lr, self.optimizer,
                                    unrolled=self.unrolled)
                return None
            output = self.architect.step_batches(train_batch, valid_batch, lr, self.optimizer,
                                                 unrolled=self.unrolled)
            return pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, output)

        if not self.weights_first:
            architecture_output = architecture_step()
        loss, output = self._weight_step(train_batch)
        if self.weights_first:
            architecture_output = architecture_step()
        return loss, output, architecture_output

    def _weight_step(self, batch):
        model, optimizer = self.model, self.optimizer
        params = self._params()
        buffers = list(model.buffers())
        stateless = self._stateless()
        changed = params + buffers + state_tensors(optimizer, params)
        self._saved = copy_into(self._saved, changed)
        optimizer.zero_grad()
        with self.weight_context():
            loss, output = loss_and_output(self.loss_fn(model, batch),
                                           "SearchStep: loss_fn(model, batch)")
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
        return loss.detach(), pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, output)


def _signature(batches, pairs):
    """What a captured graph holds fixed, as a hashable key: the call's form, the batches'
    structure, the shape, dtype and device of each tensor leaf, and the other leaves with their
    types (1, 1.0 and True are equal but may run differently). Also the tensor leaves, in the
    order the graph's static inputs take them."""
    leaves, spec = pytree.tree_flatten(batches)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    constants = tuple((type(leaf), leaf) for leaf in leaves if not isinstance(leaf, torch.Tensor))
    signature = (pairs, spec, constants, tuple((t.shape, t.dtype, t.device) for t in tensors))
    try:
        hash(signature)
    except TypeError:
        kinds = sorted({type(leaf).__name__ for _, leaf in constants})
        raise TypeError(f"SearchStep: with cuda_graph the batches' values other than tensors "
                        f"must be hashable (a graph holds them as they were at its capture), "
                        f"got {', '.join(kinds)}; make them tensors, or give "
                        f"cuda_graph=False") from None
    return signature, tensors


class _Graph:
    """One captured step: static input tensors (the batches' tensor leaves, the other leaves
    kept as they are), the CUDA graph, its static outputs."""

    def __init__(self, search_step, batches, pairs, rates):
        self.rates = rates
        leaves, spec = pytree.tree_flatten(batches)
        leaves = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        self.inputs = [t for t in leaves if isinstance(t, torch.Tensor)]
        static = pytree.tree_unflatten(leaves, spec)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (a DataLoader's pinning thread) may go on.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = search_step._step(*static, search_step._lr, pairs)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CaptureError(f"SearchStep: the step could not be captured into a CUDA graph "
                               f"({first}); cuda_graph=False runs it eagerly") from e

    def replay(self, tensors, lr_tensor, lr):
        for static, t in zip(self.inputs, tensors):
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
    for t in pytree.tree_leaves(outputs):
        if isinstance(t, torch.Tensor):
            t.record_stream(torch.cuda.current_stream())
    return outputs
