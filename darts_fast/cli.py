"""``darts-fast search`` (the original ``train_search.py``) and ``darts-fast train`` (the original
``train.py``), with checkpoints every epoch, ``--resume`` and pictures of the results."""
import argparse
import csv
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, SubsetRandomSampler

from . import checkpoint, data
from .checkpoint import CheckpointError
from .data import DataError
from .genotypes import GenotypeError, genotype_text, genotype_to_dict, parse_genotype
from .progress import EpochProgress

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]


class UsageError(ValueError):
    """A bad combination of options or an unusable run folder."""


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def portion(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def _common_arguments(p, batch_size, epochs, init_channels, layers, seed, synthetic_size):
    data_group = p.add_argument_group("data")
    data_group.add_argument("--dataset", choices=["synthetic", "cifar10"], default=None,
                            help="cifar10 (needs --data) or the offline synthetic default; "
                                 "default: cifar10 when --data is given, else synthetic")
    data_group.add_argument("--data", default=None,
                            help="folder with the CIFAR-10 python batches (data_batch_1..5, "
                                 "test_batch), as extracted from cifar-10-python.tar.gz")
    data_group.add_argument("--synthetic_size", type=positive_int, default=synthetic_size,
                            help="number of synthetic training images (default %(default)s)")
    p.add_argument("--batch_size", type=positive_int, default=batch_size)
    p.add_argument("--learning_rate", type=float, default=0.025)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=3e-4)
    p.add_argument("--epochs", type=positive_int, default=epochs)
    p.add_argument("--init_channels", type=positive_int, default=init_channels)
    p.add_argument("--layers", type=positive_int, default=layers)
    p.add_argument("--cutout", action="store_true", help="use cutout")
    p.add_argument("--cutout_length", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--grad_clip", type=float, default=5.0)
    p.add_argument("--device", default=None, help="cuda when available, else cpu")
    run = p.add_argument_group("run folder")
    run.add_argument("--run_dir", default=None,
                     help="where outputs and checkpoints go (default runs/<command>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue the run in RUN_DIR from its last checkpoint, with its "
                          "configuration")
    run.add_argument("--stop_after_epoch", type=positive_int, default=None,
                     help="stop after this epoch (checkpointed); --resume continues the run")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="darts-fast", description="DARTS architecture search with fused kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a cell architecture (the original train_search.py)")
    _common_arguments(s, batch_size=64, epochs=50, init_channels=16, layers=8, seed=2,
                      synthetic_size=2000)
    s.add_argument("--learning_rate_min", type=float, default=0.001)
    s.add_argument("--train_portion", type=portion, default=0.5)
    s.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    s.add_argument("--arch_learning_rate", type=float, default=3e-4)
    s.add_argument("--arch_weight_decay", type=float, default=1e-3)
    s.add_argument("--reference", action="store_true",
                   help="run the original algorithm (Python-sum MixedOp, original Architect)")
    s.add_argument("--hessian", choices=["finite_difference", "exact"],
                   default="finite_difference",
                   help="second-order term: the original's finite difference, or the exact "
                        "double-backward hypergradient (a different result)")
    s.set_defaults(func=run_search)

    t = sub.add_parser("train", help="train a found architecture (the original train.py)")
    _common_arguments(t, batch_size=96, epochs=600, init_channels=36, layers=20, seed=0,
                      synthetic_size=2000)
    t.add_argument("--genotype", default=None,
                   help="a genotype JSON file, a name (DARTS, DARTS_V1, DARTS_V2) or the text "
                        "Genotype(normal=[...], normal_concat=..., reduce=[...], ...)")
    t.add_argument("--auxiliary", action="store_true", help="use the auxiliary tower")
    t.add_argument("--auxiliary_weight", type=float, default=0.4)
    t.add_argument("--drop_path_prob", type=float, default=0.2)
    t.set_defaults(func=run_train)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, DataError, GenotypeError, CheckpointError) as e:
        print(f"darts-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndarts-fast {args.command}: interrupted; resume with --resume "
              f"{getattr(args, 'run_dir', '')}", file=sys.stderr)
        return 130


# --- run folder, configuration, resume ---------------------------------------------------------

_RUN_OPTIONS = ("resume", "run_dir", "stop_after_epoch", "func", "command")


