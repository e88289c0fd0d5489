"""``darts-fast search``'s guards against skip-connect collapse (README, "Guards against
collapse"): what each adds to a search, and what a run keeps of them.

Every search records, per epoch, the skip-connections of each cell's genotype (``collapse.csv``,
``collapse.png``, TensorBoard ``collapse/*``); the guards add to that:

* ``--hessian_eigenvalue``: the dominant eigenvalue of the validation loss' Hessian in the alphas
  (RobustDARTS), after each epoch, on the epoch's last validation batch in training mode, by
  Lanczos (``search.hessian_eigenvalue``; under torchrun a fixed number of products on every
  rank, whose collectives must match, and the ranks' mean). It neither changes the BatchNorm
  statistics nor draws from the search's random generators: a search computes the same with or
  without it.
* ``--early_stop hessian`` (DARTS-ES) or ``skips`` (DARTS+): ``search.collapse``'s rules; the run
  ends at the rule's epoch and its genotype.json and pictures are the genotype the rule keeps.
* ``--adaptive_regularisation`` (DARTS-ADA): where DARTS-ES would stop, the run rolls back to the
  checkpoint of the epoch DARTS-ES would keep (the run folder keeps the last ``ROLLBACK_WINDOW``
  epochs' checkpoints) and goes on from there with the weights' weight decay multiplied by
  ``ADA_FACTOR``, until it reaches ``ADA_MAX_WEIGHT_DECAY``; from then on it searches to the end
  (RobustDARTS' ``--early_stop 3``). Departures: the random generators go back with the
  checkpoint (the authors' go on), and the second-order virtual step takes the new weight decay
  at once (the authors' architect keeps the previous one for that iteration).
* ``--alpha_noise [EPSILON]`` (SDARTS-RS, ``search.alpha_noise``) and ``--aux_skip BETA``
  (DARTS-, ``Network(auxiliary_skip=True)``): set per epoch from the epoch alone.

The history and the rules' state go into the checkpoint, so a resumed run goes on deciding as a
run never stopped, and a run that stopped early stays stopped.
"""
import csv
import io

import torch

from ..search.alpha_noise import AlphaNoise, epsilon_at
from ..search.collapse import HessianStop, SkipStop, auxiliary_skip_beta
from ..search.hessian_eigenvalue import arch_hessian_eigenvalue
from ..spaces.cnn.genotypes import genotype_from_dict, genotype_to_dict
from ..spaces.cnn.operations import build_candidate
from . import visualize
from .errors import UsageError

# The eigenvalue's relative error bound: DARTS-ES compares averages against a ratio of 1.3.
# At most MAX_PRODUCTS Hessian-vector products; under torchrun DISTRIBUTED_PRODUCTS on every rank.
EIGENVALUE_TOLERANCE, MAX_PRODUCTS, DISTRIBUTED_PRODUCTS = 1e-3, 30, 20
COLUMNS = ("epoch", "skips_normal", "skips_reduce", "eigenvalue", "eigenvalue_local_average",
           "alpha_noise", "aux_skip_beta", "weight_decay")
# DARTS-ADA: RobustDARTS' --mul_factor and --max_weight_decay; the epochs back a rollback reaches.
ADA_FACTOR, ADA_MAX_WEIGHT_DECAY = 3.0, 243e-4
ROLLBACK_WINDOW = HessianStop().window // 2 + HessianStop().delta + 1
# Where the weight step's noise and the auxiliary skip are defined: on DARTS' candidate weights.
_DARTS_ONLY = {"alpha_noise": "--alpha_noise", "aux_skip": "--aux_skip"}


def add_guard_options(s, kinds):
    g = s.add_argument_group("guards against skip-connect collapse")
    g.add_argument("--hessian_eigenvalue", action="store_true",
                   help="log the dominant eigenvalue of the validation loss' Hessian in the "
                        "alphas after each epoch (RobustDARTS; Lanczos)")
    g.add_argument("--early_stop", choices=["hessian", "skips"], default=None,
                   help="hessian: stop when the eigenvalue's local average grows 1.3x within 4 "
                        "epochs, keeping the genotype from where it began (DARTS-ES); skips: stop "
                        "when the normal cell holds 2 skip-connections or the ranking of the "
                        "learnable candidates held for 10 epochs (DARTS+) (default: none)")
    g.add_argument("--adaptive_regularisation", action="store_true",
                   help="where --early_stop hessian would stop, roll back to the epoch it would "
                        "keep and go on with 3 times the weights' weight decay, up to 243e-4 "
                        "(DARTS-ADA)")
    g.add_argument("--alpha_noise", type=kinds.positive, nargs="?", const=0.3, default=None,
                   metavar="EPSILON",
                   help="uniform noise on the softmaxed alphas for the weight step, its radius "
                        "rising from 0.03 to EPSILON (0.3 when not given) (SDARTS-RS) "
                        "(default: none)")
    g.add_argument("--aux_skip", type=kinds.positive, default=None, metavar="BETA",
                   help="an auxiliary skip-connection on every mixed op, its coefficient decaying "
                        "from BETA to 0 (DARTS-; its authors: 1) (default: none)")
    g.add_argument("--aux_skip_decay", choices=["linear", "cosine"], default=None,
                   help="how --aux_skip's coefficient decays over --epochs (default linear)")


