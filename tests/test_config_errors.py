"""The catalogue of bad inputs: each exits with code 2 and one line on stderr that names the file,
key or path and what was expected; no traceback; nothing that existed before is changed and
nothing is left behind.

One row of ``CATALOGUE`` per case: (script, case id, setup). ``setup(w)`` gets a :class:`Workspace`
(a fresh folder with a small CIFAR-100 copy, a config and, on request, a trained checkpoint) and
returns (argv, fragments the error line must contain). Adding test.py rows is one line each, e.g.
``("test.py", "missing_checkpoint", lambda w: (["-r", w.path("nope.pth")], ["nope.pth", "does not exist"]))``.
Rows run in-process (fast); ``test_catalogue_in_a_real_process`` runs a few through a fresh interpreter.

List-file errors (too few fields, non-integer label, label out of range, missing or unreadable
image) are catalogued with the list datasets in ``tests/test_list_datasets.py`` and
``tests/test_list_train_e2e.py``.
"""
import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from tests.helpers import (ROOT, example_config, one_line_error, run_entry, run_script, snapshot, tiny_cifar_config,
                           write_cifar100, write_config, write_npz)
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.parse_config import ConfigParser
from utils.run_lock import RunLock


class Workspace:
    def __init__(self, root, trained_checkpoint):
        self.root = root
        self.data = write_cifar100(root / "cifar", train_per_class=2, test_per_class=1)
        self.config = tiny_cifar_config(self.data, root / "saved")
        self._trained = trained_checkpoint
        self.locks = []

    def path(self, name):
        return self.root / name

    def write(self, name, config=None):
        """The config (or a modified copy) as a JSON file."""
        return write_config(self.root / name, self.config if config is None else config)

    def modified(self, key_path, value, name="c.json"):
        config = json.loads(json.dumps(self.config))
        node = config
        *parents, last = key_path.split(".")
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return self.write(name, config)

    def run_folder(self, name="run"):
        """A run folder holding a trained checkpoint of this framework (last.pth)."""
        folder = self.root / name
        folder.mkdir()
        shutil.copy(self._trained, folder / "last.pth")
        return folder

    def one_test_image(self):
        """A CIFAR-100 folder whose test set holds a single image (the training set as before)."""
        folder = self.root / "one" / "cifar-100-python"
        folder.mkdir(parents=True)
        shutil.copy(self.data / "cifar-100-python" / "train", folder / "train")
        with open(folder / "test", "wb") as f:
            pickle.dump({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "filenames": []}, f)
        return folder.parent

    def cifar_file(self, content):
        (self.data / "cifar-100-python" / "train").write_bytes(content)
        return self.data / "cifar-100-python" / "train"


