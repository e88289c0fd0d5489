"""What a stopped run says: the command that continues it, and the message of a stop (a lost
rank, an interruption by torchrun, a diverged epoch) with the checkpoint it leaves."""
import shlex

from .errors import RankFailure
from .ranks import TERMINATED, Terminated, error_text


def _command(job):
    return ("torchrun ... " if job.ranks.distributed else "") + f"darts-fast {job.command}"


def resume_command(job, path):
    """The command that continues the run in ``path``, quoted for a shell; on the CPU with the
    run's thread count, which another default count would not resume on."""
    threads = f" --threads {job.options.threads}" if job.device.type == "cpu" else ""
    return f"{_command(job)} --resume {shlex.quote(path)}{threads}"


def rank_failure(job, folder, log, error):
    """The RankFailure that ends this rank after ``error`` (torchrun's SIGTERM, or a failed
    operation across the ranks): main prints it, with the rank; rank 0's log file keeps it too."""
    job.ranks.stop()
    failure = RankFailure(_lost(job, folder, error), 143 if isinstance(error, Terminated) else 1)
    if log:
        log.to_file(f"stopped: {failure}")
    return failure


def _lost(job, folder, error):
    what = TERMINATED if isinstance(error, Terminated) else (
        f"an operation across the ranks failed: another rank has probably stopped, or hung past "
        f"--dist_timeout ({error_text(error)})")
    # Rank 0 knows its folder; the others know the last epoch rank 0 said it had checkpointed
    # (None: rank 0 had not handed over the run's state yet).
    done = folder.checkpoint_epoch if folder else job.ranks.checkpointed
    if done is None:
        kept = "rank 0 keeps the last checkpoint"
    elif not done:
        kept = "no epoch had been checkpointed"
    elif folder:
        kept = f"epoch {done} is checkpointed: continue with {resume_command(job, folder.path)}"
    else:
        kept = f"epoch {done} is checkpointed in rank 0's run folder: --resume continues from it"
    return f"{what}; {kept}"


def diverged(folder, epoch, what, lr_option="--learning_rate"):
    """The message of a stop at ``epoch`` (every rank decides alike; rank 0 alone has the
    folder and prints)."""
    if folder is None:
        return what
    kept = (f"the checkpoint of epoch {folder.checkpoint_epoch} is kept in {folder.path}"
            if folder.checkpoint_epoch else "no epoch had been checkpointed")
    return f"epoch {epoch + 1} diverged: {what}; {kept}. A smaller {lr_option} may help"
