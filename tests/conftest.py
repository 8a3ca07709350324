"""The suite's shared fixtures: each small trained checkpoint the tests need, trained once per session
(in this process, but for the reference run that fresh interpreters are compared with). Tests must not change them;
a test that writes beside a checkpoint copies it into its own ``tmp_path`` first.

- ``tiny_checkpoint``: 1 epoch of the tiny CIFAR-100 recipe (101 images, 3 experts), for the
  catalogue of bad inputs and the run-folder rules.
- ``tiny_reference``: the same recipe for 3 epochs at seed 5, one checkpoint per epoch: the
  uninterrupted run every interrupted-and-resumed run must equal bit for bit.
- ``small_run``: 1 epoch of the small CIFAR-100 recipe (10 images at the head class, 4 test
  images per class), for evaluation and test-time aggregation.
- ``digits_record``: (results folder, work folder, record folder) of ``bench/records/record.py`` on 2
  epochs of the shipped Digits-LT TADE config at seed 3 (``--skip_views``), with its steps (train.py,
  test.py, bench/studies/test_time_methods.py) called in this process (tests/test_bench_tools.py runs
  a step as a process).
- ``digits_checkpoint``: the last.pth that record trained, for the test protocols.
"""
from types import SimpleNamespace

import pytest

from bench.records import steps
from tests.helpers import (ROOT, call_entry, launch_in_process, run_script, small_cifar_config, tiny_cifar_config,
                           write_cifar100, write_config)

REFERENCE_SEED = "5"
DIGITS_RECORD = "digits_e2_s3"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the whole session, as the scripts' in-process runs (``call_entry``) and the
    fresh interpreters (``run_script``) already use: the tests' tensors are tiny, and on a busy 2-core machine
    their reductions with two threads crawl (a SafePrior fit measured 2 s alone, 180 s beside another process)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(argv):
    code = call_entry("train.py", [*argv, "-d", "cpu"])
    assert code == 0, f"train.py {argv} exited with {code}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The generated CIFAR-100 folder of the tiny recipe (2 training, 1 test image per class)."""
    return write_cifar100(tmp_path_factory.mktemp("tiny_data"), train_per_class=2, test_per_class=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("tiny_run")
    _train(["-c", write_config(root / "c.json", tiny_cifar_config(tiny_data, root / "saved")), "--run_id", "one"])
    return root / "saved" / "small" / "one" / "last.pth"


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, tiny_data):
    """(root, config path, seed, run folder) of the uninterrupted 3-epoch run, trained in a fresh
    interpreter as the runs compared with it are (this process's state after other tests plays no part)."""
    root = tmp_path_factory.mktemp("tiny_reference")
    cfg = write_config(root / "c.json", tiny_cifar_config(tiny_data, root / "saved", epochs=3))
    proc = run_script("train.py", "-c", cfg, "--run_id", "full", "--seed", REFERENCE_SEED, "-d", "cpu",
                      env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(root=root, config=cfg, seed=REFERENCE_SEED, run=root / "saved" / "small" / "full")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """(root with c.json, data folder, checkpoint) of 1 epoch of the small recipe at seed 2."""
    root = tmp_path_factory.mktemp("small_run")
    data_dir = write_cifar100(root / "data", train_per_class=10, test_per_class=4)
    cfg = write_config(root / "c.json", small_cifar_config(data_dir, root / "saved", epochs=1))
    _train(["-c", cfg, "--run_id", "r", "--seed", "2"])
    return root, data_dir, root / "saved" / "small" / "r" / "last.pth"


@pytest.fixture(scope="session")
def digits_record(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits_record")
    results, work = base / "results", base / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "launch", launch_in_process)
        code = call_entry("bench/records/record.py", [
            "-c", ROOT / "configs" / "config_digits_lt_tade.json", "--epochs", "2", "--seed", "3", "--skip_views",
            "--set", "trainer.tensorboard=false", "--work_dir", work, "--results_dir", results,
            "--name", DIGITS_RECORD])
    log = work / DIGITS_RECORD / "record.log"
    assert code == 0, log.read_text()[-5000:] if log.is_file() else code
    return results, work, results / DIGITS_RECORD


@pytest.fixture(scope="session")
def digits_checkpoint(digits_record):
    _, work, _ = digits_record
    return work / DIGITS_RECORD / "train" / "last.pth"
