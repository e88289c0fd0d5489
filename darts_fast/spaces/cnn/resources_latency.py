"""Where the search network's candidates sit (their input shapes, from one forward pass) and
their latency measured on a device (``resources_io`` keeps such tables in JSON files;
``resources`` re-exports the public names).

A table (``measure_latency``, ``resources.supernet_costs``) is a dict: ``candidates`` (the
columns), ``edges`` (the (from node, to node) rows), ``cells`` (each cell's kind, ``normal`` or
``reduce``), ``shapes`` (per cell, per edge: the input shape of its mixed op), ``image_size``,
``batch_size``, then ``normal`` and ``reduce``: {key: float64 CPU tensor [edges, candidates]},
summed over the cells of that kind (the alphas of a kind are shared by its cells), and ``fixed``:
{key: float}, the modules outside the candidates.
"""
import contextlib
import copy
import platform
import statistics
import time
from typing import NamedTuple

import torch
import torch.nn as nn

from .architecture import cell_edges

KINDS = ("normal", "reduce")


class _Trace(NamedTuple):
    layout: dict          # the table fields that describe the network
    fixed: list           # (module, input spec or None: never called)
    edges: list           # per cell, per edge: (mixed op, input spec)


def check_int(name, value, least=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _spec(x):
    """(shape, dtype, memory format) of a tensor, enough to make another like it."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)
    return (tuple(x.shape), x.dtype,
            torch.channels_last if channels_last else torch.contiguous_format)


def candidate_spec(op, spec):
    """The input of candidate ``op`` on an edge whose input is ``spec``: the channels of its first
    convolution or BatchNorm (PC-DARTS' candidates see ``C / k`` of the edge's), else the
    edge's (the identity, ``none``)."""
    shape, dtype, memory_format = spec
    for m in op.modules():
        if isinstance(m, nn.Conv2d):
            return (shape[0], m.in_channels, *shape[2:]), dtype, memory_format
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return (shape[0], m.num_features, *shape[2:]), dtype, memory_format
    return spec


@contextlib.contextmanager
def eval_mode(module):
    """``module`` in eval mode for a while, then every submodule's mode as it was."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def structure(network):
    """The candidates, edges and cell kinds, and per cell its mixed ops."""
    try:
        candidates = tuple(network._primitives)
        edges = cell_edges(network._steps)
        cells = list(network.cells)
        kinds = tuple("reduce" if cell.reduction else "normal" for cell in cells)
        mixed = [list(cell._ops) for cell in cells]
        sizes = [[len(op._ops) for op in ops] for ops in mixed]
    except (AttributeError, TypeError) as e:
        raise ValueError(f"network: expected a DARTS search Network (_primitives, _steps, cells "
                         f"with reduction and _ops of mixed ops with _ops); {e}") from None
    for i, ops in enumerate(mixed):
        if len(ops) != len(edges):
            raise ValueError(f"network: cell {i} holds {len(ops)} edges, {len(edges)} expected")
        for e, n in enumerate(sizes[i]):
            if n != len(candidates):
                raise ValueError(f"network: cell {i} edge {e} holds {n} candidates, its "
                                 f"primitives {len(candidates)}")
    return candidates, edges, kinds, mixed


def _fixed_modules(network, mixed):
    """The modules outside the candidates: the network's children but its cells, each cell's
    children but its edges, each mixed op's children but its candidates (with that op)."""
    cells = list(network.cells)
    outer = [m for m in network.children() if m is not network.cells]
    outer += [m for cell in cells for m in cell.children() if m is not cell._ops]
    inner = [(m, op) for ops in mixed for op in ops for m in op.children() if m is not op._ops]
    return outer, inner


def trace(network, image_size=32, batch_size=1):
    """One forward pass of ``network`` (eval mode, no gradients, the global RNG left as it was)
    on a zero batch of ``batch_size`` images of ``image_size``, recording the input of every
    mixed op and every module outside the candidates."""
    check_int("image_size", image_size)
    check_int("batch_size", batch_size)
    candidates, edges, kinds, mixed = structure(network)
    outer, inner = _fixed_modules(network, mixed)
    seen = {}

    def record(module, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(id(module), _spec(args[0]))

    hooks = [m.register_forward_pre_hook(record) for m in outer + sum(mixed, [])]
    ref = next(network.parameters())
    rng_devices = [ref.device] if ref.device.type == "cuda" else []
    try:
        with eval_mode(network), torch.no_grad(), torch.random.fork_rng(rng_devices):
            network(torch.zeros(batch_size, 3, image_size, image_size, dtype=ref.dtype,
                                device=ref.device))
    except RuntimeError as e:
        raise ValueError(f"image_size: the network's forward pass fails on {image_size}x"
                         f"{image_size} images: {e}") from None
    finally:
        for hook in hooks:
            hook.remove()
    idle = [(i, e) for i, ops in enumerate(mixed) for e, op in enumerate(ops) if id(op) not in seen]
    if idle:
        raise ValueError(f"network: the edges (cell, edge) {idle} did not run in a forward pass")
    edge_specs = [[(op, seen[id(op)]) for op in ops] for ops in mixed]
    layout = dict(candidates=candidates, edges=edges, cells=kinds,
                  shapes=tuple(tuple(spec[0] for _, spec in row) for row in edge_specs),
                  image_size=image_size, batch_size=batch_size)
    fixed = [(m, seen.get(id(m))) for m in outer] + [(m, seen[id(op)]) for m, op in inner]
    return _Trace(layout, fixed, edge_specs)


def module_key(module, spec):
    """Modules of one structure and parameter shapes cost the same on one input."""
    return (type(module), repr(module),
            tuple((n, tuple(p.shape)) for n, p in module.named_parameters()), spec)


def tabulate(traced, key, measure):
    """A table of ``key``: ``measure(module, input spec)`` for every candidate but ``none`` and
    every called module outside them, each distinct (``module_key``) measured once."""
    layout, cache = traced.layout, {}

    def value(module, spec):
        k = module_key(module, spec)
        if k not in cache:
            cache[k] = measure(module, spec)
        return cache[k]

    shape = (len(layout["edges"]), len(layout["candidates"]))
    table = {kind: {key: torch.zeros(shape, dtype=torch.float64)} for kind in KINDS}
    for kind, row in zip(layout["cells"], traced.edges):
        for e, (mixed_op, spec) in enumerate(row):
            for k, op in enumerate(mixed_op._ops):
                if layout["candidates"][k] != "none":
                    table[kind][key][e, k] += value(op, candidate_spec(op, spec))
    table["fixed"] = {key: float(sum(value(m, spec) for m, spec in traced.fixed
                                     if spec is not None))}
    return {**layout, **table}


def _seconds(module, spec, device, repeats, warmup):
    """The median over ``repeats`` timed forwards of a copy of ``module`` (eval mode, so that the
    network's modules and statistics are left alone) on a random input like ``spec``."""
    shape, dtype, memory_format = spec
    op = copy.deepcopy(module).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, dtype=dtype, device=device, generator=generator)
    x = x.contiguous(memory_format=memory_format)
    times = []

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for _ in range(warmup):
            op(x)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            op(x)
            synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} {platform.processor() or platform.machine()}, " \
           f"{torch.get_num_threads()} threads"


def measure_latency(network, image_size=32, batch_size=1, device=None, repeats=20, warmup=5):
    """Seconds per forward of every candidate at its input shape (``batch_size`` images of
    ``image_size``), under the key ``seconds``: ``normal``/``reduce`` [edges, candidates] summed
    over the cells of the kind, 0 for ``none``; ``fixed`` the modules outside the candidates
    (stem, preprocessing, pooling, classifier; the cells' sums and concatenations are not timed).
    Each time is the median of ``repeats`` forwards after ``warmup`` more, on ``device`` (default:
    the network's), CUDA synchronised around each; modules of one structure on one input shape
    are timed once. ``device`` also names the device (the table's ``device``)."""
    check_int("repeats", repeats)
    check_int("warmup", warmup, 0)
    traced = trace(network, image_size, batch_size)
    device = torch.device(device) if device is not None else next(network.parameters()).device
    table = tabulate(traced, "seconds",
                     lambda module, spec: _seconds(module, spec, device, repeats, warmup))
    return {**table, "device": device_name(device)}
