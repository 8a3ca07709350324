"""Sizes that cannot fit are refused before the work, with the size they would take.

    check_fits(nbytes, "loss.args.trials 100000000: the pool of 8e8 draws of 10 classes")

refuses (one line, exit 2) an allocation larger than the memory this machine has available now
(``MemAvailable`` of /proc/meminfo; elsewhere the physical memory), instead of a MemoryError
traceback, or a machine that swaps, minutes later.
"""
import os

from utils.errors import UserError


def gib(nbytes):
    return f"{nbytes / 2**30:.1f} GiB"


def available_bytes():
    """Memory available to a new allocation now (bytes), or None where it cannot be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(nbytes, what):
    """Refuse ``what`` (the option and value, and what it would allocate) when ``nbytes`` exceed the
    memory available."""
    available = available_bytes()
    if available is not None and nbytes > available:
        raise UserError(f"{what} would take {gib(nbytes)}, more than the {gib(available)} of memory available; "
                        "expected a smaller value")
    return nbytes
