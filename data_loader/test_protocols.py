"""Test protocols beyond the eleven distributions (docs/methods.md#protocols): seeded subsets of one test set.

Every function is a pure function of the test targets and a seed and returns an ordered
``{name: numpy int64 array of indices into the test set}`` (ascending indices within a subset),
like ``data_loader.test_distributions``. Draw k of a protocol uses the generator seeded with
``(seed, k)``, so it does not depend on how many draws are asked for.

- :func:`dirichlet`: pi ~ Dir(alpha 1_C), per-class counts of a size-n set ~ Multinomial(n, pi),
  capped by the images each class has (the excess is redrawn among the classes with images left,
  in proportion to pi, so the set has n images); images drawn without replacement.
- :func:`missing_classes`: a seeded subset of round(fraction C) classes (at least 1, at most C - 1)
  gets no image; the others keep all theirs.
- :func:`stream_order` / :func:`stream_batches`: the streaming protocol's seeded order and its
  batches.
- :func:`dirmixe`: DirMixE's own protocol: per profile (uniform, forward, backward) and trial, per-class
  counts drawn from a Dirichlet around a jittered exponential profile ranked by the training counts.
"""
from collections import OrderedDict
import numbers

import numpy as np


def _targets(targets, num_classes):
    t = np.asarray(targets).astype(np.int64).ravel()
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes {num_classes!r}: must be an integer >= 1")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"targets: labels must lie in [0, {num_classes - 1}] (got {t.min()}..{t.max()})")
    return t


def _count(name, value, minimum=1):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} {value!r}: must be an integer >= {minimum}")
    return int(value)


def _rng(seed, k):
    _count("seed", seed, minimum=0)
    return np.random.default_rng([int(seed), int(k)])


def _fmt(x):
    return f"{float(x):g}"


def capped_multinomial(rng, size, prior, available):
    """Multinomial(size, prior) counts, capped by ``available``; the excess is redrawn among the
    classes with images left (in proportion to prior there, or equally if prior is 0 on all)."""
    prior = np.asarray(prior, dtype=np.float64)
    available = np.asarray(available, dtype=np.int64)
    if size > available.sum():
        raise ValueError(f"size {size}: the test set has only {available.sum()} images")
    counts = rng.multinomial(size, prior / prior.sum())
    while True:
        excess = int(np.maximum(counts - available, 0).sum())
        counts = np.minimum(counts, available)
        if excess == 0:
            return counts
        room = available - counts
        p = np.where(room > 0, prior, 0.0)
        if p.sum() <= 0:
            p = (room > 0).astype(np.float64)
        counts = counts + rng.multinomial(excess, p / p.sum())


def dirichlet_draw(targets, num_classes, alpha, size, seed, k):
    """Draw k of :func:`dirichlet`: (pi [C], counts [C], indices)."""
    t = _targets(targets, num_classes)
    rng = _rng(seed, k)
    pi = rng.dirichlet(np.full(num_classes, float(alpha)))
    if not np.all(np.isfinite(pi)) or pi.sum() <= 0:  # alpha so small that every gamma draw underflowed
        pi = np.zeros(num_classes)
        pi[rng.integers(num_classes)] = 1.0
    available = np.bincount(t, minlength=num_classes)
    counts = capped_multinomial(rng, size, pi, available)
    picked = [rng.choice(np.flatnonzero(t == c), size=counts[c], replace=False) for c in range(num_classes)
              if counts[c]]
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return pi, counts, idx.astype(np.int64)


def dirichlet(targets, num_classes, alpha, draws, size, seed=0):
    """K = ``draws`` Dirichlet-shift test sets of ``size`` images: ``{"dirichlet{alpha}_{k}": indices}``."""
    t = _targets(targets, num_classes)
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha {alpha!r}: must be a number > 0")
    draws = _count("draws", draws)
    size = _count("size", size)
    if size > len(t):
        raise ValueError(f"size {size}: exceeds the test set ({len(t)} images)")
    out = OrderedDict()
    for k in range(draws):
        out[f"dirichlet{_fmt(alpha)}_{k}"] = dirichlet_draw(t, num_classes, alpha, size, seed, k)[2]
    return out


def missing_class_sets(num_classes, fraction, draws, seed=0):
    """The classes left out by each draw of :func:`missing_classes` (sorted arrays)."""
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise ValueError(f"fraction {fraction!r}: must be a number in (0, 1)")
    if num_classes < 2:
        raise ValueError(f"num_classes {num_classes}: leaving classes out needs at least 2")
    draws = _count("draws", draws)
    m = int(min(max(round(fraction * num_classes), 1), num_classes - 1))
    return [np.sort(_rng(seed, k).choice(num_classes, size=m, replace=False)) for k in range(draws)]


