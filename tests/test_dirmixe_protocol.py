"""DirMixE's test protocol (``--protocol dirmixe``, docs/methods.md#protocols): names and number of
test sets, counts drawn as its authors' generator draws them, forward and backward profiles ranked by
the training counts, seeded draws, and its options' bad values as one-line errors."""
import argparse

import numpy as np
import pytest

from data_loader.test_protocols import dirmixe, dirmixe_draw, dirmixe_profile
from trainer import protocols
from trainer.protocols import add_protocol_args, group_of
from utils.cli import ArgumentParser
from utils.errors import UserError

C = 10
TARGETS = np.repeat(np.arange(C), 40)  # a balanced test set: 40 images per class
TRAIN = [20, 500, 30, 300, 8, 100, 60, 13, 180, 5]  # unsorted: the profile follows the ranks


def test_nine_sets_named_by_profile_and_trial():
    sets = dirmixe(TARGETS, C, TRAIN, ir=100, trials=3, seed=0)
    assert list(sets) == [f"dirmixe_{p}_{t}" for p in ("uniform", "forward100", "backward100") for t in range(3)]
    assert [group_of(n) for n in list(sets)[::3]] == ["dirmixe_uniform", "dirmixe_forward100", "dirmixe_backward100"]
    for idx in sets.values():
        counts = np.bincount(TARGETS[idx], minlength=C)
        assert counts.min() >= 1 and counts.max() == 40  # the largest pi gets every image of its class
        assert np.all(np.diff(idx) > 0)  # ascending, no repeats


def test_profile_is_ranked_by_the_training_counts():
    forward = dirmixe_profile(TRAIN, 40, 100)
    ranks = np.argsort(-np.asarray(TRAIN), kind="stable")
    expected = np.floor(40 * 0.01 ** (np.arange(C) / (C - 1)))
    np.testing.assert_array_equal(forward[ranks], expected)
    np.testing.assert_array_equal(dirmixe_profile(TRAIN, 40, 100, backward=True)[ranks], expected[::-1])
    np.testing.assert_array_equal(dirmixe_profile(TRAIN, 40, 1), np.full(C, 40.0))


def test_a_draw_is_its_authors_generator_step_by_step():
    """Jitter by 1 + (u - 0.5) / 10, floor at 1e-7 (two profile entries are 0 here), scale to the
    concentration, pi ~ Dir, max(int(pi / max(pi) n), 1)."""
    counts, _ = dirmixe_draw(TARGETS, C, TRAIN, 100, False, 5000.0, seed=7, k=4)
    rng = np.random.default_rng([7, 4])
    profile = dirmixe_profile(TRAIN, 40, 100)
    assert (profile == 0).sum() == 2
    alpha = np.maximum(profile * (1 + (rng.random(C) - 0.5) * 0.1), 1e-7)
    pi = rng.dirichlet(alpha * 5000.0 / alpha.sum())
    np.testing.assert_array_equal(counts, [max(int(p / pi.max() * 40), 1) for p in pi])


def test_forward_favours_the_head_and_backward_the_tail():
    head, tail = int(np.argmax(TRAIN)), int(np.argmin(TRAIN))
    sets = dirmixe(TARGETS, C, TRAIN, ir=100, trials=3, concentration=10000, seed=1)
    for t in range(3):
        fwd = np.bincount(TARGETS[sets[f"dirmixe_forward100_{t}"]], minlength=C)
        bwd = np.bincount(TARGETS[sets[f"dirmixe_backward100_{t}"]], minlength=C)
        assert fwd[head] == 40 and fwd[tail] <= 2
        assert bwd[tail] == 40 and bwd[head] <= 2


def test_draws_are_seeded_and_capped_by_the_images_a_class_has():
    assert all(np.array_equal(a, b) for a, b in zip(dirmixe(TARGETS, C, TRAIN, seed=3).values(),
                                                     dirmixe(TARGETS, C, TRAIN, seed=3).values()))
    assert not all(np.array_equal(a, b) for a, b in zip(dirmixe(TARGETS, C, TRAIN, seed=3).values(),
                                                         dirmixe(TARGETS, C, TRAIN, seed=4).values()))
    short = np.concatenate([np.repeat(np.arange(8), 40), np.repeat(8, 5), [9]])  # class 8: 5 images, 9: one
    for idx in dirmixe(short, C, TRAIN, seed=0).values():
        counts = np.bincount(short[idx], minlength=C)
        assert np.all(counts <= np.bincount(short, minlength=C)) and counts[9] == 1


class Data:
    num_classes = C
    test_targets = TARGETS
    cls_num_list = TRAIN


def args_for(*argv):
    return add_protocol_args(ArgumentParser()).parse_args(["--protocol", "dirmixe", *argv])


def test_the_command_line_protocol_defaults_to_three_draws_at_ir_100():
    sets = protocols.test_sets(args_for(), Data())
    assert len(sets) == 9 and "dirmixe_backward100_2" in sets
    assert list(protocols.test_sets(args_for("--ir", "50", "--draws", "2"), Data())) == [
        f"dirmixe_{p}_{t}" for p in ("uniform", "forward50", "backward50") for t in range(2)]
    assert len(protocols.test_sets(add_protocol_args(argparse.ArgumentParser()).parse_args(
        ["--protocol", "dirichlet", "--size", "20", "--alpha", "1"]), Data())) == 10  # the others keep 10


@pytest.mark.parametrize("argv,fragment", [
    (["--ir", "0.5"], "--ir 0.5: expected an imbalance ratio from 1 to 10000"),
    (["--concentration", "0"], "--concentration 0: expected a number > 0"),
    (["--draws", "0"], "argument --draws: expected an integer >= 1, got '0'"),
])
def test_bad_values_are_one_line_errors(argv, fragment):
    with pytest.raises(UserError) as e:
        protocols.test_sets(args_for(*argv), Data())
    assert fragment in str(e.value) and "\n" not in str(e.value)
