"""ImageNet-scale multi-expert backbones (docs/methods.md#backbones): parameter counts and names on the meta device,
MACs at 224 px, a real forward pass at a small size, and the pretrained Places-LT start."""
import pytest
import torch
import torchvision

import model as models
from model.pretrained import apply_config_pretrained, expand_single_network, load_single_network_weights
from utils.errors import UserError
from utils.macs import macs_per_image
from utils.parse_config import ConfigParser


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(cls, **kw):
    with torch.device("meta"):
        return getattr(models, cls)(**kw)


@pytest.mark.parametrize("cls, classes, reduce, expected", [
    ("ResNeXt50Model", 1000, True, 42_889_024),
    ("ResNet50Model", 8142, True, 76_587_584),
    ("ResNet152Model", 365, False, 171_543_616),
])
def test_parameter_counts_three_experts(cls, classes, reduce, expected):
    assert n_params(meta(cls, num_classes=classes, num_experts=3, reduce_dimension=reduce)) == expected


def test_release_parameter_names():
    names = set(meta("ResNeXt50Model", num_classes=10, num_experts=3, reduce_dimension=True).state_dict())
    assert {"backbone.conv1.weight", "backbone.bn1.running_mean", "backbone.layer1.0.conv1.weight",
            "backbone.layer1.0.downsample.0.weight", "backbone.layer2.3.bn3.bias",
            "backbone.layer3s.2.5.conv2.weight", "backbone.layer3s.0.0.downsample.1.weight",
            "backbone.layer4s.1.2.conv3.weight", "backbone.linears.2.weight"} <= names
    assert not any(n.startswith(("backbone.layer3.", "backbone.layer4.", "backbone.layer2s.")) for n in names)
    m = meta("ResNeXt50Model", num_classes=10, num_experts=3, reduce_dimension=True)
    assert tuple(m.backbone.linears[0].weight.shape) == (1536, 10)  # (in, out) as in the release
    assert tuple(m.backbone.layer3s[0][0].conv2.weight.shape) == (384, 12, 3, 3)  # 32 groups of 12 (192 planes)


@pytest.mark.parametrize("cls, experts, published", [
    ("ResNeXt50Model", 1, 4.26), ("ResNeXt50Model", 3, 6.08), ("ResNet50Model", 1, 4.14), ("ResNet50Model", 3, 5.80),
])
def test_macs_at_224(cls, experts, published):
    # one expert: the plain backbone (Softmax baseline); three: TADE's reduced experts
    m = meta(cls, num_classes=1000, num_experts=experts, reduce_dimension=experts > 1)
    assert macs_per_image(m, 224) == pytest.approx(published, rel=0.02)


def test_macs_of_a_real_model_compute_nothing_and_keep_mode():
    m = models.ResNet32Model(num_classes=100, num_experts=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert macs_per_image(m, 32) == pytest.approx(0.0689, rel=0.01)
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_forward_small_images():
    torch.manual_seed(0)
    m = models.ResNeXt50Model(num_classes=7, num_experts=3, reduce_dimension=True).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3, 7) and out["feat"].shape == (2, 3, 1536)
    assert torch.allclose(out["output"], out["logits"].mean(1))
    assert out["logits"].abs().max() <= 30 + 1e-4
    conv = m.backbone.layer4s[1][0].conv3.weight  # normal(0, sqrt(2 / (1 * 1 * 1536)))
    assert conv.std().item() == pytest.approx((2 / 1536) ** 0.5, rel=0.05)


def test_resnet152_names_match_torchvision():
    """Every tensor of torchvision's resnet152 (but fc) has a place in each expert, with its shape."""
    with torch.device("meta"):
        tv = torchvision.models.resnet152().state_dict()
    expanded, skipped = expand_single_network(tv, 3)
    own = meta("ResNet152Model", num_classes=365, num_experts=3).backbone.state_dict()
    assert skipped == ["fc.weight", "fc.bias"]
    assert set(expanded) == {k for k in own if not k.startswith("linears.")}
    assert all(expanded[k].shape == own[k].shape for k in expanded)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    torch.manual_seed(1)
    tv = torchvision.models.resnet50()
    for m in tv.modules():  # non-trivial BN statistics, so a copy is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("pretrained") / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.state_dict()


def test_pretrained_copies_layer3_and_layer4_into_every_expert(resnet50_file):
    path, tv = resnet50_file
    torch.manual_seed(2)
    m = models.ResNet50Model(num_classes=365, num_experts=3)
    heads = [lin.weight.detach().clone() for lin in m.backbone.linears]
    report = load_single_network_weights(m.backbone, path)
    sd = m.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.2.conv3.weight", "layer2.0.downsample.1.running_mean"):
        assert torch.equal(sd[key], tv[key]), key
    for k in range(3):
        for key in ("0.conv1.weight", "5.bn2.running_mean", "0.downsample.0.weight"):
            assert torch.equal(sd[f"layer3s.{k}.{key}"], tv[f"layer3.{key}"])
        for key in ("2.conv3.weight", "1.bn3.weight", "0.downsample.1.running_mean"):
            assert torch.equal(sd[f"layer4s.{k}.{key}"], tv[f"layer4.{key}"])
        assert torch.equal(m.backbone.linears[k].weight, heads[k])  # classifiers stay random
    assert report["skipped"] == ["fc.weight", "fc.bias"] and report["loaded"] == len(tv) - 2
    assert report["random"] == ["linears.0.weight", "linears.1.weight", "linears.2.weight"]


def test_pretrained_plain_state_dict_with_prefix(resnet50_file, tmp_path):
    _, tv = resnet50_file
    plain = {f"module.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    torch.save({"state_dict": plain}, tmp_path / "plain.pth")
    m = models.ResNet50Model(num_classes=5, num_experts=2)
    report = load_single_network_weights(m.backbone, tmp_path / "plain.pth")
    assert report["skipped"] == [] and torch.equal(m.backbone.layer4s[1][2].conv3.weight, tv["layer4.2.conv3.weight"])


def test_pretrained_mismatch_is_a_user_error(resnet50_file, tmp_path):
    path, tv = resnet50_file
    with pytest.raises(UserError, match=r"do not fit the model .*layer3\.0\.conv1\.weight"):
        load_single_network_weights(meta("ResNet50Model", num_classes=5, reduce_dimension=True).backbone, path)
    torch.save({k: v for k, v in tv.items() if not k.startswith("layer4.")}, tmp_path / "short.pth")
    with pytest.raises(UserError, match=r"missing \(e.g. layer4\.0\.conv1\.weight\)"):
        load_single_network_weights(meta("ResNet50Model", num_classes=5).backbone, tmp_path / "short.pth")


def test_config_pretrained_start(resnet50_file):
    """train.py's path: ``arch.pretrained`` next to ``arch.args`` initialises a fresh model."""
    path, tv = resnet50_file
    cfg = ConfigParser({"arch": {"type": "ResNet50Model", "args": {"num_classes": 4, "num_experts": 2},
                                 "pretrained": str(path)}})
    net = cfg.init_obj("arch", models)
    report = apply_config_pretrained(cfg, net)
    assert report["copied"] == len(net.backbone.state_dict()) - 2
    assert torch.equal(net.backbone.layer3s[1][3].bn1.running_mean, tv["layer3.3.bn1.running_mean"])
