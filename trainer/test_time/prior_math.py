"""The math of label-shift prior estimation (docs/methods.md#prior-estimation), shared by the
methods of label_shift.py, their online form (prior_online.py), the oracle (oracle_prior.py) and the
settings' simulation (shift_simulation.py): the expert average as [n, C], the E-step statistics,
EM / MAP-EM for the test prior (Saerens et al. 2002), the likelihood-ratio test of a shift (chi2),
the KL divergence and the mean prediction. Tensors in float64 where they are sums."""
import torch

from base.base_model import average_experts

FLOOR = 1e-12  # smallest prior value used in a log (keeps scores finite when an estimate reaches 0)
_CHUNK_ELEMENTS = 1 << 22  # rows per E-step chunk: at most ~4M float64 temporaries


def ensemble_logits(logits):
    """[n, E, C] expert logits -> [n, C] their mean (float32); [n, C] is taken as already averaged."""
    logits = torch.as_tensor(logits)
    if logits.dim() == 3:
        return average_experts(logits.float())
    if logits.dim() == 2:
        return logits.float()
    raise ValueError(f"logits of shape {tuple(logits.shape)}: expected [n, E, C] or [n, C]")


def _rows_per_chunk(num_classes):
    return max(1, _CHUNK_ELEMENTS // max(1, num_classes))


def posterior_stats(log_q, log_w):
    """``log_q``: [n, C] or a list of such blocks. Sum over images of r_i = softmax(log_q_i + log_w)
    ([C], float64) and the log-likelihood
    L = sum_i log sum_y q(y|x_i) w_y (w = pi / p_s; L = 0 at w = 1 because q is normalised)."""
    parts = log_q if isinstance(log_q, (list, tuple)) else [log_q]
    total = torch.zeros(log_w.numel(), dtype=torch.float64)
    ll = 0.0
    step = _rows_per_chunk(log_w.numel())
    for part in parts:
        for s in range(0, part.shape[0], step):
            a = part[s:s + step].double() + log_w
            top = a.amax(1, keepdim=True)  # log-sum-exp by hand: torch's is slow over a short last axis
            e = (a - top).exp_()
            sums = e.sum(1, keepdim=True)
            total += (e / sums).sum(0)
            ll += float((top + sums.log()).sum())
    return total, ll


def _normalise(p):
    p = torch.as_tensor(p, dtype=torch.float64).clamp_min(0)
    return p / p.sum()


def _log(p):
    return torch.log(torch.as_tensor(p, dtype=torch.float64).clamp_min(FLOOR))


def em_prior(log_q, source_prior, extra_counts=None, tol=1e-6, max_iter=1000, init=None,
             past_counts=None, past_n=0):
    """EM for the test prior (Saerens et al. 2002; docs/methods.md#prior-estimation).

    ``log_q`` [n, C]: log posteriors calibrated for ``source_prior`` p_s. E-step r_iy ∝ q_iy pi_y / p_s_y;
    M-step pi ∝ sum_i r_iy + extra_y, extra_y = a_y - 1 (Dirichlet pseudo-counts; None = the MLE).
    ``past_counts`` / ``past_n``: frozen sufficient statistics of images seen before (the online form).
    Stops when the largest change of pi is below ``tol``. Returns (pi [C] float64, iterations, converged).
    """
    log_ps = _log(source_prior)
    c = log_ps.numel()
    extra = torch.zeros(c, dtype=torch.float64) if extra_counts is None else torch.as_tensor(
        extra_counts, dtype=torch.float64)
    past = torch.zeros(c, dtype=torch.float64) if past_counts is None else past_counts.double()
    pi = _normalise(source_prior if init is None else init)
    rows = sum(p.shape[0] for p in log_q) if isinstance(log_q, (list, tuple)) else log_q.shape[0]
    if rows == 0 and past_n == 0 and float(extra.sum()) <= 0:
        return pi, 0, True
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):
        counts, _ = posterior_stats(log_q, _log(pi) - log_ps)
        new = _normalise(counts + past + extra)
        delta = float((new - pi).abs().max())
        pi = new
        if delta < tol:
            converged = True
            break
    return pi, iterations, converged


def log_likelihood_ratio(log_q, source_prior, pi, null=None):
    """2 [L(pi) - L(null)] (null default p_s, where L = 0): for the MLE pi, under the null prior
    approximately chi-squared with C - 1 degrees of freedom (Saerens et al. 2002)."""
    _, ll = posterior_stats(log_q, _log(pi) - _log(source_prior))
    ll_null = 0.0 if null is None else posterior_stats(log_q, _log(null) - _log(source_prior))[1]
    return 2.0 * (ll - ll_null)


def kl_divergence(p, q):
    """KL(p || q) in nats (terms with p = 0 count 0)."""
    p, q = _normalise(p), _normalise(q)
    mask = p > 0
    return float((p[mask] * (torch.log(p[mask]) - _log(q[mask]))).sum())


def chi2_sf(statistic, dof):
    """P(X >= statistic) for X ~ chi-squared(dof) (the regularised upper incomplete gamma function)."""
    if dof <= 0:
        return 1.0
    x = torch.tensor(max(float(statistic), 0.0) / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), x))


def mean_prediction(log_q, targets=None, num_classes=None, balanced=False):
    """Mean of softmax over images ([C] float64); ``balanced``: the mean of the per-class means."""
    c = log_q.shape[1]
    num_classes = c if num_classes is None else num_classes
    y = torch.zeros(log_q.shape[0], dtype=torch.long) if not balanced else torch.as_tensor(targets).long()
    sums = torch.zeros(num_classes, c, dtype=torch.float64)
    step = _rows_per_chunk(c)
    for s in range(0, log_q.shape[0], step):
        sums.index_add_(0, y[s:s + step], torch.exp(log_q[s:s + step].double()))
    counts = torch.bincount(y, minlength=num_classes).double()
    present = counts > 0
    return (sums[present] / counts[present, None]).mean(0)
