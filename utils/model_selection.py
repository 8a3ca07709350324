"""What chooses model_best.pth, in one place: ``trainer.monitor`` ("max NAME", "min NAME" or "off")
read on the split ``trainer.select_on`` names.

- ``select_on`` "validation" (the default): the monitor reads the ``val_*`` metrics of the held-out
  validation split; with no such split nothing is chosen (model_best.pth is not written).
- ``select_on`` "test": the reference release's choice, the ``val_*`` metrics are the test set's;
  said so in the log and recorded in the checkpoint (``selected_on``).
- ``select_on`` "last": nothing is chosen; report ``last.pth``.

A monitor on a ``test_*`` metric is refused (it would choose on the test set unnamed), as is a
``val_*`` monitor with validation switched off (``trainer.valid_period`` 0) or a metric no epoch
logs; all before the first epoch.
"""
import math

from utils.errors import UserError
from utils.known_keys import nearest


class ModelSelection:
    def __init__(self, monitor, select_on, source):
        self.source = source  # the config file, for error messages
        self.select_on = select_on  # one of SELECT_ON_CHOICES (utils/trainer_schema.py)
        if monitor == "off" or select_on == "last":
            self.mode, self.metric = "off", None
        else:
            self.mode, self.metric = monitor.split()
        self.best = -math.inf if self.mode == "max" else math.inf
        if self.active and self.metric.startswith("test_"):
            raise UserError(f"config {source}: trainer.monitor {self.metric} would choose model_best.pth "
                            "on the test set; monitor a val_ metric, or set trainer.select_on to \"test\" to choose on "
                            "the test set knowingly (val_ metrics are then the test set's)")

    @property
    def active(self):
        return self.mode != "off"

    @property
    def selected_on(self):
        """Which split the monitor reads ("validation", "test") or "none" (monitor off)."""
        return self.select_on if self.active else "none"

    def check(self, logged, valid_period, has_validation, validation_option, logger=None):
        """Before training: the monitor needs validation epochs and a metric an epoch logs
        (``logged``); with no validation split (and select_on "validation") nothing is chosen. Says
        what chooses model_best.pth on ``logger`` (None: silent, e.g. on ranks other than 0)."""
        if not self.active:
            return
        if valid_period <= 0 and self.metric.startswith("val_"):
            raise UserError(f"config {self.source}: trainer.monitor {self.mode} {self.metric} needs "
                            f"validation, but trainer.valid_period is {valid_period}; set "
                            f"trainer.monitor to \"off\" or valid_period to 1 or more")
        if self.metric not in logged:
            close = nearest(self.metric, logged)
            hint = f"did you mean {self.mode} {close}?" if close else f"expected one of: {', '.join(logged)}"
            raise UserError(f"config {self.source}: trainer.monitor metric {self.metric!r} is not logged; {hint}")
        if self.select_on == "validation" and not has_validation:
            self.mode = "off"
            if logger is not None:
                logger.info("no validation split (%s): model_best.pth is not written; trainer.select_on "
                            "\"test\" would choose on the test set, as the reference release did", validation_option)
        elif self.select_on == "test" and logger is not None:
            logger.info("trainer.select_on test: model_best.pth is chosen on the TEST SET (the reference "
                        "release's choice); val_* metrics are the test set's")

    def update(self, log):
        """After an epoch: whether its ``log`` improves on the best so far (then it is the new best)."""
        if not self.active:
            return False
        if self.metric not in log:
            if self.metric.startswith("val_") and not any(k.startswith("val_") for k in log):
                return False  # no validation in this epoch (trainer.valid_period): nothing to compare
            raise UserError(f"config {self.source}: trainer.monitor metric {self.metric!r} is not "
                            f"logged; available: {', '.join(k for k in log if k != 'epoch')}")
        value = log[self.metric]
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best = value
        return better

    def describe_best(self):
        """The log line of a new model_best.pth."""
        split = "TEST SET (trainer.select_on test)" if self.select_on == "test" else "validation split"
        return f"model_best.pth: best {self.metric} so far on the {split} ({self.best:.4f})"