def _prepare_run(args):
    """Resolves the run folder and configuration (the saved one on --resume); returns the loaded
    checkpoint or None."""
    if args.resume:
        run_dir = args.resume
        config_path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(config_path):
            raise UsageError(f"--resume {run_dir!r}: no config.json there; is it a run folder?")
        with open(config_path) as f:
            saved = json.load(f)
        if saved.get("command") != args.command:
            raise UsageError(f"--resume {run_dir!r} is a {saved.get('command')} run, "
                             f"not a {args.command} run")
        state = checkpoint.load(os.path.join(run_dir, "checkpoint.pt"))
        for key, value in saved.items():
            if key not in _RUN_OPTIONS:
                setattr(args, key, value)
        args.run_dir = run_dir
        return state
    if args.dataset is None:
        args.dataset = "cifar10" if args.data else "synthetic"
    if args.dataset == "cifar10" and not args.data:
        raise UsageError("--dataset cifar10 needs --data DIR (the folder of the python batches)")
    if args.run_dir is None:
        args.run_dir = os.path.join("runs", f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(os.path.join(args.run_dir, "checkpoint.pt")):
        raise UsageError(f"{args.run_dir!r} already holds a run; use --resume {args.run_dir} to "
                         f"continue it, or another --run_dir")
    try:
        os.makedirs(args.run_dir, exist_ok=True)
        probe = os.path.join(args.run_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"run folder {args.run_dir!r} is not writable: {e.strerror}") from None
    config = {k: v for k, v in vars(args).items() if k not in _RUN_OPTIONS}
    config["command"] = args.command
    with open(os.path.join(args.run_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return None


def _device(args):
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device!r} is not a device name") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _metrics(run_dir, upto_epoch):
    """The metrics rows already written, up to the checkpointed epoch (a crash between writing a
    row and the checkpoint leaves a row that the resumed run writes again)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) <= upto_epoch]


def _write_metrics(run_dir, rows):
    path = os.path.join(run_dir, "metrics.csv")
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _accuracy(logits, target):
    return (logits.argmax(1) == target).float().mean().item() * 100


def _evaluate(model, loader, criterion, device):
    model.eval()
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss_sum += criterion(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


class _Meter:
    def __init__(self):
        self.loss = self.acc = self.n = 0.0

    def update(self, loss, acc, n):
        self.loss += loss * n
        self.acc += acc * n
        self.n += n

    def means(self):
        return self.loss / max(self.n, 1), self.acc / max(self.n, 1)


def _restore(state, model, optimizer, scheduler):
    """Loads what every run checkpoints; returns the number of epochs done (0 for a new run).
    The RNG states go last, so that nothing after them draws from the generators."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_states(state["rng"])
    return state["epoch"]


def _metrics_row(epoch, lr, meter, valid_loss, valid_acc, epoch_start):
    train_loss, train_acc = meter.means()
    return {"epoch": epoch + 1, "lr": f"{lr:.6g}", "train_loss": f"{train_loss:.4f}",
            "train_acc": f"{train_acc:.2f}", "valid_loss": f"{valid_loss:.4f}",
            "valid_acc": f"{valid_acc:.2f}", "seconds": f"{time.time() - epoch_start:.1f}"}


# --- search ------------------------------------------------------------------------------------

def run_search(args):
    state = _prepare_run(args)
    if args.reference and args.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    device = _device(args)
    images, labels = data.search_data(args)
    _seed(args.seed)

    if args.reference:
        from .reference import Architect, Network
    else:
        from .architect import Architect
        from .search_model import Network
    train_data = data.ImageDataset(images, labels, augment=True,
                                   cutout_length=args.cutout_length if args.cutout else 0)
    indices = list(range(len(train_data)))
    split = data.split_point(len(train_data), args.train_portion)
    if split < 1 or split >= len(train_data):
        raise UsageError(f"--train_portion {args.train_portion} leaves an empty split of "
                         f"{len(train_data)} images")
    train_queue = DataLoader(train_data, batch_size=args.batch_size,
                             sampler=SubsetRandomSampler(indices[:split]))
    valid_queue = DataLoader(train_data, batch_size=args.batch_size,
                             sampler=SubsetRandomSampler(indices[split:]))

    criterion = nn.CrossEntropyLoss()
    model = Network(args.init_channels, data.NUM_CLASSES, args.layers, criterion).to(device)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, args.epochs, eta_min=args.learning_rate_min)
    architect = Architect(model, args) if args.reference else \
        Architect(model, args, hessian=args.hessian)

    if state is not None:
        with torch.no_grad():
            for alpha, saved in zip(model.arch_parameters(), state["alphas"]):
                alpha.copy_(saved)
        architect.optimizer.load_state_dict(state["architect_optimizer"])
    start_epoch = _restore(state, model, optimizer, scheduler)
    rows = _metrics(args.run_dir, start_epoch)
    print(f"darts-fast search: {'reference' if args.reference else 'fused'} "
          f"{'second' if args.unrolled else 'first'}-order on {device}, {args.dataset} data "
          f"({split} train / {len(train_data) - split} valid images), run folder "
          f"{args.run_dir}", file=sys.stderr)

    run_start = time.time()
    last_epoch = min(args.epochs, args.stop_after_epoch or args.epochs)
    for epoch in range(start_epoch, last_epoch):
        # Epoch e uses the cosine rate of epoch e, as the original did on the PyTorch it was
        # written for; eta of the architect step is that rate.
        lr = scheduler.get_last_lr()[0]
        progress = EpochProgress(epoch, args.epochs, len(train_queue), run_start)
        epoch_start = time.time()
        meter = _Meter()
        for step, (x, y) in enumerate(train_queue):
            model.train()
            x, y = x.to(device), y.to(device)
            x_search, y_search = next(iter(valid_queue))
            x_search, y_search = x_search.to(device), y_search.to(device)
            architect.step(x, y, x_search, y_search, lr, optimizer, unrolled=args.unrolled)
            optimizer.zero_grad()
            logits = model(x)
            loss = criterion(logits, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            meter.update(loss.item(), _accuracy(logits, y), len(y))
            progress.update(step + 1, *meter.means())
        scheduler.step()
        valid_loss, valid_acc = _evaluate(model, valid_queue, criterion, device)
        train_loss, train_acc = meter.means()
        rows.append(_metrics_row(epoch, lr, meter, valid_loss, valid_acc, epoch_start))
        _write_search_outputs(args.run_dir, epoch + 1, model, rows)
        checkpoint.save({
            "command": "search", "epoch": epoch + 1, "model": model.state_dict(),
            "alphas": [a.detach().cpu() for a in model.arch_parameters()],
            "optimizer": optimizer.state_dict(),
            "architect_optimizer": architect.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_states(),
        }, os.path.join(args.run_dir, "checkpoint.pt"))
        progress.finish(f"train loss {train_loss:.3f} acc {train_acc:.1f}% | valid loss "
                        f"{valid_loss:.3f} acc {valid_acc:.1f}% | genotype "
                        f"{os.path.join(args.run_dir, 'genotype.json')}",
                        epoch + 1 - start_epoch, last_epoch - epoch - 1)
    _print_search_summary(args, model, last_epoch)
    return 0


def _write_search_outputs(run_dir, epoch, model, rows):
    from . import visualize

    genotype = model.genotype()
    record = dict(genotype_to_dict(genotype), epoch=epoch, text=genotype_text(genotype))
    _write_json(os.path.join(run_dir, f"genotype_epoch_{epoch:03d}.json"), record)
    _write_json(os.path.join(run_dir, "genotype.json"), record)
    with open(os.path.join(run_dir, "genotype.txt.tmp"), "w") as f:
        f.write(genotype_text(genotype) + "\n")
    os.replace(os.path.join(run_dir, "genotype.txt.tmp"), os.path.join(run_dir, "genotype.txt"))
    with torch.no_grad():
        normal, reduce = (torch.softmax(a.detach().float().cpu(), -1)
                          for a in model.arch_parameters())
    _write_json(os.path.join(run_dir, f"alphas_epoch_{epoch:03d}.json"),
                {"epoch": epoch, "normal": normal.tolist(), "reduce": reduce.tolist()})
    _write_metrics(run_dir, rows)
    visualize.draw_cell(genotype.normal, genotype.normal_concat, f"normal cell, epoch {epoch}",
                        os.path.join(run_dir, "normal.png"))
    visualize.draw_cell(genotype.reduce, genotype.reduce_concat,
                        f"reduction cell, epoch {epoch}", os.path.join(run_dir, "reduction.png"))
    visualize.draw_alphas(normal.numpy(), reduce.numpy(), f"softmax(alpha), epoch {epoch}",
                          os.path.join(run_dir, "alphas.png"))
    visualize.draw_curves(rows, os.path.join(run_dir, "curves.png"))


def _print_search_summary(args, model, epoch):
    d = args.run_dir
    done = epoch >= args.epochs
    print(f"\n{'search finished' if done else f'stopped after epoch {epoch}'}: {d}\n"
          f"  genotype:  {os.path.join(d, 'genotype.json')} (and genotype.txt: "
          f"{genotype_text(model.genotype())})\n"
          f"  pictures:  {os.path.join(d, 'normal.png')}, {os.path.join(d, 'reduction.png')}, "
          f"{os.path.join(d, 'alphas.png')}, {os.path.join(d, 'curves.png')}\n"
          f"  metrics:   {os.path.join(d, 'metrics.csv')}"
          + ("" if done else f"\n  continue:  darts-fast search --resume {d}"))


# --- train -------------------------------------------------------------------------------------

def run_train(args):
    state = _prepare_run(args)
    if args.genotype is None:
        raise UsageError("train needs --genotype (a JSON file, a name, or Genotype(...) text)")
    genotype = parse_genotype(args.genotype)
    device = _device(args)
    (train_images, train_labels), (test_images, test_labels) = data.train_test_data(args)
    _seed(args.seed)
    from .eval_model import NetworkCIFAR

    train_data = data.ImageDataset(train_images, train_labels, augment=True,
                                   cutout_length=args.cutout_length if args.cutout else 0)
    test_data = data.ImageDataset(test_images, test_labels, augment=False)
    train_queue = DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    test_queue = DataLoader(test_data, batch_size=args.batch_size, shuffle=False)
    model = NetworkCIFAR(args.init_channels, data.NUM_CLASSES, args.layers, args.auxiliary,
                         genotype).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    start_epoch = _restore(state, model, optimizer, scheduler)
    rows = _metrics(args.run_dir, start_epoch)
    _write_json(os.path.join(args.run_dir, "genotype.json"),
                dict(genotype_to_dict(genotype), text=genotype_text(genotype)))
    params = sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n)
    print(f"darts-fast train: {params / 1e6:.2f}M parameters on {device}, {args.dataset} data "
          f"({len(train_data)} train / {len(test_data)} test images), run folder "
          f"{args.run_dir}", file=sys.stderr)

    from . import visualize

    run_start = time.time()
    last_epoch = min(args.epochs, args.stop_after_epoch or args.epochs)
    for epoch in range(start_epoch, last_epoch):
        lr = scheduler.get_last_lr()[0]
        model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
        progress = EpochProgress(epoch, args.epochs, len(train_queue), run_start)
        epoch_start = time.time()
        meter = _Meter()
        model.train()
        for step, (x, y) in enumerate(train_queue):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            logits, logits_aux = model(x)
            loss = criterion(logits, y)
            if args.auxiliary:
                loss = loss + args.auxiliary_weight * criterion(logits_aux, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            meter.update(loss.item(), _accuracy(logits, y), len(y))
            progress.update(step + 1, *meter.means())
        scheduler.step()
        test_loss, test_acc = _evaluate(model, test_queue, criterion, device)
        train_loss, train_acc = meter.means()
        rows.append(_metrics_row(epoch, lr, meter, test_loss, test_acc, epoch_start))
        _write_metrics(args.run_dir, rows)
        visualize.draw_curves(rows, os.path.join(args.run_dir, "curves.png"))
        _write_json(os.path.join(args.run_dir, "final.json"), {
            "epochs_done": epoch + 1, "epochs": args.epochs, "test_acc": test_acc,
            "best_test_acc": max(float(r["valid_acc"]) for r in rows), "test_loss": test_loss})
        checkpoint.save({
            "command": "train", "epoch": epoch + 1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": checkpoint.rng_states(),
        }, os.path.join(args.run_dir, "checkpoint.pt"))
        progress.finish(f"train loss {train_loss:.3f} acc {train_acc:.1f}% | test loss "
                        f"{test_loss:.3f} acc {test_acc:.1f}%", epoch + 1 - start_epoch,
                        last_epoch - epoch - 1)
    d = args.run_dir
    print(f"\n{'training finished' if last_epoch >= args.epochs else f'stopped after epoch {last_epoch}'}"
          f": {d}\n  final accuracy: {os.path.join(d, 'final.json')}\n"
          f"  curves: {os.path.join(d, 'curves.png')}\n  metrics: {os.path.join(d, 'metrics.csv')}")
    return 0
