"""Top-1 and many/medium/few from a confusion matrix (docs/methods.md#metrics), all as tensors, reduced once."""
import torch


def confusion_matrix(preds, targets, num_classes):
    """[C_true, C_pred] counts with one ``torch.bincount``."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_from_confusion(cm, shot_masks=None):
    """{'top1', 'many', 'medium', 'few'} as floats in [0, 1]. A group with no class in it, or
    whose classes have no test image, is absent (never NaN). Classes absent from the test subset
    do not count in their group's mean."""
    cm = cm.double()
    per_class_total = cm.sum(1)
    total = per_class_total.sum()
    out = {"top1": float(cm.diag().sum() / total) if total > 0 else None}
    if shot_masks:
        present = per_class_total > 0
        per_class = torch.where(present, cm.diag() / per_class_total.clamp(min=1), torch.zeros_like(total))
        for name, mask in shot_masks.items():
            sel = torch.as_tensor(mask, device=cm.device) & present
            if sel.any():
                out[name] = float(per_class[sel].mean())
    return {k: v for k, v in out.items() if v is not None}
