"""Checkpoints as plain data: atomic writes, safe loading, and the reference release's format.

Writing: a checkpoint goes to a temporary file in the same folder (``.NAME.tmpPID.RANDOM``), is flushed
and fsynced, then renamed over ``NAME``. A kill at any moment leaves the previous file whole.

Reading: our checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``. Checkpoints of the reference release also pickle a config
object (``parse_config.ConfigParser`` holding ``pathlib`` paths) and numpy scalars. Those load
through torch's restricted unpickler, which calls nothing but the objects we hand it:

- names that look like classes (``module.CamelCase``) outside code-running modules become
  :class:`InertPlaceholder` subclasses that only store their arguments and state; the module
  named in the file is never imported;
- numpy scalars/arrays/dtypes and ``pathlib`` paths map to real reconstructors that only
  interpret data (see ``_data_reconstructors``);
- anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``torch.load``...) makes
  the file refused, before anything is unpickled.
"""
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from utils.content_checksum import checksum_mismatch, with_checksum
from utils.errors import UserError
from utils.safe_pickle import numpy_reconstructors
from utils.safe_write import fsync_folder, is_temp_name, temp_file, write_reason

# Modules whose names in a pickle mean "run code", even when spelled like a class. (Safety does
# not rest on this list: a placeholder runs nothing whatever its name. The list decides which
# files are refused outright, so that a payload is reported instead of silently neutralised.)
_CODE_MODULES = {
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "importlib", "runpy",
    "shutil", "socket", "pickle", "_pickle", "marshal", "code", "codeop", "types", "functools",
    "operator", "ctypes", "multiprocessing", "pty", "webbrowser", "io", "tempfile", "signal",
    "threading", "asyncio", "pdb", "timeit", "platform", "inspect", "ast", "copyreg", "torch",
    "numpy", "pydoc", "commands", "popen2", "urllib", "http", "requests", "ftplib", "smtplib",
    "_io", "_posixsubprocess", "posixpath", "ntpath", "glob", "zipimport", "pkgutil", "site",
    "dill", "cloudpickle", "joblib", "pandas", "yaml", "_thread", "_operator", "_functools", "gc",
    "atexit", "bdb", "cProfile", "profile", "trace", "distutils", "setuptools", "pip", "venv",
    "xmlrpc", "sqlite3", "shelve",
}

_fsync_dir = fsync_folder


def _unlink_quietly(path):
    try:
        path.unlink()
    except OSError:
        pass


def to_cpu(obj):
    """The same nested dicts, lists and tuples with every tensor detached on the CPU (a state_dict's
    ``_metadata`` kept), so a checkpoint written on a GPU loads on any machine without
    ``map_location``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(obj, path, copies=()):
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    ``copies``: further paths that get the same bytes; they are committed *before* ``path``, so
    when ``path`` is ``last.pth`` it is the commit point of an epoch: a kill in between leaves
    ``last.pth`` at the previous epoch, and resuming rewrites the copies identically.
    A crash at any moment leaves each file either as it was or complete, never torn; on an error
    (Ctrl-C) the temporary files are removed and the error is raised; a write that fails (disk
    full, read-only folder) is a :class:`CheckpointWriteError` naming the file. Tensors are
    written from the CPU (:func:`to_cpu`); a dict gets the checksum of its contents
    (utils/content_checksum.py), checked by :func:`load_checkpoint`.
    """
    obj = with_checksum(to_cpu(obj))
    path = Path(path)
    for target in (path, *map(Path, copies)):
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise CheckpointWriteError(f"cannot write {target}: it is a link or not a regular file; refusing to "
                                       "write through it or replace it")
    written = []
    try:
        fd, tmp = temp_file(path)  # .NAME.tmpPID.RANDOM, created exclusively (utils/safe_write.py)
        written.append(tmp)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        for copy in map(Path, copies):
            copy_fd, copy_tmp = temp_file(copy)
            written.append(copy_tmp)
            with open(tmp, "rb") as src, os.fdopen(copy_fd, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(copy_tmp, copy)
            _fsync_dir(copy.parent)
        os.replace(tmp, path)
    except BaseException as e:
        for t in written:
            _unlink_quietly(t)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a failed write as RuntimeError
            raise CheckpointWriteError(f"cannot write {path}: {write_reason(e)}") from None
        raise
    _fsync_dir(path.parent)


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, read-only folder); nothing was replaced. A
    UserError (one line, exit 2) that is still the OSError it was for callers that catch those."""


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp_files(folder):
    """Delete temporary files that a killed save left in ``folder`` (``.NAME.tmpPID[.RANDOM]`` whose
    process no longer runs; the run folder is locked by this process)."""
    removed = []
    for p in Path(folder).glob(".*.tmp*"):
        pid = is_temp_name(p.name)
        if pid is not None and pid != os.getpid() and p.is_file() and not p.is_symlink() and not _process_alive(pid):
            _unlink_quietly(p)
            removed.append(p)
    return removed


# -- safe loading ------------------------------------------------------------------------------
class InertPlaceholder:
    """Stand-in for a class named in a checkpoint: keeps constructor args and pickled state, runs nothing.

    ``qualified_name`` is the name found in the file; ``args`` the constructor arguments;
    ``state`` what ``__setstate__`` received (usually the original ``__dict__``).
    """

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


def _placeholder(full_name):
    module, _, qualname = full_name.rpartition(".")
    return type(qualname, (InertPlaceholder,), {"__module__": module, "qualified_name": full_name})


def _is_inert_class_name(full_name):
    module, _, name = full_name.rpartition(".")
    root = module.split(".")[0]
    return bool(module) and root not in _CODE_MODULES and name[:1].isupper() and not name.startswith("_")


def _data_reconstructors():
    """Names that real checkpoints contain, mapped to objects that only interpret data: numpy
    scalars, arrays and dtypes (see ``utils.safe_pickle.numpy_reconstructors``), and ``pathlib``
    concrete paths mapped to the *pure* path classes (same value, no file-system access)."""
    import pathlib
    table = numpy_reconstructors()
    for mod in ("pathlib", "pathlib._local"):
        for name, cls in (("PosixPath", pathlib.PurePosixPath), ("PurePosixPath", pathlib.PurePosixPath),
                          ("WindowsPath", pathlib.PureWindowsPath), ("PureWindowsPath", pathlib.PureWindowsPath)):
            table[f"{mod}.{name}"] = cls
    return table


def _globals_in_checkpoint(path):
    """Every global named in the checkpoint's pickle, found by reading opcodes (nothing is run)."""
    from torch import _weights_only_unpickler as wu
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        f.seek(0)
        # Legacy (pre-1.6) format: pickles of magic number, protocol, sys info, then the object.
        names = set()
        for _ in range(4):
            names |= wu.get_globals_in_pkl(f)
        allowed = set(wu._get_allowed_globals()) | set(wu._get_user_allowed_globals())
        return names - allowed


