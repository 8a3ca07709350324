"""User-facing errors: bad input is reported as one line and exit code 2, never a traceback;
Ctrl-C is one line and exit code 130."""
import contextlib
import functools
import logging
import os
import signal
import sys
import threading


class UserError(Exception):
    """Bad input (config, command line, data, checkpoint). The message names what and what was expected."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was kept (e.g. which epoch ``last.pth`` holds)."""


MAX_LINE = 1000  # characters of an error line; a longer one keeps its start and end


def one_line(text):
    line = " ".join(str(text).split("\n"))
    if len(line) > MAX_LINE:
        left_out = len(line) - MAX_LINE
        line = f"{line[:MAX_LINE * 2 // 3]} ... ({left_out} characters left out) ... {line[-MAX_LINE // 3:]}"
    return line


def shown(value, limit=80):
    """``repr(value)`` for an error message, cut to ``limit`` characters (a 10 MB value is not echoed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def cli_entry(main):
    """Wrap a script's main(): UserError -> one line on stderr and exit 2; Ctrl-C -> one line and exit 130.
    A process of a torchrun group ends through :func:`_exit` on success too."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            _exit(e.exit_code)
        except KeyboardInterrupt as e:
            detail = f": {one_line(e)}" if str(e) else ""
            print(f"interrupted{detail}", file=sys.stderr, flush=True)
            _exit(130)
        if _GROUP_PROCESS:
            _exit(0)
        return result

    return wrapper


_GROUP_PROCESS = False  # set by mark_group_process(): this process joined a torchrun group


def mark_group_process():
    """Called once this process has joined a torchrun group (``utils/runtime.setup_runtime``): it will
    end through :func:`_exit`, whatever the outcome."""
    global _GROUP_PROCESS
    _GROUP_PROCESS = True


def _exit(code):
    """``sys.exit(code)``; a process that joined a torchrun group ends with ``os._exit`` instead,
    after flushing its streams and log files, with success as with an error. The reason: the gloo
    group's worker threads drop the last collectives' work objects on their own time, and one that
    does so while the interpreter is shutting down needs the GIL to release a tensor, cannot have it
    and aborts the process (SIGABRT, "terminate called without an active exception"; seen on a
    loaded machine about once in 15 runs, with the group already destroyed). ``os._exit`` skips the
    interpreter's shutdown; what it would have done at exit (flush the streams and the logging
    handlers) is done here first."""
    if _GROUP_PROCESS:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@contextlib.contextmanager
def sigint_deferred():
    """Hold back Ctrl-C (SIGINT) while the block runs, then raise KeyboardInterrupt after it.

    Used around checkpoint saves, so that an epoch that has finished is also kept. (A kill that
    cannot be caught, SIGKILL, is covered by the atomic write instead.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt
