"""The command line's errors, by exit code: a user error (exit 2), a run that diverged or lost a
rank (exit 1); each is reported as one line."""


class UsageError(ValueError):
    """A bad option, data set, genotype or run folder: one line and exit 2, nothing written."""


class Diverged(RuntimeError):
    """The loss or the weights turned non-finite: one line and exit 1, the last finite
    checkpoint kept."""


class RankFailure(RuntimeError):
    """A run on several processes lost a rank: a collective operation failed (another rank died
    or hung; exit 1), or torchrun stopped this rank with SIGTERM because another one failed
    (exit 143). One line, the last checkpoint kept."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class FollowerStopped(Exception):
    """A rank other than 0 stops with rank 0's exit code, silently: rank 0 says why."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def first_line(error):
    """The first line of ``error``'s message (its class name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
