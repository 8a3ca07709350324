"""Scoring test sets from one pass of logits: each test distribution (or protocol subset) is an
index subset of the test set, scored from its rows of the predictions."""
from collections import OrderedDict

import numpy as np
import torch

from model.metric import accuracy_from_confusion, confusion_matrix


def distribution_metrics(preds, targets, distributions, num_classes, shot_masks):
    """One confusion matrix (``torch.bincount``) per distribution over index subsets of the test set.

    Returns ordered ``{name: {"num_images", "top1", "many", "medium", "few"}}`` (absent groups omitted).
    """
    out = OrderedDict()
    for name, idx in distributions.items():
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        cm = confusion_matrix(preds[idx], targets[idx], num_classes)
        out[name] = {"num_images": int(idx.numel()), **accuracy_from_confusion(cm, shot_masks)}
    return out
