"""BalPoE's logit-adjusted expert family (Sanchez Aimar et al., CVPR 2023; docs/methods.md#balpoe).

Expert k is trained with the logit-adjusted cross-entropy

  L_k = CE(z_k + tau_k * log(p + eps), y),   eps = 1e-9,   total = mean over the M experts

(TADE's loss sums its experts; BalPoE averages them). At the optimum expert k is the Bayes
posterior for the prior p^(1 - tau_k): tau 0 fits the long-tailed training distribution (plain
CE), 1 the uniform one (balanced softmax), 2 the inverted one. The prediction stays the mean of
the experts' logits (the model's ``output``); with mean(tau) = 1 that average is balanced.

``tau_list`` is a list with one number per expert, or ``"limits"``: M values evenly spaced over
[``tau_min``, ``tau_max``] (default [0, 2]: mean 1, one expert gets tau 1), resolved once the number of
experts is known. BalPoE's own configs name the same bounds as ``loss.tau_min`` / ``loss.tau_max``; here
they are ``loss.args`` and apply to ``"limits"`` only.
"""
import numbers

import torch
import torch.nn.functional as F

from base.base_loss import LTLoss
from utils.errors import UserError

EPS = 1e-9
LIMITS = "limits"


def evenly_spaced_taus(num_experts, low=0.0, high=2.0):
    """BalPoE's "limits" family: ``num_experts`` values evenly spaced over [low, high] (with the
    defaults, mean 1); a single expert gets the midpoint (tau 1, balanced softmax)."""
    m = int(num_experts)
    if m < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts!r}")
    if m == 1:
        return [(low + high) / 2.0]
    return [low + (high - low) * k / (m - 1) for k in range(m)]


def _finite(value):
    return (not isinstance(value, bool) and isinstance(value, numbers.Real) and value == value
            and value not in (float("inf"), float("-inf")))


def _parse_bounds(tau_list, tau_min, tau_max):
    """The [low, high] of "limits" (default [0, 2]); a ValueError for bounds with an explicit list,
    a bound that is not a finite number, or tau_min above tau_max."""
    if tau_list != LIMITS:
        if tau_min is not None or tau_max is not None:
            raise ValueError(f"tau_min / tau_max apply only to tau_list \"{LIMITS}\"; tau_list is {tau_list!r}: "
                             "drop them or use \"limits\"")
        return None
    low = 0.0 if tau_min is None else tau_min
    high = 2.0 if tau_max is None else tau_max
    for name, v in (("tau_min", low), ("tau_max", high)):
        if not _finite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if low > high:
        raise ValueError(f"tau_min ({low!r}) must not exceed tau_max ({high!r})")
    return float(low), float(high)


def _parse_tau_list(tau_list):
    """A list of finite numbers, or None for "limits"; anything else is a ValueError naming tau_list."""
    if isinstance(tau_list, str) and tau_list == LIMITS:
        return None
    if isinstance(tau_list, (str, bytes)) or not hasattr(tau_list, "__iter__"):
        raise ValueError(f"tau_list must be a list of numbers (one per expert) or \"{LIMITS}\", got {tau_list!r}")
    values = list(tau_list)
    if not values:
        raise ValueError("tau_list must hold one number per expert, got an empty list")
    for v in values:
        if not _finite(v):
            raise ValueError(f"tau_list must be a list of finite numbers, got {v!r} in {tau_list!r}")
    return [float(v) for v in values]


class LogitAdjustedLoss(LTLoss):
    """One logit-adjusted cross-entropy per expert, averaged (any number of experts)."""

    def __init__(self, cls_num_list=None, tau_list=LIMITS, tau_min=None, tau_max=None):
        super().__init__(cls_num_list)
        self.tau_spec = tau_list
        taus = _parse_tau_list(tau_list)
        self.tau_bounds = _parse_bounds(tau_list, tau_min, tau_max)  # None for an explicit list
        self.tau_list = None
        self.register_buffer("log_prior", torch.log(self.prior + EPS), persistent=False)
        self.register_buffer("offsets", None, persistent=False)
        if taus is not None:
            self._set_taus(taus)

    def _set_taus(self, taus):
        self.tau_list = list(taus)
        tau = torch.tensor(self.tau_list, dtype=torch.float32, device=self.log_prior.device)
        self.offsets = tau[:, None] * self.log_prior[None, :]  # [E, C]: tau_k * log(p + eps)

    def resolve(self, num_experts):
        """Fix "limits" to ``num_experts`` values (no-op for an explicit list); returns the taus."""
        if self.tau_list is None:
            self._set_taus(evenly_spaced_taus(num_experts, *self.tau_bounds))
        return self.tau_list

    def check_experts(self, num_experts, source="config"):
        super().check_experts(num_experts, source)
        taus = self.resolve(num_experts)
        if len(taus) != num_experts:
            raise UserError(f"config {source}: loss.args.tau_list has {len(taus)} value(s) {taus} but "
                            f"arch.args.num_experts is {num_experts}: give one tau per expert (or \"{LIMITS}\")")

    def forward(self, outputs, target):
        logits = self.expert_logits(outputs).float()
        b, e, c = logits.shape
        taus = self.resolve(e)
        if len(taus) != e:
            raise ValueError(f"LogitAdjustedLoss: loss.args.tau_list has {len(taus)} values, the model {e} experts")
        adjusted = logits + self.offsets.to(logits.device)
        # mean over batch and experts = mean over experts of each expert's batch-mean CE (one
        # kernel for all experts; no host sync, so it can be captured in a CUDA graph)
        return F.cross_entropy(adjusted.reshape(b * e, c), target[:, None].expand(b, e).reshape(b * e))
