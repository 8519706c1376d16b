"""The one exception type users see for bad input."""


class GbmsegError(Exception):
    """A problem with the user's input (file, dataset, option) that the user can fix.

    The message always names the file or option concerned. The CLI prints it without a
    traceback and exits with status 2.
    """


def naming(exc: GbmsegError, name: object) -> GbmsegError:
    """``exc`` with ``name`` (a file or case) in front, unless its message already starts with it.

    Example:
        >>> str(naming(GbmsegError("found no foreground"), "ct_01.nii.gz"))
        'ct_01.nii.gz: found no foreground'
    """
    return exc if str(exc).startswith(str(name)) else GbmsegError(f"{name}: {exc}")
