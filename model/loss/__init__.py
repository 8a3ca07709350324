"""Training losses, chosen by the config's ``loss.type``. Each is built with the per-class training
counts (``cls_num_list``) and called as ``loss(outputs, target)`` with the model's output dict."""
from model.loss.balanced_softmax import BalancedSoftmaxLoss
from model.loss.cross_entropy import CrossEntropyLoss
from model.loss.diverse_expert_loss import DiverseExpertLoss
from model.loss.logit_adjusted_loss import LogitAdjustedLoss
from model.loss.ride_loss import RIDELoss

__all__ = ["BalancedSoftmaxLoss", "CrossEntropyLoss", "DiverseExpertLoss", "RIDELoss"]
