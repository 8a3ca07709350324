"""Choosing SafePrior's strength from its validation split alone: per test set (strength "null",
the default; the end of this module) or one strength and gate per model ("auto", below).

No test label is used. The validation split is halved per class (seeded); each half in turn
calibrates the method while the other half is resampled, with replacement, into simulated test
sets of ``simulation_size`` images whose class priors are forward and backward long tails (ratios
50, 25, 10, 5, 2 over the classes ordered by training frequency), uniform, and Dirichlet draws
(alpha 0.1, 1, 10; three each). On each simulated set every candidate setting is compared with the
plain expert average on the same images (a paired difference of top-1). A candidate qualifies when
on every simulated set its loss is within the noise: ``difference >= -max(2 * SE, TOLERANCE)``,
SE = sqrt(images where exactly one of the two is right) / n, inflated by sqrt(n / distinct images)
because a resampled set repeats images. EM runs to a tolerance of ``SIMULATION_TOL`` here (the
choice of a setting does not need the last digits of each simulated prior). The strongest qualifying candidate
(highest strength, then smallest gate) is chosen; none qualifying means the plain average
(strength 0). The result holds the choice and the evidence (each candidate's worst difference).
"""
import functools
import itertools
import math

import numpy as np
import torch

from trainer.test_time.prior_math import _log, _normalise, chi2_sf, em_prior, kl_divergence, log_likelihood_ratio

STRENGTHS = (1.0, 0.75, 0.5, 0.25)
MIN_DIVERGENCES = (0.0, 0.05)
RATIOS = (50, 25, 10, 5, 2)
ALPHAS = (0.1, 1.0, 10.0)
DRAWS_PER_ALPHA = 3
TOLERANCE = 0.005  # a loss of half a point on a simulated set is within the noise whatever its SE
SIMULATION_TOL = 1e-4
SEED = 0


def simulated_priors(train_prior, rng):
    """{name: prior [C]}: forward / backward long tails by training rank, uniform, Dirichlet draws."""
    train_prior = np.asarray(train_prior, dtype=np.float64)
    c = len(train_prior)
    rank = np.empty(c)
    rank[np.argsort(-train_prior, kind="stable")] = np.arange(c)
    position = rank / max(c - 1, 1)
    priors = {}
    for r in RATIOS:
        priors[f"forward{r}"] = float(r) ** -position
        priors[f"backward{r}"] = float(r) ** -(1 - position)
    priors["uniform"] = np.ones(c)
    for alpha in ALPHAS:
        for k in range(DRAWS_PER_ALPHA):
            priors[f"dirichlet{alpha:g}_{k}"] = rng.dirichlet(np.full(c, alpha)) + 1e-12
    return {name: p / p.sum() for name, p in priors.items()}


def halves(targets, rng):
    """Two index sets, each half of every class (a class with one image is in both)."""
    a, b = [], []
    for cls in np.unique(targets):
        idx = np.where(targets == cls)[0]
        rng.shuffle(idx)
        if len(idx) == 1:
            a.append(idx)
            b.append(idx)
            continue
        cut = len(idx) // 2
        a.append(idx[:cut])
        b.append(idx[cut:])
    return np.concatenate(a), np.concatenate(b)


def draw(targets, prior, size, rng):
    """Indices (with replacement) of a simulated test set with class frequencies ~ Multinomial(size, prior),
    restricted to the classes present in ``targets``."""
    present = np.unique(targets)
    p = prior[present] / prior[present].sum()
    counts = rng.multinomial(size, p)
    parts = [rng.choice(np.where(targets == cls)[0], n, replace=True) for cls, n in zip(present, counts) if n]
    return np.concatenate(parts)


