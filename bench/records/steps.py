"""The steps bench/records/record.py and bench/records/reproduce.py share: run an entry point from the repository
root with its output in a log, train a run or resume it from its last.pth, and read what the
training log says. A step that fails ends the tool with a line naming the log."""
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from utils.safe_write import open_append


def command(script, *args, device=None, data_dir=None):
    """The command line of an entry point (``train.py``, ``test.py``, ``test_train.py``, a bench
    script) with ``-d`` and ``--data_dir`` where given."""
    return [sys.executable, script, *args, *(["-d", device] if device else []),
            *(["--data_dir", data_dir] if data_dir else [])]


def launch(cmd, stderr):
    """Run ``cmd`` from the repository root in a fresh process, its stderr into the open file
    ``stderr``; returns (exit code, stdout)."""
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return proc.returncode, proc.stdout


def run_step(cmd, log, tool):
    """Run ``cmd`` (:func:`launch`); the command line, its stderr and its stdout are appended to
    ``log``. Returns stdout; a failure exits with one line (``tool``: the script's name)."""
    with open_append(log) as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        code, stdout = launch(cmd, f)
        f.write(stdout)
    if code:
        sys.exit(f"{tool}: step failed (exit {code}), see {log}: {' '.join(map(str, cmd[1:4]))} ...")
    return stdout


def checkpoint_epoch(path):
    """The epochs a checkpoint holds; -1 for a file that cannot be read."""
    import torch
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # noqa: BLE001 - a torn file counts as absent; train.py wrote it atomically anyway
        return -1


def train_or_resume(run_dir, epochs, start_args, log, tool, device=None, on_start=None):
    """Train ``run_dir`` (a train.py run folder) to ``epochs``: nothing when its last.pth holds them,
    resumed from last.pth when it holds fewer, else started with ``train.py *start_args`` (a folder
    left without a finished epoch is set aside first; ``on_start()`` runs before the start). Returns
    whether train.py ran."""
    last = run_dir / "last.pth"
    if last.is_file() and checkpoint_epoch(last) >= epochs:
        return False
    if last.is_file():
        cmd = command("train.py", "-r", last, device=device)
    else:
        if run_dir.exists():  # started, no finished epoch: set aside, start again
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{int(time.time())}"))
        if on_start is not None:
            on_start()
        cmd = command("train.py", *start_args, device=device)
    run_step(cmd, log, tool)
    return True


def training_stats(info_log):
    """(seconds of all training epochs, mean images/s or None) from a run's info.log."""
    text = Path(info_log).read_text()
    times = [float(v) for v in re.findall(r"epoch_time_s ([0-9.]+)", text)]
    rates = [float(v) for v in re.findall(r"images_per_s ([0-9.]+)", text)]
    return sum(times), (sum(rates) / len(rates) if rates else None)
