"""Real faults on a real train.py process: SIGKILL mid-run, Ctrl-C (SIGINT), a diverging loss.

The reference is an uninterrupted 3-epoch run; every interrupted run, once resumed from its
last.pth, must end with the same weights, bit for bit (CPU, fixed seed, one thread in every run).
"""
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, one_line_error, run_script, tiny_cifar_config, write_cifar100, write_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same thread count in every run
SEED = "5"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = write_cifar100(root / "cifar", train_per_class=2, test_per_class=1)
    cfg = write_config(root / "c.json", tiny_cifar_config(data, root / "saved", epochs=3))
    proc = run_script("train.py", "-c", cfg, "--run_id", "full", "--seed", SEED, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, cfg, root / "saved" / "small" / "full"


def start(*args):
    """train.py in a child process with Ctrl-C handled as in a terminal (even if the test runner
    was started with SIGINT ignored, as background jobs are)."""
    import os
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **ENV),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_file(path, proc):
    """Poll until ``path`` exists (the first last.pth = epoch 1 committed); the run is then in epoch 2."""
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.005)


def assert_same_weights(a_path, b_path):
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    assert a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values()))


def test_sigkill_during_training_then_resume_equals_uninterrupted(reference):
    root, cfg, full = reference
    run = root / "saved" / "small" / "killed"
    proc = start("-c", cfg, "--run_id", "killed", "--seed", SEED)
    wait_for_file(run / "last.pth", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished: 2 more epochs were to come
    epoch = torch.load(run / "last.pth", weights_only=True)["epoch"]
    assert 1 <= epoch < 3
    resumed = run_script("train.py", "-r", run / "last.pth", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(full / "last.pth", run / "last.pth")
    assert not list(run.glob(".*.tmp*"))


def test_ctrl_c_exits_cleanly_keeps_last_epoch_and_resumes_exactly(reference):
    root, cfg, full = reference
    run = root / "saved" / "small" / "ctrl_c"
    proc = start("-c", cfg, "--run_id", "ctrl_c", "--seed", SEED)
    wait_for_file(run / "last.pth", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err, err
    epoch = torch.load(run / "last.pth", weights_only=True)["epoch"]
    assert f"holds epoch {epoch}" in lines[0] and str(run / "last.pth") in lines[0]
    resumed = run_script("train.py", "-r", run / "last.pth", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(full / "last.pth", run / "last.pth")


def test_diverging_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(reference):
    """One good epoch (the reference's epoch-1 checkpoint), then resume with lr 1e30."""
    root, _, full = reference
    run = root / "diverge"
    run.mkdir()
    shutil.copy(full / "checkpoint-epoch1.pth", run / "last.pth")
    before = (run / "last.pth").read_bytes()
    proc = run_script("train.py", "-r", run / "last.pth", "--lr", "1e30", env=ENV)
    line = one_line_error(proc.returncode, proc.stderr, "non-finite", "epoch 2, step", "(epoch 1) is kept")
    assert "lr 0.1 -> 1e+30" in proc.stdout  # the new lr was applied, not silently replaced by the checkpoint's
    assert (run / "last.pth").read_bytes() == before, line
    assert not (run / "model_best.pth").exists() and not list(run.glob("checkpoint-epoch*.pth"))
