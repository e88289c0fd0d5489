"""pt.darts' search.py on darts_fast: its structure (config, model, the two optimisers, the
cosine schedule, the architect, the train loop with ``architect.unrolled_backward`` then the
weight step, the genotype every epoch) unchanged but for the imports (marked ``darts_fast``).
So that it runs anywhere in seconds it also takes random images in place of CIFAR-10 and drops
tensorboard, the plots and the checkpoints; the schedule is read with ``get_last_lr()`` before
its ``step()``, as current PyTorch wants.

    python examples/ptdarts_search.py --epochs 2 --layers 3 --init_channels 4 --batch_size 8

Settings come from the command line as pt.darts' SearchConfig reads them (its defaults are
pt.darts'); ``--n_samples`` and ``--image_size`` size the random data. Each epoch logs the
genotype; ``darts_fast.compat.ptdarts.to_darts_fast`` turns it into what
``darts-fast train --genotype`` takes.
"""
import argparse
import logging
import sys

import numpy as np
import torch
import torch.nn as nn

# darts_fast: in place of pt.darts' `from models.search_cnn import SearchCNNController` and
# `from architect import Architect`.
from darts_fast.compat.ptdarts import Architect, SearchCNNController
# darts_fast: to print the found cell as `darts-fast train --genotype` takes it.
from darts_fast.compat.ptdarts.genotypes import to_darts_fast
from darts_fast.spaces.cnn.genotypes import genotype_text


class SearchConfig(argparse.Namespace):
    def __init__(self, argv=None):
        parser = argparse.ArgumentParser("Search config")
        parser.add_argument('--name', default='random')
        parser.add_argument('--batch_size', type=int, default=64)
        parser.add_argument('--w_lr', type=float, default=0.025)
        parser.add_argument('--w_lr_min', type=float, default=0.001)
        parser.add_argument('--w_momentum', type=float, default=0.9)
        parser.add_argument('--w_weight_decay', type=float, default=3e-4)
        parser.add_argument('--w_grad_clip', type=float, default=5.)
        parser.add_argument('--print_freq', type=int, default=50)
        parser.add_argument('--epochs', type=int, default=50)
        parser.add_argument('--init_channels', type=int, default=16)
        parser.add_argument('--layers', type=int, default=8)
        parser.add_argument('--seed', type=int, default=2)
        parser.add_argument('--alpha_lr', type=float, default=3e-4)
        parser.add_argument('--alpha_weight_decay', type=float, default=1e-3)
        parser.add_argument('--n_samples', type=int, default=256)
        parser.add_argument('--image_size', type=int, default=32)
        super().__init__(**vars(parser.parse_args(argv)))


config = SearchConfig()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s")
logger = logging.getLogger(config.name)


def get_data(n_samples, image_size):
    """Random 3-channel images in 10 classes (pt.darts: utils.get_data)."""
    g = torch.Generator().manual_seed(config.seed)
    images = torch.randn(n_samples, 3, image_size, image_size, generator=g)
    labels = torch.randint(0, 10, (n_samples,), generator=g)
    return image_size, 3, 10, torch.utils.data.TensorDataset(images, labels)


def main():
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = True

    input_size, input_channels, n_classes, train_data = get_data(config.n_samples,
                                                                 config.image_size)

    net_crit = nn.CrossEntropyLoss().to(device)
    model = SearchCNNController(input_channels, config.init_channels, n_classes, config.layers,
                                net_crit)
    model = model.to(device)

    # weights optimizer
    w_optim = torch.optim.SGD(model.weights(), config.w_lr, momentum=config.w_momentum,
                              weight_decay=config.w_weight_decay)
    # alphas optimizer
    alpha_optim = torch.optim.Adam(model.alphas(), config.alpha_lr, betas=(0.5, 0.999),
                                   weight_decay=config.alpha_weight_decay)

    # split data to train/validation
    n_train = len(train_data)
    split = n_train // 2
    indices = list(range(n_train))
    train_sampler = torch.utils.data.sampler.SubsetRandomSampler(indices[:split])
    valid_sampler = torch.utils.data.sampler.SubsetRandomSampler(indices[split:])
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=config.batch_size,
                                               sampler=train_sampler)
    valid_loader = torch.utils.data.DataLoader(train_data, batch_size=config.batch_size,
                                               sampler=valid_sampler)
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_optim, config.epochs, eta_min=config.w_lr_min)
    architect = Architect(model, config.w_momentum, config.w_weight_decay)

    # training loop
    best_top1 = -1.
    for epoch in range(config.epochs):
        lr = lr_scheduler.get_last_lr()[0]

        model.print_alphas(logger)

        # training
        train(train_loader, valid_loader, model, architect, w_optim, alpha_optim, lr, epoch)
        lr_scheduler.step()

        # validation
        top1 = validate(valid_loader, model, epoch)

        # genotype
        genotype = model.genotype()
        logger.info("genotype = {}".format(genotype))

        if best_top1 < top1:
            best_top1 = top1
            best_genotype = genotype

    logger.info("Final best Prec@1 = {:.4%}".format(best_top1))
    logger.info("Best Genotype = {}".format(best_genotype))
    # darts_fast: the cell as darts-fast train --genotype takes it.
    logger.info("darts-fast train --genotype \"{}\"".format(
        genotype_text(to_darts_fast(best_genotype))))


def train(train_loader, valid_loader, model, architect, w_optim, alpha_optim, lr, epoch):
    correct = total = 0
    model.train()

    for step, ((trn_X, trn_y), (val_X, val_y)) in enumerate(zip(train_loader, valid_loader)):
        trn_X, trn_y = trn_X.to(device, non_blocking=True), trn_y.to(device, non_blocking=True)
        val_X, val_y = val_X.to(device, non_blocking=True), val_y.to(device, non_blocking=True)

        # phase 2. architect step (alpha)
        alpha_optim.zero_grad()
        architect.unrolled_backward(trn_X, trn_y, val_X, val_y, lr, w_optim)
        alpha_optim.step()

        # phase 1. child network step (w)
        w_optim.zero_grad()
        logits = model(trn_X)
        loss = model.criterion(logits, trn_y)
        loss.backward()
        # gradient clipping
        nn.utils.clip_grad_norm_(model.weights(), config.w_grad_clip)
        w_optim.step()

        correct += (logits.argmax(1) == trn_y).sum().item()
        total += trn_y.numel()
        if step % config.print_freq == 0 or step == len(train_loader) - 1:
            logger.info("Train: [{:2d}/{}] Step {:03d}/{:03d} Loss {:.3f} Prec@1 {:.1%}".format(
                epoch + 1, config.epochs, step, len(train_loader) - 1, loss.item(),
                correct / total))


def validate(valid_loader, model, epoch):
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for X, y in valid_loader:
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += (model(X).argmax(1) == y).sum().item()
            total += y.numel()
    logger.info("Valid: [{:2d}/{}] Final Prec@1 {:.4%}".format(epoch + 1, config.epochs,
                                                                correct / total))
    return correct / total


if __name__ == "__main__":
    main()
