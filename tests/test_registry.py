"""The registry reads a package's modules as text and imports one only when a type it defines is
named: a broken file stops only the configs that name it. A config read from a checkpoint never
imports a module outside the project."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, one_line_error, run_entry, write_config
from trainer.build import ALLOW_IMPORT
from utils.errors import UserError
from utils.parse_config import ConfigParser
from utils.registry import is_project_module

INIT = ("from base.base_loss import LTLoss\nfrom utils.registry import export_package\n\n"
        "__all__ = export_package(__name__, globals(), LTLoss)\n")
GOOD = ("from base.base_loss import LTLoss\n\n\nclass GoodLoss(LTLoss):\n    def forward(self, outputs, target):\n"
        "        return outputs['output'].sum()\n\n\nOtherName = GoodLoss\n\n\nclass _Helper(LTLoss):\n    pass\n")
BROKEN = "from base.base_loss import LTLoss\n\n\nclass BrokenLoss(LTLoss):\n    def forward(self, outputs, target)\n"


@pytest.fixture
def lossy_package(tmp_path, monkeypatch):
    """A package ``lossy`` with one good loss module and one with a syntax error."""
    package = tmp_path / "lossy"
    package.mkdir()
    (package / "__init__.py").write_text(INIT)
    (package / "good.py").write_text(GOOD)
    (package / "broken.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "lossy" or m.startswith("lossy.")]:
        del sys.modules[name]


def test_modules_are_read_not_imported_until_a_type_is_named(lossy_package):
    import lossy
    assert lossy.__all__ == ["GoodLoss", "OtherName"]  # aliases too; private and unreadable ones not listed
    assert "lossy.good" not in sys.modules and "lossy.broken" not in sys.modules
    loss = ConfigParser({"loss": {"type": "GoodLoss", "args": {}}}, source="c.json").init_obj(
        "loss", lossy, cls_num_list=[3, 1])
    assert type(loss).__name__ == "GoodLoss" and lossy.OtherName is lossy.GoodLoss
    assert "lossy.good" in sys.modules and "lossy.broken" not in sys.modules


def test_naming_a_type_of_a_broken_module_is_one_line_naming_it(lossy_package):
    import lossy
    config = ConfigParser({"loss": {"type": "BrokenLoss", "args": {}}}, source="c.json")
    with pytest.raises(UserError, match=r"lossy.BrokenLoss: module lossy.broken cannot be imported \(line 5\)"):
        config.init_obj("loss", lossy, cls_num_list=[3, 1])
    with pytest.raises(UserError, match="'Missing' is not a known loss type; expected one of: GoodLoss, OtherName"):
        ConfigParser({"loss": {"type": "Missing", "args": {}}}, source="c.json").init_obj("loss", lossy)


# One fresh interpreter in the copy runs the scripts one after another as ``python SCRIPT ARGS`` would (runpy, the
# copy first on sys.path, each script's stderr to its own file, its log handlers closed after it): a broken file
# in the copy's package is met by every import, as a user meets it, for one interpreter start instead of three.
RUN_IN_COPY = r"""
import contextlib, json, logging, runpy, sys
copy, out, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
base = [p for p in sys.path if p not in ("", copy)]
for k, (script, *args) in enumerate(commands):
    sys.path[:] = [copy, *base]
    sys.argv = [f"{copy}/{script}", *args]
    with open(f"{out}/{k}.err", "w") as err, contextlib.redirect_stderr(err):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        for name in ("train", "test"):
            for handler in list(logging.getLogger(name).handlers):
                handler.close()
                logging.getLogger(name).removeHandler(handler)
    print("RESULT", k, code, flush=True)
