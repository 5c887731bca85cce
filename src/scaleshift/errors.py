"""The one exception type scaleshift raises for bad input; the CLI turns it into exit code 2."""


class ScaleshiftError(ValueError):
    """A user-facing error: the message names the problem and the fix."""


class Interrupted(Exception):
    """Ctrl-C during a long command: the message says what was kept and how to continue; the
    CLI prints it and exits 130 (the shell's code for SIGINT)."""
