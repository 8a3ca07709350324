"""Label-shift test-time methods (docs/methods.md#label-shift, #prior-estimation): EM, MAP-EM, the safe default, the
oracle, the online form, calibration, argument checks. Synthetic logits of a calibrated model: Gaussian
class-conditionals, so log p(x|y) is known exactly and the Bayes posterior under any prior is too."""

import numpy as np
import pytest
import torch

import trainer.test_time as test_time
from base.base_test_time import TestTimeContext as Context
from trainer.test_time import EMPrior, MAPPrior, OraclePrior, SafePrior
from trainer.test_time.label_shift import chi2_sf, em_prior, fit_calibration, mean_prediction

C = 5
TOL = 0.03  # largest |pi_hat - pi| accepted at n = 4000 (the estimates land near 0.005 - 0.017)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny reductions on a busy 2-core machine are ~100x slower with 2 threads (contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def profile(ratio, reverse=False):
    p = ratio ** (-np.arange(C) / (C - 1))
    p = p[::-1] if reverse else p
    return p / p.sum()


TRAIN_PRIOR = profile(5)
PRIORS = {"forward50": profile(50), "backward50": profile(50, reverse=True),
          "dirichlet1": np.random.default_rng(3).dirichlet(np.ones(C))}


class Gaussians:
    """x | y ~ N(mu_y, I) in 4 dimensions; log p(x|y) up to a constant is the balanced logit."""

    def __init__(self, seed=0, sep=1.6):
        self.mu = np.random.default_rng(seed).normal(0, sep, size=(C, 4))

    def sample(self, prior, n, seed):
        g = np.random.default_rng(seed)
        y = g.choice(C, size=n, p=prior)
        x = self.mu[y] + g.normal(size=(n, self.mu.shape[1]))
        return torch.tensor(-0.5 * ((x[:, None, :] - self.mu[None]) ** 2).sum(-1), dtype=torch.float32), torch.tensor(y)


def experts(z, source_prior):
    """Three 'experts' z + log p_s + d_k whose mean is the posterior logit under ``source_prior``
    (d_k = +log p_train, 0, -log p_train, as TADE's experts differ by prior offsets)."""
    lp = torch.log(torch.as_tensor(source_prior, dtype=torch.float32))
    lt = torch.log(torch.as_tensor(TRAIN_PRIOR, dtype=torch.float32))
    base = z + lp
    return torch.stack([base + lt, base, base - lt], 1)


def context(model, reference_prior=TRAIN_PRIOR, n_ref=3000, scale=1.0, calls=None, tilt=0.0, **kw):
    z, y = model.sample(reference_prior, n_ref, seed=99)
    ref = experts(z, reference_prior) * scale + tilt

    def reference_logits():
        if calls is not None:
            calls.append(1)
        return ref, y

    # A held-out sample of the same model (a validation split: balanced, like CIFAR's left-over images).
    zv, yv = model.sample(np.full(C, 1.0 / C), n_ref, seed=98)
    val = experts(zv, reference_prior) * scale + tilt
    kw.setdefault("validation_logits", lambda: (val, yv))
    return Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR),
                   reference_logits=reference_logits, **kw)


def accuracy(scores, y):
    return float((scores.argmax(1) == y).double().mean())


# ------------------------------------------------------------------ recovering a known prior
SETTINGS = {  # how the source prior p_s is known, and the calibration
    "uniform": dict(source_prior="uniform", temperature=1.0, bias=False),
    "train": dict(source_prior="train", temperature=1.0, bias=False),
    "reference": dict(source_prior="reference", temperature=1.0, bias=False, calibration="training"),
    "reference_fit_T": dict(source_prior="reference", temperature="fit", bias=False, calibration="training"),
    "bcts": dict(calibration="training"),  # temperature and class bias fitted on the training images' logits
}
# SafePrior as it was shipped before the validation split: calibrated on the training images, fixed settings.
TRAINING_SAFE = dict(calibration="training", strength=0.75, min_divergence=0.05)


@pytest.mark.parametrize("shift", list(PRIORS))
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", [EMPrior, MAPPrior, SafePrior])
def test_estimators_recover_a_known_prior(method, setting, shift):
    model = Gaussians()
    pi = PRIORS[shift]
    z, y = model.sample(pi, 4000, seed=1)
    # The logits are calibrated for the prior the source option names: balanced logits for
    # "uniform", the training prior's posterior for "train" and "reference".
    calibrated_for = np.full(C, 1.0 / C) if setting == "uniform" else TRAIN_PRIOR
    logits = experts(z, calibrated_for)
    ctx = context(model, reference_prior=TRAIN_PRIOR)
    kwargs = dict(SETTINGS[setting])
    if method is SafePrior:
        kwargs.update(strength=0.75, min_divergence=0.05)
    out = method(**kwargs).adapt(logits, ctx)
    est = np.array(out["prior"])
    assert est.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.abs(est - pi).max() < TOL, (est, pi)
    assert np.abs(calibrated_for - pi).max() > 3 * TOL  # the unadapted prior is far off: the check can fail
    assert accuracy(out["scores"], y) > accuracy(logits.mean(1), y) + 0.01
    if method is SafePrior:
        assert out["shift_detected"] and out["p_value"] < 1e-6 and out["divergence"] > 0.05


def test_em_matches_the_likelihood_maximum_and_the_reference_prior_is_the_mean_prediction():
    model = Gaussians()
    z, y = model.sample(PRIORS["dirichlet1"], 2000, seed=5)
    log_q = torch.log_softmax(z.double(), 1)
    ps = torch.full((C,), 1.0 / C, dtype=torch.float64)
    pi, it, conv = em_prior(log_q, ps, tol=1e-10, max_iter=5000)
    assert conv and it > 1
    # Stationarity of the concave log-likelihood on the simplex: d/dpi_y = mean_i q_iy/p_s_y / sum_c(...) = 1.
    w = torch.exp(log_q) / ps
    grad = (w / (w * pi).sum(1, keepdim=True)).mean(0)
    assert torch.allclose(grad, torch.ones(C, dtype=torch.float64), atol=1e-6)
    ref = torch.log_softmax(torch.randn(50, C, dtype=torch.float64), 1)
    t = torch.tensor([0] * 40 + [1] * 10)
    assert torch.allclose(mean_prediction(ref), torch.exp(ref).mean(0))
    balanced = (torch.exp(ref[:40]).mean(0) + torch.exp(ref[40:]).mean(0)) / 2
    assert torch.allclose(mean_prediction(ref, t, C, balanced=True), balanced)


