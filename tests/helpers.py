"""Shared test helpers: small generated datasets in the real formats, and running the scripts."""
import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_cifar100(root, train_per_class=10, test_per_class=5, num_classes=100, seed=0):
    """A small folder in the standard ``cifar-100-python`` pickle layout (random images)."""
    rng = np.random.RandomState(seed)
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(labels)
        data = rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "filenames": []}, f)
    return Path(root)


def write_npz(path, per_class=30, test_per_class=8, classes=10, seed=0):
    """Images whose colour says the class (learnable in one epoch), as the dataset example reads them."""
    rng = np.random.default_rng(seed)

    def images(n):
        y = np.repeat(np.arange(classes), n)
        x = rng.integers(0, 60, (len(y), 32, 32, 3)).astype(np.uint8)
        x[..., 0] += (y * 19).astype(np.uint8)[:, None, None]
        return x, y

    train_x, train_y = images(per_class)
    test_x, test_y = images(test_per_class)
    np.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    return path


def example_config(npz, save_dir):
    """The config of the worked examples of docs/extending.md (tests/extending/) on ``write_npz`` data."""
    return {
        "name": "extending", "seed": 1,
        "arch": {"type": "tests.extending.tiny_cnn.TinyCNNModel", "args": {"num_classes": 10, "num_experts": 3}},
        "data_loader": {"type": "tests.extending.npz_lt.NpzLTDataModule",
                        "args": {"data_dir": str(npz), "imb_factor": 0.1, "img_max": 30, "batch_size": 32}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}},
        "loss": {"type": "tests.extending.focal_loss.FocalLoss", "args": {"gamma": 2.0}},
        "trainer": {"epochs": 2, "save_dir": str(save_dir), "save_period": 0, "monitor": "max val_accuracy",
                    "tensorboard": False},
    }


def write_config(path, config):
    Path(path).write_text(json.dumps(config, indent=2))
    return Path(path)


def small_cifar_config(data_dir, save_dir, epochs=1, num_experts=3, loss="DiverseExpertLoss"):
    """The published CIFAR-100 recipe shrunk to seconds: 10 images at the head class, 1 epoch."""
    config = json.loads((ROOT / "configs" / "config_cifar100_ir100_tade.json").read_text())
    config["name"] = "small"
    config["arch"]["args"]["num_experts"] = num_experts
    config["data_loader"]["args"].update(data_dir=str(data_dir), img_max=10, imb_factor=0.1, batch_size=32,
                                         num_workers=0)
    config["loss"] = {"type": loss, "args": {"tau": 2} if loss == "DiverseExpertLoss" else {}}
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), save_period=1, tensorboard=False)
    return config


def run_script(script, *args, cwd=None, timeout=600, env=None):
    """Run one of the entry points in a fresh interpreter; returns CompletedProcess (text)."""
    # One intra-op thread unless asked otherwise: the tests' runs are tiny, and on a shared machine
    # several threads per process only compete with each other.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def code_and_stderr(proc):
    """(exit code, stderr) of a finished script, the form ``one_line_error`` takes."""
    return proc.returncode, proc.stderr


def small_data_sets(data_dir):
    """train.py --set options that shrink a CIFAR-100 recipe to a generated folder (see small_cifar_config)."""
    return [f"data_loader.args.data_dir={data_dir}", "data_loader.args.img_max=10", "data_loader.args.imb_factor=0.1",
            "data_loader.args.batch_size=32", "data_loader.args.num_workers=0", "trainer.tensorboard=false"]


def tiny_cifar_config(data_dir, save_dir, epochs=1):
    """``small_cifar_config`` shrunk further (101 training images, 4 steps an epoch): for tests that
    train several times, e.g. to kill and resume a run. Use with ``write_cifar100(train_per_class=2,
    test_per_class=1)``."""
    config = small_cifar_config(data_dir, save_dir, epochs=epochs)
    config["data_loader"]["args"].update(img_max=2, imb_factor=0.5)
    return config


