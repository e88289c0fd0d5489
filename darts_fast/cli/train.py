"""``darts-fast train``: the original ``train.py``, training a found cell (a genotype) from
scratch, with drop path, the auxiliary head and cutout; each epoch leaves the test accuracy."""
import torch
import torch.nn as nn

from ..spaces.cnn.eval_model import NetworkCIFAR
from ..spaces.cnn.genotypes import genotype_text, genotype_to_dict, parse_genotype
from . import cifar10, datasets, loaders, loop, ranks, runtime
from .errors import UsageError


def run(options):
    if ranks.under_torchrun():
        raise UsageError("train runs in one process; torchrun runs darts-fast search")
    if options.genotype is None:
        raise UsageError("train needs --genotype (a JSON file, a name, or Genotype(...) text)")
    genotype = parse_genotype(options.genotype)
    device = runtime.auto_device(options)
    (train_images, train_labels), (test_images, test_labels) = datasets.train_test_data(options)
    runtime.seed_everything(options.seed)
    try:
        model = NetworkCIFAR(options.init_channels, cifar10.NUM_CLASSES, options.layers,
                             options.auxiliary, genotype).to(device)
    except ValueError as e:
        raise UsageError(f"--auxiliary: {e}") from None
    optimizer = torch.optim.SGD(model.parameters(), options.learning_rate,
                                momentum=options.momentum, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, options.epochs)
    job = TrainJob(options, model, optimizer, scheduler, nn.CrossEntropyLoss(), device)
    job.genotype = genotype
    job.train_images = len(train_labels)
    job.train_loader = loaders.loader(options, train_images, train_labels,
                                      range(len(train_labels)), device, True, True)
    job.test_loader = loaders.loader(options, test_images, test_labels, range(len(test_labels)),
                                     device, False, False)
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
