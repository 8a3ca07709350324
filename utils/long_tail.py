"""Long-tailed class counts and the seed-0 selection rule of the reference release (docs/methods.md#training-sets,
#test-distributions)."""
import numpy as np

# Shot groups on training counts: many > 100, medium 20..100, few < 20 (docs/methods.md#training-sets).
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20


def img_num_per_cls(img_max, num_classes, imb_factor, reverse=False):
    """``n_i = int(img_max * imb_factor ** (i / (C - 1)))``; reverse uses exponent (C-1-i)/(C-1)."""
    if num_classes == 1:
        return [int(img_max)]
    counts = []
    for i in range(num_classes):
        exponent = (num_classes - 1 - i if reverse else i) / (num_classes - 1)
        counts.append(int(img_max * imb_factor ** exponent))
    return counts


def select_per_class(targets, counts, seed=0, classes=None):
    """Indices of the first ``counts[c]`` images of each class after a per-class shuffle.

    One ``RandomState(seed)`` serves all classes in order ``classes`` (default 0..C-1), as the
    release's ``np.random.seed(0)`` + ``np.random.shuffle`` did, without touching the global RNG.
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    classes = range(len(counts)) if classes is None else classes
    picked = []
    for c in classes:
        idx = np.where(targets == c)[0]
        if len(idx) < counts[c]:
            raise ValueError(f"class {c} has {len(idx)} images, {counts[c]} requested")
        rng.shuffle(idx)
        picked.append(idx[: counts[c]])
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def shot_masks(cls_num_list, many=MANY_THRESHOLD, few=FEW_THRESHOLD):
    """Boolean class masks of the many / medium / few groups (by training counts)."""
    counts = np.asarray(cls_num_list)
    return {
        "many": counts > many,
        "medium": (counts <= many) & (counts >= few),
        "few": counts < few,
    }
