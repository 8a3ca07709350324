"""The strong two-view augmentation of small images (docs/methods.md#test-time-aggregation), on whole batches of a uint8
tensor on any device (the ``"tensor"`` pipeline of test-time aggregation).

The PIL pipeline (``transforms.small_image_two_view``) does, per image: RandomCrop(size, padding),
ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.8 (brightness, contrast, saturation and hue in
a random order), RandomGrayscale(0.2), GaussianBlur(k, sigma 0.1..2) with probability ``blur_p``,
RandomHorizontalFlip, ToTensor, Normalize. Here every image draws the same parameters from the
same distributions (``sample_strong_params``, on the CPU from one generator), and the operations
are torchvision's tensor formulas applied with per-image factors. Pillow works in uint8 and
rounds after each operation, these work in float: pixels differ by rounding, not by distribution.
Crop and flip are one index map (``tensor_augment``); the flip is applied with the crop because it
commutes with the per-pixel colour operations and with the symmetric, reflect-padded blur.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data_loader import tensor_augment as ta
from data_loader.transforms import check_probability

JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue of ColorJitter
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass
class StrongParams:
    """Per-image parameters (CPU tensors, length B): ``crop`` (offsets and flip, no rotation),
    ``jitter`` applied, jitter ``factors`` [B, 4] (brightness, contrast, saturation, hue), the
    ``order`` [B, 4] of the four adjustments, ``gray``, ``blur`` and the blur ``sigma``."""
    crop: ta.AugmentParams
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor

    def __len__(self):
        return len(self.jitter)

    def __getitem__(self, index):
        return StrongParams(self.crop[index], *(t[index] for t in (self.jitter, self.factors, self.order, self.gray,
                                                                    self.blur, self.sigma)))


def sample_strong_params(n, generator, padding=4, flip=True, blur_p=0.2, jitter=JITTER, jitter_p=0.8, gray_p=0.2,
                         sigma=(0.1, 2.0)):
    """Draw ``n`` images' parameters from ``generator``, from torchvision's distributions: factors
    uniform on [1 - j, 1 + j] (hue on [-j, j]), a uniformly random order of the four adjustments."""
    crop = ta.sample_params(n, generator, padding, flip, rotation=0)
    applied = torch.rand(n, generator=generator) < jitter_p
    lo = torch.tensor([1 - jitter[0], 1 - jitter[1], 1 - jitter[2], -jitter[3]])
    hi = torch.tensor([1 + jitter[0], 1 + jitter[1], 1 + jitter[2], jitter[3]])
    factors = lo + (hi - lo) * torch.rand(n, 4, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    gray = torch.rand(n, generator=generator) < gray_p
    blur = torch.rand(n, generator=generator) < blur_p
    sigmas = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, generator=generator)
    return StrongParams(crop, applied, factors, order, gray, blur, sigmas)


# -- torchvision's tensor colour formulas with one factor per image ([B, 3, H, W] floats in [0, 1]) --
def _per_image(factor, x):
    return factor.to(x.device, x.dtype).view(-1, 1, 1, 1)


def grayscale(x):
    """[B, 1, H, W] luma (ITU-R 601-2, torchvision's weights)."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x, other, factor):
    f = _per_image(factor, x)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x, factor):
    return _blend(x, torch.zeros((), device=x.device, dtype=x.dtype), factor)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def adjust_hue(x, shift):
    """Rotate the hue by ``shift`` (fraction of a turn) in HSV, as torchvision's adjust_hue."""
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    r, g, b = x.unbind(1)
    same = maxc == minc
    span = maxc - minc
    s = span / torch.where(same, torch.ones_like(maxc), maxc)
    div = torch.where(same, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + 1.0).fmod(1.0)
    h = (h + _per_image(shift, x).view(-1, 1, 1)).remainder(1.0)
    # HSV -> RGB
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    v = maxc
    p = ((1 - s) * v).clamp(0, 1)
    q = ((1 - s * f) * v).clamp(0, 1)
    t = ((1 - s + s * f) * v).clamp(0, 1)
    vpqt = torch.stack([v, p, q, t], dim=1)  # [B, 4, H, W]
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    return vpqt.gather(1, select[:, i].permute(1, 0, 2, 3))


