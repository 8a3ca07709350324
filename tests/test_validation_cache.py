"""The validation split's logits are computed once per checkpoint and cached beside it; a cache of
another checkpoint or split, a torn or edited one, is ignored with a notice and recomputed."""
import shutil

import numpy as np
import pytest
import torch

from trainer import validation_cache as vc
from trainer.build import build_model, load_trained
from trainer.forward import collect_expert_logits
from utils import safe_write
from utils.checkpoint import save_checkpoint
from utils.parse_config import ConfigParser, read_json
from tests.helpers import ROOT


def _write_checkpoint(path, seed=0, validation=None):
    config = read_json(ROOT / "configs" / "config_digits_lt_tade.json")
    config["arch"]["args"]["num_experts"] = 2
    config["data_loader"]["args"]["validation"] = validation
    torch.manual_seed(seed)
    net = build_model(ConfigParser(config, "test config"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"arch": config["arch"]["type"], "epoch": 1, "state_dict": net.state_dict(), "config": config},
                    path)
    return path


class Counting:
    """A compute() that counts the validation passes it makes."""

    def __init__(self, trained):
        self.trained, self.calls = trained, 0

    def __call__(self):
        self.calls += 1
        t = self.trained
        return collect_expert_logits(t.net, t.data.validation_loader(), "cpu", t.perf, desc="validation")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vcache")
    return _write_checkpoint(folder / "model.pth")


@pytest.fixture
def trained(run, tmp_path):
    path = shutil.copy(run, tmp_path / "model.pth")
    return load_trained(path)


def _cache_files(folder):
    return sorted(p.name for p in folder.glob("*.validation-*.npz"))


def test_computed_once_then_read_bit_for_bit(trained, capsys):
    count = Counting(trained)
    first = vc.validation_logits(trained, compute=count)
    again = vc.validation_logits(load_trained(trained.path), compute=count)  # a later process: a fresh load
    assert count.calls == 1
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (len(trained.data.validation_set), 2, 10) and first[0].dtype == torch.float32
    assert torch.equal(first[1], torch.as_tensor(trained.data.validation_set.targets))
    assert _cache_files(trained.path.parent) == [vc.cache_path(trained.path, vc.split_key(trained.data)).name]
    assert "note" not in capsys.readouterr().out  # a valid cache is used silently
    assert not list(trained.path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_default_compute_is_one_network_pass(trained):
    logits, targets = vc.validation_logits(trained)
    expect = collect_expert_logits(trained.net, trained.data.validation_loader(), "cpu", trained.perf)
    assert torch.equal(logits, expect[0]) and torch.equal(targets, expect[1])


def _expect_recompute(trained, capsys, reason):
    count = Counting(trained)
    logits, _ = vc.validation_logits(trained, compute=count)
    out = capsys.readouterr().out.strip().splitlines()
    assert count.calls == 1, "an invalid cache must not be used"
    assert len(out) == 1 and reason in out[0], out
    count2 = Counting(trained)
    again, _ = vc.validation_logits(trained, compute=count2)  # rewritten: valid now
    assert count2.calls == 0 and torch.equal(logits, again)
    return logits


def test_a_truncated_cache_is_recomputed(trained, capsys):
    vc.validation_logits(trained)
    path = vc.cache_path(trained.path, vc.split_key(trained.data))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_recompute(trained, capsys, "unreadable")


def test_a_cache_of_another_checkpoint_is_recomputed(trained, tmp_path, capsys):
    vc.validation_logits(trained)
    path = vc.cache_path(trained.path, vc.split_key(trained.data))
    other = _write_checkpoint(tmp_path / "other" / "model.pth", seed=1)
    foreign = load_trained(other)
    shutil.copy(path, vc.cache_path(other, vc.split_key(foreign.data)))  # copied beside another checkpoint
    logits = _expect_recompute(foreign, capsys, "another checkpoint")
    assert not torch.equal(logits, vc.validation_logits(trained)[0])


def test_a_retrained_checkpoint_makes_its_cache_stale(trained, capsys):
    vc.validation_logits(trained)
    _write_checkpoint(trained.path, seed=2)  # the same file, new weights
    _expect_recompute(load_trained(trained.path), capsys, "another checkpoint")


def test_a_cache_of_another_split_is_recomputed(trained, capsys):
    small = load_trained(trained.path, overrides=[("data_loader.args.validation", 3, "test")])  # same checkpoint
    assert vc.split_key(small.data) != vc.split_key(trained.data)
    big_path = vc.cache_path(trained.path, vc.split_key(trained.data))
    small_path = vc.cache_path(small.path, vc.split_key(small.data))
    assert big_path != small_path  # each split its own file: configs with different sizes do not thrash
    big_logits, _ = vc.validation_logits(trained)
    shutil.copy(big_path, small_path)  # the other split's file under this split's name
    logits = _expect_recompute(small, capsys, "another validation split")
    assert len(logits) == len(small.data.validation_set) < len(big_logits)


def test_edited_arrays_are_refused(trained, capsys):
    logits, targets = vc.validation_logits(trained)
    path = vc.cache_path(trained.path, vc.split_key(trained.data))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["logits"] = arrays["logits"] + 1  # same key, other numbers
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert torch.equal(_expect_recompute(trained, capsys, "digest"), logits)


def test_an_unwritable_folder_costs_only_the_cache(trained, monkeypatch, capsys):
    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safe_write.os, "replace", refuse)  # the cache is written by the write rule
    count = Counting(trained)
    logits, _ = vc.validation_logits(trained, compute=count)
    out = capsys.readouterr().out.strip().splitlines()
    assert count.calls == 1 and len(out) == 1 and "could not be written" in out[0]
    assert _cache_files(trained.path.parent) == [] and not list(trained.path.parent.glob(".*tmp*"))


def test_label_shift_runs_share_one_validation_pass(trained, monkeypatch):
    """End to end in process: two runs of a label-shift method, the second from a fresh load of the
    checkpoint (as a later process), make one validation pass between them."""
    import trainer.test_time as methods
    from trainer.adaptation import run_method

    passes = []
    real = vc.validation_logits

    def counting(t, device="cpu", compute=None):
        def count():
            passes.append(1)
            return collect_expert_logits(t.net, t.data.validation_loader(), device, t.perf)
        return real(t, device, compute=count)

    monkeypatch.setattr("trainer.adaptation.validation_logits", counting)
    clean, targets = collect_expert_logits(trained.net, trained.data.test_loader(), "cpu", trained.perf)
    sets = {"uniform": np.arange(len(targets))}
    method = methods.EMPrior(calibration="validation", source_prior="uniform")
    first = run_method(method, trained, clean, targets, sets, "cpu")
    second = run_method(methods.EMPrior(calibration="validation", source_prior="uniform"), load_trained(trained.path),
                        clean, targets, sets, "cpu")
    assert len(passes) == 1
    assert first["uniform"]["top1"] == second["uniform"]["top1"] and first["uniform"]["prior"] == second["uniform"][
        "prior"]
