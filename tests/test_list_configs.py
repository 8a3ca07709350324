"""The ImageNet-LT / Places-LT / iNat recipes (docs/methods.md#recipes, #test-time-aggregation) as shipped configs:
values, models built on the meta device, and the Places parameter groups and schedule; the RIDE configs against RIDE's
own (docs/methods.md#baselines)."""
import pytest
import torch

import model as models
import model.loss as losses
from model.pretrained import apply_config_pretrained
from tests.helpers import ROOT, lr_trace
from trainer.optim import build_lr_scheduler, build_optimizer
from utils.errors import UserError
from utils.parse_config import ConfigParser, read_json

RECIPES = {  # config: (arch, classes, batch, lr, wd, epochs, tau, parameters with 3 experts)
    "imagenet_lt_resnext50": ("ResNeXt50Model", 1000, 64, 0.025, 5e-4, 180, 2, 42_889_024),
    "places_lt_resnet152": ("ResNet152Model", 365, 128, 0.01, 4e-4, 30, 1, 171_543_616),
    "inat2018_resnet50": ("ResNet50Model", 8142, 512, 0.2, 2e-4, 100, 1, 76_587_584),
}
# RIDE's own ImageNet-LT recipe replaces the TADE one: (batch, lr, wd, epochs)
RIDE_OWN = {"imagenet_lt_resnext50": (256, 0.1, 2e-4, 100)}
# RIDE's configs: lr schedule (step1, step2, gamma, warmup), reweight_epoch, reweight_factor, diversity factor;
# CIFAR-10 and Places-LT have no RIDE config (CIFAR-10 takes RIDE's CIFAR-100 schedule, Places the TADE recipe)
RIDE = {
    "cifar100_ir100": ((160, 180, 0.01, 5), 160, 0.05, -0.45),
    "cifar10_ir100": ((160, 180, 0.01, 5), 160, 0.05, -0.2),
    "imagenet_lt_resnext50": ((60, 80, 0.1, 5), 80, 0.02, -0.2),
    "inat2018_resnet50": ((60, 80, 0.1, 5), 80, 0.015, -0.2),
    "places_lt_resnet152": ((10, 20, 0.1, 0), 24, 0.05, -0.2),
}


def load(name):
    path = ROOT / "configs" / f"config_{name}.json"
    return ConfigParser(read_json(path), source=path)


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("method", ["tade", "softmax", "ride"])
def test_training_configs(name, method):
    arch, classes, batch, lr, wd, epochs, tau, count = RECIPES[name]
    if method == "ride" and name in RIDE_OWN:
        batch, lr, wd, epochs = RIDE_OWN[name]
    cfg = load(f"{name}_{method}")
    assert cfg["arch"]["type"] == arch and cfg["arch"]["args"]["num_classes"] == classes
    assert cfg["data_loader"]["args"]["batch_size"] == batch and cfg["trainer"]["epochs"] == epochs
    assert cfg["optimizer"]["args"] == {"lr": lr, "weight_decay": wd, "momentum": 0.9, "nesterov": True}
    assert "{name}" in cfg["data_loader"]["args"]["test_distribution_txt"]
    with torch.device("meta"):
        net = cfg.init_obj("arch", models)
    n = sum(p.numel() for p in net.parameters())
    criterion = cfg.init_obj("loss", losses, cls_num_list=[10] * classes)
    if method == "tade":
        assert net.num_experts == 3 and n == count and criterion.tau == tau
    elif method == "ride":
        assert net.num_experts == 3 and n == count and type(criterion).__name__ == "RIDELoss"
        assert 0 < criterion.reweight_epoch < epochs and criterion.additional_diversity_factor == -0.2
    else:
        assert net.num_experts == 1 and type(criterion).__name__ == "CrossEntropyLoss"


