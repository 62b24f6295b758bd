"""Errors a user can cause: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem in the user's input or environment; the message names the problem and the fix."""


class WarmError(Exception):
    """A target could not be warmed or verified; the message says why and where the log is."""
