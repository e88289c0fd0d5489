"""``darts-fast search`` (the original ``train_search.py``) and ``darts-fast train`` (the original
``train.py``): the options, their checks, and the exit codes (0 done, 1 diverged or a rank lost,
2 bad input, 130 interrupted, 143 terminated: torchrun's SIGTERM). Every check of the options
happens here or in the job's set-up, before the run folder is touched.

Each search space has its own options: ``--space`` (or, on ``--resume``, the run's own space)
picks the parser before the command line is read, so that ``--space rnn --help`` lists the
recurrent search's options."""
import argparse
import sys

import torch

from ..spaces.genotype_text import GenotypeError
from . import (data_options, evolve, evolve_options, export, make_images, profile,
               rnn_options, rnn_search, rnn_train, search, search_options, train,
               train_options)
from .errors import Diverged, FollowerStopped, RankFailure, UsageError
from .options import Parser
from .ranks import TERMINATED, Terminated, environment_rank, under_torchrun
from .run_dir import RunDirError, check_new_folder
from .runtime import cpu_threads
from .stored_run import ADDED_LATER, NOT_STORED, RESUMABLE, read_config, stored_option


def build_parser(space="cnn"):
    parser = Parser(prog="darts-fast", allow_abbrev=False,
                     description="DARTS architecture search with fused kernels")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    if space == "rnn":
        s = sub.add_parser("search", allow_abbrev=False,
                           help="search a recurrent cell (the original rnn/train_search.py)")
        rnn_options.add_search_options(s)
        s.set_defaults(job=rnn_search.run)
        t = sub.add_parser("train", allow_abbrev=False,
                           help="train a recurrent cell (the original rnn/train.py)")
        rnn_options.add_train_options(t)
        t.set_defaults(job=rnn_train.run)
        return parser, {"search": s, "train": t}

    s = sub.add_parser("search", allow_abbrev=False,
                       help="search a cell architecture (the original train_search.py)")
    search_options.add_search_options(s)
    rnn_options.add_space_option(s, "cnn")
    s.set_defaults(job=search.run)

    t = sub.add_parser("train", allow_abbrev=False,
                       help="train a found architecture (the original train.py, or "
                            "train_imagenet.py with --dataset imagenet)")
    train_options.add_train_options(t)
    rnn_options.add_space_option(t, "cnn")
    t.set_defaults(job=train.run)

    e = sub.add_parser("evolve", allow_abbrev=False,
                       help="choose the architecture of a search's trained supernet (SPOS' "
                            "evolution, regularised evolution, random search)")
    evolve_options.add_arguments(e)
    e.set_defaults(job=evolve.run)
    p = sub.add_parser("profile", allow_abbrev=False,
                       help="measure every candidate's latency on this device into a cost "
                            "table (--method proxyless --cost latency)")
    profile.add_arguments(p)
    p.set_defaults(job=profile.run)
    x = sub.add_parser("export", allow_abbrev=False,
                       help="write a train or search run's network as files to deploy "
                            "(model.pt, TorchScript, ONNX) that darts_fast.load reads")
    export.add_arguments(x)
    x.set_defaults(job=export.run)
    m = sub.add_parser("make-images", allow_abbrev=False,
                       help="write a small synthetic image-folder data set (to try --data on "
                            "images of any size)")
    make_images.add_arguments(m)
    m.set_defaults(job=make_images.run)
    return parser, {"search": s, "train": t, "evolve": e, "profile": p, "export": x,
                    "make-images": m}


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
        parser, commands = build_parser(chosen_space(argv))
        args = parser.parse_args(argv)
        if args.command in ("evolve", "profile", "export", "make-images"):  # no epochs
            args.given = _given(commands[args.command], argv[1:])
            with cpu_threads(getattr(args, "threads", None) or torch.get_num_threads()):
                return args.job(args)
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


def chosen_space(argv):
    """The space whose options ``argv`` (the command and its arguments) are read with: --space,
    else on --resume the run's own (cnn for a run made before there was a choice), else cnn.
    --space given with --resume must be the run's. A run folder that cannot be read is left to
    the parser's checks, which name what is wrong with it."""
    if len(argv) < 1 or argv[0] not in ("search", "train"):
        return "cnn"
    pre = Parser(prog=f"darts-fast {argv[0]}", add_help=False, allow_abbrev=False)
    pre.add_argument("--space")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv[1:])
    space = known.space if known.space in rnn_options.SPACES else None
    if known.resume is None:
        return space or "cnn"
    try:
        saved = stored_option(read_config(known.resume, argv[0])["options"], "space")
    except RunDirError:
        return space or "cnn"
    if known.space is not None and known.space != saved:
        raise UsageError(f"--space {known.space}: the run in {known.resume!r} is a {saved} "
                         f"{argv[0]} run; resume it without --space (it keeps its own)")
    return saved if saved in rnn_options.SPACES else "cnn"