def candidate_scores(method, z, cal):
    """For one simulated set (mean logits ``z``): predictions of every candidate, keyed (strength, gate)."""
    z_cal = method._calibrate(z, cal)
    log_q = torch.log_softmax(z_cal, 1)
    ps, anchor = cal["source_prior"], cal["anchor"]
    tol = max(method.tol, SIMULATION_TOL)
    mle, _, _ = em_prior(log_q, ps, tol=tol, max_iter=method.max_iter, init=anchor)
    p_value = chi2_sf(log_likelihood_ratio(log_q, ps, mle, null=anchor), ps.numel() - 1)
    divergence = kl_divergence(mle, anchor)
    plain = z.argmax(1)
    if p_value >= method.significance:
        return {(s, d): plain for s in STRENGTHS for d in MIN_DIVERGENCES}, plain
    out = {}
    pi, _, _ = method.map_estimate(log_q, cal, tol=tol)
    base = z_cal.double() + _log(anchor) - _log(ps)
    step = _log(pi) - _log(anchor)
    for s in STRENGTHS:
        adjusted = (base + s * step).argmax(1)
        for d in MIN_DIVERGENCES:
            out[(s, d)] = adjusted if divergence >= d else plain
    return out, plain


def select_settings(method, reference, ctx):
    """The strength and gate of ``method`` (a SafePrior) for this model, from the validation logits
    ``reference`` = (mean logits [N, C], targets [N]); returns a JSON-able dict with the evidence."""
    z_all, y_all = reference
    y_np = y_all.numpy()
    rng = np.random.RandomState(SEED)
    first, second = halves(y_np, rng)
    priors = simulated_priors(torch.as_tensor(ctx.train_prior).double().numpy(), rng)
    size = method.simulation_size
    worst = {(s, d): np.inf for s in STRENGTHS for d in MIN_DIVERGENCES}
    worst_diff = dict(worst)
    sets = 0
    for fit_idx, sim_idx in ((first, second), (second, first)):
        fit_t = torch.as_tensor(fit_idx)
        cal = method.fit((z_all[fit_t], y_all[fit_t]), ctx)
        z_sim, y_sim = z_all[torch.as_tensor(sim_idx)], y_np[sim_idx]
        for prior in priors.values():
            idx = torch.as_tensor(draw(y_sim, prior, size, rng))
            y = torch.as_tensor(y_sim)[idx]
            preds, plain = candidate_scores(method, z_sim[idx], cal)
            right_plain = plain == y
            n = len(y)
            repeats = math.sqrt(n / len(torch.unique(idx)))
            for key, pred in preds.items():
                right = pred == y
                diff = float(right.double().mean() - right_plain.double().mean())
                se = float((right != right_plain).double().sum().sqrt()) / n * repeats
                worst[key] = min(worst[key], diff + max(2 * se, TOLERANCE))
                worst_diff[key] = min(worst_diff[key], diff)
            sets += 1
    order = sorted(worst, key=lambda k: (-k[0], k[1]))
    chosen = next((k for k in order if worst[k] >= 0), None)
    evidence = {f"strength {s:g}, min_divergence {d:g}": {"worst_difference": round(worst_diff[(s, d)], 6),
                                                          "worst_margin": round(worst[(s, d)], 6)} for s, d in order}
    return {"strength": chosen[0] if chosen else 0.0, "min_divergence": chosen[1] if chosen else 0.0,
            "chosen_by": "validation split (cross-fitted simulation)" if chosen else
            "validation split: no setting held, the plain average",
            "simulated_sets": sets, "simulation_size": size,
            "evidence": evidence}


# ------------------------------------------------------------------------------------------------
# strength "null": a strength per test set, from how far its estimated shift stands above what the
# split's own noise produces on an unshifted set of the same size (docs/methods.md#prior-estimation).
# The shift is measured from a target: the plain average's prior moved toward the calibration's
# reading of a balanced set by the share of that move the split certifies (``null_target``
# "certified"), or the plain average's prior itself ("plain").
HALVINGS = 8


def split_halves(method, reference, ctx, halvings=HALVINGS, start=None):
    """``halvings`` cross-fitted pairs (calibration of one half per class, the other half's mean
    logits and targets, as views of the split's rows) of the validation split ``reference`` = (mean
    logits, targets); seeded. ``start``: the whole split's calibration, where each half's fit starts."""
    z_all, y_all = reference
    y_np = y_all.numpy()
    rng = np.random.RandomState(SEED)
    pairs = []
    for _ in range(halvings):
        fit_idx, other = halves(y_np, rng)
        fit_t = torch.as_tensor(fit_idx)
        cal = method.fit((z_all[fit_t], y_all[fit_t]), ctx, start=start)
        pairs.append((cal, (z_all, other), y_np[other]))  # rows, not a copy: 8 halves of a large split
    return pairs