# ------------------------------------------------------------------ MAP: missing classes, few images
@pytest.mark.parametrize("toward", ["source", "uniform"])
def test_map_is_finite_and_positive_with_missing_classes_and_ten_images(toward):
    model = Gaussians(sep=3.0)
    only_two = np.array([0.5, 0.5, 0, 0, 0])
    z, _ = model.sample(only_two, 10, seed=2)
    logits = experts(z, np.full(C, 1.0 / C))
    ctx = context(model)
    mle = EMPrior(**SETTINGS["uniform"]).adapt(logits, ctx)
    out = MAPPrior(**SETTINGS["uniform"], pseudo_count=1.0, toward=toward).adapt(logits, ctx)
    est = torch.tensor(out["prior"])
    assert torch.isfinite(est).all() and (est > 0).all()
    assert est.min() > 0.5 / (10 + C)  # at least half a pseudo-count of mass per class
    assert torch.isfinite(out["scores"]).all() and torch.isfinite(mle["scores"]).all()
    assert min(mle["prior"]) < 1e-3 < float(est.min())  # the MLE drives missing classes toward 0; MAP does not
    assert est[:2].sum() > 0.5  # the two present classes still dominate the estimate


def test_map_reduces_to_the_mle_as_pseudo_counts_vanish():
    model = Gaussians()
    z, _ = model.sample(PRIORS["forward50"], 1000, seed=4)
    logits = experts(z, np.full(C, 1.0 / C))
    ctx = context(model)
    mle = np.array(EMPrior(**SETTINGS["uniform"], tol=1e-9).adapt(logits, ctx)["prior"])
    tiny = np.array(MAPPrior(**SETTINGS["uniform"], pseudo_count=1e-6, tol=1e-9).adapt(logits, ctx)["prior"])
    big = np.array(MAPPrior(**SETTINGS["uniform"], pseudo_count=1e4, toward="uniform").adapt(logits, ctx)["prior"])
    assert np.abs(tiny - mle).max() < 1e-4
    assert np.abs(big - 1.0 / C).max() < 0.02  # 10^4 pseudo-counts per class overwhelm 1000 images


# ------------------------------------------------------------------ the safe default
def test_safe_default_leaves_the_plain_average_when_no_shift_is_found():
    model = Gaussians()
    ctx = context(model, reference_prior=TRAIN_PRIOR, n_ref=20000)
    z, _ = model.sample(TRAIN_PRIOR, 1000, seed=7)  # the test prior is the training prior: no shift
    logits = experts(z, TRAIN_PRIOR)
    out = SafePrior(**TRAINING_SAFE).adapt(logits, ctx)
    assert not out["shift_detected"] and out["p_value"] >= 0.001
    assert torch.equal(out["scores"], logits.float().mean(1))
    assert out["iterations"] == 0 and out["temperature"] == pytest.approx(1.0, abs=0.1)


def test_safe_default_finds_shift_on_few_images_only_when_strong():
    model = Gaussians()
    ctx = context(model)
    z, _ = model.sample(PRIORS["backward50"], 300, seed=8)
    out = SafePrior(**TRAINING_SAFE).adapt(experts(z, TRAIN_PRIOR), ctx)
    assert out["shift_detected"]
    z, _ = model.sample(TRAIN_PRIOR, 30, seed=9)
    out = SafePrior(**TRAINING_SAFE).adapt(experts(z, TRAIN_PRIOR), ctx)
    assert not out["shift_detected"]


def test_the_anchor_prior_reproduces_the_plain_average_under_a_fitted_bias():
    model = Gaussians()
    tilt = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0])  # a class bias the calibration must undo
    ctx = context(model, scale=2.0, tilt=tilt)
    z, _ = model.sample(PRIORS["dirichlet1"], 500, seed=14)
    logits = experts(z, TRAIN_PRIOR) * 2.0 + tilt
    method = SafePrior(**TRAINING_SAFE)
    cal = method.calibration(ctx)
    assert torch.allclose(cal["bias"] - cal["bias"].mean(), -(tilt - tilt.mean()).double() / 2.0, atol=0.15)
    z_cal = method._calibrate(logits.mean(1), cal)
    as_plain = z_cal.double() + torch.log(cal["anchor"]) - torch.log(cal["source_prior"])
    assert torch.equal(as_plain.argmax(1), logits.mean(1).argmax(1))
    # strength interpolates between the plain average (anchor) and the full adjustment
    prior = torch.tensor(PRIORS["backward50"])
    full = torch.log(prior) - torch.log(cal["source_prior"])
    half = SafePrior(calibration="training", strength=0.5, min_divergence=0.05).log_ratio(prior, cal)
    w0 = torch.log(cal["anchor"]) - torch.log(cal["source_prior"])
    assert torch.allclose(half, 0.5 * w0 + 0.5 * full)


def test_a_significant_but_small_shift_is_left_to_the_plain_average():
    model = Gaussians()
    ctx = context(model, n_ref=20000)
    slight = 0.9 * TRAIN_PRIOR + 0.1 * PRIORS["backward50"]  # KL from the training prior ~0.02 nats
    z, _ = model.sample(slight, 20000, seed=15)
    logits = experts(z, TRAIN_PRIOR)
    out = SafePrior(calibration="training", strength=0.75, min_divergence=0.05).adapt(logits, ctx)
    assert out["p_value"] < 1e-3 and out["divergence"] < 0.05 and not out["shift_detected"]
    assert torch.equal(out["scores"], logits.mean(1))
    assert SafePrior(calibration="training", strength=0.75, min_divergence=0.0).adapt(logits, ctx)["shift_detected"]


def test_chi_squared_tail():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-6)
    assert chi2_sf(9.487729036781154, 4) == pytest.approx(0.05, abs=1e-6)
    assert chi2_sf(0.0, 4) == pytest.approx(1.0)


