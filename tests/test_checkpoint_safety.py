"""Checkpoints: atomic writes, the reference release's format, code-bearing files refused, exact
resume state (optimizer, schedule, gradient scaler), Ctrl-C held back during a save."""
import io
import os
import pathlib
import pickle
import signal
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from base.base_trainer import BaseTrainer
from model import ResNet32Model
from utils.checkpoint import (CheckpointWriteError, InertPlaceholder, extract_state_dict, load_checkpoint,
                              load_model_weights, remove_stale_temp_files, save_checkpoint)
from utils.errors import UserError, sigint_deferred
from utils.parse_config import ConfigParser
from utils.runtime import Runtime
from utils.safe_pickle import load_data_pickle


def temp_files(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir() if ".tmp" in p.name)


# -- atomic writes --------------------------------------------------------------------------------
def _fail_replace(real):
    def replace(src, dst):
        raise OSError(28, "No space left on device (simulated)")
    return replace


def _fail_save(real):
    def save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")  # a torn write, then the crash
        raise KeyboardInterrupt
    return save


@pytest.mark.parametrize("target,make,error", [("os.replace", _fail_replace, CheckpointWriteError),  # an OSError too
                                               ("torch.save", _fail_save, KeyboardInterrupt)])
def test_failure_between_write_and_rename_keeps_previous_checkpoint(tmp_path, monkeypatch, target, make, error):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    module, name = target.rsplit(".", 1)
    owner = os if module == "os" else torch
    monkeypatch.setattr(owner, name, make(getattr(owner, name)))
    with pytest.raises(error):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path, copies=[tmp_path / "model_best.pth"])
    monkeypatch.undo()
    assert path.read_bytes() == before
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "model_best.pth").exists()


