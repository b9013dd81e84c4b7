"""The one exception type our tools raise for bad input: the CLI prints its message on one line and
exits non-zero, without a traceback."""
import sys


class UserError(Exception):
    """Bad input from the user (a file, a key, a value): the message names it and what is wrong."""


def run_reporting_errors(prog: str, fn, *args) -> int:
    """Run a command's body: a :class:`UserError` becomes one line on stderr and exit status 2, Ctrl-C 130."""
    try:
        return int(fn(*args) or 0)
    except UserError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
