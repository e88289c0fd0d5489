"""``darts-fast search``: the original ``train_search.py`` on the fused classes (or, with
``--reference``, the original algorithm). Each step: one architecture step on a validation batch,
then one weight step on a training batch (GDAS: the weight step first); each epoch leaves the
genotype, the softmaxed alphas and their pictures.

Under ``torchrun`` the search runs on every process (``ranks``): each rank steps on its shard of
the training and validation halves (``--batch_size`` images per rank and step), the weights go
through DDP and the architect averages its gradients over the ranks, so the alphas stay identical
on every rank (checked each epoch). BatchNorm statistics are per shard, as DDP keeps them, or
over the whole batch with ``--sync_batch_norm``."""
import torch
import torch.nn as nn

from .. import kernels, methods, reference
from ..search.distributed import check_identical
from ..search.step import CaptureError, SearchStep
from ..search.sync_batch_norm import SyncBatchNorm2d
from . import (architecture_outputs, datasets, guards, hardware_options, loaders, loop,
               runtime, search_options, search_state, warmup)
from . import ranks as ranks_
from .errors import Diverged, UsageError


def run(options):
    if not kernels.has_ops():  # before the run folder is touched
        raise UsageError(str(kernels.unavailable("darts-fast search")))
    method = methods.get(options.method)
    search_options.check_search(options, method, ranks_.under_torchrun())
    data = datasets.search_data(options)
    split = datasets.search_split(data.labels, options)  # the weights' images, the alphas'
    ranks, device = ranks_.start(options, runtime.auto_device(options))
    try:
        return loop.run(_job(options, method, data, split, ranks, device))
    finally:
        ranks.close()


def _job(options, method, data, split, ranks, device):
    runtime.seed_everything(options.seed)  # the same seed everywhere: the same model on every rank
    job = SearchJob(options, None, None, None, nn.CrossEntropyLoss(), device, ranks)
    job.method, job.data_info, job.notes = method, data.info, data.notes
    job.stage_epochs = options.epochs // method.stages(options)
    job.stage, job.stage_network = 0, method.stage_network(0, options, None)
    model = job.build_network()
    job.guards = guards.Guards(options, model, ranks)
    job.start(model)
    job.searcher = method.searcher(model, options)
    job.split_images = tuple(map(len, split))
    # The original draws validation batches from the training set, with the training transform.
    job.train_loader, job.valid_loader = (loaders.loader(options, data, images, device, True,
                                                         True, ranks) for images in split)
    return job


