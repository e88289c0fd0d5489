"""The run folder: the one owner of everything a run writes.

Guarantees:
  * one writer: a run folder is held by one process at a time (an advisory lock on ``.lock``,
    released by the system when the process dies, however it dies);
  * atomic files: every file is written to a temporary name, flushed to disk and renamed over the
    old one, so a reader (or a resumed run) sees the old file or the new one, never a mix;
    temporaries of killed writes are removed when the folder is next opened;
  * no reuse: a new run starts only in a new or empty folder.
A folder reopened for ``--resume`` is verified by ``stored_run.py`` before anything is loaded.

Files: ``config.json`` (``{"command", "run_id", "options"}``), ``checkpoint.pt`` (see
``checkpoint.py``; it also holds the run id, the options and the metrics rows), ``metrics.csv``,
``log.txt``, ``tensorboard/`` and what each command adds (genotypes, pictures).
"""
import contextlib
import csv
import io
import json
import os
import re
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


def metric_fields(metric):
    """The columns of metrics.csv for a job whose second figure per split is ``metric`` ("acc":
    accuracy in %, the image jobs; "ppl": perplexity, the language-model jobs)."""
    return ["epoch", "lr", "train_loss", f"train_{metric}", "valid_loss", f"valid_{metric}",
            "seconds"]


METRIC_FIELDS = metric_fields("acc")
_TMP_MARK = ".tmp-"


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
            run = cls(path, hold(path), {"command": command, "run_id": uuid.uuid4().hex,
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

    def update_options(self, options):
        """Rewrites config.json with the options of this resumed run (the resumable ones may have
        changed); also the proof, before any work, that the folder is still writable."""
        self.config = dict(self.config, options=options)
        self.write_json(CONFIG, self.config)

    def close(self):
        self._lock.release()

    def remove_temporaries(self):
        """Removes the temporaries of writes that a killed process left behind."""
        for name in os.listdir(self.path):
            if _TMP_MARK in name:
                with contextlib.suppress(OSError):
                    os.remove(self.file(name))

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

    def write_metrics(self, rows, fields=METRIC_FIELDS):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.write_text(METRICS, text.getvalue())

    def save_checkpoint(self, state):
        with self.writing(CHECKPOINT) as f:
            checkpoint.serialize(state, f)
        self.checkpoint_epoch = state["epoch"]

    def keep_epoch_checkpoint(self, epoch, window):
        """checkpoint.pt, just written, also as ``checkpoint_epoch_NNN.pt`` (a hard link where
        the file system has them); the copies of epochs ``window`` or more before it removed."""
        name, tmp = _epoch_checkpoint(epoch), self.file(f".epoch{_TMP_MARK}{os.getpid()}")
        try:
            os.link(self.file(CHECKPOINT), tmp)
        except OSError:
            shutil.copyfile(self.file(CHECKPOINT), tmp)
        os.replace(tmp, self.file(name))
        for old in os.listdir(self.path):
            kept = _EPOCH_CHECKPOINT.fullmatch(old)
            if kept and int(kept[1]) <= epoch - window:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.file(old))

    def load_epoch_checkpoint(self, epoch):
        """The state ``keep_epoch_checkpoint`` kept of ``epoch``, checked to be this run's."""
        name = _epoch_checkpoint(epoch)
        try:
            state = checkpoint.load(self.file(name))
        except (checkpoint.CheckpointError, FileNotFoundError) as e:
            raise RunDirError(f"cannot roll back to epoch {epoch}: {name} in {self.path!r} "
                              f"cannot be read ({e})") from None
        if not isinstance(state, dict) or state.get("run_id") != self.config["run_id"] or \
                state.get("epoch") != epoch:
            raise RunDirError(f"cannot roll back to epoch {epoch}: {name} in {self.path!r} is "
                              f"not this run's checkpoint of that epoch")
        return state

    def _survivors(self):
        if self.checkpoint_epoch:
            return (f"The checkpoint of epoch {self.checkpoint_epoch} is intact: "
                    f"--resume {shlex.quote(self.path)} continues from it")
        return "No epoch had been checkpointed yet"


_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch_(\d+)\.pt")


def _epoch_checkpoint(epoch):
    return f"checkpoint_epoch_{epoch:03d}.pt"


def hold(path):
    """The lock of the run folder ``path``, acquired: one process at a time writes there."""
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
