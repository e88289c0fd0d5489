"""The command line's option parsing pieces: the parser and its help format, the value kinds
(each refuses what it cannot take with a message naming what it expected) and the options both
commands share. Methods build their own options from these kinds (``methods.registry``)."""
import argparse
import math

import torch

from .errors import UsageError
from .report import available_cpus
from .stored_run import RESUMABLE


class Help(argparse.HelpFormatter):
    """Every option's help ends with its default: a switch's is off; an option whose help names
    its default (one set by --method, or none) is left as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:
            return f"{text} (default off)"
        return f"{text} (default %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=Help, **kwargs)

    def error(self, message):  # one line, and the same path as every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")


def number(kind, low=None, high=None, low_open=False, high_open=False, what=None):
    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low))
        ok = ok and (high is None or (value < high if high_open else value <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = number(int, 1, what="a positive integer")
non_negative_int = number(int, 0, what="a non-negative integer")
non_negative = number(float, 0.0, what="a finite number >= 0")
positive = number(float, 0.0, low_open=True, what="a finite number > 0")
fraction = number(float, 0.0, 1.0, high_open=True, what="a number in [0, 1)")
portion = number(float, 0.0, 1.0, low_open=True, high_open=True,
                  what="a number strictly between 0 and 1")
seed = number(int, 0, 2**32 - 1, what="an integer seed in 0..4294967295")
# More OpenMP threads than CPUs only wait for one another (and tens of thousands crash it).
_CPUS = available_cpus()
thread_count = number(int, 1, _CPUS, what=f"an integer from 1 to the {_CPUS} CPUs this process "
                                            f"may use")
def device_name(text):
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return text


def folder_name(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty name")
    return text


def common_options(p, batch_size, epochs, init_channels, layers, seed_default):
    p.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help="images per step (per process under torchrun); a split of fewer "
                        "images is one batch of them all")
    p.add_argument("--learning_rate", type=non_negative, default=0.025,
                   help="the weights' SGD learning rate of the first epoch, cosine-annealed over "
                        "--epochs")
    p.add_argument("--momentum", type=fraction, default=0.9, help="the weights' SGD momentum")
    p.add_argument("--weight_decay", type=non_negative, default=3e-4,
                   help="the weights' SGD weight decay")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="epochs of the run")
    p.add_argument("--init_channels", type=positive_int, default=init_channels,
                   help="channels of the first cell")
    p.add_argument("--layers", type=positive_int, default=layers,
                   help="cells of the network (a third and two thirds of the way reduce)")
    p.add_argument("--seed", type=seed, default=seed_default,
                   help="seed of every random generator: the same seed, the same run")
    p.add_argument("--grad_clip", type=non_negative, default=5.0,
                   help="the largest norm of the weights' gradient in a step (a larger one "
                        "is scaled down to it)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads of torch's operations (torch.set_num_threads), recorded "
                        "with the run: on the CPU the numbers depend on it, so --resume on "
                        "another count is refused unless --allow_thread_change is given (on "
                        "CUDA it is not checked: the GPU's numbers do not depend on it); "
                        f"default: torch's, here {torch.get_num_threads()} (OMP_NUM_THREADS "
                        f"sets it)")
    p.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-identical reruns on a GPU too: deterministic algorithms only "
                        "(torch.use_deterministic_algorithms, cuDNN without autotuning); slower")
    run = p.add_argument_group("run folder")
    run.add_argument("--run_dir", type=folder_name, default=None,
                     help="a new or empty folder for the outputs and checkpoints "
                          "(default runs/<command>-<time>)")
    run.add_argument("--resume", type=folder_name, metavar="RUN_DIR", default=None,
                     help="continue the run in RUN_DIR from its last checkpoint with its own "
                          f"options; only --{', --'.join(RESUMABLE)} may be given with it "
                          f"(default: a new run)")
    run.add_argument("--allow_thread_change", action="store_true",
                     help="with --resume: continue on another --threads count than the run's "
                          "checkpoint was computed on (logged; the numbers then differ from a "
                          "run never stopped)")
    run.add_argument("--stop_after_epoch", type=positive_int, default=None,
                     help="stop after this epoch (checkpointed); --resume continues the run "
                          "(default: run every epoch)")


def hessian_option(p):
    """``--hessian``: the second-order term of a search, either space's."""
    p.add_argument("--hessian", choices=["finite_difference", "exact"],
                   default="finite_difference",
                   help="second-order term: the original's finite difference, or the exact "
                        "double-backward hypergradient (a different result)")
