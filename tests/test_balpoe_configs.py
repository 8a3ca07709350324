"""The shipped BalPoE recipes (docs/methods.md#balpoe): values as BalPoE's own configs give them, the loss's published
tau lists, mixup's alpha, and each config building its data (small generated files in the real formats), model and
loss."""
import math
import pickle

import numpy as np
import pytest
import torch

import data_loader
import model as models
import model.loss as losses
from tests.helpers import ROOT, lr_trace, write_cifar100
from tests.list_data import TRAIN_COUNTS, write_list_dataset
from trainer import Trainer
from trainer.mixup import Mixup
from utils.parse_config import ConfigParser, read_json
from utils.runtime import Runtime

CIFAR = {  # name: (loader, classes, imb_factor, alpha)
    f"cifar{c}_ir{ir}": (f"CIFAR{c}LTDataModule", c, 1 / ir, 0.8 if c == 10 else 0.4)
    for c in (10, 100) for ir in (10, 50, 100)
}
LARGE = {  # name: (arch, loader, classes, batch, lr, wd, epochs, taus, alpha, T_max, parameters)
    "imagenet_lt_resnext50": ("ResNeXt50Model", "ImageNetLTDataModule", 1000, 64, 0.025, 5e-4, 180,
                              [0, 1.25, 2.5], 0.3, 180, 72_258_880),
    "inat2018_resnet50": ("ResNet50Model", "INaturalistDataModule", 8142, 512, 0.2, 2e-4, 100, [-1, 1, 3], 0.2,
                          100, 117_658_688),
}


def load(name):
    path = ROOT / "configs" / f"config_{name}_balpoe.json"
    return ConfigParser(read_json(path), source=path)


def write_cifar10(root, train_per_class=4, test_per_class=2, seed=0):
    """A small ``cifar-10-batches-py`` folder (five training batches and the test batch)."""
    rng = np.random.RandomState(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10), train_per_class)
    rng.shuffle(labels)
    for i, part in enumerate(np.array_split(labels, 5), start=1):
        data = rng.randint(0, 256, size=(len(part), 3072), dtype=np.uint8)
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": part.tolist()}, f)
    test = np.repeat(np.arange(10), test_per_class)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": rng.randint(0, 256, size=(len(test), 3072), dtype=np.uint8), "labels": test.tolist()}, f)
    return root


@pytest.fixture(scope="module")
def cifar_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("balpoe_cifar")
    return {10: write_cifar10(root / "c10"), 100: write_cifar100(root / "c100", train_per_class=4, test_per_class=1)}


@pytest.mark.parametrize("name", list(CIFAR))
def test_cifar_recipe_builds_with_published_values(name, cifar_dirs, tmp_path):
    loader, classes, imb, alpha = CIFAR[name]
    cfg = load(name)
    assert cfg["arch"] == {"type": "ResNet32Model", "args": {"num_classes": classes, "reduce_dimension": False,
                                                             "use_norm": True, "num_experts": 3}}
    args = cfg["data_loader"]["args"]
    assert cfg["data_loader"]["type"] == loader and args["imb_factor"] == pytest.approx(imb)
    assert args["batch_size"] == 128 and cfg["trainer"]["epochs"] == 200
    assert cfg["optimizer"] == {"type": "SGD", "args": {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9,
                                                        "nesterov": True}}
    assert cfg["lr_scheduler"] == {"type": "WarmupStepLR", "args": {"step1": 160, "step2": 180, "gamma": 0.1,
                                                                    "warmup_epoch": 5}}
    assert cfg["loss"] == {"type": "LogitAdjustedLoss", "args": {"tau_list": [0, 1, 2]}}
    assert cfg["trainer"]["mixup"] == {"alpha": alpha} and Mixup.from_config(cfg).alpha == alpha
    # build it: data (a generated folder, few images), model, loss, trainer
    args.update(data_dir=str(cifar_dirs[classes]), img_max=4, batch_size=8, num_workers=0)
    cfg.config["trainer"].update(tensorboard=False)
    data = cfg.init_obj("data_loader", data_loader)
    assert data.num_classes == classes and data.cls_num_list[0] == 4
    net = cfg.init_obj("arch", models)
    criterion = cfg.init_obj("loss", losses, cls_num_list=data.cls_num_list)
    criterion.check_experts(net.num_experts, cfg.source)
    assert type(criterion).__name__ == "LogitAdjustedLoss" and criterion.tau_list == [0.0, 1.0, 2.0]
    x, y = next(iter(data.train_loader(0, 1)))
    assert torch.isfinite(criterion(net(x), y))
    cfg.run_dir = tmp_path
    trainer = Trainer(net, criterion, torch.optim.SGD(net.parameters(), lr=0.1), None, cfg,
                      Runtime(torch.device("cpu")), data)
    assert trainer.mixup.alpha == alpha


