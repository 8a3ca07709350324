"""Calibration fitting for the label-shift methods (docs/methods.md#prior-estimation): temperature
scaling and, with a bias, bias-corrected temperature scaling (Alexandari et al. 2020), by the
(class-weighted) NLL of labelled images' mean logits. The methods (label_shift.py) decide which
images and weights; this module only fits."""
import math

import torch

from utils.errors import UserError



def _fitted_inverse_temperature(beta, hint=""):
    """The fitted inverse temperature as a float; one line if the fit did not give a positive one."""
    b = float(beta.detach())
    if not math.isfinite(b) or b <= 0:
        raise UserError(f"calibration: the fitted inverse temperature {b:g} is not positive (do the calibration "
                        f"logits predict their labels at all?); expected a fitted temperature > 0{hint}")
    return b

NEWTON_MAX_CLASSES = 128  # up to this many classes the fit takes Newton steps (a (C+1)^2 Hessian)
NEWTON_MAX_STEPS = 50
GRADIENT_TOLERANCE = 1e-10  # largest gradient entry of the mean NLL at the optimum
ROUNDING_GRADIENT = 1e-7  # where a Newton step no longer lowers the loss, a gradient this small is the optimum


def _newton_fit(z, y, w, beta, bias, fit_temperature, fit_bias):
    """Newton's method on the (weighted) mean NLL of softmax(beta z + b), from (beta, bias), to a
    gradient of :data:`GRADIENT_TOLERANCE`, with a backtracking line search; (beta, bias) or None when
    it does not get there in :data:`NEWTON_MAX_STEPS` (the caller then runs L-BFGS). The bias is
    defined up to a constant; the step keeps its sum where it starts."""
    n, c = z.shape
    a = (torch.ones(n, dtype=torch.float64) if w is None else w) / (n if w is None else w.sum())
    onehot = torch.nn.functional.one_hot(y, c).double()

    def evaluate(beta_, bias_):
        """(mean NLL, softmax) at (beta_, bias_), from one exponential of the scores."""
        scores = z * beta_ + bias_
        lse = torch.logsumexp(scores, 1, keepdim=True)
        nll = float((a * (lse[:, 0] - scores.gather(1, y[:, None])[:, 0])).sum())
        return nll, torch.exp(scores - lse)

    current, prob = evaluate(beta, bias)
    for _ in range(NEWTON_MAX_STEPS):
        r = a[:, None] * (prob - onehot)
        pz = (prob * z).sum(1)
        grads = []
        if fit_temperature:
            grads.append((r * z).sum().reshape(1))
        if fit_bias:
            grads.append(r.sum(0))
        g = torch.cat(grads)
        if float(g.abs().max()) < GRADIENT_TOLERANCE:
            return beta, bias
        ap = a[:, None] * prob
        if fit_bias:
            hessian = torch.diag(ap.sum(0)) - ap.T @ prob + 1.0 / c  # + 11^T / c: the bias's constant direction
        if fit_temperature:
            h_tt = (a * ((prob * z * z).sum(1) - pz * pz)).sum().reshape(1, 1)
            if fit_bias:
                h_tb = (ap * z).sum(0) - (ap * pz[:, None]).sum(0)
                hessian = torch.cat([torch.cat([h_tt, h_tb[None]], 1), torch.cat([h_tb[:, None], hessian], 1)], 0)
            else:
                hessian = h_tt
        try:
            step = -torch.linalg.solve(hessian, g)
        except RuntimeError:  # singular: saturated probabilities leave a direction without curvature
            return None
        if not bool(torch.isfinite(step).all()):
            return None
        d_beta = step[0] if fit_temperature else 0.0
        d_bias = step[int(fit_temperature):] if fit_bias else 0.0
        t, slope = 1.0, float(g @ step)
        while t > 1e-10:
            new_beta, new_bias = beta + t * d_beta, bias + t * d_bias
            if float(new_beta) > 0:
                new, new_prob = evaluate(new_beta, new_bias)
                if math.isfinite(new) and new <= current + 1e-4 * t * slope:
                    break
            t /= 2
        else:  # no decrease left to find: converged to rounding, or not converging at all
            return (beta, bias) if float(g.abs().max()) < ROUNDING_GRADIENT else None
        stalled = current - new <= 1e-15 * max(1.0, abs(current))  # the loss no longer moves beyond rounding
        beta, bias, current, prob = new_beta, new_bias, new, new_prob
        if stalled and float(g.abs().max()) < ROUNDING_GRADIENT:
            return beta, bias
    return None


