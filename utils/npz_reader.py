"""Reading an ``.npz`` that may be torn, foreign or hostile (saved logits, the validation cache, a
record's ``logits.npz``):

- only a regular file is opened (never a link, a FIFO or a device: utils/safe_write.py);
- ``allow_pickle=False``: an object array is refused, never unpickled;
- an array's dtype and shape are read from its header alone (:meth:`Npz.header`), so a caller can
  check a small key entry before any array is decompressed, and an array that declares more than
  the memory available (a zip bomb) is refused before it is read;
- a file that is not a zip (text, a pickle, a single ``.npy``) is refused by its first bytes, never
  handed to ``np.load`` (which would try it as a pickle);
- every failure (not a zip, a torn member, a CRC error, an object array) is one
  :class:`~utils.errors.UserError` naming the file and the array.

    with open_npz(path, "logits file") as f:
        shape = f.header("test_logits")[1]
        logits = f.read("test_logits", limit=1 << 30)
"""
import contextlib

import numpy as np

from utils.errors import UserError
from utils.memory_budget import check_fits, gib
from utils.safe_write import open_regular

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or an empty zip


def _short(e, limit=160):
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class Npz:
    """An open ``.npz``: ``files`` (array names), ``header(name)``, ``read(name, limit)``."""

    def __init__(self, npz, path, what):
        self._npz, self.path, self.what = npz, path, what
        self.files = list(npz.files)

    def _fail(self, name, e):
        return UserError(f"{self.what} {self.path}: array {name!r} is unreadable ({_short(e)})")

    def header(self, name):
        """(dtype, shape) of array ``name``, from its header only (nothing decompressed beyond it)."""
        try:
            with self._npz.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
        except Exception as e:  # noqa: BLE001 - a torn or crafted header raises anything
            raise self._fail(name, e) from None
        return dtype, tuple(shape)

    def nbytes(self, name):
        dtype, shape = self.header(name)
        return int(np.prod(shape, dtype=object)) * dtype.itemsize

    def read(self, name, limit=None):
        """Array ``name``; one that declares more bytes than ``limit``, or than the memory available,
        is refused before it is decompressed."""
        if name not in self.files:
            raise UserError(f"{self.what} {self.path}: missing array {name!r}")
        size = self.nbytes(name)
        if limit is not None and size > limit:
            raise UserError(f"{self.what} {self.path}: array {name!r} declares {gib(size)}, more than the "
                            f"{gib(limit)} expected of it; refusing to read it")
        check_fits(size, f"{self.what} {self.path}: array {name!r}")
        try:
            return self._npz[name]
        except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError (object array)...
            raise self._fail(name, e) from None


@contextlib.contextmanager
def open_npz(path, what="file"):
    """``with open_npz(path, what) as f``: an :class:`Npz`; a missing, special or unreadable file is a
    UserError naming ``what`` and ``path``."""
    try:
        handle = open_regular(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be opened ({e.strerror or e})") from None
    except UserError as e:  # a link, FIFO or device
        raise UserError(f"{what} {e}") from None
    with handle:
        magic = handle.read(4)
        handle.seek(0)
        if magic not in ZIP_MAGIC:  # np.load would try it as a pickle and advise loading it unsafely
            kind = "an empty file" if not magic else "a single .npy array" if magic == b"\x93NUM" else "not a zip"
            raise UserError(f"{what} {path} is not an .npz ({kind}); expected named arrays as np.savez writes them")
        try:
            npz = np.load(handle, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - not a zip, not an array, a torn central directory
            raise UserError(f"{what} {path} is not a readable .npz ({_short(e)})") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise UserError(f"{what} {path} is a single .npy array, not an .npz of named arrays")
        with npz:
            yield Npz(npz, path, what)