ADJUST = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast, SATURATION: adjust_saturation, HUE: adjust_hue}


def gaussian_blur(x, sigma, kernel_size):
    """Per-image Gaussian blur (torchvision's kernel and reflect padding), one sigma per image."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-0.5 * (pos.view(1, -1) / _per_image(sigma, x).view(-1, 1)) ** 2)
    k1 = k1 / k1.sum(dim=1, keepdim=True)  # [B, k]
    k2 = (k1.unsqueeze(2) * k1.unsqueeze(1)).repeat_interleave(c, dim=0).unsqueeze(1)  # [B*C, 1, k, k]
    pad = kernel_size // 2
    padded = F.pad(x.reshape(1, b * c, h, w), [pad] * 4, mode="reflect")
    return F.conv2d(padded, k2, groups=b * c).view(b, c, h, w)


def _apply(x, where, fn):
    """x[where] = fn(x[where], where) for the images ``where`` (host indices) of the batch."""
    if len(where):
        dev = where.to(x.device)
        x[dev] = fn(x[dev], where)
    return x


def strong_augment(images_u8, params, kernel_size, mean, std):
    """uint8 [B, H, W, C] crops (already cropped and flipped) -> normalised float [B, C, H, W]
    (channels_last in memory) after jitter, grayscale and blur with ``params`` (host tensors)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255)
    for step in range(4):
        for op, fn in ADJUST.items():
            where = torch.nonzero(params.jitter & (params.order[:, step] == op)).flatten()
            x = _apply(x, where, lambda v, w, fn=fn, op=op: fn(v, params.factors[w, op]))
    x = _apply(x, torch.nonzero(params.gray).flatten(), lambda v, w: grayscale(v).expand_as(v))
    x = _apply(x, torch.nonzero(params.blur).flatten(), lambda v, w: gaussian_blur(v, params.sigma[w], kernel_size))
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


class TensorTwoViewLoader:
    """(view1, view2, index) batches of test images ``indices`` of a device image set, like a
    shuffling DataLoader over ``TwoViews``: every pass reshuffles and draws new parameters for both
    views from ``generator``. ``index`` (the test-set indices) stays on the CPU, views are on the
    images' device."""

    def __init__(self, images, indices, batch_size, generator, mean, std, padding, kernel_size, flip=True,
                 blur_p=0.2):
        self.images, self.batch_size, self.generator = images, batch_size, generator
        self.indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        self.mean, self.std, self.padding, self.kernel_size = mean, std, padding, kernel_size
        self.flip, self.blur_p = flip, check_probability("blur_p", blur_p)
        self.grid = ta.pixel_grid(images.shape[1:3], images.device)

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def _params(self, n):
        """Both views' parameters for ``n`` images from the generator, and their index maps on the device."""
        views = [sample_strong_params(n, self.generator, self.padding, self.flip, self.blur_p) for _ in range(2)]
        return views, [ta.geometry(p.crop, self.images.shape[1:3], self.padding, self.images.device) for p in views]

    def _views(self, params, geoms, rows, index):
        """The two views of images ``index`` from the parameter rows ``rows``."""
        on_device = index.to(self.images.device)
        return tuple(strong_augment(self.images.augmented(on_device, g[rows], self.grid), p[rows], self.kernel_size,
                                    self.mean, self.std) for p, g in zip(params, geoms))

    def __iter__(self):
        n = len(self.indices)
        order = self.indices[torch.randperm(n, generator=self.generator)]
        params, geoms = self._params(n)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield *self._views(params, geoms, sl, order[sl]), order[sl]


class SeededTensorTwoViewLoader(TensorTwoViewLoader):
    """(view1, view2, index) batches of test images ``indices`` in that order, image i's views drawn
    from the i-th of one draw of parameters for every image of the set (from a generator seeded with
    ``seed``): they do not depend on which other images are drawn. Every pass gives the same views."""

    def __init__(self, images, indices, batch_size, seed, mean, std, padding, kernel_size, flip=True, blur_p=0.2):
        super().__init__(images, indices, batch_size, None, mean, std, padding, kernel_size, flip, blur_p)
        self.seed = int(seed)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed)
        params, geoms = self._params(len(self.images))
        for b in range(len(self)):
            index = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield *self._views(params, geoms, index, index), index