"""


def test_a_broken_loss_file_does_not_break_train_and_test_scripts(tmp_path):
    """A copy of the project with a syntax error in one loss module: training with another loss and
    test.py work; a config naming the broken loss gets one line naming its module."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "saved", "data", ".cache", "runs", "results",
                                                              "__pycache__", ".pytest_cache", ".benchmarks"))
    (copy / "model" / "loss" / "zz_broken_loss.py").write_text(BROKEN)
    config = json.loads((ROOT / "configs" / "config_digits_lt_tade.json").read_text())
    config["trainer"].update(epochs=1, save_dir=str(tmp_path / "saved"), tensorboard=False)
    cfg = write_config(tmp_path / "c.json", config)
    last = tmp_path / "saved" / config["name"] / "r" / "last.pth"
    config["loss"]["type"] = "BrokenLoss"
    broken = write_config(tmp_path / "b.json", config)
    commands = [["train.py", "-c", str(cfg), "--run_id", "r"],
                ["test.py", "-r", str(last), "--distributions", "uniform"],
                ["train.py", "-c", str(broken)]]
    proc = subprocess.run([sys.executable, "-c", RUN_IN_COPY, str(copy), str(tmp_path), json.dumps(commands)],
                          cwd=copy, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    codes = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    errs = [(tmp_path / f"{k}.err").read_text() if (tmp_path / f"{k}.err").is_file() else "" for k in range(3)]
    assert codes[:2] == ["0", "0"], (codes, proc.stderr[-2000:], [e[-2000:] for e in errs])
    assert last.is_file()
    assert len(codes) == 3, proc.stderr[-3000:]
    one_line_error(int(codes[2]), errs[2], "BrokenLoss", "model.loss.zz_broken_loss cannot be imported", "SyntaxError")


def test_project_modules_are_told_apart_without_importing():
    assert is_project_module("tests.extending.focal_loss.FocalLoss")
    assert is_project_module("data_loader.cifar_lt.CIFAR100LTDataModule")
    assert not is_project_module("antigravity.X") and "antigravity" not in sys.modules
    assert not is_project_module("torch.optim.SGD") and not is_project_module("os.system")
    assert not is_project_module("no_such_module_anywhere.X") and not is_project_module("..X")


@pytest.fixture
def outside_module(tmp_path, monkeypatch):
    """A module outside the project that leaves a file behind when imported, on ``sys.path`` (where
    PYTHONPATH would put it) for the scripts this test runs in its process; the marker file."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "imported.txt"
    (site / "tade_side_effect.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(ALLOW_IMPORT, raising=False)
    yield marker
    sys.modules.pop("tade_side_effect", None)  # the next test's import runs the module again


def checkpoint_naming(tmp_path, key, type_name):
    config = json.loads((ROOT / "configs" / "config_digits_lt_tade.json").read_text())
    node = config
    for part in key.split(".")[:-1]:
        node = node[part]
    node["type"] = type_name
    path = tmp_path / "last.pth"
    torch.save({"state_dict": {}, "config": config, "epoch": 1}, path)
    return path, config


@pytest.mark.parametrize("key", ["data_loader.type", "arch.type", "optimizer.type"])
def test_a_checkpoint_naming_an_outside_module_imports_nothing(tmp_path, outside_module, key, capfd):
    ckpt, _ = checkpoint_naming(tmp_path, key, "tade_side_effect.Anything")
    for script in ("test.py", "train.py"):
        code, _, err = run_entry(script, ["-r", ckpt], capfd)
        line = one_line_error(code, err, str(ckpt), key, "tade_side_effect.Anything", "outside this project", "-c")
        assert not outside_module.exists(), (script, line)


def test_an_outside_module_from_a_config_given_with_c_is_imported_and_named(tmp_path, outside_module, capfd):
    ckpt, config = checkpoint_naming(tmp_path, "data_loader.type", "tade_side_effect.Anything")
    cfg = write_config(tmp_path / "mine.json", config)
    code, out, err = run_entry("test.py", ["-r", ckpt, "-c", cfg], capfd)
    assert outside_module.exists()  # the user's own config: allowed, and said so
    assert "data_loader.type 'tade_side_effect.Anything' is imported from outside this project" in out
    assert code == 2 and "has no class Anything" in err.strip().splitlines()[-1]


def test_a_set_override_replaces_the_checkpoints_outside_type(tmp_path, outside_module, capfd):
    ckpt, _ = checkpoint_naming(tmp_path, "data_loader.type", "tade_side_effect.Anything")
    _, out, err = run_entry("train.py", ["-r", ckpt, "--set", "data_loader.type=DigitsLTDataModule"], capfd)
    assert not outside_module.exists() and "outside this project" not in out + err


def test_an_outside_package_is_imported_from_a_checkpoint_only_when_named_by_the_user(tmp_path, outside_module,
                                                                                      monkeypatch, capfd):
    ckpt, _ = checkpoint_naming(tmp_path, "data_loader.type", "tade_side_effect.Anything")
    tt = write_config(tmp_path / "tt.json", {"test_time": {"type": "ExpertAverage", "args": {}}})

    def run(allow):
        if allow is not None:
            monkeypatch.setenv(ALLOW_IMPORT, allow)
        return run_entry("test_train.py", ["-c", tt, "-r", ckpt], capfd)

    code, _, err = run(None)
    one_line_error(code, err, "outside this project", "TADE_ALLOW_IMPORT=tade_side_effect")
    assert not outside_module.exists()
    code, _, err = run("something_else")
    one_line_error(code, err, "outside this project")
    assert not outside_module.exists()
    code, out, err = run("tade_side_effect")
    assert outside_module.exists() and "'tade_side_effect.Anything' is imported from outside this project" in out
    assert code == 2 and "has no class Anything" in err
