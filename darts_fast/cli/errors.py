"""The command line's errors, by exit code: a user error (exit 2) or a run that diverged
(exit 1); each is reported as one line."""


class UsageError(ValueError):
    """A bad option, data set, genotype or run folder: one line and exit 2, nothing written."""


class Diverged(RuntimeError):
    """The loss or the weights turned non-finite: one line and exit 1, the last finite
    checkpoint kept."""
