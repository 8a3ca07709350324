"""TADE training: one epoch of the loss on per-expert logits, and evaluation (top-1 and
many/medium/few) on the validation split, which selects model_best.pth, and on the test set.
Metrics stay tensors on the device and are read only when the progress bar refreshes and at the
end of an epoch."""
import time

import torch

from base.base_trainer import BaseTrainer
from model.metric import accuracy_from_confusion, confusion_matrix
from trainer.cuda_graph import GraphedTrainStep, graph_unsupported_reason
from trainer.forward import predict
from trainer.mixup import Mixup
from trainer.train_step import optimisation_step
from utils.errors import UserError
from utils.performance import Performance
from utils.progress import progress
from utils.runtime import unwrap
from utils.seed import epoch_seed


class NonFiniteLossError(UserError):
    """Training diverged; the last good checkpoint is left as it is."""


class Trainer(BaseTrainer):
    def __init__(self, model, criterion, optimizer, lr_scheduler, config, runtime, data, scaler=None, perf=None,
                 run_dir=None):
        super().__init__(model, criterion, optimizer, lr_scheduler, config, runtime, scaler=scaler, run_dir=run_dir)
        self.data = data
        self.class_names = list(data.class_names)
        self.seed = config.get_int("seed", 0)
        self.refresh_every = self.settings["log_step"]
        self.perf = perf if perf is not None else Performance.from_config(config["trainer"], config.source)
        self.valid_period = self.settings["valid_period"]
        self.shot_masks = data.shot_masks()
        self.selection.check(self.logged_metrics(), self.valid_period, data.has_validation, data.validation_option,
                             self.logger if runtime.is_main else None)
        self.mixup = Mixup.from_config(config)  # trainer.mixup; None: off
        self.graphed_step = self._make_graphed_step()

    def logged_metrics(self):
        """What an epoch may log (``_train_epoch``, ``_valid_epoch``): the names trainer.monitor may use."""
        train = ["loss", "accuracy", "lr", "images_per_s", "epoch_time_s"]
        if self.valid_period <= 0:
            return train
        groups = ["accuracy", *self.shot_masks]
        return train + [f"val_{g}" for g in groups] + [f"test_{g}" for g in groups]

    def autocast(self):
        return self.perf.autocast_context(self.runtime.device)

    def _to_device(self, x, y):
        return self.perf.prepare_input(x, self.runtime.device), y.to(self.runtime.device, non_blocking=True)

    def _train_epoch(self, epoch):
        self.model.train()
        # Augmentation in the main process draws from the global RNG: seed it per epoch, so a
        # resumed run repeats the uninterrupted run exactly.
        torch.manual_seed(epoch_seed(self.seed, epoch) + self.runtime.rank)
        loader = self.data.train_loader(epoch, self.seed, self.runtime.rank, self.runtime.world_size,
                                        device=self.runtime.device)
        # the loss contract: a schedule (RIDE's re-weighting, DirMixE's pool and gate) updates here
        self.criterion.set_run(self.epochs, len(loader), self.seed)
        self.criterion.set_epoch(epoch)
        device = self.runtime.device
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = torch.zeros((), device=device, dtype=torch.int64)
        first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = progress(loader, f"epoch {epoch + 1}/{self.epochs}", show=self.runtime.is_main)
        self._steps_in_epoch = len(loader)
        start = time.perf_counter()
        train_step = self.graphed_step or self._eager_step
        mix_plan = self.mixup.epoch_plan(epoch, len(loader), device) if self.mixup is not None else None
        for step, (x, y) in enumerate(bar):
            x, y = self._to_device(x, y)
            mix = mix_plan.draw(step, y.shape[0]) if mix_plan is not None else None  # (lam, perm)
            output, loss = train_step(x, y, mix)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            loss_sum += loss.double() * y.shape[0]
            correct += (output.argmax(1) == y).sum()
            seen += y.shape[0]
            if (step + 1) % self.refresh_every == 0 or step + 1 == len(loader):
                self._check_finite(first_bad, epoch)
                n = max(int(seen), 1)
                bar.set_postfix(loss=f"{float(loss_sum) / n:.3f}", acc=f"{int(correct) / n:.3f}", lr=f"{lr:.4g}",
                                img_s=f"{n / (time.perf_counter() - start):.0f}")
        totals = torch.stack([loss_sum, correct.double(), seen.double()])
        self.runtime.all_reduce_sum(totals)
        elapsed = time.perf_counter() - start
        n = max(float(totals[2]), 1.0)
        return {"loss": float(totals[0]) / n, "accuracy": float(totals[1]) / n, "lr": lr,
                "images_per_s": float(totals[2]) / elapsed, "epoch_time_s": elapsed}

    def _eager_step(self, x, y, mix=None):
        """One optimisation step (trainer/train_step.py; on the mixed batch when ``mix = (lam, perm)``,
        trainer/mixup.py); returns the detached ensemble output and loss."""
        return optimisation_step(self.model, self.criterion, self.optimizer, x, y, mix, autocast=self.autocast(),
                                 scaler=self.scaler)

    def _make_graphed_step(self):
        """The CUDA-graph step when ``trainer.cuda_graph`` is on and usable here, else None."""
        if not self.perf.cuda_graph or self.runtime.device.type != "cuda":
            return None  # like cudnn_benchmark, a GPU key: no effect elsewhere
        reason = graph_unsupported_reason(self.runtime, self.model, self.scaler)
        if reason:
            if self.runtime.is_main:
                self.logger.info("trainer.cuda_graph: eager steps, %s", reason)
            return None
        return GraphedTrainStep(self.model, self.criterion, self.optimizer, self._eager_step,
                                self.perf.amp_dtype(self.runtime.device))

    def _check_finite(self, first_bad, epoch):
        """Raise if a step's loss was NaN/inf (checked when the bar refreshes, so without a sync per
        step). Nothing is saved in an epoch that raised: ``last.pth`` keeps the last good epoch."""
        if self.runtime.distributed:
            # All ranks must stop together (one that stopped alone would leave the others waiting in
            # the next gradient all-reduce): agree on the first bad step of any rank.
            never = torch.iinfo(torch.int64).max
            first = torch.where(first_bad < 0, torch.full_like(first_bad, never), first_bad)
            first = self.runtime.all_reduce_min(first.clone())
            first_bad = torch.where(first == never, torch.full_like(first, -1), first)
        bad = int(first_bad)
        if bad >= 0:
            kept = (f"{self.run_dir / 'last.pth'} (epoch {self.last_saved_epoch}) is kept" if self.last_saved_epoch
                    else "no checkpoint was written")
            raise NonFiniteLossError(f"loss became non-finite at epoch {epoch + 1}, step {bad + 1} of "
                                     f"{self._steps_in_epoch}; training stopped, {kept}; lower the learning "
                                     f"rate (optimizer.args.lr) or check the data")

    def predict(self, loader):
        """Predictions and targets over a loader (this rank's part).

        Under DDP it runs the wrapped network itself: a DDP forward broadcasts buffers, a collective
        that would hang when the ranks' shards of the test set have different numbers of batches."""
        net = unwrap(self.model) if self.runtime.distributed else self.model
        return predict(net, loader, self.perf, self.runtime.device)

    def _evaluate(self, loader_for, n):
        """Top-1 and many/medium/few over a split of ``n`` images, sharded over the ranks;
        ``loader_for(indices)`` gives this rank's loader."""
        shard = range(self.runtime.rank, n, self.runtime.world_size)
        preds, targets = self.predict(loader_for(shard))
        cm = confusion_matrix(preds, targets, self.data.num_classes)
        self.runtime.all_reduce_sum(cm)
        return accuracy_from_confusion(cm, self.shot_masks)

    def _valid_epoch(self, epoch):
        """``val_*``: the split that selects model_best.pth (trainer.select_on: the validation split,
        or the test set where asked for); ``test_*``: the test set, logged and never selecting."""
        if self.valid_period <= 0 or ((epoch + 1) % self.valid_period and epoch + 1 != self.epochs):
            return {}
        device = self.runtime.device
        n_test = len(self.data.test_set)  # 0: a data module without a test set (an image folder without test/)
        test = self._evaluate(lambda idx: self.data.test_loader(indices=idx, device=device), n_test) if n_test else {}
        out = {}
        if self.selection.select_on == "test":
            out.update({"val_accuracy" if k == "top1" else f"val_{k}": v for k, v in test.items()})
        elif self.data.has_validation:
            val = self._evaluate(lambda idx: self.data.validation_loader(indices=idx, device=device),
                                 len(self.data.validation_set))
            out.update({"val_accuracy" if k == "top1" else f"val_{k}": v for k, v in val.items()})
        out.update({"test_accuracy" if k == "top1" else f"test_{k}": v for k, v in test.items()})
        return out
