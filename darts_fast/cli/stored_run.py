"""What a run folder keeps of its run, and the checks that a folder reopened for ``--resume``
holds one run: ``config.json``, ``checkpoint.pt`` and ``metrics.csv`` must belong to one run (one
run id, the same options, epoch counts and metrics rows that agree), or the folder is refused
before anything is loaded into a model. Which options a run stores, which ``--resume`` may
change, and the values of those that earlier versions did not store are named here too.
"""
import csv
import json
import os

from . import checkpoint
from .run_dir import CHECKPOINT, CONFIG, METRIC_FIELDS, METRICS, RunDir, RunDirError, hold

# Options that --resume accepts: they change how a run proceeds, not what it computed so far.
# Everything else is the run's own and comes from its config.json.
# On the CPU --threads changes the numbers: resume.py checks it against the checkpoint's count.
RESUMABLE = ("epochs", "stop_after_epoch", "device", "data", "loader", "workers", "no_cuda_graph",
             "recompute", "dist_timeout", "threads", "allow_thread_change")
# Options about one invocation, not stored with the run.
NOT_STORED = ("resume", "run_dir", "stop_after_epoch", "command", "saved_config",
              "allow_thread_change")
# Options that came after runs were made, with the value that a run whose config.json and
# checkpoint lack them ran with (threads: unknown): the runs of earlier versions resume.
ADDED_LATER = {"nesterov": False, "threads": None, "primitives": None, "space": "cnn",
               "hessian_eigenvalue": False, "early_stop": None, "alpha_noise": None,
               "aux_skip": None, "aux_skip_decay": None, "adaptive_regularisation": False,
               "cost": None, "cost_table": None, "cost_reference": None, "image_size": None,
               "channels": None, "stem": "auto", "mean": None, "std": None,
               "val_fraction": 0.1, "bad_images": "skip", "color_jitter": False,
               "label_smoothing": 0.0, "lr_schedule": "cosine", "lr_gamma": 0.97,
               "lr_decay_period": 1, "subset": None, "warmup_epochs": 0,
               "arch_grad_clip": None}


def stored_option(options, name, absent=None):
    """Option ``name`` of a stored options dict, an earlier version's included (``absent``: what
    the run ran with where an option came later, beyond ``ADDED_LATER``)."""
    return options.get(name, {**ADDED_LATER, **(absent or {})}.get(name))


def stored_options(options):
    """The options that config.json and the checkpoints keep."""
    return {k: v for k, v in vars(options).items() if k not in NOT_STORED}


def reopen(path, config):
    """The run in ``path`` for ``--resume``, held; ``config`` is what ``read_config`` gave
    before the options were checked: the folder is refused if it changed since."""
    run = RunDir(path, hold(path), config)
    try:
        if read_config(path, config["command"]) != config:
            raise RunDirError(f"{CONFIG} in {path!r} changed while this run was starting")
        run.remove_temporaries()
        return run
    except BaseException:
        run.close()
        raise


