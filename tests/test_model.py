import pytest
import torch

from model import ResNet32Model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet32_three_experts_reduced_parameter_count():
    assert n_params(ResNet32Model(num_classes=100, num_experts=3, reduce_dimension=True)) == 783_856


@pytest.mark.parametrize("experts", [1, 2, 3, 4])
def test_outputs_and_names(experts):
    m = ResNet32Model(num_classes=10, num_experts=experts, reduce_dimension=False)
    out = m(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, experts, 10)
    assert torch.allclose(out["output"], out["logits"].mean(1))
    names = set(m.state_dict())
    assert {"backbone.conv1.weight", "backbone.layer1.0.conv1.weight", f"backbone.layer2s.{experts - 1}.0.bn1.weight",
            f"backbone.layer3s.{experts - 1}.4.conv2.weight", f"backbone.linears.{experts - 1}.weight"} <= names


def test_cosine_classifier_scale_and_shape():
    m = ResNet32Model(num_classes=7, num_experts=1)
    w = m.backbone.linears[0].weight
    assert tuple(w.shape) == (64, 7)  # stored (in, out) like the release
    out = m(torch.randn(3, 3, 32, 32))["logits"]
    assert out.abs().max() <= 30 + 1e-4


def test_plain_linear_without_norm():
    m = ResNet32Model(num_classes=7, num_experts=2, use_norm=False)
    assert m.backbone.s == 1 and isinstance(m.backbone.linears[0], torch.nn.Linear)


def test_cosine_classifier_runs_in_float32_under_autocast():
    from model.normed_linear import NormedLinear
    torch.manual_seed(0)
    layer = NormedLinear(64, 10)
    feat = torch.randn(8, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(feat)
    assert out.dtype == torch.float32
    expected = torch.nn.functional.normalize(feat.float(), dim=1) @ torch.nn.functional.normalize(layer.weight, dim=0)
    torch.testing.assert_close(out, expected)
    # the check can fail: a bf16 product rounds the cosines visibly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = torch.nn.functional.normalize(feat, dim=1).mm(torch.nn.functional.normalize(layer.weight, dim=0))
    assert rounded.dtype == torch.bfloat16 and (rounded.float() - expected).abs().max() > 1e-4
