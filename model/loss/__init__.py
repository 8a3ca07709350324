"""Training losses, chosen by the config's ``loss.type`` (contract: base/base_loss.py). Each is
built with the per-class training counts (``cls_num_list``) and called as ``loss(outputs, target)``
with the model's output dict. Every ``LTLoss`` defined in a module of this package is available by
its class name."""
from base.base_loss import LTLoss
from utils.registry import export_package

__all__ = export_package(__name__, globals(), LTLoss)
