"""``darts-fast search``: the original ``train_search.py`` on the fused classes (or, with
``--reference``, the original algorithm). Each step: one architecture step on a validation batch,
then one weight step on a training batch (GDAS: the weight step first); each epoch leaves the
genotype, the softmaxed alphas and their pictures.

Under ``torchrun`` the search runs on every process (``ranks``): each rank steps on its shard of
the training and validation halves (``--batch_size`` images per rank and step), the weights go
through DDP and the architect averages its gradients over the ranks, so the alphas stay identical
on every rank (checked each epoch). BatchNorm statistics are per shard, as DDP keeps them, or
over the whole batch with ``--sync_batch_norm``."""
import warnings

import torch
import torch.nn as nn

from .. import reference
from ..methods.gdas import GDASNetwork, tau_at
from ..methods.pc_darts import PCNetwork
from ..search.architect import Architect
from ..search.distributed import check_identical
from ..search.step import CaptureError, SearchStep
from ..search.sync_batch_norm import SyncBatchNorm2d
from ..spaces.cnn.genotypes import genotype_text, genotype_to_dict
from ..spaces.cnn.network import Network
from . import data, loop, visualize
from . import ranks as ranks_
from .errors import Diverged, UsageError

# The authors' settings of each method (PC-DARTS: yuhuixu1993/PC-DARTS train_search.py; GDAS:
# D-X-Y/AutoDL-Projects, its NASNet-space search script and configurations, whose 2 cells per
# stage make 6 cells, reduced where 6 layers of the DARTS network reduce).
METHOD_DEFAULTS = {
    "darts": {"layers": 8, "batch_size": 64, "learning_rate": 0.025, "learning_rate_min": 0.001,
              "weight_decay": 3e-4, "nesterov": False, "epochs": 50, "arch_learning_rate": 3e-4,
              "arch_start_epoch": 0},
    "pc-darts": {"layers": 8, "batch_size": 256, "learning_rate": 0.1, "learning_rate_min": 0.001,
                 "weight_decay": 3e-4, "nesterov": False, "epochs": 50,
                 "arch_learning_rate": 6e-4, "arch_start_epoch": 15, "partial_channels": 4},
    "gdas": {"layers": 6, "batch_size": 256, "learning_rate": 0.025, "learning_rate_min": 0.001,
             "weight_decay": 5e-4, "nesterov": True, "epochs": 250, "arch_learning_rate": 3e-4,
             "arch_start_epoch": 0, "tau_max": 10.0, "tau_min": 0.1},
}
# Each method's network: (darts_fast's, its authors' formulation for --reference).
NETWORKS = {"darts": (Network, reference.Network), "pc-darts": (PCNetwork, reference.PCNetwork),
            "gdas": (GDASNetwork, reference.GDASNetwork)}
# The options of one method only.
METHOD_OPTIONS = {"partial_channels": "pc-darts", "tau_max": "gdas", "tau_min": "gdas"}


def resolve_method(options):
    """Fills the options left unset with the method's defaults (a new run; config.json then
    holds them)."""
    for name, method in METHOD_OPTIONS.items():
        if getattr(options, name) is not None and options.method != method:
            raise UsageError(f"--{name} is a {method} option, not a {options.method} one "
                             f"(add --method {method})")
    if options.method == "gdas":
        given = "--unrolled" if options.unrolled else \
            "--hessian exact" if options.hessian == "exact" else None
        if given:
            raise UsageError(f"{given} is for a second-order search; gdas searches first order "
                             f"only, as its authors do")
    for name, value in METHOD_DEFAULTS[options.method].items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.method == "gdas" and options.tau_min > options.tau_max:
        raise UsageError(f"--tau_min {options.tau_min:g} must not exceed --tau_max "
                         f"{options.tau_max:g} (the temperature falls from tau_max to tau_min)")
    if options.method == "pc-darts" and options.init_channels % options.partial_channels:
        raise UsageError(f"--partial_channels {options.partial_channels} must divide "
                         f"--init_channels {options.init_channels} (the candidates see 1/K of "
                         f"each edge's channels)")


