"""The one exception type users see for bad input."""


class GbmsegError(Exception):
    """A problem with the user's input (file, dataset, option) that the user can fix.

    The message always names the file or option concerned. The CLI prints it without a
    traceback and exits with status 2.
    """