_DELETE = object()
TEST_TIME_CONFIG = ROOT / "configs" / "test_time_cifar100_tade.json"


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncated_checkpoint(w):
    run = w.run_folder()
    data = (run / "last.pth").read_bytes()
    (run / "last.pth").write_bytes(data[: len(data) // 2])
    return ["-r", run / "last.pth"], [run / "last.pth", "truncated"]


def _foreign_checkpoint(w):
    run = w.run_folder()
    (run / "last.pth").write_text('{"not": "a checkpoint"}')
    return ["-r", run / "last.pth"], [run / "last.pth", "not a PyTorch checkpoint"]


def _code_checkpoint(w):
    run = w.run_folder()
    torch.save({"state_dict": {}, "config": _Payload(w.path("MARKER"))}, run / "last.pth")
    return ["-r", run / "last.pth"], [run / "last.pth", "refused", "system", "could run code"]


def _other_framework_checkpoint(w):
    run = w.run_folder()
    torch.save({"conv.weight": torch.ones(1)}, run / "last.pth")
    return ["-r", run / "last.pth"], [run / "last.pth", "no config of this framework"]


def _other_architecture(w):
    run = w.run_folder()
    config = json.loads(json.dumps(w.config))
    config["arch"]["args"]["num_experts"] = 1
    config["loss"] = {"type": "CrossEntropyLoss", "args": {}}  # a loss for one expert: the weights are what differ
    return ["-r", run / "last.pth", "-c", w.write("one_expert.json", config)], \
        [run / "last.pth", "does not match the model", "unexpected"]


def _locked_run(w):
    run = w.run_folder()
    w.locks.append(RunLock(run).acquire())  # as a running train.py holds it
    return ["-r", run / "last.pth"], [run, "in use by another train.py", f"pid {os.getpid()}"]


def _rewritten_checkpoint(w, change):
    """The trained checkpoint with ``change(ckpt)`` applied, saved the normal way (checksum included)."""
    run = w.run_folder()
    ckpt = load_checkpoint(run / "last.pth")
    change(ckpt)
    save_checkpoint(ckpt, run / "last.pth")
    return run / "last.pth"


def _checkpoint_for_other_classes(w):
    path = _rewritten_checkpoint(w, lambda c: c["config"]["arch"]["args"].update(num_classes=10))
    return ["-r", path], [path, "arch.args.num_classes is 10", "CIFAR100LTDataModule has 100 classes"]


def _one_nan_weight(ckpt):
    weight = next(v for v in ckpt["state_dict"].values() if v.is_floating_point() and v.dim())
    weight[(0,) * weight.dim()] = float("nan")


def _nan_weights(w):
    path = _rewritten_checkpoint(w, _one_nan_weight)
    return ["-r", path], [path, "NaN or inf", "expected finite weights"]


def _corrupt_tensor_data(w):
    run = w.run_folder()
    with zipfile.ZipFile(run / "last.pth") as z:  # the largest tensor's bytes (stored uncompressed)
        member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray((run / "last.pth").read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len + member.file_size // 4
    data[start: start + 4096] = b"\xff" * 4096  # torch.load does not notice: it loads NaN weights
    (run / "last.pth").write_bytes(bytes(data))
    return ["-r", run / "last.pth"], [run / "last.pth", "is corrupt", "checksum"]


def _npz(w, change=None, **data_args):
    """train.py on the README's .npz dataset example, its arrays changed by ``change(arrays)``."""
    arrays = dict(np.load(write_npz(w.path("good.npz"))))
    if change is not None:
        change(arrays)
    np.savez(w.path("bad.npz"), **arrays)
    config = example_config(w.path("bad.npz"), w.path("saved"))
    config["data_loader"]["args"].update(data_args)
    return ["-c", w.write("npz.json", config)]


def _set(**values):
    return lambda arrays: arrays.update(values)


def _relabel(key, index, value, dtype=None):
    def change(arrays):
        labels = arrays[key].astype(dtype or arrays[key].dtype)
        labels[index] = value
        arrays[key] = labels
    return change


def _existing_run_folder(w):
    run = w.path("saved") / "small" / "r1"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"precious")
    return ["-c", w.write("c.json"), "--run_id", "r1"], [run, "already exists"]


def _unwritable_save_folder(w):
    # A path under a regular file cannot be created, even by root (chmod would not stop root).
    blocker = w.path("a_file")
    blocker.write_text("")
    return ["-c", w.write("c.json"), "--save_dir", blocker / "sub"], [blocker / "sub", "cannot create run folder"]


CATALOGUE = [
    ("train.py", "malformed_json",
     lambda w: (["-c", _write(w.path("bad.json"), '{\n  "name": "x",\n  "arch": {"type": }\n}')],
                [w.path("bad.json"), "malformed JSON", "line 3", "column 20"])),
    ("train.py", "duplicate_key",  # JSON keeps the last of two keys: an edit that adds a second one would be lost
     lambda w: (["-c", _write(w.path("dup.json"), '{"name": "x", "trainer": {"epochs": 1, "epochs": 30}}')],
                [w.path("dup.json"), "'epochs' appears twice", "each key once"])),
    ("train.py", "config_not_found", lambda w: (["-c", w.path("nope.json")], [w.path("nope.json"), "does not exist"])),
    ("train.py", "config_not_an_object", lambda w: (["-c", _write(w.path("list.json"), "[1, 2]")],
                                                    [w.path("list.json"), "expected a JSON object"])),
    ("train.py", "no_config", lambda w: ([], ["-c CONFIG"])),
    ("train.py", "unknown_type", lambda w: (["-c", w.modified("loss.type", "FancyLoss")],
                                            ["loss.type", "FancyLoss", "expected one of", "DiverseExpertLoss"])),
    ("train.py", "missing_section",
     lambda w: (["-c", w.modified("optimizer", _DELETE)], ["missing section 'optimizer'"])),
    ("train.py", "unknown_argument", lambda w: (["-c", w.modified("arch.args.num_expert", 3)],
                                                ["arch.args", "ResNet32Model", "num_expert"])),
    ("train.py", "wrong_argument_type", lambda w: (["-c", w.modified("optimizer.args.lr", "fast")],
                                                   ["c.json", "optimizer.args.lr", "'fast'", "expected a number"])),
    ("train.py", "wrong_argument_type_set", lambda w: (["-c", w.write("c.json"), "--set", "trainer.epochs=many"],
                                                       ["trainer.epochs", "many", "integer"])),
    ("train.py", "wrong_option_type", lambda w: (["-c", w.write("c.json"), "--epochs", "ten"], ["--epochs", "ten"])),
    ("train.py", "unknown_set_path", lambda w: (["-c", w.write("c.json"), "--set", "optimiser.args.lr=0.1"],
                                                ["--set", "unknown config key", "'optimiser'", "optimizer?"])),
    ("train.py", "unknown_set_argument", lambda w: (["-c", w.write("c.json"), "--set", "optimizer.args.lrr=0.1"],
                                                    ["c.json", "optimizer.args.lrr", "SGD", "optimizer.args.lr?"])),
    ("train.py", "unknown_loss_argument_set", lambda w: (["-c", w.write("c.json"), "--set", "loss.args.tua=1"],
                                                         ["loss.args.tua", "DiverseExpertLoss", "loss.args.tau?"])),
    ("train.py", "unknown_trainer_key", lambda w: (["-c", w.modified("trainer.epochz", 3)],
                                                   ["c.json", "'trainer.epochz'", "did you mean trainer.epochs?"])),
    ("train.py", "unknown_top_level_key", lambda w: (["-c", w.modified("optimiser", {})],
                                                     ["c.json", "'optimiser'", "did you mean optimizer?"])),
    ("train.py", "unknown_section_key", lambda w: (["-c", w.modified("loss.arg", {})],
                                                   ["c.json", "'loss.arg'", "did you mean loss.args?"])),
    ("train.py", "trainer_wrong_type", lambda w: (["-c", w.modified("trainer.tensorboard", "yes")],
                                                  ["c.json", "trainer.tensorboard", "true or false"])),
    ("train.py", "trainer_select_on", lambda w: (["-c", w.modified("trainer.select_on", "best")],
                                                 ["trainer.select_on", '"validation" or "test" or "last"'])),
    ("train.py", "monitor_metric_not_logged", lambda w: (["-c", w.modified("trainer.monitor", "max val_acc")],
                                                         ["trainer.monitor", "val_acc", "max val_accuracy?"])),
    ("train.py", "num_classes_set", lambda w: (["-c", w.write("c.json"), "--set", "arch.args.num_classes=5"],
                                               ["arch.args.num_classes is 5", "100 classes"])),
    ("train.py", "lr_nan", lambda w: (["-c", w.write("c.json"), "--lr", "nan"], ["--lr", "finite number"])),
    ("train.py", "lr_nan_set", lambda w: (["-c", w.write("c.json"), "--set", "optimizer.args.lr=NaN"],
                                          ["optimizer.args.lr", "finite number"])),
    ("train.py", "resume_while_locked", _locked_run),
    ("train.py", "malformed_set",
     lambda w: (["-c", w.write("c.json"), "--set", "epochs"], ["epochs", "KEY.PATH=VALUE"])),
    ("train.py", "bad_monitor", lambda w: (["-c", w.modified("trainer.monitor", "best accuracy")],
                                           ["trainer.monitor", "'min NAME'"])),
    ("train.py", "bad_device", lambda w: (["-c", w.write("c.json"), "-d", "tpu"], ["-d tpu", "expected cpu, cuda"])),
    ("train.py", "missing_data_folder", lambda w: (["-c", w.write("c.json"), "--data_dir", w.path("nowhere")],
                                                   [w.path("nowhere"), "cifar-100-python", "download"])),
    ("train.py", "truncated_data_pickle",
     lambda w: (["-c", w.write("c.json")], [w.cifar_file(w.cifar_file_bytes[:1000]), "truncated", "CIFAR"])),
    ("train.py", "foreign_data_pickle", lambda w: (["-c", w.write("c.json")],
                                                   [w.cifar_file(pickle.dumps([1, 2, 3])), "not a CIFAR batch"])),
    ("train.py", "code_in_data_pickle",
     lambda w: (["-c", w.write("c.json")],
                [w.cifar_file(pickle.dumps({"data": _Payload(w.path("MARKER"))})), "system", "refused"])),
    ("train.py", "missing_checkpoint", lambda w: (["-r", w.path("nope.pth")], [w.path("nope.pth"), "does not exist"])),
    ("train.py", "truncated_checkpoint", _truncated_checkpoint),
    ("train.py", "foreign_checkpoint", _foreign_checkpoint),
    ("train.py", "code_checkpoint", _code_checkpoint),
    ("train.py", "other_framework_checkpoint", _other_framework_checkpoint),
    ("train.py", "other_architecture_checkpoint", _other_architecture),
    ("train.py", "unwritable_save_folder", _unwritable_save_folder),
    ("train.py", "existing_run_folder", _existing_run_folder),
    ("train.py", "loss_for_another_number_of_experts",
     lambda w: (["-c", w.modified("arch.args.num_experts", 2)],
                ["c.json", "loss.type DiverseExpertLoss needs arch.args.num_experts 3, got 2"])),
    ("train.py", "npz_float_images", lambda w: (_npz(w, lambda a: a.update(train_x=a["train_x"] / 255.0)),
                                                ["bad.npz: train_x is float64", "expected uint8 images"])),
    ("train.py", "npz_nan_pixels", lambda w: (_npz(w, lambda a: a.update(test_x=np.full(a["test_x"].shape, np.nan))),
                                              ["bad.npz: test_x is float64 holding NaN", "expected uint8"])),
    ("train.py", "npz_wrong_shape", lambda w: (_npz(w, lambda a: a.update(train_x=a["train_x"][..., 0])),
                                               ["bad.npz: train_x has shape", "expected N x 32 x 32 x 3"])),
    ("train.py", "npz_empty_test_set", lambda w: (_npz(w, _set(test_x=np.zeros((0, 32, 32, 3), np.uint8),
                                                               test_y=np.zeros(0, np.int64))),
                                                  ["bad.npz: test_x holds no images"])),
    ("train.py", "npz_label_count", lambda w: (_npz(w, lambda a: a.update(test_y=a["test_y"][:-1])),
                                               ["bad.npz: test_y has shape", "labels, one per image of test_x"])),
    ("train.py", "npz_nan_label", lambda w: (_npz(w, _relabel("train_y", 0, np.nan, np.float64)),
                                             ["bad.npz: train_y holds nan", "integer labels 0..9"])),
    ("train.py", "npz_label_42", lambda w: (_npz(w, _relabel("train_y", 3, 42)),
                                            ["bad.npz: train_y holds the label 42", "labels 0..9"])),
    ("train.py", "npz_label_minus_1", lambda w: (_npz(w, _relabel("test_y", 3, -1)),
                                                 ["bad.npz: test_y holds the label -1", "labels 0..9"])),
    ("train.py", "npz_missing_key", lambda w: (_npz(w, lambda a: a.pop("test_y")),
                                               ["bad.npz has no array test_y", "train_x, train_y, test_x, test_y"])),
    ("train.py", "npz_missing_file", lambda w: (_npz(w, data_dir=str(w.path("nope.npz"))),
                                                [w.path("nope.npz"), "does not exist"])),
    ("train.py", "npz_mean_length", lambda w: (_npz(w, mean=[0.5, 0.5]),
                                               ["npz.json", "mean [0.5, 0.5]", "three numbers"])),
    ("test.py", "missing_checkpoint", lambda w: (["-r", w.path("nope.pth")], [w.path("nope.pth"), "does not exist"])),
    ("test.py", "truncated_checkpoint", _truncated_checkpoint),
    ("test.py", "foreign_checkpoint", _foreign_checkpoint),
    ("test.py", "code_checkpoint", _code_checkpoint),
    ("test.py", "other_architecture_checkpoint", _other_architecture),
    ("test.py", "unknown_distribution", lambda w: (["-r", w.run_folder() / "last.pth", "--distributions", "sideways5"],
                                                   ["--distributions", "sideways5", "forward50"])),
    ("test.py", "out_is_the_checkpoint", lambda w: (["-r", w.run_folder() / "last.pth", "--out",
                                                      w.path("run") / "last.pth"], ["--out", "not a result file"])),
    ("test.py", "out_is_a_config", lambda w: (["-r", w.run_folder() / "last.pth", "--out", w.write("run/config.json")],
                                              ["run/config.json", "not a result file of test.py"])),
    ("test.py", "out_is_a_folder", lambda w: (["-r", w.run_folder() / "last.pth", "--out", w.path("run")],
                                              ["--out", "is a folder"])),
    ("test.py", "out_is_the_csv", lambda w: (["-r", w.run_folder() / "last.pth", "--out", w.path("eval.csv")],
                                             ["--out", "eval.csv", "writes a file of that name", "eval.json"])),
    ("test.py", "checkpoint_for_other_classes", _checkpoint_for_other_classes),
    ("test.py", "corrupt_tensor_data", _corrupt_tensor_data),
    ("test.py", "nan_weights", _nan_weights),
    ("test.py", "negative_protocol_seed",
     lambda w: (["-r", w.run_folder() / "last.pth", "--protocol", "streaming", "--protocol_seed", "-1"],
                ["--protocol_seed", "integer >= 0", "-1"])),
    ("test.py", "one_image_test_set", lambda w: (["-r", w.run_folder() / "last.pth", "--data_dir", w.one_test_image()],
                                                 ["test set", "has no images", "1 image(s)"])),
    ("test.py", "missing_data_folder", lambda w: (["-r", w.run_folder() / "last.pth", "--data_dir", w.path("nowhere")],
                                                  [w.path("nowhere"), "cifar-100-python"])),
    ("test_train.py", "missing_checkpoint",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.path("nope.pth")], [w.path("nope.pth")])),
    ("test_train.py", "code_checkpoint",
     lambda w: (["-c", TEST_TIME_CONFIG, *_code_checkpoint(w)[0]], ["refused", "system"])),
    ("test_train.py", "training_config_given",
     lambda w: (["-c", w.write("c.json"), "-r", w.run_folder() / "last.pth"], ["c.json", "test_time"])),
    ("test_train.py", "seed_not_a_number",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--set", "test_time.seed=abc"],
                ["test_time.seed", "'abc'", "integer"])),
    ("test_train.py", "online_for_a_method_without_the_switch",
     lambda w: (["-c", ROOT / "configs" / "test_time_digits_prior.json", "-r", w.run_folder() / "last.pth",
                 "--online"], ["--online", "SafePrior", "--protocol streaming", "--images DIR --online"])),
    ("test_train.py", "negative_seed_on_the_command_line",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--seed", "-1"],
                ["test_time.seed is -1", "expected an integer >= 0", "set by --seed"])),
    ("test_train.py", "epochs_zero_on_the_command_line",  # the config's own value is fine: the option is named
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--epochs", "0"],
                ["epochs 0", "expected an integer >= 1", "test_time.args.epochs set by --epochs"])),
    ("test_train.py", "lr_nan", lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--lr", "nan"],
                                           ["--lr", "finite number"])),
    ("test_train.py", "blur_probability",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--set",
                 'test_time.args.augmentation={"blur_p": 5}'], ["blur_p 5", "probability in [0, 1]"])),
    ("test_train.py", "expert_out_of_range",
     lambda w: (["-c", _write(w.path("single.json"), '{"test_time": {"type": "SingleExpert", "args": {}}}'),
                 "-r", w.run_folder() / "last.pth", "--set", "test_time.args.expert=3"],
                ["single.json", "expert 3", "3 expert(s)"])),
    ("test_train.py", "unknown_method_argument",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--set", "test_time.args.epoch=2"],
                ["test_time.args.epoch", "SelfSupervisedAggregation", "test_time.args.epochs?"])),
    ("test_train.py", "out_is_the_checkpoint",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--out", w.path("run") / "last.pth"],
                ["--out", "not a result file of test_train.py"])),
    ("test_train.py", "out_is_a_test_result",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--out",
                 _write(w.path("eval.json"), json.dumps({"written_by": "test.py", "checkpoint": "x",
                                                         "distributions": {}}))],
                ["eval.json", "not a result file of test_train.py"])),
    ("test_train.py", "one_image_test_set",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--data_dir", w.one_test_image()],
                ["test set", "has no images", "1 image(s)"])),
    ("test_train.py", "unknown_test_time_key",
     lambda w: (["-c", _write(w.path("tt.json"), '{"test_time": {"type": "SingleExpert", "args": {}, "sead": 2}}'),
                 "-r", w.run_folder() / "last.pth"], ["tt.json", "'test_time.sead'", "did you mean test_time.seed?"])),
    ("test_train.py", "unknown_top_level_key",
     lambda w: (["-c", _write(w.path("tt.json"), '{"test_time": {"type": "SingleExpert"}, "test_tme": {}}'),
                 "-r", w.run_folder() / "last.pth"], ["tt.json", "'test_tme'", "did you mean test_time?"])),
    ("test_train.py", "unknown_distribution",
     lambda w: (["-c", TEST_TIME_CONFIG, "-r", w.run_folder() / "last.pth", "--distributions",
                 "forward3"], ["forward3"])),
]


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def workspace(tmp_path, tiny_checkpoint):
    w = Workspace(tmp_path, tiny_checkpoint)
    w.cifar_file_bytes = (w.data / "cifar-100-python" / "train").read_bytes()
    yield w
    for lock in w.locks:
        lock.release()


