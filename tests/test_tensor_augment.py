"""The device-resident input pipeline: the same pixels as the PIL pipeline for the same parameters,
the same parameter distributions, the same sampler order, and exact repeats per (seed, epoch)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from data_loader import transforms as tf
from data_loader.cifar_lt import CIFAR100LTDataLoader
from data_loader.tensor_augment import DeviceImages, TensorTrainLoader, geometry, pixel_grid, sample_params
from tests.helpers import write_cifar100
from utils.errors import UserError
from utils.parse_config import ConfigParser

import data_loader

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def augment(images, params, padding):
    size = images.shape[1:3]
    return DeviceImages(images, np.zeros(len(images))).augmented(
        torch.arange(len(images)), geometry(params, size, padding), pixel_grid(size)).numpy()


def random_images(n, size, seed=0):
    # Values from 1: a zero in the output can then only come from padding or rotation fill.
    return np.random.RandomState(seed).randint(1, 256, size=(n, size, size, 3)).astype(np.uint8)


def pil_augment(image, top, left, flip, angle, padding):
    """torchvision's RandomCrop(padding) -> RandomHorizontalFlip -> RandomRotation with fixed draws."""
    size = image.shape[0]
    img = F.crop(F.pad(Image.fromarray(image), padding, fill=0), top, left, size, size)
    if flip:
        img = F.hflip(img)
    return np.asarray(F.rotate(img, angle, InterpolationMode.NEAREST, fill=0))


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=6, test_per_class=2)


def module(cifar_dir, **kw):
    args = dict(imb_factor=0.2, img_max=6, batch_size=16, num_workers=0)
    args.update(kw)
    return CIFAR100LTDataLoader(str(cifar_dir), **args)


@pytest.mark.parametrize("size,padding,rotation", [(32, 4, 15), (8, 1, 10)])
def test_same_pixels_as_pil_for_the_same_parameters(size, padding, rotation):
    n = 300
    images = random_images(n, size)
    params = sample_params(n, torch.Generator().manual_seed(1), padding, True, rotation)
    out = augment(images, params, padding)
    for k in range(n):
        ref = pil_augment(images[k], int(params.top[k]), int(params.left[k]), bool(params.flip[k]),
                          float(params.angle[k]), padding)
        np.testing.assert_array_equal(out[k], ref, err_msg=f"image {k}, angle {float(params.angle[k])}")


