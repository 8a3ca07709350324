"""Precision and memory-layout settings from the config's ``trainer`` section, shared by training,
evaluation and test-time aggregation so all forward passes run in the same mode.

Keys: ``autocast`` (null, "auto", "bf16", "fp16"; "auto" is bf16 where the process may compute bf16
natively: a GPU with bf16, or a CPU with AVX512-BF16 or AMX whose use is not capped by
``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA``; fp32 elsewhere: on an AVX2-only or AVX2-capped CPU
bf16 is emulated and a training step is about 10x slower than in fp32), ``channels_last`` (bool),
``compile`` (bool),
``cudnn_benchmark`` (bool), ``cuda_graph`` (bool: training steps replayed as CUDA graphs on one GPU,
see ``trainer/cuda_graph.py``). A missing key means off (plain fp32, NCHW, eager), so configs and
checkpoints written before these keys existed keep their behaviour; the exception is
``fold_batchnorm`` (bool, default true): the evaluation passes of a trained checkpoint run on a copy
with batch norm folded into the convolutions (model/fold_batchnorm.py; the same logits up to float
rounding, checkpoints unchanged).
"""
import contextlib
import os
from dataclasses import dataclass

import torch

from utils.trainer_schema import trainer_settings

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_FLAGS = ("channels_last", "compile", "cudnn_benchmark", "cuda_graph", "fold_batchnorm")


def onednn_allows_bf16():
    """Whether oneDNN (the CPU's convolutions and matrix products) may use bf16 instructions: its cap,
    ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``), is unset, ``ALL``, or an instruction
    set from ``AVX512_CORE_BF16`` up (the AMX, FP16 and AVX10 ones)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap == "ALL" or any(name in cap for name in ("BF16", "AMX", "FP16", "AVX10"))


def native_bf16(device):
    """Whether this process computes bf16 natively on ``device`` (so bf16 autocast is faster than
    fp32 there). On a CPU that is what the process may use, not only what the hardware has: AVX512-BF16
    or AMX, with ATen's kernels at AVX512 (``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY`` caps) and oneDNN not capped below bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(hardware) and torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn_allows_bf16()
    return False


@dataclass
class Performance:
    autocast: str = None
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    cuda_graph: bool = False
    fold_batchnorm: bool = False  # a bare Performance() is the plain path; configs default to true (the schema)

    @classmethod
    def from_config(cls, trainer_cfg, source="config"):
        """The precision keys of a ``trainer`` section, checked by its schema (utils/trainer_schema.py)."""
        settings = trainer_settings(trainer_cfg, source, training=False)
        return cls(autocast=settings["autocast"], **{key: settings[key] for key in _FLAGS})

    def amp_dtype(self, device):
        """The autocast dtype on ``device`` (None: fp32)."""
        if self.autocast == "auto":
            return torch.bfloat16 if native_bf16(device) else None
        return _DTYPES.get(self.autocast)

    def precision(self, device):
        """"bf16", "fp16" or "fp32": what the forward passes on ``device`` run in (for logs)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype(device), "fp32")

    def autocast_context(self, device):
        dtype = self.amp_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

    def grad_scaler(self, device):
        """A GradScaler for fp16 autocast (fp16 gradients underflow without one), else None."""
        if self.amp_dtype(device) is not torch.float16:
            return None
        return torch.amp.GradScaler(torch.device(device).type)

    def apply_layout(self, model):
        """The model in the configured memory layout (call after moving it to its device)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def configure_backends(self):
        """Process-wide switch: cuDNN autotuning (``cudnn_benchmark``). Called once per process by
        the build path (trainer/build.py)."""
        if self.cudnn_benchmark and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = True

    def maybe_compile(self, model):
        """``torch.compile`` the module's forward in place (``nn.Module.compile``): the module, its
        class and its ``state_dict`` keys stay the same, so checkpoints do not change."""
        if self.compile:
            model.compile()
        return model

    def prepare_input(self, x, device):
        """Move a batch to the device (non-blocking) in the layout the model runs in."""
        x = x.to(device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x
