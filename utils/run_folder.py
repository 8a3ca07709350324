"""The folder a training run writes (``save_dir/name/run_id``), owned by train.py: created without
overwriting an existing one, given the resolved config, and removed again if the run fails before
writing anything into it (so the same ``--run_id`` works again)."""
import json
import os
from datetime import datetime
from pathlib import Path

from utils.errors import UserError


def write_json(obj, path):
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=4)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunFolder:
    """``path``: the run folder; ``created``: the folders made for it, deepest first (an existing
    folder, the resumed run's, has none)."""

    def __init__(self, path, created=()):
        self.path = Path(path)
        self.created = list(created)

    @classmethod
    def existing(cls, checkpoint):
        """The folder of a resumed run: the checkpoint's."""
        return cls(Path(checkpoint).resolve().parent)

    @classmethod
    def create(cls, save_dir, name, run_id=None):
        """Create ``save_dir/name/run_id`` (``run_id`` defaults to the date and time), refusing an
        existing one."""
        run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")
        run_dir = Path(save_dir) / name / run_id
        exists = f"run folder {run_dir} already exists; choose another --run_id, or resume with -r"
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
        return folder

    def write_config(self, config):
        """The resolved config as ``config.json``."""
        write_json(config, self.path / "config.json")

    def discard_if_unused(self):
        """Remove the folders ``create`` made, as long as they are still empty."""
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep what holds anything
                break
