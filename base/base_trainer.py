"""The epoch loop: monitor, checkpoints (last, best, periodic), resume, logging, TensorBoard.

Subclasses write ``_train_epoch(epoch)`` and ``_valid_epoch(epoch)``, each returning a dict of
floats. Epochs are 0-based inside the code and 1-based in logs, file names and checkpoints
(``checkpoint["epoch"]`` is the number of finished epochs).
"""
import logging
import math

import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.runtime import unwrap
from utils.seed import get_rng_state, set_rng_state

CHECKPOINT_FORMAT = "tade-checkpoint/1"


class BaseTrainer:
    def __init__(self, model, criterion, optimizer, lr_scheduler, config, runtime, scaler=None):
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scaler = scaler
        self.config = config
        self.runtime = runtime
        self.logger = logging.getLogger("train")
        cfg = config["trainer"]
        self.epochs = int(cfg["epochs"])
        self.save_period = int(cfg.get("save_period", 0) or 0)
        self.run_dir = config.run_dir
        self.start_epoch = 0
        monitor = cfg.get("monitor", "max val_accuracy")
        if monitor == "off":
            self.mnt_mode, self.mnt_metric = "off", None
        else:
            try:
                self.mnt_mode, self.mnt_metric = monitor.split()
            except ValueError:
                raise UserError(f"config {config.source}: trainer.monitor {monitor!r}: expected 'max NAME', "
                                "'min NAME' or 'off'")
            if self.mnt_mode not in ("min", "max"):
                raise UserError(f"config {config.source}: trainer.monitor mode must be min or max, got "
                                f"{self.mnt_mode!r}")
        self.mnt_best = -math.inf if self.mnt_mode == "max" else math.inf
        self.writer = None
        if runtime.is_main and cfg.get("tensorboard", True):
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.run_dir))
        if config.resume is not None:
            self._resume_checkpoint(config.resume)

    def _train_epoch(self, epoch):
        raise NotImplementedError

    def _valid_epoch(self, epoch):
        raise NotImplementedError

    def train(self):
        """Run epochs start_epoch..epochs-1; Ctrl-C saves ``last.pth`` of the last finished epoch."""
        try:
            for epoch in range(self.start_epoch, self.epochs):
                log = {"epoch": epoch + 1}
                log.update(self._train_epoch(epoch))
                log.update(self._valid_epoch(epoch))
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step()
                improved = self._update_monitor(log)
                self._log_epoch(log)
                self._save_epoch(epoch, improved)
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.mnt_best

    def _update_monitor(self, log):
        if self.mnt_mode == "off":
            return False
        if self.mnt_metric not in log:
            raise UserError(f"config {self.config.source}: trainer.monitor metric {self.mnt_metric!r} is not "
                            f"logged; available: {', '.join(k for k in log if k != 'epoch')}")
        value = log[self.mnt_metric]
        better = value > self.mnt_best if self.mnt_mode == "max" else value < self.mnt_best
        if better:
            self.mnt_best = value
        return better

    def _log_epoch(self, log):
        if not self.runtime.is_main:
            return
        self.logger.info("epoch %d: %s", log["epoch"],
                         "  ".join(f"{k} {v:.4f}" for k, v in log.items() if k != "epoch"))
        if self.writer is not None:
            for key, value in log.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, log["epoch"])
            self.writer.flush()

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_state(self, epoch):
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": type(unwrap(self.model)).__name__,
            "epoch": epoch + 1,
            "state_dict": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitor_best": float(self.mnt_best),
            "config": self.config.config,
            "rng": get_rng_state(),
        }

    def _save_epoch(self, epoch, improved):
        if not self.runtime.is_main:
            return
        state = self._checkpoint_state(epoch)
        save_checkpoint(state, self.run_dir / "last.pth")
        if self.save_period and (epoch + 1) % self.save_period == 0:
            save_checkpoint(state, self.run_dir / f"checkpoint-epoch{epoch + 1}.pth")
        if improved:
            # Selected on the test split (CIFAR has no validation set): name it for what it is.
            save_checkpoint(state, self.run_dir / "model_best.pth")
            self.logger.info("model_best.pth: best %s so far on the evaluation split (%.4f)",
                             self.mnt_metric, self.mnt_best)

    def _resume_checkpoint(self, path):
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {path} is not a training checkpoint of this framework; "
                            "to start from its weights, evaluate it with test.py instead")
        from utils.checkpoint import load_model_weights
        load_model_weights(unwrap(self.model), ckpt["state_dict"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path}: optimizer state does not fit the config's optimizer ({e})")
        if self.lr_scheduler is not None and ckpt.get("lr_scheduler"):
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.mnt_best = float(ckpt.get("monitor_best", self.mnt_best))
        set_rng_state(ckpt.get("rng"))
        if self.runtime.is_main:
            self.logger.info("resumed from %s at epoch %d", path, self.start_epoch)