def centred_log_ratio(prior, reference):
    """u = log prior - log reference, centred over the classes (what an adjustment adds per class)."""
    u = _log(prior) - _log(reference)
    return u - u.mean()


def shift_size(prior, reference):
    """||u||^2 of the centred log ratio u = log prior - log reference."""
    u = centred_log_ratio(prior, reference)
    return float((u * u).sum())


def toward(reference, prior, share):
    """reference (prior / reference)^share, normalised: geometric interpolation in log space."""
    return _normalise(torch.exp(_log(reference) + share * (_log(prior) - _log(reference))))


def balanced_share(pairs, cal):
    """The share of the move from the plain average's prior (the anchor) to the calibration's reading
    of a balanced set (the source prior) that the split certifies: James-Stein max(0, 1 - d / ||t||^2),
    t the centred log ratio of that move with the whole split and d how far two disjoint halves'
    moves lie apart (mean squared distance). Two halves of different halvings share a quarter of the
    split on average, which halves their expected squared distance, so d is twice the mean over the
    pairs of halvings: no fit beyond the halvings'. The halves disagree by more than the whole split
    errs, so the share is cautious. Returns (share, evidence)."""
    t = shift_size(cal["source_prior"], cal["anchor"])
    moves = [centred_log_ratio(half["source_prior"], half["anchor"]) for half, _, _ in pairs]
    if len(moves) < 2 or t <= 0:
        return 0.0, {"balanced_move": t, "halves_disagreement": None}
    d = halves_disagreement(moves)
    return max(0.0, 1.0 - d / t), {"balanced_move": t, "halves_disagreement": d}


def halves_disagreement(moves):
    """How far two disjoint halves' moves lie apart: twice the mean squared distance over the pairs
    of halvings (two halves of different halvings share a quarter of the split on average); infinite
    with fewer than two halvings."""
    if len(moves) < 2:
        return math.inf
    return 2.0 * float(np.mean([float(((a - b) ** 2).sum()) for a, b in itertools.combinations(moves, 2)]))


def target_prior(cal, share):
    """The prior a test set's shift is measured from: the anchor moved ``share`` of the way to the
    source prior (the anchor itself at share 0)."""
    return toward(cal["anchor"], cal["source_prior"], share)


def null_shift_sizes(method, pairs, n, share, noise="target", axis=None, second=None):
    """The null of a test set of ``n`` images, from the whole estimate (calibration on one half,
    MAP-EM on ``n`` images, the 8 runs batched: :func:`half_estimates`) on balanced resamples of the
    other half. ``noise`` "target": the shift
    size each such estimate reports from its half's target (an unshifted test set of this size, seen
    through the split's noise). "spread": how far the halves' estimates (their centred log ratio to
    their own targets) lie from each other, the squared distance of every pair: their noise alone,
    without the part they share (a lean of the plain average that every half reads alike).
    Returns [m, 3]: each size and its parts along ``axis`` (:func:`head_tail_axis`) and ``second`` (the
    balanced move's direction, :func:`balance_direction`), 0 along a direction that is None."""
    rng = np.random.RandomState(SEED + n)
    halves, scores = [], []
    for cal, (z_all, other), y_other in pairs:
        c = cal["source_prior"].numel()
        rows = torch.as_tensor(other[draw(y_other, np.full(c, 1.0 / c), n, rng)])
        halves.append(cal)
        scores.append(lambda cal=cal, z_all=z_all, rows=rows: method._calibrate(z_all[rows], cal))
    priors = half_estimates(method, halves, scores, torch.stack([cal["anchor"] for cal in halves]),
                            n * halves[0]["source_prior"].numel())
    moves = torch.stack([centred_log_ratio(pi, target_prior(cal, share)) for pi, cal in zip(priors, halves)])
    if noise == "spread":
        moves = torch.stack([a - b for a, b in itertools.combinations(moves, 2)])
    return np.stack(sizes_along(moves, axis, second), 1)


