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

from .. import kernels, methods, reference
from ..search.architect import Architect
from ..search.distributed import check_identical
from ..search.step import CaptureError, SearchStep
from ..search.sync_batch_norm import SyncBatchNorm2d
from ..spaces.cnn.genotypes import genotype_text
from . import architecture_outputs, cifar10, datasets, loaders, loop, runtime
from . import ranks as ranks_
from . import search_options, search_state
from .errors import Diverged, UsageError

def run(options):
    if not kernels.has_ops():  # before the run folder is touched
        raise UsageError(str(kernels.unavailable("darts-fast search")))
    method = methods.get(options.method)
    search_options.check_architecture_steps(options, method)
    if options.reference and method.networks()[1] is None:
        raise UsageError(f"--reference: {method.name} has no formulation of its authors to run")
    if options.reference and options.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    if options.reference and options.primitives is not None:
        raise UsageError("--primitives is a darts_fast option; the --reference algorithm "
                         "searches its authors' candidates")
    if options.reference and options.recompute:
        raise UsageError("--recompute is a darts_fast option; the --reference algorithm stores "
                         "every candidate's output")
    if ranks_.under_torchrun() and options.reference:
        raise UsageError("--reference runs in one process; the original architect cannot "
                         "average its gradients over torchrun's ranks")
    if ranks_.under_torchrun() and method.one_process:
        raise UsageError(f"--method {method.name} runs in one process: {method.one_process}")
    if options.sync_batch_norm and not ranks_.under_torchrun():
        raise UsageError("--sync_batch_norm takes BatchNorm statistics over the processes of a "
                         "torchrun search; one process has them already")
    images, labels = datasets.search_data(options)
    split = datasets.split_point(len(labels), options.train_portion)
    if split < 1 or split >= len(labels):
        raise UsageError(f"--train_portion {options.train_portion} leaves an empty split of "
                         f"{len(labels)} images")
    ranks, device = ranks_.start(options, runtime.auto_device(options))
    try:
        return loop.run(_job(options, method, images, labels, split, ranks, device))
    finally:
        ranks.close()


def _job(options, method, images, labels, split, ranks, device):
    runtime.seed_everything(options.seed)  # the same seed everywhere: the same model on every rank
    network = method.networks()[options.reference]
    architect = reference.Architect if options.reference else Architect
    criterion = nn.CrossEntropyLoss()
    built = {"recompute": options.recompute, **method.network_options(options)}
    if options.primitives is not None:
        built["primitives"] = options.primitives.split(",")
    if options.sync_batch_norm:  # a folded BatchNorm takes its statistics inside the fused op
        built["fold_batch_norm"] = False
    try:
        model = network(options.init_channels, cifar10.NUM_CLASSES, options.layers, criterion,
                        **built).to(device)
    except ValueError as e:  # options the network refuses (a candidate that cannot take them)
        raise UsageError(str(e)) from None
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
        runtime.seed_everything(ranks.derived_seed(options.seed))  # each rank its augmentations
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
    job.method = method
    job.architect = architect
    job.split_images = (split, len(labels) - split)
    job.search_step = SearchStep(stepped, architect, optimizer, criterion, options.grad_clip,
                                 options.unrolled, cuda_graph=graph,
                                 weights_first=method.weights_first)
    job.weight_step = SearchStep(stepped, None, optimizer, criterion, options.grad_clip,
                                 cuda_graph=graph) if options.arch_start_epoch else None
    # The original draws validation batches from the training set, with the training transform.
    job.train_loader = loaders.loader(options, images, labels, range(split), device, True, True,
                                      ranks)
    job.valid_loader = loaders.loader(options, images, labels, range(split, len(labels)), device,
                                      True, True, ranks)
    return job


def _epochs_text(first, last):
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


class SearchJob(loop.Job):
    command = "search"
    finished = "search finished"

    def begin_epoch(self, epoch):
        o = self.options
        self.method.begin_epoch(self.model, epoch, o)
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
            valid = loaders.endless(self.valid_loader)
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

    def absent_options(self):
        return search_options.absent_method_options(self.options.method)

    def eval_batches(self):
        return self.valid_loader

    def extra_state(self):
        shards = [loader.shards for loader in (self.train_loader, self.valid_loader)]
        return {**search_state.save(self.model, self.architect),
                **({"loader_passes": [s.passes for s in shards]} if shards[0] is not None else {})}

    def restore_extra(self, state):
        search_state.restore(self.model, self.architect, state)
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
        architecture_outputs.write(run, log, epoch, self.model)

    def describe(self):
        o, ranks = self.options, self.ranks
        order = "second" if o.unrolled else "first"
        where = (f"{ranks.world} processes ({ranks.backend}; rank 0 on {self.device}), "
                 f"BatchNorm statistics {'over all ranks' if o.sync_batch_norm else 'per rank'}"
                 if ranks.distributed else f"{self.device}")
        method = " ".join(filter(None, (self.method.name, self.method.describe(o))))
        return (f"{'reference' if o.reference else 'fused'} {order}-order {method} search on "
                f"{where}{self._architecture_steps()}, "
                f"{o.dataset} data ({len(self.train_loader)} + {len(self.valid_loader)} batches "
                f"{loaders.batches_of(o.batch_size, self.split_images, ranks)}), "
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
