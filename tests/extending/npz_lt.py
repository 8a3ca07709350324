"""A dataset: your own images as uint8 arrays in one .npz file (train_x, train_y, test_x, test_y)."""
import numpy as np

from data_loader.array_lt import ArrayLTDataModule


class NpzLTDataModule(ArrayLTDataModule):
    """The long tail, transforms, test distributions and loaders come from ArrayLTDataModule;
    ``data_dir`` is the .npz file."""

    num_classes, image_size, train_img_max = 10, 32, 100  # classes, pixels, head-class images

    def load_arrays(self):
        arrays = np.load(self.data_dir)  # N x H x W x 3 uint8 images, integer labels
        return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
