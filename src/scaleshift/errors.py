"""The one exception type scaleshift raises for bad input; the CLI turns it into exit code 2."""


class ScaleshiftError(ValueError):
    """A user-facing error: the message names the problem and the fix."""
