"""Logging to the console and to ``<run_dir>/info.log`` (main process only)."""
import logging
import sys

from utils.safe_write import open_append

_FORMAT = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")


class _Pending(logging.Handler):
    """Keeps the lines logged before the run folder exists (data set, model), for info.log."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(run_dir=None, is_main=True, name="train"):
    """Console (and ``run_dir/info.log``) on the main process; warnings only elsewhere. Without a
    ``run_dir`` yet, the lines are also kept for :func:`log_to_file`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    if not is_main:
        return logger
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(_FORMAT)
    logger.addHandler(console)
    if run_dir is None:
        logger.addHandler(_Pending())
    else:
        log_to_file(run_dir, name)
    return logger


class _LogFile(logging.FileHandler):
    """info.log. A line that cannot be written (disk full) is dropped without logging's multi-line
    report on stderr: the console has the line, and a checkpoint that cannot be written either is
    reported as the run's one-line error."""

    def handleError(self, record):
        self.failed = True

    def _open(self):
        return open_append(self.baseFilename)  # never through a link (utils/safe_write.py)


def log_to_file(run_dir, name="train"):
    """Write ``run_dir/info.log`` from now on, starting with the lines kept so far (main process)."""
    logger = logging.getLogger(name)
    if logger.level > logging.INFO:  # not the main process
        return logger
    handler = _LogFile(run_dir / "info.log", delay=True)  # created at the first line
    handler.setFormatter(_FORMAT)
    for pending in [h for h in logger.handlers if isinstance(h, _Pending)]:
        logger.removeHandler(pending)
        for record in pending.records:
            handler.handle(record)
    logger.addHandler(handler)
    return logger


def close_log_file(name="train"):
    """Stop writing info.log (before a failed run's folder is removed)."""
    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:  # its last lines could not be flushed (disk full); the file is closed anyway
            pass
