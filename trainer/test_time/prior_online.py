"""The online form of the label-shift methods (label_shift.py; docs/methods.md#prior-estimation):
a stream scored batch by batch, each batch with the prior estimated from the batches before it."""
import torch

from base.base_test_time import OnlineAdapter
from trainer.test_time.prior_math import _log, chi2_sf, em_prior, ensemble_logits, kl_divergence, posterior_stats


class OnlinePrior(OnlineAdapter):
    """A label-shift method on a stream (docs/methods.md#prior-estimation). ``step`` scores a batch with the prior
    estimated from the previous batches only (before the first batch: the plain average), then updates the
    estimate by EM (warm-started) on every image seen so far, with the method's pseudo-counts.
    The calibrated log posteriors of the stream are kept while they fit in ``buffer_elements``
    numbers (images x classes); images beyond that enter with their posterior sums frozen at the
    estimate of their time (incremental EM). With ``shift_test`` (the safe default) the adjustment is
    applied only while the likelihood-ratio test on the images seen so far finds a shift."""

    def __init__(self, method, ctx, shift_test=False, buffer_elements=1 << 25):
        self.method, self.ctx = method, ctx
        self.cal = method.calibration(ctx)
        self.ps = self.cal["source_prior"]
        self.log_w0 = _log(self.cal["anchor"]) - _log(self.ps)  # the plain average's prior
        self.extra = method.extra_counts(self.cal)
        self.buffer = torch.zeros(0, self.ps.numel())
        self.buffer_elements = buffer_elements
        self.frozen = {"map": torch.zeros_like(self.ps), "mle": torch.zeros_like(self.ps), "n": 0, "ll": 0.0}
        self.prior = self.cal["anchor"].clone()
        self.applied = self.prior  # the prior scores use (SafePrior's strength "null" damps the estimate)
        self.noise_cache = {}  # SafePrior's noise "both": the stream's own noise per size
        self.mle = self.cal["anchor"].clone()
        self.ll_anchor = 0.0
        self.use_test = shift_test
        self.shift_detected = not shift_test
        self.ll_ratio, self.p_value, self.divergence, self.n, self.batches, self.iterations = 0.0, 1.0, 0.0, 0, 0, 0

    def step(self, logits):
        z = ensemble_logits(logits)
        z_cal = self.method._calibrate(z, self.cal)
        if self.n == 0 or not self.shift_detected:
            scores = z.clone()  # nothing learnt yet (or no shift found): the plain average
        else:
            scores = self.method.scores(z_cal, self.applied, self.cal)
        self._learn(torch.log_softmax(z_cal, 1))
        return scores

    def _learn(self, log_q):
        if (self.buffer.shape[0] + log_q.shape[0]) * log_q.shape[1] <= self.buffer_elements:
            self.buffer = torch.cat([self.buffer, log_q])
            frozen_batch = None
        else:
            frozen_batch = log_q  # no room: joins the estimate, then its statistics are frozen
        data = [self.buffer] if frozen_batch is None else [self.buffer, frozen_batch]
        past, m, log_ps = self.frozen, self.method, _log(self.ps)
        self.prior, it, _ = em_prior(data, self.ps, extra_counts=self.extra, tol=m.tol, max_iter=m.max_iter,
                                     init=self.prior, past_counts=past["map"], past_n=past["n"])
        self.iterations = it
        if self.use_test:
            self.mle, _, _ = em_prior(data, self.ps, tol=m.tol, max_iter=m.max_iter, init=self.mle,
                                      past_counts=past["mle"], past_n=past["n"])
            self.ll_anchor += posterior_stats(log_q, self.log_w0)[1]
            ll = past["ll"] + posterior_stats(data, _log(self.mle) - log_ps)[1]
            self.ll_ratio = 2.0 * (ll - self.ll_anchor)
            self.p_value = chi2_sf(self.ll_ratio, self.ps.numel() - 1)
            self.divergence = kl_divergence(self.mle, self.cal["anchor"])
            strength, min_divergence = m.settings(self.cal)
            self.shift_detected = self.p_value < m.significance and self.divergence >= min_divergence and strength > 0
        if frozen_batch is not None:
            past["map"] = past["map"] + posterior_stats(frozen_batch, _log(self.prior) - log_ps)[0]
            mle_counts, ll_batch = posterior_stats(frozen_batch, _log(self.mle) - log_ps)
            past["mle"] = past["mle"] + mle_counts
            past["ll"] += ll_batch
            past["n"] += frozen_batch.shape[0]
        self.n += log_q.shape[0]
        self.batches += 1
        applied = getattr(self.method, "applied", None)  # SafePrior's strength "null": damped for the images seen
        self.applied = self.prior if applied is None else applied(self.prior, self.cal, self.n, log_q=self.buffer,
                                                                  cache=self.noise_cache)

    def summary(self):
        out = {"prior": [float(v) for v in self.applied], "images_seen": self.n, "batches": self.batches,
               "temperature": self.cal["temperature"], "iterations_last": self.iterations,
               "images_frozen": self.frozen["n"]}
        if self.use_test:
            out.update(shift_detected=bool(self.shift_detected), log_likelihood_ratio=self.ll_ratio,
                       p_value=self.p_value, divergence=self.divergence)
        return out
