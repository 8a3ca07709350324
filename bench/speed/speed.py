"""Speed benchmarks, one tool with a subcommand per measurement (the code of each in a file of
bench/speed/ named for it):

    python bench/speed/speed.py train      [-c CONFIG] [-d DEVICE] [--data_dir DIR] [--set KEY=VALUE ...]
                                           [--epochs 1] [--repeats 2] [--only defaults|plain]
    python bench/speed/speed.py accuracy   [-c CONFIG] [--data_dir DIR] [--set KEY=VALUE ...] [--epochs 4]
                                           [--seeds 1 2] [--variants fast plain] [--out JSON]
    python bench/speed/speed.py eval       [--checkpoint RUN/last.pth] [-d DEVICE] [--data_dir DIR]
                                           [--set KEY=VALUE ...] [--repeats 2]
    python bench/speed/speed.py test-time  [--checkpoint RUN/last.pth] [-d DEVICE] [--data_dir DIR]
                                           [--distribution forward50] [--epochs 1]
    python bench/speed/speed.py test-time-views --checkpoint RECORD/model.pth [-d DEVICE] [--data_dir DIR]
                                           [--epochs N] [--distributions all] [--seeds 3] [--first_seed 1]
                                           [--repeats 3] [--out JSON]
    python bench/speed/speed.py label-shift --checkpoint RUN/last.pth [-d DEVICE] [--data_dir DIR]
                                           [--test_time_config PRIOR_CONFIG] [--keep_cache]
    python bench/speed/speed.py predict    --checkpoint RUN/model_best.pth --images DATA/test [-d DEVICE]
                                           [--test_time_config CONFIG] [--repeats 3] [--work DIR]
    python bench/speed/speed.py loader     [--images 512] [--workers 2] [--batch 64] [--epochs 2]
    python bench/speed/speed.py ceiling    [-c CONFIG] [-d DEVICE] [--steps 8] [--batch 128] [--matmul 4096]

- ``train`` (train.py): training images/s of the config's defaults against the plain path (fp32,
  NCHW, PIL transforms in DataLoader workers), run alternately, with their ratio.
- ``accuracy`` (accuracy.py): numbers must not move: top-1 on the eleven test distributions after
  the same short recipe trained on the fast path and on the plain path, same seeds.
- ``eval`` (evaluation.py): one-pass evaluation of the eleven distributions against one pass per
  distribution.
- ``test-time`` (test_time.py): test-time aggregation with the defaults (frozen network, device-side
  views) against backpropagation through the fp32 network with PIL views.
- ``test-time-views`` (test_time_views.py): on a trained record, one test.py pass with batch norm
  folded against as trained; the whole self-supervised test_train.py call with shared views, per-set
  views and from saved views; float16 against float32 view logits; top-1 of shared against per-set
  views over seeds.
- ``label-shift`` (label_shift.py): the label-shift methods beside one test pass, with the
  validation cache cold and warm.
- ``predict`` (predict.py): ``test_train.py --images`` with SafePrior against a plain test.py pass
  over the same images.
- ``loader`` (loader.py): images/s of the list datasets' JPEG training pipeline on generated images.
- ``ceiling`` (ceiling.py): training FLOPs per image, the bare training step, the bare inference
  pass as trained and with batch norm folded (with batch norm's share of the as-trained pass), and
  the machine's matrix-product rate.

``--data_dir`` (default ``.cache/cifar``; for ``label-shift``, the checkpoint's own) must hold
CIFAR-10 (``cifar-10-batches-py``); it is written on demand (``bench/common.py:ensure_cifar10``)
for the default config.
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import DEFAULT_DATA, ROOT

from utils.cli import ArgumentParser, absolute_paths
from utils.errors import cli_entry

DEFAULT_CONFIG = ROOT / "configs" / "config_cifar10_ir100_tade.json"

# subcommand -> (module in bench/speed/, the shared options it takes)
SUBCOMMANDS = {
    "train": ("train", ("config", "device", "data_dir", "set")),
    "accuracy": ("accuracy", ("config", "data_dir", "set")),
    "eval": ("evaluation", ("checkpoint", "device", "data_dir", "set")),
    "test-time": ("test_time", ("checkpoint", "device", "data_dir")),
    "test-time-views": ("test_time_views", ("checkpoint", "device", "data_dir")),
    "label-shift": ("label_shift", ("checkpoint", "device")),
    "predict": ("predict", ("checkpoint", "device")),
    "loader": ("loader", ()),
    "ceiling": ("ceiling", ("config", "device")),
}


PATHS = ("config", "checkpoint", "data_dir", "images", "test_time_config", "work", "out")  # made absolute


def add_shared(p, names):
    if "config" in names:
        p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG),
                       help="training config (CIFAR-10 data is written on demand for the default one only)")
    if "checkpoint" in names:
        p.add_argument("--checkpoint", help="a trained checkpoint (default: the config's network, untrained)")
    if "device" in names:
        p.add_argument("-d", "--device", default="cpu")
    if "data_dir" in names:
        p.add_argument("--data_dir", default=str(DEFAULT_DATA))
    if "set" in names:
        p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY.PATH=VALUE",
                       help="config override (for every variant)")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(  # each subcommand's parser is an ArgumentParser too: usage errors are one line, exit 2
        dest="command", required=True, metavar="|".join(SUBCOMMANDS))
    for name, (module, shared) in SUBCOMMANDS.items():
        part = importlib.import_module(f"bench.speed.{module}")
        sp = sub.add_parser(name, help=part.__doc__.splitlines()[0], description=part.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        add_shared(sp, shared)
        part.add_arguments(sp)
        sp.set_defaults(run=part.run)
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    absolute_paths(args, *PATHS)  # the steps run from the project root
    if getattr(args, "device", None) is not None:
        from utils.runtime import parse_device
        parse_device(args.device)  # an unknown device: one line, before any work
    args.run(args)


if __name__ == "__main__":
    main()
