"""ImageNet-LT, Places-LT, iNaturalist 2018 (docs/methods.md#list-datasets): JPEG folders described by list files.

``data_dir`` is the folder the list paths are relative to; ``train_txt`` and ``test_txt`` name the
training list and the (balanced) test list (iNat: its val list); ``val_list`` names the
validation list (ImageNet-LT and Places-LT ship one, 20 images per class; iNaturalist 2018 has
none, its val list being the test set), used for model selection and test-time calibration. Class
counts come from the training list. The test distributions (docs/methods.md#test-distributions) are
read from the lists written by
``python -m data_txt.make_test_distributions`` (``test_distribution_txt``, a path pattern with
``{name}``), each mapped to indices into the test list; with ``test_distribution_txt: null`` the
same subsets are generated at start-up.

Places-LT relabels classes by descending training frequency (0 = most frequent, ties by original
label) and applies the map to every list; the map is logged and kept as ``label_map`` (old -> new).
"""
import contextlib
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from base.base_data_module import LTDataModule
from data_loader import transforms as tf
from data_loader.image_file import RULE, read_rgb, unreadable_reason
from data_loader.list_file import check_images_exist, frequency_order, frequency_rank, read_list
from data_loader.test_distributions import distribution_names, generated_distributions
from data_loader.validation_split import describe
from utils.errors import UserError
from utils.seed import epoch_seed

logger = logging.getLogger("train")


class UnreadableImageError(UserError):
    """A listed image that cannot be decoded. DataLoader workers hand exceptions to the main process
    as ``type(e)("Caught ... Original Traceback ...")``; the constructor keeps only the original
    message, so the error stays one line."""

    def __init__(self, message):
        if isinstance(message, str) and message.startswith("Caught ") and "Original Traceback" in message:
            tail = message.rstrip().splitlines()[-1]
            marker = f"{type(self).__name__}: "
            message = tail.split(marker, 1)[1] if marker in tail else tail
        super().__init__(message)


@contextlib.contextmanager
def _seeded(seed):
    """Seed torch's RNG for one image. Workers own their RNG; the main process keeps its state."""
    if torch.utils.data.get_worker_info() is not None:
        torch.manual_seed(seed)
        yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield


class ListImageDataset(Dataset):
    """Images ``data_dir/relative_path`` (PIL, RGB by data_loader/image_file.py) with integer targets.

    An index may be an ``(index, seed)`` pair: the image's augmentation is then seeded by it (see
    ``SeededSampler``). Paths are kept as one bytes array, which worker processes share without
    copying (a list of Python strings would be copied page by page as reference counts change).
    """

    reader = RULE  # how a file becomes an image (data_loader/image_file.py); part of the validation cache key

    def __init__(self, data_dir, listing, targets, transform=None):
        self.data_dir = str(data_dir)
        self.list_path = listing.path
        self.images = np.array([p.encode("utf-8") for p in listing.images])
        self.lines = listing.lines
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def path(self, i):
        return os.path.join(self.data_dir, self.images[i].decode("utf-8"))

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, seed = key
            with _seeded(seed):
                return self._item(i)
        return self._item(key)

    def _item(self, i):
        path = self.path(i)
        try:
            img = read_rgb(path)  # a FIFO is refused, not waited on
        except Exception as e:  # noqa: BLE001 - Pillow raises anything on a file that is not what it seems
            # a list file's line; an image folder's scan has no line to name (the path names the file)
            where = "" if os.path.isdir(self.list_path) else f" ({self.list_path}, line {self.lines[i]})"
            raise UnreadableImageError(f"cannot read image {path}{where}: {unreadable_reason(path, e)}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


class SeededSampler(Sampler):
    """Yields ``(index, seed)``: each image's augmentation is seeded by (run seed, epoch, index), so
    persistent workers give the same batches as fresh ones and a resumed run repeats an
    uninterrupted one, whatever the number of workers."""

    def __init__(self, dataset, rank, world_size, shuffle, seed):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                        drop_last=False)
        self.seed = seed
        self.base = 0

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)
        self.base = epoch_seed(self.seed, epoch)

    def __iter__(self):
        base = self.base
        return ((i, (base * 1_000_003 + i) % 2**63) for i in self.inner)

    def __len__(self):
        return len(self.inner)


def _accelerator_available():
    acc = getattr(torch, "accelerator", None)
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


