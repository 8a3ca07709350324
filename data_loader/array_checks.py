"""What ``ArrayLTDataModule.load_arrays`` must return, checked once when a data set is read: a
wrong array is a one-line error naming the data file, the array and what was expected, instead of
a traceback (or a misleading "too few training images") deep in the long-tail selection."""
import numbers

import numpy as np

from utils.errors import UserError

NAMES = ("train_x", "train_y", "test_x", "test_y")


def read_arrays(module, source):
    """``module.load_arrays()``, with a missing file or a missing key named."""
    try:
        arrays = module.load_arrays()
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{type(module).__name__}: data file {e.filename or source} does not exist "
                        "(data_loader.args.data_dir)")
    except KeyError as e:
        key = str(e.args[0] if e.args else e).split(" is not a file")[0]  # numpy: "KEY is not a file in the archive"
        raise UserError(f"{type(module).__name__}: {source} has no array {key}; expected the arrays "
                        f"{', '.join(NAMES)}")
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{type(module).__name__}: cannot read {source} ({e}); expected the arrays {', '.join(NAMES)}")
    if not isinstance(arrays, (tuple, list)) or len(arrays) != 4:
        raise UserError(f"{type(module).__name__}.load_arrays() returned {type(arrays).__name__}; expected "
                        f"({', '.join(NAMES)})")
    return check_arrays(arrays, source, module.num_classes, module.image_size)


def check_arrays(arrays, source, num_classes, image_size):
    """(train_x, train_y, test_x, test_y) as uint8 N x S x S x 3 images and labels 0..C-1."""
    out = []
    for split, pair in (("train", arrays[:2]), ("test", arrays[2:])):
        x_name, y_name = f"{split}_x", f"{split}_y"
        x, y = map(np.asarray, pair)
        where = f"{source}: {x_name}"
        if x.dtype != np.uint8:
            nan = " holding NaN" if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any() else ""
            raise UserError(f"{where} is {x.dtype}{nan}; expected uint8 images (0..255), N x {image_size} x "
                            f"{image_size} x 3")
        if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3):
            raise UserError(f"{where} has shape {x.shape}; expected N x {image_size} x {image_size} x 3 (uint8)")
        if len(x) == 0:
            raise UserError(f"{where} holds no images; expected at least one {split} image")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"{source}: {y_name} has shape {y.shape}; expected {len(x)} labels, one per image "
                            f"of {x_name}")
        if not np.issubdtype(y.dtype, np.integer):
            floats = np.issubdtype(y.dtype, np.floating)
            if not floats or not np.isfinite(y).all() or (y != np.round(y)).any():
                bad = y[~np.isfinite(y)][0] if floats and not np.isfinite(y).all() else y.dtype
                raise UserError(f"{source}: {y_name} holds {bad}; expected integer labels 0..{num_classes - 1}")
            y = y.astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            bad = y.min() if y.min() < 0 else y.max()
            raise UserError(f"{source}: {y_name} holds the label {bad}; expected labels 0..{num_classes - 1}")
        out += [x, y]
    return tuple(out)


def check_normalisation(mean, std):
    """``mean`` and ``std``: three numbers each (R, G, B), std > 0 (ValueError otherwise)."""
    for name, value in (("mean", mean), ("std", std)):
        ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) for v in value)
        if not ok or (name == "std" and min(value) <= 0):
            raise ValueError(f"{name} {value!r}: expected three numbers (R, G, B)"
                             f"{', each > 0' if name == 'std' else ''}")
