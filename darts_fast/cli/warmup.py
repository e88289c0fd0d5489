"""PC-DARTS' ImageNet warm-up (``--warmup_epochs W``): the weights' learning rate of epoch
``e < W`` is ``learning_rate * (e + 1) / W`` instead of the schedule's; the schedule goes on from
its own rates afterwards, as the authors' cosine (computed from the epoch, not the last rate)
did."""


def rate(optimizer, options, epoch, scheduled):
    """The rate of ``epoch`` (set in the optimizer when it is a warm-up's)."""
    if epoch >= options.warmup_epochs:
        return scheduled
    lr = options.learning_rate * (epoch + 1) / options.warmup_epochs
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def restore(optimizer, scheduler, options, epoch):
    """Puts the schedule's rates back after a warm-up epoch, before the schedule steps."""
    if epoch < options.warmup_epochs:
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