# ------------------------------------------------------------------ calibration
def test_fitted_temperature_undoes_a_scaling_and_is_computed_once():
    model = Gaussians()
    calls = []
    ctx = context(model, scale=3.0, calls=calls, n_ref=6000)
    method = EMPrior(source_prior="reference", temperature="fit", bias=False, calibration="training")
    z, _ = model.sample(PRIORS["backward50"], 500, seed=10)
    first = method.adapt(experts(z, TRAIN_PRIOR) * 3.0, ctx)
    second = method.adapt(experts(z[:100], TRAIN_PRIOR) * 3.0, ctx)
    assert first["temperature"] == pytest.approx(3.0, rel=0.08)
    assert second["temperature"] == first["temperature"]
    assert len(calls) == 1  # the reference logits are read once per method instance
    assert np.abs(np.array(first["source_prior"]) - TRAIN_PRIOR).max() < 0.03  # the model's marginal = p_train


def test_bias_corrected_calibration_recovers_a_class_bias():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, C, generator=g, dtype=torch.float64) * 2
    b = torch.tensor([0.5, -0.5, 1.0, 0.0, -1.0], dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z * 0.5 + b, 1), 1, generator=g).squeeze(1)
    t, bias = fit_calibration(z, y, fit_temperature=True, fit_bias=True)
    assert t == pytest.approx(2.0, rel=0.1)
    assert torch.allclose(bias - bias.mean(), b - b.mean(), atol=0.15)


@pytest.mark.parametrize("fit_temperature,fit_bias", [(True, True), (True, False), (False, True)])
def test_newton_fit_finds_the_optimum_lbfgs_finds(monkeypatch, fit_temperature, fit_bias):
    import trainer.test_time.prior_calibration as calibration
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3000, C, generator=g, dtype=torch.float64) * 2
    b = torch.tensor([0.5, -0.5, 1.0, 0.0, -1.0], dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z * 0.7 + b, 1), 1, generator=g).squeeze(1)
    weights = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    kwargs = dict(fit_temperature=fit_temperature, fit_bias=fit_bias, class_weights=weights)
    newton = fit_calibration(z, y, **kwargs)
    started = fit_calibration(z[:1500], y[:1500], start=newton, **kwargs)  # a half, from the whole set's fit
    monkeypatch.setattr(calibration, "NEWTON_MAX_CLASSES", 0)  # L-BFGS only
    lbfgs = fit_calibration(z, y, **kwargs)
    half = fit_calibration(z[:1500], y[:1500], **kwargs)
    for (t1, b1), (t2, b2) in ((newton, lbfgs), (started, half)):
        assert t1 == pytest.approx(t2, abs=1e-5)
        assert (b1 is None) == (b2 is None) == (not fit_bias)
        if fit_bias:
            assert torch.allclose(b1, b2, atol=1e-4) and abs(float(b1.sum())) < 1e-9
    own = (started[0], newton[0]) if fit_temperature else (float(started[1][0]), float(newton[1][0]))
    assert own[0] != pytest.approx(own[1], abs=1e-4)  # the half has its own optimum, not its start


def test_newton_fit_that_cannot_step_falls_back_to_lbfgs(monkeypatch):
    import trainer.test_time.prior_calibration as calibration
    lbfgs, calls = torch.optim.LBFGS, []
    monkeypatch.setattr(calibration.torch.optim, "LBFGS", lambda *a, **k: calls.append(1) or lbfgs(*a, **k))
    y = torch.arange(C).repeat(4)
    t, _ = fit_calibration(5.0 * torch.nn.functional.one_hot(y, C).double(), y, fit_bias=True)
    assert not calls and 0 < t < 0.2  # separated: a tiny temperature, where the gradient vanishes
    with pytest.raises(Exception, match="fitted inverse temperature .* is not positive"):
        fit_calibration(-5.0 * torch.nn.functional.one_hot(y, C).double(), y)  # Newton cannot cross 1/T = 0
    assert calls


def test_reference_source_needs_reference_logits():
    ctx = Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR))
    with pytest.raises(ValueError, match="reference_logits"):
        EMPrior(source_prior="reference", calibration="training").adapt(torch.randn(4, 3, C), ctx)
    out = EMPrior(**SETTINGS["train"]).adapt(torch.randn(4, 3, C), ctx)  # needs none
    assert out["scores"].shape == (4, C)


# ------------------------------------------------------------------ online
@pytest.mark.parametrize("method", [EMPrior, MAPPrior, SafePrior])
def test_online_scores_a_batch_with_earlier_batches_only(method):
    model = Gaussians()
    ctx = context(model)
    z, y = model.sample(PRIORS["backward50"], 2000, seed=11)
    logits = experts(z, TRAIN_PRIOR)
    batches = list(torch.split(logits, 100))

    def run(batches):
        adapter = method().online(ctx)
        return [adapter.step(b) for b in batches], adapter

    def offsets(scores, batches, temperature):
        """What the method adds to a batch's calibrated logits: the adjustment it applies."""
        return [s.double() - b.mean(1).double() / temperature for s, b in zip(scores, batches)]

    scores, adapter = run(batches)
    temperature = adapter.summary()["temperature"]
    assert torch.equal(scores[0], batches[0].mean(1))  # nothing learnt before the first batch
    t = 5
    changed = list(batches)
    changed[t] = torch.randn_like(batches[t]) * 10
    scores2, _ = run(changed)
    for i in range(t):
        assert torch.equal(scores[i], scores2[i]), i
    a, b = offsets(scores, batches, temperature), offsets(scores2, changed, temperature)
    # Batch t's own logits do not move the adjustment applied to batch t (one offset per class) ...
    assert torch.allclose(a[t], a[t][:1].expand_as(a[t]), atol=1e-4)
    assert torch.allclose(a[t], b[t], atol=1e-4), (a[t][0], b[t][0])
    # ... but they are learnt from afterwards.
    assert not torch.allclose(a[t + 1], b[t + 1], atol=1e-2)
    # The running estimate ends near the offline one, and streaming helps on a skewed stream.
    offline = np.array(method().adapt(logits, ctx)["prior"])
    final = np.array(adapter.summary()["prior"])
    assert np.abs(final - offline).max() < 0.02
    online_acc = accuracy(torch.cat(scores), y)
    assert online_acc > accuracy(logits.mean(1), y) + 0.2
    assert adapter.summary()["images_seen"] == 2000


