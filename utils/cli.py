"""Command-line pieces shared by train.py, test.py and test_train.py: one-line usage errors and
options that override config keys.

An override option names the config key it sets (``--epochs`` -> ``trainer.epochs``); the parser
keeps that table, so ``parser.overrides(args)`` turns the command line into the
``(key path, value, option)`` triples that ``ConfigParser.apply_overrides`` applies. An option left
out is skipped; ``--set KEY.PATH=VALUE`` sets any existing key (JSON null included).
"""
import argparse
import math
import os

from utils.errors import UserError, shown
from utils.parse_config import parse_set_expression


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2, no usage dump), with options
    that override config keys."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._overrides = []  # (dest, key path, option, target config)
        self._set_targets = {}  # dest of a --set option -> target config

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")

    def add_override(self, *flags, key, target="run", **kwargs):
        """An option that sets config key ``key`` of the ``target`` config ("run": the training
        config; test_train.py also has "test_time")."""
        kwargs.setdefault("help", key)
        action = self.add_argument(*flags, **kwargs)
        self._overrides.append((action.dest, key, flags[-1], target))
        return action

    def add_set_option(self, flag="--set", target="run", what="config"):
        """``--set KEY.PATH=VALUE [KEY.PATH=VALUE ...]`` (also repeatable) for the ``target`` config."""
        action = self.add_argument(flag, action="extend", nargs="+", default=[], metavar="KEY.PATH=VALUE",
                                   help=f"override any existing {what} key; VALUE is JSON (else a string)")
        self._set_targets[action.dest] = (flag, target)
        return action

    def overrides(self, args, target="run"):
        """The ``(key path, value, option)`` triples of ``target``'s options given on the command line."""
        out = [(key, getattr(args, dest), option) for dest, key, option, t in self._overrides if t == target]
        for dest, (flag, t) in self._set_targets.items():
            if t == target:
                out += [(*parse_set_expression(e), "--set") for e in getattr(args, dest)]
        return out


def absolute_paths(args, *names):
    """Make the path options ``names`` of parsed ``args`` absolute (``~`` expanded; options left out stay
    None). For tools that run their steps from the project root: a relative path means the caller's folder."""
    for name in names:
        value = getattr(args, name, None)
        if value:
            setattr(args, name, os.path.abspath(os.path.expanduser(value)))
    return args


def comma_ints(what, low, high=None, words=(), example="10,20"):
    """argparse type: comma-separated integers in [low, high] (or one of ``words``), at least one;
    ``what`` and ``example`` name them in the one-line error."""
    def parse(text):
        parts = [p.strip() for p in str(text).split(",")]
        if not all(p in words or (p.isdigit() and int(p) >= low and (high is None or int(p) <= high)) for p in parts):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            also = "".join(f" or {w}" for w in words)
            raise argparse.ArgumentTypeError(f"expected {what} as integers {bound}{also}, like {example}; got "
                                             f"{shown(text)}")
        return [p if p in words else int(p) for p in parts]
    return parse


def finite_float(text):
    """argparse type: a finite number (``--lr nan`` would train or adapt to NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def nonnegative_int(text):
    """argparse type: an integer >= 0 that fits 64 bits (seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {shown(text)}")
    if value < 0 or value > 2**64 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 and < 2**64, got {shown(text)}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1 (a batch size, a number of draws, epochs, images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {shown(text)}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {shown(text)}")
    return value


def distribution_request(text):
    """argparse type of ``--distributions``: ``all`` or at least one name (``,`` names none)."""
    if not [n for n in str(text).split(",") if n.strip()]:
        raise argparse.ArgumentTypeError(f"expected all, uniform or names like forward50,backward50, got {text!r}")
    return text


def add_evaluation_args(parser, checkpoint_required=True):
    """Options common to test.py and test_train.py."""
    parser.add_argument("-r", "--resume", required=checkpoint_required, metavar="CHECKPOINT", help="trained checkpoint")
    parser.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_override("--data_dir", key="data_loader.args.data_dir")
    parser.add_override("--bs", type=positive_int, key="data_loader.args.batch_size", help="batch size")
    parser.add_override("--no_fold_batchnorm", key="trainer.fold_batchnorm", action="store_const", const=False,
                        help="run the network's passes with batch norm as trained, not folded into the convolutions "
                             "(trainer.fold_batchnorm false; docs/performance.md#folded-batch-norm)")
    parser.add_argument("--distributions", default="all", type=distribution_request,
                        help="all, uniform, or names like forward50,backward50")
    parser.add_argument("--out", help="result JSON path (a CSV is written beside it)")
    return parser
