"""The held-out validation split of a long-tailed set drawn from a larger labelled pool.

CIFAR-LT and Digits-LT draw their long tail from a training split that holds more images than the
tail uses: for CIFAR-10-LT IR100 the left-over images are 0, 2003, 3204, ..., 4950 per class. They
are labelled, drawn like the test images, and never seen by the network, so they are the natural
validation data: model selection and the calibration of test-time methods fitted on them are not
fooled by memorised training images (docs/methods.md, "Validation split").

The rule (seeded, from the config alone, so older checkpoints get the same split):
- each class, in order 0..C-1, shuffles its left-over images with one ``RandomState(seed)`` and
  takes the first ``per_class`` (all of them when it has fewer);
- a class with no left-over image takes ``per_class`` of its own training images (shuffled by the
  same generator) and is reported as *in-sample*;
- ``per_class: "all"`` takes every left-over image; an in-sample class then takes as many of its
  training images as the largest left-over class has.
"""
import numbers

import numpy as np

from utils.errors import UserError

DEFAULT_SEED = 0


def parse_validation(value, option, default_per_class):
    """``data_loader.args.validation`` -> (per_class or None for no split, seed, explicit).

    Accepted: null/absent (the data module's default size, capped at what the classes can give),
    false (no split), a positive integer or "all" (images per class), or {"per_class": ..., "seed": ...}."""
    seed, explicit = DEFAULT_SEED, True
    if value is None:
        per_class, explicit = default_per_class, False
    elif value is False:
        return None, seed, explicit
    elif isinstance(value, dict):
        unknown = set(value) - {"per_class", "seed"}
        if unknown:
            raise UserError(f"{option}: unknown key(s) {', '.join(sorted(unknown))}; expected per_class and seed")
        explicit = "per_class" in value
        per_class = value.get("per_class", default_per_class)
        seed = value.get("seed", DEFAULT_SEED)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise UserError(f"{option}.seed {seed!r}: expected an integer >= 0")
    else:
        per_class = value
    if per_class is None:
        return None, seed, explicit
    if per_class != "all" and (not isinstance(per_class, numbers.Integral) or isinstance(per_class, bool)
                               or per_class < 1):
        raise UserError(f"{option}.per_class {per_class!r}: expected an integer >= 1 or \"all\"")
    return per_class, int(seed), explicit


def held_out_split(targets, keep, num_classes, per_class, seed=DEFAULT_SEED, option="validation.per_class",
                   explicit=True):
    """Indices into ``targets`` (the whole labelled pool) of the validation split.

    ``keep``: the indices the long tail selected (the training images). Returns (indices, counts
    per class, in-sample classes). An ``explicit`` ``per_class`` larger than any class can give is
    an error that says how many there are; a default one is capped."""
    targets = np.asarray(targets)
    in_train = np.zeros(len(targets), dtype=bool)
    in_train[np.asarray(keep, dtype=np.int64)] = True
    left = [np.where((targets == c) & ~in_train)[0] for c in range(num_classes)]
    trained = [np.where((targets == c) & in_train)[0] for c in range(num_classes)]
    most_left = max((len(ix) for ix in left), default=0)
    available = max([len(left[c]) or len(trained[c]) for c in range(num_classes)] or [0])
    if per_class == "all":
        per_class = most_left
    elif per_class > available and explicit:
        sizes = [len(ix) for ix in left]
        raise UserError(f"{option} {per_class}: larger than any class can give (at most {available} images per "
                        f"class are available; left over per class: {min(sizes)}..{max(sizes)})")
    rng = np.random.RandomState(seed)
    picked, counts, in_sample = [], [], []
    for c in range(num_classes):
        pool = left[c]
        if len(pool) == 0:
            pool = trained[c]
            if len(pool):
                in_sample.append(c)
        pool = pool.copy()
        rng.shuffle(pool)
        take = np.sort(pool[:per_class])
        picked.append(take)
        counts.append(int(len(take)))
    indices = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return indices.astype(np.int64), counts, in_sample


def describe(info):
    """One line for the log: size, source and the in-sample classes."""
    counts = info["counts"]
    line = (f"validation split: {sum(counts)} images ({info['source']}; per_class {info['per_class']}, "
            f"{min(counts) if counts else 0}..{max(counts) if counts else 0} per class)")
    if info.get("in_sample_classes"):
        line += (f"; in-sample (training images, no left-over ones) for class(es) "
                 f"{', '.join(map(str, info['in_sample_classes']))}")
    return line
