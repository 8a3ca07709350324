"""Pickles from outside (dataset files, old checkpoints) read without running code from them.

A pickle can name any importable function and have the unpickler call it (``os.system``...).
The readers here resolve names only through fixed tables of data reconstructors, so the worst a
hostile file can do is fail to load.
"""
import _compat_pickle
import pickle


def numpy_reconstructors():
    """numpy's pickle names mapped to the installed functions that only interpret data.

    ``scalar(dtype, bytes)`` builds one number; ``_reconstruct(ndarray, shape, dtype)`` allocates
    an empty array and accepts only ndarray subclasses; ``ndarray.__setstate__`` then fills it from
    bytes, or for object arrays from a list built by the same restricted unpickler;
    ``dtype(code, align, copy)`` parses a type code. numpy 1.x spells ``numpy.core``, 2.x
    ``numpy._core``: both map to the installed functions. The ``numpy.dtypes`` classes are listed
    because a dtype's state is restored by BUILD, which torch allows only for listed types.
    """
    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    table = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{mod}.scalar"] = multiarray.scalar
        table[f"{mod}._reconstruct"] = multiarray._reconstruct
    try:  # protocol 5: ``_frombuffer(buffer, dtype, shape, order)`` views bytes as an array
        from numpy._core import numeric
    except ImportError:
        from numpy.core import numeric
    if hasattr(numeric, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            table[f"{mod}._frombuffer"] = numeric._frombuffer
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    for name in dir(dtypes) if dtypes is not None else ():
        cls = getattr(dtypes, name)
        if name.endswith("DType") and isinstance(cls, type) and issubclass(cls, np.dtype):
            table[f"numpy.dtypes.{name}"] = cls
    return table


def _plain_data_globals():
    """What plain-data pickles need besides numpy (the same as torch's weights_only defaults):
    ``_codecs.encode`` rebuilds ``bytes`` in protocol 2, the rest are containers."""
    import codecs
    from collections import OrderedDict
    return {"_codecs.encode": codecs.encode, "builtins.bytearray": bytearray, "builtins.set": set,
            "builtins.frozenset": frozenset, "builtins.complex": complex,
            "collections.OrderedDict": OrderedDict}


class DataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only numpy data reconstructors and plain containers
    (CIFAR batches hold a dict of a uint8 array, label lists and byte strings); any other name
    raises UnpicklingError before anything is called."""

    _table = None

    def find_class(self, module, name):
        if DataUnpickler._table is None:
            DataUnpickler._table = {**numpy_reconstructors(), **_plain_data_globals()}
        # Python 2 pickles (the CIFAR files) spell some modules differently (__builtin__, copy_reg).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in DataUnpickler._table:
            return DataUnpickler._table[full]
        raise pickle.UnpicklingError(f"it references {full}, which is not plain data (refused: could run code)")


def load_data_pickle(file, encoding="latin1"):
    return DataUnpickler(file, encoding=encoding).load()
