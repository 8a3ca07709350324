"""One process at a time in a run folder: ``RUN/.lock``, held with ``fcntl.flock`` for as long as a
``train.py`` writes the folder.

The kernel drops a flock when its process ends, however it ends (SIGKILL, a crash, a node reboot),
so a lock can never be left stuck: a later process finds the file but takes the lock. A second
process while the first runs is refused with one line naming the folder and the holder's pid. The
file is removed on release; a process that opened it just before must then retry on the new file
(checked by comparing inodes), so two processes never both believe they hold it.
"""
import errno
import os
from pathlib import Path

from utils.errors import UserError
from utils.safe_write import regular_fd

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: no locking (documented in docs/reliability.md)
    fcntl = None


class RunLock:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd = None

    def acquire(self):
        if fcntl is None or self._fd is not None:
            return self
        while True:
            try:
                fd = regular_fd(self.path, os.O_RDWR | os.O_CREAT)  # never a link, FIFO or device
            except OSError as e:
                raise UserError(f"run folder {self.folder}: cannot create its lock file {self.path} "
                                f"({e.strerror or e}); expected a writable folder")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    by = f" (pid {holder})" if holder else ""
                    raise UserError(f"run folder {self.folder} is in use by another train.py{by}; one process "
                                    "at a time: wait for it to finish, or stop it")
                raise UserError(f"run folder {self.folder}: cannot lock {self.path} ({e.strerror or e})")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and flock: try the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message
        self._fd = fd
        return self

    @property
    def held(self):
        """Whether this process holds the folder (always, where there is no locking)."""
        return fcntl is None or self._fd is not None

    def release(self):
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
