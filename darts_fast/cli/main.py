"""``darts-fast search`` (the original ``train_search.py``) and ``darts-fast train`` (the original
``train.py``): the options, their checks, and the exit codes (0 done, 1 diverged or a rank lost,
2 bad input, 130 interrupted, 143 terminated: torchrun's SIGTERM). Every check of the options
happens here or in the job's set-up, before the run folder is touched."""
import argparse
import math
import sys

import torch

from ..methods.gdas import tau_limits
from ..spaces.cnn.genotypes import GenotypeError
from . import search, train
from .errors import Diverged, FollowerStopped, RankFailure, UsageError
from .loop import cpu_threads
from .ranks import TERMINATED, Terminated, environment_rank, under_torchrun
from .report import available_cpus
from .run_dir import ADDED_LATER, NOT_STORED, RESUMABLE, check_new_folder, read_config


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default: a switch's is off; an option whose help names
    its default (one set by --method, or none) is left as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:
            return f"{text} (default off)"
        return f"{text} (default %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_Help, **kwargs)

    def error(self, message):  # one line, and the same path as every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(kind, low=None, high=None, low_open=False, high_open=False, what=None):
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


positive_int = _number(int, 1, what="a positive integer")
non_negative_int = _number(int, 0, what="a non-negative integer")
non_negative = _number(float, 0.0, what="a finite number >= 0")
positive = _number(float, 0.0, low_open=True, what="a finite number > 0")
fraction = _number(float, 0.0, 1.0, high_open=True, what="a number in [0, 1)")
portion = _number(float, 0.0, 1.0, low_open=True, high_open=True,
                  what="a number strictly between 0 and 1")
seed = _number(int, 0, 2**32 - 1, what="an integer seed in 0..4294967295")
# More OpenMP threads than CPUs only wait for one another (and tens of thousands crash it).
_CPUS = available_cpus()
thread_count = _number(int, 1, _CPUS, what=f"an integer from 1 to the {_CPUS} CPUs this process "
                                            f"may use")
# The search's alphas are float32: a temperature outside its normal numbers hangs or flattens
# the Gumbel-softmax (gdas.tau_limits).
_TAU_LOW, _TAU_HIGH = tau_limits(torch.float32)
temperature = _number(float, _TAU_LOW, _TAU_HIGH, what=f"a finite number > 0 that float32 "
                                                       f"carries ({_TAU_LOW:g} to {_TAU_HIGH:g})")


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


def _common_options(p, batch_size, epochs, init_channels, layers, seed_default):
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=["synthetic", "cifar10"], default=None,
                      help="cifar10 (needs --data) or the offline synthetic default; "
                           "default: cifar10 when --data is given, else synthetic")
    data.add_argument("--data", type=folder_name, default=None,
                      help="the CIFAR-10 python batches: their folder or cifar-10-python.tar.gz "
                           "(default: none, the synthetic data)")
    data.add_argument("--synthetic_size", type=positive_int, default=2000,
                      help="number of synthetic training images (default %(default)s)")
    data.add_argument("--loader", choices=["tensor", "dataloader"], default="tensor",
                      help="tensor: the data set on the training device, batches augmented "
                           "there; dataloader: torch DataLoader with --workers")
    data.add_argument("--workers", type=non_negative_int, default=2,
                      help="worker processes of --loader dataloader (default %(default)s)")
    data.add_argument("--cutout", action="store_true",
                      help="cut a random square out of each training image")
    data.add_argument("--cutout_length", type=positive_int, default=16,
                      help="the side of --cutout's square, in pixels")
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


