"""The one exception type users see for bad input, and the warning type for unusual input."""

import contextlib
import sys
import warnings

from tqdm import tqdm


class GbmsegError(Exception):
    """A problem with the user's input (file, dataset, option) that the user can fix.

    The message always names the file or option concerned. The CLI prints it without a
    traceback and exits with status 2.
    """


class GbmsegWarning(UserWarning):
    """Something unusual that the user should check, though the work goes on (a mask far larger than
    the training masks, masks that fill the scan). The CLI prints it as one line (:func:`one_line_warnings`)."""


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Within the block, every warning is printed as one line, ``gbmseg COMMAND: warning: MESSAGE``, on
    stderr, as errors are (the CLI, and a sweep's Ray workers, which do not run the CLI)."""
    with warnings.catch_warnings():  # tqdm.write: a progress bar on stderr is moved below the line, not split
        warnings.showwarning = lambda message, *_, **__: tqdm.write(f"gbmseg {command}: warning: {message}",
                                                                    file=sys.stderr)
        yield


class Interrupted(Exception):
    """Training was stopped by a signal (SIGTERM, SIGUSR1: a scheduler's preemption or time limit)
    after writing its checkpoint; running the same command again resumes from it.

    Not a :class:`GbmsegError` (nothing is wrong with the input): the CLI exits with ``128 + signum``
    so that a scheduler sees the job as unfinished, and a Ray sweep retries the job.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)

    def __reduce__(self):  # picklable with its signal number (Ray sends exceptions between processes)
        return (type(self), (self.signum, str(self)))


def naming(exc: GbmsegError, name: object) -> GbmsegError:
    """``exc`` with ``name`` (a file or case) in front, unless its message already starts with it.

    Example:
        >>> str(naming(GbmsegError("found no foreground"), "ct_01.nii.gz"))
        'ct_01.nii.gz: found no foreground'
    """
    return exc if str(exc).startswith(str(name)) else GbmsegError(f"{name}: {exc}")