def verify(run, fixed_options, absent=None, fields=METRIC_FIELDS):
    """The checkpoint state (None when the run stopped before its first checkpoint), its
    metrics rows, and whether the outputs on disk lag one epoch behind it, after checking that
    they belong to ``run.config`` and to each other.
    ``fixed_options``: the option names that must equal the checkpoint's (``absent``: see
    ``stored_option``); ``fields``: the job's metrics.csv columns."""
    config = run.config
    ckpt = os.path.join(run.path, CHECKPOINT)
    rows = _read_metrics(run, fields)
    if not os.path.exists(ckpt):
        if rows:
            raise RunDirError(f"{run.path!r} holds metrics of {len(rows)} epoch(s) but no "
                              f"{CHECKPOINT}: it cannot be resumed (start a new run)")
        return None, [], False
    try:
        state = checkpoint.load(ckpt)
    except checkpoint.CheckpointError as e:
        raise RunDirError(str(e)) from None
    if not isinstance(state, dict) or state.get("run_id") != config["run_id"] or \
            state.get("command") != config["command"]:
        raise RunDirError(f"{CHECKPOINT} in {run.path!r} belongs to another run than its "
                          f"{CONFIG}; refusing to mix them")
    saved = state.get("options")
    saved = saved if isinstance(saved, dict) else {}
    changed = sorted(k for k in fixed_options
                     if stored_option(saved, k, absent) != stored_option(config["options"], k,
                                                                         absent))
    if changed:
        raise RunDirError(f"{CONFIG} in {run.path!r} differs from the checkpoint in "
                          f"{', '.join(changed)}: the file was edited; refusing to resume")
    epoch, saved_rows = state.get("epoch"), state.get("metrics")
    # An epoch writes its checkpoint, then its outputs, metrics.csv last: a run killed in
    # between leaves metrics.csv one epoch behind, never ahead.
    if not isinstance(epoch, int) or not isinstance(saved_rows, list) or \
            len(saved_rows) != epoch or len(rows) not in (epoch - 1, epoch) or \
            rows != saved_rows[:len(rows)]:
        raise RunDirError(f"{METRICS} in {run.path!r} does not match its checkpoint "
                          f"(epoch {epoch}, {len(rows)} metrics rows); refusing to resume")
    run.checkpoint_epoch = epoch
    return state, list(saved_rows), len(rows) < epoch


def _read_metrics(run, fields):
    path = run.file(METRICS)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunDirError(f"{path!r} cannot be read ({e.__class__.__name__}); refusing to "
                          f"resume") from None
    if header != fields or any(None in r or None in r.values() for r in rows) or \
            [r["epoch"] for r in rows] != [str(i + 1) for i in range(len(rows))]:
        raise RunDirError(f"{path!r} is not this run's metrics file (expected the columns "
                          f"{','.join(fields)} and one row per epoch from 1); "
                          f"refusing to resume")
    return rows


def read_json(file, what, expected):
    """The JSON that a run folder keeps in ``file``; RunDirError naming ``what`` (the argument
    that gave the folder) and what the file was ``expected`` to hold, if it is missing or is not
    readable JSON."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunDirError(f"{what} {os.path.dirname(file)!r} holds no {os.path.basename(file)} "
                          f"(expected {expected}); is it a run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{what}: {file!r} is not readable JSON ({type(e).__name__}); "
                          f"expected {expected}") from None


def read_config(path, command):
    """The saved ``{"command", "run_id", "options"}`` of the run in ``path``, checked for form
    (the options are checked by the command line's own parser)."""
    if not os.path.isdir(path):
        raise RunDirError(f"--resume {path!r}: no such folder")
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise RunDirError(f"--resume {path!r}: no {CONFIG} there; is it a run folder?")
    config = read_json(file, "--resume", "the run's configuration")
    if not (isinstance(config, dict) and isinstance(config.get("run_id"), str)
            and isinstance(config.get("options"), dict)
            and isinstance(config.get("command"), str)):
        raise RunDirError(f"{file!r} is not a darts-fast run configuration (expected an object "
                          f"with command, run_id and options)")
    if config["command"] != command:
        raise RunDirError(f"--resume {path!r} is a {config['command']} run, not a {command} run")
    return config


DATA = "data.json"


def keep_data_info(run, info):
    """Writes the run's input description (``image_data.DataInfo``) to data.json, or on a resumed
    run checks that the data read now is the data the run began on (images added to or removed
    from a folder change its classes or statistics, and the network would no longer fit)."""
    path = run.file(DATA)
    if os.path.exists(path):
        saved = read_json(path, "--resume", "the run's data description")
        if saved != info.to_json():
            changed = sorted(k for k, v in info.to_json().items() if saved.get(k) != v)
            raise RunDirError(f"the data read now differs from the data the run in "
                              f"{run.path!r} began on ({', '.join(changed)} changed; see "
                              f"{DATA}); refusing to resume")
        return
    run.write_json(DATA, info.to_json())
