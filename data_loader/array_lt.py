"""Long-tailed data held in memory as uint8 image arrays (CIFAR, digits): one implementation of the
LT selection, transforms, test distributions and loaders; datasets only say how to read arrays."""
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from base.base_data_module import LTDataModule
from data_loader import transforms as tf
from data_loader.long_tail import img_num_per_cls, select_per_class
from data_loader.test_distributions import generated_distributions
from utils.errors import UserError


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


class ArrayLTDataModule(LTDataModule):
    """Subclasses implement ``load_arrays()`` -> (train_x, train_y, test_x, test_y), uint8 NHWC."""

    num_classes = None
    image_size = 32
    train_img_max = None  # per-class images at the head of the long tail
    default_padding, default_flip, default_rotation = 4, True, 15

    def __init__(self, data_dir, imb_factor=0.01, batch_size=128, num_workers=0, mean=tf.CIFAR_MEAN,
                 std=tf.CIFAR_STD, padding=None, flip=None, rotation=None, img_max=None, **loader_kw):
        super().__init__(batch_size=batch_size, num_workers=num_workers, **loader_kw)
        if not (isinstance(imb_factor, (int, float)) and 0 < imb_factor <= 1):
            raise ValueError(f"imb_factor must be in (0, 1] (1 / imbalance ratio), got {imb_factor!r}")
        self.data_dir = data_dir
        self.imb_factor = float(imb_factor)
        self.mean, self.std = tuple(mean), tuple(std)
        padding = self.default_padding if padding is None else padding
        flip = self.default_flip if flip is None else flip
        rotation = self.default_rotation if rotation is None else rotation
        self.augment = dict(size=self.image_size, padding=padding, flip=flip, rotation=rotation)

        train_x, train_y, test_x, test_y = self.load_arrays()
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

    def load_arrays(self):
        raise NotImplementedError

    def test_distributions(self):
        return generated_distributions(self.test_set.targets, self.num_classes)

    def test_view_dataset(self, transform):
        return ArrayImageDataset(self.test_images, self.test_set.targets, transform)

    def two_view_transform(self, blur_p=0.2):
        """The strong augmentation of test-time aggregation (SPEC 6)."""
        return tf.small_image_two_view(self.image_size, self.mean, self.std, blur_p=blur_p, flip=self.augment["flip"])
