"""The two failures the CLI reports as one line (`cli.main`), each with its exit code."""


class UserError(Exception):
    """A problem in the user's input or environment; the message names the problem and the fix. Exit code 2."""


class WarmError(Exception):
    """A target could not be warmed or verified; the message says why and where the log is. Exit code 1."""