@pytest.mark.parametrize("method", [EMPrior, MAPPrior, SafePrior])
def test_online_streams_one_image_at_a_time(method):
    """Batches of one image (test_train.py --stream_batch 1): each scored alone with what the images before it
    taught, the first with the plain average; one image at a time learns what the same images learn in one batch."""
    model = Gaussians()
    ctx = context(model)
    z, _ = model.sample(PRIORS["backward50"], 60, seed=11)
    logits = experts(z, TRAIN_PRIOR)
    adapter = method().online(ctx)
    scores = [adapter.step(logits[i:i + 1]) for i in range(len(logits))]
    assert all(s.shape == (1, C) and torch.isfinite(s).all() for s in scores)
    assert torch.equal(scores[0], logits[:1].mean(1))
    facts = adapter.summary()
    assert facts["images_seen"] == 60 and facts["batches"] == 60
    whole = method().online(ctx)
    whole.step(logits)
    assert np.abs(np.array(facts["prior"]) - np.array(whole.summary()["prior"])).max() < 1e-3


# ------------------------------------------------------------------ the oracle
def test_oracle_uses_the_test_labels_and_is_flagged():
    model = Gaussians()
    z, y = model.sample(PRIORS["forward50"], 1000, seed=12)
    logits = experts(z, TRAIN_PRIOR)
    assert OraclePrior.uses_test_labels and "oracle" in OraclePrior.label().lower()
    assert "Oracle" in OraclePrior.__name__
    ctx = context(model, targets=y)
    out = OraclePrior(**SETTINGS["train"]).adapt(logits, ctx)
    counts = np.bincount(y.numpy(), minlength=C) / len(y)
    assert np.allclose(out["prior"], counts)
    expected = logits.mean(1).double() + torch.log(torch.tensor(counts)) - torch.log(torch.tensor(TRAIN_PRIOR))
    assert torch.allclose(out["scores"].double(), expected, atol=1e-5)
    assert not any(cls.uses_test_labels for name, cls in vars(test_time).items()
                   if isinstance(cls, type) and "oracle" not in name.lower())
    with pytest.raises(ValueError, match="test labels"):
        OraclePrior(**SETTINGS["train"]).adapt(logits, context(model))


def test_methods_are_found_by_class_name():
    for name in ("EMPrior", "MAPPrior", "SafePrior", "OraclePrior"):
        assert name in test_time.__all__
    assert "LabelShiftMethod" not in test_time.__all__  # the shared base is not a config type


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("cls,kwargs,message", [
    (MAPPrior, {"pseudo_count": 0}, "pseudo_count .*must be > 0"),
    (MAPPrior, {"pseudo_count": -1.0}, "pseudo_count"),
    (MAPPrior, {"toward": "mean"}, "toward 'mean': expected one of"),
    (EMPrior, {"source_prior": "test"}, "source_prior 'test': expected one of"),
    (EMPrior, {"tol": 0}, "tol 0: must be > 0"),
    (EMPrior, {"max_iter": 0}, "max_iter 0: must be an integer >= 1"),
    (EMPrior, {"max_iter": 2.5}, "max_iter"),
    (EMPrior, {"temperature": -1}, "temperature -1: expected a number > 0 or \"fit\""),
    (EMPrior, {"temperature": "auto"}, "temperature 'auto'"),
    (EMPrior, {"bias": "yes"}, "bias 'yes': expected true or false"),
    (SafePrior, {"significance": 1.5}, r"significance 1.5: must be a number in \(0, 1\)"),
    (SafePrior, {"strength": 0}, r"strength 0: must be a number in \(0, 1\]"),
    (SafePrior, {"min_divergence": -0.1}, "min_divergence -0.1: must be a number >= 0"),
    (SafePrior, {"null_target": "balanced"}, "null_target 'balanced': expected one of 'certified', 'plain'"),
    (SafePrior, {"noise": "bootstrap"}, "noise 'bootstrap': expected one of 'target', 'spread'"),
    (SafePrior, {"axis_noise": "own"}, "axis_noise 'own': expected one of 'split', 'both'"),
    (SafePrior, {"rest_floor": "some"}, "rest_floor 'some': expected one of 'none', 'whole'"),
    (SafePrior, {"axis_gate": "some"}, "axis_gate 'some': expected one of 'certified', 'observed'"),
    (EMPrior, {"source_prior": "uniform", "calibration": "training"}, "bias true with source_prior 'uniform'"),
    (EMPrior, {"calibration": "test"}, "calibration 'test': expected one of"),
    (SafePrior, {"calibration": "training"}, "auto.* are chosen on the validation split"),
    (MAPPrior, {"source_prior": "reference_balanced", "bias": True, "calibration": "training"},
     "must be \"reference\" or \"train\""),
    (OraclePrior, {"source_prior": None}, "source_prior None"),
])
def test_bad_arguments_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
    with pytest.raises(TypeError):
        cls(unknown_argument=1)


def test_shipped_prior_configs_build_the_safe_default():
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    paths = sorted(root.glob("configs/test_time_*_prior.json"))
    assert len(paths) == 7  # six benchmarks and the image-folder one
    for path in paths:
        tt = json.loads(path.read_text())["test_time"]
        cls = getattr(test_time, tt["type"])
        assert not cls.uses_test_labels
        cls(**tt.get("args", {}))


