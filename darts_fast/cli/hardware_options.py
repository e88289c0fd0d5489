"""``darts-fast search --cost``: ProxylessNAS' hardware loss on the alphas (``search.
hardware_loss``) for the searches of DARTS' network that read softmax(alpha) over every
candidate (ProxylessNAS, DARTS, PC-DARTS, GDAS): its options, their checks, the architect's loss.
"""
from ..search import hardware_loss
from ..spaces.cnn import resources
from .errors import UsageError


def add_options(parser, kinds):
    h = parser.add_argument_group("hardware loss (ProxylessNAS' mul#log, on the alphas)")
    h.add_argument("--cost", choices=sorted(hardware_loss.COSTS), default=None,
                   help="the architecture step's loss becomes 0.2 * CE * (log E[cost] / log "
                        "--cost_reference)^0.3, E[cost] the alphas' expected latency (ms, a "
                        "--cost_table from darts-fast profile), multiply-adds or parameters "
                        "(millions, computed from the network) (default: none)")
    h.add_argument("--cost_table", default=None, metavar="FILE",
                   help="the per-candidate cost table (darts-fast profile) (default: none; "
                        "computed for flops and params)")
    h.add_argument("--cost_reference", type=kinds.number(float, 1.0, low_open=True,
                                                         what="a number > 1"), default=None,
                   help="the cost the loss aims at (ProxylessNAS' ref_value), in --cost's unit "
                        "(default: none, required with --cost)")


def check(options, method):
    """Refuses --cost options the search cannot run with (new or resumed)."""
    given = [f"--{name}" for name in ("cost_table", "cost_reference")
             if getattr(options, name) is not None]
    if options.cost is None:
        if given:
            raise UsageError(f"{given[0]} is for the hardware loss; add --cost")
        return
    if not method.hardware_loss:
        raise UsageError(f"--cost: --method {method.name} has no alphas over every candidate of "
                         f"DARTS' network for the hardware loss to weigh")
    if options.reference:
        raise UsageError("--cost is a darts_fast option; the --reference algorithm is the "
                         "authors' loss alone")
    if options.cost_reference is None:
        raise UsageError(f"--cost {options.cost} needs --cost_reference, the target in "
                         f"{hardware_loss.COSTS[options.cost][2]}")
    if options.cost == "latency" and options.cost_table is None:
        raise UsageError("--cost latency needs --cost_table FILE, measured on the target device "
                         "with darts-fast profile")


def architect_options(model, options):
    """The architect's ``loss_fn`` of ``--cost`` ({} without it); the table checked now, not at
    the first architecture step."""
    if options.cost is None:
        return {}
    try:
        table = None if options.cost_table is None else \
            resources.load_table(options.cost_table, model)
        return {"loss_fn": hardware_loss.HardwareLoss(model, options.cost,
                                                      options.cost_reference, table)}
    except (OSError, ValueError) as e:
        raise UsageError(f"--cost {options.cost}: {e}") from None


def banner_text(options):
    """The banner's words on the loss ('' without one)."""
    if options.cost is None:
        return ""
    return (f", mul#log {options.cost} loss toward {options.cost_reference:g} "
            f"{hardware_loss.COSTS[options.cost][2]}")
