"""Test-agnostic test distributions (docs/methods.md#test-distributions): subsets of one test set, shared by test.py and
test_train.py.

A data module exposes ``test_distributions()`` -> ordered ``{name: indices into its test set}``.
Datasets whose test set holds every class equally (CIFAR, digits) generate them with
``generated_distributions``; list-based datasets can read them from list files instead.
"""
from collections import OrderedDict

import numpy as np

from utils.long_tail import img_num_per_cls, select_per_class

CIFAR_RATIOS = (50, 25, 10, 5, 2)


def distribution_names(ratios=CIFAR_RATIOS):
    """the column order: forward50 ... forward2, uniform, backward2 ... backward50."""
    ratios = sorted(ratios, reverse=True)
    return [f"forward{r}" for r in ratios] + ["uniform"] + [f"backward{r}" for r in reversed(ratios)]


def generated_distributions(test_targets, num_classes, ratios=CIFAR_RATIOS, img_max=None,
                            class_rank=None, seed=0):
    """Forward/backward subsets by the long-tail formula with a seed-``seed`` choice within each class.

    ``class_rank[c]`` is class c's rank by training frequency (0 = most frequent; default: the
    class index, as for CIFAR). ``img_max`` defaults to the images per class of the test set
    (100 for CIFAR-100, 1000 for CIFAR-10), as the release's generator takes ``len(data) / C``.
    """
    test_targets = np.asarray(test_targets)
    if img_max is None:
        img_max = len(test_targets) // num_classes
    rank = np.arange(num_classes) if class_rank is None else np.asarray(class_rank)
    order = np.argsort(rank, kind="stable")  # classes from most to least frequent in training
    out = OrderedDict()
    for name in distribution_names(ratios):
        if name == "uniform":
            out[name] = np.arange(len(test_targets))
            continue
        ratio = int(name.replace("forward", "").replace("backward", ""))
        by_rank = img_num_per_cls(img_max, num_classes, 1.0 / ratio, reverse=name.startswith("backward"))
        counts = np.zeros(num_classes, dtype=np.int64)
        counts[order] = by_rank
        # Classes are drawn in rank order, so the choice depends on the ranking, not on label values
        # (Places-LT's relabelled classes get the same images as the original ones; CIFAR: 0..C-1).
        out[name] = select_per_class(test_targets, counts, seed=seed, classes=order)
    return out


def select_distributions(available, request):
    """``all``, ``uniform`` or a comma list of names -> the requested names, in the published order."""
    if request in (None, "", "all"):
        return list(available)
    wanted = [n.strip() for n in str(request).split(",") if n.strip()]
    if not wanted:
        from utils.errors import UserError
        raise UserError(f"--distributions {request!r}: no distribution named; expected all, uniform or names like "
                        "forward50,backward50")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        from utils.errors import UserError
        raise UserError(f"--distributions: unknown distribution {unknown[0]!r}; expected all or names from "
                        f"{', '.join(available)}")
    return [n for n in available if n in wanted]
