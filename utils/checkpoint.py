"""Checkpoints as plain data: atomic writes, safe loading, and the reference release's format.

Our checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``. Checkpoints of the reference release also pickle a config
object (``parse_config.ConfigParser`` holding ``pathlib`` paths). Those load through torch's
restricted unpickler with each such class replaced by an inert placeholder: nothing named in the
file is imported or executed. Any reference to a function (``os.system``, ``builtins.eval``...)
is refused.
"""
import os
import pickle
import zipfile
from pathlib import Path

import torch

from utils.errors import UserError

# Modules whose names in a pickle mean "run code", even when spelled like a class.
_CODE_MODULES = {
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "importlib", "runpy",
    "shutil", "socket", "pickle", "_pickle", "marshal", "code", "codeop", "types", "functools",
    "operator", "ctypes", "multiprocessing", "pty", "webbrowser", "io", "tempfile", "signal",
    "threading", "asyncio", "pdb", "timeit", "platform", "inspect", "ast", "copyreg", "torch",
    "numpy", "pydoc", "commands", "popen2", "urllib", "http", "requests", "ftplib", "smtplib",
}


def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _placeholder(full_name):
    """An inert stand-in class for ``full_name``: keeps constructor args and state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __setstate__(self, state):
        self.state = state

    module, _, qualname = full_name.rpartition(".")
    return type(qualname, (), {"__new__": __new__, "__init__": lambda self, *a, **k: None,
                               "__setstate__": __setstate__, "__module__": module,
                               "__repr__": lambda self: f"<inert {full_name}>"})


def _is_inert_class_name(full_name):
    module, _, name = full_name.rpartition(".")
    root = module.split(".")[0]
    return bool(module) and root not in _CODE_MODULES and name[:1].isupper() and not name.startswith("_")


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint without executing code from it; bad files raise a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first_error = e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({_short(e)})")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a checkpoint
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint ({_short(e)})")
    if not names:
        raise UserError(f"checkpoint {path} cannot be loaded safely ({_short(first_error)})")
    code = sorted(n for n in names if not _is_inert_class_name(n))
    if code:
        raise UserError(f"checkpoint {path} refused: it references {', '.join(code)}, which could run code "
                        "when loaded; expected plain data (tensors, numbers, strings, dicts)")
    stand_ins = [(_placeholder(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"checkpoint {path} cannot be loaded safely ({_short(e)})")


def _short(e):
    text = " ".join(str(e).split())
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
    model.load_state_dict(state_dict, strict=True)
