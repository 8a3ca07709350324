"""docs/methods.md#training-sets's small-image training augmentation on whole batches of a uint8 tensor, on any device.

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
        cos, sin = round(math.cos(rad), 15), round(math.sin(rad), 15)
        a, b, d, e = cos, sin, -sin, cos
        c = a * -cx + b * -cy + 0.0 + cx
        f = d * -cx + e * -cy + 0.0 + cy

        def fix(v):
            return math.floor(v * 65536.0 + 0.5)

        rows.append((fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 6)


@dataclass
class Geometry:
    """Per-image index-map terms on the device, made once per epoch so that batches need no
    host-to-device copy (a blocking copy would stall a GPU queue): the rotation as a [3, 2]
    matrix over (x, y, 1), the valid range [lo, hi) of rotated (x, y), and the flip/crop map
    (x, y) -> sign * x + W * y + offset into the un-padded image."""
    rotation: torch.Tensor  # [B, 3, 2] float64
    lo: torch.Tensor  # [B, 1, 2]
    hi: torch.Tensor  # [B, 1, 2]
    mult: torch.Tensor  # [B, 2, 1]
    offset: torch.Tensor  # [B, 1] int64

    def __getitem__(self, index):
        return Geometry(*(t[index] for t in (self.rotation, self.lo, self.hi, self.mult, self.offset)))


def geometry(params, size, padding, device=None):
    h, w = size
    # Pillow's fixed-point map as exact float64 integers; floor of a division by 2**16 is its >> 16.
    rotation = _pillow_fixed_affine(params.angle, size).view(-1, 2, 3).transpose(1, 2).double()
    # Flip then crop are affine on the rotated integer (x, y): col = sign*x + shift_x, row = y + shift_y,
    # (col, row) in the un-padded image. Valid x, y: inside the crop and inside the image.
    sign = 1 - 2 * params.flip.long()
    shift_x = torch.where(params.flip, w - 1, 0) + params.left - padding
    shift_y = params.top - padding
    lo_x = torch.where(params.flip, shift_x - w + 1, -shift_x).clamp(min=0)
    hi_x = torch.where(params.flip, shift_x + 1, w - shift_x).clamp(max=w)
    lo = torch.stack([lo_x, (-shift_y).clamp(min=0)], 1).view(-1, 1, 2).double()
    hi = torch.stack([hi_x, (h - shift_y).clamp(max=h)], 1).view(-1, 1, 2).double()
    mult = torch.stack([sign, torch.full_like(sign, w)], 1).view(-1, 2, 1).double()
    offset = (shift_x + shift_y * w).view(-1, 1)
    return Geometry(*(t.to(device) for t in (rotation, lo, hi, mult, offset)))


def pixel_grid(size, device=None):
    """[H*W, 3] float64 rows (x, y, 1) in row-major pixel order."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, dtype=torch.float64)], 1).to(device)


def map_pixels(geom, grid, base=None, fill=-1):
    """[B, H*W] int64 source index per output pixel (plus ``base[b]``), ``fill`` where zero."""
    rot = torch.floor(torch.matmul(grid, geom.rotation) / 65536.0)  # [B, H*W, 2]
    inside = ((rot >= geom.lo) & (rot < geom.hi)).all(-1)
    flat = torch.bmm(rot, geom.mult).squeeze(-1).long() + geom.offset
    if base is not None:
        flat = flat + base.view(-1, 1)
    return torch.where(inside, flat, fill)


def source_index(params, size, padding, device=None):
    """[B, H, W] int64: for each output pixel the flat index (row * W + col) of its source pixel
    in the un-padded image, or -1 where the output is zero (padding or rotation fill)."""
    return map_pixels(geometry(params, size, padding, device), pixel_grid(size, device)).view(-1, *size)


def normalize_table(mean, std, device=None):
    """[C, 256] float: ToTensor then Normalize of every uint8 value, computed as torchvision does."""
    values = torch.arange(256, dtype=torch.float32).div(255)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1)
    return values.view(1, -1).sub(mean).div(std).to(device)


def normalize(images_u8_nhwc, table):
    """uint8 [B, H, W, C] -> float [B, C, H, W] (channels_last in memory), one table lookup."""
    c = images_u8_nhwc.shape[-1]
    codes = images_u8_nhwc.long() + torch.arange(0, 256 * c, 256, device=images_u8_nhwc.device)
    return table.view(-1)[codes].permute(0, 3, 1, 2)


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

    def augmented(self, index, geom, grid):
        """uint8 [B, H, W, C]: images ``index`` cropped, flipped and rotated by ``geom``, all on the
        device (``geom = geometry(params, ...)``, ``grid = pixel_grid(...)``)."""
        n, h, w, c = self.shape
        flat = map_pixels(geom, grid, base=index * (h * w), fill=n * h * w)
        return self.pixels[flat].view(-1, h, w, c)

    def plain(self, index):
        n, h, w, c = self.shape
        return self.pixels[:-1].view(n, h, w, c)[index]


class TensorTrainLoader:
    """One epoch of augmented, normalised training batches (x and y on the images' device).

    ``order`` lists this rank's dataset indices in sampler order; ``params`` holds one parameter
    set per entry of ``order``. Everything per-epoch moves to the device here, once; batches are
    device ops only (no host synchronisation). Iterating twice gives the same batches."""

    def __init__(self, images, order, params, batch_size, mean, std, padding, drop_last=False):
        device = images.device
        self.images, self.batch_size, self.drop_last = images, batch_size, drop_last
        self.order = torch.as_tensor(order, dtype=torch.int64).to(device)
        size = images.shape[1:3]
        self.geom = geometry(params, size, padding, device)
        self.grid = pixel_grid(size, device)
        self.table = normalize_table(mean, std, device)

    def __len__(self):
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = self.order[sl]
            x = normalize(self.images.augmented(index, self.geom[sl], self.grid), self.table)
            yield x, self.images.targets[index]


class TensorEvalLoader:
    """Test-transform batches (ToTensor + Normalize) of ``indices`` of a device image set."""

    def __init__(self, images, indices, batch_size, mean, std):
        self.images = images
        self.indices = torch.as_tensor(indices, dtype=torch.int64).to(images.device)
        self.batch_size = batch_size
        self.table = normalize_table(mean, std, images.device)

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            index = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield normalize(self.images.plain(index), self.table), self.images.targets[index]
