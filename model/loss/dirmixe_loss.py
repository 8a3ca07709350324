"""DirMixE's loss (Yang et al., "Harnessing Hierarchical Label Distribution Variations in Test
Agnostic Long-tail Recognition", ICML 2024; docs/methods.md#dirmixe).

Each of the three experts is tied to an anchor prior: the training prior p (forward), uniform,
and the rank-mirrored prior (inverse). A pool of ``trials * steps_per_epoch`` Dirichlet draws
w ~ Dir(alpha_sum * anchor_k), each with its expert k (uniform over the three), is drawn once and
put in a new random order every epoch; each call of the loss takes the next ``trials`` draws:

  l_t = CE(z_{k_t} - log(w_t^power / p^power + 1e-9), y)       (batch mean, one per draw t)
  L   = mean_t l_t + lambda_var * V,   V = sum_{l_t > mean} (l_t - mean)^2 / max(#{l_t > mean} - 1, 1)

The semi-variance V counts only from the epoch after int(0.8 * (epochs + 1)) (1-based) on, as its
authors' trainer gates it. Everything a step reads is a device tensor indexed by a device step
counter, so a step can be replayed as a CUDA graph; the draws come from their own generator,
seeded by the run's seed, and that seed travels in the training checkpoint (``state_dict``).
"""
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from base.base_loss import LTLoss
from utils.memory_budget import check_fits

EPS = 1e-9
PENALTY_FROM = 0.8  # the semi-variance counts in the epochs after int(PENALTY_FROM * (epochs + 1))
POOL_STREAM = 0x6469726D6978  # "dirmix": keeps the pool's draws apart from every other seeded stream
CHUNK = 1024  # draws made at once (bounds the float64 scratch of a large pool)


def rank_mirrored_prior(counts):
    """The inverse anchor: the class with the r-th largest count gets the r-th smallest count,
    normalised. Ties go by class index, so a prior sorted from head to tail is reversed exactly."""
    counts = np.asarray(counts, dtype=np.float64)
    by_count = np.argsort(-counts, kind="stable")  # head first; equal counts in class order
    mirrored = np.empty_like(counts)
    mirrored[by_count] = np.sort(counts)
    return mirrored / mirrored.sum()


def anchor_priors(counts):
    """[3, C] float64: forward (the training prior), uniform, inverse (rank-mirrored)."""
    counts = np.asarray(counts, dtype=np.float64)
    c = counts.size
    return np.stack([counts / counts.sum(), np.full(c, 1.0 / c), rank_mirrored_prior(counts)])


def penalty_active(epoch, epochs):
    """Whether the semi-variance counts in 0-based ``epoch`` of ``epochs``. Its authors' trainer
    passes ``epochs + 1`` as the total and 1-based epochs, and leaves the penalty off while
    ``epoch <= int(0.8 * total)``: with 200 epochs it is on in epochs 161..200 (1-based)."""
    return epoch + 1 > int(PENALTY_FROM * (epochs + 1))


def draw_pool(anchors, alpha_sum, size, seed):
    """``size`` draws: expert k uniform over the anchors, w ~ Dir(alpha_sum * anchors[k]).
    Returns (weights [size, C] float32, experts [size] int64), a function of ``seed`` only."""
    rng = np.random.default_rng([POOL_STREAM, int(seed)])
    experts = rng.integers(len(anchors), size=size)
    weights = np.empty((size, anchors.shape[1]), dtype=np.float32)
    alphas = alpha_sum * anchors
    for k in range(len(anchors)):
        rows = np.flatnonzero(experts == k)
        for start in range(0, rows.size, CHUNK):
            part = rows[start:start + CHUNK]
            weights[part] = rng.dirichlet(alphas[k], size=part.size)
    return torch.from_numpy(weights), torch.from_numpy(experts.astype(np.int64))


def epoch_order(size, seed, epoch):
    """The pool's order in one 0-based epoch: a permutation seeded by (seed, epoch)."""
    return torch.from_numpy(np.random.default_rng([POOL_STREAM, int(seed), int(epoch)]).permutation(size))