def test_online_beyond_the_buffer_freezes_old_statistics_and_stays_causal():
    from trainer.test_time.label_shift import OnlinePrior
    model = Gaussians()
    ctx = context(model)
    z, y = model.sample(PRIORS["backward50"], 2000, seed=13)
    logits = experts(z, TRAIN_PRIOR)
    batches = list(torch.split(logits, 100))
    adapter = OnlinePrior(MAPPrior(**SETTINGS["train"]), ctx, buffer_elements=500 * C)  # room for 5 batches
    scores = [adapter.step(b) for b in batches]
    summary = adapter.summary()
    assert summary["images_frozen"] == 1500 and summary["images_seen"] == 2000
    assert np.abs(np.array(summary["prior"]) - PRIORS["backward50"]).max() < 0.05
    assert accuracy(torch.cat(scores), y) > accuracy(logits.mean(1), y) + 0.2
    again = OnlinePrior(MAPPrior(**SETTINGS["train"]), ctx, buffer_elements=500 * C)
    changed = list(batches)
    changed[10] = torch.randn_like(batches[10]) * 10
    scores2 = [again.step(b) for b in changed]
    def offset(s, b):  # the adjustment a step applied (temperature 1)
        return s.double() - b.mean(1).double()

    assert torch.allclose(offset(scores[10], batches[10]), offset(scores2[10], changed[10]), atol=1e-4)
    assert not torch.allclose(offset(scores[11], batches[11]), offset(scores2[11], changed[11]), atol=1e-2)


# ------------------------------------------------------------------ strength "null" (per test set, from the split)
def small_split_context(model, per_class, seed):
    """A validation split of ``per_class`` images per class (balanced), like a user's small held-out
    set, of a model whose expert average is balanced (as TADE's and BalPoE's are meant to be)."""
    zv, yv = model.sample(np.full(C, 1.0 / C), per_class * C * 3, seed=seed)
    keep = torch.cat([torch.where(yv == c)[0][:per_class] for c in range(C)])
    val = experts(zv[keep], np.full(C, 1.0 / C))
    return Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR),
                   validation_logits=lambda: (val, yv[keep]))


def test_null_strength_follows_the_shift_against_the_splits_own_noise():
    model = Gaussians()
    ctx = small_split_context(model, 20, seed=5)
    method = SafePrior(strength="null", noise="target")
    z, y = model.sample(np.full(C, 1.0 / C), 3000, seed=6)  # unshifted: the split's noise explains the estimate
    flat = method.adapt(experts(z, np.full(C, 1.0 / C)), ctx)
    z, y = model.sample(PRIORS["forward50"], 3000, seed=7)  # a strong shift stands far above that noise
    logits = experts(z, np.full(C, 1.0 / C))
    strong = method.adapt(logits, ctx)
    assert strong["strength"] > flat.get("strength", 0.0) + 0.3
    assert strong["shift_size"] > 1.5 * strong["null_shift_size"] > 1.5 * flat.get("shift_size", 0.0)
    assert accuracy(strong["scores"], y) > accuracy(logits.mean(1), y) + 0.05
    assert method.calibration(ctx)["selection"]["strength"] == "null"


def test_null_strength_damps_the_applied_prior_toward_the_anchor_and_streams():
    model = Gaussians()
    ctx = small_split_context(model, 20, seed=5)
    method = SafePrior(strength="null")
    cal = method.calibration(ctx)
    prior = torch.as_tensor(PRIORS["backward50"], dtype=torch.float64)
    half = method.applied(prior, cal, 500, strength=0.5)
    expected = torch.log(cal["anchor"]) + 0.5 * (torch.log(prior) - torch.log(cal["anchor"]))
    assert torch.allclose(torch.log(half) - torch.log(half).mean(), expected - expected.mean(), atol=1e-9)
    assert torch.allclose(method.applied(prior, cal, 500, strength=0.0), cal["anchor"])
    z, _ = model.sample(PRIORS["forward50"], 600, seed=8)
    online = method.online(ctx)
    for batch in experts(z, np.full(C, 1.0 / C)).split(200):
        assert torch.isfinite(online.step(batch)).all()


def head_biased_split_context(model, per_class, seed):
    """A balanced validation split of a model whose expert average still favours the head classes
    (its mean logit is the posterior under the training prior)."""
    zv, yv = model.sample(np.full(C, 1.0 / C), per_class * C * 3, seed=seed)
    keep = torch.cat([torch.where(yv == c)[0][:per_class] for c in range(C)])
    return Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR),
                   validation_logits=lambda: (experts(zv[keep], TRAIN_PRIOR), yv[keep]))


def test_null_target_keeps_the_balanced_move_the_split_certifies():
    from trainer.test_time.shift_simulation import target_prior
    model = Gaussians()
    large, small = head_biased_split_context(model, 300, seed=5), head_biased_split_context(model, 4, seed=5)
    certified, plain_target = SafePrior(null_target="certified", noise="target"), SafePrior(noise="target")
    cal = certified.calibration(large)
    share = cal["balanced_share"]
    assert share > 0.8 and cal["selection"]["halves_disagreement"] < 0.2 * cal["selection"]["balanced_move"]
    assert plain_target.calibration(large)["balanced_share"] == 0.0
    assert SafePrior(null_target="certified", noise="target").calibration(small)["balanced_share"] < share
    # the target sits between the plain average's prior and the balanced reading, by the share
    target = target_prior(cal, share)
    assert torch.allclose(certified.applied(torch.as_tensor(PRIORS["forward50"]), cal, 500, strength=0.0), target)
    lo, hi = torch.log(cal["anchor"]), torch.log(cal["source_prior"])
    assert torch.allclose(torch.log(target) - torch.log(target).mean(),
                          (lo + share * (hi - lo)) - (lo + share * (hi - lo)).mean(), atol=1e-9)
    # on a balanced test set the certified move corrects the head bias the plain average keeps
    z, y = model.sample(np.full(C, 1.0 / C), 4000, seed=6)
    logits = experts(z, TRAIN_PRIOR)
    plain = accuracy(logits.mean(1), y)
    assert accuracy(certified.adapt(logits, large)["scores"], y) > plain + 0.02
    assert abs(accuracy(plain_target.adapt(logits, large)["scores"], y) - plain) < 0.01


