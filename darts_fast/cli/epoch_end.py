"""How an epoch ends in the run folder, for ``loop.py``: the checkpoint (every rank's random
generators and BatchNorm statistics gathered, rank 0 writing), then the outputs, metrics.csv
last; and DARTS-ADA's rollback to an earlier epoch's checkpoint (``guards``), written the same
way, so that a kill at any point resumes the run as it would have gone on."""
from . import checkpoint, visualize
from .resume import restore
from .run_dir import metric_fields


def save_checkpoint(job, folder, epoch, rows):
    """The checkpoint after ``epoch`` epochs (every rank calls this; rank 0 writes), and the
    per-epoch copy a rollback may need."""
    ranks = job.ranks
    rng = ranks.gather(checkpoint.rng_states())
    # The ranks' own BatchNorm statistics (rank 0's are the model's), for an exact resume.
    buffers = ranks.gather({n: b.cpu() for n, b in job.model.named_buffers()}) \
        if ranks.distributed else None
    if ranks.leader:
        folder.save_checkpoint({
            "command": job.command, "run_id": folder.config["run_id"],
            "options": folder.config["options"], "epoch": epoch, "metrics": list(rows),
            "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
            **({"scheduler": job.scheduler.state_dict()} if job.scheduler is not None else {}),
            **job.extra_state(),
            "rng": rng[0], **({"processes": ranks.world, "rng_ranks": rng,
                               "buffers_ranks": buffers} if ranks.distributed else {}),
        })
        if job.epoch_checkpoints():
            folder.keep_epoch_checkpoint(epoch, job.epoch_checkpoints())
    ranks.checkpoint_written(epoch)


def write_outputs(job, folder, log, epoch, rows):
    # metrics.csv last: when it holds the epoch, so does every other output (see stored_run.verify).
    folder.write_bytes("curves.png", visualize.curves_png(rows, job.metric))
    log.scalars(epoch, rows[-1])
    job.write_outputs(folder, log, epoch, rows)
    folder.write_metrics(rows, metric_fields(job.metric))


def roll_back(job, folder, log, epoch, rows):
    """``(epoch, rows)`` to go on from: as given, or, where the job asks to roll back, the epoch
    it names and that epoch's metrics rows, with the job restored from its checkpoint (then told
    so, to change what the rollback changes) and the run folder at that epoch."""
    back = job.rollback_epoch()
    if back is None:
        return epoch, rows
    carried = job.carried_over()
    state = folder.load_epoch_checkpoint(back)
    restore(job, state)
    message = job.rolled_back(carried)
    rows = list(state["metrics"])
    save_checkpoint(job, folder, back, rows)
    log.rewind(back + 1)  # TensorBoard drops the later epochs' events
    write_outputs(job, folder, log, back, rows)
    log.info(message)
    return back, rows
