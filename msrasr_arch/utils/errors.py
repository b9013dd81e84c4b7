"""The one exception type our tools raise for bad input: the CLI prints its message on one line and
exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a key, a value): the message names it and what is wrong."""
