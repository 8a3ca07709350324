"""Your own long-tailed data as an image folder (docs/own_data.md).

``data_dir`` holds ``train/<class>/<image>`` (the usual ImageFolder layout; JPEG, PNG, BMP or
WebP by name, any case, size or mode, read by data_loader/image_file.py; any depth below the class
folder; other files left out with one counted log line; a name that is no readable regular file is
refused when the folder is read), optionally ``val/<class>/...`` and
``test/<class>/...``. The class names are the folder names of ``train/``, sorted; class ``k`` is
the k-th name. ``val/`` and ``test/`` may hold only classes ``train/`` has.

- Training set: ``train/`` as it is (its own long tail); ``imbalance`` R (optional) keeps a
  long-tailed subset of it by the seed-0 rule of CIFAR-LT (head class: its own count, each next
  class down to 1/R of it; utils/long_tail.py).
- Validation split: ``val/`` when present; otherwise a seeded held-out part of each class of
  ``train/`` (``validation``: ``fraction`` of the class, at most ``max_per_class``, leaving at
  least ``min_train`` images to train on; a class too small to give one keeps all its images and
  is reported). The split is written into the run folder as ``validation_split.txt``
  (``relative/path label`` lines, the list-file format) so it can be inspected and reused as a
  ``val_list``.
- Test distributions (forward/uniform/backward): subsets of ``test/`` by the long-tail formula,
  classes ranked by their training counts. A ``test/`` that is itself imbalanced gives them from
  what it holds: the smallest class's count is the head of every distribution and "uniform" is
  that many images of each class (``test_info`` and the log say so).
- Images: ``image_size`` (pixels, square) and ``style``: ``"small"`` (every image resized to
  ``image_size``; CIFAR-style random crop with ``padding``, flip, ``rotation``) or ``"large"``
  (ImageNet-style random resized crop, flip, colour jitter; test: resize to 256/224 of the size,
  centre crop); default ``"small"`` up to 64 px. ``mean``/``std`` default to ImageNet's.
"""
import logging
import os

import numpy as np
from torchvision import transforms as T

from base.base_data_module import LTDataModule
from data_loader import transforms as tf
from data_loader.list_file import ListFile, frequency_rank, unlistable
from data_loader.list_lt import ListImageDataset, ListLTDataModule, _accelerator_available
from data_loader.test_distributions import CIFAR_RATIOS, generated_distributions
from data_loader.validation_split import describe
from utils.errors import UserError, shown
from utils.long_tail import img_num_per_cls, select_per_class
from utils.safe_write import not_regular

