"""Digits-LT: a long-tailed split of the 8x8 handwritten digits that ship inside scikit-learn.

It needs no download, so the quick start runs offline. 50 images per class form
the (balanced) test set; the rest is the training pool, from which a long tail is drawn with the
same rule as CIFAR-LT (head class 120 images).
"""
import numpy as np

from data_loader.array_lt import ArrayLTDataModule
from utils.long_tail import select_per_class

DIGITS_MEAN = (0.3053,) * 3
DIGITS_STD = (0.3759,) * 3


class DigitsLTDataModule(ArrayLTDataModule):
    num_classes, train_img_max, image_size = 10, 120, 8
    default_mean, default_std = DIGITS_MEAN, DIGITS_STD
    default_padding, default_flip, default_rotation = 1, False, 10
    test_per_class = 50
    default_validation_per_class = 20  # left over per class: about 10 at the head, about 120 at the tail

    def __init__(self, data_dir=None, imb_factor=0.1, **kw):
        super().__init__(data_dir, imb_factor=imb_factor, **kw)

    def load_arrays(self):
        from sklearn.datasets import load_digits
        digits = load_digits()
        # 0..16 grey levels -> uint8 RGB
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        images = np.repeat(images[..., None], 3, axis=3)
        targets = digits.target.astype(np.int64)
        test_idx = select_per_class(targets, [self.test_per_class] * self.num_classes, seed=1)
        train_mask = np.ones(len(targets), dtype=bool)
        train_mask[test_idx] = False
        test_idx = np.sort(test_idx)
        return images[train_mask], targets[train_mask], images[test_idx], targets[test_idx]


DigitsLTDataLoader = DigitsLTDataModule  # the earlier name (configs and checkpoints written with it)
