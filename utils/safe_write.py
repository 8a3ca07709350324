"""The one rule for every file an entry point or a bench tool writes (results, CSV, PNG, NPZ,
records, logs, checkpoints):

1. **Checked before the work** (:func:`check_target`, :func:`check_beside`): the target is not a
   link, not a folder, not inside a recorded result (``results/NAME/``, or any folder holding a
   ``record.json``: read-only to every tool; ``bench/records/record.py`` assembles a new record in a
   ``.NAME.partial`` folder, which is no record yet, and ``bench/records/add_views.py`` gives a
   record new files, never replacing one, with :func:`add_files`), its folder is writable, and if
   it exists it is a file this project wrote *for the same purpose*:

   - a JSON result says so itself: ``"written_by": WRITER`` (:func:`owned_json`; ``legacy``
     recognises files written before that key);
   - a side file (the CSV, plot or logits beside a JSON result) is listed, with the SHA-256 of its
     bytes, under ``"files"`` of that result (:func:`digest`): byte for byte what the earlier run
     wrote, so a file put in its place since is refused;
   - anything else needs a ``recognise(path)`` the caller passes (a checkpoint's format key).

2. **Written atomically** (:func:`atomic_file`, :func:`write_bytes`, :func:`write_text`,
   :func:`write_json`): into a temporary file with a unique name in the target's folder
   (``.NAME.tmpPID.RANDOM``, created with ``O_EXCL``, so two processes never share one), flushed,
   fsynced, then renamed over the target; a rename replaces a link instead of writing through it,
   and a target that became a link since the check is refused. A failed write (disk full) removes
   the temporary file and is one line (:class:`~utils.errors.UserError`, exit 2) naming the target.
   JSON is written with ``allow_nan=False``: a NaN or infinite number is refused, never written.

3. **Nothing is deleted that this run did not create**: the only files removed are this process's
   temporary files, and what :mod:`utils.run_folder` recognises as its own.

Appending (``info.log``) goes through :func:`open_append`: a regular file or a new one, never a link.
No file is opened that is not a regular one (:func:`open_regular`): a FIFO or a device at a path
this project writes or reads back (a cache, a log) is refused at once, never waited on.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path

from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RECORD_FILE = "record.json"
TEMP_NAME = re.compile(r"^\..+\.tmp(\d+)(\.[0-9a-f]+)?$")  # .NAME.tmpPID[.RANDOM]


class WriteRefused(UserError):
    """A target that the rule does not allow (one line, exit 2)."""


# -- what may be written ---------------------------------------------------------------------------
def record_of(path):
    """The recorded result ``path`` lies in (read-only), or None."""
    folder = Path(os.path.abspath(path)).parent
    real = folder.resolve()
    results = RESULTS.resolve()
    if real == results:
        return real
    if real.parent == results and not real.name.startswith("."):
        return real
    if (folder / RECORD_FILE).is_file():
        return folder
    return None


def digest(path):
    """``sha256:HEX`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def read_json_object(path):
    """A JSON object from ``path``, or None (not a file, not JSON, not an object, nested too deep)."""
    try:
        with open(path, "rb") as f:
            payload = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def owned_json(path, writer, legacy=None):
    """Whether ``path`` is a JSON file that ``writer`` wrote (``"written_by": writer``; without that
    key, ``legacy(payload)`` decides; without ``legacy``, it is not)."""
    payload = read_json_object(path)
    if payload is None:
        return False
    if "written_by" in payload:
        return payload["written_by"] == writer
    return bool(legacy and legacy(payload))


def _nearest_existing(folder):
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_place(path, option):
    path = Path(path)
    if path.is_symlink():
        raise WriteRefused(f"{option} {path} is a link; refusing to write through it or replace it: give a path "
                           "that is not a link")
    if path.exists() and not path.is_file():
        raise WriteRefused(f"{option} {path} exists and is not a regular file; expected the path of a new file or "
                           "of one this tool wrote")
    record = record_of(path)
    if record is not None:
        raise WriteRefused(f"{option} {path} lies in the recorded result {record}, which is read-only (only "
                           "bench/records/record.py writes, creating a new record): choose a path outside it")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise WriteRefused(f"{option} {path}: {folder} is not a folder; expected a folder, or a path to create one "
                           f"(choose another {option})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteRefused(f"{option} {path}: folder {folder} is not writable; expected a writable place "
                           f"(choose another {option})")


def check_target(path, writer, option="--out", legacy=None, recognise=None):
    """Before any work: ``path`` may be written by ``writer`` (see the module's rule). JSON targets
    are recognised by ``written_by`` (and ``legacy``); other files only by ``recognise(path)``."""
    path = Path(path)
    _check_place(path, option)
    if path.exists():
        ours = recognise(path) if recognise is not None else owned_json(path, writer, legacy)
        if not ours:
            raise WriteRefused(f"{option} {path} exists and is not a result file of {writer} (a checkpoint, a "
                               "config, another tool's result or a file of yours); refusing to "
                               f"replace it: choose another {option}")
    return path


def check_beside(main, sides, writer, option="--out", legacy=None, signatures=None):
    """Before any work: each file in ``sides`` (written beside the JSON result ``main``) is new, or
    listed with its current SHA-256 under ``"files"`` of ``main``, an earlier result of ``writer``.
    A result written before ``"files"`` existed vouches for a side file only if
    ``signatures[suffix](path)`` recognises its format."""
    main = Path(main)
    payload = read_json_object(main) if main.exists() and owned_json(main, writer, legacy) else None
    listed = payload.get("files") if payload is not None else None
    for side in map(Path, sides):
        _check_place(side, option)
        if not side.exists():
            continue
        if isinstance(listed, dict):
            ours = listed.get(side.name) == digest(side)
        else:
            check = (signatures or {}).get(side.suffix)
            ours = payload is not None and check is not None and check(side)
        if not ours:
            raise WriteRefused(f"{option} {main}: {side}, which {writer} writes beside it, exists and is not the file "
                               "an earlier result of this tool wrote there (byte for byte); refusing to replace "
                               f"it: choose another {option}")


# -- writing ---------------------------------------------------------------------------------------
def temp_file(path):
    """A new temporary file beside ``path`` (``.NAME.tmpPID.RANDOM``, 64 random bits, O_EXCL and
    O_NOFOLLOW: nothing planted at a guessed name is opened): (fd, temp path)."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{secrets.token_hex(8)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644), tmp
        except FileExistsError:
            continue


def fsync_folder(folder):
    """Make a rename durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_reason(e):
    """The OS reason of a failed write (libraries wrap ENOSPC in other errors)."""
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return "the write failed (is the disk full?)"


def _kind(mode):
    for test, name in ((stat.S_ISLNK, "a link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def special_file(path):
    """What ``path`` is when it is a link or exists and is not a regular file ("a link", "a FIFO",
    "a folder", ...); None for a regular file or nothing."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return "not accessible"
    return None if stat.S_ISREG(mode) else _kind(mode)


def regular_fd(path, flags=os.O_RDONLY):
    """A descriptor of ``path`` opened only if it is a regular file: never through a link
    (O_NOFOLLOW), and a FIFO or device is refused instead of opened (O_NONBLOCK, then checked with
    fstat), so nothing waits on it. Raises :class:`WriteRefused` (a UserError) naming what it is;
    OSError as usual."""
    what = special_file(path)
    if what is not None:
        raise WriteRefused(f"{path} is {what}; expected a regular file")
    fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteRefused(f"{path} is not a regular file (it changed while it was opened)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def not_regular(path):
    """Why ``path``, followed through links, is no regular file to read: "does not exist", "is a
    link to nothing", "is a link loop", "is a folder", "is a FIFO", ...; None for a regular file.
    One stat, nothing opened (a FIFO is never waited on)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "is a link to nothing" if os.path.islink(path) else "does not exist"
    except OSError as e:
        return "is a link loop" if e.errno == errno.ELOOP else f"cannot be reached ({e.strerror})"
    return None if stat.S_ISREG(mode) else f"is {_kind(mode)}"


def open_readable(path):
    """``path`` opened for reading (binary) if it is a regular file, through links (images are often
    linked into a data folder); a FIFO or device is refused without waiting on it (OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise IsADirectoryError(f"{path} is {_kind(mode)}; expected a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_regular(path, flags=os.O_RDONLY, mode="rb", **kwargs):
    """:func:`regular_fd` as a file object (``mode`` as in ``open``)."""
    fd = regular_fd(path, flags)
    try:
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """``with atomic_file(path) as f: f.write(...)``: the file appears at ``path`` whole, or not at
    all. Errors writing (OSError, and a library's RuntimeError around one) are a one-line UserError
    naming ``path``; any other exception (Ctrl-C) is re-raised; the temporary file is removed."""
    path = Path(path)
    what = special_file(path)
    if what is not None:
        raise WriteRefused(f"{path} is {what}; refusing to write through it or replace it")
    fd, tmp = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path)
        with os.fdopen(fd, mode) as f:
            fd = None
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.is_symlink():
            raise WriteRefused(f"{path} became a link while it was written; refusing to replace it")
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, UserError):
            raise UserError(f"cannot write {path}: {write_reason(e)}") from None
        raise
    fsync_folder(path.parent)


def write_bytes(path, data):
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def json_text(obj, indent=2, what=None, default=None):
    """JSON text (``default`` converts other objects, as in ``json.dumps``); a NaN or infinite
    number anywhere is a UserError (never written as a bare NaN)."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False, default=default) + "\n"
    except ValueError:
        raise UserError(f"refusing to write {what or 'a result'}: it holds a NaN or infinite number "
                        "(a metric of non-finite outputs)") from None


def write_json(path, obj, indent=2, default=None):
    return write_text(path, json_text(obj, indent, what=path, default=default))


def open_append(path):
    """``path`` opened for appending (text, line-buffered): an existing regular file or a new one,
    never through a link (O_NOFOLLOW)."""
    what = special_file(path)
    if what is not None:
        raise WriteRefused(f"{path} is {what}; refusing to append to it")
    return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a", buffering=1)


def is_temp_name(name):
    """Whether ``name`` is a temporary file name of :func:`atomic_file` (``.NAME.tmpPID[.RANDOM]``);
    returns the pid or None."""
    m = TEMP_NAME.match(name)
    return int(m.group(1)) if m else None


def add_files(folder, files):
    """Give ``folder`` the new files ``files`` (paths in a staging folder on the same file system),
    in order, under their names, each as a hard link: a name that exists (a file, a link, anything)
    is refused and never replaced, and a failure or Ctrl-C part way removes the links this call
    made, so the folder gains all of them or none."""
    made = []
    try:
        for src in map(Path, files):
            target = Path(folder) / src.name
            try:
                os.link(src, target, follow_symlinks=False)
            except FileExistsError:
                raise WriteRefused(f"{target} exists; refusing to replace it (a record's files are never "
                                   "overwritten)") from None
            except OSError as e:
                raise UserError(f"cannot add {target}: {write_reason(e)}") from None
            made.append(target)
    except BaseException:
        for target in reversed(made):
            os.unlink(target)
        raise
    fsync_folder(folder)
    return made
