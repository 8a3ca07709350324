"""Calibration metrics (docs/methods.md#calibration): ECE/MCE on 15 equal-width bins, NLL, the mean predicted class
distribution against the true one, and the reliability diagram (utils/reliability_diagram.py)."""
import math

import pytest
import torch

from model.calibration import (calibration_metrics, class_distribution_gap, distribution_calibration,
                               expected_calibration_error, maximum_calibration_error, negative_log_likelihood,
                               reliability_bins)
from utils.reliability_diagram import plot_reliability


def top_probs(conf, top, num_classes):
    """Rows with probability ``conf`` on class ``top`` and the rest spread evenly."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    probs = ((1 - conf) / (num_classes - 1))[:, None].repeat(1, num_classes)
    probs[torch.arange(len(conf)), torch.as_tensor(top)] = conf
    return probs


def test_exactly_calibrated_bins_give_zero():
    """In every bin the share of correct predictions equals the confidence: ECE = MCE = 0."""
    conf = [0.5] * 10 + [0.8] * 10 + [1.0] * 4
    correct = [1] * 5 + [0] * 5 + [1] * 8 + [0] * 2 + [1] * 4
    probs = top_probs(conf, [0] * 24, 3)
    targets = torch.tensor([0 if c else 1 for c in correct])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0, abs=1e-12)
    assert maximum_calibration_error(probs, targets) == pytest.approx(0.0, abs=1e-12)


def test_sampled_perfectly_calibrated_predictor_has_ece_near_zero():
    """Labels drawn so that P(correct | confidence c) = c. ECE is then only sampling noise: per bin
    about sqrt(c(1-c)/n_b) ~ 0.005 with 200,000 samples; the tolerance is 0.01 (a predictor that is
    off by 0.05 everywhere scores 0.05, checked below)."""
    g = torch.Generator().manual_seed(0)
    n, c = 200_000, 10
    conf = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    top = torch.randint(0, c, (n,), generator=g)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    other = (top + torch.randint(1, c, (n,), generator=g)) % c  # any class but the top one
    targets = torch.where(correct, top, other)
    probs = top_probs(conf, top, c)
    ece = expected_calibration_error(probs, targets)
    assert ece < 0.01
    shifted = top_probs((conf + 0.05).clamp(max=1.0), top, c)  # over-confident by 0.05 (less at the top)
    assert expected_calibration_error(shifted, targets) > 0.04


def test_over_confident_predictor_matches_hand_computation():
    """Two classes, class 0 always on top. Five at confidence 0.95 (3 right), five at 0.65 (2 right).
    Bins: 0.95 -> (14/15, 1], 0.65 -> (9/15, 10/15].
    ECE = 0.5 |0.6 - 0.95| + 0.5 |0.4 - 0.65| = 0.175 + 0.125 = 0.30; MCE = 0.35.
    NLL = (3 (-ln 0.95) + 2 (-ln 0.05) + 2 (-ln 0.65) + 3 (-ln 0.35)) / 10.
    Mean prediction q = (0.8, 0.2), labels pi = (0.5, 0.5): TV = 0.3, KL(pi||q) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)."""
    probs = top_probs([0.95] * 5 + [0.65] * 5, [0] * 10, 2)
    targets = torch.tensor([0, 0, 0, 1, 1] + [0, 0, 1, 1, 1])
    nll = (3 * -math.log(0.95) + 2 * -math.log(0.05) + 2 * -math.log(0.65) + 3 * -math.log(0.35)) / 10
    assert expected_calibration_error(probs, targets) == pytest.approx(0.30, abs=1e-12)
    assert maximum_calibration_error(probs, targets) == pytest.approx(0.35, abs=1e-12)
    assert negative_log_likelihood(probs, targets) == pytest.approx(nll, rel=1e-12)
    gap = class_distribution_gap(probs, targets)
    assert gap["predicted"] == pytest.approx([0.8, 0.2]) and gap["true"] == pytest.approx([0.5, 0.5])
    assert gap["total_variation"] == pytest.approx(0.3, abs=1e-12)
    assert gap["kl_true_pred"] == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2), rel=1e-12)
    bins = reliability_bins(probs, targets)
    assert bins["count"][14] == 5 and bins["count"][9] == 5 and sum(bins["count"]) == 10
    assert bins["accuracy"][14] == pytest.approx(0.6) and bins["confidence"][9] == pytest.approx(0.65)
    assert math.isnan(bins["accuracy"][0])
    m = calibration_metrics(probs, targets)
    assert (m["ece"], m["mce"], m["top1"], m["class_tv"]) == pytest.approx((0.30, 0.35, 0.5, 0.3))
    assert m["nll"] == pytest.approx(nll)


def test_bin_edges_are_right_closed_and_fifteen():
    probs = top_probs([1 / 15, 1 / 15 + 1e-9, 0.5, 1.0], [0, 0, 0, 0], 16)
    bins = reliability_bins(probs, torch.zeros(4, dtype=torch.long))
    assert len(bins["edges"]) == 16 and bins["edges"][0] == 0 and bins["edges"][-1] == 1
    counts = bins["count"]
    assert counts[0] == 1 and counts[1] == 1 and counts[7] == 1 and counts[14] == 1


def test_logits_and_probabilities_agree_and_true_distribution_can_be_given():
    torch.manual_seed(0)
    logits, targets = torch.randn(300, 7) * 3, torch.randint(0, 7, (300,))
    probs = torch.softmax(logits.double(), 1)
    a, b = calibration_metrics(logits, targets, from_logits=True), calibration_metrics(probs, targets)
    for key in ("ece", "mce", "nll", "top1", "class_tv", "class_kl"):
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    assert a["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), targets).item(), rel=1e-12)
    uniform = class_distribution_gap(probs, targets, true_distribution=[1] * 7)
    assert uniform["true"] == pytest.approx([1 / 7] * 7)
    assert uniform["total_variation"] == pytest.approx(0.5 * (probs.mean(0) - 1 / 7).abs().sum().item())


def test_per_distribution_metrics_use_the_ensemble_mean_of_logits():
    torch.manual_seed(1)
    expert_logits, targets = torch.randn(50, 3, 5) * 4, torch.randint(0, 5, (50,))
    subsets = {"all": list(range(50)), "head": [0, 3, 4, 9, 20, 21]}
    out = distribution_calibration(expert_logits, targets, subsets)
    for name, idx in subsets.items():
        want = calibration_metrics(expert_logits.mean(1)[idx], targets[idx], from_logits=True)
        assert out[name]["ece"] == pytest.approx(want["ece"]) and out[name]["nll"] == pytest.approx(want["nll"])


def test_reliability_diagram_png(tmp_path):
    probs = top_probs([0.95] * 5 + [0.65] * 5, [0] * 10, 2)
    targets = torch.tensor([0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
    path = plot_reliability(calibration_metrics(probs, targets), tmp_path / "rel.png", title="uniform")
    data = (tmp_path / "rel.png").read_bytes()
    assert path == tmp_path / "rel.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        expected_calibration_error(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        negative_log_likelihood(torch.full((3, 2), 0.5), torch.zeros(4, dtype=torch.long))
