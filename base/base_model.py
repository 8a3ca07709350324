"""What a model is: the contract every network in ``model/`` honours (found by ``arch.type``).

- ``forward(x)`` returns a dict: ``output`` [B, C] (the ensemble prediction, the mean of the
  experts' logits), ``logits`` [B, E, C] (each expert's logits) and ``feat`` [B, E, D] (each
  expert's features).
- ``num_experts``: E, the number of experts (1 for a plain network).
- ``is_classifier(name)``: whether a parameter (by its ``named_parameters`` name) belongs to an
  expert's classifier; ``optimizer.backbone_lr`` trains these at the optimiser's lr and the rest
  at ``backbone_lr``, and a pretrained start leaves them random.
"""
from abc import ABC, abstractmethod

from torch import nn


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
