"""The epoch loop: model selection (utils/model_selection.py), checkpoints (last, best, periodic),
resume, logging, TensorBoard.

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
from utils.errors import Interrupted, UserError, shown, sigint_deferred
from utils.model_selection import ModelSelection
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
        # What chooses model_best.pth (trainer.monitor on the split trainer.select_on names)
        self.selection = ModelSelection(settings["monitor"], settings["select_on"], config.source)
        self.history = []  # one dict per finished epoch (epochs.csv; kept in checkpoints for resume)
        self.last_saved_epoch = 0  # epochs held by last.pth
        self.use_tensorboard = settings["tensorboard"]
        self.class_names = None  # the data's class names, stored in every checkpoint (set by the subclass)
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
                improved = self.selection.update(log)
                self._log_epoch(log)
                with sigint_deferred():
                    self._save_epoch(epoch, improved)
        except KeyboardInterrupt:
            raise Interrupted(self._interrupt_message(epoch)) from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.selection.best

    def _interrupt_message(self, epoch):
        last = self.run_dir / "last.pth" if self.run_dir is not None else "last.pth"
        if self.last_saved_epoch:
            return (f"stopped in epoch {epoch + 1}; {last} holds epoch {self.last_saved_epoch}, "
                    f"continue with: python train.py -r {last}")
        return f"stopped in epoch {epoch + 1}, before any epoch finished; nothing was saved"

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
            "monitor_best": float(self.selection.best),
            "selected_on": self.selection.selected_on,
            "history": [dict(row) for row in self.history],
            "config": self.config.config,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "rng": get_rng_state(),
            "loss": self.criterion.state_dict() if self.criterion is not None else {},
        }

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
            self.logger.info(self.selection.describe_best())

    def resume(self, path):
        """Continue from a training checkpoint of this framework: model, optimizer, LR schedule,
        gradient scaler, epoch, best-so-far, RNG states and the loss's state (the config's hyperparameters win)."""
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {path} is not a training checkpoint of this framework; "
                            "to start from its weights, evaluate it with test.py instead")
        self._check_resume_state(ckpt, path)
        self._check_not_behind_the_folder(path, ckpt["epoch"])
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
        self.selection.best = float(ckpt.get("monitor_best", self.selection.best))
        self.history = [dict(row) for row in ckpt.get("history", [])]
        selected_on = self.selection.selected_on
        if ckpt.get("selected_on", selected_on) != selected_on and self.runtime.is_main:
            self.logger.info("the checkpoint's model_best was chosen on %s; from here on it is chosen on %s",
                             ckpt.get("selected_on"), selected_on)
        try:
            set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise UserError(f"checkpoint {path}: its RNG state cannot be restored ({type(e).__name__}: {e}); expected "
                            "the state a training checkpoint holds") from None
        if ckpt.get("loss") and self.criterion is not None:  # the loss's state (DirMixE: its pool's seed)
            self.criterion.load_state_dict(ckpt["loss"], strict=False)
        if self.runtime.is_main:
            removed = remove_stale_temp_files(self.run_dir)
            self.logger.info("resumed from %s at epoch %d%s%s", path, self.start_epoch,
                             f"; config changes: {', '.join(changes)}" if changes else "",
                             f"; removed {len(removed)} temporary file(s) of a killed save" if removed else "")

    def _check_not_behind_the_folder(self, path, epoch):
        """Resuming an earlier checkpoint (model_best.pth, checkpoint-epochN.pth) in its own folder
        would replace the later epochs of that folder's last.pth: refused before anything is written.
        A resume into a new folder (``--run_id``, ``--save_dir``, ``--name``) has nothing to replace."""
        last = self.run_dir / "last.pth"
        if not last.is_file() or Path(path).resolve() == last.resolve():
            return
        try:
            later = load_checkpoint(last).get("epoch")
        except UserError:  # a damaged last.pth holds no epoch to lose
            return
        if isinstance(later, int) and not isinstance(later, bool) and later > epoch:
            raise UserError(f"checkpoint {path} holds epoch {epoch}, but {last} holds epoch {later}: resuming in this "
                            f"folder would replace the later epochs; resume from {last}, or continue from epoch "
                            f"{epoch} in a new run folder with --run_id NAME")

    @staticmethod
    def _check_resume_state(ckpt, path):
        """What a resume reads besides the weights, checked before anything is loaded: the epoch (an
        integer >= 0), the optimizer state, the RNG states (a resume without them would not continue
        the run exactly) and the history."""
        epoch = ckpt.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise UserError(f"checkpoint {path}: epoch is {shown(epoch)}; expected an integer >= 0 (finished epochs)")
        optimizer = ckpt.get("optimizer")
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list) \
                or not isinstance(optimizer.get("state"), dict):
            raise UserError(f"checkpoint {path}: optimizer state is {shown(optimizer, 40)}; expected the optimizer's "
                            "state_dict (state and param_groups)")
        rng = ckpt.get("rng")
        if not isinstance(rng, dict) or not all(k in rng for k in ("python", "numpy", "torch")):
            raise UserError(f"checkpoint {path}: RNG state is {shown(rng, 40)}; expected the python, numpy and torch "
                            "generator states a training checkpoint holds")
        if not isinstance(ckpt.get("history", []), list):
            raise UserError(f"checkpoint {path}: history is {shown(ckpt.get('history'), 40)}; "
                            "expected a list of epochs")
        best = ckpt.get("monitor_best", 0.0)
        if not isinstance(best, (int, float)) or isinstance(best, bool) or math.isnan(best):
            raise UserError(f"checkpoint {path}: monitor_best is {shown(best, 40)}; expected a number")

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