@pytest.mark.parametrize("script,case,setup", CATALOGUE, ids=[f"{s[:-3]}-{c}" for s, c, _ in CATALOGUE])
def test_bad_input(script, case, setup, workspace, capfd):
    argv, fragments = setup(workspace)
    before = snapshot(workspace.root)
    code, _, err = run_entry(script, argv, capfd)
    one_line_error(code, err, *fragments)
    assert snapshot(workspace.root) == before  # nothing changed, created (run folders, MARKER) or removed


@pytest.fixture
def config(tmp_path):
    """The tiny recipe as a dict (nothing on disk): for the ConfigParser tests."""
    return tiny_cifar_config(tmp_path / "cifar", tmp_path / "saved")


@pytest.mark.parametrize("case", ["malformed_json", "code_checkpoint", "code_in_data_pickle"])
def test_catalogue_in_a_real_process(case, workspace):
    """The same rows through a fresh interpreter: exit code and stderr exactly as a user sees them."""
    script, _, setup = next(row for row in CATALOGUE if row[1] == case)
    argv, fragments = setup(workspace)
    before = snapshot(workspace.root)
    proc = run_script(script, *argv)
    one_line_error(proc.returncode, proc.stderr, *fragments)
    assert snapshot(workspace.root) == before


def test_set_parses_json_and_falls_back_to_string(config):
    c = ConfigParser(json.loads(json.dumps(config)))
    ConfigParser.apply_overrides(c.config, [("trainer.epochs", 5, "--set"), ("name", "abc", "--set")], "x")
    assert c["trainer"]["epochs"] == 5 and c["name"] == "abc"
    from utils.parse_config import parse_set_expression
    assert parse_set_expression("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_set_expression("a.b=hello") == ("a.b", "hello")
    with pytest.raises(UserError):
        ConfigParser.apply_overrides(c.config, [("trainer.nope", 1, "--set")], "x")


def test_set_takes_several_expressions_at_once_and_repeats():
    from utils.cli import ArgumentParser
    p = ArgumentParser(prog="x")
    p.add_argument("--run_id")
    p.add_set_option()
    args = p.parse_args(["--set", "trainer.epochs=3", "name=a", "--run_id", "r", "--set", "seed=2"])
    assert p.overrides(args) == [("trainer.epochs", 3, "--set"), ("name", "a", "--set"), ("seed", 2, "--set")]
    assert args.run_id == "r"


def test_set_null_is_applied_and_missing_shortcuts_are_not(config):
    # "--set trainer.autocast=null" must turn bf16 off (it was once dropped like an unset option).
    from utils.parse_config import parse_set_expression
    from utils.performance import Performance
    c = ConfigParser(json.loads(json.dumps(config)))
    c.config["trainer"]["autocast"] = "bf16"
    ConfigParser.apply_overrides(c.config, [(*parse_set_expression("trainer.autocast=null"), "--set"),
                                            ("trainer.epochs", None, "--epochs")], "x")
    assert "autocast" in c.config["trainer"] and c.config["trainer"]["autocast"] is None
    assert Performance.from_config(c.config["trainer"]).amp_dtype("cpu") is None
    assert c.config["trainer"]["epochs"] == config["trainer"]["epochs"]


def test_init_obj_refuses_code_kwargs_overriding_config(config):
    import model.loss as losses
    c = ConfigParser(json.loads(json.dumps(config)))
    c.config["loss"]["args"]["cls_num_list"] = [1, 2]
    with pytest.raises(ValueError, match="override"):
        c.init_obj("loss", losses, cls_num_list=[3, 4])