def check(options, method, torchrun):
    """Refuses guards the search cannot run with (new or resumed)."""
    if options.aux_skip_decay is not None and options.aux_skip is None:
        raise UsageError("--aux_skip_decay sets how --aux_skip's coefficient decays; give "
                         "--aux_skip BETA too")
    if options.adaptive_regularisation and options.early_stop is not None:
        raise UsageError(f"--adaptive_regularisation rolls back where --early_stop hessian "
                         f"would stop; give one of them, not --early_stop {options.early_stop} "
                         f"too")
    if options.adaptive_regularisation and torchrun:
        raise UsageError("--adaptive_regularisation runs in one process: its rollback reloads "
                         "one process's checkpoint")
    if not method.alphas:
        given = [flag for flag, on in (("--hessian_eigenvalue", options.hessian_eigenvalue),
                                       ("--early_stop", options.early_stop is not None),
                                       ("--adaptive_regularisation",
                                        options.adaptive_regularisation)) if on]
        if given:
            raise UsageError(f"{given[0]} watches the alphas; --method {method.name} trains a "
                             f"weight-sharing supernet without them")
    for dest, flag in _DARTS_ONLY.items():
        if getattr(options, dest) is None:
            continue
        if method.name != "darts":
            raise UsageError(f"{flag} is defined on DARTS' candidate weights; --method "
                             f"{method.name} computes with others")
        if options.reference:
            raise UsageError(f"{flag} is a darts_fast option; the --reference algorithm is the "
                             f"original DARTS")


