"""Multiply-accumulates per image, as the published cost tables count them (SPEC 3).

MACs = FLOPs / 2 of the convolutions and matrix products (linear / cosine classifiers), measured
with ``torch.utils.flop_counter.FlopCounterMode`` on one image. Batch norm, activations, pooling
and additions are not counted (they add well under 2 % for these networks). Nothing is computed:
a model on the meta device runs on a meta input, any other model under fake tensors.
"""
import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode


def macs_per_image(model, image_size, in_channels=3):
    """GMACs of one forward pass of ``model`` on one ``in_channels x image_size x image_size`` image."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with _no_compute(device), torch.no_grad():
            x = torch.empty(1, in_channels, *size, device=device)
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def _no_compute(device):
    """Meta tensors compute nothing already; otherwise trace shapes with fake tensors."""
    if device.type == "meta":
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode  # semi-private, stable since torch 2.0
    return FakeTensorMode(allow_non_fake_inputs=True)