def missing_classes(targets, num_classes, fraction, draws, seed=0):
    """``{"missing{fraction}_{k}": indices of the images whose class is kept}``."""
    t = _targets(targets, num_classes)
    out = OrderedDict()
    for k, gone in enumerate(missing_class_sets(num_classes, fraction, draws, seed)):
        out[f"missing{_fmt(fraction)}_{k}"] = np.flatnonzero(~np.isin(t, gone)).astype(np.int64)
    return out


def stream_order(targets, seed=0):
    """The streaming protocol's order: a seeded permutation of the test-set indices."""
    n = len(np.asarray(targets).ravel())
    return _rng(seed, 0).permutation(n).astype(np.int64)


def stream_batches(order, batch_size):
    """Yield consecutive batches of ``batch_size`` indices of ``order`` (the last may be smaller)."""
    b = _count("batch_size", batch_size)  # checked on the call, not on the first batch
    order = np.asarray(order)
    return (order[s:s + b] for s in range(0, len(order), b))


def dirmixe_profile(train_counts, per_class, ir, backward=False):
    """The exponential profile of DirMixE's protocol, ranked by the training counts: the class with
    the r-th largest training count (ties by class index) gets int(per_class * (1/ir)^(r/(C-1)))
    (forward), or the profile reversed (backward); ir 1 is uniform."""
    counts = np.asarray(train_counts, dtype=np.float64)
    c = counts.size
    r = np.arange(c, dtype=np.float64)
    if backward:
        r = (c - 1) - r
    shape = np.floor(per_class * (1.0 / ir) ** (r / max(c - 1, 1)))
    profile = np.empty(c)
    profile[np.argsort(-counts, kind="stable")] = shape
    return profile


def dirmixe_draw(targets, num_classes, train_counts, ir, backward, concentration, seed, k):
    """Draw k of :func:`dirmixe`: (counts [C], indices). The profile's entries are jittered by a
    uniform +-5 %, scaled to sum to ``concentration`` and used as the concentration of a Dirichlet;
    the drawn pi gives class c max(int(pi_c / max(pi) * per_class), 1) images, capped by the images
    the class has (per_class: the test set's images per class)."""
    t = _targets(targets, num_classes)
    if len(train_counts) != num_classes:
        raise ValueError(f"train_counts: {len(train_counts)} classes, expected {num_classes}")
    rng = _rng(seed, k)
    per_class = len(t) / num_classes
    profile = dirmixe_profile(train_counts, per_class, ir, backward)
    alpha = np.maximum(profile * (1 + (rng.random(num_classes) - 0.5) * 0.1), 1e-7)
    pi = rng.dirichlet(alpha * (concentration / alpha.sum()))
    wanted = np.maximum((pi / pi.max() * per_class).astype(np.int64), 1)
    counts = np.minimum(wanted, np.bincount(t, minlength=num_classes))
    picked = [rng.choice(np.flatnonzero(t == c), size=counts[c], replace=False) for c in range(num_classes)
              if counts[c]]
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return counts, idx.astype(np.int64)


def dirmixe(targets, num_classes, train_counts, ir=100, trials=3, concentration=None, seed=0):
    """DirMixE's protocol: ``trials`` test sets per profile, ``{"dirmixe_uniform_{t}",
    "dirmixe_forward{ir}_{t}", "dirmixe_backward{ir}_{t}": indices}``. ``concentration``: the
    Dirichlet's total concentration (default: the test set's images per class)."""
    t = _targets(targets, num_classes)
    if not isinstance(ir, numbers.Real) or isinstance(ir, bool) or not np.isfinite(ir) or ir < 1:
        raise ValueError(f"ir {ir!r}: must be a number >= 1")
    trials = _count("trials", trials)
    if concentration is None:
        concentration = len(t) / num_classes
    if (not isinstance(concentration, numbers.Real) or isinstance(concentration, bool)
            or not np.isfinite(concentration) or concentration <= 0):
        raise ValueError(f"concentration {concentration!r}: must be a number > 0")
    out = OrderedDict()
    profiles = (("uniform", 1.0, False), (f"forward{_fmt(ir)}", ir, False), (f"backward{_fmt(ir)}", ir, True))
    for p, (name, ratio, backward) in enumerate(profiles):
        for trial in range(trials):
            out[f"dirmixe_{name}_{trial}"] = dirmixe_draw(t, num_classes, train_counts, ratio, backward,
                                                          concentration, seed, p * trials + trial)[1]
    return out
