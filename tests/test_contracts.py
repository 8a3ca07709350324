"""Contracts are checked where a piece hands its result back: a test-time method's result right after
``adapt()``, a model's output dict at every forward pass, a loss's value at every training step; a
piece that breaks its contract gets one line naming it and the key, before any further work."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from base.base_loss import LTLoss, check_loss
from base.base_model import ExpertModel, check_outputs
from base.base_test_time import OnlineAdapter, TestTimeMethod, check_result
from trainer.adaptation import run_method, run_stream
from trainer.forward import network_outputs
from trainer.train_step import forward_loss
from utils.errors import UserError


class Returns(TestTimeMethod):
    def __init__(self, result):
        self.result, self.calls = result, 0

    def adapt(self, logits, ctx):
        self.calls += 1
        return self.result(logits) if callable(self.result) else self.result


def trained(num_classes=4, num_experts=2):
    data = SimpleNamespace(cls_num_list=[8, 4, 2, 1][:num_classes], num_classes=num_classes,
                           shot_masks=lambda: {}, has_validation=False)
    return SimpleNamespace(net=SimpleNamespace(num_experts=num_experts), data=data, perf=None)


def run(method, n=6, num_classes=4):
    logits = torch.randn(n, 2, num_classes)
    targets = torch.arange(n) % num_classes
    test_sets = {"first": np.arange(3), "second": np.arange(3, n)}
    return run_method(method, trained(num_classes), logits, targets, test_sets, "cpu")


@pytest.mark.parametrize("result,fragments", [
    ({"weights": [0.5, 0.5]}, ["no 'scores'", "[n, C]"]),
    (lambda z: {"scores": z.mean(1), "weights": torch.ones(2)}, ["'weights' as Tensor", "JSON-able"]),
    (lambda z: {"scores": z.mean(1), "prior": [torch.ones(())]}, ["'prior' as list", "JSON-able"]),
    (lambda z: {"scores": z.mean(1)[:, :3]}, ["'scores' of shape [3, 3]", "[3, 4]"]),
    (lambda z: {"scores": z.mean(1).tolist()}, ["'scores' of shape list"]),
    (lambda z: z.mean(1), ["returned Tensor", "expected a dict"]),
], ids=["no-scores", "tensor-fact", "nested-tensor", "wrong-shape", "list-scores", "not-a-dict"])
def test_a_broken_test_time_result_stops_at_the_first_test_set(result, fragments):
    method = Returns(result)
    with pytest.raises(UserError) as e:
        run(method)
    assert method.calls == 1 and "\n" not in str(e.value)
    assert "test-time method Returns" in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)


@pytest.mark.parametrize("scores", [lambda z: z.mean(1), lambda z: z.mean(1).softmax(1),
                                    lambda z: z.mean(1).log_softmax(1)], ids=["logits", "probs", "log-probs"])
def test_scores_are_only_ranked(scores):
    rows = run(Returns(lambda z: {"scores": scores(z), "note": "fine", "weights": [1, 2]}))
    assert rows["first"]["top1"] == rows["first"]["top1_average"] and rows["second"]["weights"] == [1, 2]


def test_check_result_passes_a_good_result_through():
    out = {"scores": torch.zeros(2, 3), "online_scores": torch.zeros(2, 3), "history": [torch.ones(1)], "x": 1.5}
    assert check_result(out, "M", 2, 3) is out  # "history" is not written into the row, so it may hold tensors
    with pytest.raises(UserError, match="'online_scores' of shape \\[2, 2\\]"):
        check_result({**out, "online_scores": torch.zeros(2, 2)}, "M", 2, 3)


class Streams(TestTimeMethod):
    def __init__(self, step, summary=None):
        self._step, self._summary = step, summary or {}

    def adapt(self, logits, ctx):
        return {"scores": logits.mean(1)}

    def online(self, ctx):
        method = self

        class Adapter(OnlineAdapter):
            def step(self, logits):
                return method._step(logits)

            def summary(self):
                return method._summary

        return Adapter()


@pytest.mark.parametrize("method,fragment", [
    (Streams(lambda z: z.mean(1)[:, :2]), "online step returned scores of shape [4, 2]; expected a tensor [4, 4]"),
    (Streams(lambda z: z.mean(1), {"prior": torch.ones(4)}), "its online summary() returned 'prior' as Tensor"),
], ids=["step-shape", "summary-tensor"])
def test_a_broken_online_adapter_is_one_line_naming_the_method(method, fragment):
    logits, targets = torch.randn(8, 2, 4), torch.arange(8) % 4
    with pytest.raises(UserError) as e:
        run_stream(method, trained(), logits, targets, [4], "cpu")
    assert str(e.value).startswith("test-time method Streams: ") and fragment in str(e.value), str(e.value)


class Plain(ExpertModel):
    def __init__(self, forward, experts=2):
        super().__init__()
        self.lin, self._forward, self.experts = nn.Linear(3, 4), forward, experts

    @property
    def num_experts(self):
        return self.experts

    def forward(self, x):
        return self._forward(self, x)


def good(self, x):
    logits = torch.stack([self.lin(x)] * self.experts, 1)
    return {"output": logits.mean(1), "logits": logits, "feat": logits}


@pytest.mark.parametrize("forward,fragment", [
    (lambda self, x: self.lin(x), "forward returned Tensor; expected a dict"),
    (lambda self, x: {"output": self.lin(x)}, "forward's 'logits' is nothing"),
    (lambda self, x: {"output": self.lin(x), "logits": self.lin(x)}, "'logits' is of shape [5, 4]"),
    (lambda self, x: {"output": self.lin(x), "logits": torch.stack([self.lin(x)] * 3, 1)}, "num_experts 2"),
], ids=["tensor", "no-logits", "2d-logits", "expert-count"])
def test_a_broken_model_output_is_one_line_naming_the_model_and_key(forward, fragment):
    net = Plain(forward)
    with pytest.raises(UserError) as e:
        network_outputs(net, torch.randn(5, 3), None, torch.device("cpu"))
    assert str(e.value).startswith("model Plain: ") and fragment in str(e.value), str(e.value)
    with pytest.raises(UserError, match="model Plain"):
        forward_loss(net, lambda out, y: out["output"].sum(), torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


class Sum(LTLoss):
    def __init__(self, cls_num_list, value):
        super().__init__(cls_num_list)
        self.value = value

    def forward(self, outputs, target):
        return self.value(outputs)


@pytest.mark.parametrize("value,fragment", [
    (lambda out: out["output"].sum(1), "a torch.float32 tensor of shape [5]"),
    (lambda out: 3.0, "forward returned float"),
    (lambda out: out["output"].sum().long(), "torch.int64 tensor of shape []"),
    (lambda out: torch.tensor(1.0), "without autograd history"),
], ids=["vector", "float", "integer", "no-grad"])
def test_a_broken_loss_value_is_one_line_naming_the_loss(value, fragment):
    with pytest.raises(UserError) as e:
        forward_loss(Plain(good), Sum([3, 1, 1, 1], value), torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    assert str(e.value).startswith("loss Sum: ") and fragment in str(e.value), str(e.value)
    mixed = (torch.tensor(0.3), torch.randperm(5))
    with pytest.raises(UserError, match="loss Sum"):
        forward_loss(Plain(good), Sum([3, 1, 1, 1], value), torch.randn(5, 3), torch.zeros(5, dtype=torch.long), mixed)


def test_good_pieces_pass_unchanged():
    net, x = Plain(good), torch.randn(5, 3)
    out, loss = forward_loss(net, Sum([1, 1, 1, 1], lambda o: o["output"].square().mean()), x,
                             torch.zeros(5, dtype=torch.long))
    assert set(out) == {"output", "logits", "feat"} and loss.dim() == 0 and loss.requires_grad
    assert check_outputs(out, net) is out and check_loss(loss, None) is loss
