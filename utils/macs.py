"""Multiply-accumulates per image, measured with ``torch.utils.flop_counter`` (MACs = FLOPs / 2)."""
import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def macs_per_image(net, image_size, device="cpu"):
    """GMACs of one forward pass on one 3 x image_size x image_size image (eval mode)."""
    was_training = net.training
    net.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x)
    net.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
