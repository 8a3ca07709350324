"""Long-tailed data held in memory as uint8 image arrays (CIFAR, digits): one implementation of the
LT selection, transforms, test distributions and loaders; datasets only say how to read arrays.

Two input pipelines, chosen by ``data_loader.args.pipeline``:
- ``"pil"``: torchvision transforms on PIL images in DataLoader workers (the release's way);
- ``"tensor"``: the whole (small) set as one uint8 tensor on the training device, augmented and
  normalised batch-wise there (data_loader/tensor_augment.py); same pixels for the same
  parameters, same sampler order, no workers. Test-time aggregation's two views likewise
  (data_loader/tensor_two_view.py: same parameter distributions, float instead of uint8 rounding).
"""
import logging
from abc import ABC, abstractmethod

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from base.base_data_module import LTDataModule
from data_loader import tensor_augment as ta
from data_loader import transforms as tf
from data_loader.array_checks import check_normalisation, read_arrays
from utils.long_tail import img_num_per_cls, select_per_class
from data_loader.tensor_two_view import SeededTensorTwoViewLoader, TensorTwoViewLoader
from data_loader.test_distributions import generated_distributions
from data_loader.validation_split import describe, held_out_split, parse_validation
from utils.errors import UserError
from utils.seed import epoch_seed

PIPELINES = ("pil", "tensor")


class ArrayImageDataset(Dataset):
    """uint8 images (N, H, W, 3) and integer targets; PIL image -> torchvision transform."""

    def __init__(self, data, targets, transform=None):
        self.data = data
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


