"""Bad config and command-line input: exit code 2, one line naming what is wrong, nothing lost."""
import json

import pytest

from tests.helpers import assert_one_line_error, run_script, small_cifar_config, write_cifar100, write_config
from utils.errors import UserError
from utils.parse_config import ConfigParser


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=10, test_per_class=2)


@pytest.fixture
def config(cifar_dir, tmp_path):
    return small_cifar_config(cifar_dir, tmp_path / "saved")


def test_malformed_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "name": "x",\n  "arch": {"type": }\n}')
    assert_one_line_error(run_script("train.py", "-c", bad), str(bad), "line 3", "column")


def test_unknown_type(config, tmp_path):
    config["loss"]["type"] = "FancyLoss"
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg), "loss.type", "FancyLoss", "DiverseExpertLoss")


def test_missing_section(config, tmp_path):
    del config["optimizer"]
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg), "optimizer")


def test_unknown_set_path(config, tmp_path):
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg, "--set", "optimizer.args.lrr=0.1"),
                          "optimizer.args.lrr")


def test_wrong_argument(config, tmp_path):
    config["arch"]["args"]["num_expert"] = 3
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg), "arch.args", "num_expert")


def test_missing_data_folder(config, tmp_path):
    config["data_loader"]["args"]["data_dir"] = str(tmp_path / "nowhere")
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg), str(tmp_path / "nowhere"), "cifar-100-python")


def test_bad_device(config, tmp_path):
    cfg = write_config(tmp_path / "c.json", config)
    assert_one_line_error(run_script("train.py", "-c", cfg, "-d", "tpu"), "-d tpu")


def test_existing_run_folder_is_not_touched(config, tmp_path):
    cfg = write_config(tmp_path / "c.json", config)
    run = tmp_path / "saved" / "small" / "r1"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"precious")
    assert_one_line_error(run_script("train.py", "-c", cfg, "--run_id", "r1"), str(run), "exists")
    assert (run / "last.pth").read_bytes() == b"precious"


def test_set_parses_json_and_falls_back_to_string(config):
    c = ConfigParser(json.loads(json.dumps(config)))
    ConfigParser.apply_overrides(c.config, [("trainer.epochs", 5, "--set"), ("name", "abc", "--set")], "x")
    assert c["trainer"]["epochs"] == 5 and c["name"] == "abc"
    from utils.parse_config import parse_set_expression
    assert parse_set_expression("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_set_expression("a.b=hello") == ("a.b", "hello")
    with pytest.raises(UserError):
        ConfigParser.apply_overrides(c.config, [("trainer.nope", 1, "--set")], "x")


def test_init_obj_refuses_code_kwargs_overriding_config(config):
    import model.loss as losses
    c = ConfigParser(config)
    c.config["loss"]["args"]["cls_num_list"] = [1, 2]
    with pytest.raises(ValueError, match="override"):
        c.init_obj("loss", losses, cls_num_list=[3, 4])
