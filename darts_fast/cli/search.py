"""``darts-fast search``: the original ``train_search.py`` on the fused classes (or, with
``--reference``, the original algorithm). Each step: one architecture step on a validation batch,
then one weight step on a training batch; each epoch leaves the genotype, the softmaxed alphas and
their pictures."""
import torch
import torch.nn as nn

from .. import reference
from ..architect import Architect
from ..genotypes import genotype_text, genotype_to_dict
from ..search_model import Network
from ..search_step import CaptureError, SearchStep
from . import data, loop, visualize
from .errors import UsageError


def run(options):
    if options.reference and options.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    if options.reference and options.recompute:
        raise UsageError("--recompute is a darts_fast option; the --reference algorithm stores "
                         "every candidate's output")
    device = loop.auto_device(options)
    images, labels = data.search_data(options)
    split = data.split_point(len(labels), options.train_portion)
    if split < 1 or split >= len(labels):
        raise UsageError(f"--train_portion {options.train_portion} leaves an empty split of "
                         f"{len(labels)} images")
    loop.seed_everything(options.seed)
    network, architect = (reference.Network, reference.Architect) if options.reference else \
        (Network, Architect)
    criterion = nn.CrossEntropyLoss()
    model = network(options.init_channels, data.NUM_CLASSES, options.layers, criterion,
                    recompute=options.recompute).to(device)
    optimizer = torch.optim.SGD(model.parameters(), options.learning_rate,
                                momentum=options.momentum, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, options.epochs, eta_min=options.learning_rate_min)
    architect = architect(model, options) if options.reference else \
        architect(model, options, hessian=options.hessian)
    if options.reference and device.type == "cuda" and not options.no_cuda_graph:
        raise UsageError("the --reference architect rebuilds its model every step and cannot "
                         "be captured into a CUDA graph; add --no_cuda_graph")
    job = SearchJob(options, model, optimizer, scheduler, criterion, device)
    job.architect = architect
    job.search_step = SearchStep(model, architect, optimizer, criterion, options.grad_clip,
                                 options.unrolled, cuda_graph=device.type == "cuda"
                                 and not options.no_cuda_graph)
    # The original draws validation batches from the training set, with the training transform.
    job.train_loader = data.loader(options, images, labels, range(split), device, True, True)
    job.valid_loader = data.loader(options, images, labels, range(split, len(labels)), device,
                                   True, True)
    return loop.run(job)


class SearchJob(loop.Job):
    command = "search"
    finished = "search finished"

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
        try:
            loss, logits = self.search_step(*batch, lr)
        except CaptureError as e:
            raise UsageError(f"{e}: continue the run with --resume and --no_cuda_graph") \
                from None
        return loss, logits, batch[1]

    def skip_counters(self):
        return {"weight": self.search_step.skipped_steps,
                "architecture": getattr(self.architect, "skipped_steps", None)}

    def eval_batches(self):
        return self.valid_loader

    def extra_state(self):
        return {"alphas": [a.detach().cpu() for a in self.model.arch_parameters()],
                "architect_optimizer": self.architect.optimizer.state_dict()}

    def restore_extra(self, state):
        alphas = self.model.arch_parameters()
        if [tuple(a.shape) for a in state["alphas"]] != [tuple(a.shape) for a in alphas]:
            raise ValueError("the saved alphas have other shapes than the model's")
        with torch.no_grad():
            for alpha, saved in zip(alphas, state["alphas"]):
                alpha.copy_(saved)
        self.architect.optimizer.load_state_dict(state["architect_optimizer"])

    def tensors_to_check(self):
        return [*self.model.parameters(), *self.model.arch_parameters()]

    def write_outputs(self, run, log, epoch, rows):
        genotype = self.model.genotype()
        text = genotype_text(genotype)
        record = dict(genotype_to_dict(genotype), epoch=epoch, text=text)
        run.write_json(f"genotype_epoch_{epoch:03d}.json", record)
        run.write_json("genotype.json", record)
        run.write_text("genotype.txt", text + "\n")
        with torch.no_grad():
            normal, reduce = (torch.softmax(a.detach().float().cpu(), -1)
                              for a in self.model.arch_parameters())
        run.write_json(f"alphas_epoch_{epoch:03d}.json",
                       {"epoch": epoch, "normal": normal.tolist(), "reduce": reduce.tolist()})
        run.write_bytes("normal.png", visualize.cell_png(
            genotype.normal, genotype.normal_concat, f"normal cell, epoch {epoch}"))
        run.write_bytes("reduction.png", visualize.cell_png(
            genotype.reduce, genotype.reduce_concat, f"reduction cell, epoch {epoch}"))
        run.write_bytes("alphas.png", visualize.alphas_png(
            normal.numpy(), reduce.numpy(), f"softmax(alpha), epoch {epoch}"))
        log.events.add_image("alphas/normal", normal, epoch, dataformats="HW")
        log.events.add_image("alphas/reduce", reduce, epoch, dataformats="HW")
        for name, weights in (("normal", normal), ("reduce", reduce)):
            for edge, row in enumerate(weights):
                log.events.add_histogram(f"alpha_{name}/edge_{edge:02d}", row, epoch)
        log.events.add_text("genotype", text, epoch)

    def describe(self):
        o = self.options
        order = "second" if o.unrolled else "first"
        return (f"{'reference' if o.reference else 'fused'} {order}-order search on "
                f"{self.device}, {o.dataset} data ({len(self.train_loader)} + "
                f"{len(self.valid_loader)} batches of {o.batch_size}), {o.loader} loader")

    def output_lines(self, run):
        return [f"genotype:  {run.file('genotype.json')} (and genotype.txt: "
                f"{genotype_text(self.model.genotype())})",
                f"pictures:  {run.file('normal.png')}, {run.file('reduction.png')}, "
                f"{run.file('alphas.png')}, {run.file('curves.png')}"]
