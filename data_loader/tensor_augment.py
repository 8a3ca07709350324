"""SPEC 2.1's small-image training augmentation on whole batches of a uint8 tensor, on any device.

RandomCrop(size, padding) with zero padding, RandomHorizontalFlip and RandomRotation(degrees)
(nearest neighbour, zero fill) only move pixels, so together they are one index map per image:
each output pixel copies one source pixel or is zero. ``source_index`` builds that map for a batch
and one gather applies it; ToTensor and Normalize follow as float ops. Given the same parameters
the result equals the PIL pipeline pixel for pixel (the rotation repeats Pillow's 16.16
fixed-point affine map), and ``sample_params`` draws the parameters from the same distributions
as torchvision: crop offsets uniform on 0..2*padding, flip with probability 0.5, angle uniform on
[-degrees, degrees].
"""
import math
from dataclasses import dataclass

import torch


@dataclass
class AugmentParams:
    """Per-image parameters (CPU tensors of length B): crop offsets in the padded image (``top``
    row, ``left`` column), horizontal ``flip``, rotation ``angle`` in degrees (counter-clockwise)."""
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor

    def __len__(self):
        return len(self.top)

    def __getitem__(self, index):
        return AugmentParams(self.top[index], self.left[index], self.flip[index], self.angle[index])


def sample_params(n, generator, padding=4, flip=True, rotation=15):
    """Draw ``n`` images' parameters on the CPU from ``generator`` (device-independent draws)."""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    angle = torch.empty(n, dtype=torch.float32)
    if rotation:
        angle.uniform_(-float(rotation), float(rotation), generator=generator)
    else:
        angle.zero_()
    return AugmentParams(top, left, flips, angle.double())


def _pillow_fixed_affine(angle, size):
    """Pillow's ``Image.rotate(angle)`` (centre (w/2, h/2), no expand) as the 16.16 fixed-point
    coefficients its nearest-neighbour affine uses: source x = (a0*x + a1*y + a2) >> 16,
    source y = (a3*x + a4*y + a5) >> 16 for output pixel (x, y)."""
    h, w = size
    cx, cy = w / 2, h / 2
    rows = []
    for deg in angle.tolist():
        rad = -math.radians(deg % 360.0)
        a, b, d, e = round(math.cos(rad), 15), round(math.sin(rad), 15), round(-math.sin(rad), 15), round(math.cos(rad), 15)
        c = a * -cx + b * -cy + 0.0 + cx
        f = d * -cx + e * -cy + 0.0 + cy

        def fix(v):
            return math.floor(v * 65536.0 + 0.5)

        rows.append((fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 6)


def source_index(params, size, padding, device=None):
    """[B, H, W] int64: for each output pixel the flat index (row * W + col) of the source pixel
    in the un-padded image, or -1 where the output is zero (padding or rotation fill)."""
    h, w = size
    coef = _pillow_fixed_affine(params.angle, size).to(device)
    ys = torch.arange(h, device=device, dtype=torch.int64).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.int64).view(1, 1, w)
    a0, a1, a2, a3, a4, a5 = (coef[:, i].view(-1, 1, 1) for i in range(6))
    # Rotation: where output (x, y) reads from in the cropped, flipped image (arithmetic shift = floor).
    xr = (a0 * xs + a1 * ys + a2) >> 16
    yr = (a3 * xs + a4 * ys + a5) >> 16
    inside = (xr >= 0) & (xr < w) & (yr >= 0) & (yr < h)
    # Flip, then crop offset in the zero-padded image.
    flip = params.flip.to(device).view(-1, 1, 1)
    xf = torch.where(flip, w - 1 - xr, xr)
    col = xf + params.left.to(device).view(-1, 1, 1) - padding
    row = yr + params.top.to(device).view(-1, 1, 1) - padding
    inside &= (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return torch.where(inside, row * w + col, torch.full_like(col, -1))


def normalize(images_u8_nhwc, mean, std):
    """uint8 [B, H, W, C] -> float [B, C, H, W] (channels_last in memory) as ToTensor + Normalize."""
    x = images_u8_nhwc.permute(0, 3, 1, 2).float().div(255)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub(mean).div(std)


class DeviceImages:
    """A uint8 image set [N, H, W, C] on one device, with a zero pixel appended for fills."""

    def __init__(self, images, targets, device=None):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, H, W, C], got {images.dtype} {tuple(images.shape)}")
        n, h, w, c = images.shape
        self.shape = (n, h, w, c)
        self.pixels = torch.cat([images.reshape(n * h * w, c), images.new_zeros(1, c)]).to(device)
        self.targets = torch.as_tensor(targets, dtype=torch.int64).to(device)
        self.device = self.pixels.device

    def __len__(self):
        return self.shape[0]

    def augmented(self, index, params, padding):
        """uint8 [B, H, W, C]: images ``index`` (a device tensor) cropped, flipped and rotated."""
        n, h, w, c = self.shape
        src = source_index(params, (h, w), padding, self.device)
        flat = torch.where(src >= 0, index.view(-1, 1, 1) * (h * w) + src, torch.full_like(src, n * h * w))
        return self.pixels[flat]

    def plain(self, index):
        n, h, w, c = self.shape
        return self.pixels[:-1].view(n, h, w, c)[index]


class TensorTrainLoader:
    """One epoch of augmented, normalised training batches (x on the device, y on the device).

    ``order`` lists this rank's dataset indices in sampler order; ``params`` holds one parameter
    set per entry of ``order``. Iterating twice gives the same batches."""

    def __init__(self, images, order, params, batch_size, mean, std, padding, drop_last=False):
        self.images, self.params = images, params
        self.order = torch.as_tensor(order, dtype=torch.int64).to(images.device)
        self.batch_size, self.mean, self.std, self.padding = batch_size, mean, std, padding
        self.drop_last = drop_last

    def __len__(self):
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = self.order[sl]
            x = normalize(self.images.augmented(index, self.params[sl], self.padding), self.mean, self.std)
            yield x, self.images.targets[index]


class TensorEvalLoader:
    """Test-transform batches (ToTensor + Normalize) of ``indices`` of a device image set."""

    def __init__(self, images, indices, batch_size, mean, std):
        self.images = images
        self.indices = torch.as_tensor(indices, dtype=torch.int64).to(images.device)
        self.batch_size, self.mean, self.std = batch_size, mean, std

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            index = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield normalize(self.images.plain(index), self.mean, self.std), self.images.targets[index]
