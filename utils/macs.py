"""Multiply-accumulates per image, as the published cost tables count them (docs/methods.md#backbones).

MACs = FLOPs / 2 of the convolutions and matrix products (linear / cosine classifiers), measured
with ``torch.utils.flop_counter.FlopCounterMode`` on one image. Batch norm, activations, pooling
and additions are not counted (they add about 1 % for these networks). Nothing needs computing: a
model on the meta device runs on a meta input, any other model under fake tensors (falling back
to one real image if a model cannot be traced that way).
"""
import torch
from torch.utils.flop_counter import FlopCounterMode


def macs_per_image(net, image_size, device=None, in_channels=3):
    """GMACs of one forward pass of ``net`` (eval mode) on one ``in_channels x image_size x image_size``
    image; ``device`` defaults to the device of the model's parameters."""
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    was_training = net.training
    net.eval()
    try:
        if device.type == "meta":
            return _count(net, torch.empty(1, in_channels, *size, device=device))
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode  # semi-private, stable since torch 2.0
            with FakeTensorMode(allow_non_fake_inputs=True):
                return _count(net, torch.empty(1, in_channels, *size, device=device))
        except Exception:  # noqa: BLE001 - a model fake tensors cannot trace: count on one real image
            return _count(net, torch.zeros(1, in_channels, *size, device=device))
    finally:
        net.train(was_training)


@torch.no_grad()
def _count(net, x):
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 2 / 1e9