def head_tail_axis(train_prior):
    """The head-tail axis: the centred log training prior at unit length, the direction along which
    every forward and backward long tail of the training order moves a prior. None where the
    training prior is (nearly) balanced: there is no such direction."""
    if train_prior is None:
        return None
    e = _log(_normalise(torch.as_tensor(train_prior, dtype=torch.float64).flatten()))
    e = e - e.mean()
    norm = float(e.norm())
    return e / norm if norm > 1e-6 else None


def sizes_along(vectors, axis, second=None):
    """(||v||^2, (v . axis)^2, (v . second)^2) of each row of ``vectors`` [m, C], as three arrays (0
    along a direction that is None)."""
    total = (vectors * vectors).sum(1)
    parts = [total] + [torch.zeros_like(total) if a is None else (vectors @ a) ** 2 for a in (axis, second)]
    return [p.cpu().numpy() for p in parts]


def balance_direction(cal, axis):
    """The calibration's move to a balanced set apart from the head-tail axis, and how far along it
    the split certifies a test set may move: (unit direction or None, cap, evidence).

    t is the centred log ratio from the anchor to the source prior, less its part along ``axis``; d
    how far two halves' own such moves lie apart (:func:`halves_disagreement`). The direction is t
    at unit length, kept where the halves disagree by less than the move itself (d < ||t||^2). Two
    disjoint halves' moves lie about four times the whole split's variance apart, so the whole
    split's move is certified to its James-Stein share max(0, 1 - d / (4 ||t||^2)): the cap is that share of ||t||."""
    def off_axis(move):
        return move if axis is None else move - (move @ axis) * axis

    t = off_axis(centred_log_ratio(cal["source_prior"], cal["anchor"]))
    moves = [off_axis(centred_log_ratio(half["source_prior"], half["anchor"])) for half, _, _ in cal["halves"]]
    size = float((t * t).sum())
    d = halves_disagreement(moves)
    keep = size > 1e-12 and d < size
    cap = max(0.0, 1.0 - d / (4.0 * size)) * math.sqrt(size) if keep else 0.0
    evidence = {"balance_move": math.sqrt(size), "balance_cap": cap,
                "balance_disagreement": d if math.isfinite(d) else None}
    return (t / math.sqrt(size) if keep else None), cap, evidence


UPPER = 0.95  # the test set's own noise: the upper 95 % confidence bound of its variance over the halves


@functools.lru_cache(maxsize=None)
def chi2_quantile(p, dof):
    """x with P(X <= x) = p for X ~ chi-squared(dof) (bisection on :func:`chi2_sf`)."""
    low, high = 0.0, max(1.0, 10.0 * dof)
    while chi2_sf(high, dof) > 1 - p:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if chi2_sf(mid, dof) > 1 - p else (low, mid)
    return (low + high) / 2


BATCH_ELEMENTS = 1 << 24  # halves x images x classes of one batched E-step of :func:`test_set_noise` (float32)


def _batched_map(log_q, log_ps, extra, init, tol, max_iter):
    """MAP-EM (as :func:`em_prior` with ``extra_counts``) for k sets at once: ``log_q`` [k, n, C]
    float32, log posteriors up to a constant per image; ``log_ps``, ``extra``, ``init`` [k, C]
    float64. Returns the k priors [k, C] float64. The E-step runs in float32: the estimates only
    measure a noise (the split's spread, the test set's own)."""
    pi = init.clone()
    log_ps = log_ps.float()
    for _ in range(max_iter):
        w = (torch.log(pi.clamp_min(1e-12)).float() - log_ps)[:, None, :]
        a = log_q + w
        e = (a - a.amax(2, keepdim=True)).exp_()  # softmax by hand: torch's is slow over a short last axis
        counts = (e / e.sum(2, keepdim=True)).sum(1).double() + extra
        new = counts.clamp_min(0) / counts.clamp_min(0).sum(1, keepdim=True)
        delta = float((new - pi).abs().max())
        pi = new
        if delta < tol:
            break
    return pi


def _extra(method, cal):
    """The method's Dirichlet pseudo-counts under ``cal`` ([C]; zeros for the maximum likelihood)."""
    extra = method.extra_counts(cal)
    return torch.zeros_like(cal["source_prior"]) if extra is None else torch.as_tensor(extra, dtype=torch.float64)


