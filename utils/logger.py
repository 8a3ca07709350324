"""Logging to the console and to ``<run_dir>/info.log`` (main process only)."""
import logging
import sys


def setup_logging(run_dir=None, is_main=True, name="train"):
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    if not is_main:
        return logger
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None:
        handler = logging.FileHandler(run_dir / "info.log", delay=True)  # created at the first line
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
