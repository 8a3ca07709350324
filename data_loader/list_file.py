"""List files of the large-scale sets (docs/methods.md#list-datasets): ``relative/path/to/image.jpg label`` lines.

Shared by the data modules and the ``data_txt`` tools. Every problem is a one-line ``UserError``
naming the file and the line.
"""
import os
from dataclasses import dataclass

import numpy as np

from utils.errors import UserError
from utils.safe_write import not_regular, open_readable


@dataclass
class ListFile:
    path: str
    images: list  # relative paths as written
    labels: np.ndarray  # int64
    lines: np.ndarray  # 1-based line number of each entry

    def __len__(self):
        return len(self.labels)


def read_list(path, num_classes=None, what="list"):
    """Parse a list file. Blank lines are skipped; the label is the last field, so paths may hold
    spaces. ``num_classes`` bounds the labels (0..num_classes-1)."""
    try:
        with open_readable(path) as f:  # a FIFO or device is refused, never waited on
            text = f.read().decode("utf-8-sig")  # a byte-order mark (as Windows editors write) is no part of a path
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} file {path}: {e}")
    images, labels, lines = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise UserError(f"{path}, line {number}: expected 'relative/path label', got {line.strip()!r}")
        try:
            label = int(fields[1])
        except ValueError:
            raise UserError(f"{path}, line {number}: label {fields[1]!r} is not an integer")
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise UserError(f"{path}, line {number}: label {label} out of range (expected {bound})")
        images.append(fields[0].strip())
        labels.append(label)
        lines.append(number)
    if not images:
        raise UserError(f"{what} file {path} lists no images")
    return ListFile(str(path), images, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64))


def unlistable(path):
    """Why ``path`` cannot be one ``path label`` line that :func:`read_list` reads back as it is, or
    None: bytes that are not UTF-8, a line break of any kind, whitespace at either end."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(f"{path} 0".splitlines()) != 1:
        return "holds a line break"
    if path != path.strip():
        return "starts or ends with white space"
    return None


def check_images_exist(listing, data_dir):
    """Stat every listed image; report the first one that is no regular file (file and line; missing,
    a link to nothing, a folder, a FIFO...) and how many are missing."""
    missing = [i for i, rel in enumerate(listing.images) if not os.path.isfile(os.path.join(data_dir, rel))]
    if missing:
        i = missing[0]
        image = os.path.join(data_dir, listing.images[i])
        what = not_regular(image) or "does not exist"
        raise UserError(f"{listing.path}, line {listing.lines[i]}: image {image} {what} "
                        f"({len(missing)} of {len(listing)} listed images missing under data_dir {data_dir}); "
                        "expected an image file")


def frequency_order(labels, num_classes):
    """Classes from most to least frequent in ``labels``; ties by class index (a stable sort)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return np.argsort(-counts, kind="stable")


def frequency_rank(labels, num_classes):
    """``rank[c]``: class c's position by descending frequency (0 = most frequent)."""
    rank = np.empty(num_classes, dtype=np.int64)
    rank[frequency_order(labels, num_classes)] = np.arange(num_classes)
    return rank