class Guards:
    def __init__(self, options, model, ranks):
        self.options, self.model, self.ranks = options, model, ranks
        stop = "hessian" if options.adaptive_regularisation else options.early_stop
        self.eigenvalue = options.hessian_eigenvalue or stop == "hessian"
        self.rule = HessianStop() if stop == "hessian" else SkipStop(_learnable(model)) \
            if stop == "skips" else None
        self.ada = {"iteration": 1, "weight_decay": options.weight_decay} \
            if options.adaptive_regularisation else None
        self.rollback = None  # the epoch (1-based) DARTS-ADA goes back to
        self.noise = AlphaNoise(model) if options.alpha_noise is not None else None
        self.history = []  # one row per epoch done: COLUMNS, and the genotype
        self.stopped = None  # the rule's decision: epoch done, epoch kept (1-based), reason

    def begin_epoch(self, epoch):
        o, row = self.options, {}
        if self.noise is not None:
            row["alpha_noise"] = epsilon_at(epoch, o.epochs, o.alpha_noise)
            self.noise.set_epsilon(row["alpha_noise"])
        if o.aux_skip is not None:
            row["aux_skip_beta"] = auxiliary_skip_beta(epoch, o.epochs, o.aux_skip,
                                                       o.aux_skip_decay or "linear")
            self.model.set_auxiliary_skip(row["aux_skip_beta"])
        self._settings = row

    def end_epoch(self, epoch, valid_batch, genotype):
        """After epoch ``epoch`` (0-based) is validated: its row (none where the search has no
        ``genotype`` yet), and the rule's decision."""
        if genotype is None:
            return
        row = {"epoch": epoch + 1, **self._settings,
               **({"weight_decay": self.ada["weight_decay"]} if self.ada else {}),
               "skips_normal": _skips(genotype.normal), "skips_reduce": _skips(genotype.reduce),
               "genotype": genotype_to_dict(genotype)}
        if self.eigenvalue:
            row["eigenvalue"], row["converged"] = self._eigenvalue(valid_batch)
        self.history.append(row)
        last = epoch + 1 >= self.options.epochs
        if isinstance(self.rule, HessianStop):
            kept = self.rule.update(epoch, row["eigenvalue"], last)
            row["eigenvalue_local_average"] = self.rule.local_average(epoch)
            if kept is not None and self.ada is None:
                self._stop(epoch, kept, "the Hessian's dominant eigenvalue grew by more than "
                                        f"{self.rule.factor}x (DARTS-ES)")
            elif kept is not None and self.ada["weight_decay"] * ADA_FACTOR \
                    <= ADA_MAX_WEIGHT_DECAY * (1 + 1e-9):
                self.rollback = kept + 1
        elif isinstance(self.rule, SkipStop) and epoch >= self.options.arch_start_epoch:
            tables = [t.weights for t in self.model.architecture_tables()]
            if self.rule.update(epoch, row["skips_normal"], tables) is not None:
                self._stop(epoch, epoch, self.rule.reason(row["skips_normal"]) + " (DARTS+)")

    def _stop(self, epoch, kept, reason):
        self.stopped = {"after": epoch + 1, "kept": kept + 1, "reason": reason}

    def _eigenvalue(self, batch):
        model = self.model
        buffers = [b.clone() for b in model.buffers()]
        devices = [model.alphas_normal.device] if model.alphas_normal.is_cuda else []
        training = model.training
        with torch.random.fork_rng(devices=devices):
            model.train()
            # Under torchrun (SyncBatchNorm's collectives in every pass) each rank must take
            # as many products as the others.
            result = arch_hessian_eigenvalue(
                model, batch, weight_decay=self.options.arch_weight_decay,
                tolerance=0.0 if self.ranks.distributed else EIGENVALUE_TOLERANCE,
                iterations=DISTRIBUTED_PRODUCTS if self.ranks.distributed else MAX_PRODUCTS)
        model.train(training)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        value = result.value
        if self.ranks.distributed:  # each rank's own batch: their mean
            value = float(self.ranks.sum_(torch.tensor([value], dtype=torch.float64,
                                                       device=model.alphas_normal.device))
                          / self.ranks.world)
        return value, result.converged

    def stop_reason(self):
        """Why the run ended early (None: it did not)."""
        if self.stopped is None:
            return None
        s = self.stopped
        kept = "its own" if s["kept"] == s["after"] else f"that of epoch {s['kept']}"
        return f"stopped after epoch {s['after']}: {s['reason']}; the genotype is {kept}"

    def kept(self):
        """(epoch, genotype) the run keeps, where the rule stopped it (None: the model's own)."""
        if self.stopped is None:
            return None
        epoch = self.stopped["kept"]
        row = next(row for row in self.history if row["epoch"] == epoch)
        return epoch, genotype_from_dict(row["genotype"])

    def log_text(self):
        if not self.history:  # a run resumed from a version that kept none
            return ""
        row = self.history[-1]
        parts = [f"skip-connections {row['skips_normal']} normal, {row['skips_reduce']} reduce"]
        if "eigenvalue" in row:
            parts.append(f"Hessian eigenvalue {row['eigenvalue']:.4g}"
                         + ("" if row["converged"] else
                            f" (not converged in {MAX_PRODUCTS} products)"))
        return " | " + ", ".join(parts)

    def write(self, run, log, epoch):
        if not self.history:  # a run resumed from a version that kept none
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS}
                         for row in self.history)
        run.write_text("collapse.csv", text.getvalue())
        run.write_bytes("collapse.png", visualize.collapse_png(self.history))
        row = self.history[-1]
        for name in COLUMNS[1:]:
            if row.get(name) is not None:
                log.events.add_scalar(f"collapse/{name}", row[name], epoch)

    def rolled_back(self, carried):
        """After the job went back to epoch ``self.rollback``'s checkpoint (whose state this
        now holds): the next iteration's weight decay; the log line."""
        before = carried["weight_decay"]
        self.ada = {"iteration": carried["iteration"] + 1, "weight_decay": before * ADA_FACTOR}
        return (f"DARTS-ADA: the Hessian's dominant eigenvalue grew by more than "
                f"{self.rule.factor}x; back to epoch {self.history[-1]['epoch']}, the weights' "
                f"weight decay {before:g} -> {self.ada['weight_decay']:g} (iteration "
                f"{self.ada['iteration']})")

    def apply_weight_decay(self, optimizer, architect):
        """DARTS-ADA's weight decay of the weights, in their optimizer and the virtual step."""
        for group in optimizer.param_groups:
            group["weight_decay"] = self.ada["weight_decay"]
        architect.network_weight_decay = self.ada["weight_decay"]

    def state_dict(self):
        return {"history": self.history, "stopped": self.stopped, "ada": self.ada,
                "rollback": self.rollback,
                "rule": self.rule.state_dict() if self.rule is not None else None}

    def load_state_dict(self, state):
        self.history, self.stopped = list(state["history"]), state["stopped"]
        self.ada, self.rollback = state["ada"], state["rollback"]
        if self.rule is not None:
            self.rule.load_state_dict(state["rule"])


def _skips(edges):
    return sum(op == "skip_connect" for op, _ in edges)


def _learnable(model):
    """The columns of the tables whose candidates hold weights (DARTS+ watches their ranking)."""
    with torch.random.fork_rng():  # building them draws their weights
        return [k for k, name in enumerate(model.architecture_tables()[0].candidates)
                if any(True for _ in build_candidate(name, 4, 1, False).parameters())]