def check_architecture_steps(options):
    """Refuses a search (new, or resumed with other --epochs) that would end before its first
    architecture step: its genotype would be read from the alphas as initialised, at random."""
    start, epochs = options.arch_start_epoch, options.epochs
    if start < epochs:
        return
    default = " (the pc-darts default)" if options.method == "pc-darts" and \
        start == METHOD_DEFAULTS["pc-darts"]["arch_start_epoch"] else ""
    fix = f"more --epochs than {start}" + ("" if options.resume else
                                           " or a smaller --arch_start_epoch")
    raise UsageError(f"--arch_start_epoch {start}{default} with --epochs {epochs}: the run would "
                     f"end before its first architecture step, and the genotype would be read "
                     f"from the alphas' random initial values; give {fix}")


def run(options):
    check_architecture_steps(options)
    if options.reference and options.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    if options.reference and options.recompute:
        raise UsageError("--recompute is a darts_fast option; the --reference algorithm stores "
                         "every candidate's output")
    if ranks_.under_torchrun() and options.reference:
        raise UsageError("--reference runs in one process; the original architect cannot "
                         "average its gradients over torchrun's ranks")
    if ranks_.under_torchrun() and options.method == "gdas":
        raise UsageError("--method gdas runs in one process: each rank would draw its own "
                         "candidates (the ranks' random streams differ for their augmentations) "
                         "and DDP would find weights that some ranks did not use")
    if options.sync_batch_norm and not ranks_.under_torchrun():
        raise UsageError("--sync_batch_norm takes BatchNorm statistics over the processes of a "
                         "torchrun search; one process has them already")
    images, labels = data.search_data(options)
    split = data.split_point(len(labels), options.train_portion)
    if split < 1 or split >= len(labels):
        raise UsageError(f"--train_portion {options.train_portion} leaves an empty split of "
                         f"{len(labels)} images")
    ranks, device = ranks_.start(options, loop.auto_device(options))
    try:
        return loop.run(_job(options, images, labels, split, ranks, device))
    finally:
        ranks.close()


def _job(options, images, labels, split, ranks, device):
    loop.seed_everything(options.seed)  # the same seed everywhere: the same model on every rank
    network = NETWORKS[options.method][options.reference]
    architect = reference.Architect if options.reference else Architect
    criterion = nn.CrossEntropyLoss()
    built = {"recompute": options.recompute}
    if options.method == "pc-darts":
        built["k"] = options.partial_channels
    if options.sync_batch_norm:  # a folded BatchNorm takes its statistics inside the fused op
        built["fold_batch_norm"] = False
    model = network(options.init_channels, data.NUM_CLASSES, options.layers, criterion,
                    **built).to(device)
    if options.sync_batch_norm:
        model = SyncBatchNorm2d.convert(model)
    stepped = model
    if ranks.distributed:
        # The network's channels_last activations give some filter gradients other strides than
        # the filters' (mostly in size-1 dimensions): DDP copies those into its buckets.
        warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
        with warnings.catch_warnings():
            # Its successor, forward_sync_buffers, would also copy rank 0's buffers at start.
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            stepped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None,
                broadcast_buffers=False)  # the BatchNorm statistics stay the ranks' own
        loop.seed_everything(ranks.derived_seed(options.seed))  # each rank its augmentations
    optimizer = torch.optim.SGD(model.parameters(), options.learning_rate,
                                momentum=options.momentum, weight_decay=options.weight_decay,
                                nesterov=options.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, options.epochs, eta_min=options.learning_rate_min)
    architect = architect(model, options) if options.reference else \
        architect(stepped, options, hessian=options.hessian)
    # GDAS' forward pass reads its sampled candidates on the host, which a graph cannot hold.
    graph = device.type == "cuda" and not options.no_cuda_graph and not ranks.distributed \
        and getattr(model, "capturable", True)
    if options.reference and graph:
        raise UsageError("the --reference architect rebuilds its model every step and cannot "
                         "be captured into a CUDA graph; add --no_cuda_graph")
    job = SearchJob(options, model, optimizer, scheduler, criterion, device, ranks)
    job.architect = architect
    job.split_images = (split, len(labels) - split)
    job.search_step = SearchStep(stepped, architect, optimizer, criterion, options.grad_clip,
                                 options.unrolled, cuda_graph=graph,
                                 weights_first=options.method == "gdas")
    job.weight_step = SearchStep(stepped, None, optimizer, criterion, options.grad_clip,
                                 cuda_graph=graph) if options.arch_start_epoch else None
    # The original draws validation batches from the training set, with the training transform.
    job.train_loader = data.loader(options, images, labels, range(split), device, True, True,
                                   ranks)
    job.valid_loader = data.loader(options, images, labels, range(split, len(labels)), device,
                                   True, True, ranks)
    return job


