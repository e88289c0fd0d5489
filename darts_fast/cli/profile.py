"""``darts-fast profile``: the latency of every candidate of the search network, measured on the
device the command runs on, into the table file that ``darts-fast search --method proxyless
--cost latency --cost_table FILE`` reads (``spaces.cnn.resources``: ``measure_latency``,
``save_table``; the search checks it against its own network with ``load_table``).

The network is built as a search with the same ``--method``, ``--init_channels``, ``--layers``
and ``--primitives`` builds it, on the device, in its memory layout there, and its candidates are
timed at the deployment batch (``--batch_size``). The computed MACs and parameter tables are
summed alongside (``--with_costs`` keeps them in the file's ``meta``). Every check of the options
happens before anything is measured or written."""
import argparse
import os

import torch
import torch.nn as nn

from .. import kernels
from .. import methods as methods_
from ..spaces.cnn import resources
from ..spaces.cnn.operations import reduction_cells
from . import cifar10, search_options
from .errors import UsageError
from .options import device_name, non_negative_int, positive_int, thread_count
from .runtime import auto_device, cpu_threads, determinism

# The methods whose network runs every candidate of every edge at the edge's full channels in one
# forward pass, as DARTS' does: the table's edges and candidates are then theirs, and the same
# table serves each of them (the others see a share of the channels, P-DARTS' drop candidates
# between stages, the single-path networks run some edges only).
PROFILED = ("darts", "gdas", "proxyless")


def add_arguments(parser):
    """Adds ``darts-fast profile``'s options to the argparse ``parser``."""
    network = parser.add_argument_group("network (as darts-fast search builds it)")
    network.add_argument("--method", default="proxyless",
                         help=f"the search method whose network is measured: "
                              f"{', '.join(PROFILED)} (default %(default)s)")
    network.add_argument("--init_channels", type=positive_int, default=16,
                         help="channels of the first cell (default %(default)s)")
    network.add_argument("--layers", type=positive_int, default=None,
                         help="cells of the network (default: the method's, 8 for darts and "
                              "proxyless)")
    network.add_argument("--primitives", type=search_options.candidate_list, default=None,
                         metavar="A,B,...",
                         help="the candidates of every edge, as search's --primitives (default: "
                              "DARTS' eight)")
    network.add_argument("--image_size", type=positive_int, default=32,
                         help="the side of the images, in pixels (default %(default)s)")
    timing = parser.add_argument_group("measurement")
    timing.add_argument("--batch_size", type=positive_int, default=1,
                        help="images per forward pass the latency is measured at: the batch "
                             "the found architecture will run at (default %(default)s)")
    timing.add_argument("--device", type=device_name, default=None,
                        help="cpu, cuda or cuda:N, the device the latency is measured on "
                             "(default: cuda when available, else cpu)")
    timing.add_argument("--threads", type=thread_count, default=None,
                        help="CPU threads of torch's operations: a CPU latency depends on them "
                             f"(default: torch's, here {torch.get_num_threads()})")
    timing.add_argument("--repeats", type=positive_int, default=20,
                        help="timed forward passes of each candidate; its latency is their "
                             "median (default %(default)s)")
    timing.add_argument("--warmup", type=non_negative_int, default=5,
                        help="untimed forward passes before them (default %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, metavar="FILE",
                        help="the table file to write (JSON), in an existing folder")
    output.add_argument("--force", action="store_true",
                        help="replace --out if it exists (default: refuse)")
    output.add_argument("--with_costs", action="store_true",
                        help="also keep the MACs and parameter totals in the file's meta "
                             "(default: only printed)")


def run(options):
    """Measures the table and writes it to ``options.out``; prints a summary. Returns 0; raises
    ``UsageError`` (nothing measured or written) for bad options."""
    method = _check(options)
    # cuDNN autotunes its convolutions, as in a search and a deployed network: the warm-up
    # passes absorb the tuning.
    with cpu_threads(options.threads or torch.get_num_threads()), determinism(False):
        device = auto_device(options)
        network = _network(options, method, device)
        table = resources.measure_latency(network, options.image_size, options.batch_size,
                                          device, options.repeats, options.warmup)
        costs = resources.supernet_costs(network, options.image_size)
        threads = torch.get_num_threads()
    uniform = _uniform(table, "seconds")
    totals = {key: {"supernet": _total(costs, key), "uniform": _uniform(costs, key)}
              for key in ("macs", "params")}
    meta = {"command": "darts-fast profile", "torch": torch.__version__, "threads": threads,
            "uniform_seconds": uniform,
            "options": {name: getattr(options, name) for name in (
                "method", "init_channels", "layers", "primitives", "image_size", "batch_size",
                "device", "repeats", "warmup")}}
    meta["options"]["device"] = str(device)
    if options.with_costs:
        meta["costs"] = totals
    resources.save_table(options.out, table, meta)
    _print_summary(options, table, uniform, totals)
    return 0