@pytest.fixture(scope="module")
def list_paths(tmp_path_factory):
    return write_list_dataset(tmp_path_factory.mktemp("balpoe_lists"))


@pytest.mark.parametrize("name", list(LARGE))
def test_large_scale_recipe_builds_with_published_values(name, list_paths):
    arch, loader, classes, batch, lr, wd, epochs, taus, alpha, t_max, count = LARGE[name]
    cfg = load(name)
    tade = read_json(ROOT / "configs" / f"config_{name}_tade.json")
    for section in ("data_loader", "optimizer"):
        assert cfg[section] == tade[section], section  # BalPoE's batch, lr and weight decay are TADE's
    assert {k: v for k, v in cfg["trainer"].items() if k != "mixup"} == tade["trainer"]
    # BalPoE's own configs: experts not reduced, cosine over all epochs to 0 without warmup (iNat too)
    assert cfg["arch"]["args"] == {**tade["arch"]["args"], "reduce_dimension": False}
    assert cfg["lr_scheduler"] == {"type": "CosineAnnealingLR", "args": {"T_max": t_max, "eta_min": 0}}
    assert t_max == epochs
    assert cfg["arch"]["type"] == arch and cfg["arch"]["args"]["num_classes"] == classes
    assert cfg["data_loader"]["args"]["batch_size"] == batch and cfg["trainer"]["epochs"] == epochs
    assert cfg["optimizer"]["args"]["lr"] == lr and cfg["optimizer"]["args"]["weight_decay"] == wd
    assert cfg["loss"] == {"type": "LogitAdjustedLoss", "args": {"tau_list": taus}}
    assert Mixup.from_config(cfg).alpha == alpha
    with torch.device("meta"):
        net = cfg.init_obj("arch", models)
    assert net.num_experts == 3 and sum(p.numel() for p in net.parameters()) == count
    criterion = cfg.init_obj("loss", losses, cls_num_list=[10] * classes)
    criterion.check_experts(net.num_experts, cfg.source)
    assert criterion.tau_list == [float(t) for t in taus]  # as published (ImageNet-LT: mean 1.25, not 1)
    # the data section, pointed at generated lists, builds and gives the loss its prior
    cfg.config["data_loader"]["args"].update(data_dir=str(list_paths["data_dir"]),
                                             train_txt=str(list_paths["train_txt"]),
                                             test_txt=str(list_paths["test_txt"]), test_distribution_txt=None,
                                             val_list=None,
                                             num_classes=len(TRAIN_COUNTS), test_ratios=[5, 2], image_size=32,
                                             batch_size=8, num_workers=0, persistent_workers=False)
    data = cfg.init_obj("data_loader", data_loader)
    assert type(data).__name__ == loader
    small = cfg.init_obj("loss", losses, cls_num_list=data.cls_num_list)
    assert sorted(data.cls_num_list, reverse=True) == sorted(TRAIN_COUNTS, reverse=True)
    assert small.tau_list == criterion.tau_list and tuple(small.offsets.shape) == (3, len(TRAIN_COUNTS))


def test_inat_schedule_is_cosine_without_warmup():
    cfg = load("inat2018_resnet50")
    lrs = lr_trace(cfg, 100, lr=0.2)
    assert lrs[0] == pytest.approx(0.2) and lrs[50] == pytest.approx(0.1)  # no warmup; halfway, half the lr
    assert lrs[99] == pytest.approx(0.1 * (1 + math.cos(math.pi * 99 / 100)))