def test_nearest_target_measures_each_shift_from_the_nearer_of_the_two_targets():
    """null_target "nearest": a balanced test set is measured from the certified target (its estimate
    lies nearer the balanced reading) and gets the certified rule's correction; a set that leans to the
    head like the plain average is measured from the plain target, as the default measures it.
    "segment": from the point of the certified move nearest the estimate (near its end, near its start)."""
    model = Gaussians()
    ctx = head_biased_split_context(model, 300, seed=5)
    nearest, certified, plain_target = (SafePrior(null_target=t) for t in ("nearest", "certified", "plain"))
    share = nearest.calibration(ctx)["balanced_share"]
    assert share > 0.8 and share == certified.calibration(ctx)["balanced_share"]
    z, y = model.sample(np.full(C, 1.0 / C), 4000, seed=6)
    logits = experts(z, TRAIN_PRIOR)
    res = nearest.adapt(logits, ctx)
    assert res["target_share"] == share
    assert accuracy(res["scores"], y) == accuracy(certified.adapt(logits, ctx)["scores"], y) > \
        accuracy(logits.mean(1), y) + 0.02
    segment = SafePrior(null_target="segment")  # the point of the certified move nearest the estimate
    assert 0.5 * share < segment.adapt(experts(z, TRAIN_PRIOR), ctx)["target_share"] <= share
    z, y = model.sample(PRIORS["forward50"], 2000, seed=7)
    logits = experts(z, TRAIN_PRIOR)
    res = nearest.adapt(logits, ctx)
    assert res["target_share"] == 0.0
    assert torch.equal(res["scores"].argmax(1), plain_target.adapt(logits, ctx)["scores"].argmax(1))
    assert segment.adapt(logits, ctx)["target_share"] < 0.5 * share


def test_null_strength_needs_two_images_of_every_class_and_names_the_option():
    model = Gaussians()
    ctx = small_split_context(model, 1, seed=5)
    ctx.validation_info = {"option": "data_loader.args.validation.per_class"}
    with pytest.raises(Exception, match="class 0 has 1 validation image.*data_loader.args.validation.per_class"):
        SafePrior(strength="null").adapt(experts(*model.sample(PRIORS["forward50"], 100, seed=1)[:1],
                                                 np.full(C, 1.0 / C)), ctx)


def test_spread_noise_reads_the_plain_averages_lean_as_signal():
    """noise "spread": the null is how far the halves' unshifted estimates lie from each other, so the
    lean every half reads alike (a head-biased plain average) is corrected on a balanced test set, which
    the null measured from the target (noise "target") takes for noise."""
    model = Gaussians()
    ctx = head_biased_split_context(model, 300, seed=5)
    spread, target = SafePrior(noise="spread"), SafePrior(noise="target")
    z, y = model.sample(np.full(C, 1.0 / C), 4000, seed=6)
    logits = experts(z, TRAIN_PRIOR)
    plain = accuracy(logits.mean(1), y)
    by_spread, by_target = spread.adapt(logits, ctx), target.adapt(logits, ctx)
    assert by_spread["null_shift_size"] < 0.5 * by_target["null_shift_size"]
    assert by_spread["strength"] > 0.5 and accuracy(by_spread["scores"], y) > plain + 0.02
    assert abs(accuracy(by_target["scores"], y) - plain) < 0.01
    assert spread.calibration(ctx)["selection"]["noise"] == "spread"
    z, y = model.sample(TRAIN_PRIOR, 4000, seed=7)  # a set that leans like the training set: left alone
    logits = experts(z, TRAIN_PRIOR)
    assert accuracy(spread.adapt(logits, ctx)["scores"], y) >= accuracy(logits.mean(1), y) - 0.005


def test_both_noise_takes_the_larger_of_the_splits_spread_and_the_test_sets_own():
    """noise "both" (the default): the strength is 1 - max(the split's spread, the test set's own
    noise) / shift size, so it never exceeds the spread rule's; the test set's own noise (the halves'
    calibrations on bootstrap resamples of the test set) falls as the split grows."""
    from trainer.test_time.shift_simulation import UPPER, chi2_quantile
    model = Gaussians()
    z, y = model.sample(PRIORS["forward50"], 3000, seed=7)
    logits = experts(z, np.full(C, 1.0 / C))
    own = {}
    for per_class in (10, 100):
        ctx = small_split_context(model, per_class, seed=5)
        both, spread = SafePrior(axis="none"), SafePrior(noise="spread", axis="none")  # one strength for the shift
        assert both.calibration(ctx)["selection"]["noise"] == "both"
        out, alone = both.adapt(logits, ctx), spread.adapt(logits, ctx)
        noise = max(out["null_shift_size"], out["test_set_noise"])
        assert out["strength"] == pytest.approx(max(0.0, 1 - noise / out["shift_size"]))
        assert out["strength"] <= alone["strength"] and out["null_shift_size"] == alone["null_shift_size"]
        own[per_class] = out["test_set_noise"]
    assert own[10] > 2 * own[100] > 0
    # halves of 2-3 images a class that the fit separates have no finite calibration: no strength, no number
    tiny = SafePrior().adapt(logits, small_split_context(model, 5, seed=5))
    assert tiny["strength"] == 0.0 and tiny["null_shift_size"] is None
    assert accuracy(tiny["scores"], y) == pytest.approx(accuracy(logits.mean(1), y), abs=0.02)
    # the upper 95 % bound of a variance from 8 estimates: (8 - 1) / the 5 % quantile of chi-squared(7)
    assert chi2_quantile(1 - UPPER, 7) == pytest.approx(2.1673, abs=1e-4)
    online = SafePrior().online(small_split_context(model, 20, seed=5))  # a stream reads the images seen so far
    for batch in logits[:1200].split(200):
        assert torch.isfinite(online.step(batch)).all()
    assert {n for n, _ in online.noise_cache} <= {256, 512, 1024} and online.noise_cache  # (size, target share)