def resolve_options(args, command_parser, argv):
    """The options of a new run as parsed, or on --resume the run's saved options (checked again)
    with the resumable ones given now; ``options.saved_config`` is the config.json read on
    --resume (None for a new run). ``options.threads`` is the thread count this process runs on
    (--threads, or torch's default), a new run's and a resumed one's alike: on resume, resume.py
    checks it against the checkpoint's."""
    options = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "job"})
    options.saved_config = None
    options.threads = args.threads or torch.get_num_threads()
    if not args.resume:
        if args.allow_thread_change:
            raise UsageError("--allow_thread_change is for --resume (a new run records the "
                             "thread count it runs on)")
        _check_data_options(options, args.command)
        if options.space == "cnn" and args.command == "search":
            search_options.resolve_method(options)
        if options.space == "rnn":
            rnn_options.check_model_options(options)
        if options.run_dir is not None:  # before the data is read; checked again once held
            check_new_folder(options.run_dir)
        return options
    given = _given(command_parser, argv) - {"resume", "space"}  # chosen_space checked --space
    refused = sorted(given - set(RESUMABLE))
    if refused:
        raise UsageError(f"--resume {args.resume}: the run keeps its own options; "
                         f"--{', --'.join(refused)} cannot change on resume (only "
                         f"--{', --'.join(RESUMABLE)} can)")
    config = read_config(args.resume, args.command)  # the job holds the folder before using it
    overrides = {name: getattr(args, name) for name in given if name not in NOT_STORED}
    saved = _parse_saved(command_parser, {**config["options"], **overrides}, args.resume,
                         args.command)
    saved.resume, saved.run_dir, saved.stop_after_epoch = args.resume, args.resume, \
        args.stop_after_epoch
    saved.threads, saved.allow_thread_change = options.threads, args.allow_thread_change
    saved.command = args.command
    saved.saved_config = config
    return saved


def _check_data_options(options, command):
    if options.space == "rnn":
        rnn_options.check_data_options(options)
        return
    data_options.check_data_options(options, command)
    if command == "train":
        train_options.resolve_train_defaults(options)


def _given(command_parser, argv):
    """The option names given on the command line (not left at their defaults)."""
    names = set()
    for action in command_parser._actions:
        if any(a == s or a.startswith(s + "=") for a in argv for s in action.option_strings):
            names.add(action.dest)
    return names


def _parse_saved(command_parser, saved, where, command):
    """The saved options, put through the same checks as the command line."""
    actions = {a.dest: a for a in command_parser._actions if a.option_strings}
    expected = set(actions) - set(NOT_STORED) - {"help"}
    absent = search_options.absent_method_options(saved.get("method"))
    saved = {**{name: value for name, value in {**absent, **ADDED_LATER}.items()
                if name in expected}, **saved}
    unknown, missing = sorted(set(saved) - expected), sorted(expected - set(saved))
    if unknown or missing:
        raise UsageError(f"config.json in {where!r} is not a configuration of this darts-fast "
                         f"version (unknown: {', '.join(unknown) or '-'}; missing: "
                         f"{', '.join(missing) or '-'})")
    argv = []
    for name, value in saved.items():
        action = actions[name]
        if isinstance(action, argparse.BooleanOptionalAction) and value is None:
            continue  # another method's switch: unset
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise UsageError(f"config.json in {where!r}: {name} must be true or false, "
                                 f"got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --name or --no-name
                argv += [action.option_strings[0 if value else 1]]
            else:
                argv += [action.option_strings[0]] if value else []
        elif isinstance(value, list) and action.nargs not in (None, "?"):  # N values
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise UsageError(f"config.json in {where!r}: {name} must be a list of numbers, "
                                 f"got {value!r}")
            argv += [action.option_strings[0], *map(str, value)]
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
    _check_data_options(parsed, command)
    return parsed
