"""Errors that end a command with one line and exit code 3 (Nagios UNKNOWN): the user's input is at fault."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from the user (arguments, config, files): the message is one line naming what and where."""
