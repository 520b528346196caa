"""The one exception every format reader and writer raises for bad files or bad data."""


class FormatError(ValueError):
    """A file (or an array map about to be written) is not what the format requires.

    The message names the file (or field) and the problem, so the operator can show it as is.
    """
