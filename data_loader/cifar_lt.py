"""CIFAR-10-LT and CIFAR-100-LT (docs/methods.md#training-sets) from the standard pickle files.

``data_dir`` is the folder that holds ``cifar-10-batches-py/`` or ``cifar-100-python/`` (as
torchvision's ``root``). Files present are read as they are (no checksum: re-encoded copies are
fine); absent files are downloaded only when ``download`` is true.
"""
import pickle
from pathlib import Path

import numpy as np

from data_loader import transforms as tf
from data_loader.array_lt import ArrayLTDataModule
from utils.errors import UserError
from utils.safe_pickle import load_data_pickle


def read_cifar_batch(path, label_key):
    """One pickle batch -> (N x 32 x 32 x 3 uint8, labels); bad files are a one-line UserError."""
    try:
        with open(path, "rb") as f:
            entry = load_data_pickle(f, encoding="latin1")  # resolves numpy names only: runs no code
    except FileNotFoundError:
        raise UserError(f"CIFAR file {path} is missing")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError) as e:
        raise UserError(f"CIFAR file {path} is truncated or not a CIFAR pickle ({type(e).__name__}: {e}); "
                        "expected the standard python-version CIFAR batch")
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise UserError(f"CIFAR file {path} is not a CIFAR batch: expected a dict with 'data' and '{label_key}'")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"CIFAR file {path}: expected 'data' of shape N x 3072 with N labels, got "
                        f"{data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


class _CIFARLT(ArrayLTDataModule):
    folder = url = md5 = filename = label_key = None
    train_files = test_files = ()
    image_size = 32
    default_mean, default_std = tf.CIFAR_MEAN, tf.CIFAR_STD
    default_padding, default_flip, default_rotation = 4, True, 15

    def __init__(self, data_dir, imb_factor=0.01, download=False, **kw):
        self.download = download
        super().__init__(data_dir, imb_factor=imb_factor, **kw)

    def load_arrays(self):
        root = Path(self.data_dir)
        base = root / self.folder
        if not base.is_dir():
            if not self.download:
                raise UserError(f"{type(self).__name__}: no {self.folder}/ in data_dir {root}; put the "
                                f"standard CIFAR files there or set data_loader.args.download to true")
            self._download(root)
        train = [read_cifar_batch(base / name, self.label_key) for name in self.train_files]
        test = read_cifar_batch(base / self.test_files[0], self.label_key)
        train_x = np.concatenate([x for x, _ in train])
        train_y = np.concatenate([y for _, y in train])
        for name, y in (("train", train_y), ("test", test[1])):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise UserError(f"{base}: {name} labels must be in 0..{self.num_classes - 1}, found {y.max()}")
        return train_x, train_y, test[0], test[1]

    def _download(self, root):
        from torchvision.datasets.utils import download_and_extract_archive
        try:
            root.mkdir(parents=True, exist_ok=True)
            download_and_extract_archive(self.url, str(root), filename=self.filename, md5=self.md5)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise UserError(f"could not download {self.folder} into {root}: {type(e).__name__}: {e}")


class CIFAR10LTDataModule(_CIFARLT):
    """CIFAR-10-LT: 5,000 images at the head class (docs/methods.md#training-sets)."""
    num_classes, train_img_max, label_key = 10, 5000, "labels"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename, md5 = "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"


class CIFAR100LTDataModule(_CIFARLT):
    """CIFAR-100-LT: 500 images at the head class (docs/methods.md#training-sets)."""
    num_classes, train_img_max, label_key = 100, 500, "fine_labels"
    folder = "cifar-100-python"
    train_files, test_files = ("train",), ("test",)
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    filename, md5 = "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"


# Earlier names: the reference release's (its checkpoints evaluate with their own config) and ours.
ImbalanceCIFAR10DataLoader = CIFAR10LTDataLoader = CIFAR10LTDataModule
ImbalanceCIFAR100DataLoader = CIFAR100LTDataLoader = CIFAR100LTDataModule