def build_parser():
    parser = _Parser(prog="darts-fast", allow_abbrev=False,
                     description="DARTS architecture search with fused kernels")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", allow_abbrev=False,
                       help="search a cell architecture (the original train_search.py)")
    _common_options(s, batch_size=None, epochs=None, init_channels=16, layers=None,
                    seed_default=2)
    s.add_argument("--method", choices=sorted(search.METHOD_DEFAULTS), default="darts",
                   help="darts (the original), pc-darts (partial channels and edge "
                        "normalisation) or gdas (one Gumbel-sampled candidate per edge), each "
                        "with its authors' defaults; default %(default)s")
    # None: the method's default (listed in the epilog).
    s.set_defaults(learning_rate=None, weight_decay=None)
    s.add_argument("--learning_rate_min", type=non_negative, default=None,
                   help="the weights' learning rate of the last epoch, where the cosine ends")
    s.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for the weights")
    s.add_argument("--train_portion", type=portion, default=0.5,
                   help="the share of the training images the weights learn from; the rest "
                        "is the validation split the alphas learn from")
    s.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    s.add_argument("--arch_learning_rate", type=non_negative, default=None,
                   help="the alphas' Adam learning rate")
    s.add_argument("--arch_weight_decay", type=non_negative, default=1e-3,
                   help="the alphas' weight decay")
    s.add_argument("--arch_start_epoch", type=non_negative_int, default=None,
                   help="epochs of weight steps alone before the architecture steps begin "
                        "(must be fewer than --epochs)")
    s.add_argument("--partial_channels", type=positive_int, default=None, metavar="K",
                   help="pc-darts: the candidates see 1/K of the channels (default 4)")
    s.add_argument("--tau_max", type=temperature, default=None,
                   help="gdas: the Gumbel-softmax temperature of the first epoch (default 10)")
    s.add_argument("--tau_min", type=temperature, default=None,
                   help="gdas: the temperature of the last epoch, reached linearly "
                        "(default 0.1)")
    for action in s._actions:  # the options that --method sets where not given
        if action.default is None and "default" not in (action.help or ""):
            by_method = _method_defaults(action.dest)
            action.help = f"{action.help}; {by_method}" if by_method else action.help
    s.epilog = ("defaults by --method: " + "; ".join(
        f"{method}: " + ", ".join(_flag(k, v) for k, v in values.items())
        for method, values in sorted(search.METHOD_DEFAULTS.items())))
    s.add_argument("--reference", action="store_true",
                   help="run the original algorithm (Python-sum MixedOp, original Architect)")
    s.add_argument("--hessian", choices=["finite_difference", "exact"],
                   default="finite_difference",
                   help="second-order term: the original's finite difference, or the exact "
                        "double-backward hypergradient (a different result)")
    s.add_argument("--recompute", action="store_true",
                   help="keep only each mixed op's input for the backward pass and compute its "
                        "candidates again there: far less memory, the same numbers, one more "
                        "forward pass")
    s.add_argument("--no_cuda_graph", action="store_true",
                   help="run every step eagerly on CUDA (default: the whole search step is "
                        "captured once into a CUDA graph and replayed)")
    s.add_argument("--sync_batch_norm", action="store_true",
                   help="under torchrun: BatchNorm statistics over the whole batch of all "
                        "processes (the single-process search on the concatenated batch; one "
                        "all-reduce per BatchNorm and pass) instead of per process, as DDP keeps "
                        "them")
    s.add_argument("--dist_timeout", type=positive_int, default=900, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in one operation "
                        "before the run stops with an error (default %(default)s)")
    s.add_argument("--original_valid_sampling", action="store_true",
                   help="draw each step's validation batch from a new iterator, as the original "
                        "does (default: one iterator per epoch, every validation image once)")
    s.set_defaults(job=search.run)

    t = sub.add_parser("train", allow_abbrev=False,
                       help="train a found architecture (the original train.py)")
    _common_options(t, batch_size=96, epochs=600, init_channels=36, layers=20, seed_default=0)
    t.add_argument("--genotype", default=None,
                   help="a genotype JSON file, a name (DARTS, DARTS_V1, DARTS_V2) or the text "
                        "Genotype(normal=[...], normal_concat=..., reduce=[...], ...); no "
                        "default: required")
    t.add_argument("--auxiliary", action="store_true", help="use the auxiliary tower")
    t.add_argument("--auxiliary_weight", type=non_negative, default=0.4,
                   help="the auxiliary tower's share of the loss")
    t.add_argument("--drop_path_prob", type=fraction, default=0.2,
                   help="drop path probability of the last epoch, reached linearly from 0")
    t.set_defaults(job=train.run)
    return parser, {"search": s, "train": t}


def _method_defaults(name):
    """'default by --method: darts 64, gdas 256, pc-darts 256' for an option that --method sets
    (one value when all agree; None for the others)."""
    shown = {method: _value_text(defaults[name])
             for method, defaults in sorted(search.METHOD_DEFAULTS.items()) if name in defaults}
    if not shown:
        return None
    if len(set(shown.values())) == 1 and len(shown) == len(search.METHOD_DEFAULTS):
        return f"default {next(iter(shown.values()))}"
    return "default by --method: " + ", ".join(f"{m} {v}" for m, v in shown.items())


def _value_text(value):
    return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"


def _flag(name, value):
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name}"
    return f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"


