"""The folder a training run writes (``save_dir/name/run_id``), owned by train.py: created without
overwriting an existing one, locked to one process, given the resolved config, and removed again
if the run fails before its first checkpoint (so the same ``--run_id`` works again)."""
import os
import re
from datetime import datetime
from pathlib import Path

from utils import safe_write
from utils.errors import UserError, shown
from utils.run_lock import LOCK_NAME, RunLock


NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
RUN_FILES = ("config.json", "info.log", "epochs.csv", "last.pth", "model_best.pth")


def check_folder_name(value, what):
    """``--run_id`` / ``--name`` (``what``): one folder name, so the run stays inside ``save_dir``:
    letters, digits, '_', '-', '.', starting with a letter or digit, at most 100 characters."""
    if not isinstance(value, str) or not NAME_RULE.fullmatch(value):
        raise UserError(f"{what} {shown(value)}: expected one folder name of letters, digits, '_', '-' and '.', "
                        "starting with a letter or digit, at most 100 characters (a run stays inside save_dir)")
    return value


def write_json(obj, path):
    """The resolved config as ``config.json``: atomic, never through a link (utils/safe_write.py)."""
    safe_write.write_json(path, obj, indent=4)


def _is_config(path):
    """Byte for byte what ``write_json`` writes for a training config."""
    raw = path.read_bytes()
    config = safe_write.read_json_object(path)
    return config is not None and "trainer" in config and raw == safe_write.json_text(config, indent=4).encode()


_LOG_LINE = re.compile(rb"\d\d:\d\d:\d\d .*")


def _is_log(path):
    """Only lines in the format of utils/logger.py (``HH:MM:SS message``)."""
    return all(_LOG_LINE.fullmatch(line) for line in path.read_bytes().splitlines() if line)


SPLIT_FILES = ("validation_split.txt",)  # LTDataModule.split_files() (the image-folder module's held-out split)
_SPLIT_LINE = re.compile(rb"\S.* \d+")


def _is_split_list(path):
    """Only ``relative/path label`` lines, as ``write_split_files`` writes them."""
    return all(_SPLIT_LINE.fullmatch(line) for line in path.read_bytes().splitlines() if line)


def _is_lock(path):
    return re.fullmatch(rb"(\d+\n)?", path.read_bytes()) is not None


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _start_file(entry):
    """Whether ``entry`` is, byte for byte recognisably, a file a run of this project writes before its
    first checkpoint: its config.json, its info.log, TensorBoard event files, the lock, or a temporary
    file of a process that no longer runs."""
    if entry.is_symlink() or not entry.is_file():
        return False
    name = entry.name
    if name == "config.json":
        return _is_config(entry)
    if name == "info.log":
        return _is_log(entry)
    if name == LOCK_NAME:
        return _is_lock(entry)
    if name in SPLIT_FILES:
        return _is_split_list(entry)
    if re.fullmatch(r"events\.out\.tfevents\.\d+\.[^/]+", name):
        return True
    pid = safe_write.is_temp_name(name)
    return pid is not None and not _process_alive(pid)


def _written_by_this_run(entry):
    """In a folder this process created: the names it writes there before a checkpoint."""
    name = entry.name
    return not entry.is_symlink() and entry.is_file() and (
        name in ("config.json", "info.log", *SPLIT_FILES)
        or re.fullmatch(r"events\.out\.tfevents\.\d+\.[^/]+", name) is not None
        or safe_write.is_temp_name(name) == os.getpid())


def _start_leftover(run_dir):
    """Whether ``run_dir`` holds nothing but what a run writes before its first checkpoint."""
    return all(_start_file(e) for e in run_dir.iterdir())


