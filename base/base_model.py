"""What a model is: the contract every network in ``model/`` honours (found by ``arch.type``).

- ``forward(x)`` returns a dict: ``output`` [B, C] (the ensemble prediction, the mean of the
  experts' logits), ``logits`` [B, E, C] (each expert's logits) and ``feat`` [B, E, D] (each
  expert's features).
- ``num_experts``: E, the number of experts (1 for a plain network).
- ``is_classifier(name)``: whether a parameter (by its ``named_parameters`` name) belongs to an
  expert's classifier; ``optimizer.backbone_lr`` trains these at the optimiser's lr and the rest
  at ``backbone_lr``, and a pretrained start leaves them random.

The output dict is checked at every forward pass of training and evaluation (:func:`check_outputs`;
shapes only, so without a device synchronisation).
"""
from abc import ABC, abstractmethod

import torch
from torch import nn

from utils.errors import UserError


class ExpertModel(nn.Module, ABC):
    """A multi-expert network; subclasses build it in ``__init__`` and implement ``forward``."""

    @property
    @abstractmethod
    def num_experts(self):
        """The number of experts E (the ``logits`` output is [B, E, C])."""

    @abstractmethod
    def forward(self, x):
        """Images [B, 3, H, W] -> {"output": [B, C], "logits": [B, E, C], "feat": [B, E, D]}."""

    def is_classifier(self, name):
        """True for the parameters of the experts' classifiers (default: a ``linears`` module)."""
        return "linears" in name.split(".")

    def classifier_parameters(self):
        return [p for n, p in self.named_parameters() if self.is_classifier(n)]


def average_experts(logits):
    """The plain expert average, the ensemble prediction of this contract: per-expert logits
    [B, E, C] -> their mean over the experts [B, C] (in the logits' dtype). Every place that averages
    the experts calls this (the models' ``output``, test.py, the test-time methods, calibration)."""
    return logits.mean(1)


def expert_outputs(feature_maps, linears, scale):
    """The contract's dict from the experts' last feature maps: each map [B, D, H, W] is averaged
    over space into the expert's features [B, D], its classifier (``linears[k]``) times ``scale``
    gives its logits [B, C]. ``feature_maps`` yields one map per expert, in order."""
    logits, feats = [], []
    for feature_map, linear in zip(feature_maps, linears):
        feat = torch.nn.functional.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        feats.append(feat)
        logits.append(linear(feat) * scale)
    logits = torch.stack(logits, dim=1)
    return {"output": average_experts(logits), "logits": logits, "feat": torch.stack(feats, dim=1)}


def check_outputs(outputs, net):
    """The contract of a model's output dict: ``output`` [B, C] and ``logits`` [B, E, C], E the
    model's ``num_experts``; one line naming the model and the key if not."""
    net = getattr(net, "module", net)  # DataParallel / DDP
    name = type(net).__name__
    if not isinstance(outputs, dict):
        raise UserError(f"model {name}: forward returned {type(outputs).__name__}; expected a dict with "
                        "'output' [B, C] and 'logits' [B, E, C]")
    experts = getattr(net, "num_experts", None)
    for key, dims in (("output", 2), ("logits", 3)):
        value = outputs.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != dims:
            got = f"of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else (
                "nothing" if value is None else type(value).__name__)
            raise UserError(f"model {name}: forward's {key!r} is {got}; expected a tensor "
                            f"{'[B, C]' if dims == 2 else '[B, E, C]'}")
    out, logits = outputs["output"].shape, outputs["logits"].shape
    if logits[0] != out[0] or logits[2] != out[1] or (isinstance(experts, int) and logits[1] != experts):
        raise UserError(f"model {name}: forward's 'logits' {list(logits)} does not fit 'output' {list(out)} and "
                        f"num_experts {experts}; expected [B, E, C] with 'output' [B, C]")
    return outputs
