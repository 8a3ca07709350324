"""Any number of experts (docs/methods.md#backbones, #balpoe): parameter counts of the CIFAR ResNet-32 and the
ImageNet-scale backbones for 1..7 experts, against counts computed here from the architecture
(the shared trunk once, layer stages and classifier per expert), anchored on the published
3-expert numbers; and forward passes with more than three experts."""
import pytest
import torch

import model as models

EXPERTS = range(1, 8)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(cls, **kw):
    with torch.device("meta"):
        return getattr(models, cls)(**kw)


# -- CIFAR ResNet-32 -------------------------------------------------------------------------------
def basic_stage(inp, out, blocks):
    """BasicBlocks: two 3x3 convs (no bias) and two BNs (weight + bias) each; option-A shortcut free."""
    first = 9 * inp * out + 9 * out * out + 4 * out
    return first + (blocks - 1) * (18 * out * out + 4 * out)


def resnet32_count(classes, experts, reduce, use_norm=True):
    w2, w3 = (24, 48) if reduce else (32, 64)
    shared = 9 * 3 * 16 + 2 * 16 + basic_stage(16, 16, 5)
    classifier = w3 * classes + (0 if use_norm else classes)
    return shared + experts * (basic_stage(16, w2, 5) + basic_stage(w2, w3, 5) + classifier)


def test_cifar_formula_matches_published_count():
    assert resnet32_count(100, 3, reduce=True) == 783_856  # docs/methods.md#backbones


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("classes, reduce, use_norm", [(100, True, True), (10, False, True), (100, False, False)])
def test_resnet32_parameter_count(experts, classes, reduce, use_norm):
    m = meta("ResNet32Model", num_classes=classes, num_experts=experts, reduce_dimension=reduce, use_norm=use_norm)
    assert m.num_experts == experts
    assert n_params(m) == resnet32_count(classes, experts, reduce, use_norm)


# -- Bottleneck ResNet / ResNeXt ---------------------------------------------------------------------
def bottleneck(inp, planes, groups, base_width, downsample):
    width = int(planes * base_width / 64) * groups
    out = 4 * planes
    count = inp * width + 9 * width * width // groups + width * out + 2 * (2 * width + out)
    if downsample:
        count += inp * out + 2 * out
    return count


def bottleneck_stage(inp, planes, blocks, groups, base_width):
    first = bottleneck(inp, planes, groups, base_width, downsample=True)  # stride 2 or 64 -> 256 channels
    return first + (blocks - 1) * bottleneck(4 * planes, planes, groups, base_width, downsample=False)


ARCHS = {  # class: (layers, groups, width per group)
    "ResNeXt50Model": ((3, 4, 6, 3), 32, 4),
    "ResNet50Model": ((3, 4, 6, 3), 1, 64),
    "ResNet152Model": ((3, 8, 36, 3), 1, 64),
}


def bottleneck_count(cls, classes, experts, reduce):
    layers, g, bw = ARCHS[cls]
    p3, p4 = (192, 384) if reduce else (256, 512)
    shared = (3 * 64 * 49 + 2 * 64 + bottleneck_stage(64, 64, layers[0], g, bw)
              + bottleneck_stage(256, 128, layers[1], g, bw))
    per_expert = (bottleneck_stage(512, p3, layers[2], g, bw) + bottleneck_stage(4 * p3, p4, layers[3], g, bw)
                  + 4 * p4 * classes)  # cosine classifier: weight only
    return shared + experts * per_expert


@pytest.mark.parametrize("cls, classes, reduce, published", [
    ("ResNeXt50Model", 1000, True, 42_889_024),
    ("ResNet50Model", 8142, True, 76_587_584),
    ("ResNet152Model", 365, False, 171_543_616),
])
def test_bottleneck_formula_matches_published_counts(cls, classes, reduce, published):
    assert bottleneck_count(cls, classes, 3, reduce) == published  # docs/methods.md#backbones


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("cls, classes, reduce", [
    ("ResNeXt50Model", 1000, True), ("ResNet50Model", 8142, True), ("ResNet152Model", 365, False),
    ("ResNeXt50Model", 1000, False),
])
def test_bottleneck_parameter_count(experts, cls, classes, reduce):
    m = meta(cls, num_classes=classes, num_experts=experts, reduce_dimension=reduce)
    assert m.num_experts == experts and len(m.backbone.layer4s) == experts
    assert n_params(m) == bottleneck_count(cls, classes, experts, reduce)


def test_one_expert_resnet50_is_torchvision_resnet50_without_fc_bias():
    """A second anchor for the formula: one unreduced expert is torchvision's resnet50 trunk plus a
    bias-free (cosine) classifier."""
    import torchvision
    with torch.device("meta"):
        tv = torchvision.models.resnet50(num_classes=1000)
    assert bottleneck_count("ResNet50Model", 1000, 1, reduce=False) == n_params(tv) - 1000
    assert n_params(meta("ResNet50Model", num_classes=1000, num_experts=1)) == n_params(tv) - 1000


# -- forward passes with more than three experts -----------------------------------------------------
@pytest.mark.parametrize("experts", [5, 7])
def test_resnet32_forward_many_experts(experts):
    torch.manual_seed(0)
    m = models.ResNet32Model(num_classes=10, num_experts=experts).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, experts, 10) and out["feat"].shape == (2, experts, 64)
    torch.testing.assert_close(out["output"], out["logits"].mean(1))
    names = set(m.state_dict())
    assert f"backbone.layer3s.{experts - 1}.4.conv2.weight" in names
    assert f"backbone.linears.{experts}.weight" not in names


def test_bottleneck_forward_five_experts():
    torch.manual_seed(0)
    m = models.ResNeXt50Model(num_classes=7, num_experts=5, reduce_dimension=True).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    assert out["logits"].shape == (1, 5, 7) and out["feat"].shape == (1, 5, 1536)
    torch.testing.assert_close(out["output"], out["logits"].mean(1))
    assert "backbone.layer4s.4.2.conv3.weight" in set(m.state_dict())


def test_zero_experts_refused():
    with pytest.raises(ValueError, match="num_experts"):
        models.ResNet32Model(num_experts=0)
    with pytest.raises(ValueError, match="num_experts"):
        meta("ResNet50Model", num_experts=0)
