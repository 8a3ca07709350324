"""Label-shift test-time methods (docs/methods.md#label-shift, #prior-estimation): estimate the test set's class prior
pi from the unlabeled clean logits, then apply the post-hoc adjustment

    scores = z_cal + log pi_hat - log p_s

where z_cal = (mean of the expert logits) / T (+ b) is the ensemble's calibrated logit and p_s the
prior the model's posteriors are taken to be calibrated for (``source_prior``):

- ``"uniform"``: balanced logits (balanced softmax, BalPoE with mean tau 1).
- ``"train"``: ``ctx.train_prior`` (a plain long-tailed softmax).
- ``"reference"``: the ensemble's own mean predicted distribution on the training images (clean
  logits from ``ctx.reference_logits()``, allowed data): the model's class marginal on data drawn
  with the training prior, so EM run on the training images would leave the prior unchanged.
- ``"reference_balanced"``: the same mean with every training class weighted equally (uses the
  training labels): the model's class marginal on a balanced set, so a balanced test set whose
  images behave like the training images is left unadjusted.

Calibration (``temperature``: a number, or ``"fit"``: NLL of the training labels on the reference
logits; ``bias``: also fit a per-class bias b, bias-corrected temperature scaling, Alexandari et
al. 2020) is computed once per method instance, on first use, and cached. The defaults are
``calibration="validation"``, ``temperature="fit"``, ``bias=true`` and ``source_prior`` chosen by the
calibration data: ``"uniform"`` on the validation split (held-out images, weighted to a balanced
set), ``"reference"`` on the training images. With ``"reference"`` the fitted bias makes the
calibrated posterior's class marginal on the training images equal their label frequencies, so
p_s is the training prior and the model's own class bias is removed before EM (without it, EM
turns a miscalibrated class marginal into a spurious shift; docs/methods.md#prior-estimation).
On training images a bias is only consistent with p_s "reference" or "train". Reference data may
be given as [N, E, C] or already averaged [N, C].

The anchor pi_0 = p_s e^-b (normalised) is the prior under which the calibrated posterior predicts
exactly what the plain average predicts; :class:`SafePrior` tests against it and shrinks toward it.

Methods: :class:`EMPrior` (Saerens et al. 2002, maximum likelihood), :class:`MAPPrior` (MAP-EM
with Dirichlet pseudo-counts), :class:`SafePrior` (the shipped default: shift test, MAP shrinkage
toward the anchor and a damped adjustment; the plain average untouched when no shift is found).
The oracle (true test prior) is in ``oracle_prior.py``. All of them stream (``online()``): a batch
is scored with the estimate from the previous batches only, then learnt from.

This module holds the methods and their arguments; the math (EM, the likelihood-ratio test, KL) is
in ``prior_math.py``, the calibration fit in ``prior_calibration.py`` and the online adapter in
``prior_online.py``, all importable from here as before.
"""
import math
import numbers
from abc import abstractmethod

import torch

from base.base_test_time import TestTimeMethod
from utils.errors import UserError
from trainer.test_time.prior_calibration import BIAS_FAMILIES, cross_fit_kappa, fit_calibration, fit_family
from trainer.test_time.prior_math import (FLOOR, _log, _normalise, chi2_sf, em_prior, ensemble_logits, kl_divergence,
                                          log_likelihood_ratio, mean_prediction)
from trainer.test_time.prior_online import OnlinePrior

SOURCE_PRIORS = ("uniform", "train", "reference", "reference_balanced")
CALIBRATION_DATA = ("validation", "training")  # which labelled images calibrate a method
DEFAULT = "default"  # source_prior not given: "uniform" on validation images, "reference" on training images
TOWARD = ("source", "uniform", "plain")
STRENGTH_RULES = ("null", "auto")  # SafePrior's strength chosen per test set (null) or per model (auto)
NULL_TARGETS = ("certified", "plain", "nearest", "segment")  # what strength "null" measures a shift from (SafePrior)
NULL_NOISES = ("target", "spread", "both")  # what strength "null" takes as the noise of its estimate (SafePrior)
NULL_AXES = ("train_prior_and_balance", "train_prior", "none")  # the directions strength "null" reads a shift along
AXIS_GATES = ("certified", "observed")  # how a shift's part along the head-tail axis is judged (SafePrior)
AXIS_NOISES = ("split", "both")  # the noise of the head-tail axis coordinate under noise "both" (SafePrior)
REST_FLOORS = ("none", "whole")  # the least strength of a shift's rest off the directions (SafePrior)


