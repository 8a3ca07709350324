"""Protocol subsets (docs/methods.md#protocols): Dirichlet shift, missing classes, streaming order and batches."""
import numpy as np
import pytest

from data_loader.test_protocols import (capped_multinomial, dirichlet, dirichlet_draw, missing_class_sets,
                                        missing_classes, stream_batches, stream_order)

C = 10


def test_targets(per_class=100, seed=0):
    """A shuffled balanced test set (CIFAR-10's layout, smaller)."""
    t = np.repeat(np.arange(C), per_class)
    np.random.RandomState(seed).shuffle(t)
    return t


test_targets.__test__ = False  # a helper, not a test
TARGETS = test_targets()


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_dirichlet_subsets_are_seeded_inside_the_test_set_and_have_the_drawn_counts(alpha):
    sets = dirichlet(TARGETS, C, alpha, draws=4, size=300, seed=7)
    assert list(sets) == [f"dirichlet{alpha:g}_{k}" for k in range(4)]
    again = dirichlet(TARGETS, C, alpha, draws=4, size=300, seed=7)
    other = dirichlet(TARGETS, C, alpha, draws=4, size=300, seed=8)
    available = np.bincount(TARGETS, minlength=C)
    for k, (name, idx) in enumerate(sets.items()):
        assert idx.dtype == np.int64 and np.array_equal(idx, again[name])
        assert not np.array_equal(idx, other[name])
        assert len(idx) == 300 and len(np.unique(idx)) == 300  # without replacement
        assert idx.min() >= 0 and idx.max() < len(TARGETS) and np.all(np.diff(idx) > 0)
        pi, counts, idx_k = dirichlet_draw(TARGETS, C, alpha, 300, 7, k)
        assert np.array_equal(idx_k, idx)
        assert np.array_equal(np.bincount(TARGETS[idx], minlength=C), counts)
        assert np.all(counts <= available) and counts.sum() == 300
        assert pi.sum() == pytest.approx(1.0)
    # Draw k does not depend on how many draws are asked for.
    assert np.array_equal(dirichlet(TARGETS, C, alpha, draws=1, size=300, seed=7)[f"dirichlet{alpha:g}_0"],
                          sets[f"dirichlet{alpha:g}_0"])


def test_dirichlet_concentration_shapes_the_counts():
    def mean_max_share(alpha):
        return np.mean([dirichlet_draw(TARGETS, C, alpha, 200, 3, k)[1].max() / 200 for k in range(20)])

    assert mean_max_share(0.1) > 0.45 > mean_max_share(1.0) > mean_max_share(100.0)
    assert mean_max_share(100.0) < 0.2


def test_counts_are_capped_by_availability_and_the_excess_is_redrawn():
    rng = np.random.default_rng(0)
    counts = capped_multinomial(rng, 250, np.array([1.0] + [0.0] * (C - 1)), np.full(C, 100))
    assert counts.sum() == 250 and counts[0] == 100 and counts.max() == 100
    sets = dirichlet(TARGETS, C, 0.01, draws=5, size=900, seed=1)  # near-one-hot priors, 100 images per class
    for idx in sets.values():
        assert len(idx) == 900 and np.bincount(TARGETS[idx], minlength=C).max() <= 100


def test_dirichlet_bad_input():
    with pytest.raises(ValueError, match="size 1001: exceeds the test set"):
        dirichlet(TARGETS, C, 1.0, draws=2, size=1001)
    for alpha in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha .*must be a number > 0"):
            dirichlet(TARGETS, C, alpha, draws=2, size=10)
    with pytest.raises(ValueError, match="draws 0: must be an integer >= 1"):
        dirichlet(TARGETS, C, 1.0, draws=0, size=10)
    with pytest.raises(ValueError, match="size 0"):
        dirichlet(TARGETS, C, 1.0, draws=1, size=0)
    with pytest.raises(ValueError, match="labels must lie in"):
        dirichlet(TARGETS, 5, 1.0, draws=1, size=10)


@pytest.mark.parametrize("fraction,missing", [(0.3, 3), (0.01, 1), (0.99, 9)])
def test_missing_classes_drop_whole_classes_and_keep_the_rest(fraction, missing):
    sets = missing_classes(TARGETS, C, fraction, draws=3, seed=2)
    gone = missing_class_sets(C, fraction, draws=3, seed=2)
    assert list(sets) == [f"missing{fraction:g}_{k}" for k in range(3)]
    available = np.bincount(TARGETS, minlength=C)
    for (name, idx), g in zip(sets.items(), gone):
        assert len(g) == missing
        counts = np.bincount(TARGETS[idx], minlength=C)
        assert np.all(counts[g] == 0)
        kept = np.setdiff1d(np.arange(C), g)
        assert np.array_equal(counts[kept], available[kept])
        assert np.all(np.diff(idx) > 0) and idx.max() < len(TARGETS)
        assert np.array_equal(idx, missing_classes(TARGETS, C, fraction, draws=3, seed=2)[name])
    assert any(not np.array_equal(a, b) for a, b in zip(gone, missing_class_sets(C, fraction, 3, seed=3)))


def test_missing_classes_bad_input():
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction .*must be a number in \\(0, 1\\)"):
            missing_classes(TARGETS, C, fraction, draws=1)
    with pytest.raises(ValueError, match="draws"):
        missing_classes(TARGETS, C, 0.5, draws=0)


def test_stream_order_is_a_seeded_permutation_and_batches_cover_it_in_order():
    order = stream_order(TARGETS, seed=4)
    assert np.array_equal(np.sort(order), np.arange(len(TARGETS)))
    assert np.array_equal(order, stream_order(TARGETS, seed=4))
    assert not np.array_equal(order, stream_order(TARGETS, seed=5))
    assert not np.array_equal(order, np.arange(len(TARGETS)))
    batches = list(stream_batches(order, 128))
    assert [len(b) for b in batches] == [128] * 7 + [1000 - 7 * 128]
    assert np.array_equal(np.concatenate(batches), order)
    assert [len(b) for b in stream_batches(order, 1)] == [1] * 1000


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_stream_batches_reject_a_bad_batch_size_on_the_call(bad):
    with pytest.raises(ValueError, match="batch_size .*must be an integer >= 1"):
        stream_batches(np.arange(10), bad)  # raised before any batch is asked for
