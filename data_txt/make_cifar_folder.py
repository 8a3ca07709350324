"""Write CIFAR-10 (the standard python pickles) as an image-folder tree for ImageFolderLTDataModule.

    python data_txt/make_cifar_folder.py --cifar DIR/cifar-10-batches-py --out ROOT [--imbalance 100]
                                         [--val_per_class 20] [--no_val]

ROOT/train/<class>/NNNNN.png: the long-tailed training set (IR ``--imbalance`` by the seed-0 rule
of CIFAR-10-LT, the same images CIFAR10LTDataModule trains on); ROOT/val/<class>/: ``--val_per_class``
images of each class from the training images the long tail left out (the held-out rule of
data_loader/validation_split.py, seed 0); ROOT/test/<class>/: the 10,000 test images. Class folders
are CIFAR-10's names (their sorted order is CIFAR's label order). File names are the images' indices
in the pickles (training: 0..49999, test: 0..9999). ROOT must not exist (nothing is overwritten).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script (python data_txt/make_cifar_folder.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader.cifar_lt import read_cifar_batch
from data_loader.validation_split import held_out_split
from utils.cli import ArgumentParser, positive_int
from utils.errors import UserError, cli_entry
from utils.long_tail import img_num_per_cls, select_per_class
from utils.safe_pickle import load_data_pickle


def class_names(cifar_dir):
    """CIFAR-10's class names from ``batches.meta``; a folder without a readable one is a one-line error."""
    meta = Path(cifar_dir) / "batches.meta"
    if not Path(cifar_dir).is_dir():
        raise UserError(f"--cifar {cifar_dir} is not a folder; expected the cifar-10-batches-py folder")
    try:
        with open(meta, "rb") as f:
            names = load_data_pickle(f, encoding="latin1")["label_names"]
    except FileNotFoundError:
        raise UserError(f"--cifar {cifar_dir} has no batches.meta; expected the cifar-10-batches-py folder") from None
    except Exception as e:  # noqa: BLE001 - a torn or foreign pickle (load_data_pickle runs no code)
        raise UserError(f"{meta} is not CIFAR-10's batches.meta ({type(e).__name__}); expected the standard "
                        "python-version file") from None
    if len(names) != 10:
        raise UserError(f"{meta} names {len(names)} classes; expected CIFAR-10's 10")
    return [str(n) for n in names]


def imbalance_ratio(text):
    """argparse type of ``--imbalance``: a finite number >= 1 (head / tail count)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (head / tail count), got {text!r}")
    return value


def write_split(root, split, images, labels, indices, names):
    for i in indices:
        folder = root / split / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{int(i):05d}.png")
    return len(indices)


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", required=True, help="the cifar-10-batches-py folder")
    p.add_argument("--out", required=True, help="the folder tree to create (must not exist)")
    p.add_argument("--imbalance", type=imbalance_ratio, default=100.0, help="head / tail training count (default 100)")
    p.add_argument("--val_per_class", type=positive_int, default=20, help="images per class in val/ (default 20)")
    p.add_argument("--no_val", action="store_true", help="write no val/ (the data module then carves one)")
    args = p.parse_args(argv)
    root = Path(args.out).absolute()
    if root.exists() or root.is_symlink():
        raise UserError(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    above = next((q for q in root.parents if q.exists() or q.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {args.out}: {above} is not a folder; expected a new folder's path")
    names = class_names(args.cifar)
    batches = [read_cifar_batch(Path(args.cifar) / f"data_batch_{i}", "labels") for i in range(1, 6)]
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    test_x, test_y = read_cifar_batch(Path(args.cifar) / "test_batch", "labels")
    keep = select_per_class(train_y, img_num_per_cls(5000, 10, 1.0 / args.imbalance), seed=0)
    root.parent.mkdir(parents=True, exist_ok=True)
    # a folder of a random name, created exclusively (mode 0700): nothing planted at a guessed name is written into
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp{os.getpid()}.", dir=root.parent))
    counts = {"train": write_split(tmp, "train", train_x, train_y, keep, names)}
    if not args.no_val:
        val, _, _ = held_out_split(train_y, keep, 10, args.val_per_class, seed=0)
        counts["val"] = write_split(tmp, "val", train_x, train_y, val, names)
    counts["test"] = write_split(tmp, "test", test_x, test_y, np.arange(len(test_y)), names)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # the tree as any folder the user makes, not mkdtemp's 0700
    os.replace(tmp, root)
    print(f"wrote {root}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))


if __name__ == "__main__":
    sys.exit(main())
