"""Test-time aggregation's two views on device tensors: torchvision's formulas per image, the PIL
pipeline's parameter distributions, the test transform when everything is off, and the loader."""
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from data_loader import tensor_two_view as tv
from data_loader import transforms as tf
from data_loader.cifar_lt import CIFAR100LTDataLoader
from data_loader.tensor_augment import DeviceImages, geometry, pixel_grid
from tests.helpers import write_cifar100

MEAN, STD = tf.CIFAR_MEAN, tf.CIFAR_STD


def random_float_images(n, size=16, seed=0):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0] = x[0, :1]  # one grey image: hue and saturation must leave it alone
    return x


@pytest.mark.parametrize("ours,theirs,lo,hi", [
    (tv.adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
    (tv.adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
    (tv.adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
    (tv.adjust_hue, TF.adjust_hue, -0.1, 0.1),
])
def test_colour_adjustments_equal_torchvision_per_image(ours, theirs, lo, hi):
    x = random_float_images(12)
    factors = torch.linspace(lo, hi, 12)
    out = ours(x.clone(), factors)
    ref = torch.stack([theirs(x[i], float(factors[i])) for i in range(12)])
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def test_blur_and_grayscale_equal_torchvision_per_image():
    x = random_float_images(8)
    sigma = torch.linspace(0.1, 2.0, 8)
    ref = torch.stack([TF.gaussian_blur(x[i], [3, 3], [float(sigma[i])] * 2) for i in range(8)])
    torch.testing.assert_close(tv.gaussian_blur(x, sigma, 3), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(tv.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def reference_view(image_u8, p, k, padding, kernel):
    """torchvision, image by image, in the PIL pipeline's order: crop, jitter (in ``p.order``),
    grey, blur, flip, normalise (float tensors instead of PIL images)."""
    size = image_u8.shape[0]
    x = torch.from_numpy(image_u8).permute(2, 0, 1).float() / 255
    x = TF.crop(TF.pad(x, [padding], fill=0), int(p.crop.top[k]), int(p.crop.left[k]), size, size)
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    if p.jitter[k]:
        for op in p.order[k].tolist():
            x = adjust[op](x, float(p.factors[k, op]))
    if p.gray[k]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur[k]:
        x = TF.gaussian_blur(x, [kernel, kernel], [float(p.sigma[k])] * 2)
    if p.crop.flip[k]:
        x = TF.horizontal_flip(x)
    return TF.normalize(x, list(MEAN), list(STD))


def test_batch_equals_torchvision_image_by_image_in_the_pil_order():
    n, size = 64, 32
    padding, kernel = tf.small_image_two_view_sizes(size)
    images = np.random.RandomState(0).randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)
    # Every image jittered, half grey, half blurred: all paths and all orders of the adjustments.
    p = tv.sample_strong_params(n, torch.Generator().manual_seed(0), padding, True, blur_p=0.5, jitter_p=1.0,
                                gray_p=0.5)
    crops = DeviceImages(images, np.zeros(n)).augmented(torch.arange(n), geometry(p.crop, (size, size), padding),
                                                        pixel_grid((size, size)))
    out = tv.strong_augment(crops, p, kernel, MEAN, STD)
    assert out.shape == (n, 3, size, size) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([reference_view(images[k], p, k, padding, kernel) for k in range(n)])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_all_off_equals_the_pil_test_transform():
    n, size = 20, 32
    images = np.random.RandomState(1).randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)
    p = tv.sample_strong_params(n, torch.Generator().manual_seed(0), padding=0, flip=False, blur_p=0.0,
                                jitter_p=0.0, gray_p=0.0)
    crops = DeviceImages(images, np.zeros(n)).augmented(torch.arange(n), geometry(p.crop, (size, size), 0),
                                                        pixel_grid((size, size)))
    out = tv.strong_augment(crops, p, 3, MEAN, STD)
    test = tf.small_image_test(MEAN, STD)
    from PIL import Image
    ref = torch.stack([test(Image.fromarray(images[k])) for k in range(n)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_parameters_follow_the_pil_pipelines_distributions():
    n = 40000
    p = tv.sample_strong_params(n, torch.Generator().manual_seed(3), padding=4, flip=True, blur_p=0.2)
    assert abs(p.jitter.float().mean() - 0.8) < 0.01
    assert abs(p.gray.float().mean() - 0.2) < 0.01
    assert abs(p.blur.float().mean() - 0.2) < 0.01
    assert abs(p.crop.flip.float().mean() - 0.5) < 0.01
    assert set(p.crop.top.tolist()) == set(range(9)) and set(p.crop.left.tolist()) == set(range(9))
    assert (p.crop.angle == 0).all()
    lo, hi = torch.tensor([0.6, 0.6, 0.6, -0.1]), torch.tensor([1.4, 1.4, 1.4, 0.1])
    assert ((p.factors >= lo) & (p.factors <= hi)).all()
    assert (p.factors.mean(0) - (lo + hi) / 2).abs().max() < 0.01
    assert ((p.sigma >= 0.1) & (p.sigma <= 2.0)).all() and abs(p.sigma.mean() - 1.05) < 0.02
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()  # each row a permutation
    first = torch.bincount(p.order[:, 0], minlength=4).float() / n
    assert (first - 0.25).abs().max() < 0.01
    assert len({tuple(r) for r in p.order[:2000].tolist()}) == 24  # all 24 orders occur


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=6, test_per_class=2)


def test_loader_reshuffles_each_pass_and_repeats_for_a_seed(cifar_dir):
    data = CIFAR100LTDataLoader(str(cifar_dir), imb_factor=0.2, img_max=6, batch_size=16, pipeline="tensor")
    indices = np.arange(3, 150, 2)
    loader = data.two_view_loader(indices, 32, torch.Generator().manual_seed(5), device="cpu", blur_p=0.2)
    assert len(loader) == 3
    first = list(loader)
    x1, x2, index = first[0]
    assert x1.shape == x2.shape == (32, 3, 32, 32) and x1.dtype == torch.float32 and x1.device.type == "cpu"
    assert index.dtype == torch.int64 and index.device.type == "cpu"
    assert not torch.equal(x1, x2)  # two independent views
    seen = torch.cat([b[2] for b in first])
    assert sorted(seen.tolist()) == indices.tolist()
    second = torch.cat([b[2] for b in loader])
    assert not torch.equal(seen, second)  # a new order in the next pass
    again = list(data.two_view_loader(indices, 32, torch.Generator().manual_seed(5), device="cpu", blur_p=0.2))
    for a, b in zip(first, again):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    # The PIL pipeline's loader gives the same kind of batches.
    pil = CIFAR100LTDataLoader(str(cifar_dir), imb_factor=0.2, img_max=6, batch_size=16, pipeline="pil")
    y1, y2, pil_index = next(iter(pil.two_view_loader(indices, 32, torch.Generator().manual_seed(5), blur_p=0.2)))
    assert y1.shape == x1.shape and y1.dtype == x1.dtype and pil_index.dtype == torch.int64
