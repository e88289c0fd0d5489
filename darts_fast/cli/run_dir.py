"""The run folder: the one owner of everything a run writes.

Guarantees:
  * one writer: a run folder is held by one process at a time (an advisory lock on ``.lock``,
    released by the system when the process dies, however it dies);
  * atomic files: every file is written to a temporary name, flushed to disk and renamed over the
    old one, so a reader (or a resumed run) sees the old file or the new one, never a mix;
    temporaries of killed writes are removed when the folder is next opened;
  * no reuse: a new run starts only in a new or empty folder;
  * verified resume: ``config.json``, ``checkpoint.pt`` and ``metrics.csv`` must belong to one run
    (one run id, the same options, epoch counts and metrics rows that agree), or the folder is
    refused before anything is loaded into a model.

Files: ``config.json`` (``{"command", "run_id", "options"}``), ``checkpoint.pt`` (see
``checkpoint.py``; it also holds the run id, the options and the metrics rows), ``metrics.csv``,
``log.txt``, ``tensorboard/`` and what each command adds (genotypes, pictures).
"""
import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import time
import uuid

import filelock

from . import checkpoint
from .errors import UsageError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
LOCK = ".lock"
METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]
_TMP_MARK = ".tmp-"
# Options that --resume accepts: they change how a run proceeds, not what it computed so far.
# Everything else is the run's own and comes from its config.json.
# On the CPU --threads changes the numbers: loop checks it against the checkpoint's count.
RESUMABLE = ("epochs", "stop_after_epoch", "device", "data", "loader", "workers", "no_cuda_graph",
             "recompute", "dist_timeout", "threads", "allow_thread_change")
# Options about one invocation, not stored with the run.
NOT_STORED = ("resume", "run_dir", "stop_after_epoch", "command", "saved_config",
              "allow_thread_change")
# Options that came after runs were made, with the value that a run whose config.json and
# checkpoint lack them ran with (threads: unknown): the runs of earlier versions resume.
ADDED_LATER = {"nesterov": False, "tau_max": None, "tau_min": None, "threads": None}


def stored_option(options, name):
    """Option ``name`` of a stored options dict, an earlier version's included."""
    return options.get(name, ADDED_LATER.get(name))


def stored_options(options):
    """The options that config.json and the checkpoints keep."""
    return {k: v for k, v in vars(options).items() if k not in NOT_STORED}


class RunDirError(UsageError):
    """A run folder that cannot be used as asked."""