class ArrayLTDataModule(LTDataModule, ABC):
    """Subclasses implement ``load_arrays()`` -> (train_x, train_y, test_x, test_y), uint8 NHWC, and
    state what their data are: every class attribute of ``REQUIRED`` (checked when the module is
    made, one line naming the class and the attribute if one is not set):

    - ``num_classes``, ``image_size`` (pixels, square), ``train_img_max`` (images of the head class);
    - the normalisation: ``default_mean``, ``default_std`` (per channel, of images in [0, 1]);
    - the training augmentation: ``default_padding`` (of the random crop), ``default_flip``
      (horizontal), ``default_rotation`` (degrees, at most).

    The config's ``mean``, ``std``, ``padding``, ``flip`` and ``rotation`` override the defaults."""

    REQUIRED = ("num_classes", "image_size", "train_img_max", "default_mean", "default_std", "default_padding",
                "default_flip", "default_rotation")
    num_classes = image_size = train_img_max = None
    default_mean = default_std = None  # the data's own; CIFAR's: data_loader/transforms.py
    default_padding = default_flip = default_rotation = None
    default_validation_per_class = 100  # validation images per class from the left-over training split

    def __init__(self, data_dir, imb_factor=0.01, batch_size=128, num_workers=0, mean=None, std=None, padding=None,
                 flip=None, rotation=None, img_max=None, pipeline="pil", validation=None, **loader_kw):
        self._check_class_attributes()
        super().__init__(batch_size=batch_size, num_workers=num_workers, **loader_kw)
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(repr(p) for p in PIPELINES)}, got {pipeline!r}")
        self.pipeline = pipeline
        self._device_sets = {}
        if not (isinstance(imb_factor, (int, float)) and 0 < imb_factor <= 1):
            raise ValueError(f"imb_factor must be in (0, 1] (1 / imbalance ratio), got {imb_factor!r}")
        self.data_dir = data_dir
        self.imb_factor = float(imb_factor)
        mean = self.default_mean if mean is None else mean
        std = self.default_std if std is None else std
        check_normalisation(mean, std)
        self.mean, self.std = tuple(mean), tuple(std)
        padding = self.default_padding if padding is None else padding
        flip = self.default_flip if flip is None else flip
        rotation = self.default_rotation if rotation is None else rotation
        self.augment = dict(size=self.image_size, padding=padding, flip=flip, rotation=rotation)

        train_x, train_y, test_x, test_y = read_arrays(self, data_dir)
        # img_max: images of the head class; the published value unless a smoke test shrinks it.
        img_max = self.train_img_max if img_max is None else int(img_max)
        counts = img_num_per_cls(img_max, self.num_classes, self.imb_factor)
        try:
            keep = select_per_class(train_y, counts, seed=0)
        except ValueError as e:
            raise UserError(f"{type(self).__name__} in {data_dir}: too few training images for the long tail ({e})")
        self.train_set = ArrayImageDataset(train_x[keep], np.asarray(train_y)[keep],
                                           tf.small_image_train(mean=self.mean, std=self.std, **self.augment))
        self.test_images = test_x
        self.test_set = ArrayImageDataset(test_x, test_y, tf.small_image_test(self.mean, self.std))
        self._make_validation(validation, train_x, train_y, keep)

    def _make_validation(self, validation, train_x, train_y, keep):
        """The held-out split from the training-split images the long tail left out
        (data_loader/validation_split.py); ``validation``: null (default size), false, N, "all" or
        {"per_class", "seed"}."""
        option = self.validation_option
        per_class, seed, explicit = parse_validation(validation, option, self.default_validation_per_class)
        if per_class is None:
            return
        idx, counts, in_sample = held_out_split(train_y, keep, self.num_classes, per_class, seed,
                                                option=f"{option}.per_class", explicit=explicit)
        self.validation_indices = idx  # into the training split as load_arrays() returned it
        self.split_facts = {"targets": np.asarray(train_y), "long_tail": np.asarray(keep), "seed": seed}
        self.validation_set = ArrayImageDataset(train_x[idx], np.asarray(train_y)[idx], self.test_set.transform)
        self.validation_info = {"source": "training-split images the long tail left out", "per_class": per_class,
                                "seed": seed, "counts": counts, "in_sample_classes": in_sample, "option": option}
        logging.getLogger("train").info("%s", describe(self.validation_info))

    @classmethod
    def _check_class_attributes(cls):
        for name in cls.REQUIRED:
            if getattr(cls, name, None) is None:
                raise UserError(f"data module {cls.__name__}: class attribute {name} is not set; an array data "
                                f"module states {', '.join(cls.REQUIRED)} (data_loader/array_lt.py)")

    @abstractmethod
    def load_arrays(self):
        """(train_x, train_y, test_x, test_y): uint8 N x H x W x 3 images and integer labels."""

    # -- device-resident pipeline ------------------------------------------------------------------
    def device_images(self, split, device=None):
        """The ``"train"``, ``"test"`` or ``"validation"`` images as one uint8 tensor on ``device`` (made once)."""
        device = torch.device(device if device is not None else "cpu")
        key = (split, str(device))
        if key not in self._device_sets:
            ds = {"train": self.train_set, "test": self.test_set, "validation": self.validation_set}[split]
            self._device_sets[key] = ta.DeviceImages(ds.data, ds.targets, device)
        return self._device_sets[key]

    def train_loader(self, epoch, seed, rank=0, world_size=1, device=None):
        if self.pipeline == "pil":
            return super().train_loader(epoch, seed, rank, world_size, device)
        order = self.epoch_order(epoch, seed, rank, world_size)
        # One parameter draw per position of the epoch's global order, from (seed, epoch) alone:
        # ranks agree, the number of processes does not change the augmentation, and a resumed
        # run repeats the epoch exactly. Rank r holds positions r, r + world_size, ...; positions
        # past the end (DistributedSampler's padding repeats the first images) reuse their draws.
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        a = self.augment
        n = len(self.train_set)
        params = ta.sample_params(n, generator, a["padding"], a["flip"], a["rotation"])
        positions = torch.arange(rank, len(order) * world_size, world_size) % n
        return ta.TensorTrainLoader(self.device_images("train", device), order, params[positions],
                                    self.batch_size // world_size, self.mean, self.std, a["padding"],
                                    drop_last=self.drop_last)

    def test_loader(self, indices=None, batch_size=None, dataset=None, shuffle=False, generator=None, device=None):
        if self.pipeline == "pil" or dataset is not None:
            return super().test_loader(indices, batch_size, dataset, shuffle, generator, device)
        indices = torch.arange(len(self.test_set)) if indices is None else torch.as_tensor(np.asarray(indices),
                                                                                            dtype=torch.int64)
        if shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        return ta.TensorEvalLoader(self.device_images("test", device), indices, batch_size or self.batch_size,
                                   self.mean, self.std)

    def validation_subset(self, per_class):
        """Positions in ``validation_set`` of the split this module would make with a smaller
        ``per_class`` (the splits are nested: each class takes the first images of one shuffle)."""
        facts = self.split_facts
        idx, _, _ = held_out_split(facts["targets"], facts["long_tail"], self.num_classes, per_class, facts["seed"],
                                   explicit=False)
        position = {int(v): p for p, v in enumerate(self.validation_indices)}
        missing = [int(v) for v in idx if int(v) not in position]
        if missing:
            raise ValueError(f"per_class {per_class} is not a subset of this module's split")
        return np.array([position[int(v)] for v in idx], dtype=np.int64)

    def validation_loader(self, indices=None, batch_size=None, device=None):
        self.require_validation("the validation loader")
        if self.pipeline == "pil":
            return super().validation_loader(indices, batch_size, device)
        indices = torch.arange(len(self.validation_set)) if indices is None else torch.as_tensor(
            np.asarray(indices), dtype=torch.int64)
        return ta.TensorEvalLoader(self.device_images("validation", device), indices, batch_size or self.batch_size,
                                   self.mean, self.std)

    def test_distributions(self):
        return generated_distributions(self.test_set.targets, self.num_classes)

    def test_view_dataset(self, transform):
        return ArrayImageDataset(self.test_images, self.test_set.targets, transform)

    def reference_dataset(self):
        return ArrayImageDataset(self.train_set.data, self.train_set.targets, self.test_set.transform)

    def reference_loader(self, batch_size=None, device=None):
        if self.pipeline == "pil":
            return super().reference_loader(batch_size, device)
        images = self.device_images("train", device)
        return ta.TensorEvalLoader(images, torch.arange(len(self.train_set)), batch_size or self.batch_size,
                                   self.mean, self.std)

    def two_view_transform(self, blur_p=0.2):
        """The strong augmentation of test-time aggregation (docs/methods.md#test-time-aggregation)."""
        return tf.small_image_two_view(self.image_size, self.mean, self.std, blur_p=blur_p, flip=self.augment["flip"])

    def two_view_loader(self, indices, batch_size, generator, num_workers=0, device=None, blur_p=0.2):
        if self.pipeline == "pil":
            return super().two_view_loader(indices, batch_size, generator, num_workers, device, blur_p=blur_p)
        padding, kernel = tf.small_image_two_view_sizes(self.image_size)
        return TensorTwoViewLoader(self.device_images("test", device), indices, batch_size, generator, self.mean,
                                   self.std, padding, kernel, flip=self.augment["flip"], blur_p=blur_p)

    def seeded_two_view_loader(self, indices, seed, batch_size, num_workers=0, device=None, blur_p=0.2):
        if self.pipeline == "pil":
            return super().seeded_two_view_loader(indices, seed, batch_size, num_workers, device, blur_p=blur_p)
        padding, kernel = tf.small_image_two_view_sizes(self.image_size)
        return SeededTensorTwoViewLoader(self.device_images("test", device), indices, batch_size, seed, self.mean,
                                         self.std, padding, kernel, flip=self.augment["flip"], blur_p=blur_p)