@pytest.mark.parametrize("name", list(RIDE))
def test_ride_configs_as_ride_ships_them(name):
    (step1, step2, gamma, warmup), reweight_epoch, factor, diversity = RIDE[name]
    cfg = load(f"{name}_ride")
    assert cfg["lr_scheduler"] == {"type": "WarmupStepLR", "args": {"step1": step1, "step2": step2, "gamma": gamma,
                                                                    "warmup_epoch": warmup}}
    assert cfg["loss"] == {"type": "RIDELoss", "args": {
        "base_diversity_temperature": 1.0, "max_m": 0.5, "s": 30, "reweight": True, "reweight_epoch": reweight_epoch,
        "reweight_factor": factor, "additional_diversity_factor": diversity}}
    criterion = cfg.init_obj("loss", losses, cls_num_list=[10] * cfg["arch"]["args"]["num_classes"])
    assert criterion.reweight_epoch == reweight_epoch and criterion.additional_diversity_factor == diversity
    assert cfg["arch"]["args"]["reduce_dimension"] == (name in ("cifar100_ir100", "imagenet_lt_resnext50",
                                                                "inat2018_resnet50"))
    if name.startswith("cifar"):  # the LDAM-DRW schedule: x0.01 at 160, x1e-4 at 180
        lrs = lr_trace(cfg, 200)
        base = cfg["optimizer"]["args"]["lr"]
        assert lrs[159] == pytest.approx(base) and lrs[160] == pytest.approx(base * 0.01)
        assert lrs[180] == pytest.approx(base * 1e-4) and lrs[199] == pytest.approx(base * 1e-4)


def test_imagenet_and_inat_schedules():
    cfg = load("imagenet_lt_resnext50_tade")
    assert cfg["lr_scheduler"] == {"type": "CosineAnnealingLR", "args": {"T_max": 180, "eta_min": 0}}
    cfg = load("inat2018_resnet50_tade")
    lrs = lr_trace(cfg, 100, lr=0.2)
    assert lrs[0] == pytest.approx(0.04) and lrs[4] == pytest.approx(0.2) and lrs[59] == pytest.approx(0.2)
    assert lrs[60] == pytest.approx(0.02) and lrs[80] == pytest.approx(0.002)


def test_places_parameter_groups_and_schedule():
    cfg = load("places_lt_resnet152_tade")
    assert cfg["optimizer"]["backbone_lr"] == 0.001 and cfg["arch"]["pretrained"]
    with torch.device("meta"):
        net = cfg.init_obj("arch", models)
    opt = build_optimizer(cfg, net)
    heads, rest = opt.param_groups
    assert heads["lr"] == 0.01 and rest["lr"] == 0.001
    assert sum(p.numel() for p in heads["params"]) == 3 * 2048 * 365
    assert sum(p.numel() for p in rest["params"]) == 171_543_616 - 3 * 2048 * 365
    assert heads["weight_decay"] == rest["weight_decay"] == 4e-4 and rest["nesterov"]
    sched = build_lr_scheduler(cfg, opt)
    seen = {}
    for epoch in range(30):
        seen[epoch] = [g["lr"] for g in opt.param_groups]
        opt.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
        sched.step()
    assert seen[0] == pytest.approx([0.01, 0.001]) and seen[9] == pytest.approx([0.01, 0.001])
    assert seen[10] == pytest.approx([0.001, 0.0001]) and seen[29] == pytest.approx([0.0001, 0.00001])


def test_backbone_lr_and_pretrained_errors():
    cfg = ConfigParser({"arch": {"type": "ResNet32Model", "args": {}, "pretrained": "x.pth"},
                        "optimizer": {"type": "SGD", "args": {"lr": 0.1}, "backbone_lr": "slow"}}, source="c.json")
    net = cfg.init_obj("arch", models)
    with pytest.raises(UserError, match="optimizer.backbone_lr must be a non-negative number"):
        build_optimizer(cfg, net)
    with pytest.raises(UserError, match="arch.pretrained needs an ImageNet-scale model"):
        apply_config_pretrained(cfg, net)


@pytest.mark.parametrize("name, lr, wd, entropy", [
    ("imagenet_lt", 0.025, 5e-4, 0), ("places_lt", 0.01, 4e-4, 0), ("inat", 0.2, 2e-4, 0.01)])
def test_test_time_configs(name, lr, wd, entropy):
    section = read_json(ROOT / "configs" / f"test_time_{name}_tade.json")["test_time"]
    assert section["type"] == "SelfSupervisedAggregation" and section["seed"] == 1
    tt = section["args"]
    assert tt["optimizer"] == {"type": "SGD", "args": {"lr": lr, "momentum": 0.9, "nesterov": True,
                                                       "weight_decay": wd}}
    assert (tt["epochs"], tt["batch_size"], tt["stop_weight"], tt["entropy_weight"]) == (5, 128, 0.05, entropy)
    assert tt["augmentation"] == {"crop_scale": [0.2, 1.0], "blur_p": 0.5}
