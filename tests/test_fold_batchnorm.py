"""Batch norm folded into the convolutions for evaluation (model/fold_batchnorm.py,
docs/performance.md#folded-batch-norm): the same logits within float tolerance on both backbone
families, the network copied (never changed), a fold that would change the function refused, and
the evaluation build path folding by default and not with trainer.fold_batchnorm false."""
import pytest
import torch
from torch import nn

import model as models
from model.fold_batchnorm import folded_copy
from trainer.build import load_trained
from utils.checkpoint import load_checkpoint

FP32_TOLERANCE = 1e-4  # what docs/performance.md states for fp32 logits (cosine classifier, s = 30)


def with_statistics(net, seed=0):
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return net.eval()


def batch_norms(net):
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("cls, kwargs, size, layers", [
    ("ResNet32Model", {"num_classes": 10, "num_experts": 3}, 32, 71),
    ("ResNeXt50Model", {"num_classes": 10, "num_experts": 2, "reduce_dimension": True}, 64, 1 + 10 + 13 + 2 * 29),
])
def test_folded_copy_gives_the_same_logits_and_leaves_the_network_alone(cls, kwargs, size, layers):
    torch.manual_seed(0)
    net = with_statistics(getattr(models, cls)(**kwargs))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, size, size)
    folded, count = folded_copy(net, x[:2])
    assert count == layers == batch_norms(net) and batch_norms(folded) == 0
    with torch.no_grad():
        a, b = net(x)["logits"], folded(x)["logits"]
    assert (a - b).abs().max() < FP32_TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the network is not changed
    assert batch_norms(net) == layers


class SkipFromConv(nn.Module):
    """A convolution whose output feeds its batch norm and a skip connection: folding would change it."""

    num_experts = 1

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        c = self.conv(x)
        logits = (self.bn(c) + c).mean((2, 3)).unsqueeze(1)
        return {"output": logits[:, 0], "logits": logits}


def test_a_fold_that_would_change_the_function_is_refused():
    net = with_statistics(SkipFromConv())
    same, count = folded_copy(net, torch.randn(2, 3, 8, 8))
    assert same is net and count == 0


def test_evaluation_folds_by_default_and_checkpoints_do_not_change(small_run):
    _, _, ckpt = small_run
    stored = ckpt.read_bytes()
    folded = load_trained(ckpt)
    plain = load_trained(ckpt, None, [("trainer.fold_batchnorm", False, "--set")])
    assert folded.perf.fold_batchnorm and batch_norms(folded.net) == 0
    assert not plain.perf.fold_batchnorm and batch_norms(plain.net) > 0
    assert ckpt.read_bytes() == stored
    assert set(load_checkpoint(ckpt)["state_dict"]) == set(plain.net.state_dict())  # names as trained
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a, b = plain.net(plain.perf.prepare_input(x, "cpu")), folded.net(folded.perf.prepare_input(x, "cpu"))
    assert (a["logits"] - b["logits"]).abs().max() < FP32_TOLERANCE  # called outside autocast: fp32


def test_the_ceiling_bench_reads_batch_norm_share_from_the_as_trained_pass():
    """speed.py ceiling's inference rows: batch norm has a share of the as-trained pass's operator
    time and none of the folded one, where all 71 are folded."""
    from bench.speed.ceiling import eval_rate
    from trainer.build import resolve_config
    from utils.performance import Performance
    cfg, _ = resolve_config("configs/config_cifar10_ir100_tade.json", sections=("arch", "loss"))
    cfg["arch"]["args"]["num_classes"] = 10
    rate, share, folded = eval_rate(cfg, torch.device("cpu"), Performance(), batch=4, steps=1, fold=False)
    assert rate > 0 and 0 < share < 1 and folded == 0
    rate, share, folded = eval_rate(cfg, torch.device("cpu"), Performance(), batch=4, steps=1, fold=True)
    assert rate > 0 and share == 0 and folded == 71
