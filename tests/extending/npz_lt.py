"""A dataset: your own images as uint8 arrays in one .npz file (train_x, train_y, test_x, test_y)."""
import numpy as np

from data_loader.array_lt import ArrayLTDataModule


class NpzLTDataModule(ArrayLTDataModule):
    """The long tail, transforms, test distributions and loaders come from ArrayLTDataModule;
    ``data_dir`` is the .npz file. It states what its data are (each attribute is required)."""

    num_classes, image_size, train_img_max = 10, 32, 100  # classes, pixels, head-class images
    # Normalisation: the per-channel mean and std of your training images in [0, 1] (here CIFAR's).
    default_mean, default_std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    # Training augmentation: random-crop padding (pixels), horizontal flip, rotation (degrees, at most).
    default_padding, default_flip, default_rotation = 4, True, 15

    def load_arrays(self):
        arrays = np.load(self.data_dir)  # N x H x W x 3 uint8 images, integer labels
        return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