def fit_calibration(z, targets, fit_temperature=True, fit_bias=False, temperature=1.0, max_iter=200,
                    max_elements=1 << 25, class_weights=None, start=None):
    """Fit 1/T (and a per-class bias b) by the NLL of ``targets`` under softmax(z / T + b).

    ``class_weights`` [C]: each image of class y counts ``class_weights[y]`` in the NLL (None: every
    image counts 1), so the fit is the one for a set with class frequencies proportional to
    counts x weights. The NLL is convex in (1/T, b): up to :data:`NEWTON_MAX_CLASSES` classes
    Newton's method finds the optimum (a gradient below :data:`GRADIENT_TOLERANCE`), and L-BFGS does
    with more classes or where Newton's steps do not converge (a split the model separates
    perfectly has no finite optimum). ``start`` = (T, b): a nearby fit to start from (the whole
    split's, for one of its halves); the optimum does not depend on it. Sets larger than
    ``max_elements`` numbers are fitted on a fixed random subset of rows (seed 0). Returns (T, b
    [C] float64 or None).
    """
    z = torch.as_tensor(z)
    y = torch.as_tensor(targets).long()
    if z.shape[0] * z.shape[1] > max_elements:
        rows = max(1, max_elements // z.shape[1])
        keep = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:rows]
        z, y = z[keep], y[keep]
    z = z.double()
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)[y]
    if z.shape[0] == 0:
        raise ValueError("calibration: the reference set is empty")
    c = z.shape[1]
    if not (fit_temperature or fit_bias):
        return float(temperature), None
    first_t, first_b = (temperature, None) if start is None else start
    beta0 = torch.tensor([1.0 / float(first_t if fit_temperature else temperature)], dtype=torch.float64)
    bias0 = torch.zeros(c, dtype=torch.float64) if first_b is None or not fit_bias else \
        torch.as_tensor(first_b, dtype=torch.float64).detach().clone()
    if c <= NEWTON_MAX_CLASSES:
        fitted = _newton_fit(z, y, w, beta0, bias0, fit_temperature, fit_bias)
        if fitted is not None:
            b = _fitted_inverse_temperature(fitted[0], ", or set test_time.args.temperature to a number")
            return 1.0 / b, (fitted[1].clone() if fit_bias else None)
    beta = torch.tensor([1.0 / float(temperature)], dtype=torch.float64, requires_grad=fit_temperature)
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=fit_bias)
    params = [p for p in (beta, bias) if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=GRADIENT_TOLERANCE,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if w is None:
            loss = torch.nn.functional.cross_entropy(z * beta + bias, y)
        else:
            loss = (torch.nn.functional.cross_entropy(z * beta + bias, y, reduction="none") * w).sum() / w.sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    b = _fitted_inverse_temperature(beta, ", or set test_time.args.temperature to a number")
    return 1.0 / b, (bias.detach().clone() if fit_bias else None)


# ------------------------------------------------------------------------------------------------
# Calibration families with fewer effective parameters than a free per-class bias
# (docs/methods.md#small-validation-splits). Calibrated logits: z / T + b with
#   "prior":        b = g * log p_train                (two parameters: 1/T and g)
#   "shrunk":       b free, penalised toward 0         (ridge; its weight chosen by cross-fitting)
#   "shrunk_prior": b free, penalised toward g log p   (ridge around the two-parameter family)
# The penalty is ``kappa / n * sum_c (b_c - g log p_c)^2`` beside the mean (weighted) NLL of n
# images, so kappa counts like pseudo-images per class pulling the bias to its target.
BIAS_FAMILIES = ("free", "none", "prior", "shrunk", "shrunk_prior")
KAPPAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, math.inf)
FOLDS = 5


