"""Write the test-agnostic test lists of a list-based dataset (docs/methods.md#test-distributions).

    python -m data_txt.make_test_distributions --train TRAIN.txt --test TEST.txt --out DIR
        [--ratios 50 25 10 5 2] [--prefix NAME] [--num_classes C] [--img_max N] [--seed 0] [--force]

Classes are ranked by training frequency (descending, ties by label); the class of rank r gets
``int(img_max * (1/ratio) ** (r / (C-1)))`` test images for forwardRATIO and rank C-1-r for
backwardRATIO; img_max defaults to the test list's images per class. Within a class the images
are a seeded choice (one ``RandomState(seed)``, classes in rank order) -- the same subsets a data
module generates at start-up with ``test_distribution_txt: null``. Writes
``DIR/{prefix}_{name}.txt`` for forward..., uniform, backward... (lines copied from the test
list, original labels) and prints a summary of the counts.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script (python data_txt/make_test_distributions.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loader.list_file import frequency_rank, read_list
from data_loader.test_distributions import distribution_names, generated_distributions
from utils.cli import ArgumentParser, nonnegative_int, positive_int
from utils.errors import UserError, cli_entry
from utils.safe_write import write_text


def make_test_distributions(train_txt, test_txt, ratios=(50, 25, 10, 5, 2), num_classes=None, img_max=None, seed=0):
    """-> (test ListFile, ordered {name: sorted indices into the test list}, class rank)."""
    train = read_list(train_txt, num_classes, "training list")
    test = read_list(test_txt, num_classes, "test list")
    if num_classes is None:
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    rank = frequency_rank(train.labels, num_classes)
    if img_max is None:
        img_max = len(test) // num_classes
    try:
        subsets = generated_distributions(test.labels, num_classes, ratios, img_max=img_max, class_rank=rank, seed=seed)
    except ValueError as e:  # a class with fewer test images than its rank asks for
        raise UserError(f"{test_txt}: too few test images for the distributions with img_max {img_max} ({e})")
    return test, {name: np.sort(idx) for name, idx in subsets.items()}, rank


def summary(test, subsets, rank):
    """One line per list: size and the per-class counts at the head and the tail of the ranking."""
    head, tail = int(np.argmin(rank)), int(np.argmax(rank))
    lines = []
    for name, idx in subsets.items():
        counts = np.bincount(test.labels[idx], minlength=len(rank))
        lines.append(f"{name:<11} {len(idx):>7,d} images | most frequent training class {head}: {counts[head]}, "
                     f"least frequent {tail}: {counts[tail]}")
    return lines


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training list (ranks the classes)")
    p.add_argument("--test", required=True, help="balanced test list (iNat: the val list)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ratios", type=positive_int, nargs="+", default=[50, 25, 10, 5, 2],
                   help="imbalance ratios (ImageNet-LT, Places-LT: 50 25 10 5 2; iNat: 3 2)")
    p.add_argument("--prefix", help="file name prefix (default: the test list's name without .txt)")
    p.add_argument("--num_classes", type=positive_int, help="default: largest label + 1")
    p.add_argument("--img_max", type=positive_int, help="images at the head class (default: test images per class)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing lists")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    test, subsets, rank = make_test_distributions(args.train, args.test, args.ratios, args.num_classes, args.img_max,
                                                  args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder; expected the folder the lists go into")
    prefix = args.prefix or Path(args.test).stem
    paths = {name: out / f"{prefix}_{name}.txt" for name in distribution_names(args.ratios)}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.force:
        raise UserError(f"{existing[0]} already exists ({len(existing)} of the lists); use --force to overwrite")
    links = [str(p) for p in paths.values() if p.is_symlink() or (p.exists() and not p.is_file())]
    if links:
        raise UserError(f"{links[0]} is a link or not a regular file; refusing to write through it (even with --force)")
    for name, path in paths.items():  # atomically, through a unique temporary file (utils/safe_write.py)
        write_text(path, "".join(f"{test.images[i]} {test.labels[i]}\n" for i in subsets[name]))
    print(f"{len(paths)} lists in {out} (pattern {out / (prefix + '_{name}.txt')}), {len(rank)} classes, "
          f"{len(test):,d} test images:")
    for line in summary(test, subsets, rank):
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