def snapshot(folder):
    """Every path under ``folder`` with size, mtime and content hash: equal snapshots mean nothing
    was created, changed or removed."""
    import hashlib
    state = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            state[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        else:
            state[str(p)] = "dir"
    return state


_ENTRY_MODULES = {}


def entry_module(script):
    """Load an entry point by its file (``test.py`` must not resolve to the standard library's
    ``test`` package)."""
    import importlib.util
    if script not in _ENTRY_MODULES:
        spec = importlib.util.spec_from_file_location(f"_entry_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ENTRY_MODULES[script] = module
    return _ENTRY_MODULES[script]


def call_entry(script, argv):
    """Run an entry point's ``main(argv)`` in this process with one intra-op thread (the tests' runs are
    tiny; several threads on a shared machine only compete) and the script's log handlers closed
    after it; returns the exit code. ``cli_entry`` turns errors into SystemExit like a real run."""
    import logging

    import torch
    module = entry_module(script)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = module.main([str(a) for a in argv])
        return result if isinstance(result, int) and not isinstance(result, bool) else 0  # a bench tool's code
    except SystemExit as e:
        _release_frames(e)
        return e.code
    finally:
        torch.set_num_threads(threads)
        for name in ("train", "test"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                handler.close()
                logger.removeHandler(handler)


def _release_frames(error, seen=None):
    """Clear the finished frames of ``error``'s tracebacks (its context and cause too), so that what a failed run
    held (a DataLoader's worker processes) is freed now rather than by a later cyclic garbage collection: a
    collection finalises the loader's queues before the loader, and the loader then waits 5 s for each worker
    that never hears that it may stop (10 s charged to whichever later test happened to trigger it)."""
    import traceback
    seen = set() if seen is None else seen
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        if error.__cause__ is not None:
            _release_frames(error.__cause__, seen)
        error = error.__context__


def launch_in_process(cmd, stderr):
    """``bench.records.steps.launch`` with the entry point of ``cmd`` (``python SCRIPT ARGS...``) run by
    ``call_entry`` in this process: its stdout returned, its stderr into ``stderr``. A test that patches
    it in checks what a tool does with its steps (tests/test_bench_tools.py runs a step as a process)."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(stderr):
        code = call_entry(str(cmd[1]), cmd[2:])
    return code, out.getvalue()


def run_entry(script, argv, capfd):
    """``call_entry`` with its output captured (much faster than a fresh interpreter); returns
    (exit code, stdout, stderr)."""
    capfd.readouterr()
    code = call_entry(script, argv)
    out, err = capfd.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    """Exit code 2, exactly one line on stderr, no traceback, naming every fragment (for a script run
    in a fresh interpreter: ``one_line_error(*code_and_stderr(proc), ...)``)."""
    assert code == 2, (code, err[-2000:])
    err = err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def lr_trace(config, epochs, lr=None):
    """The learning rate of each epoch under a config's ``lr_scheduler`` (one parameter, SGD)."""
    import torch
    from trainer.optim import build_lr_scheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config["optimizer"]["args"]["lr"] if lr is None
                          else lr)
    sched = build_lr_scheduler(config, opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def assert_same_state(a_path, b_path):
    """Two checkpoints hold the same training state, bit for bit: epoch, weights, SGD momentum."""
    import torch
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    assert a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert len(momentum) == len(b["optimizer"]["state"])
    assert all(torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values()))


@contextlib.contextmanager
def train_log(caplog):
    """caplog capturing the "train" logger at INFO. utils/logger.py stops that logger's propagation
    once a run has set it up, so caplog's own capture misses it after any training test in the session.
    Its handler is attached to the logger itself, with propagation off meanwhile, so each record is
    captured once whether or not a training test ran before."""
    logger = logging.getLogger("train")
    with caplog.at_level(logging.INFO, logger="train"):
        caplog.handler.setLevel(logging.INFO)
        propagate, logger.propagate = logger.propagate, False
        logger.addHandler(caplog.handler)
        try:
            yield caplog
        finally:
            logger.removeHandler(caplog.handler)
            logger.propagate = propagate
