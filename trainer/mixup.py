"""Mixup as a training option (Zhang et al., ICLR 2018; BalPoE's recipes, docs/methods.md#balpoe).

Config: ``trainer.mixup: {"alpha": 0.8}`` turns it on; ``null`` or no key: off. Per batch one
lam ~ Beta(alpha, alpha) and a permutation ``perm`` of the batch:

  x' = lam * x + (1 - lam) * x[perm]
  loss = lam * L(model(x'), y) + (1 - lam) * L(model(x'), y[perm])

for any training loss L (the loss contract, base/base_loss.py, is unchanged).

Reproducible and resumable: the draws of an epoch come from their own generator (numpy's PCG64,
since torch has no Beta sampler that takes a generator), seeded by (seed, epoch) only, apart from
the data order and augmentation streams. A resumed run therefore draws the same lam and perm for
every step as the uninterrupted run; every rank of a multi-process run draws the same sequence
(one lam per global batch, as in one process). The whole epoch's draws are made on the CPU and
copied to the training device once per epoch, so steps need no host-to-device copy (which would
stall a GPU queue), and lam and perm are device tensors: the CUDA-graph step
(trainer/cuda_graph.py) copies them into static inputs and mixes inside the graph.
"""
import math

import numpy as np
import torch

from utils.errors import UserError
from utils.seed import epoch_seed

MIXUP_STREAM = 0x6D69787570  # "mixup": keeps these draws apart from every other seeded stream


class Mixup:
    def __init__(self, alpha, seed=0):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"mixup alpha must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.seed = int(seed)

    @classmethod
    def from_config(cls, config):
        """``trainer.mixup`` of a ConfigParser: a Mixup, or None when the key is absent or null."""
        section = config.get("trainer.mixup")
        if section is None:
            return None
        if not isinstance(section, dict) or "alpha" not in section or set(section) != {"alpha"}:
            raise UserError(f"config {config.source}: trainer.mixup is {section!r}: expected {{\"alpha\": A}} "
                            f"with A > 0 (e.g. 0.8), or null for no mixup")
        alpha = section["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise UserError(f"config {config.source}: trainer.mixup.alpha is {alpha!r}: expected a number > 0 "
                            f"(Beta(alpha, alpha) for lam; e.g. 0.8), or trainer.mixup null for no mixup")
        return cls(alpha, config.get_int("seed", 0))

    def epoch_plan(self, epoch, steps, device=None):
        """The draws of one (0-based) epoch of ``steps`` batches."""
        return MixupPlan(self.alpha, epoch_seed(self.seed, epoch), steps, device)


class MixupPlan:
    """``draw(step, batch_size) -> (lam, perm)``: lam a 0-d float32 tensor, perm a permutation of
    range(batch_size) (int64), both on the training device."""

    def __init__(self, alpha, seed, steps, device=None):
        self.alpha, self.seed, self.steps = alpha, int(seed), int(steps)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.width = None

    def _build(self, width):
        rng = np.random.default_rng([MIXUP_STREAM, self.seed])
        lam = rng.beta(self.alpha, self.alpha, size=self.steps)
        keys = torch.from_numpy(rng.random((self.steps, width)))  # float64: ties practically impossible
        self.width = width
        self.keys = keys
        self.lams = torch.from_numpy(lam).float().to(self.device)
        self.perms = torch.argsort(keys, dim=1, stable=True).to(self.device)

    def draw(self, step, batch_size):
        if self.width is None:
            self._build(batch_size)  # the first batch is a full one
        if not 0 <= step < self.steps:
            raise IndexError(f"mixup: step {step} outside the epoch's {self.steps} steps")
        if batch_size > self.width:
            raise ValueError(f"mixup: batch of {batch_size} after batches of {self.width}")
        if batch_size == self.width:
            perm = self.perms[step]
        else:  # a shorter last batch: the order of its keys is a uniform permutation too
            perm = torch.argsort(self.keys[step, :batch_size], stable=True).to(self.device)
        return self.lams[step], perm


def mix_inputs(x, lam, perm):
    """lam * x + (1 - lam) * x[perm] (keeps x's memory format; exactly x when lam is 1)."""
    lam = lam.to(x.dtype)
    return lam * x + (1 - lam) * x[perm]


def mixed_loss(criterion, outputs, y, lam, perm):
    """lam * L(outputs, y) + (1 - lam) * L(outputs, y[perm])."""
    return lam * criterion(outputs, y) + (1 - lam) * criterion(outputs, y[perm])