def test_copies_are_committed_before_the_main_file(tmp_path, monkeypatch):
    """last.pth is the commit point: if the process dies after the copies, last.pth is still the
    previous epoch (resuming redoes the epoch and rewrites the copies identically)."""
    path, best = tmp_path / "last.pth", tmp_path / "model_best.pth"
    save_checkpoint({"epoch": 1}, path)
    order = []
    real = os.replace

    def replace(src, dst):
        order.append(pathlib.Path(dst).name)
        if pathlib.Path(dst) == path:
            raise OSError(5, "I/O error (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path, copies=[best])
    monkeypatch.undo()
    assert order == ["model_best.pth", "last.pth"]
    assert load_checkpoint(path)["epoch"] == 1 and load_checkpoint(best)["epoch"] == 2
    assert temp_files(tmp_path) == []


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    stale = tmp_path / ".last.pth.tmp999999999"
    stale.write_bytes(b"torn")
    own = tmp_path / f".last.pth.tmp{os.getpid()}"
    own.write_bytes(b"in progress")
    (tmp_path / "last.pth").write_bytes(b"kept")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and own.exists() and (tmp_path / "last.pth").exists()


# -- the reference release's checkpoints ----------------------------------------------------------
def release_checkpoint(path, model, legacy=False):
    """A checkpoint as the release writes it: ``config`` is a pickled ``parse_config.ConfigParser``
    (a class our code base does not have) holding an OrderedDict and pathlib paths; monitor_best a
    numpy float; weights saved from DataParallel (``module.`` prefix)."""
    fake = types.ModuleType("parse_config")

    class ConfigParser:
        def __init__(self):
            self._config = OrderedDict(name="CIFAR100_LT_TADE", arch=OrderedDict(type="ResNet32Model"))
            self.resume = None
            self._save_dir = pathlib.Path("saved/models/CIFAR100_LT_TADE/0101_000000")
            self._log_dir = pathlib.PosixPath("/abs/saved/log")
            self.log_levels = {0: 30, 1: 20, 2: 10}

    ConfigParser.__module__, ConfigParser.__qualname__ = "parse_config", "ConfigParser"
    fake.ConfigParser = ConfigParser
    sys.modules["parse_config"] = fake
    try:
        torch.save({"arch": "ResNet32Model", "epoch": 200,
                    "state_dict": OrderedDict(("module." + k, v) for k, v in model.state_dict().items()),
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
                    "monitor_best": np.float64(0.4983), "criterion": {"prior": np.arange(3, dtype=np.float32)},
                    "config": ConfigParser()}, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules["parse_config"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_release_checkpoint_loads_without_its_classes(tmp_path, legacy):
    torch.manual_seed(0)
    model = ResNet32Model(num_classes=10, num_experts=3, reduce_dimension=True)
    path = tmp_path / "release.pth"
    release_checkpoint(path, model, legacy=legacy)
    with pytest.raises(pickle.UnpicklingError):  # why a plain weights_only load is not enough
        torch.load(path, weights_only=True)

    ckpt = load_checkpoint(path)
    assert "parse_config" not in sys.modules  # nothing named in the file was imported
    config = ckpt["config"]
    assert isinstance(config, InertPlaceholder) and config.qualified_name == "parse_config.ConfigParser"
    assert config.state["_config"]["name"] == "CIFAR100_LT_TADE"
    assert config.state["_log_dir"] == pathlib.PurePosixPath("/abs/saved/log")
    assert ckpt["monitor_best"] == np.float64(0.4983) and ckpt["criterion"]["prior"].tolist() == [0, 1, 2]
    fresh = ResNet32Model(num_classes=10, num_experts=3, reduce_dimension=True)
    load_model_weights(fresh, extract_state_dict(ckpt, path), path)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


# -- code-bearing files ----------------------------------------------------------------------------
def _payloads(marker):
    import builtins
    import subprocess
    command = f"touch {marker}"
    return {
        "os.system": (os.system, (command,)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
        "importlib.import_module": (__import__("importlib").import_module, ("antigravity",)),
    }


def _evil(reduce_value):
    class Evil:
        def __reduce__(self):
            return reduce_value
    return Evil()


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen",
                                     "importlib.import_module"])
def test_code_bearing_checkpoint_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "config": _evil(_payloads(marker)[payload])}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "refused" in message and str(path) in message
    assert payload.split(".")[1] in message  # names what it found (posix.system for os.system)
    assert not marker.exists()


def test_payload_inside_a_numpy_object_array_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    array = np.empty(1, dtype=object)
    array[0] = _evil((os.system, (f"touch {marker}",)))
    torch.save({"extra": array}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unvettable_pickle_protocol_is_refused(tmp_path):
    """Protocol 4 (STACK_GLOBAL) cannot be scanned statically: refused, and nothing runs."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"x": _evil((os.system, (f"touch {marker}",)))}, path, pickle_protocol=4)
    with pytest.raises(UserError, match="cannot be checked for code|refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_class_in_an_importable_module_is_never_called(tmp_path):
    """A class-like name becomes a placeholder even when its module is importable and its real
    constructor or __setstate__ would run code: torch's unpickler only calls what we hand it."""
    marker = tmp_path / "MARKER"
    mod = types.ModuleType("innocent_settings")

    class Settings:
        def __new__(cls, *args):
            marker.touch()
            return object.__new__(cls)

        def __init__(self, *args):
            marker.touch()

        def __setstate__(self, state):
            marker.touch()

    Settings.__module__, Settings.__qualname__ = "innocent_settings", "Settings"
    mod.Settings = Settings
    sys.modules["innocent_settings"] = mod
    try:
        path = tmp_path / "ckpt.pth"
        torch.save({"by_reduce": _evil((Settings, ("x",), {"a": 1})), "w": torch.ones(1)}, path)
        marker.unlink(missing_ok=True)
        ckpt = load_checkpoint(path)  # the module stays importable while loading
    finally:
        del sys.modules["innocent_settings"]
    assert isinstance(ckpt["by_reduce"], InertPlaceholder)
    assert ckpt["by_reduce"].args == ("x",) and ckpt["by_reduce"].state == {"a": 1}
    assert not marker.exists()


@pytest.mark.parametrize("content,fragment", [(b"", "truncated"), (b"{\"json\": true}", "truncated"),
                                              (pickle.dumps({"a": 1}), "truncated")],
                         ids=["empty", "json", "plain-pickle"])
def test_foreign_file_is_a_one_line_error(tmp_path, content, fragment):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "()" not in str(info.value)  # a reason is always given


def test_cifar_batch_with_a_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "MARKER"
    data = pickle.dumps({"data": _evil((os.system, (f"touch {marker}",))), "fine_labels": []})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_data_pickle(io.BytesIO(data))
    assert not marker.exists()
    for protocol in (2, 4, 5):  # real CIFAR batches (numpy arrays, bytes) still load
        ok = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "fine_labels": [1, 2], "b": b"\xff"}
        out = load_data_pickle(io.BytesIO(pickle.dumps(ok, protocol=protocol)))
        assert out["data"].tolist() == [[0, 1, 2], [3, 4, 5]] and out["b"] == b"\xff"


# -- what a resume restores ------------------------------------------------------------------------
class _Trainer(BaseTrainer):
    def _train_epoch(self, epoch):
        return {}

    def _valid_epoch(self, epoch):
        return {}


def _trainer(run_dir, lr=0.1, resume=None, scale=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    from trainer.lr_scheduler import WarmupStepLR
    scheduler = WarmupStepLR(optimizer, step1=3, step2=4, gamma=0.1, warmup_epoch=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    if scale is not None:
        scaler.scale(torch.ones(()))  # initialise, then move the scale as overflowing steps would
        scaler.update(new_scale=scale)
    config = ConfigParser({"trainer": {"epochs": 5, "monitor": "off", "tensorboard": False},
                           "optimizer": {"args": {"lr": lr}}}, source="test")
    trainer = _Trainer(model, None, optimizer, scheduler, config, Runtime(device=torch.device("cpu")), scaler=scaler,
                       run_dir=run_dir)
    if resume is not None:
        trainer.resume(resume)
    return trainer


def test_resume_restores_optimizer_schedule_scaler_and_epoch(tmp_path):
    a = _trainer(tmp_path, scale=512.0)
    a.model(torch.ones(2, 4)).sum().backward()
    a.optimizer.step()
    a.lr_scheduler.step()
    a._save_epoch(0, improved=False)
    b = _trainer(tmp_path, resume=tmp_path / "last.pth")
    assert b.start_epoch == 1 and b.last_saved_epoch == 1
    assert b.scaler.get_scale() == 512.0
    assert b.lr_scheduler.state_dict() == a.lr_scheduler.state_dict()
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"] == 0.1
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(a.optimizer.state[p]["momentum_buffer"], b.optimizer.state[q]["momentum_buffer"])


def test_resume_with_a_new_lr_rescales_the_schedule(tmp_path):
    """optimizer.load_state_dict would silently restore the old lr: the config given on resume wins,
    and the schedule keeps its position (epoch 1 of a 2-epoch warmup: lr = base * 2/2)."""
    a = _trainer(tmp_path)
    a.optimizer.step()
    a.lr_scheduler.step()
    a._save_epoch(0, improved=False)
    b = _trainer(tmp_path, lr=0.5, resume=tmp_path / "last.pth")
    assert b.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    assert b.lr_scheduler.base_lrs == [0.5]
    b.lr_scheduler.step()
    b.lr_scheduler.step()  # epoch 3 >= step1: x0.1
    assert b.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.fixture
def sigint_handler():
    """Install a SIGINT handler for one test and restore the inherited one after it: a test runner
    started in the background from a non-interactive shell inherits SIGINT as ignored."""
    before = signal.getsignal(signal.SIGINT)

    def install(handler):
        signal.signal(signal.SIGINT, handler)

    yield install
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_a_save_waits_for_the_save(tmp_path, sigint_handler):
    sigint_handler(signal.default_int_handler)  # as in an interactive Python process
    path = tmp_path / "last.pth"
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            save_checkpoint({"epoch": 3}, path)  # still runs to the end
    assert load_checkpoint(path)["epoch"] == 3
    assert temp_files(tmp_path) == []


def test_ignored_sigint_stays_ignored_across_a_save(tmp_path, sigint_handler):
    sigint_handler(signal.SIG_IGN)  # a background job: Ctrl-C is not meant for it
    path = tmp_path / "last.pth"
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        save_checkpoint({"epoch": 4}, path)
    assert load_checkpoint(path)["epoch"] == 4
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_saved_tensors_are_detached_cpu_copies_with_the_state_dict_metadata(tmp_path):
    from utils.checkpoint import save_checkpoint, to_cpu
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = {"state_dict": net.state_dict(keep_vars=True), "nested": [(torch.ones(2, requires_grad=True), 3)]}
    out = to_cpu(state)
    assert out["state_dict"]._metadata == state["state_dict"]._metadata
    assert isinstance(out["nested"][0], tuple) and out["nested"][0][1] == 3
    assert not any(t.requires_grad for t in out["state_dict"].values()) and not out["nested"][0][0].requires_grad
    save_checkpoint({"state_dict": net.state_dict()}, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)["state_dict"]
    assert all(t.device.type == "cpu" for t in loaded.values())
    torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).load_state_dict(loaded)
