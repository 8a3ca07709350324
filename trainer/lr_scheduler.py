"""Learning-rate schedules by name: ours first, then anything in ``torch.optim.lr_scheduler``."""
from torch.optim.lr_scheduler import LambdaLR


class _WarmupStep:
    """Picklable multiplier (docs/methods.md#recipes): gamma^2 from step2, gamma from step1, times (e+1)/warmup
    while e < warmup; e is the 0-based epoch."""

    def __init__(self, step1, step2, gamma, warmup_epoch):
        self.step1, self.step2, self.gamma, self.warmup_epoch = step1, step2, gamma, warmup_epoch

    def __call__(self, epoch):
        if epoch >= self.step2:
            factor = self.gamma * self.gamma
        elif epoch >= self.step1:
            factor = self.gamma
        else:
            factor = 1.0
        if epoch < self.warmup_epoch:
            factor *= float(epoch + 1) / self.warmup_epoch
        return factor


class WarmupStepLR(LambdaLR):
    """Linear warmup then two x-gamma steps, stepped once per epoch (the release's ``CustomLR``)."""

    def __init__(self, optimizer, step1=160, step2=180, gamma=0.1, warmup_epoch=5, last_epoch=-1):
        for name, v in (("step1", step1), ("step2", step2), ("warmup_epoch", warmup_epoch)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer epoch, got {v!r}")
        super().__init__(optimizer, _WarmupStep(step1, step2, gamma, warmup_epoch), last_epoch=last_epoch)

    def state_dict(self):
        state = super().state_dict()
        state["lr_lambdas"] = [None]  # the multiplier is rebuilt from the config, not stored
        return state


CustomLR = WarmupStepLR  # name used by the reference release's configs

__all__ = ["WarmupStepLR", "CustomLR"]