def _torch_load(path, map_location):
    with warnings.catch_warnings():
        # torch warns about pickle protocols other than 2; the restricted unpickler decides anyway.
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint without executing code from it; bad files raise a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file")
    ckpt = _load(path, map_location)
    mismatch = checksum_mismatch(ckpt)
    if mismatch:
        raise UserError(f"checkpoint {path} is corrupt: its contents do not match the checksum stored in it "
                        f"({mismatch[0]}, computed {mismatch[1].split(':')[1]}); expected an intact file (restore "
                        "it from a copy, or use model_best.pth or a checkpoint-epochN.pth; a checkpoint edited on "
                        "purpose loads once its 'checksum' entry is removed)")
    return ckpt


def _load(path, map_location):
    try:
        return _torch_load(path, map_location)
    except pickle.UnpicklingError as e:
        first_error = e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, KeyError,
            UnicodeDecodeError) as e:
        raise UserError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({_short(e)})")
    try:
        names = _globals_in_checkpoint(path)
    except Exception as e:
        raise UserError(f"checkpoint {path} is truncated, not a PyTorch checkpoint, or uses pickle features "
                        f"that cannot be checked for code ({_short(e)}); expected a torch.save file of plain "
                        "data") from e
    if not names:
        raise UserError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({_short(first_error)})")
    data = _data_reconstructors()
    code = sorted(n for n in names if n not in data and not _is_inert_class_name(n))
    if code:
        raise UserError(f"checkpoint {path} refused: it references {', '.join(code)}, which could run code "
                        "when loaded; expected plain data (tensors, numbers, strings, dicts)")
    allowed = [(_placeholder(n), n) for n in names if n not in data]
    if any(n in data for n in names):
        allowed += [(obj, n) for n, obj in data.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return _torch_load(path, map_location)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be loaded safely ({_short(e)})") from e


def _short(e):
    text = str(e)
    if "WeightsUnpickler error:" in text:  # torch wraps the reason in a long advice text
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
    text = " ".join(text.split()) or type(e).__name__  # an empty file raises EOFError with no message
    return text[:200] + ("..." if len(text) > 200 else "")


def extract_state_dict(checkpoint, path="checkpoint"):
    """The model weights of one of our checkpoints, a release checkpoint or a bare state dict,
    with any DataParallel/DDP ``module.`` prefix removed."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        state = checkpoint
    else:
        raise UserError(f"{path}: no model weights found (expected a 'state_dict' entry)")
    return strip_prefix(state, "module.")


def strip_prefix(state_dict, prefix):
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_model_weights(model, state_dict, path="checkpoint"):
    """Strictly load weights; a mismatch (other architecture, other class count) is a UserError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shape (e.g. {k}: {tuple(state_dict[k].shape)} vs "
                         f"{tuple(own[k].shape)})")
        raise UserError(f"{path} does not match the model {type(model).__name__}: " + "; ".join(parts))
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]}); expected finite "
                        "weights (the file is corrupt, or it was saved from a run that diverged)")
    model.load_state_dict(state_dict, strict=True)


def config_from_checkpoint(ckpt):
    """Our checkpoints hold the config dict; the release's hold an inert stand-in of its
    ConfigParser whose pickled state carries the dict under ``_config``."""
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(config, dict):
        return config
    state = getattr(config, "state", None)
    if isinstance(state, dict) and isinstance(state.get("_config"), dict):
        return state["_config"]
    return None
