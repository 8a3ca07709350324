"""Precision and memory-layout settings from the config's ``trainer`` section, shared by training,
evaluation and test-time aggregation so all forward passes run in the same mode.

Keys: ``autocast`` (null, "bf16", "fp16"), ``channels_last`` (bool), ``compile`` (bool),
``cudnn_benchmark`` (bool).
"""
import contextlib
from dataclasses import dataclass

import torch

from utils.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass
class Performance:
    autocast: str = None
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False

    @classmethod
    def from_config(cls, trainer_cfg, source="config"):
        trainer_cfg = trainer_cfg or {}
        amp = trainer_cfg.get("autocast", None)
        if amp not in (None, *_DTYPES):
            raise UserError(f"config {source}: trainer.autocast {amp!r}: expected null, \"bf16\" or \"fp16\"")
        return cls(autocast=amp, channels_last=bool(trainer_cfg.get("channels_last", False)),
                   compile=bool(trainer_cfg.get("compile", False)),
                   cudnn_benchmark=bool(trainer_cfg.get("cudnn_benchmark", False)))

    @property
    def amp_dtype(self):
        return _DTYPES.get(self.autocast)

    def autocast_context(self, device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.amp_dtype)

    def prepare_model(self, model):
        """Apply the memory layout (call after moving the model to its device)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cudnn_benchmark and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = True
        return model

    def maybe_compile(self, model):
        return torch.compile(model) if self.compile else model

    def prepare_input(self, x, device):
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
