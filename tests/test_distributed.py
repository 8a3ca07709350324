"""torchrun / DDP on CPU (gloo): two processes train like one process with the same global batch,
only rank 0 writes, checkpoints of any world size resume and evaluate in one process, and bad
input ends every rank with one line instead of a hang."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from base.base_data_module import LTDataModule
from tests.helpers import ROOT, one_line_error, run_entry, small_cifar_config, write_cifar100, write_config
from utils.errors import UserError

TIMEOUT = 240  # generous: a hang shows up as a timeout, never as a slow pass
# One thread per process, as torchrun sets by default: two-thread OpenMP regions crawl when the
# cores are busy, and the one-process reference (called in this process, on one thread) then computes
# with the same kernels.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    # 2 images per class, so the long tail below (img_max 2, IR 100) keeps 16 training images.
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=2, test_per_class=1)


def ddp_config(cifar_dir, save_dir, epochs=2):
    """16 training images, global batch 8: two steps per epoch, 4 images per rank.

    What must match for equal weights: the global batches (DistributedSampler deals one seeded
    permutation round-robin, so the two ranks' step-k batches together are one process's step-k
    batch), augmentation (off: the "pil" pipeline draws per-rank random numbers; the recipe's
    "tensor" pipeline, used here, draws them from the global order and measured 4e-6 instead of
    3e-7 after two steps with augmentation on, too close to the bound below), BatchNorm statistics
    (over the global batch: trainer.sync_batchnorm) and the gradient (DDP averages the ranks'
    mean losses, which is the mean over the global batch), and precision (float32).
    """
    config = small_cifar_config(cifar_dir, save_dir, epochs=epochs)
    config["data_loader"]["args"].update(img_max=2, imb_factor=0.01, batch_size=8, pipeline="tensor", padding=0,
                                         flip=False, rotation=0)
    # A small step keeps two float32 trajectories close: see test_two_processes_equal_one_process.
    config["optimizer"]["args"]["lr"] = 0.002
    # Full float32 in NCHW (bf16 autocast would round the two trajectories apart far beyond the tolerance).
    config["trainer"].update(sync_batchnorm=True, tensorboard=True, save_period=1, autocast=None,
                             channels_last=False, compile=False)
    return config


def torchrun(*args, nproc=2, cwd=None):
    """``torchrun --standalone --nproc_per_node=N train.py ...`` (as a user types it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py"), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD)
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def failure_lines(proc, limit=40):
    """The lines of a torchrun's output that say why a rank stopped (they may be far from its end)."""
    words = ("Error", "error", "Traceback", "terminate", "Abort", "abort", "signal", "Signal")
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    return [line for line in lines if any(w in line for w in words)][:limit]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(*args, world=2, cwd=None):
    """Start ``train.py`` once per rank with torchrun's environment contract (RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so each rank's exit code and stderr can be checked."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd or ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def epoch_lines(run):
    """{epoch: {metric: value}} from info.log."""
    out = {}
    for line in (run / "info.log").read_text().splitlines():
        m = re.search(r"epoch (\d+): (.*)", line)
        if m:
            assert int(m.group(1)) not in out, f"epoch {m.group(1)} logged twice:\n{line}"
            values = m.group(2).split()
            out[int(m.group(1))] = {k: float(v) for k, v in zip(values[::2], values[1::2])}
    return out


def relative_difference(a, b, buffers):
    """||a - b|| / ||a|| over the parameters (``buffers`` False) or the BatchNorm running statistics."""
    keys = [k for k in a if a[k].is_floating_point() and ("running_" in k) == buffers]
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys) ** 0.5
    return diff / sum(float(a[k].double().pow(2).sum()) for k in keys) ** 0.5


def assert_same_weights(a, b, tol):
    """Equal to float32 tolerance. Float32 is far from exact for this network: one rounding
    difference that moves a pre-activation across a ReLU kink changes that element's gradient
    outright, so at initialisation its float32 gradient is 1e-4..1e-3 (relative) from the float64
    one even in a single process, and two float32 trajectories drift apart step by step.
    Measured (relative difference of the parameters / of the running statistics), DDP against one
    process: after 2 steps 3e-7 / 6e-8, after 4 steps 2e-5 / 7e-6; the same DDP run without the
    global-batch BatchNorm: 3e-4 / 2e-2 after 2 steps, 9e-4 / 2e-2 after 4."""
    assert a.keys() == b.keys()
    assert not [k for k in b if k.startswith("module.")]
    for buffers in (False, True):
        diff = relative_difference(a, b, buffers)
        assert diff < tol, ("running statistics" if buffers else "parameters", diff)


class IndexData(LTDataModule):
    """A training set whose items are their own indices."""
    num_classes = 1

    def __init__(self, n, batch_size):
        super().__init__(batch_size=batch_size)
        self.train_set = list(range(n))


@pytest.mark.parametrize("world", [2, 4])
def test_rank_batches_together_are_the_one_process_batches(world):
    data = IndexData(24, batch_size=8)
    orders = []
    for epoch in (0, 1):
        single = [b.tolist() for b in data.train_loader(epoch, seed=5)]
        ranks = [[b.tolist() for b in data.train_loader(epoch, seed=5, rank=r, world_size=world)] for r in range(world)]
        assert all(len(steps) == len(single) == 3 for steps in ranks)
        for step, batch in enumerate(single):
            per_rank = [ranks[r][step] for r in range(world)]
            assert all(len(b) == 8 // world for b in per_rank)
            assert [per_rank[i % world][i // world] for i in range(8)] == batch  # dealt round-robin
        orders.append(single)
    assert orders[0] != orders[1]  # set_epoch: a new permutation every epoch


def test_batch_must_divide_by_world_size():
    with pytest.raises(UserError, match=r"batch_size 9 .* processes \(2\); use --bs 8 or --bs 10"):
        IndexData(24, batch_size=9).rank_batch_size(2)
    assert IndexData(24, batch_size=12).rank_batch_size(4) == 3


def test_two_processes_equal_one_process(cifar_dir, tmp_path, capfd):
    save = tmp_path / "saved"
    cfg = write_config(tmp_path / "c.json", ddp_config(cifar_dir, save))
    cwd_two = tmp_path / "cwd_two"
    cwd_two.mkdir()
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "one"], capfd)  # one thread, as call_entry runs it
    assert code == 0, err[-3000:]
    two = torchrun("-c", cfg, "--run_id", "two", cwd=cwd_two)
    assert two.returncode == 0, (failure_lines(two), two.stdout[-3000:], two.stderr[-3000:])
    run_one, run_two = save / "small" / "one", save / "small" / "two"

    # Same files; rank 1 wrote none (no second TensorBoard file, no second log line, no stray folder).
    assert sorted(p.name for p in save.joinpath("small").iterdir()) == ["one", "two"]
    names_one = sorted(p.name for p in run_one.iterdir())
    names_two = sorted(p.name for p in run_two.iterdir())
    def without_events(names):
        return [n for n in names if not n.startswith("events.")]
    assert without_events(names_two) == without_events(names_one)
    assert sum(n.startswith("events.") for n in names_two) == 1, names_two
    assert list(cwd_two.iterdir()) == []
    assert "x 2 processes (DDP, batch 8 = 2 x 4)" in (run_two / "info.log").read_text()

    # The first two steps (epoch 1) agree to 1e-5; epoch 2 (two more steps, with the sampler's
    # next permutation) to the looser bound that float32 drift allows.
    for epoch, tol in ((1, 1e-5), (2, 2e-4)):
        assert_same_weights(state(run_one / f"checkpoint-epoch{epoch}.pth"),
                            state(run_two / f"checkpoint-epoch{epoch}.pth"), tol)

    # Metrics are reduced over both ranks: the logged loss is the mean over all 16 images (each
    # rank alone sees 8, whose mean differs by far more than this tolerance).
    log_one, log_two = epoch_lines(run_one), epoch_lines(run_two)
    assert sorted(log_two) == [1, 2]
    for epoch in (1, 2):
        assert log_two[epoch]["loss"] == pytest.approx(log_one[epoch]["loss"], rel=1e-4)
        assert log_two[epoch]["val_accuracy"] == pytest.approx(log_one[epoch]["val_accuracy"], abs=0.011)

    # A two-process checkpoint resumes in one process: epoch 2 equals the one-process run's.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "last.pth").write_bytes((run_two / "checkpoint-epoch1.pth").read_bytes())
    code, _, err = run_entry("train.py", ["-r", resumed / "last.pth"], capfd)  # one thread, as call_entry runs it
    assert code == 0, err[-3000:]
    assert torch.load(resumed / "last.pth", weights_only=True)["epoch"] == 2
    assert_same_weights(state(run_one / "checkpoint-epoch2.pth"), state(resumed / "last.pth"), 2e-4)

    # ... and evaluates with test.py in one process.
    out = tmp_path / "eval.json"
    code, _, err = run_entry("test.py", ["-r", run_two / "last.pth", "--distributions", "uniform", "--out", out], capfd)
    assert code == 0, err[-3000:]
    assert json.loads(out.read_text())["distributions"]["uniform"]["num_images"] == 100


def test_batch_not_dividing_ends_every_rank_with_one_line(cifar_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", ddp_config(cifar_dir, tmp_path / "saved"))
    for proc in launch_ranks("-c", cfg, "--run_id", "r", "--bs", "9"):
        one_line_error(proc.returncode, proc.stderr, "batch_size 9", "divisible by the number of processes (2)",
                       "--bs 8")
    assert not (tmp_path / "saved").exists()


def test_existing_run_folder_ends_every_rank_with_one_line(cifar_dir, tmp_path):
    """Only rank 0 looks at the disk; the other rank must not wait for it forever."""
    cfg = write_config(tmp_path / "c.json", ddp_config(cifar_dir, tmp_path / "saved"))
    run = tmp_path / "saved" / "small" / "r1"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"precious")
    for proc in launch_ranks("-c", cfg, "--run_id", "r1"):
        one_line_error(proc.returncode, proc.stderr, str(run), "already exists")
    assert (run / "last.pth").read_bytes() == b"precious"


def test_sync_batchnorm_must_be_true_or_false(cifar_dir, tmp_path):
    import train
    cfg = write_config(tmp_path / "c.json", ddp_config(cifar_dir, tmp_path / "saved"))
    parser = train.build_parser()
    args = parser.parse_args(["-c", str(cfg), "--set", "trainer.sync_batchnorm=yes"])
    with pytest.raises(UserError, match="trainer.sync_batchnorm is 'yes': expected true or false"):
        train.resolve_training_config(args, parser)


def test_cpu_sync_batchnorm_keeps_parameter_names_and_values():
    """Converted models save the same state dict as plain ones (checkpoints stay interchangeable)
    and, outside a process group, compute exactly what BatchNorm computes."""
    import copy

    from model.model import ResNet32Model
    from model.sync_batchnorm import CPUSyncBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    net = ResNet32Model(num_classes=10, num_experts=2)
    synced = convert_sync_batchnorm(copy.deepcopy(net), "cpu")
    assert sum(isinstance(m, CPUSyncBatchNorm) for m in synced.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) > 0
    a, b = net.state_dict(), synced.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(net(x)["output"], synced(x)["output"])
    assert all(torch.equal(u, v) for u, v in zip(net.state_dict().values(), synced.state_dict().values()))


def test_group_process_ends_without_interpreter_shutdown(tmp_path):
    """A process that joined a torchrun group ends with os._exit, on success as on error: the
    interpreter's shutdown, where gloo's worker threads can abort the process (utils/errors._exit),
    is skipped (an atexit handler never runs), and what it would have flushed is flushed first."""
    script = tmp_path / "entry.py"
    script.write_text(
        "import atexit, logging, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from utils.errors import UserError, cli_entry, mark_group_process\n"
        "atexit.register(lambda: print('interpreter shutdown'))\n"
        "log = logging.getLogger('entry')\n"
        "log.addHandler(logging.FileHandler(sys.argv[1]))\n"
        "log.setLevel(logging.INFO)\n"
        "@cli_entry\n"
        "def main():\n"
        "    if sys.argv[2] != 'alone':\n"
        "        mark_group_process()\n"
        "    log.info('logged')\n"
        "    sys.stdout.write('unflushed')\n"
        "    if sys.argv[2] == 'error':\n"
        "        raise UserError('bad input')\n"
        "main()\n")
    for mode, code in (("alone", 0), ("success", 0), ("error", 2)):
        log_file = tmp_path / f"{mode}.log"
        proc = subprocess.run([sys.executable, str(script), str(log_file), mode], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == code, (mode, proc.stderr)
        assert log_file.read_text() == "logged\n"
        assert proc.stdout.startswith("unflushed")
        assert ("interpreter shutdown" in proc.stdout) == (mode == "alone"), (mode, proc.stdout)
    assert proc.stderr == "error: bad input\n"
