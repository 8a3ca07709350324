"""Calibration families with fewer effective parameters than a free per-class bias (two-parameter
prior-structured bias; a free bias shrunk by a cross-fitted ridge), and the one-line refusal of a
validation split too small to calibrate."""
import math

import numpy as np
import pytest
import torch

from base.base_test_time import TestTimeContext as Context
from trainer.test_time import EMPrior, SafePrior
from trainer.test_time.prior_calibration import cross_fit_kappa, fit_family, folds
from utils.errors import UserError

C = 5
PRIOR = np.array([0.5, 0.25, 0.13, 0.08, 0.04])


def _planted(n_per_class, bias, temperature=1.5, seed=0):
    """Logits z and labels drawn from softmax(z / T + bias), balanced classes."""
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), n_per_class)
    z = g.normal(0, 1.0, size=(len(y), C)) * 2.0
    z[np.arange(len(y)), y] += 3.0  # informative logits
    p = torch.softmax(torch.tensor(z / temperature + bias), 1).numpy()
    labels = np.array([g.choice(C, p=row) for row in p])
    return torch.tensor(z, dtype=torch.float32), torch.tensor(labels)


def test_prior_family_recovers_a_planted_two_parameter_bias():
    log_p = np.log(PRIOR)
    planted = 0.8 * (log_p - log_p.mean())
    z, y = _planted(2000, planted)
    t, b = fit_family(z, y, "prior", torch.tensor(log_p))
    assert abs(t - 1.5) < 0.1
    assert torch.allclose(b - b.mean(), torch.tensor(planted), atol=0.1)
    assert len(b) == C


def test_cross_fitting_shrinks_a_noisy_bias_and_keeps_a_real_one():
    log_p = torch.tensor(np.log(PRIOR))
    z, y = _planted(4, np.zeros(C), seed=1)  # no bias, 4 images a class: a free bias is noise
    kappa, scores = cross_fit_kappa(z, y, "shrunk", log_p)
    assert kappa >= 30 and set(scores) >= {0.0, math.inf}
    real = np.array([1.5, -1.5, 1.0, -1.0, 0.0])  # a real bias no prior multiple explains, many images
    z, y = _planted(1500, real, seed=2)
    kappa, _ = cross_fit_kappa(z, y, "shrunk_prior", log_p)
    assert kappa <= 10
    _, b = fit_family(z, y, "shrunk_prior", log_p, kappa=kappa)
    assert torch.allclose(b - b.mean(), torch.tensor(real - real.mean()), atol=0.25)


def test_folds_split_every_class():
    y = torch.tensor([0] * 10 + [1] * 3)
    parts = folds(y, 5)
    assert sorted(torch.cat(parts).tolist()) == list(range(13))
    assert all(int((y[p] == 0).sum()) == 2 for p in parts)


def _context(z, y, counts=None):
    return Context(num_experts=1, num_classes=C, train_prior=torch.tensor(PRIOR, dtype=torch.float32),
                   validation_logits=lambda: (z[:, None, :], y),
                   validation_info={"option": "data_loader.args.validation",
                                    "counts": counts or torch.bincount(y, minlength=C).tolist()})


@pytest.mark.parametrize("family", ["prior", "shrunk", "shrunk_prior"])
def test_label_shift_methods_take_a_family(family):
    z, y = _planted(30, np.zeros(C), seed=3)
    test, _ = _planted(40, np.zeros(C), seed=4)
    out = SafePrior(bias=family, simulation_size=200).adapt(test[:, None, :], _context(z, y))
    assert out["bias_family"] == family and out["scores"].shape == (len(test), C)
    assert (out["shrinkage"] is None) == (family == "prior")
    assert out["selection"]["chosen_by"].startswith("validation split")


def test_bad_bias_values_are_named():
    with pytest.raises(ValueError, match="bias 'ridge'"):
        EMPrior(bias="ridge")


def test_a_split_too_small_is_one_line_naming_the_class_and_the_option():
    y = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 4])  # class 2: one image
    z = torch.randn(len(y), C, generator=torch.Generator().manual_seed(5))
    ctx = _context(z, y)

    class Data:
        has_validation = True
        validation_info = ctx.validation_info

    for method in (SafePrior(bias="prior"), EMPrior(bias=True)):
        with pytest.raises(ValueError, match="class 2 has 1 validation image.*data_loader.args.validation"):
            method.check(Data())  # before any work
        with pytest.raises(UserError, match="class 2 has 1 validation image"):
            method.adapt(z[:, None, :], ctx)
    EMPrior(bias=False).check(Data())  # temperature alone needs no image of every class