# ----------------------------------------------------------------------------------- validation
def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_positive(name, value):
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} {value!r}: must be > 0 (a finite number)")
    return float(value)


def check_positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} {value!r}: must be an integer >= 1")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} {value!r}: expected true or false")
    return value


def check_bias(value):
    """``bias``: true (a free per-class bias), false (none) or a family with fewer effective
    parameters: "prior" (g log p_train), "shrunk" / "shrunk_prior" (a free bias shrunk toward 0 /
    toward g log p_train, the shrinkage cross-fitted on the calibration images)."""
    if isinstance(value, bool) or value in BIAS_FAMILIES[2:]:
        return value
    raise ValueError(f"bias {value!r}: expected true or false, or a family \"prior\", \"shrunk\" or \"shrunk_prior\"")


def check_temperature(value):
    if value == "fit":
        return value
    if not _is_number(value) or value <= 0:
        raise ValueError(f"temperature {value!r}: expected a number > 0 or \"fit\" (NLL on the reference logits)")
    return float(value)


def check_fraction(name, value, low_open=True, high_open=True):
    ok = _is_number(value) and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} {value!r}: must be a number in {interval}")
    return float(value)


# ----------------------------------------------------------------------------------- methods
class LabelShiftMethod(TestTimeMethod):
    """Shared machinery: calibration and the source prior (cached per instance), the adjustment,
    and the online form. Subclasses define ``estimate(log_q, log_ps)`` (what prior to apply)."""

    def __init__(self, source_prior=DEFAULT, temperature: float | str = "fit", bias: bool | str = True,
                 calibration="validation", tol=1e-6, max_iter=1000):
        self.calibration_data = check_choice("calibration", calibration, CALIBRATION_DATA)
        if source_prior is DEFAULT:  # held-out images are weighted to a balanced set; training images are what they are
            source_prior = "uniform" if self.calibration_data == "validation" else "reference"
        self.source_prior = check_choice("source_prior", source_prior, SOURCE_PRIORS)
        self.temperature = check_temperature(temperature)
        self.bias = check_bias(bias)
        if self.bias and self.calibration_data == "training" and self.source_prior not in ("reference", "train"):
            raise ValueError(f"bias true with source_prior {self.source_prior!r} and calibration \"training\": a class "
                             "bias fitted on the training images calibrates the posterior for their prior, so "
                             "source_prior must be \"reference\" or \"train\" (or set bias false, or calibrate on "
                             "the validation split)")
        self.tol = check_positive("tol", tol)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self._calibration = None

    def check(self, data):
        """Before any work: a method calibrated on the validation split needs the data module to have one."""
        if self.needs_reference() and self.calibration_data == "validation" and not data.has_validation:
            option = getattr(data, "validation_option", "data_loader.args.validation")
            raise ValueError(f"calibration \"validation\": {type(data).__name__} has no validation split; configure "
                             f"one with {option}, or set test_time.args.calibration to \"training\"")
        if self.needs_reference() and self.calibration_data == "validation":
            info = data.validation_info or {}
            self.check_split(info.get("counts") or [], info.get("option", "data_loader.args.validation"))

    MIN_PER_CLASS = 2  # a per-class calibration (or SafePrior's halved split) needs two images of a class

    def check_split(self, counts, option):
        """A split too small to calibrate: the first class with fewer than two images (every class
        counts when a bias is fitted or the split is halved; else the split as a whole)."""
        per_class = self.bias is not False or getattr(self, "auto", False)
        if per_class:
            for cls, n in enumerate(counts):
                if n < self.MIN_PER_CLASS:
                    raise ValueError(f"calibration \"validation\": class {cls} has {n} validation image(s); "
                                     f"{type(self).__name__} with bias {self.bias!r} needs at least "
                                     f"{self.MIN_PER_CLASS} per class; enlarge the split with {option}")
        elif sum(counts) < self.MIN_PER_CLASS:
            raise ValueError(f"calibration \"validation\": {sum(counts)} validation image(s); at least "
                             f"{self.MIN_PER_CLASS} are needed; enlarge the split with {option}")

    # ---- calibration (computed once per instance, from the allowed labelled data)
    def needs_reference(self):
        return self.temperature == "fit" or self.bias or self.source_prior.startswith("reference")

    def calibration_logits(self, ctx):
        """(mean logits [N, C], targets [N]) of the images that calibrate: the validation split
        (default) or, when asked for, the training images."""
        if self.calibration_data == "validation":
            if ctx.validation_logits is None:
                raise ValueError(f"{type(self).__name__}: calibration \"validation\" needs a validation split, and "
                                 "this data module has none (configure data_loader.args.validation or "
                                 "data_loader.args.val_list, or set test_time.args.calibration to \"training\")")
            logits, targets = ctx.validation_logits()
        else:
            if ctx.reference_logits is None:
                raise ValueError(f"{type(self).__name__}: temperature {self.temperature!r} / bias {self.bias} / "
                                 f"source_prior {self.source_prior!r} need the reference logits of the training "
                                 "images (ctx.reference_logits), which this context does not provide")
            logits, targets = ctx.reference_logits()
        return ensemble_logits(logits), torch.as_tensor(targets).long()

    def class_weights(self, targets, ctx):
        """Per-class weights of the calibration NLL and mean predictions. Training images: none (they
        are the training prior already). Validation images: weighted to a balanced set, or to the
        training prior for source_prior "train" / "reference"."""
        if self.calibration_data == "training":
            return None
        c = ctx.num_classes
        counts = torch.bincount(targets, minlength=c).double()
        if self.source_prior in ("train", "reference"):
            goal = torch.as_tensor(ctx.train_prior, dtype=torch.float64).flatten()
        else:
            goal = torch.full((c,), 1.0 / c, dtype=torch.float64)
        present = counts > 0
        goal = torch.where(present, goal, torch.zeros_like(goal))
        goal = goal / goal.sum()
        return torch.where(present, goal / counts.clamp_min(1), torch.zeros_like(goal))

    def calibration(self, ctx):
        """{"temperature": T, "bias": [C] or None, "source_prior": [C] float64, "anchor": [C],
        "data": which images, "images_per_class": [C]}, computed on first use."""
        if self._calibration is None:
            reference = self.calibration_logits(ctx) if self.needs_reference() else None
            if reference is not None and self.calibration_data == "validation":
                option = (ctx.validation_info or {}).get("option", "data_loader.args.validation")
                try:
                    self.check_split(torch.bincount(reference[1], minlength=ctx.num_classes).tolist(), option)
                except ValueError as e:
                    raise UserError(str(e)) from None
            self._calibration = self.fit(reference, ctx)
        return self._calibration

    def fit(self, reference, ctx, start=None):
        """The calibration from ``reference`` = (mean logits, targets) (or None when nothing is fitted);
        ``start``: the calibration of a larger set holding these images (the whole split's, for one of
        its halves), where the fit starts (the optimum does not depend on it)."""
        c = ctx.num_classes
        weights = None if reference is None else self.class_weights(reference[1], ctx)
        temperature, bias = (self.temperature if self.temperature != "fit" else 1.0), None
        kappa = None
        if isinstance(self.bias, str):  # a family with fewer effective parameters (temperature always fitted)
            if self.temperature != "fit":
                raise ValueError(f"bias {self.bias!r} fits the temperature with the bias; set temperature \"fit\"")
            log_prior = _log(_normalise(torch.as_tensor(ctx.train_prior, dtype=torch.float64).flatten()))
            if self.bias.startswith("shrunk"):
                kappa, _ = cross_fit_kappa(reference[0], reference[1], self.bias, log_prior, weights)
            temperature, bias = fit_family(reference[0], reference[1], self.bias, log_prior, weights,
                                           kappa if kappa is not None else 0.0)
        elif self.temperature == "fit" or self.bias:
            temperature, bias = fit_calibration(reference[0], reference[1], fit_temperature=self.temperature == "fit",
                                                fit_bias=self.bias, temperature=temperature, class_weights=weights,
                                                start=None if start is None else (start["temperature"], start["bias"]))
        cal = {"temperature": float(temperature), "bias": bias, "bias_family": self.bias_family,
               "kappa": kappa if kappa is None or math.isfinite(kappa) else "inf"}
        if self.source_prior == "uniform":
            ps = torch.full((c,), 1.0 / c, dtype=torch.float64)
        elif self.source_prior == "train":
            ps = torch.as_tensor(ctx.train_prior, dtype=torch.float64).flatten()
            if ps.numel() != c or not torch.isfinite(ps).all() or (ps < 0).any() or ps.sum() <= 0:
                raise ValueError(f"ctx.train_prior: expected {c} non-negative class frequencies")
        elif weights is not None:  # the calibrated posterior's mean under the class weights
            q = torch.softmax(self._calibrate(reference[0], cal).double(), 1)
            ps = (q * weights[reference[1]][:, None]).sum(0)
        else:
            log_q = torch.log_softmax(self._calibrate(reference[0], cal), 1)
            ps = mean_prediction(log_q, reference[1], c, balanced=self.source_prior == "reference_balanced")
        cal["source_prior"] = _normalise(ps.clamp_min(FLOOR))
        # The prior under which the calibrated posterior predicts exactly what the plain average
        # predicts: argmax z = argmax (z_cal - b) = argmax (z_cal + log anchor - log p_s).
        cal["anchor"] = cal["source_prior"] if bias is None else _normalise(cal["source_prior"] * torch.exp(-bias))
        cal["data"] = self.calibration_data if reference is not None else "none"
        cal["images_per_class"] = [] if reference is None else torch.bincount(reference[1], minlength=c).tolist()
        info = ctx.validation_info or {}
        cal["in_sample_classes"] = list(info.get("in_sample_classes", [])) if cal["data"] == "validation" else []
        return cal

    @property
    def bias_family(self):
        if isinstance(self.bias, bool):
            return "free" if self.bias else "none"
        return self.bias

    @staticmethod
    def _calibrate(z, cal):
        z = z.float() / cal["temperature"]
        return z if cal["bias"] is None else z + cal["bias"].float()

    # ---- what a subclass decides
    @abstractmethod
    def estimate(self, log_q, cal, ctx):
        """-> (prior to apply [C] float64, facts dict). The adjustment is log prior - log p_s; the
        fact ``unchanged`` True returns the plain average itself."""

    def log_ratio(self, prior, cal):
        """What is added to the calibrated logits: log prior - log p_s (the Bayes adjustment)."""
        return _log(prior) - _log(cal["source_prior"])

    def scores(self, z_cal, prior, cal):
        return (z_cal.double() + self.log_ratio(prior, cal)).float()

    # ---- the contract
    def adapt(self, logits, ctx):
        z = ensemble_logits(logits)
        cal = self.calibration(ctx)
        z_cal = self._calibrate(z, cal)
        log_q = torch.log_softmax(z_cal, 1)
        prior, facts = self.estimate(log_q, cal, ctx)
        if facts.get("unchanged"):
            scores = z  # the plain average, bit for bit
        else:
            scores = self.scores(z_cal, prior, cal)
        facts.pop("unchanged", None)
        return {"scores": scores, "prior": [float(v) for v in prior], "temperature": cal["temperature"],
                "source_prior": [float(v) for v in cal["source_prior"]], "calibrated_on": cal["data"],
                "calibration_images_per_class": cal["images_per_class"],
                "calibration_in_sample_classes": cal["in_sample_classes"], "bias_family": cal["bias_family"],
                "shrinkage": cal["kappa"], **facts}

    def online(self, ctx):
        return OnlinePrior(self, ctx)

    def extra_counts(self, cal):
        return None