def test_axis_rule_reads_a_head_tail_shift_along_one_number_and_leaves_other_shifts_to_the_whole_rule():
    """axis "train_prior": a shift lying mostly along the centred log training prior
    (every forward and backward long tail) moves along that axis by its size less one standard
    deviation of the noise's part along it (one direction's share of the split's noise), and its
    rest by its own James-Stein strength (the axis's at least the whole rule's); any other shift keeps the
    one strength of the whole rule (axis "none"). A balanced training prior has no axis."""
    from trainer.test_time.shift_simulation import head_tail_axis
    model = Gaussians()
    ctx = small_split_context(model, 10, seed=5)
    axis, whole = SafePrior(axis="train_prior"), SafePrior(axis="none")
    assert axis.calibration(ctx)["selection"]["axis"] == "train_prior"
    z, y = model.sample(PRIORS["forward50"], 3000, seed=7)
    logits = experts(z, np.full(C, 1.0 / C))
    along, alone = axis.adapt(logits, ctx), whole.adapt(logits, ctx)
    assert along["rule"] == "axis" and alone["rule"] == "whole" and along["axis_share"] > 0.5
    a = (along["axis_share"] * along["shift_size"]) ** 0.5
    assert along["strength"] == pytest.approx(max(alone["strength"], (a - along["axis_noise"] ** 0.5) / a))
    rest_size = along["shift_size"] * (1 - along["axis_share"])
    assert along["rest_strength"] == pytest.approx(max(0.0, 1 - along["rest_noise"] / rest_size))
    assert along["axis_noise"] < 0.5 * max(alone["null_shift_size"], alone["test_set_noise"])
    assert along["strength"] > alone["strength"] + 0.1
    assert accuracy(along["scores"], y) > accuracy(alone["scores"], y) + 0.01
    # a prior on two classes far apart in the training order is no head-tail shift: the whole rule, the same scores
    sparse = np.array([0.02, 0.47, 0.02, 0.02, 0.47])
    z, y = model.sample(sparse, 3000, seed=8)
    logits = experts(z, np.full(C, 1.0 / C))
    off = axis.adapt(logits, ctx)
    assert off["rule"] == "whole" and off["axis_share"] < 0.5
    assert torch.equal(off["scores"], whole.adapt(logits, ctx)["scores"])
    assert head_tail_axis(np.full(C, 1.0 / C)) is None and head_tail_axis(None) is None
    e = head_tail_axis(TRAIN_PRIOR)
    assert float(e.sum()) == pytest.approx(0.0, abs=1e-12) and float(e.norm()) == pytest.approx(1.0)
    balanced = Context(num_experts=3, num_classes=C, train_prior=torch.full((C,), 1.0 / C),
                       validation_logits=ctx.validation_logits)
    assert SafePrior(axis="train_prior").calibration(balanced)["selection"]["axis"] == "none"


def test_axis_noise_split_reads_the_axis_against_the_splits_spread_alone():
    """axis_noise "split" (the default): the head-tail coordinate is soft-thresholded by the split's
    spread along the axis alone, the test set's own noise (an upper confidence bound over 8
    estimates) staying in the whole rule's and the rest's noise; "both" takes the larger of the two
    along the axis as well, so it applies less of a long-tailed set's shift."""
    from trainer.test_time.shift_simulation import _soft
    model = Gaussians()
    ctx = small_split_context(model, 20, seed=5)
    split, both = SafePrior(axis="train_prior"), SafePrior(axis="train_prior", axis_noise="both")
    assert split.axis_noise == "split" and split.calibration(ctx)["selection"]["axis_noise"] == "split"
    for prior in ("forward50", "backward50"):
        z, y = model.sample(PRIORS[prior], 3000, seed=7)
        logits = experts(z, np.full(C, 1.0 / C))
        by_split, by_both = split.adapt(logits, ctx), both.adapt(logits, ctx)
        assert by_split["rule"] == by_both["rule"] == "axis"
        spread_along_axis = float(split.calibration(ctx)["null_sizes"][3000, 0.0].mean(0)[1])
        assert by_split["axis_noise"] == pytest.approx(spread_along_axis)
        assert by_both["axis_noise"] > 2 * by_split["axis_noise"]  # the test set's own noise dominates here
        a = (by_split["axis_share"] * by_split["shift_size"]) ** 0.5
        whole = SafePrior(axis="none").adapt(logits, ctx)["strength"]
        assert by_split["strength"] == pytest.approx(max(whole, _soft(a, by_split["axis_noise"])))
        assert by_split["strength"] > by_both["strength"] + 0.1
        assert by_split["rest_strength"] == by_both["rest_strength"]
        assert by_split["test_set_noise"] == by_both["test_set_noise"]
        assert accuracy(by_split["scores"], y) > accuracy(by_both["scores"], y) > accuracy(logits.mean(1), y)


def test_rest_floor_none_lets_the_rest_of_a_strong_head_tail_shift_shrink_by_its_own_strength():
    """rest_floor "none" (the default): the part of a shift off the directions moves by its own
    James-Stein strength alone. At a strong long tail the whole rule's strength is near 1 while the
    rest is mostly the rare classes' estimation noise; "whole" moves it by at least the whole
    strength, which puts that noise into the applied prior."""
    from trainer.test_time.shift_simulation import centred_log_ratio, head_tail_axis
    model = Gaussians()
    ctx = small_split_context(model, 100, seed=5)
    own, floored = SafePrior(axis="train_prior"), SafePrior(axis="train_prior", rest_floor="whole")
    assert own.rest_floor == "none" and own.calibration(ctx)["selection"]["rest_floor"] == "none"
    e, anchor = head_tail_axis(TRAIN_PRIOR), own.calibration(ctx)["anchor"]

    def off_axis(result):  # the applied prior's move from the plain average's, off the head-tail axis
        v = centred_log_ratio(torch.tensor(result["prior"], dtype=torch.float64), anchor)
        return float((v - (v @ e) * e).norm())

    distance = {"none": [], "whole": []}
    for prior in ("forward50", "backward50"):
        for seed in (7, 8, 9):
            z, _ = model.sample(PRIORS[prior], 3000, seed=seed)
            logits = experts(z, np.full(C, 1.0 / C))
            by_own, by_floor = own.adapt(logits, ctx), floored.adapt(logits, ctx)
            assert by_own["rule"] == by_floor["rule"] == "axis"
            rest_size = by_own["shift_size"] * (1 - by_own["axis_share"])
            by_js = max(0.0, 1 - by_own["rest_noise"] / rest_size)
            assert by_own["rest_strength"] == pytest.approx(by_js) and by_own["strength"] == by_floor["strength"]
            whole = SafePrior(axis="none").adapt(logits, ctx)["strength"]
            assert whole > 0.6 and by_floor["rest_strength"] == pytest.approx(max(whole, by_js))
            assert by_own["rest_strength"] < 0.5 * by_floor["rest_strength"]
            assert off_axis(by_own) < 0.5 * off_axis(by_floor)
            for name, result in (("none", by_own), ("whole", by_floor)):
                applied = torch.tensor(result["prior"], dtype=torch.float64)
                distance[name].append(float(centred_log_ratio(applied, torch.tensor(PRIORS[prior])).norm()))
    assert np.mean(distance["none"]) < np.mean(distance["whole"]) - 0.03  # nearer the true prior (on the axis)