def _epochs_text(first, last):
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


class SearchJob(loop.Job):
    command = "search"
    finished = "search finished"

    def begin_epoch(self, epoch):
        o = self.options
        if o.method == "gdas":  # from the epoch alone: a resumed run needs nothing saved
            self.model.tau = tau_at(epoch, o.epochs, o.tau_max, o.tau_min)
        if epoch >= o.arch_start_epoch:
            # Its saved state (and on CUDA its captured graph's memory pool) is not needed again.
            self.weight_step = None

    def steps_per_epoch(self):
        return len(self.train_loader)

    def batches(self):
        if self.options.original_valid_sampling:
            for x, y in self.train_loader:
                yield x, y, *next(iter(self.valid_loader))
        else:
            valid = data.endless(self.valid_loader)
            for x, y in self.train_loader:
                yield x, y, *next(valid)

    def step(self, batch, lr):
        # Epoch e uses the cosine rate of epoch e, as the original did on the PyTorch it was
        # written for; eta of the architect step is that rate.
        step = self.search_step if self.weight_step is None else self.weight_step
        try:
            loss, logits = step(*batch, lr)
        except CaptureError as e:
            raise UsageError(f"{e}: continue the run with --resume and --no_cuda_graph") \
                from None
        return loss, logits, batch[1]

    def skip_counters(self):
        weight = [s.skipped_steps for s in (self.search_step, self.weight_step)
                  if s is not None and s.skipped_steps is not None]
        return {"weight": sum(weight) if weight else None,
                "architecture": getattr(self.architect, "skipped_steps", None)}

    def eval_batches(self):
        return self.valid_loader

    def extra_state(self):
        shards = [loader.shards for loader in (self.train_loader, self.valid_loader)]
        return {"alphas": [a.detach().cpu() for a in self.model.arch_parameters()],
                "architect_optimizer": self.architect.optimizer.state_dict(),
                **({"loader_passes": [s.passes for s in shards]} if shards[0] is not None else {})}

    def restore_extra(self, state):
        alphas = self.model.arch_parameters()
        if [tuple(a.shape) for a in state["alphas"]] != [tuple(a.shape) for a in alphas]:
            raise ValueError("the saved alphas have other shapes than the model's")
        with torch.no_grad():
            for alpha, saved in zip(alphas, state["alphas"]):
                alpha.copy_(saved)
        self.architect.optimizer.load_state_dict(state["architect_optimizer"])
        if self.ranks.distributed:
            for loader, passes in zip((self.train_loader, self.valid_loader),
                                      state["loader_passes"]):
                loader.shards.passes = passes

    def tensors_to_check(self):
        return [*self.model.parameters(), *self.model.arch_parameters()]

    def check_ranks(self, epoch):
        for what, tensors in (("alphas", self.model.arch_parameters()),
                              ("weights", list(self.model.parameters()))):
            try:
                check_identical(tensors, self.ranks.group, what)
            except RuntimeError as e:
                raise Diverged(f"after epoch {epoch + 1}, {e}: the ranks no longer search the "
                               f"same architecture (the last checkpoint holds the alphas of "
                               f"rank 0 at epoch {epoch})") from None

    def write_outputs(self, run, log, epoch, rows):
        genotype = self.model.genotype()
        text = genotype_text(genotype)
        record = dict(genotype_to_dict(genotype), epoch=epoch, text=text)
        run.write_json(f"genotype_epoch_{epoch:03d}.json", record)
        run.write_json("genotype.json", record)
        run.write_text("genotype.txt", text + "\n")
        model = self.model
        with torch.no_grad():
            normal, reduce = (torch.softmax(a.detach().float().cpu(), -1)
                              for a in (model.alphas_normal, model.alphas_reduce))
            edges = {f"{name}_edges": model.edge_weights(betas).float().cpu().tolist()
                     for name, betas in (("normal", getattr(model, "betas_normal", None)),
                                         ("reduce", getattr(model, "betas_reduce", None)))
                     if betas is not None}
        run.write_json(f"alphas_epoch_{epoch:03d}.json",
                       {"epoch": epoch, "normal": normal.tolist(), "reduce": reduce.tolist(),
                        **edges})
        run.write_bytes("normal.png", visualize.cell_png(
            genotype.normal, genotype.normal_concat, f"normal cell, epoch {epoch}"))
        run.write_bytes("reduction.png", visualize.cell_png(
            genotype.reduce, genotype.reduce_concat, f"reduction cell, epoch {epoch}"))
        run.write_bytes("alphas.png", visualize.alphas_png(
            normal.numpy(), reduce.numpy(), f"softmax(alpha), epoch {epoch}",
            (edges["normal_edges"], edges["reduce_edges"]) if edges else None))
        log.events.add_image("alphas/normal", normal, epoch, dataformats="HW")
        log.events.add_image("alphas/reduce", reduce, epoch, dataformats="HW")
        for name, weights in (("normal", normal), ("reduce", reduce)):
            for edge, row in enumerate(weights):
                log.events.add_histogram(f"alpha_{name}/edge_{edge:02d}", row, epoch)
        log.events.add_text("genotype", text, epoch)

    def describe(self):
        o, ranks = self.options, self.ranks
        order = "second" if o.unrolled else "first"
        where = (f"{ranks.world} processes ({ranks.backend}; rank 0 on {self.device}), "
                 f"BatchNorm statistics {'over all ranks' if o.sync_batch_norm else 'per rank'}"
                 if ranks.distributed else f"{self.device}")
        method = (f"{o.method} (k={o.partial_channels}) " if o.method == "pc-darts" else
                  f"{o.method} (tau {o.tau_max:g} to {o.tau_min:g}, weight step first) "
                  if o.method == "gdas" else "")
        return (f"{'reference' if o.reference else 'fused'} {order}-order {method}search on "
                f"{where}{self._architecture_steps()}, "
                f"{o.dataset} data ({len(self.train_loader)} + {len(self.valid_loader)} batches "
                f"{loop.batches_of(o.batch_size, self.split_images, ranks)}), "
                f"{o.loader} loader")

    def _architecture_steps(self):
        """Which epochs and how many steps update the alphas, when weight steps alone come
        first (fewer than --epochs suggests)."""
        o = self.options
        if not o.arch_start_epoch:
            return ""
        epochs = o.epochs - o.arch_start_epoch
        steps = epochs * len(self.train_loader)
        stop = (f" (--stop_after_epoch {o.stop_after_epoch} stops before the first)"
                if o.stop_after_epoch and o.stop_after_epoch <= o.arch_start_epoch else "")
        return (f", weight steps alone in {_epochs_text(1, o.arch_start_epoch)}: only "
                f"{_epochs_text(o.arch_start_epoch + 1, o.epochs)} update the alphas ({epochs} "
                f"of {o.epochs} epochs, {steps} architecture step{'s' if steps > 1 else ''}){stop}")

    def output_lines(self, run):
        return [f"genotype:  {run.file('genotype.json')} (and genotype.txt: "
                f"{genotype_text(self.model.genotype())})",
                f"pictures:  {run.file('normal.png')}, {run.file('reduction.png')}, "
                f"{run.file('alphas.png')}, {run.file('curves.png')}"]