logger = logging.getLogger("train")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_FILE = "validation_split.txt"
VALIDATION_KEYS = ("fraction", "max_per_class", "min_train", "seed")
DEFAULT_VALIDATION = {"fraction": 0.1, "max_per_class": 20, "min_train": 5, "seed": 0}


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def images_below(folder, skipped=None):
    """Every image file below ``folder`` (recursively, hidden entries skipped), sorted, as paths
    relative to ``folder``. Links to files are listed (and followed when read); links to folders are
    not followed, so a link loop cannot hang the walk. ``skipped`` (a list), when given, receives the
    other entries left out: files not named as images and links to folders."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)

        def rel(name):
            return name if rel_root == "." else os.path.join(rel_root, name)

        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if skipped is not None:
            skipped += [rel(d) for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in sorted(files):
            if name.startswith("."):
                continue
            if is_image(name):
                found.append(rel(name))
            elif skipped is not None:
                skipped.append(rel(name))
    return found


def others(skipped):
    """``; N other file(s) there, e.g. NAME`` for a message that found no image, or ""."""
    return f"; {len(skipped)} other file(s) there, e.g. {shown(skipped[0], 200)}" if skipped else ""


def skipped_note(where, skipped):
    """One line for the entries :func:`images_below` left out of ``where`` (None when there are none)."""
    if not skipped:
        return None
    return (f"{where}: left out {len(skipped)} file(s) not named as images ({', '.join(IMAGE_EXTENSIONS)}, any case) "
            f"or links to folders (not followed), e.g. {shown(skipped[0], 200)}")


def class_folders(split_dir):
    """The sorted class folder names of a split folder."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_split(data_dir, split, class_names=None):
    """``data_dir/split/<class>/...`` -> ListFile (paths relative to ``data_dir``, labels by
    ``class_names``; for ``train`` the names are the folders found). Layout errors name the folder."""
    split_dir = os.path.join(data_dir, split)
    names = class_folders(split_dir)
    if class_names is None:
        if len(names) < 2:
            raise UserError(f"{split_dir}: found {len(names)} class folder(s); expected at least two "
                            f"({split}/<class>/<image>)")
        class_names = names
    index = {name: k for k, name in enumerate(class_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"{os.path.join(split_dir, unknown[0])}: class {unknown[0]!r} is not a class of train/ "
                        f"(expected one of: {', '.join(class_names)})")
    images, labels, skipped = [], [], []
    for name in names:
        left_out = []
        found = images_below(os.path.join(split_dir, name), left_out)
        if not found:
            raise UserError(f"{os.path.join(split_dir, name)}: class folder holds no image (expected files ending "
                            f"in {', '.join(IMAGE_EXTENSIONS)}, any case){others(left_out)}")
        images += [os.path.join(split, name, rel) for rel in found]
        labels += [index[name]] * len(found)
        skipped += [os.path.join(name, rel) for rel in left_out]
    for path in images:
        problem = unlistable(path)
        if problem:
            raise UserError(f"{split_dir}: the name {shown(path, 200)} {problem}; the list files of a run "
                            f"({SPLIT_FILE}, test lists) hold one path a line in UTF-8: rename it")
        full = os.path.join(data_dir, path)
        problem = not_regular(full) or (None if os.access(full, os.R_OK) else "is not readable (permissions)")
        if problem:
            raise UserError(f"{full} {problem}; expected an image file ({split}/<class>/<image>)")
    note = skipped_note(split_dir, skipped)
    if note:
        logger.info("note: %s", note)
    lines = np.arange(1, len(images) + 1, dtype=np.int64)  # position in the scan (for messages)
    return ListFile(split_dir, images, np.asarray(labels, dtype=np.int64), lines), class_names


def subset(listing, idx):
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    return ListFile(listing.path, [listing.images[i] for i in idx], listing.labels[idx], listing.lines[idx])


def parse_folder_validation(value, option):
    """``validation``: null (the defaults), false (no split), or a dict of ``VALIDATION_KEYS``."""
    if value is False:
        return None
    settings = dict(DEFAULT_VALIDATION)
    if value is None:
        return settings
    if not isinstance(value, dict):
        raise UserError(f"{option} {value!r}: expected false or an object with {', '.join(VALIDATION_KEYS)}")
    unknown = sorted(set(value) - set(VALIDATION_KEYS))
    if unknown:
        raise UserError(f"{option}: unknown key(s) {', '.join(unknown)}; expected {', '.join(VALIDATION_KEYS)}")
    settings.update(value)
    f = settings["fraction"]
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
        raise UserError(f"{option}.fraction {f!r}: expected a number in (0, 1)")
    for key, low in (("max_per_class", 1), ("min_train", 1), ("seed", 0)):
        v = settings[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"{option}.{key} {v!r}: expected an integer >= {low}")
    return settings


def carve_validation(labels, num_classes, fraction, max_per_class, min_train, seed):
    """Held-out indices per class: ``min(floor(fraction * n), max_per_class, n - min_train)`` of
    each class's ``n`` images, chosen by one ``RandomState(seed)`` over the classes in order.
    Returns (held-out indices, counts, classes that gave none)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    held, counts, kept_whole = [], [], []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        take = max(0, min(int(fraction * len(idx)), max_per_class, len(idx) - min_train))
        rng.shuffle(idx)
        held.append(np.sort(idx[:take]))
        counts.append(take)
        if take == 0:
            kept_whole.append(c)
    return np.concatenate(held).astype(np.int64), counts, kept_whole


class ImageFolderLTDataModule(ListLTDataModule):
    """A long-tailed image folder of your own (module docstring)."""

    num_classes = None
    class_names = None  # the train/ folder names, sorted (set per instance)
    validation_option = "data_loader.args.validation"

    def __init__(self, data_dir, image_size=32, style=None, imbalance=None, validation=None, mean=None, std=None,
                 padding=4, flip=True, rotation=0, color_jitter=True, resize=None, test_ratios=None,
                 batch_size=128, num_workers=0, pin_memory=True, persistent_workers=True, **loader_kw):
        LTDataModule.__init__(self, batch_size=batch_size, num_workers=num_workers,
                              pin_memory=bool(pin_memory) and _accelerator_available(),
                              persistent_workers=persistent_workers, **loader_kw)
        train_dir = os.path.join(str(data_dir), "train")
        if not os.path.isdir(train_dir):
            raise UserError(f"{type(self).__name__}: {train_dir} is not a folder; expected data_dir to hold "
                            "train/<class>/<image> (and optionally val/ and test/)")
        self.data_dir = str(data_dir)
        self.image_size = int(image_size)
        self.style = style or ("small" if self.image_size <= 64 else "large")
        if self.style not in ("small", "large"):
            raise UserError(f"data_loader.args.style {style!r}: expected \"small\" or \"large\"")
        self.mean = tuple(mean or tf.IMAGENET_MEAN)
        self.std = tuple(std or tf.IMAGENET_STD)
        self.resize = int(resize) if resize else round(self.image_size * 256 / 224)
        self.augment = dict(padding=padding, flip=bool(flip), rotation=rotation, color_jitter=bool(color_jitter))
        self.ratios = tuple(int(r) for r in (test_ratios or CIFAR_RATIOS))
        self.test_distribution_txt = None
        self._distributions = None
        self._train_loader, self._train_loader_key = None, None

        train, self.class_names = scan_split(self.data_dir, "train")
        self.num_classes = len(self.class_names)
        self.label_map = np.arange(self.num_classes)
        if imbalance is not None:
            train = self._long_tail(train, imbalance)
        self.train_list = train
        self.validation_settings = None
        has_val = os.path.isdir(os.path.join(self.data_dir, "val"))
        if has_val and validation is not False:
            val, _ = scan_split(self.data_dir, "val", self.class_names)
            counts = np.bincount(val.labels, minlength=self.num_classes).tolist()
            source = f"the folder {os.path.join(self.data_dir, 'val')}"
            settings = None
        else:
            settings = parse_folder_validation(validation, self.validation_option)
            val = None
            if settings is not None:
                held, counts, kept_whole = carve_validation(train.labels, self.num_classes, **settings)
                keep = np.setdiff1d(np.arange(len(train)), held)
                val, self.train_list = subset(train, held), subset(train, keep)
                source = f"held out of {os.path.join(self.data_dir, 'train')}"
                if kept_whole:
                    logger.info("validation split: class(es) %s too small to give an image (fraction %g, min_train "
                                "%d); they keep all their images for training",
                                ", ".join(self.class_names[c] for c in kept_whole), settings["fraction"],
                                settings["min_train"])
        self.validation_settings = settings
        if val is not None:
            self.val_list = val
            self.validation_info = {"source": source, "per_class": None, "counts": counts,
                                    "in_sample_classes": [], "option": self.validation_option,
                                    "settings": settings,
                                    "classes_without_validation": [self.class_names[c] for c, n in enumerate(counts)
                                                                   if n == 0]}
        has_test = os.path.isdir(os.path.join(self.data_dir, "test"))
        self.test_list = scan_split(self.data_dir, "test", self.class_names)[0] if has_test else \
            ListFile(os.path.join(self.data_dir, "test"), [], np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.train_set = ListImageDataset(self.data_dir, self.train_list, self.train_list.labels,
                                          self.train_transform())
        self.test_set = self.test_view_dataset(self.test_transform())
        if val is not None:
            self.validation_set = ListImageDataset(self.data_dir, val, val.labels, self.test_transform())
            logger.info("%s", describe(self.validation_info))
        self.test_info = self._describe_test()

    # -- what the folder holds ----------------------------------------------------------------------
    def _long_tail(self, train, imbalance):
        if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float)) or imbalance < 1:
            raise UserError(f"data_loader.args.imbalance {imbalance!r}: expected a ratio >= 1 (head / tail count)")
        have = np.bincount(train.labels, minlength=self.num_classes)
        counts = img_num_per_cls(int(have.max()), self.num_classes, 1.0 / imbalance)
        short = [c for c in range(self.num_classes) if have[c] < counts[c]]
        if short:
            c = short[0]
            raise UserError(f"data_loader.args.imbalance {imbalance}: class {self.class_names[c]!r} has {have[c]} "
                            f"images in train/, the long tail asks for {counts[c]}; imbalance makes a long tail of "
                            "a balanced folder")
        return subset(train, select_per_class(train.labels, counts, seed=0))

    def _describe_test(self):
        counts = np.bincount(self.test_list.labels, minlength=self.num_classes)
        balanced = len(counts) > 0 and counts.min() == counts.max()
        info = {"images": int(len(self.test_list)), "counts": counts.tolist(), "balanced": bool(balanced)}
        if len(self.test_list) and not balanced:
            info["note"] = (f"test/ is imbalanced ({counts.min()}..{counts.max()} per class): the test distributions "
                            f"are built from what it holds ({counts.min()} images at the head; uniform takes "
                            f"{counts.min()} of each class)")
            logger.info("%s", info["note"])
        return info

    def split_files(self):
        """Files for the run folder: the validation split when it was carved from train/."""
        if self.validation_settings is None or not self.has_validation:
            return {}
        lines = [f"{path} {label}" for path, label in zip(self.val_list.images, self.val_list.labels)]
        return {SPLIT_FILE: "\n".join(lines) + "\n"}

    # -- transforms ----------------------------------------------------------------------------------
    def train_transform(self):
        a, size = self.augment, self.image_size
        if self.style == "large":
            return tf.large_image_train(size, self.mean, self.std, a["color_jitter"])
        return T.Compose([T.Resize((size, size)),
                          tf.small_image_train(size, a["padding"], a["flip"], a["rotation"], self.mean, self.std)])

    def test_transform(self):
        if self.style == "large":
            return tf.large_image_test(self.image_size, self.resize, self.mean, self.std)
        return T.Compose([T.Resize((self.image_size, self.image_size)), tf.small_image_test(self.mean, self.std)])

    def two_view_transform(self, crop_scale=(0.2, 1.0), blur_p=None):
        size = self.image_size
        if self.style == "large":
            return tf.large_image_two_view(size, self.mean, self.std, crop_scale=crop_scale,
                                           blur_p=0.5 if blur_p is None else blur_p)
        return T.Compose([T.Resize((size, size)),
                          tf.small_image_two_view(size, self.mean, self.std, blur_p=0.2 if blur_p is None else blur_p,
                                                  flip=self.augment["flip"])])

    # -- evaluation ----------------------------------------------------------------------------------
    def reference_dataset(self):
        return ListImageDataset(self.data_dir, self.train_list, self.train_set.targets, self.test_transform())

    def test_distributions(self):
        if self._distributions is None:
            if not len(self.test_list):
                raise UserError(f"{os.path.join(self.data_dir, 'test')} does not exist: this data has no test set "
                                "(add test/<class>/<image>, or predict unlabeled images with test_train.py --images)")
            targets = self.test_set.targets
            counts = np.bincount(targets, minlength=self.num_classes)
            rank = frequency_rank(self.train_set.targets, self.num_classes)
            head = int(counts.min())
            if head < 1:
                missing = self.class_names[int(np.argmin(counts))]
                raise UserError(f"{os.path.join(self.data_dir, 'test')}: class {missing!r} has no test image; the "
                                "test distributions need every class")
            dists = generated_distributions(targets, self.num_classes, self.ratios, img_max=head, class_rank=rank)
            if not self.test_info["balanced"]:
                dists["uniform"] = select_per_class(targets, [head] * self.num_classes, seed=0)
            self._distributions = dists
        return self._distributions

