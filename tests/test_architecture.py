"""The extension points: classes found by their config type from their package alone (no second
list), the release's names as aliases, contracts checked, test-time configs of both shapes."""
import importlib
import inspect
import json
import pkgutil

import pytest

import data_loader
import model
import model.loss
import trainer.test_time
from base.base_data_module import LTDataModule
from base.base_loss import LTLoss
from base.base_model import ExpertModel
from base.base_test_time import TestTimeMethod
from trainer.build import build_test_time_method, read_test_time_config
from utils.errors import UserError
from utils.parse_config import ConfigParser

PACKAGES = [(data_loader, LTDataModule), (model, ExpertModel), (model.loss, LTLoss),
            (trainer.test_time, TestTimeMethod)]


@pytest.mark.parametrize("package,contract", PACKAGES, ids=lambda p: getattr(p, "__name__", ""))
def test_every_concrete_contract_class_of_a_package_is_a_config_type(package, contract):
    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, contract) and obj.__module__ == module.__name__
                    and not name.startswith("_") and not inspect.isabstract(obj)):
                found.add(name)
    assert found and found <= set(package.__all__)
    assert all(issubclass(getattr(package, n), contract) for n in package.__all__)


def test_release_and_earlier_names_are_aliases_of_the_data_modules():
    assert data_loader.ImbalanceCIFAR100DataLoader is data_loader.CIFAR100LTDataModule
    assert data_loader.CIFAR10LTDataLoader is data_loader.CIFAR10LTDataModule
    assert data_loader.DigitsLTDataLoader is data_loader.DigitsLTDataModule
    assert data_loader.PlacesLTDataLoader is data_loader.PlacesLTDataModule
    assert "ArrayLTDataModule" not in data_loader.__all__  # a base to subclass, not a usable type


def test_unknown_type_lists_the_available_ones():
    config = ConfigParser({"test_time": {"type": "Magic", "args": {}}}, source="tt.json")
    with pytest.raises(UserError, match="tt.json: test_time.type 'Magic'.*ExpertAverage.*SelfSupervisedAggregation"):
        config.init_obj("test_time", trainer.test_time)


def test_earlier_test_time_config_shape_is_self_supervised_aggregation(tmp_path):
    old = {"test_time": {"optimizer": {"type": "SGD", "args": {"lr": 0.3}}, "epochs": 2, "batch_size": 16,
                         "augmentation": {"blur_p": 0.1}, "seed": 7}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    raw = read_test_time_config(path)
    assert raw["test_time"]["type"] == "SelfSupervisedAggregation" and raw["test_time"]["seed"] == 7
    method, _ = build_test_time_method(path)
    assert (method.epochs, method.batch_size, method.augmentation) == (2, 16, {"blur_p": 0.1})
    assert method.optimizer == {"type": "SGD", "args": {"lr": 0.3}}
    shipped, _ = build_test_time_method("configs/test_time_cifar10_tade.json")
    assert type(shipped).__name__ == "SelfSupervisedAggregation" and shipped.needs_views


def test_test_time_method_arguments_are_checked(tmp_path):
    path = tmp_path / "tt.json"
    path.write_text(json.dumps({"test_time": {"type": "SelfSupervisedAggregation", "args": {"epochs": 0}}}))
    with pytest.raises(UserError, match="tt.json.*epochs 0: expected an integer >= 1"):
        build_test_time_method(path)
    path.write_text(json.dumps({"test_time": {"type": "ExpertAverage", "args": {"epochs": 3}}}))
    with pytest.raises(UserError, match=r"tt.json: unknown key 'test_time.args.epochs' \(not an argument of "
                                        r"ExpertAverage\); ExpertAverage takes no arguments"):
        build_test_time_method(path)
    path.write_text(json.dumps({"test_time": {"type": "ExpertAverage", "optimizer": {}}}))
    with pytest.raises(UserError, match="tt.json: unknown key.*test_time.optimizer"):
        build_test_time_method(path)


def test_losses_declare_their_number_of_experts():
    from model.loss import CrossEntropyLoss, DiverseExpertLoss
    DiverseExpertLoss([5, 3, 1]).check_experts(3)
    CrossEntropyLoss([5, 3, 1]).check_experts(7)
    with pytest.raises(UserError, match="DiverseExpertLoss needs arch.args.num_experts 3, got 2"):
        DiverseExpertLoss([5, 3, 1]).check_experts(2, "c.json")