def test_axis_gate_certified_judges_a_shift_on_the_part_along_the_axis_the_split_certifies():
    """axis_gate "certified" (the default): a shift is read along the head-tail axis only where its
    squared coordinate a^2, less the whole split's own variance of it (half the halves' spread along
    the axis), is at least the rest. With a small split the calibration's noise along the axis
    inflates a^2: "observed" reads this set (a^2 just above the rest) along the axis, "certified"
    keeps the whole rule. A set on the axis is read along it either way."""
    model = Gaussians()
    ctx = small_split_context(model, 10, seed=5)
    certified, observed = SafePrior(axis="train_prior"), SafePrior(axis="train_prior", axis_gate="observed")
    assert certified.axis_gate == "certified" and certified.calibration(ctx)["selection"]["axis_gate"] == "certified"
    prior = np.array([0.337, 0.053, 0.502, 0.103, 0.005])
    z, _ = model.sample(prior / prior.sum(), 2000, seed=113)
    logits = experts(z, np.full(C, 1.0 / C))
    by_cert, by_obs = certified.adapt(logits, ctx), observed.adapt(logits, ctx)
    assert by_obs["rule"] == "axis" and by_obs["strength"] > 0.1 and by_cert["rule"] == "whole"
    a2 = by_obs["axis_share"] * by_obs["shift_size"]
    rest_size = by_obs["shift_size"] - a2
    assert by_cert["axis_share"] == by_obs["axis_share"] and a2 >= rest_size > a2 - by_obs["axis_noise"] / 2
    assert torch.equal(by_cert["scores"], SafePrior(axis="none").adapt(logits, ctx)["scores"])
    z, _ = model.sample(PRIORS["forward50"], 2000, seed=7)
    logits = experts(z, np.full(C, 1.0 / C))
    by_cert, by_obs = certified.adapt(logits, ctx), observed.adapt(logits, ctx)
    assert by_cert["rule"] == by_obs["rule"] == "axis" and torch.equal(by_cert["scores"], by_obs["scores"])


def test_balanced_move_direction_corrects_a_class_lean_the_split_certifies_and_no_further():
    """axis "train_prior_and_balance" (the default): the calibration's move from the plain average's
    prior to a balanced set, off the head-tail axis, is a second direction. A test set's shift along
    it is clipped to [0, the share the split certifies] and soft-thresholded by the test set's own
    noise along it: a balanced test set of a model whose plain average leans to some classes gets
    the lean's correction (the axis rule alone leaves it, its null holding the lean), a set leaning
    like the plain average gets none, and a split that does not certify the move has no direction."""
    model = Gaussians()
    tilt = torch.tensor([0.5, -0.5, 0.0, -0.5, 0.5])  # a class lean orthogonal to the head-tail axis
    zv, yv = model.sample(np.full(C, 1.0 / C), 1000, seed=5)
    ctx = Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR),
                  validation_logits=lambda: (experts(zv, np.full(C, 1.0 / C)) + tilt, yv))
    both, axis_only = SafePrior(), SafePrior(axis="train_prior")
    cal = both.calibration(ctx)
    assert both.axis == "train_prior_and_balance" and cal["selection"]["balance_cap"] > 0.5
    f = cal["balance_axis"]
    assert float(f @ cal["axis"]) == pytest.approx(0.0, abs=1e-9) and float(f.norm()) == pytest.approx(1.0)
    assert float(f @ (tilt - tilt.mean()).double()) < -0.9 * float((tilt - tilt.mean()).norm())  # undoes the lean
    z, y = model.sample(np.full(C, 1.0 / C), 8000, seed=6)
    logits = experts(z, np.full(C, 1.0 / C)) + tilt
    out, alone = both.adapt(logits, ctx), axis_only.adapt(logits, ctx)
    assert out["rule"] == "axes" and alone["rule"] == "whole" and 0 < out["balance_shift"] <= cal["balance_cap"]
    assert out["balance_strength"] > alone["strength"] + 0.1
    plain = accuracy(logits.mean(1), y)
    assert accuracy(out["scores"], y) > accuracy(alone["scores"], y) + 0.002 > plain + 0.005
    # measured from a target already moved toward balance, only the rest of the certified move is left
    certified = SafePrior(null_target="certified")
    moved = certified.adapt(logits, ctx)
    share, cap = moved["target_share"], certified.calibration(ctx)["selection"]["balance_cap"]
    assert share > 0.5 and moved["balance_shift"] <= cap - share * cal["selection"]["balance_move"] + 1e-12
    # a set leaning like the plain average (away from balance along the move) gets nothing along it
    lean = np.exp(tilt.double().numpy()) / np.exp(tilt.double().numpy()).sum()
    z, y = model.sample(lean, 4000, seed=7)
    leaning = both.adapt(experts(z, np.full(C, 1.0 / C)) + tilt, ctx)
    assert leaning.get("balance_shift", 0.0) < 0.25 * cal["balance_cap"]
    # a split of 3 images a class does not certify the move: no direction, the axis rule's result
    zs, ys = model.sample(np.full(C, 1.0 / C), 60, seed=8)
    keep = torch.cat([torch.where(ys == c)[0][:3] for c in range(C)])
    small = Context(num_experts=3, num_classes=C, train_prior=torch.tensor(TRAIN_PRIOR),
                    validation_logits=lambda: (experts(zs[keep], np.full(C, 1.0 / C)) + tilt, ys[keep]))
    few = SafePrior()
    assert few.calibration(small)["balance_axis"] is None and few.calibration(small)["selection"]["balance_cap"] == 0
    assert torch.equal(few.adapt(logits, small)["scores"], SafePrior(axis="train_prior").adapt(logits, small)["scores"])