def check_run_files(run_dir):
    """The files a run appends to or replaces in its folder must not be links (a prepared folder must
    not turn a resume into a write elsewhere) nor anything but regular files."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UserError(f"run folder {run_dir}: {name} is a link or not a regular file; refusing to write "
                            "through it (replace it by the run's own file, or fork with --run_id NEW)")


class RunFolder:
    """``path``: the run folder; ``created``: the folders made for it, deepest first (an existing
    folder, the resumed run's, has none). The folder is locked (utils/run_lock.py) from the moment
    it is opened or created until ``close``."""

    def __init__(self, path, created=()):
        self.path = Path(path)
        self.created = list(created)
        self.lock = RunLock(self.path)
        self.reused = False  # a leftover of a run killed before its first checkpoint, taken over

    @classmethod
    def existing(cls, checkpoint):
        """The folder of a resumed run: the checkpoint's, locked and checked to be writable (a
        resume must not find out after an epoch that it cannot save)."""
        folder = cls(Path(checkpoint).resolve().parent)
        check_run_files(folder.path)
        if not os.access(folder.path, os.W_OK):
            raise UserError(f"run folder {folder.path} is not writable; a resumed run saves there "
                            "(resume a copy, or fork it with --run_id NEW)")
        folder.lock.acquire()
        return folder

    @classmethod
    def create(cls, save_dir, name, run_id=None):
        """Create ``save_dir/name/run_id`` (``run_id`` defaults to the date and time), refusing an
        existing one, except the leftover of a run killed before its first checkpoint (SIGKILL
        leaves no chance to clean up): a folder holding only what a run writes at its start, no
        checkpoint, and not locked by a running process is taken over."""
        run_id = check_folder_name(run_id or datetime.now().strftime("%m%d_%H%M%S"), "--run_id")
        run_dir = Path(save_dir) / check_folder_name(name, "name") / run_id
        exists = f"run folder {run_dir} already exists; choose another --run_id, or resume with -r"
        if run_dir.is_dir() and not run_dir.is_symlink() and _start_leftover(run_dir):
            folder = cls(run_dir)
            folder.lock.acquire()  # a process still starting up holds it: refused as "in use"
            if not _start_leftover(run_dir):  # changed while the lock was taken
                folder.close()
                raise UserError(exists)
            folder.reused = True
            folder._clear()
            return folder
        if run_dir.is_dir() and not run_dir.is_symlink():
            raise UserError(f"{exists} (it holds files that are not those of a failed start, e.g. "
                            f"{next(e.name for e in run_dir.iterdir() if not _start_file(e))})")
        if run_dir.exists():
            raise UserError(exists)
        created = []
        for folder in (run_dir, *run_dir.parents):
            if folder.exists() or folder.is_symlink():
                break
            created.append(folder)
        in_the_way = f"cannot create run folder {run_dir}: a file is in the way (save_dir must be a folder)"
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            raise UserError(exists if run_dir.is_dir() else in_the_way)
        except NotADirectoryError:
            raise UserError(in_the_way)
        except OSError as e:
            raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}")
        folder = cls(run_dir, created)
        if not os.access(run_dir, os.W_OK):
            folder.discard_if_unused()
            raise UserError(f"run folder {run_dir} is not writable")
        try:
            folder.lock.acquire()
        except UserError:
            folder.discard_if_unused()
            raise
        return folder

    def write_config(self, config):
        """The resolved config as ``config.json``."""
        write_json(config, self.path / "config.json")

    def write_split_files(self, files):
        """The data module's split files ({name: text}; ``LTDataModule.split_files``), written
        atomically beside config.json (a resumed run rewrites the same text)."""
        for name, text in files.items():
            safe_write.write_text(self.path / name, text)

    def has_checkpoint(self):
        return (self.path / "last.pth").exists()

    def close(self):
        self.lock.release()

    def _clear(self):
        """Remove what a run writes into the folder before its first checkpoint (config.json,
        info.log, TensorBoard files; recognised as such, see ``_start_file``), not the lock; any
        other file is left where it is."""
        ours = _start_file if self.reused else _written_by_this_run
        for entry in self.path.iterdir():
            if entry.name != LOCK_NAME and ours(entry):
                entry.unlink(missing_ok=True)

    def discard_if_unused(self):
        """Release the lock; a folder that ``create`` made and that holds no checkpoint (the run
        failed before its first epoch was saved) is removed with what the run wrote into it, so the
        same command works again. Only the lock's holder clears the folder: a process that lost the
        race for a new folder to another one leaves that one's files alone."""
        if (self.created or self.reused) and self.lock.held and self.path.is_dir() and not self.has_checkpoint():
            self._clear()
        self.close()
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep what holds anything
                break
