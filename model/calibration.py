"""Calibration metrics (docs/methods.md#calibration) and the statistics of the reliability diagram
(drawn by utils/reliability_diagram.py).

Pure functions of scores [N, C] and integer targets [N]. Scores are probabilities, or logits with
``from_logits=True`` (then p = softmax(logits), and the NLL uses log_softmax, exact for any
logits). For the multi-expert models the prediction is the mean of the experts' logits, so the
ensemble's probabilities are ``softmax(average_experts(logits))`` (base/base_model.py): pass that with
``from_logits=True``. Everything is computed in float64; results are Python floats (and lists).

- ECE: the top-class probability (confidence) is put in ``n_bins`` (15) equal-width bins on [0, 1];
  bin b holds confidences in (b/n_bins, (b+1)/n_bins] (a confidence of exactly 0 goes to bin 0).
  ECE = sum_b (n_b / n) |acc_b - conf_b|, acc_b the top-1 accuracy and conf_b the mean confidence
  of bin b. MCE = max_b |acc_b - conf_b| over the non-empty bins.
- NLL = mean_i -log p(y_i | x_i) (probabilities are clamped at 1e-12 before the log).
- Class distribution: the mean predicted distribution q = mean_i p(. | x_i) against the test set's
  label distribution pi (the label histogram, or one given): total variation
  TV = 1/2 sum_c |q_c - pi_c| and KL(pi || q).
"""
import math

import torch

from base.base_model import average_experts
from utils.reliability_diagram import ece_mce

N_BINS = 15
PROB_FLOOR = 1e-12


def _probs_and_log_probs(scores, from_logits):
    scores = torch.as_tensor(scores).double()
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, C], got shape {tuple(scores.shape)}")
    if from_logits:
        log_probs = torch.log_softmax(scores, dim=1)
        return log_probs.exp(), log_probs
    return scores, torch.log(scores.clamp_min(PROB_FLOOR))


def _targets(targets, n):
    targets = torch.as_tensor(targets).long()
    if targets.dim() != 1 or targets.numel() != n:
        raise ValueError(f"targets must be [N] with N = {n}, got shape {tuple(targets.shape)}")
    return targets


def reliability_bins(scores, targets, n_bins=N_BINS, from_logits=False):
    """Per-bin statistics of the top-class confidence: ``edges`` (n_bins + 1), ``count``,
    ``accuracy`` and ``confidence`` (NaN for empty bins), as lists."""
    probs, _ = _probs_and_log_probs(scores, from_logits)
    targets = _targets(targets, probs.shape[0]).to(probs.device)
    conf, pred = probs.max(dim=1)
    correct = (pred == targets).double()
    index = (torch.ceil(conf * n_bins).long() - 1).clamp_(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=n_bins)
    nonempty = count > 0
    nan = torch.full_like(count, math.nan)
    accuracy = torch.where(nonempty, acc_sum / count.clamp_min(1), nan)
    confidence = torch.where(nonempty, conf_sum / count.clamp_min(1), nan)
    return {"edges": [b / n_bins for b in range(n_bins + 1)], "count": count.long().tolist(),
            "accuracy": accuracy.tolist(), "confidence": confidence.tolist()}


def bins_as_data(bins):
    """``reliability_bins``' dict for a JSON result: an empty bin's accuracy and confidence are null
    (they do not exist), never a bare NaN."""
    def value(v, c):
        return None if c == 0 or not math.isfinite(v) else v
    return {**bins, **{k: [value(v, c) for v, c in zip(bins[k], bins["count"])] for k in ("accuracy", "confidence")}}


def expected_calibration_error(scores, targets, n_bins=N_BINS, from_logits=False):
    """ECE = sum_b (n_b / n) |acc_b - conf_b| over ``n_bins`` equal-width confidence bins."""
    return ece_mce(reliability_bins(scores, targets, n_bins, from_logits))[0]


def maximum_calibration_error(scores, targets, n_bins=N_BINS, from_logits=False):
    """MCE = max_b |acc_b - conf_b| over the non-empty bins."""
    return ece_mce(reliability_bins(scores, targets, n_bins, from_logits))[1]


def negative_log_likelihood(scores, targets, from_logits=False):
    """Mean -log p(y_i | x_i)."""
    _, log_probs = _probs_and_log_probs(scores, from_logits)
    targets = _targets(targets, log_probs.shape[0]).to(log_probs.device)
    return float(-log_probs.gather(1, targets[:, None]).mean())


def class_distribution_gap(scores, targets, from_logits=False, true_distribution=None):
    """The mean predicted class distribution q against the true one pi (the targets' histogram
    unless ``true_distribution`` is given): ``{"total_variation", "kl_true_pred", "predicted",
    "true"}``."""
    probs, _ = _probs_and_log_probs(scores, from_logits)
    n, c = probs.shape
    if true_distribution is None:
        targets = _targets(targets, n).to(probs.device)
        pi = torch.bincount(targets, minlength=c).double() / max(n, 1)
    else:
        pi = torch.as_tensor(true_distribution, dtype=torch.float64, device=probs.device)
        pi = pi / pi.sum()
    q = probs.mean(0)
    tv = 0.5 * (q - pi).abs().sum()
    support = pi > 0
    kl = (pi[support] * (torch.log(pi[support]) - torch.log(q[support].clamp_min(PROB_FLOOR)))).sum()
    return {"total_variation": float(tv), "kl_true_pred": float(kl), "predicted": q.tolist(), "true": pi.tolist()}


def calibration_metrics(scores, targets, n_bins=N_BINS, from_logits=False, true_distribution=None):
    """All of the above for one set of predictions: ``ece``, ``mce``, ``nll``, ``top1``,
    ``class_tv``, ``class_kl`` (floats) and ``bins`` (the reliability-diagram statistics)."""
    probs, log_probs = _probs_and_log_probs(scores, from_logits)
    targets = _targets(targets, probs.shape[0]).to(probs.device)
    bins = reliability_bins(probs, targets, n_bins)
    ece, mce = ece_mce(bins)
    gap = class_distribution_gap(probs, targets, true_distribution=true_distribution)
    return {"ece": ece, "mce": mce, "nll": float(-log_probs.gather(1, targets[:, None]).mean()),
            "top1": float((probs.argmax(1) == targets).double().mean()) if len(targets) else math.nan,
            "class_tv": gap["total_variation"], "class_kl": gap["kl_true_pred"], "bins": bins}


def distribution_calibration(expert_logits, targets, distributions, n_bins=N_BINS):
    """``calibration_metrics`` of the ensemble (softmax of the mean expert logits) on each test
    distribution: ``expert_logits`` [N, E, C] (or [N, C]), ``distributions`` {name: indices}."""
    logits = torch.as_tensor(expert_logits)
    ensemble = average_experts(logits) if logits.dim() == 3 else logits
    targets = torch.as_tensor(targets)
    out = {}
    for name, indices in distributions.items():
        idx = torch.as_tensor(indices, dtype=torch.long, device=ensemble.device)
        out[name] = calibration_metrics(ensemble[idx], targets.to(ensemble.device)[idx], n_bins, from_logits=True)
    return out
