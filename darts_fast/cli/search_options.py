"""``darts-fast search``'s options and how ``--method`` fills them: every method-specific option,
default and refusal comes from the method registry (``darts_fast.methods``)."""
import argparse

from .. import methods as methods_
from ..spaces.cnn.genotypes import PRIMITIVES, check_primitives
from . import guards, hardware_options, loaders
from . import options as kinds
from .errors import UsageError
from .data_options import add_data_options
from .options import (common_options, hessian_option, non_negative, non_negative_int, portion,
                      positive_int)


def candidate_list(text):
    """``--primitives``: comma-separated candidate names, refused unless known and distinct."""
    try:
        return ",".join(check_primitives([p.strip() for p in text.split(",")], "--primitives"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--primitives: ")) from None


def add_search_options(s):
    common_options(s, batch_size=None, epochs=None, init_channels=16, layers=None,
                   seed_default=2)
    add_data_options(s)
    registered = methods_.methods()
    s.add_argument("--method", choices=sorted(registered), default="darts",
                   help="; ".join(f"{name}: {m.summary}" for name, m in sorted(registered.items()))
                   + "; each with its authors' defaults (default %(default)s)")
    s.add_argument("--primitives", type=candidate_list, default=None, metavar="A,B,...",
                   help="the candidates of every edge, in the alphas' column order (default: "
                        "DARTS' " + ",".join(PRIMITIVES) + ")")
    # None: the method's default (listed in the epilog).
    s.set_defaults(learning_rate=None, weight_decay=None)
    s.add_argument("--learning_rate_min", type=non_negative, default=None,
                   help="the weights' learning rate of the last epoch, where the cosine ends")
    s.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for the weights")
    s.add_argument("--train_portion", type=portion, default=0.5,
                   help="the share of the training images the weights learn from; the rest "
                        "is the validation split the alphas learn from")
    s.add_argument("--subset", type=portion, nargs=2, default=None, metavar=("WEIGHTS", "ARCH"),
                   help="instead of --train_portion: the shares of each class of the training "
                        "images the weights and the alphas learn from, drawn apart (PC-DARTS' "
                        "ImageNet search: 0.1 0.025) (default: none)")
    s.add_argument("--warmup_epochs", type=non_negative_int, default=0,
                   help="epochs over which the weights' learning rate rises linearly to "
                        "--learning_rate (PC-DARTS' ImageNet search: 5) (default %(default)s)")
    s.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    s.add_argument("--arch_learning_rate", type=non_negative, default=None,
                   help="the alphas' Adam learning rate")
    s.add_argument("--arch_weight_decay", type=non_negative, default=1e-3,
                   help="the alphas' weight decay")
    s.add_argument("--arch_grad_clip", type=non_negative, default=None,
                   help="the largest norm of the alphas' gradient in a step (PC-DARTS' ImageNet "
                        "search: 5) (default: not clipped)")
    s.add_argument("--arch_start_epoch", type=non_negative_int, default=None,
                   help="epochs of weight steps alone before the architecture steps begin "
                        "(must be fewer than --epochs)")
    for name, method in sorted(registered.items()):
        method.add_options(_SharedOptions(s, s.add_argument_group(f"{name} options")), kinds)
    for action in s._actions:  # the options that --method sets where not given
        if action.default is None and "default" not in (action.help or ""):
            by_method = _method_defaults(action.dest, registered)
            action.help = f"{action.help}; {by_method}" if by_method else action.help
    s.epilog = ("defaults by --method: " + "; ".join(
        f"{name}: " + ", ".join(_flag(k, v) for k, v in method.defaults.items())
        for name, method in sorted(registered.items())))
    s.add_argument("--reference", action="store_true",
                   help="run the method's original algorithm as its authors wrote it (Python-sum "
                        "mixed op, original Architect)")
    hessian_option(s)
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
    guards.add_guard_options(s, kinds)
    hardware_options.add_options(s, kinds)
    s.add_argument("--original_valid_sampling", action="store_true",
                   help="draw each step's validation batch from a new iterator, as the original "
                        "does (default: one iterator per epoch, every validation image once)")


def architect_clip(options):
    """The architect's ``grad_clip`` where --arch_grad_clip is given."""
    return {} if options.arch_grad_clip is None else {"grad_clip": options.arch_grad_clip}


def own_options(method):
    """The option names that ``method`` adds (its ``add_options``)."""
    parser = argparse.ArgumentParser(add_help=False)
    method.add_options(parser, kinds)
    return {action.dest for action in parser._actions}


def absent_method_options(name):
    """What a stored run of the method ``name`` ran with where its config.json lacks the
    methods' own options (options added after it was made): its method's defaults for that
    method's options, None for the other methods'."""
    registered = methods_.methods()
    method = registered.get(name) if isinstance(name, str) else None
    values = {option: None for m in registered.values() for option in own_options(m)}
    if method is not None:
        values.update({option: method.defaults.get(option) for option in own_options(method)})
    return values


def resolve_method(options):
    """Fills the options left unset with the method's defaults and checks them against it (a new
    run; config.json then holds them)."""
    try:
        method = methods_.get(options.method)
        for name, other in sorted(methods_.methods().items()):
            for dest in sorted(own_options(other) - own_options(method)):
                if getattr(options, dest, None) is not None:
                    raise UsageError(f"--{dest} is a {name} option, not a {method.name} one "
                                     f"(add --method {name})")
        if not method.second_order:
            given = "--unrolled" if options.unrolled else \
                "--hessian exact" if options.hessian == "exact" else None
            if given:
                raise UsageError(f"{given} is for a second-order search; {method.name} searches "
                                 f"first order only, as its authors do")
        for name, value in method.defaults.items():
            if getattr(options, name) is None:
                setattr(options, name, value)
        method.check(options)
    except methods_.MethodOptionError as e:
        raise UsageError(str(e)) from None


def check_search(options, method, torchrun):
    """Refuses a search (new or resumed) that cannot run as its options say; ``torchrun``:
    whether it runs under torchrun."""
    check_architecture_steps(options, method)
    try:  # again on --resume, whose resumable options may have changed
        method.check(options)
    except methods_.MethodOptionError as e:
        raise UsageError(str(e)) from None
    guards.check(options, method, torchrun)
    hardware_options.check(options, method)
    stored = (options.saved_config or {}).get("options", {}).get("epochs", options.epochs)
    if method.stages(options) > 1 and options.epochs != stored:
        raise UsageError(f"--epochs {options.epochs}: the run's {method.stages(options)} stages "
                         f"are {stored // method.stages(options)} epochs each; resume it with "
                         f"its --epochs {stored}")
    if options.reference and method.networks()[1] is None:
        raise UsageError(f"--reference: {method.name} has no formulation of its authors to run")
    if options.reference and options.hessian == "exact":
        raise UsageError("--hessian exact is a darts_fast option; the --reference algorithm has "
                         "only the original finite difference")
    if options.reference and options.primitives is not None:
        raise UsageError("--primitives is a darts_fast option; the --reference algorithm "
                         "searches its authors' candidates")
    if options.reference and options.recompute:
        raise UsageError("--recompute is a darts_fast option; the --reference algorithm stores "
                         "every candidate's output")
    if torchrun and options.reference:
        raise UsageError("--reference runs in one process; the original architect cannot "
                         "average its gradients over torchrun's ranks")
    if torchrun and method.one_process:
        raise UsageError(f"--method {method.name} runs in one process: {method.one_process}")
    if options.sync_batch_norm and not torchrun:
        raise UsageError("--sync_batch_norm takes BatchNorm statistics over the processes of a "
                         "torchrun search; one process has them already")


def check_architecture_steps(options, method):
    """Refuses a search (new, or resumed with other --epochs) that would end before its first
    architecture step: its genotype would be read from the alphas as initialised, at random."""
    start, epochs = options.arch_start_epoch, options.epochs
    if start < epochs:
        return
    default = f" (the {method.name} default)" if start == method.defaults.get(
        "arch_start_epoch") else ""
    fix = f"more --epochs than {start}" + ("" if options.resume else
                                           " or a smaller --arch_start_epoch")
    raise UsageError(f"--arch_start_epoch {start}{default} with --epochs {epochs}: the run would "
                     f"end before its first architecture step, and the genotype would be read "
                     f"from the alphas' random initial values; give {fix}")


def architecture_steps_text(options, stage_epochs, steps_per_epoch):
    """The banner's words on which epochs and how many steps update the alphas, when weight
    steps alone come first (fewer than --epochs suggests); ``steps_per_epoch``: the
    architecture steps of an epoch."""
    o = options
    if not o.arch_start_epoch:
        return ""
    if stage_epochs < o.epochs:
        return (f", weight steps alone in the first {o.arch_start_epoch} "
                f"epoch{'s' if o.arch_start_epoch > 1 else ''} of each stage")
    epochs = o.epochs - o.arch_start_epoch
    steps = epochs * steps_per_epoch
    stop = (f" (--stop_after_epoch {o.stop_after_epoch} stops before the first)"
            if o.stop_after_epoch and o.stop_after_epoch <= o.arch_start_epoch else "")
    return (f", weight steps alone in {_epochs_text(1, o.arch_start_epoch)}: only "
            f"{_epochs_text(o.arch_start_epoch + 1, o.epochs)} update the alphas ({epochs} "
            f"of {o.epochs} epochs, {steps} architecture step{'s' if steps > 1 else ''}){stop}")


def _epochs_text(first, last):
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _method_defaults(name, registered):
    """'default by --method: darts 64, gdas 256, pc-darts 256' for an option that --method sets
    (one value when all agree; None for the others)."""
    shown = {method: _value_text(m.defaults[name])
             for method, m in sorted(registered.items()) if name in m.defaults}
    if not shown:
        return None
    if len(set(shown.values())) == 1 and len(shown) == len(registered):
        return f"default {next(iter(shown.values()))}"
    return "default by --method: " + ", ".join(f"{m} {v}" for m, v in shown.items())


def _value_text(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(_value_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag(name, value):
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name}"
    return f"--{name} {_value_text(value)}"


class _SharedOptions:
    """A method's argument group that adds each option once: methods may share an option (the
    first method, by name, defines it)."""

    def __init__(self, parser, group):
        self.parser, self.group = parser, group

    def add_argument(self, *flags, **kwargs):
        if not any(flag in self.parser._option_string_actions for flag in flags):
            self.group.add_argument(*flags, **kwargs)


def banner(job):
    """The search's banner line: the method, where it runs, its architecture steps, its data."""
    o, ranks = job.options, job.ranks
    order = "weight-sharing" if job.architect is None else \
        "second-order" if o.unrolled else "first-order"
    where = (f"{ranks.world} processes ({ranks.backend}; rank 0 on {job.device}), "
             f"BatchNorm statistics {'over all ranks' if o.sync_batch_norm else 'per rank'}"
             if ranks.distributed else f"{job.device}")
    method = " ".join(filter(None, (job.method.name, job.method.describe(o))))
    steps = architecture_steps_text(o, job.stage_epochs,
                                    len(job.train_loader) // job.method.architecture_every)
    method += hardware_options.banner_text(o)
    return (f"{'reference' if o.reference else 'fused'} {order} {method} search on "
            f"{where}{steps}, "
            f"{o.dataset} data ({len(job.train_loader)} + {len(job.valid_loader)} batches "
            f"{loaders.batches_of(o.batch_size, job.split_images, ranks)}), "
            f"{o.loader} loader")
