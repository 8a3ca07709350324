"""User-facing errors: bad input is reported as one line and exit code 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input (config, command line, data, checkpoint). The message names what and what was expected."""


def cli_entry(main):
    """Wrap a script's main(): UserError -> one line on stderr and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            msg = " ".join(str(e).split("\n"))
            print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