def _check(options):
    """The method, the layers (the method's default where not given) and the output file,
    checked; every refusal names its option."""
    name = options.method
    registered = methods_.methods()
    if name not in registered:
        raise UsageError(f"--method {name!r} is not a registered method (profile measures "
                         f"{', '.join(PROFILED)})")
    if name not in PROFILED:
        raise UsageError(f"--method {name}: profile measures the networks that run every "
                         f"candidate of every edge at its full channels ({', '.join(PROFILED)}); "
                         f"{name}'s does not")
    method = registered[name]
    if options.layers is None:
        options.layers = method.defaults["layers"]
    # Each reduction cell halves the images; its factorized reduction needs an even side.
    halvings = 2 ** len(reduction_cells(options.layers))
    if options.image_size % halvings:
        raise UsageError(f"--image_size {options.image_size}: the {options.layers} cells reduce "
                         f"{len(reduction_cells(options.layers))} times; the side must be a "
                         f"multiple of {halvings}")
    out = options.out
    if not out or not out.strip():
        raise UsageError("--out: expected a file name, got an empty one")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: the folder {folder!r} does not exist")
    if os.path.isdir(out):
        raise UsageError(f"--out {out}: is a folder, not a file")
    if os.path.lexists(out) and not options.force:
        raise UsageError(f"--out {out}: the file exists; add --force to replace it")
    if not kernels.has_ops():  # the network's forward pass runs the fused operators
        raise UsageError(str(kernels.unavailable("darts-fast profile")))
    return method


def _network(options, method, device):
    """The search network as ``darts-fast search`` builds it with these options: the method's
    own options at its defaults (none of them is profile's)."""
    own = argparse.Namespace(**{name: method.defaults.get(name)
                                for name in search_options.own_options(method)})
    built = dict(method.network_options(own))
    if options.primitives is not None:
        built["primitives"] = options.primitives.split(",")
    try:
        return method.networks()[0](options.init_channels, cifar10.NUM_CLASSES, options.layers,
                                    nn.CrossEntropyLoss(), **built).to(device)
    except ValueError as e:  # options the network refuses, as search reports them
        raise UsageError(str(e)) from None


def _total(table, key):
    """Every candidate of every edge and everything outside them."""
    return table["fixed"][key] + sum(float(table[kind][key].sum()) for kind in ("normal",
                                                                                "reduce"))


def _uniform(table, key):
    """The expected cost of the uniform architecture: fixed, plus per edge the mean over its
    candidates (``none`` among them), as ``expected_cost`` computes it for equal alphas."""
    return table["fixed"][key] + sum(float(table[kind][key].mean(1).sum())
                                     for kind in ("normal", "reduce"))


def _print_summary(options, table, uniform, totals):
    seconds = {name: sum(float(table[kind]["seconds"][:, k].sum()) for kind in ("normal",
                                                                              "reduce"))
               for k, name in enumerate(table["candidates"]) if name != "none"}
    ranked = sorted(seconds, key=seconds.get)
    macs, params = totals["macs"], totals["params"]
    print(f"profiled the {options.method} search network ({options.layers} cells, "
          f"{options.init_channels} channels, {len(table['candidates'])} candidates) on "
          f"{table['device']}, batch {options.batch_size} of {options.image_size}x"
          f"{options.image_size} images")
    print(f"table:     {options.out}")
    print(f"uniform:   {uniform * 1e3:.4g} ms expected latency (fixed "
          f"{table['fixed']['seconds'] * 1e3:.4g} ms + each edge's mean over its candidates)")
    if ranked:
        print(f"slowest:   {ranked[-1]} ({seconds[ranked[-1]] * 1e3:.4g} ms on every edge); "
              f"fastest: {ranked[0]} ({seconds[ranked[0]] * 1e3:.4g} ms)")
    print(f"MACs:      {macs['supernet'] / 1e6:.4g} M in the whole network, "
          f"{macs['uniform'] / 1e6:.4g} M expected uniformly (one image)")
    print(f"params:    {params['supernet'] / 1e6:.4g} M in the whole network, "
          f"{params['uniform'] / 1e6:.4g} M expected uniformly")