def main(argv=None):
    """The exit code of one command. Under torchrun every rank runs this; what all ranks decide
    alike (a divergence, an interruption, a failure rank 0 shares) only rank 0 reports, while
    an error of a rank's own (a bad option, unreadable data, a lost rank) each rank reports,
    named."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    prog = "darts-fast" + (f" {argv[0]}" if argv and argv[0] in ("search", "train") else "")
    follower = under_torchrun() and environment_rank() != 0
    if under_torchrun():
        prog += f" (rank {environment_rank()})"
    try:
        parser, commands = build_parser()
        args = parser.parse_args(argv)
        options = resolve_options(args, commands[args.command], argv[1:])
        with cpu_threads(options.threads):
            return args.job(options)
    except (UsageError, GenotypeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except FollowerStopped as e:
        return e.code
    except RankFailure as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return e.code
    except Diverged as e:
        if not follower:
            print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 1
    except Terminated:  # before the run began (the run reports its own as a RankFailure)
        print(f"{prog}: stopped: {TERMINATED}; this rank stopped before its first epoch: "
              f"nothing new was checkpointed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        # Jobs that hold a run folder report the interruption themselves.
        if not follower:
            print(f"\n{prog}: interrupted before anything was written", file=sys.stderr)
        return 130


def resolve_options(args, command_parser, argv):
    """The options of a new run as parsed, or on --resume the run's saved options (checked again)
    with the resumable ones given now; ``options.saved_config`` is the config.json read on
    --resume (None for a new run). ``options.threads`` is the thread count this process runs on
    (--threads, or torch's default), a new run's and a resumed one's alike: on resume, loop
    checks it against the checkpoint's."""
    options = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "job"})
    options.saved_config = None
    options.threads = args.threads or torch.get_num_threads()
    if not args.resume:
        if args.allow_thread_change:
            raise UsageError("--allow_thread_change is for --resume (a new run records the "
                             "thread count it runs on)")
        _check_data_options(options)
        if args.command == "search":
            search.resolve_method(options)
        if options.run_dir is not None:  # before the data is read; checked again once held
            check_new_folder(options.run_dir)
        return options
    given = _given(command_parser, argv) - {"resume"}
    refused = sorted(given - set(RESUMABLE))
    if refused:
        raise UsageError(f"--resume {args.resume}: the run keeps its own options; "
                         f"--{', --'.join(refused)} cannot change on resume (only "
                         f"--{', --'.join(RESUMABLE)} can)")
    config = read_config(args.resume, args.command)  # the job holds the folder before using it
    overrides = {name: getattr(args, name) for name in given if name not in NOT_STORED}
    saved = _parse_saved(command_parser, {**config["options"], **overrides}, args.resume)
    saved.resume, saved.run_dir, saved.stop_after_epoch = args.resume, args.resume, \
        args.stop_after_epoch
    saved.threads, saved.allow_thread_change = options.threads, args.allow_thread_change
    saved.command = args.command
    saved.saved_config = config
    return saved


def _check_data_options(options):
    if options.dataset is None:
        options.dataset = "cifar10" if options.data else "synthetic"
    if options.dataset == "cifar10" and not options.data:
        raise UsageError("--dataset cifar10 needs --data (the CIFAR-10 folder or archive)")
    if options.dataset == "synthetic" and options.data:
        raise UsageError("--data is for --dataset cifar10; the synthetic data set reads no "
                         "files")


def _given(command_parser, argv):
    """The option names given on the command line (not left at their defaults)."""
    names = set()
    for action in command_parser._actions:
        if any(a == s or a.startswith(s + "=") for a in argv for s in action.option_strings):
            names.add(action.dest)
    return names


def _parse_saved(command_parser, saved, where):
    """The saved options, put through the same checks as the command line."""
    actions = {a.dest: a for a in command_parser._actions if a.option_strings}
    expected = set(actions) - set(NOT_STORED) - {"help"}
    saved = {**{name: value for name, value in ADDED_LATER.items() if name in expected},
             **saved}
    unknown, missing = sorted(set(saved) - expected), sorted(expected - set(saved))
    if unknown or missing:
        raise UsageError(f"config.json in {where!r} is not a configuration of this darts-fast "
                         f"version (unknown: {', '.join(unknown) or '-'}; missing: "
                         f"{', '.join(missing) or '-'})")
    argv = []
    for name, value in saved.items():
        action = actions[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise UsageError(f"config.json in {where!r}: {name} must be true or false, "
                                 f"got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --name or --no-name
                argv += [action.option_strings[0 if value else 1]]
            else:
                argv += [action.option_strings[0]] if value else []
        elif value is not None:
            if isinstance(value, (dict, list, bool)):
                raise UsageError(f"config.json in {where!r}: {name} has the wrong type "
                                 f"({type(value).__name__})")
            argv += [action.option_strings[0], str(value)]
    try:
        parsed = command_parser.parse_args(argv)
    except UsageError as e:
        raise UsageError(f"config.json in {where!r} holds a bad option: {e}") from None
    parsed = argparse.Namespace(**{k: v for k, v in vars(parsed).items() if k != "job"})
    _check_data_options(parsed)
    return parsed