class SearchJob(loop.Job):
    """A search through the method's stages (one network each; one stage for most methods)."""

    searcher = None  # the method's, for a method without alphas
    command = "search"
    finished = "search finished"

    def build_network(self):
        """The network of the current stage, on the device."""
        o, method = self.options, self.method
        built = {"recompute": o.recompute, **method.network_options(o), **self.stage_network}
        layers = built.pop("layers", o.layers)
        if o.primitives is not None:
            built["primitives"] = o.primitives.split(",")
        if o.sync_batch_norm:  # a folded BatchNorm takes its statistics inside the fused op
            built["fold_batch_norm"] = False
        if o.aux_skip is not None:
            built["auxiliary_skip"] = True
        info = self.data_info
        if o.reference and info.network_options():
            raise UsageError("--reference builds the original's network, which has the CIFAR "
                             "stem and RGB input; leave --reference out for this data")
        built.update(info.network_options())
        try:
            model = method.networks()[o.reference](o.init_channels, info.num_classes, layers,
                                                   self.criterion, **built).to(self.device)
        except ValueError as e:  # options the network refuses (a candidate that cannot take them)
            raise UsageError(str(e)) from None
        return SyncBatchNorm2d.convert(model) if o.sync_batch_norm else model

    def start(self, model):
        """Searches ``model`` from now on: its weights' optimizer and schedule (over a stage),
        its architect and its steps."""
        o, ranks, device = self.options, self.ranks, self.device
        stepped = ranks.wrap(model, device)
        if ranks.distributed:
            runtime.seed_everything(ranks.derived_seed(o.seed))  # each rank its augmentations
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), o.learning_rate,
                                         momentum=o.momentum, weight_decay=o.weight_decay,
                                         nesterov=o.nesterov)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, self.stage_epochs, eta_min=o.learning_rate_min)
        architect = self.method.architect_class
        self.architect = None if architect is None else reference.Architect(model, o) \
            if o.reference else architect(stepped, o, hessian=o.hessian,
                                          **self.method.architect_options(o),
                                          **hardware_options.architect_options(model, o),
                                          **search_options.architect_clip(o))
        # GDAS' forward pass reads its sampled candidates on the host, which a graph cannot hold.
        graph = device.type == "cuda" and not o.no_cuda_graph and not ranks.distributed \
            and getattr(model, "capturable", True)
        if o.reference and graph:
            raise UsageError("the --reference architect rebuilds its model every step and "
                             "cannot be captured into a CUDA graph; add --no_cuda_graph")
        self.guards.model = model
        noise = self.guards.noise
        self.search_step = SearchStep(stepped, self.architect, self.optimizer, self.criterion,
                                      o.grad_clip, o.unrolled, cuda_graph=graph,
                                      weights_first=self.method.weights_first,
                                      weight_context=noise)
        self._stepped, self._graph = stepped, graph
        self.weight_step = None  # made by begin_epoch for the epochs of weight steps alone
        # The steps between two architecture steps (ProxylessNAS' every 5th).
        self.plain_step = self._new_weight_step() if self.method.architecture_every > 1 \
            else None

    def _new_weight_step(self):
        return SearchStep(self._stepped, None, self.optimizer, self.criterion,
                          self.options.grad_clip, cuda_graph=self._graph,
                          weight_context=self.guards.noise)

    def schedule_epochs(self):
        return self.stage_epochs

    def begin_epoch(self, epoch):
        o = self.options
        self.epoch, self.steps_done = epoch, 0
        if epoch // self.stage_epochs != self.stage:  # a new stage: a new network
            self.stage = epoch // self.stage_epochs
            self.stage_network = self.method.stage_network(self.stage, o, self.model)
            self.start(self.build_network())
        self.method.begin_epoch(self.model, epoch, o)
        self.guards.begin_epoch(epoch)
        if epoch % self.stage_epochs < o.arch_start_epoch:  # after a rollback to them too
            self.weight_step = self.weight_step or self._new_weight_step()
        else:
            # Its saved state (and on CUDA its captured graph's memory pool) is not needed again.
            self.weight_step = None
        # A graph keeps the module settings (P-DARTS' dropout) and the optimizer state (a
        # rollback's) of its capture: captured again each epoch, as a new rate does anyway.
        for step in (self.search_step, self.weight_step, self.plain_step):
            if step is not None:
                step.release_graphs()

    def learning_rate(self):
        return warmup.rate(self.optimizer, self.options, self.epoch, super().learning_rate())

    def end_epoch(self):
        warmup.restore(self.optimizer, self.scheduler, self.options, self.epoch)
        super().end_epoch()
        if self.searcher is not None:
            self.searcher.end_epoch(self, self.epoch)

    def steps_per_epoch(self):
        return len(self.train_loader)

    def batches(self):
        if self.options.original_valid_sampling:
            valid = (next(iter(self.valid_loader)) for _ in iter(int, 1))
        else:
            valid = loaders.endless(self.valid_loader)
        for x, y in self.train_loader:
            self.last_valid = next(valid)  # the guards' Hessian is taken on the last one
            yield x, y, *self.last_valid

    def endless_valid(self):
        """The validation batches, pass after pass (a searcher's scores)."""
        return loaders.endless(self.valid_loader)

    def step(self, batch, lr):
        # Epoch e uses the cosine rate of epoch e, as the original did on the PyTorch it was
        # written for; eta of the architect step is that rate.
        every = self.method.architecture_every
        self.steps_done += 1
        step = self.weight_step or (self.search_step if self.steps_done % every == 0
                                    else self.plain_step)
        try:
            loss, logits = step(*batch, lr)
        except CaptureError as e:
            raise UsageError(f"{e}: continue the run with --resume and --no_cuda_graph") \
                from None
        return loss, logits, batch[1]

    def skip_counters(self):
        weight = [s.skipped_steps for s in (self.search_step, self.weight_step, self.plain_step)
                  if s is not None and s.skipped_steps is not None]
        return {"weight": sum(weight) if weight else None,
                "architecture": getattr(self.architect, "skipped_steps", None)}

    def absent_options(self):
        return search_options.absent_method_options(self.options.method)

    def eval_batches(self):
        return self.valid_loader

    def genotype(self):
        """The architecture the search stands at: read from the alphas, or the searcher's
        (None: none yet)."""
        if self.method.alphas:
            return self.model.genotype()
        return self.searcher.genotype() if self.searcher is not None else None

    def after_validation(self, epoch):
        self.guards.end_epoch(epoch, self.last_valid, self.genotype())

    def stop_reason(self):
        return self.guards.stop_reason()

    def rollback_epoch(self):
        return self.guards.rollback

    def carried_over(self):
        return self.guards.ada

    def rolled_back(self, carried):
        message = self.guards.rolled_back(carried)
        self.guards.apply_weight_decay(self.optimizer, self.architect)
        return message

    def epoch_checkpoints(self):
        return guards.ROLLBACK_WINDOW if self.guards.ada else 0

    def epoch_text(self):
        stages = self.options.epochs // self.stage_epochs
        searcher = self.searcher.text() if self.searcher is not None else ""
        return self.guards.log_text() + searcher + (f" | stage {self.stage + 1}/{stages}"
                                                    if stages > 1 else "")

    def extra_state(self):
        shards = [loader.shards for loader in (self.train_loader, self.valid_loader)]
        return {**search_state.save(self.model, self.architect),
                "guards": self.guards.state_dict(),
                **({"searcher": self.searcher.state_dict()} if self.searcher is not None else {}),
                "stage": self.stage, "stage_network": self.stage_network,
                **({"loader_passes": [s.passes for s in shards]} if shards[0] is not None else {})}

    def prepare_restore(self, state):
        if state.get("stage", 0) != self.stage:  # the checkpoint is of a later stage's network
            self.stage, self.stage_network = state["stage"], state["stage_network"]
            self.start(self.build_network())

    def restore_extra(self, state):
        search_state.restore(self.model, self.architect, state)
        if "guards" in state:  # runs of earlier versions kept no history
            self.guards.load_state_dict(state["guards"])
        if self.searcher is not None:
            self.searcher.load_state_dict(state["searcher"])
        if self.guards.ada:
            self.guards.apply_weight_decay(self.optimizer, self.architect)
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
        kept = self.guards.kept()
        final = self.method.final_genotypes(self.model, self.options) \
            if epoch >= self.options.epochs else None
        if final is not None:
            kept = (epoch, final[0])
            architecture_outputs.write_named(run, final[1])
        found = None if self.method.alphas else self.genotype()
        if self.method.alphas:
            architecture_outputs.write(run, log, epoch, self.model, kept=kept)
        elif found is not None:
            architecture_outputs.write_found(run, log, epoch, found)
        self.guards.write(run, log, epoch)

    def describe(self):
        return search_options.banner(self)

    def output_lines(self, run):
        if not self.method.alphas:
            return self.method.output_lines(run, self.genotype() is not None)
        return [f"genotype:  {run.file('genotype.json')} (and genotype.txt: "
                f"{architecture_outputs.kept_text(run, self.model)})",
                f"pictures:  {run.file('normal.png')}, {run.file('reduction.png')}, "
                f"{run.file('alphas.png')}, {run.file('curves.png')}, "
                f"{run.file('collapse.png')}"]
