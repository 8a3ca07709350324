"""The epoch loop: monitor, checkpoints (last, best, periodic), resume, logging, TensorBoard.

Subclasses write ``_train_epoch(epoch)`` and ``_valid_epoch(epoch)``, each returning a dict of
floats. Resuming is an explicit call, ``trainer.resume(checkpoint)``, before ``train()``. Epochs
are 0-based inside the code and 1-based in logs, file names and checkpoints (``checkpoint["epoch"]``
is the number of finished epochs).
"""
import logging
import math
from pathlib import Path

from utils.checkpoint import (CheckpointWriteError, load_checkpoint, load_model_weights, remove_stale_temp_files,
                              save_checkpoint)
from utils.errors import Interrupted, UserError, sigint_deferred
from utils.known_keys import nearest
from utils.results import write_history_csv
from utils.runtime import unwrap
from utils.seed import get_rng_state, set_rng_state
from utils.trainer_schema import trainer_settings

CHECKPOINT_FORMAT = "tade-checkpoint/1"


class BaseTrainer:
    def __init__(self, model, criterion, optimizer, lr_scheduler, config, runtime, scaler=None, run_dir=None):
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scaler = scaler
        self.config = config
        self.runtime = runtime
        self.logger = logging.getLogger("train")
        settings = trainer_settings(config["trainer"], config.source)  # every trainer key, checked
        self.settings = settings
        self.epochs = settings["epochs"]
        self.save_period = settings["save_period"]
        self.run_dir = Path(run_dir) if run_dir is not None else None  # where checkpoints go (rank 0)
        self.start_epoch = 0
        if settings["monitor"] == "off":
            self.mnt_mode, self.mnt_metric = "off", None
        else:
            self.mnt_mode, self.mnt_metric = settings["monitor"].split()
        self.mnt_best = -math.inf if self.mnt_mode == "max" else math.inf
        # What chooses model_best.pth: the validation split (default), the test set (the reference
        # release's choice, named so in the log and the checkpoint), or nothing ("last").
        self.select_on = settings["select_on"]  # one of SELECT_ON_CHOICES (utils/trainer_schema.py)
        if self.select_on == "last":
            self.mnt_mode, self.mnt_metric = "off", None
        if self.mnt_mode != "off" and self.mnt_metric.startswith("test_"):
            raise UserError(f"config {config.source}: trainer.monitor {self.mnt_metric} would choose model_best.pth "
                            "on the test set; monitor a val_ metric, or set trainer.select_on to \"test\" to choose on "
                            "the test set knowingly (val_ metrics are then the test set's)")
        self.history = []  # one dict per finished epoch (epochs.csv; kept in checkpoints for resume)
        self.last_saved_epoch = 0  # epochs held by last.pth
        self.use_tensorboard = settings["tensorboard"]
        self.writer = None  # opened by train(): a refused resume leaves the run folder as it was

    def _train_epoch(self, epoch):
        raise NotImplementedError

    def _valid_epoch(self, epoch):
        raise NotImplementedError

    def train(self):
        """Run epochs start_epoch..epochs-1.

        ``last.pth`` always holds the last *finished* epoch: it is written once per epoch, after
        validation, atomically. Ctrl-C stops at once and raises :class:`Interrupted` (exit 130)
        naming that epoch; a Ctrl-C that arrives while an epoch is being saved waits for the save.
        Resuming repeats the interrupted epoch from its start, exactly as the uninterrupted run.
        """
        epoch = self.start_epoch
        if self.runtime.is_main and self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.run_dir))
        try:
            for epoch in range(self.start_epoch, self.epochs):
                log = {"epoch": epoch + 1}
                log.update(self._train_epoch(epoch))
                log.update(self._valid_epoch(epoch))
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step()
                improved = self._update_monitor(log)
                self._log_epoch(log)
                with sigint_deferred():
                    self._save_epoch(epoch, improved)
        except KeyboardInterrupt:
            raise Interrupted(self._interrupt_message(epoch)) from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.mnt_best

    def _interrupt_message(self, epoch):
        last = self.run_dir / "last.pth" if self.run_dir is not None else "last.pth"
        if self.last_saved_epoch:
            return (f"stopped in epoch {epoch + 1}; {last} holds epoch {self.last_saved_epoch}, "
                    f"continue with: python train.py -r {last}")
        return f"stopped in epoch {epoch + 1}, before any epoch finished; nothing was saved"

    def check_monitor(self, logged):
        """Before training: ``trainer.monitor`` must name one of the metrics an epoch logs
        (``logged``), not fail after the first epoch."""
        if self.mnt_mode != "off" and self.mnt_metric not in logged:
            close = nearest(self.mnt_metric, logged)
            hint = f"did you mean {self.mnt_mode} {close}?" if close else f"expected one of: {', '.join(logged)}"
            raise UserError(f"config {self.config.source}: trainer.monitor metric {self.mnt_metric!r} is not "
                            f"logged; {hint}")

    def _update_monitor(self, log):
        if self.mnt_mode == "off":
            return False
        if self.mnt_metric not in log:
            if self.mnt_metric.startswith("val_") and not any(k.startswith("val_") for k in log):
                return False  # no validation in this epoch (trainer.valid_period): nothing to compare
            raise UserError(f"config {self.config.source}: trainer.monitor metric {self.mnt_metric!r} is not "
                            f"logged; available: {', '.join(k for k in log if k != 'epoch')}")
        value = log[self.mnt_metric]
        better = value > self.mnt_best if self.mnt_mode == "max" else value < self.mnt_best
        if better:
            self.mnt_best = value
        return better

    def _log_epoch(self, log):
        self.history.append(dict(log))
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
            "selected_on": self.selected_on(),
            "history": [dict(row) for row in self.history],
            "config": self.config.config,
            "rng": get_rng_state(),
            "loss": self.criterion.state_dict() if self.criterion is not None else {},
        }

    def selected_on(self):
        """Which split the monitor reads ("validation", "test") or "none" (monitor off)."""
        return "none" if self.mnt_mode == "off" else self.select_on

    def _save_epoch(self, epoch, improved):
        if not self.runtime.is_main:
            return
        state = self._checkpoint_state(epoch)
        copies = []
        if self.save_period and (epoch + 1) % self.save_period == 0:
            copies.append(self.run_dir / f"checkpoint-epoch{epoch + 1}.pth")
        if improved:
            copies.append(self.run_dir / "model_best.pth")
        # last.pth is renamed last: it is the commit point of the epoch (see save_checkpoint).
        try:
            save_checkpoint(state, self.run_dir / "last.pth", copies=copies)
        except CheckpointWriteError as e:
            last = self.run_dir / "last.pth"
            kept = (f"{last} (epoch {self.last_saved_epoch}) is kept, continue with: python train.py -r {last}"
                    if self.last_saved_epoch else "no checkpoint was written")
            raise CheckpointWriteError(f"epoch {epoch + 1} not saved, {e}; {kept}") from None
        self.last_saved_epoch = epoch + 1
        try:
            write_history_csv(self.history, self.run_dir / "epochs.csv")
        except UserError as e:  # disk full after the checkpoint: the epoch itself is saved
            raise UserError(f"{e}; {self.run_dir / 'last.pth'} (epoch {epoch + 1}) is saved, continue with: "
                            f"python train.py -r {self.run_dir / 'last.pth'}") from None
        if improved:
            split = "TEST SET (trainer.select_on test)" if self.select_on == "test" else "validation split"
            self.logger.info("model_best.pth: best %s so far on the %s (%.4f)", self.mnt_metric, split, self.mnt_best)

    def resume(self, path):
        """Continue from a training checkpoint of this framework: model, optimizer, LR schedule,
        gradient scaler, epoch, best-so-far, RNG states and the loss's state (the config's hyperparameters win)."""
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {path} is not a training checkpoint of this framework; "
                            "to start from its weights, evaluate it with test.py instead")
        load_model_weights(unwrap(self.model), ckpt["state_dict"], path)
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"checkpoint {path}: optimizer state does not fit the config's optimizer ({e})")
        if self.lr_scheduler is not None and ckpt.get("lr_scheduler"):
            try:
                self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"checkpoint {path}: LR scheduler state does not fit the config's lr_scheduler ({e})")
        changes = self._apply_configured_hyperparameters(configured)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.last_saved_epoch = self.start_epoch
        self.mnt_best = float(ckpt.get("monitor_best", self.mnt_best))
        self.history = [dict(row) for row in ckpt.get("history", [])]
        if ckpt.get("selected_on", self.selected_on()) != self.selected_on() and self.runtime.is_main:
            self.logger.info("the checkpoint's model_best was chosen on %s; from here on it is chosen on %s",
                             ckpt.get("selected_on"), self.selected_on())
        set_rng_state(ckpt.get("rng"))
        if ckpt.get("loss") and self.criterion is not None:  # the loss's state (DirMixE: its pool's seed)
            self.criterion.load_state_dict(ckpt["loss"], strict=False)
        if self.runtime.is_main:
            removed = remove_stale_temp_files(self.run_dir)
            self.logger.info("resumed from %s at epoch %d%s%s", path, self.start_epoch,
                             f"; config changes: {', '.join(changes)}" if changes else "",
                             f"; removed {len(removed)} temporary file(s) of a killed save" if removed else "")

    def _apply_configured_hyperparameters(self, configured):
        """After loading the optimizer state, let the resolved config win for hyperparameters.

        ``optimizer.load_state_dict`` restores the checkpoint's lr, momentum, weight decay...; a
        value changed in the config on resume (``--lr``, ``--set optimizer.args.weight_decay=...``)
        would be ignored silently. The schedule keeps its position: a new base lr rescales the
        current lr by new/old base (exact for multiplicative schedules: warmup-step, step,
        multi-step, exponential, cosine to 0). Unchanged values are left untouched, so a plain
        resume is bit for bit the uninterrupted run.
        """
        changes = []
        base_lrs = getattr(self.lr_scheduler, "base_lrs", None)
        for i, (group, wanted) in enumerate(zip(self.optimizer.param_groups, configured)):
            base_key = "initial_lr" if "initial_lr" in wanted and "initial_lr" in group else "lr"
            old, new = group[base_key], wanted[base_key]
            if old != new:
                if base_key == "initial_lr":
                    group["lr"] = group["lr"] * (new / old) if old else new
                    group["initial_lr"] = new
                    if base_lrs is not None and i < len(base_lrs):
                        base_lrs[i] = new
                else:
                    group["lr"] = new
                changes.append(f"group {i} lr {old:g} -> {new:g}")
            for key, value in wanted.items():
                if key not in ("lr", "initial_lr") and group.get(key) != value:
                    changes.append(f"group {i} {key} {group.get(key)} -> {value}")
                    group[key] = value
        return changes