def fit_family(z, targets, family, log_prior=None, class_weights=None, kappa=0.0, max_iter=200):
    """Fit ``family`` (one of :data:`BIAS_FAMILIES`) by the (class-weighted) NLL; returns (T, b [C]
    float64 or None). ``kappa``: the ridge weight of the shrunk families (``math.inf``: the target
    itself)."""
    if family == "free":
        return fit_calibration(z, targets, fit_bias=True, class_weights=class_weights, max_iter=max_iter)
    if family == "none":
        return fit_calibration(z, targets, fit_bias=False, class_weights=class_weights, max_iter=max_iter)
    z = torch.as_tensor(z).double()
    y = torch.as_tensor(targets).long()
    c = z.shape[1]
    w = torch.ones(len(y), dtype=torch.float64) if class_weights is None else torch.as_tensor(
        class_weights, dtype=torch.float64)[y]
    w = w / w.sum()
    toward_prior = family in ("prior", "shrunk_prior")
    free = family in ("shrunk", "shrunk_prior") and kappa != math.inf
    basis = (torch.as_tensor(log_prior, dtype=torch.float64).flatten() if toward_prior
             else torch.zeros(c, dtype=torch.float64))
    basis = basis - basis.mean()
    beta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    g = torch.zeros(1, dtype=torch.float64, requires_grad=toward_prior)
    d = torch.zeros(c, dtype=torch.float64, requires_grad=free)
    params = [p for p in (beta, g, d) if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    penalty = 0.0 if not free else kappa / len(y)

    def closure():
        opt.zero_grad()
        nll = (torch.nn.functional.cross_entropy(z * beta + g * basis + d, y, reduction="none") * w).sum()
        loss = nll + penalty * (d * d).sum() if free else nll
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    b = _fitted_inverse_temperature(beta)
    bias = (g.detach() * basis + d.detach()).clone()
    return 1.0 / b, bias


def folds(targets, k=FOLDS, seed=0):
    """``k`` index sets that split every class as evenly as it allows (seeded)."""
    y = torch.as_tensor(targets).long()
    gen = torch.Generator().manual_seed(seed)
    parts = [[] for _ in range(k)]
    start = 0
    for cls in torch.unique(y).tolist():
        idx = torch.where(y == cls)[0]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for j, i in enumerate(idx.tolist()):
            parts[(start + j) % k].append(i)
        start += len(idx)
    return [torch.as_tensor(sorted(p), dtype=torch.long) for p in parts if p]


def cross_fit_kappa(z, targets, family, log_prior=None, class_weights=None, kappas=KAPPAS, k=FOLDS):
    """The ridge weight of a shrunk family with the smallest held-out (class-weighted) NLL over
    ``k`` folds of the calibration images; returns (kappa, {kappa: held-out NLL})."""
    z = torch.as_tensor(z).double()
    y = torch.as_tensor(targets).long()
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
    parts = folds(y, k)
    scores = {}
    for kappa in kappas:
        total, weight = 0.0, 0.0
        for j, held in enumerate(parts):
            fit_idx = torch.cat([p for i, p in enumerate(parts) if i != j])
            t, b = fit_family(z[fit_idx], y[fit_idx], family, log_prior, cw, kappa)
            scaled = z[held] / t + b
            w = torch.ones(len(held), dtype=torch.float64) if cw is None else cw[y[held]]
            total += float((torch.nn.functional.cross_entropy(scaled, y[held], reduction="none") * w).sum())
            weight += float(w.sum())
        scores[kappa] = total / weight
    best = min(scores, key=lambda kk: (scores[kk], -kk if kk != math.inf else -1e18))
    return best, scores