class EMPrior(LabelShiftMethod):
    """Maximum-likelihood test prior by EM (Saerens et al. 2002), then the Bayes adjustment.

    Args: ``source_prior`` ("uniform" | "train" | "reference" | "reference_balanced"; default
    "reference"), ``temperature`` (number > 0 or "fit"; default "fit"), ``bias`` (fit a per-class
    bias with the temperature; default true; needs source_prior "reference" or "train"), ``tol``
    (largest change of pi at convergence; 1e-6), ``max_iter`` (1000)."""

    def estimate(self, log_q, cal, ctx):
        pi, it, conv = em_prior(log_q, cal["source_prior"], tol=self.tol, max_iter=self.max_iter)
        return pi, {"iterations": it, "converged": conv}


class MAPPrior(LabelShiftMethod):
    """MAP-EM with a Dirichlet prior of pseudo-counts: M-step pi ∝ sum_i r_iy + a_y - 1, with
    a_y - 1 = ``pseudo_count`` * C * m_y, m = p_s (``toward``: "source", default) or uniform
    ("uniform": a_y = 1 + pseudo_count for every class, a_y > 1 shrinks toward uniform).
    ``pseudo_count`` > 0 keeps every class's estimate positive, with missing classes and few images;
    its weight fades as the test set grows. Other args as :class:`EMPrior`."""

    def __init__(self, pseudo_count=1.0, toward="source", **kwargs):
        super().__init__(**kwargs)
        self.pseudo_count = check_positive("pseudo_count", pseudo_count)
        self.toward = check_choice("toward", toward, TOWARD)

    def extra_counts(self, cal):
        ps = cal["source_prior"]
        c = ps.numel()
        m = {"source": ps, "plain": cal["anchor"], "uniform": torch.full((c,), 1.0 / c, dtype=torch.float64)}
        return self.pseudo_count * c * _normalise(m[self.toward])

    def estimate(self, log_q, cal, ctx):
        pi, it, conv = em_prior(log_q, cal["source_prior"], extra_counts=self.extra_counts(cal), tol=self.tol,
                                max_iter=self.max_iter)
        return pi, {"iterations": it, "converged": conv}


