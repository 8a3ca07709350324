"""The oracle prior (BalPoE's ``posthoc_bias_correction``, Sarto et al. 2023; docs/methods.md#label-shift):
the post-hoc adjustment with the true class frequencies of the test set being evaluated. A ceiling
for tables, never a method: it reads the test labels (``uses_test_labels``), and no shipped config
selects it.

By default it is BalPoE's row exactly: ``z + log pi_test`` on the uncalibrated mean logits (T = 1,
no bias, a uniform source prior). With calibration settings (``temperature`` "fit", ``bias``,
``calibration``) it is the calibrated oracle, named so in tables."""
import torch

from base.base_test_time import OnlineAdapter
from trainer.test_time.label_shift import LabelShiftMethod
from trainer.test_time.prior_math import _normalise, ensemble_logits


class OraclePrior(LabelShiftMethod):
    """scores = z_cal + log pi_true - log p_s, pi_true = the test set's class frequencies
    (``ctx.targets``); a class absent from the test set gets prior 0 (floored at 1e-12 in the log).
    Args: ``source_prior`` (default "uniform"), ``temperature`` (default 1), ``bias`` (default
    false), ``calibration`` as :class:`EMPrior` (tol / max_iter unused)."""

    uses_test_labels = True

    def __init__(self, source_prior="uniform", temperature: float | str = 1.0, bias: bool | str = False, **kwargs):
        super().__init__(source_prior=source_prior, temperature=temperature, bias=bias, **kwargs)

    def estimate(self, log_q, cal, ctx):
        ps = cal["source_prior"]
        if ctx.targets is None:
            raise ValueError(f"{type(self).__name__} uses the test labels, but the context for {ctx.name!r} "
                             "provides none (ctx.targets)")
        targets = torch.as_tensor(ctx.targets).long().flatten()
        if targets.numel() != log_q.shape[0]:
            raise ValueError(f"{type(self).__name__}: {targets.numel()} test labels for {log_q.shape[0]} images")
        counts = torch.bincount(targets, minlength=ps.numel()).double()
        return _normalise(counts), {"iterations": 0}

    def online(self, ctx):
        return _OracleStream(self, ctx)


class _OracleStream(OnlineAdapter):
    """On a stream the oracle applies the whole test set's true prior to every batch."""

    def __init__(self, method, ctx):
        self.method, self.ctx = method, ctx
        self.cal = method.calibration(ctx)
        self.prior = method.estimate(torch.zeros(len(ctx.targets), ctx.num_classes), self.cal, ctx)[0]

    def step(self, logits):
        z_cal = self.method._calibrate(ensemble_logits(logits), self.cal)
        return self.method.scores(z_cal, self.prior, self.cal)

    def summary(self):
        return {"prior": [float(v) for v in self.prior], "temperature": self.cal["temperature"]}