class RunDir:
    def __init__(self, path, lock, config):
        self.path = path
        self._lock = lock
        self.config = config  # {"command", "run_id", "options"}, as in config.json
        self.checkpoint_epoch = 0  # the epoch the checkpoint on disk holds; named in errors

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, command, options):
        """A new run in ``path`` (a new or empty folder), or in a fresh ``runs/<command>-<time>``
        folder when ``path`` is None. Returns the held folder; its config.json is written."""
        made = path is None
        if made:
            path = _new_default_folder(command)
        else:
            made = not os.path.exists(path)
            check_new_folder(path)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise RunDirError(f"--run_dir {path!r} cannot be created: {e.strerror}") from None
        run = None
        try:
            run = cls(path, _hold(path), {"command": command, "run_id": uuid.uuid4().hex,
                                          "options": options})
            check_new_folder(path)  # again, now that no other process can be writing here
            run.write_json(CONFIG, run.config)
            return run
        except BaseException:
            if run is not None:
                run.close()
            if made:
                shutil.rmtree(path, ignore_errors=True)
            raise

    @classmethod
    def reopen(cls, path, config):
        """The run in ``path`` for ``--resume``, held; ``config`` is what ``read_config`` gave
        before the options were checked: the folder is refused if it changed since."""
        run = cls(path, _hold(path), config)
        try:
            if read_config(path, config["command"]) != config:
                raise RunDirError(f"{CONFIG} in {path!r} changed while this run was starting")
            run._remove_temporaries()
            return run
        except BaseException:
            run.close()
            raise

    def update_options(self, options):
        """Rewrites config.json with the options of this resumed run (the resumable ones may have
        changed); also the proof, before any work, that the folder is still writable."""
        self.config = dict(self.config, options=options)
        self.write_json(CONFIG, self.config)

    def verify(self, fixed_options):
        """The checkpoint state (None when the run stopped before its first checkpoint), its
        metrics rows, and whether the outputs on disk lag one epoch behind it, after checking that
        they belong to ``config`` and to each other.
        ``fixed_options``: the option names that must equal the checkpoint's."""
        config = self.config
        ckpt = os.path.join(self.path, CHECKPOINT)
        rows = self._read_metrics()
        if not os.path.exists(ckpt):
            if rows:
                raise RunDirError(f"{self.path!r} holds metrics of {len(rows)} epoch(s) but no "
                                  f"{CHECKPOINT}: it cannot be resumed (start a new run)")
            return None, [], False
        try:
            state = checkpoint.load(ckpt)
        except checkpoint.CheckpointError as e:
            raise RunDirError(str(e)) from None
        if not isinstance(state, dict) or state.get("run_id") != config["run_id"] or \
                state.get("command") != config["command"]:
            raise RunDirError(f"{CHECKPOINT} in {self.path!r} belongs to another run than its "
                              f"{CONFIG}; refusing to mix them")
        saved = state.get("options")
        saved = saved if isinstance(saved, dict) else {}
        changed = sorted(k for k in fixed_options
                         if stored_option(saved, k) != stored_option(config["options"], k))
        if changed:
            raise RunDirError(f"{CONFIG} in {self.path!r} differs from the checkpoint in "
                              f"{', '.join(changed)}: the file was edited; refusing to resume")
        epoch, saved_rows = state.get("epoch"), state.get("metrics")
        # An epoch writes its checkpoint, then its outputs, metrics.csv last: a run killed in
        # between leaves metrics.csv one epoch behind, never ahead.
        if not isinstance(epoch, int) or not isinstance(saved_rows, list) or \
                len(saved_rows) != epoch or len(rows) not in (epoch - 1, epoch) or \
                rows != saved_rows[:len(rows)]:
            raise RunDirError(f"{METRICS} in {self.path!r} does not match its checkpoint "
                              f"(epoch {epoch}, {len(rows)} metrics rows); refusing to resume")
        self.checkpoint_epoch = epoch
        return state, list(saved_rows), len(rows) < epoch

    def close(self):
        self._lock.release()

    # --- writing ------------------------------------------------------------------------------

    def file(self, name):
        return os.path.join(self.path, name)

    @contextlib.contextmanager
    def writing(self, name):
        """A binary file object whose content replaces ``name`` atomically when the block ends
        without an error; on an error the old file stays and the error names what survives."""
        path = self.file(name)
        folder, base = os.path.split(path)
        tmp = os.path.join(folder, f".{base}{_TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise RunDirError(f"could not write {path}: {e.strerror or e}. {self._survivors()}") \
                from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def write_bytes(self, name, data):
        with self.writing(name) as f:
            f.write(data)

    def write_text(self, name, text):
        self.write_bytes(name, text.encode())

    def write_json(self, name, obj):
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_metrics(self, rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.write_text(METRICS, text.getvalue())

    def save_checkpoint(self, state):
        with self.writing(CHECKPOINT) as f:
            checkpoint.serialize(state, f)
        self.checkpoint_epoch = state["epoch"]

    def _survivors(self):
        if self.checkpoint_epoch:
            return (f"The checkpoint of epoch {self.checkpoint_epoch} is intact: "
                    f"--resume {shlex.quote(self.path)} continues from it")
        return "No epoch had been checkpointed yet"

    # --- reading ------------------------------------------------------------------------------

    def _read_metrics(self):
        path = self.file(METRICS)
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
        if header != METRIC_FIELDS or any(None in r or None in r.values() for r in rows) or \
                [r["epoch"] for r in rows] != [str(i + 1) for i in range(len(rows))]:
            raise RunDirError(f"{path!r} is not this run's metrics file (expected the columns "
                              f"{','.join(METRIC_FIELDS)} and one row per epoch from 1); "
                              f"refusing to resume")
        return rows

    def _remove_temporaries(self):
        for name in os.listdir(self.path):
            if _TMP_MARK in name:
                with contextlib.suppress(OSError):
                    os.remove(self.file(name))


def read_config(path, command):
    """The saved ``{"command", "run_id", "options"}`` of the run in ``path``, checked for form
    (the options are checked by the command line's own parser)."""
    if not os.path.isdir(path):
        raise RunDirError(f"--resume {path!r}: no such folder")
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise RunDirError(f"--resume {path!r}: no {CONFIG} there; is it a run folder?")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{file!r} is not readable JSON ({e.__class__.__name__}); refusing to "
                          f"resume") from None
    if not (isinstance(config, dict) and isinstance(config.get("run_id"), str)
            and isinstance(config.get("options"), dict)
            and isinstance(config.get("command"), str)):
        raise RunDirError(f"{file!r} is not a darts-fast run configuration (expected an object "
                          f"with command, run_id and options)")
    if config["command"] != command:
        raise RunDirError(f"--resume {path!r} is a {config['command']} run, not a {command} run")
    return config


def _hold(path):
    lock = filelock.FileLock(os.path.join(path, LOCK), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunDirError(f"run folder {path!r} is in use by another darts-fast process; wait "
                          f"for it to end or use another folder") from None
    except OSError as e:
        raise RunDirError(f"run folder {path!r} is not writable: {e.strerror}") from None
    return lock


def check_new_folder(path):
    """Refuses a --run_dir that holds anything (a run's outputs or other files)."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise RunDirError(f"--run_dir {path!r} is a file, not a folder")
    if set(os.listdir(path)) - {LOCK}:
        hint = (f"use --resume {shlex.quote(path)} to continue it"
                if os.path.exists(os.path.join(path, CONFIG)) else "give a new or empty folder")
        raise RunDirError(f"--run_dir {path!r} is not empty (it already holds a run or other "
                          f"files); {hint}, or another --run_dir")


def _new_default_folder(command):
    """``runs/<command>-<time>``, with a numeric suffix when another run took that name in the
    same second: ``os.mkdir`` lets exactly one process create each name."""
    base = os.path.join("runs", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.makedirs("runs", exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the default run folder under 'runs': {e.strerror}") \
            from None
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create the run folder {path!r}: {e.strerror}") from None
    raise RunDirError(f"could not find a free run folder name next to {base!r}")