@pytest.mark.parametrize("device", DEVICES)
def test_batch_shape_dtype_device(device):
    images = DeviceImages(random_images(40, 32), np.arange(40) % 10, device)
    params = sample_params(40, torch.Generator().manual_seed(0))
    loader = TensorTrainLoader(images, torch.arange(40), params, 16, tf.CIFAR_MEAN, tf.CIFAR_STD, 4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [tuple(x.shape) for x, _ in batches] == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == device and y.device.type == device


def test_parameter_distributions():
    n = 20000
    p = sample_params(n, torch.Generator().manual_seed(0), padding=4, flip=True, rotation=15)
    # Crop offsets: every position of a 32 crop in the 40x40 padded image, uniformly.
    for offsets in (p.top, p.left):
        counts = torch.bincount(offsets, minlength=9)
        assert offsets.min() >= 0 and offsets.max() <= 8 and len(counts) == 9
        assert (counts - n / 9).abs().max() < 0.1 * n / 9
    assert abs(p.flip.double().mean().item() - 0.5) < 0.02
    assert p.angle.abs().max() <= 15 and p.angle.min() < -14.5 and p.angle.max() > 14.5
    assert abs(p.angle.mean().item()) < 0.3
    off = sample_params(100, torch.Generator().manual_seed(0), padding=0, flip=False, rotation=0)
    assert off.top.eq(0).all() and off.left.eq(0).all() and not off.flip.any() and off.angle.eq(0).all()


def test_crop_is_a_window_of_the_padded_image_and_flip_mirrors():
    n, size, pad = 50, 32, 4
    images = random_images(n, size)
    gen = torch.Generator().manual_seed(3)
    params = sample_params(n, gen, pad, flip=True, rotation=0)
    out = augment(images, params, pad)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for k in range(n):
        top, left = int(params.top[k]), int(params.left[k])
        window = padded[k, top:top + size, left:left + size]
        np.testing.assert_array_equal(out[k], window[:, ::-1] if params.flip[k] else window)


def test_rotation_fills_corners_with_zero():
    images = random_images(1, 32)
    params = sample_params(1, torch.Generator(), padding=0, flip=False, rotation=15)
    params.angle[:] = 15.0
    out = augment(images, params, 0)[0]
    assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all() and (out[16, 16] != 0).all()


def test_without_augmentation_equals_pil_test_transform(cifar_dir):
    plain = module(cifar_dir, pipeline="tensor", padding=0, flip=False, rotation=0, shuffle=False)
    x, y = next(iter(plain.train_loader(0, seed=1)))
    ref = torch.stack([tf.small_image_test(plain.mean, plain.std)(Image.fromarray(a))
                       for a in plain.train_set.data[:len(y)]])
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)
    assert torch.equal(y, torch.as_tensor(plain.train_set.targets[:len(y)]))
    # Evaluation batches of the tensor pipeline equal the PIL test loader's.
    pil = module(cifar_dir, pipeline="pil")
    for (xt, yt), (xp, yp) in zip(plain.test_loader(indices=range(3, 40)), pil.test_loader(indices=range(3, 40))):
        torch.testing.assert_close(xt, xp, rtol=0, atol=1e-6)
        assert torch.equal(yt, yp)


@pytest.mark.parametrize("world_size", [1, 3])
def test_same_order_as_the_distributed_sampler(cifar_dir, world_size):
    tensor, pil = module(cifar_dir, pipeline="tensor", batch_size=6), module(cifar_dir, pipeline="pil", batch_size=6)
    seen = []
    for rank in range(world_size):
        ty = torch.cat([y for _, y in tensor.train_loader(2, 5, rank, world_size)])
        py = torch.cat([y for _, y in pil.train_loader(2, 5, rank, world_size)])
        assert torch.equal(ty, py)
        seen.append(torch.as_tensor(tensor.epoch_order(2, 5, rank, world_size)))
    # Every image in the epoch, each rank the same number of images.
    assert set(torch.cat(seen).tolist()) == set(range(len(tensor.train_set)))
    assert len({len(s) for s in seen}) == 1


def test_epoch_is_repeatable_and_epochs_differ(cifar_dir):
    data = module(cifar_dir, pipeline="tensor")
    a = [x for x, _ in data.train_loader(1, seed=4)]
    b = [x for x, _ in module(cifar_dir, pipeline="tensor").train_loader(1, seed=4)]
    c = [x for x, _ in data.train_loader(2, seed=4)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_ranks_share_one_draw_of_parameters(cifar_dir):
    """Rank r's k-th image is augmented as position r + k*world of the global order, so the
    augmentation of an epoch does not depend on the number of processes."""
    data = module(cifar_dir, pipeline="tensor", batch_size=4, shuffle=False)
    whole = torch.cat([x for x, _ in data.train_loader(0, seed=2)])
    n = len(data.train_set)
    for rank in range(2):
        part = torch.cat([x for x, _ in data.train_loader(0, seed=2, rank=rank, world_size=2)])
        m = min(len(part), len(range(rank, n, 2)))
        assert torch.equal(part[:m], whole[rank::2][:m])


def test_bad_pipeline_is_a_user_error(cifar_dir):
    cfg = ConfigParser({"data_loader": {"type": "CIFAR100LTDataLoader",
                                        "args": {"data_dir": str(cifar_dir), "pipeline": "gpu"}}}, source="c.json")
    with pytest.raises(UserError, match="pipeline.*'pil', 'tensor'"):
        cfg.init_obj("data_loader", data_loader)