class SafePrior(MAPPrior):
    """The shipped default: move away from the plain expert average only as far as the test set's
    evidence for a label shift carries it, and only as far as the model's own validation split says
    the adjustment is safe.

    1. Calibrate on the validation split (default; ``calibration`` "training" uses the training
       images): ``temperature`` "fit" and, with ``bias`` (default true), a per-class bias
       (bias-corrected temperature scaling, Alexandari et al. 2020), the NLL weighted so that the
       classes count as under ``source_prior`` (default uniform on validation data).
    2. The anchor pi_0: the prior under which the calibrated posterior predicts exactly what the
       plain average predicts (pi_0 ∝ p_s e^-b; p_s without a bias).
    3. Shift test (Saerens 2002): 2 [L(pi_mle) - L(pi_0)] against a chi-squared with C - 1 degrees
       of freedom, and the size of the shift KL(pi_mle || pi_0). If the p-value is >= ``significance``
       or the KL is below ``min_divergence`` nats, the plain average is returned unchanged
       (``shift_detected`` false).
    4. Otherwise the MAP estimate with pseudo-counts toward pi_0 (``toward`` "plain") is applied,
       damped in log space: scores = z_cal + log pi_0 - log p_s + ``strength`` (log pi_map - log pi_0).
       ``strength`` 0 would be the plain average, 1 the full Bayes adjustment.

    ``strength`` "null" (the default) is chosen per test set from the validation split alone
    (trainer/test_time/shift_simulation.py). The split is halved per class 8 times.
    a. The target: with ``null_target`` "certified" the move from pi_0 to the
       calibration's reading of a balanced set (p_s) is kept in the share the halves agree on:
       s_b = max(0, 1 - d / ||t||^2), t the centred log ratio log p_s - log pi_0 and d the squared
       distance between two disjoint halves' own t (twice the mean over pairs of halvings). The
       target is pi_b = pi_0 (p_s / pi_0)^s_b; "plain" (default) keeps pi_0 (s_b = 0); "nearest"
       measures each test set's shift from whichever of pi_0 and pi_b its estimate lies nearer
       (centred log distance), so a set that leans like the plain average keeps the plain target;
       "segment" from the point of the move pi_0 -> pi_b nearest the estimate (its projection, clipped).
    b. The strength: one half calibrates while the other is resampled into a balanced set of the
       test set's size, on which the whole estimate runs; the mean size ||log pi - log pi_b||^2
       (centred) of those unshifted estimates is the noise, and the strength is max(0, 1 - noise /
       the test set's own size), applied as pi_b (pi_map / pi_b)^strength (``noise`` "target").
       With ``noise`` "spread" the noise is instead how far the halves' unshifted estimates lie from
       each other (the mean squared distance of every pair), which leaves out what they share: a
       lean of the plain average that every half reads alike counts as signal, not noise. With
       "both" (default) it is the larger of that spread and the test set's own noise: each half's
       calibration runs the estimate on its own bootstrap resample of the test set, and the upper
       95 % confidence bound of the variance of those 8 estimates is taken (it sees what a balanced
       resample of the split cannot: how this test set's images move the estimate).
    c. The directions (``axis``). With "train_prior" the head-tail axis: a shift lying mostly along
       the centred log training prior (the direction of every forward and backward long tail) is
       judged on what the split certifies of its part along the axis (``axis_gate`` "certified",
       default: the squared coordinate less the whole split's own variance of it, half the halves'
       spread along the axis; "observed": the square as read, which the calibration's noise along
       the axis inflates) and is moved along that axis by its size less one standard deviation of
       the noise's part along it, not less than the whole rule's strength, and its rest by its own
       James-Stein strength (``rest_floor`` "none", default; with "whole" not less than the whole
       rule's strength either, which at a strong shift moves the rest, mostly the rare classes'
       estimation noise, in full);
       any other shift keeps the whole rule (as does every shift with ``axis`` "none"). With
       "train_prior_and_balance" (default) the calibration's move from pi_0 to a balanced set,
       off the axis, is a second direction where the halves certify it (they disagree by less than
       the move): a shift's part along it is clipped to [0, the move's James-Stein share] and
       soft-thresholded by the test set's own noise along it; a shift lying mostly in the plane of
       the two directions is read along both, any other keeps the whole rule. The noise along the
       axis (``axis_noise``) is the split's spread along it alone ("split", default: the test set's
       own noise, an upper confidence bound over 8 estimates, stays in the whole rule's and the
       rest's noise) or, with "both", the larger of that and the test set's own part along it.
       Every result holds ``strength``, ``shift_size``, ``null_shift_size``, ``test_set_noise`` (with
       "both"), ``balanced_share``, ``rule`` and ``axis_share`` (with an axis; rule "axis" adds
       ``rest_strength``, ``axis_noise`` and ``rest_noise``; rule "axes" also ``balance_shift``,
       ``balance_strength`` and ``balance_noise``); a noise that is not a finite number (halves the
       fit separates perfectly) is reported as None and gives strength 0.

    ``strength`` and ``min_divergence`` "auto" choose one setting per model instead: each half
    calibrates while the other is resampled into simulated test sets of ``simulation_size`` images
    under forward, backward and Dirichlet priors; the strongest setting whose paired loss against
    the plain average stays within the noise on every simulated set is kept, and none qualifying
    means the plain average. The choice and its evidence are written in every result (``selection``).

    Args: ``significance`` (in (0, 1); 0.001), ``min_divergence`` (>= 0 nats, 0; or "auto"),
    ``strength`` ("null", in (0, 1] or "auto"), ``null_target`` ("certified", "plain", "nearest" or "segment"; strength
    "null" only), ``noise`` ("target", "spread" or "both"; strength "null" only), ``axis``
    ("train_prior_and_balance", "train_prior" or "none"; strength "null" only), ``axis_noise`` ("split" or
    "both"; noise "both" only), ``rest_floor`` ("none" or "whole"; strength "null" only), ``axis_gate``
    ("certified" or "observed"; strength "null" only), ``simulation_size`` (images per simulated set
    of "auto"; 2000),
    ``pseudo_count`` (> 0; 1), ``toward`` ("plain"), ``calibration``, ``source_prior``,
    ``temperature``, ``bias``, ``tol``, ``max_iter`` (as :class:`MAPPrior`). On a stream the test
    is made on the images seen so far; a batch is always scored before it is learnt from.
    """

    def __init__(self, significance=0.001, strength: float | str = "null", min_divergence: float | str = 0.0,
                 pseudo_count=1.0, toward="plain", simulation_size=2000, null_target="plain", noise="both",
                 axis="train_prior_and_balance", axis_noise="split", rest_floor="none", axis_gate="certified",
                 **kwargs):
        super().__init__(pseudo_count=pseudo_count, toward=toward, **kwargs)
        self.null_target = check_choice("null_target", null_target, NULL_TARGETS)
        self.noise = check_choice("noise", noise, NULL_NOISES)
        self.axis = check_choice("axis", axis, NULL_AXES)
        self.axis_noise = check_choice("axis_noise", axis_noise, AXIS_NOISES)
        self.rest_floor = check_choice("rest_floor", rest_floor, REST_FLOORS)
        self.axis_gate = check_choice("axis_gate", axis_gate, AXIS_GATES)
        self.significance = check_fraction("significance", significance)
        if min_divergence != "auto" and (not _is_number(min_divergence) or min_divergence < 0):
            raise ValueError(f"min_divergence {min_divergence!r}: must be a number >= 0 (nats) or \"auto\"")
        self.min_divergence = min_divergence if min_divergence == "auto" else float(min_divergence)
        self.strength = strength if strength in STRENGTH_RULES else check_fraction("strength", strength,
                                                                                    high_open=False)
        self.simulation_size = check_positive_int("simulation_size", simulation_size)
        if self.auto and self.calibration_data != "validation":
            raise ValueError("strength / min_divergence \"auto\" are chosen on the validation split; with calibration "
                             "\"training\" give them as numbers")

    @property
    def auto(self):
        """Settings read off the validation split (each needs two images of a class to halve it)."""
        return self.strength in STRENGTH_RULES or self.min_divergence == "auto"

    def calibration(self, ctx):
        if self._calibration is None:
            cal = super().calibration(ctx)
            if self.strength == "null":
                from trainer.test_time.shift_simulation import balanced_share, head_tail_axis, split_halves
                cal["halves"] = split_halves(self, self.calibration_logits(ctx), ctx, start=cal)
                share, evidence = balanced_share(cal["halves"], cal) if self.null_target != "plain" else (0.0, {})
                cal["balanced_share"] = share
                cal["axis"] = head_tail_axis(ctx.train_prior) if self.axis != "none" else None
                if self.axis == "train_prior_and_balance":
                    from trainer.test_time.shift_simulation import balance_direction
                    cal["balance_axis"], cal["balance_cap"], facts = balance_direction(cal, cal["axis"])
                    evidence = {**evidence, **facts}
                gate = 0.0 if self.min_divergence == "auto" else self.min_divergence
                cal["selection"] = {"strength": "null", "min_divergence": gate, "null_target": self.null_target,
                                    "noise": self.noise, "axis": self.directions_in_use(cal),
                                    "axis_noise": self.axis_noise, "rest_floor": self.rest_floor,
                                    "axis_gate": self.axis_gate,
                                    "balanced_share": share, **evidence,
                                    "chosen_by": "validation split, per test set: its shift size against an unshifted "
                                    "set of its size seen through cross-fitted halves of the split"}
            elif self.auto:
                from trainer.test_time.shift_simulation import select_settings
                cal["selection"] = select_settings(self, self.calibration_logits(ctx), ctx)
            else:
                cal["selection"] = {"strength": self.strength, "min_divergence": self.min_divergence,
                                    "chosen_by": "config"}
        return self._calibration

    def directions_in_use(self, cal):
        """``axis`` as it applies here: without a head-tail axis (a balanced training prior) only the
        balanced move's direction ("balance") or none."""
        if cal["axis"] is not None:
            return self.axis
        return "balance" if cal.get("balance_axis") is not None else "none"

    def settings(self, cal):
        """(strength, min_divergence) in use; strength 0 means the plain average (nothing qualified)."""
        chosen = cal.get("selection") or {}
        if self.strength == "null":  # the strength is in the prior applied (:meth:`applied`)
            return 1.0, float(chosen.get("min_divergence", 0.0))
        strength = chosen["strength"] if self.strength == "auto" else self.strength
        divergence = chosen["min_divergence"] if self.min_divergence == "auto" else self.min_divergence
        return float(strength), float(divergence)

    def log_ratio(self, prior, cal):
        anchor = _log(cal["anchor"])
        return anchor - _log(cal["source_prior"]) + self.settings(cal)[0] * (_log(prior) - anchor)

    def shift_test(self, log_q, cal):
        ps = cal["source_prior"]
        mle, it, _ = em_prior(log_q, ps, tol=self.tol, max_iter=self.max_iter, init=cal["anchor"])
        stat = log_likelihood_ratio(log_q, ps, mle, null=cal["anchor"])
        p_value = chi2_sf(stat, ps.numel() - 1)
        divergence = kl_divergence(mle, cal["anchor"])
        strength, min_divergence = self.settings(cal)
        detected = p_value < self.significance and divergence >= min_divergence and strength > 0
        return {"log_likelihood_ratio": stat, "p_value": p_value, "divergence": divergence,
                "shift_detected": bool(detected), "iterations_mle": it}

    def estimate(self, log_q, cal, ctx):
        facts = self.shift_test(log_q, cal)
        facts["selection"] = cal["selection"]
        if not facts["shift_detected"]:
            return cal["anchor"], {**facts, "iterations": 0, "converged": True, "unchanged": True}
        pi, it, conv = self.map_estimate(log_q, cal)
        facts.update(iterations=it, converged=conv)
        if self.strength == "null":
            from trainer.test_time.shift_simulation import null_adjustment, shifted, target_prior
            adjustment, evidence = null_adjustment(self, cal, pi, log_q.shape[0], log_q=log_q)
            facts.update(**evidence)
            pi = shifted(target_prior(cal, evidence["target_share"]), adjustment)
        return pi, facts

    def applied(self, prior, cal, n, strength=None, log_q=None, cache=None):
        """The prior applied to ``n`` images: with strength "null", the target moved by
        :func:`~trainer.test_time.shift_simulation.null_adjustment` toward ``prior`` (with a given
        ``strength``, pi_b (pi / pi_b)^strength normalised, pi_b the target); else ``prior``. A stream
        (a new size every batch) takes the null at the nearest power of two of ``n``, so it computes
        it for a logarithmic number of sizes; with noise "both" the test set's own noise is read from
        ``log_q`` (the images seen so far) once per such size (kept in the stream's ``cache``)."""
        if self.strength != "null":
            return prior
        from trainer.test_time.shift_simulation import null_adjustment, shifted, target_prior, toward
        if strength is not None:
            return toward(target_prior(cal, cal["balanced_share"]), prior, strength)
        adjustment, evidence = null_adjustment(self, cal, prior, 2 ** round(math.log2(max(n, 1))), log_q=log_q,
                                               cache=cache)
        return shifted(target_prior(cal, evidence["target_share"]), adjustment)

    def map_estimate(self, log_q, cal, tol=None):
        return em_prior(log_q, cal["source_prior"], extra_counts=self.extra_counts(cal), tol=tol or self.tol,
                        max_iter=self.max_iter, init=cal["anchor"])

    def online(self, ctx):
        return OnlinePrior(self, ctx, shift_test=True)
