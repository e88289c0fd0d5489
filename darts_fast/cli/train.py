"""``darts-fast train``: the original ``train.py``, training a found cell (a genotype) from
scratch, with drop path, the auxiliary head and cutout; each epoch leaves the test accuracy. On
ImageNet-sized images (the ImageNet stem) the network is the original ``NetworkImageNet``, with
``train_imagenet.py``'s settings under ``--dataset imagenet`` (``train_options.py``)."""
import torch
import torch.nn as nn

from ..export_model import ExportError, build_network, network_spec
from ..spaces.cnn.genotypes import genotype_text, genotype_to_dict, parse_genotype
from . import datasets, loaders, loop, ranks, runtime
from .errors import UsageError


def run(options):
    if ranks.under_torchrun():
        raise UsageError("train runs in one process; torchrun runs darts-fast search")
    if options.genotype is None:
        raise UsageError("train needs --genotype (a JSON file, a name, or Genotype(...) text)")
    genotype = parse_genotype(options.genotype)
    device = runtime.auto_device(options)
    train, test = datasets.train_test_data(options)
    runtime.seed_everything(options.seed)
    # The network's spec, kept in network.json: what darts-fast export builds again.
    spec = network_spec(genotype, options.init_channels, train.info.num_classes, options.layers,
                        options.auxiliary, train.info.to_json())
    try:
        model = build_network(spec, "train", fork_rng=False).train().to(device)
    except ExportError as e:
        raise UsageError(str(e)) from None
    optimizer = torch.optim.SGD(model.parameters(), options.learning_rate,
                                momentum=options.momentum, weight_decay=options.weight_decay)
    if options.lr_schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, options.lr_decay_period,
                                                    gamma=options.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, options.epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    job = TrainJob(options, model, optimizer, scheduler, criterion, device)
    job.genotype, job.data_info, job.notes, job.spec = genotype, train.info, train.notes, spec
    job.train_images = len(train)
    job.train_loader = loaders.loader(options, train, range(len(train)), device, True, True)
    job.test_loader = loaders.loader(options, test, range(len(test)), device, False, False)
    return loop.run(job)


class TrainJob(loop.Job):
    command = "train"
    finished = "training finished"

    def begin_epoch(self, epoch):
        self.model.drop_path_prob = self.options.drop_path_prob * epoch / self.options.epochs

    def steps_per_epoch(self):
        return len(self.train_loader)

    def batches(self):
        return self.train_loader

    def step(self, batch, lr):
        x, y = batch
        self.model.train()
        self.optimizer.zero_grad()
        logits, logits_aux = self.model(x)
        loss = self.criterion(logits, y)
        if self.options.auxiliary:
            loss = loss + self.options.auxiliary_weight * self.criterion(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        return loss, logits, y

    def eval_batches(self):
        return self.test_loader

    def write_outputs(self, run, log, epoch, rows):
        run.write_json("genotype.json", dict(genotype_to_dict(self.genotype),
                                             text=genotype_text(self.genotype)))
        run.write_json("network.json", self.spec)
        run.write_json("final.json", {
            "epochs_done": epoch, "epochs": self.options.epochs,
            "test_acc": float(rows[-1]["valid_acc"]), "test_loss": float(rows[-1]["valid_loss"]),
            "best_test_acc": max(float(r["valid_acc"]) for r in rows)})

    def describe(self):
        params = sum(p.numel() for n, p in self.model.named_parameters() if "auxiliary" not in n)
        return (f"training {params / 1e6:.2f}M parameters on {self.device}, "
                f"{self.options.dataset} data ({len(self.train_loader)} batches "
                f"{loaders.batches_of(self.options.batch_size, [self.train_images])}), "
                f"{self.options.loader} loader")

    def output_lines(self, run):
        return [f"accuracy:  {run.file('final.json')}", f"curves:    {run.file('curves.png')}"]
