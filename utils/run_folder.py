"""The folder a training run writes (``save_dir/name/run_id``), owned by train.py: created without
overwriting an existing one, locked to one process, given the resolved config, and removed again
if the run fails before its first checkpoint (so the same ``--run_id`` works again)."""
import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

from utils.errors import UserError
from utils.run_lock import LOCK_NAME, RunLock


def write_json(obj, path):
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file; a
    failed write (disk full, read-only folder) removes its temporary file and is a UserError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror or e}")


_START_FILES = re.compile(r"^(config\.json|info\.log|validation_split\.txt|model_best\.pth|events\.out\.tfevents\..*|\..+\.tmp\d+|"
                          + re.escape(LOCK_NAME) + r")$")


def _start_leftover(run_dir):
    """Whether ``run_dir`` holds only files a run writes before its first ``last.pth``."""
    entries = list(run_dir.iterdir())
    return not (run_dir / "last.pth").exists() and all(e.is_file() and _START_FILES.match(e.name) for e in entries)


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
        run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")
        run_dir = Path(save_dir) / name / run_id
        exists = f"run folder {run_dir} already exists; choose another --run_id, or resume with -r"
        if run_dir.is_dir() and _start_leftover(run_dir):
            folder = cls(run_dir, [run_dir])
            folder.lock.acquire()  # a process still starting up holds it: refused as "in use"
            folder.reused = True
            folder._clear()
            return folder
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
            path = self.path / name
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            try:
                tmp.write_text(text)
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise UserError(f"cannot write {path}: {e.strerror or e}")

    def has_checkpoint(self):
        return (self.path / "last.pth").exists()

    def close(self):
        self.lock.release()

    def _clear(self):
        """Remove what a run wrote into the folder (config.json, info.log, TensorBoard files), not the lock."""
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name != LOCK_NAME:
                entry.unlink(missing_ok=True)

    def discard_if_unused(self):
        """Release the lock; a folder that ``create`` made and that holds no checkpoint (the run
        failed before its first epoch was saved) is removed with what the run wrote into it, so the
        same command works again. Only the lock's holder clears the folder: a process that lost the
        race for a new folder to another one leaves that one's files alone."""
        if self.created and self.lock.held and self.path.is_dir() and not self.has_checkpoint():
            self._clear()
        self.close()
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep what holds anything
                break