class ListLTDataModule(LTDataModule):
    """A long-tailed training list, a balanced test list, and test distributions from list files."""

    num_classes = None
    default_ratios = (50, 25, 10, 5, 2)
    default_relabel = False
    default_mean, default_std, default_color_jitter = tf.IMAGENET_MEAN, tf.IMAGENET_STD, True

    def __init__(self, data_dir, train_txt, test_txt, test_distribution_txt=None, num_classes=None,
                 test_ratios=None, relabel_by_frequency=None, image_size=224, resize=None, mean=None, std=None,
                 color_jitter=None, check_images=True, batch_size=128, num_workers=0, pin_memory=True,
                 persistent_workers=True, val_list=None, **loader_kw):
        super().__init__(batch_size=batch_size, num_workers=num_workers,
                         pin_memory=bool(pin_memory) and _accelerator_available(),
                         persistent_workers=persistent_workers, **loader_kw)
        if not os.path.isdir(data_dir):
            raise UserError(f"{type(self).__name__}: data_dir {data_dir} is not a folder (it should hold the images "
                            "the list files name)")
        self.data_dir = str(data_dir)
        self.num_classes = int(num_classes or self.num_classes or 0) or None
        self.ratios = tuple(int(r) for r in (test_ratios or self.default_ratios))
        self.test_distribution_txt = test_distribution_txt
        self.image_size = int(image_size)
        self.resize = int(resize) if resize else round(self.image_size * 256 / 224)  # 256 at 224 px
        self.mean = tuple(mean or self.default_mean)
        self.std = tuple(std or self.default_std)
        color_jitter = self.default_color_jitter if color_jitter is None else bool(color_jitter)

        train = read_list(train_txt, self.num_classes, "training list")
        if self.num_classes is None:
            self.num_classes = int(train.labels.max()) + 1
        test = read_list(test_txt, self.num_classes, "test list")
        self.label_map = np.arange(self.num_classes)  # old label -> new label
        if self.default_relabel if relabel_by_frequency is None else relabel_by_frequency:
            self.label_map[frequency_order(train.labels, self.num_classes)] = np.arange(self.num_classes)
            logger.info("%s: classes relabelled by descending training frequency (new:old) %s", type(self).__name__,
                        " ".join(f"{new}:{old}" for new, old in enumerate(np.argsort(self.label_map))))
        if check_images:
            check_images_exist(train, self.data_dir)
            check_images_exist(test, self.data_dir)
        self.train_list, self.test_list = train, test
        self.train_set = ListImageDataset(self.data_dir, train, self.label_map[train.labels],
                                          tf.large_image_train(self.image_size, self.mean, self.std, color_jitter))
        self.test_set = self.test_view_dataset(tf.large_image_test(self.image_size, self.resize, self.mean, self.std))
        if val_list:
            self._read_validation(val_list, check_images)
        self._distributions = None
        self._train_loader, self._train_loader_key = None, None

    validation_option = "data_loader.args.val_list"

    def _read_validation(self, path, check_images):
        """The validation list: its classes must be training classes, and none of its images may be a
        training or test image (refused, naming the first one)."""
        val = read_list(path, self.num_classes, "validation list")
        trained = np.bincount(self.train_list.labels, minlength=self.num_classes) > 0
        lacking = np.nonzero(~trained[val.labels])[0]
        if len(lacking):
            j = int(lacking[0])
            raise UserError(f"{path}, line {val.lines[j]}: class {val.labels[j]} is not in the training list "
                            f"{self.train_list.path}; a validation list may only hold training classes")
        for other, what in ((self.train_list, "training"), (self.test_list, "test")):
            seen = set(other.images)
            overlap = [j for j, rel in enumerate(val.images) if rel in seen]
            if overlap:
                j = overlap[0]
                raise UserError(f"{path}, line {val.lines[j]}: image {val.images[j]} is also in the {what} list "
                                f"{other.path} ({len(overlap)} shared); validation images must be held out")
        if check_images:
            check_images_exist(val, self.data_dir)
        self.val_list = val
        self.validation_set = ListImageDataset(self.data_dir, val, self.label_map[val.labels], self.test_set.transform)
        counts = np.bincount(self.validation_set.targets, minlength=self.num_classes).tolist()
        self.validation_info = {"source": f"validation list {path}", "per_class": None, "counts": counts,
                                "in_sample_classes": [], "option": self.validation_option}
        logger.info("%s", describe(self.validation_info))

    # -- training -------------------------------------------------------------------------------
    def train_loader(self, epoch, seed, rank=0, world_size=1, device=None):
        """One loader kept across epochs (persistent workers), reseeded per epoch by its sampler.
        Batches stay on the host (decoding is in workers); ``device`` is accepted for the interface."""
        per_rank = self.rank_batch_size(world_size)
        key = (seed, rank, world_size)
        if self._train_loader_key != key:
            sampler = SeededSampler(self.train_set, rank, world_size, self.shuffle, seed)
            self._train_loader = DataLoader(self.train_set, batch_size=per_rank,
                                            sampler=sampler, num_workers=self.num_workers,
                                            pin_memory=self.pin_memory, drop_last=self.drop_last,
                                            persistent_workers=self.persistent_workers)
            self._train_loader_key = key
        self._train_loader.sampler.set_epoch(epoch)
        return self._train_loader

    # -- evaluation -----------------------------------------------------------------------------
    def test_view_dataset(self, transform):
        return ListImageDataset(self.data_dir, self.test_list, self.label_map[self.test_list.labels], transform)

    def reference_dataset(self):
        return ListImageDataset(self.data_dir, self.train_list, self.train_set.targets, self.test_set.transform)

    def two_view_transform(self, crop_scale=(0.2, 1.0), blur_p=0.5):
        return tf.large_image_two_view(self.image_size, self.mean, self.std, crop_scale=crop_scale, blur_p=blur_p)

    def test_distributions(self):
        """Ordered ``{name: test_set indices}``: forward..., uniform, backward...
        (docs/methods.md#test-distributions)."""
        if self._distributions is None:
            if self.test_distribution_txt:
                self._distributions = self._read_distributions(self.test_distribution_txt)
            else:
                rank = frequency_rank(self.train_set.targets, self.num_classes)
                self._distributions = generated_distributions(self.test_set.targets, self.num_classes, self.ratios,
                                                              class_rank=rank)
        return self._distributions

    def _read_distributions(self, pattern):
        if "{name}" not in pattern:
            raise UserError(f"data_loader.args.test_distribution_txt {pattern!r} must contain {{name}} (it is "
                            f"filled with {', '.join(distribution_names(self.ratios))})")
        index = {}
        for i, rel in enumerate(self.test_list.images):
            index.setdefault(rel, i)
        targets = self.test_set.targets
        out = {}
        for name in distribution_names(self.ratios):
            path = pattern.format(name=name)
            if not os.path.isfile(path):
                raise UserError(f"test distribution list {path} does not exist; write the lists with "
                                f"python -m data_txt.make_test_distributions (see data_txt/README.md)")
            listing = read_list(path, self.num_classes, "test distribution list")
            idx = np.fromiter((index.get(rel, -1) for rel in listing.images), dtype=np.int64, count=len(listing))
            if (idx < 0).any():
                j = int(np.argmax(idx < 0))
                raise UserError(f"{path}, line {listing.lines[j]}: image {listing.images[j]} is not in the test list "
                                f"{self.test_list.path}")
            wrong = np.nonzero(targets[idx] != self.label_map[listing.labels])[0]
            if len(wrong):
                j = int(wrong[0])
                raise UserError(f"{path}, line {listing.lines[j]}: label {listing.labels[j]} differs from the test "
                                f"list's label for {listing.images[j]}")
            out[name] = idx
        return out


class ImageNetLTDataModule(ListLTDataModule):
    """ImageNet-LT: 1000 classes, ResNeXt-50 recipe (docs/methods.md#list-datasets)."""
    num_classes = 1000


class PlacesLTDataModule(ListLTDataModule):
    """Places-LT: 365 classes, relabelled by descending training frequency (docs/methods.md#list-datasets)."""
    num_classes = 365
    default_relabel = True


class INaturalistDataModule(ListLTDataModule):
    """iNaturalist 2018: 8,142 classes, no ColorJitter, its own normalisation; test distributions
    forward/backward 2 and 3 of the val list (docs/methods.md#test-distributions, #list-datasets)."""
    num_classes = 8142
    default_ratios = (3, 2)
    default_mean, default_std, default_color_jitter = tf.INAT_MEAN, tf.INAT_STD, False


# The earlier names (the release's configs and checkpoints use them).
ImageNetLTDataLoader = ImageNetLTDataModule
PlacesLTDataLoader = PlacesLTDataModule
INaturalistDataLoader = INaturalistDataModule