def half_estimates(method, halves, scores, init, numel):
    """The MAP estimate of each half's calibration on its own set: ``scores[j]()`` gives that set's
    calibrated logits (``numel`` numbers, [n, C], up to a constant per image), ``init`` [k, C] where
    each run starts. The runs go through :func:`_batched_map` in groups of at most
    :data:`BATCH_ELEMENTS` numbers. Returns [k, C] float64."""
    tol = max(method.tol, SIMULATION_TOL)
    group = max(1, BATCH_ELEMENTS // max(1, numel))
    out = []
    for start in range(0, len(halves), group):
        part = range(start, min(start + group, len(halves)))
        out.append(_batched_map(torch.stack([scores[j]().float() for j in part]),
                                torch.stack([_log(halves[j]["source_prior"]) for j in part]),
                                torch.stack([_extra(method, halves[j]) for j in part]),
                                init[start:start + len(part)], tol, method.max_iter))
    return torch.cat(out)


def test_set_noise(method, cal, log_q, prior, share, seed):
    """The noise of the estimate on this test set itself: each half's calibration runs the MAP
    estimate on its own bootstrap resample of the test set (``log_q``: the test set's log posteriors
    under the whole split's calibration, from which each half's are recomputed); the sample variance
    of the 8 moves (centred log ratio to each half's target) counts the calibration's and the test
    set's sampling noise, and its upper :data:`UPPER` confidence bound (chi-squared, halves - 1 degrees
    of freedom) is the noise. ``prior``: the whole split's estimate, where each run starts. Returns
    [3]: that noise and its parts along ``cal["axis"]`` (:func:`head_tail_axis`) and
    ``cal["balance_axis"]`` (:func:`balance_direction`), 0 along a direction that is None."""
    base = log_q.double() - (0.0 if cal["bias"] is None else cal["bias"])  # z / T, up to a constant per image
    n, c = base.shape
    halves = [half for half, _, _ in cal["halves"]]
    k = len(halves)
    if k < 2:
        return np.zeros(3)
    rng = np.random.RandomState(seed)
    scale = [cal["temperature"] / half["temperature"] for half in halves]
    scores = []
    for half, factor in zip(halves, scale):
        rows = torch.as_tensor(rng.randint(0, n, n))
        bias = 0.0 if half["bias"] is None else half["bias"]
        scores.append(lambda rows=rows, factor=factor, bias=bias: base[rows] * factor + bias)
    priors = half_estimates(method, halves, scores, torch.as_tensor(prior, dtype=torch.float64).expand(k, c).clone(),
                            n * c)
    moves = torch.stack([centred_log_ratio(pi, target_prior(half, share)) for pi, half in zip(priors, halves)])
    variance = np.asarray([part.sum() for part in sizes_along(moves - moves.mean(0), cal.get("axis"),
                                                               cal.get("balance_axis"))]) / (k - 1)
    return variance * (k - 1) / chi2_quantile(1 - UPPER, k - 1)


def null_adjustment(method, cal, prior, n, log_q=None, cache=None):
    """What SafePrior's strength "null" adds to the target's log prior (:func:`target_prior`) for the
    estimate ``prior`` of a set of ``n`` images: (adjustment [C], evidence). u is the centred log
    ratio of ``prior`` to the target; James-Stein's strength is max(0, 1 - noise / size).

    The noise (``method.noise``): of the split, the null of an unshifted set of ``n`` images
    (:func:`null_shift_sizes`, computed once per size and kept in ``cal["null_sizes"]``); with "both"
    the larger of that and the test set's own (:func:`test_set_noise` on ``log_q``, the test set's
    calibrated log posteriors). ``cache`` (a stream's dict) keeps the test set's noise per ``n``.

    Rule "whole": s u, one strength s from the noise and ||u||^2. Rule "axis" (``cal["axis"]``, the
    head-tail axis, where u lies mostly along it: what the split certifies of a^2, a its part along
    the axis, at least the rest ||r||^2, :func:`_certified_square`): a is read from one number instead
    of C - 1, with the noise's part along the axis as its variance (8 estimates: a rough variance, so
    no James-Stein factor on it; with ``method.axis_noise`` "split", the default, the split's part
    alone, else the larger of the split's and the test set's own); it is moved by |a| less one
    standard deviation of that noise (soft thresholding: the part the split certifies), at least s,
    and r by its own James-Stein strength from the remainder of the noise (with
    ``method.rest_floor`` "whole" at least s too: at a strong shift s is near 1, so the rest, mostly
    the noise of the rare classes' estimates there, would move in full; "none", the default, lets it
    shrink by its own strength). A shift with a sizeable rest (a sparse or arbitrary prior, for which
    moving the head against the tail alone would mislead) keeps the whole rule.
    Rule "axes" (``cal["balance_axis"]``, :func:`balance_direction`): the same along the axis and the
    balanced move's direction together (:func:`_along_two_directions`).
    """
    share = cal["balanced_share"]
    rule = getattr(method, "null_target", "plain")
    if rule == "nearest" and share > 0 \
            and shift_size(prior, target_prior(cal, 0.0)) <= shift_size(prior, target_prior(cal, share)):
        share = 0.0  # nearer the plain average's prior than the certified target: measured from it
    elif rule == "segment" and share > 0:  # the point of the certified move nearest the estimate
        t = centred_log_ratio(target_prior(cal, share), cal["anchor"])
        v = centred_log_ratio(prior, cal["anchor"])
        share = share * min(1.0, max(0.0, float(v @ t) / float(t @ t)))
    u = centred_log_ratio(prior, target_prior(cal, share))
    observed = float((u * u).sum())
    noise_rule = getattr(method, "noise", "target")
    sizes = cal.setdefault("null_sizes", {})
    if (n, share) not in sizes:
        sizes[n, share] = null_shift_sizes(method, cal["halves"], n, share,
                                           "target" if noise_rule == "target" else "spread", cal.get("axis"),
                                           cal.get("balance_axis"))
    split = sizes[n, share].mean(0)
    evidence = {"shift_size": observed, "null_shift_size": _shown(_unbounded(float(split[0]))),
                "null_sets": len(cal["halves"]), "balanced_share": cal["balanced_share"], "target_share": share}
    noise, rest, own = split, split[0] - split[1], None
    if noise_rule == "both":
        if cache is not None and (n, share) in cache:
            own = cache[n, share]
        else:
            own = test_set_noise(method, cal, log_q, prior, share, SEED + n)
            if cache is not None:
                cache[n, share] = own
        noise, rest = np.maximum(split, own), max(split[0] - split[1], own[0] - own[1])
        evidence["test_set_noise"] = _shown(_unbounded(float(own[0])))
    strength = _james_stein(noise[0], observed)
    # the axis coordinate's noise: the split's spread along it, or with axis_noise "both" the larger of
    # that and the test set's own
    axis_variance = noise[1] if getattr(method, "axis_noise", "split") == "both" else split[1]
    axis = cal.get("axis")
    if cal.get("balance_axis") is not None and observed > 0:
        return _along_two_directions(method, u, observed, strength, split, own if noise_rule == "both" else None,
                                     axis_variance, cal, evidence)
    if axis is not None:
        along = float(u @ axis)
        rest_size = observed - along * along
        evidence["axis_share"] = along * along / observed if observed > 0 else 0.0
        if observed > 0 and _certified_square(method, along, axis_variance) >= rest_size:
            s_axis = max(strength, _soft(along, axis_variance))
            s_rest = max(_rest_floor(method, strength), _james_stein(rest, rest_size))
            u_axis = along * axis
            evidence.update(rule="axis", strength=s_axis, rest_strength=s_rest, axis_noise=_shown(_unbounded(
                float(axis_variance))), rest_noise=_shown(_unbounded(float(rest))))
            return s_axis * u_axis + s_rest * (u - u_axis), evidence
    evidence.update(rule="whole", strength=strength)
    return strength * u, evidence


def _certified_square(method, coordinate, variance):
    """What the split certifies of a squared coordinate along the head-tail axis. With
    ``method.axis_gate`` "certified" (the default): coordinate^2 less the whole split's own variance of
    it, half the halves' ``variance`` (a half holds half the images; its expected square is the true
    coordinate's square plus that variance); "observed": coordinate^2 as read. Minus infinity where the
    noise is not a finite number."""
    if getattr(method, "axis_gate", "certified") == "observed":
        return coordinate * coordinate
    variance = _unbounded(float(variance))
    return coordinate * coordinate - variance / 2 if math.isfinite(variance) else -math.inf


def _rest_floor(method, strength):
    """The least strength of the rest of a shift read along the directions: 0 with ``method.rest_floor``
    "none" (the default: the rest moves by its own James-Stein strength alone), the whole rule's
    ``strength`` with "whole"."""
    return strength if getattr(method, "rest_floor", "none") == "whole" else 0.0


def _along_two_directions(method, u, observed, strength, split, own, axis_variance, cal, evidence):
    """Rule "axes" of :func:`null_adjustment` (``axis`` "train_prior_and_balance"): u read along the
    head-tail axis e and the balanced move's direction f (:func:`balance_direction`). Its coordinate
    along f is clipped to [0, cap] (toward a balanced set, as far as the split certifies; the excess
    stays in the rest), less what a target moved toward balance already took of the move.
    Where what the split certifies of a^2 (:func:`_certified_square`) + b^2 (b clipped) is at least
    ||u - a e - b f||^2, each moves by its
    size less one standard deviation of its noise (along e: ``axis_variance``, see
    :func:`null_adjustment`; along f: the test set's own, since every half's unshifted estimate shares
    the move the split's null would count), each at least the whole rule's ``strength``, and the rest
    by its James-Stein strength from the remainder of the noise, at least :func:`_rest_floor`;
    otherwise the whole rule."""
    axis, second = cal.get("axis"), cal["balance_axis"]
    a = 0.0 if axis is None else float(u @ axis)
    # a target already moved toward balance (null_target "certified" ...) used that share of the move
    room = max(0.0, cal["balance_cap"] - evidence["target_share"] * cal["selection"]["balance_move"])
    b = min(max(float(u @ second), 0.0), room)
    on_plane = b * second + (0.0 if axis is None else a * axis)
    rest_vec = u - on_plane
    rest_size = float((rest_vec * rest_vec).sum())
    evidence.update(axis_share=(a * a + b * b) / observed, balance_shift=b)
    certified = 0.0 if axis is None else _certified_square(method, a, axis_variance)
    if certified + b * b < rest_size:
        evidence.update(rule="whole", strength=strength)
        return strength * u, evidence
    noise_b = split[2] if own is None else own[2]
    rest_noise = max(0.0, split[0] - split[1] - split[2], 0.0 if own is None else own[0] - own[1] - own[2])
    s_a = max(strength, _soft(a, axis_variance))
    s_b = max(strength, _soft(b, noise_b))
    s_r = max(_rest_floor(method, strength), _james_stein(rest_noise, rest_size))
    evidence.update(rule="axes", strength=s_a, balance_strength=s_b, rest_strength=s_r,
                    axis_noise=_shown(_unbounded(float(axis_variance))),
                    balance_noise=_shown(_unbounded(float(noise_b))), rest_noise=_shown(_unbounded(float(rest_noise))))
    return (0.0 if axis is None else s_a * a * axis) + s_b * b * second + s_r * rest_vec, evidence


def _soft(coordinate, variance):
    """The share of ``coordinate`` left after soft thresholding by one standard deviation: max(0, |x|
    - sigma) / |x| (0 for x = 0 or a noise that is not a finite number)."""
    variance = _unbounded(float(variance))
    if coordinate == 0 or not math.isfinite(variance):
        return 0.0
    return max(0.0, abs(coordinate) - math.sqrt(variance)) / abs(coordinate)


def shifted(target, adjustment):
    """The prior target e^adjustment, normalised."""
    return _normalise(torch.exp(_log(target) + adjustment))


def _james_stein(noise, size):
    """max(0, 1 - noise / size); 0 where the noise is not a finite number or there is no shift."""
    noise = _unbounded(float(noise))
    return max(0.0, 1.0 - noise / size) if size > 0 and math.isfinite(noise) else 0.0


def _unbounded(noise):
    """A noise that is not a finite number (a half too small to calibrate: its fit has no finite
    optimum, so its estimate is not a number) is infinite: the strength is then 0, the plain average."""
    return noise if math.isfinite(noise) else math.inf


def _shown(noise):
    """The noise as a result reports it: None where it is infinite (JSON has no infinity)."""
    return noise if math.isfinite(noise) else None
