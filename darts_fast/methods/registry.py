"""What a search method is to the command line, and the registry of them by name.

A method is one module: its network (and its authors' formulation, for ``--reference``), and a
``Method`` subclass instance registered with ``register``. The command line reads everything
method-specific from that object: its defaults, its own options, its step order, what it refuses;
the network carries the rest (``capturable``, ``genotype_rule``, ``architecture_tables``).
"""
from ..search.architect import Architect


class MethodOptionError(ValueError):
    """Options that a method cannot run with (the command line reports it as bad input)."""


class Method:
    """One search method. Class attributes:

    ``name``: its ``--method`` name; ``summary``: one line for ``--help``;
    ``defaults``: the authors' settings of the shared options, and of its own options;
    ``weights_first``: the weight step before the architecture step (GDAS' order);
    ``second_order``: whether ``--unrolled`` / ``--hessian exact`` apply;
    ``one_process``: why it cannot run under torchrun (None: it can);
    ``architect_class``: the architecture step's class, built as ``Architect(model, options,
    hessian=..., **architect_options(options))``; None: weight steps alone (a single-path
    supernet, whose architecture ``searcher`` finds);
    ``architecture_every``: the weight steps per architecture step (ProxylessNAS: 5);
    ``alphas``: whether the network's alphas are what the search finds (the genotype read from
    them each epoch, their pictures, the guards); otherwise ``searcher`` gives the genotype;
    ``hardware_loss``: whether ``--cost`` applies (alphas over every candidate of every edge).
    """

    name = None
    summary = ""
    defaults = {}
    weights_first = False
    second_order = True
    one_process = None
    architect_class = Architect
    architecture_every = 1
    alphas = True
    hardware_loss = True

    def networks(self):
        """(darts_fast's network class, its authors' formulation for ``--reference`` or None)."""
        raise NotImplementedError

    def add_options(self, group, kinds):
        """Adds the method's own options to the argparse ``group``, each with default None (its
        value then comes from ``defaults``); ``kinds``: the command line's value parsers."""

    def network_options(self, options):
        """Keyword arguments of the network from the parsed ``options``."""
        return {}

    def check(self, options):
        """Raises MethodOptionError for options this method cannot run with (after defaults)."""

    def begin_epoch(self, model, epoch, options):
        """Sets what the method changes per epoch, from the epoch alone (a resumed run needs
        nothing saved)."""

    def architect_options(self, options):
        """Keyword arguments of the architect beyond the shared ones (``grad_clip``, say)."""
        return {}

    def stages(self, options):
        """How many networks the search runs through, one after the other, each for an equal
        share of ``--epochs`` with its own optimizers and schedule (P-DARTS: 3)."""
        return 1

    def stage_network(self, stage, options, previous):
        """Network keyword arguments for stage ``stage`` beyond ``network_options`` (``layers``
        among them overrides ``--layers``), read from ``previous``, the last stage's network
        (None for the first stage). Plain values: a checkpoint keeps them."""
        return {}

    def final_genotypes(self, model, options):
        """After the last epoch: ``(kept, [(name, genotype), ...])``, the genotype the search
        keeps and the others it names (P-DARTS' skip caps); None where the network's own
        genotype is the result."""
        return None

    def searcher(self, model, options):
        """What searches beside the weight steps, for a method without alphas (None: nothing):
        an object with ``end_epoch(job, epoch)`` (after the epoch's steps: ENAS' controller,
        randomNAS' final evaluation), ``genotype()`` (the architecture found so far, or None),
        ``text()`` (the epoch's log words), ``state_dict()`` and ``load_state_dict(state)``
        (plain values: the checkpoint keeps them)."""
        return None

    def output_lines(self, run, found):
        """The summary's lines on what a search without alphas leaves in ``run`` (``found``:
        whether its searcher gave a genotype)."""
        return [f"genotype:  {run.file('genotype.json')}"] if found else []

    def describe(self, options):
        """The banner's words on the method, after its name ('' for none)."""
        return ""


_METHODS = {}


def register(method):
    """Adds ``method`` (a Method instance) under ``method.name``; returns it."""
    if not isinstance(method, Method) or not isinstance(method.name, str) or not method.name:
        raise TypeError(f"register: expected a Method instance with a name, got {method!r}")
    if method.name in _METHODS:
        raise ValueError(f"register: a method named {method.name!r} is registered already")
    _METHODS[method.name] = method
    return method


def unregister(name):
    """Removes the method ``name`` (a method registered for a while, as a test does)."""
    del _METHODS[name]


def methods():
    """The registered methods by name."""
    return dict(_METHODS)


def get(name):
    """The method registered as ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodOptionError(f"--method {name!r} is not a registered method (registered: "
                                f"{', '.join(sorted(_METHODS))})") from None