def _positive(name, value, integer=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return int(value) if integer else float(value)


class DirMixELoss(LTLoss):
    """Three experts, each trained on a Dirichlet mixture of test priors around its anchor."""

    required_experts = 3  # the anchors it can build: forward, uniform, inverse

    def __init__(self, cls_num_list=None, power=1.3, lambda_var=5.0, trials=60, alpha_sum=10000):
        counts = np.asarray(cls_num_list if cls_num_list is not None else [], dtype=np.float64)
        if counts.size and np.any(counts <= 0):
            empty = np.flatnonzero(counts <= 0)
            raise ValueError(f"the training prior has {empty.size} empty class(es) (class {int(empty[0])} has "
                             f"{counts[empty[0]]:g} images); every anchor needs a count > 0 in each class")
        super().__init__(cls_num_list)
        self.power = _positive("power", power)
        self.lambda_var = _positive("lambda_var", lambda_var)
        self.trials = _positive("trials", trials, integer=True)
        self.alpha_sum = _positive("alpha_sum", alpha_sum)
        self.anchors = anchor_priors(counts)
        self.epochs = None
        self.steps = None
        self.seed = None  # the pool's seed (the run's, or the one restored from a checkpoint)
        self.restored_seed = None
        self.penalty = False
        self.register_buffer("pool_weights", None, persistent=False)  # [N, C]
        self.register_buffer("pool_experts", None, persistent=False)  # [N]
        self.register_buffer("order", None, persistent=False)  # [N]: this epoch's order of the pool
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("trial_index", None, persistent=False)  # [trials]: made with the pool
        self._fits_batch = None  # the batch size check_step_fits last passed

    # -- the run: pool, epoch order, gate ----------------------------------------------------------
    def set_run(self, epochs, steps_per_epoch, seed):
        """Draw the pool for ``steps_per_epoch`` steps (once; again only if the shape or seed changes)."""
        self.epochs = int(epochs)
        seed = int(seed) if self.restored_seed is None else self.restored_seed
        steps = int(steps_per_epoch)
        if self.pool_weights is None or (self.seed, self.steps) != (seed, steps):
            size = self.trials * steps
            classes = self.anchors.shape[1]
            check_fits(size * (4 * classes + 16) + 8 * self.trials,  # weights, expert and order per draw
                       f"loss.args.trials {self.trials}: the pool of {self.trials} draws x {steps} steps = {size} "
                       f"Dirichlet draws of {classes} classes")
            weights, experts = draw_pool(self.anchors, self.alpha_sum, size, seed)
            device = self.prior.device
            self.trial_index = torch.arange(self.trials, device=device)
            self.pool_weights, self.pool_experts = weights.to(device), experts.to(device)
            self.order = torch.arange(self.trials * steps, device=device)
            self.seed, self.steps = seed, steps

    def set_epoch(self, epoch):
        """This epoch's order of the pool, the step counter back to 0, and the penalty's gate.
        Tensors are overwritten in place: a recorded CUDA graph keeps reading them."""
        if self.pool_weights is None:
            raise RuntimeError("DirMixELoss: set_run(epochs, steps_per_epoch, seed) must come before set_epoch")
        self.order.copy_(epoch_order(self.order.numel(), self.seed, epoch))
        self.step.zero_()
        self.penalty = penalty_active(epoch, self.epochs)

    def schedule_state(self):
        return (self.penalty, self.seed, self.steps)

    def get_extra_state(self):
        """What the checkpoint keeps: the pool's seed and shape (the draws and every epoch's order
        follow from them), so a resumed run takes the same draws as an uninterrupted one."""
        return {"seed": self.seed, "steps_per_epoch": self.steps, "trials": self.trials}

    def set_extra_state(self, state):
        if isinstance(state, dict) and state.get("seed") is not None:
            self.restored_seed = int(state["seed"])
            if self.steps is not None:
                self.set_run(self.epochs, self.steps, self.restored_seed)

    # -- one step -------------------------------------------------------------------------------
    def draws(self):
        """The next call's ``trials`` draws: (weights [T, C], experts [T]); advances the counter."""
        slot = torch.remainder(self.step, self.steps)
        rows = self.order.index_select(0, slot * self.trials + self.trial_index)
        self.step.add_(1)
        return self.pool_weights.index_select(0, rows), self.pool_experts.index_select(0, rows)

    def check_step_fits(self, batch, classes):
        """A step holds about four [batch, trials, classes] float tensors (scores, their softmax and
        gradients): refused before the first one when they cannot fit (checked once per batch size)."""
        if batch != self._fits_batch:
            check_fits(4 * 4 * batch * self.trials * classes,
                       f"loss.args.trials {self.trials}: one step of batch {batch} x {self.trials} draws x {classes} "
                       "classes")
            self._fits_batch = batch

    def per_draw_losses(self, logits, target, weights, experts):
        """[T]: the batch-mean cross-entropy of each draw's adjusted expert logits."""
        offset = torch.log(weights.pow(self.power) / self.prior.pow(self.power) + EPS)  # [T, C]
        scores = logits.index_select(1, experts) - offset  # [B, T, C]
        b, t, c = scores.shape
        ce = F.cross_entropy(scores.reshape(b * t, c), target[:, None].expand(b, t).reshape(b * t), reduction="none")
        return ce.view(b, t).mean(0)

    @staticmethod
    def upper_semivariance(losses):
        """Squared deviations above the mean, summed, over max(count above - 1, 1)."""
        mean = losses.mean()
        above = losses > mean
        squares = torch.where(above, (losses - mean).pow(2), torch.zeros_like(losses))
        return squares.sum() / (above.sum() - 1).clamp(min=1)

    def forward(self, outputs, target):
        logits = self.expert_logits(outputs).float()
        if logits.shape[1] != 3:
            raise ValueError(f"DirMixELoss needs exactly 3 experts (arch.args.num_experts), got {logits.shape[1]}")
        if self.pool_weights is None:
            raise RuntimeError("DirMixELoss: set_run(epochs, steps_per_epoch, seed) and set_epoch(epoch) "
                               "must come before the first step")
        self.check_step_fits(logits.shape[0], logits.shape[2])
        losses = self.per_draw_losses(logits, target, *self.draws())
        if not self.penalty:
            return losses.mean()
        return losses.mean() + self.lambda_var * self.upper_semivariance(losses)
