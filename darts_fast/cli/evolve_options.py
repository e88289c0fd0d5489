"""``darts-fast evolve``'s options: the strategy's settings (each strategy's own, its authors'
defaults), how paths are scored, the budget, the run folder."""
import argparse

from .errors import UsageError
from .options import device_name, number, positive_int, seed, thread_count

# Per strategy: its own options and their defaults (the authors'), and the one a resumed run may
# extend.
STRATEGY_OPTIONS = {
    "spos": {"population": 50, "select": 10, "mutations": 25, "crossovers": 25,
             "mutation_prob": 0.1, "generations": 20, "recalibration_batches": 200},
    "regularized": {"population": 50, "sample_size": 10, "cycles": 1000,
                    "recalibration_batches": 200},
    "random": {"rounds": 1, "samples": 1000, "rescored": 10, "recalibration_batches": 0},
}
LENGTH = {"spos": "generations", "regularized": "cycles", "random": "rounds"}
# Options a resumed run takes anew (they change how it runs, not what it computed so far).
RESUMABLE = ("device", "threads", "generations", "cycles", "rounds")
NOT_STORED = ("resume", "run_dir", "threads", "job", "command", "given")


def add_arguments(p):
    p.add_argument("run", nargs="?", default=None,
                   help="the folder of a darts-fast search whose supernet is searched (spos, "
                        "random-ws, enas, or any search of DARTS' network)")
    p.add_argument("--strategy", choices=sorted(STRATEGY_OPTIONS), default="spos",
                   help="spos: SPOS' evolution (Guo et al.); regularized: aging evolution (Real "
                        "et al.); random: randomNAS' two-round random search (default spos)")
    s = p.add_argument_group("strategy settings (each strategy's own; its authors' defaults)")
    s.add_argument("--population", type=positive_int, default=None,
                   help="architectures per generation (spos) or alive (regularized): 50")
    s.add_argument("--select", type=positive_int, default=None, help="spos' top-k: 10")
    s.add_argument("--mutations", type=number(int, 0, what="an integer >= 0"), default=None,
                   help="spos' mutants per generation: 25")
    s.add_argument("--crossovers", type=number(int, 0, what="an integer >= 0"), default=None,
                   help="spos' crosses per generation: 25")
    s.add_argument("--mutation_prob", type=number(float, 0.0, 1.0, what="a probability"),
                   default=None, help="spos' probability that a mutant redraws a pair: 0.1")
    s.add_argument("--generations", type=positive_int, default=None, help="spos: 20")
    s.add_argument("--sample_size", type=positive_int, default=None,
                   help="regularized: the sample whose best is the parent: 10")
    s.add_argument("--cycles", type=positive_int, default=None,
                   help="regularized: architectures scored in all: 1000")
    s.add_argument("--rounds", type=positive_int, default=None, help="random: rounds: 1")
    s.add_argument("--samples", type=positive_int, default=None,
                   help="random: architectures per round: 1000")
    s.add_argument("--rescored", type=positive_int, default=None,
                   help="random: the best of a round scored on the whole validation split: 10")
    c = p.add_argument_group("scoring and budget")
    c.add_argument("--recalibration_batches", type=number(int, 0, what="an integer >= 0"),
                   default=None,
                   help="training batches through each path, its BatchNorm statistics reset "
                        "first (SPOS), before it is scored; 0: the supernet's statistics "
                        "(randomNAS). Default 200, random 0")
    c.add_argument("--eval_batches", type=positive_int, default=None,
                   help="validation batches each score reads (default: the whole validation "
                        "split; random: 10 for the first score)")
    c.add_argument("--batch_size", type=positive_int, default=None,
                   help="the scoring batch (default: the search's)")
    c.add_argument("--max_params", type=number(float, 0.0, low_open=True, what="a number > 0"),
                   default=None, help="the budget: millions of parameters of the trained network")
    c.add_argument("--max_flops", type=number(float, 0.0, low_open=True, what="a number > 0"),
                   default=None,
                   help="the budget: millions of multiply-adds of the trained network per image")
    c.add_argument("--eval_init_channels", type=positive_int, default=36,
                   help="the trained network the budget counts: its channels (default 36)")
    c.add_argument("--eval_layers", type=positive_int, default=20,
                   help="the trained network the budget counts: its cells (default 20)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=seed, default=0, help="the strategy's random seed (default 0)")
    r.add_argument("--run_dir", default=None,
                   help="a new or empty folder for the evolution (default runs/evolve-<time>)")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the evolution in RUN_DIR (a longer one with --generations, "
                        "--cycles or --rounds)")
    r.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    r.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads (default: torch's)")


def resolve(options):
    """Fills the strategy's defaults and refuses another strategy's options (a new run)."""
    own = STRATEGY_OPTIONS[options.strategy]
    for name, other in STRATEGY_OPTIONS.items():
        for dest in sorted(set(other) - set(own)):
            if getattr(options, dest) is not None:
                raise UsageError(f"--{dest} is a {name} option, not a {options.strategy} one "
                                 f"(add --strategy {name})")
    for dest, value in own.items():
        if getattr(options, dest) is None:
            setattr(options, dest, value)
    if options.run is None:
        raise UsageError("give the search run folder whose supernet to search (darts-fast "
                         "evolve RUN)")


def stored(options):
    """The options config.json and the checkpoint keep."""
    return {k: v for k, v in vars(options).items() if k not in NOT_STORED}


def resumed(options, config):
    """The evolution's stored options (``config``'s) with the resumable ones given now
    (``options.given``: the options on the command line); refuses the others."""
    refused = sorted(options.given - set(RESUMABLE) - {"resume"})
    if refused:
        raise UsageError(f"--resume {options.resume}: the evolution keeps its own options; "
                         f"--{', --'.join(refused)} cannot change on resume (only "
                         f"--{', --'.join(RESUMABLE)} can)")
    saved = argparse.Namespace(**config["options"])
    length = LENGTH.get(getattr(saved, "strategy", None))
    for name in options.given & set(RESUMABLE):
        if name in LENGTH.values() and name != length:
            raise UsageError(f"--{name}: the evolution in {options.resume} is a "
                             f"{saved.strategy} one, whose length is --{length}")
        setattr(saved, name, getattr(options, name))
    saved.resume = saved.run_dir = options.resume
    saved.threads = options.threads
    return saved
