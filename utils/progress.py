"""Progress bars, alike everywhere: shown on a terminal, never written into log files or pipes
(where they would be noise around the log lines and one-line errors)."""
from tqdm import tqdm


def progress(iterable, desc=None, show=True, **kwargs):
    """``iterable`` with a tqdm bar when ``show`` and stderr is a terminal (``disable=None``)."""
    return tqdm(iterable, desc=desc, disable=None if show else True, leave=False, dynamic_ncols=True, **kwargs)
