"""Real faults on a real train.py process: SIGKILL mid-run, Ctrl-C (SIGINT), a diverging loss.

The reference is the uninterrupted 3-epoch run of ``tiny_reference`` (tests/conftest.py). This is
the suite's end-to-end proof that a run killed mid-epoch and resumed from its last.pth ends with
the reference's weights and momentum, bit for bit (CPU, fixed seed, one thread in every run, in
fresh interpreters). The Ctrl-C run's last.pth is the reference's checkpoint of the same epoch, bit
for bit, so resuming it is the case proven by the SIGKILL test.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, assert_same_state, one_line_error, run_entry, run_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same thread count in every run


def start_and_wait_for_epoch_1(reference, run_id, save_dir):
    """The reference's 3-epoch run started afresh in a child process (Ctrl-C handled as in a
    terminal, even if the test runner was started with SIGINT ignored, as background jobs are);
    returns (process, run folder) once its first last.pth (epoch 1) is committed."""
    run = save_dir / "small" / run_id
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-c", str(reference.config), "--run_id", run_id,
                             "--seed", reference.seed, "--save_dir", str(save_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **ENV),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not (run / "last.pth").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    return proc, run


def test_sigkill_during_training_then_resume_equals_uninterrupted(tiny_reference, tmp_path):
    full = tiny_reference.run
    proc, run = start_and_wait_for_epoch_1(tiny_reference, "killed", tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished: 2 more epochs were to come
    epoch = torch.load(run / "last.pth", weights_only=True)["epoch"]
    assert 1 <= epoch < 3
    resumed = run_script("train.py", "-r", run / "last.pth", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(full / "last.pth", run / "last.pth")
    assert not list(run.glob(".*.tmp*"))


def test_ctrl_c_exits_cleanly_and_keeps_the_last_epoch_exactly(tiny_reference, tmp_path):
    full = tiny_reference.run
    proc, run = start_and_wait_for_epoch_1(tiny_reference, "ctrl_c", tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err, err
    epoch = torch.load(run / "last.pth", weights_only=True)["epoch"]
    assert f"holds epoch {epoch}" in lines[0] and str(run / "last.pth") in lines[0]
    assert 1 <= epoch < 3
    # the kept state is exactly the uninterrupted run's at that epoch (weights, momentum, epoch):
    # resuming it is what test_sigkill_during_training_then_resume_equals_uninterrupted proves
    assert_same_state(full / f"checkpoint-epoch{epoch}.pth", run / "last.pth")
    assert not list(run.glob(".*.tmp*"))


def test_diverging_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tiny_reference, tmp_path, capfd):
    """One good epoch (the reference's epoch-1 checkpoint), then resume with lr 1e30 (in-process)."""
    full = tiny_reference.run
    run = tmp_path / "diverge"
    run.mkdir()
    shutil.copy(full / "checkpoint-epoch1.pth", run / "last.pth")
    before = (run / "last.pth").read_bytes()
    code, out, err = run_entry("train.py", ["-r", run / "last.pth", "--lr", "1e30"], capfd)
    line = one_line_error(code, err, "non-finite", "epoch 2, step", "(epoch 1) is kept")
    assert "lr 0.1 -> 1e+30" in out  # the new lr was applied, not silently replaced by the checkpoint's
    assert (run / "last.pth").read_bytes() == before, line
    assert not (run / "model_best.pth").exists() and not list(run.glob("checkpoint-epoch*.pth"))
