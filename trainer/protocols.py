"""The test protocols of test.py and test_train.py (``--protocol``), all scored from one pass of
clean logits over the test set:

- ``distributions`` (default): the eleven published test distributions (docs/methods.md#test-distributions);
- ``dirichlet``: ``--draws`` seeded test sets of ``--size`` images per ``--alpha`` (pi ~ Dir(alpha 1));
- ``missing``: ``--draws`` seeded subsets in which ``--missing_fraction`` of the classes have no image;
- ``streaming``: the whole test set in a seeded order, in batches of each ``--stream_batch``; a
  method predicts a batch before it may learn from it;
- ``dirmixe``: DirMixE's protocol, ``--draws`` (default 3) test sets each of uniform, forward ``--ir`` and
  backward ``--ir`` (1 to ``MAX_IR``), per-class counts drawn from a Dirichlet around a jittered profile.

Subsets come from data_loader/test_protocols.py; draws are summarised as mean and standard
deviation per group (one alpha, one fraction).
"""
import re
from collections import OrderedDict

import numpy as np

from data_loader import test_protocols
from data_loader.test_distributions import select_distributions
from utils.cli import finite_float, nonnegative_int, positive_int
from utils.errors import UserError
from utils.memory_budget import check_fits

PROTOCOLS = ("distributions", "dirichlet", "missing", "streaming", "dirmixe")
DEFAULT_DRAWS = {"dirmixe": 3}  # draws per setting; the other protocols: 10
MAX_IR = 10_000  # beyond it every tail class of a test set holds its one image: no ratio means more


def _numbers(text, option, cast=float):
    try:
        values = [cast(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected a comma-separated list of numbers")
    if not values:
        raise UserError(f"{option} {text!r}: expected at least one value")
    return values


def add_protocol_args(parser):
    parser.add_argument("--protocol", default="distributions", help=f"one of {', '.join(PROTOCOLS)}")
    parser.add_argument("--alpha", default="0.1,1,10", help="dirichlet: concentration(s), comma-separated, > 0")
    parser.add_argument("--draws", type=positive_int, help="dirichlet / missing / dirmixe: seeded draws per setting "
                        "(default 10; dirmixe 3)")
    parser.add_argument("--size", type=positive_int, help="dirichlet: images per drawn test set (default 2000, or the "
                        "test set's size if smaller)")
    parser.add_argument("--missing_fraction", default="0.3", help="missing: fraction(s) of classes without images")
    parser.add_argument("--stream_batch", default="1,16,128", help="streaming: batch size(s), comma-separated")
    parser.add_argument("--ir", type=finite_float, default=100,
                        help=f"dirmixe: imbalance ratio of the forward and backward profiles, 1 to {MAX_IR} (its "
                        "authors: 100 CIFAR, 50 ImageNet-LT, 3 iNaturalist)")
    parser.add_argument("--concentration", type=finite_float,
                        help="dirmixe: the Dirichlet's total concentration (default: the test set's images per class, "
                        "as its authors on CIFAR; 10000 ImageNet-LT, 100000 iNat)")
    parser.add_argument("--protocol_seed", type=nonnegative_int, default=0,
                        help="seed of the drawn subsets and stream order")
    return parser


def check_protocol(protocol):
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


# the protocols each option of add_protocol_args (and --distributions) is read by
OPTION_PROTOCOLS = {"distributions": ("distributions",), "alpha": ("dirichlet",), "size": ("dirichlet",),
                    "draws": ("dirichlet", "missing", "dirmixe"), "missing_fraction": ("missing",),
                    "stream_batch": ("streaming",), "ir": ("dirmixe",), "concentration": ("dirmixe",),
                    "protocol_seed": ("dirichlet", "missing", "streaming", "dirmixe")}


def check_protocol_options(parser, args):
    """An option of another protocol than ``--protocol``'s, given with a value other than its default,
    is one line before any work: it would be ignored (``--alpha 1`` without ``--protocol dirichlet``)."""
    check_protocol(args.protocol)
    for name, protocols in OPTION_PROTOCOLS.items():
        if args.protocol not in protocols and getattr(args, name, None) != parser.get_default(name):
            which = protocols[0] if len(protocols) == 1 else f"{', '.join(protocols[:-1])} or {protocols[-1]}"
            raise UserError(f"--{name} applies to --protocol {which}, and this call's protocol is {args.protocol} "
                            f"(it would be ignored); expected --protocol {which}, or no --{name}")


def test_sets(args, data):
    """Ordered ``{name: test-set indices}`` of a subset protocol (everything but streaming); a test
    set without images is refused before any work (it has no accuracy to report)."""
    sets = _test_sets(args, data)
    empty = [name for name, indices in sets.items() if len(indices) == 0]
    if empty:
        raise UserError(f"--protocol {args.protocol}: test set {empty[0]} has no images ({len(empty)} of {len(sets)} "
                        f"are empty; the test set has {len(data.test_targets)} image(s)); expected a larger test set, "
                        "or select others with --distributions")
    return sets


def _test_sets(args, data):
    check_protocol(args.protocol)
    targets, C = data.test_targets, data.num_classes
    draws = args.draws if args.draws is not None else DEFAULT_DRAWS.get(args.protocol, 10)
    check_sets_fit(args, draws, len(targets))
    try:
        if args.protocol == "distributions":
            available = data.test_distributions()
            return OrderedDict((n, available[n]) for n in select_distributions(list(available), args.distributions))
        out = OrderedDict()
        if args.protocol == "dirichlet":
            size = min(2000, len(targets)) if args.size is None else args.size
            for alpha in _numbers(args.alpha, "--alpha"):
                if alpha <= 0:
                    raise UserError(f"--alpha {alpha:g}: expected a number > 0")
                if size > len(targets):
                    raise UserError(f"--size {size}: a Dirichlet draw larger than the test set "
                                    f"({len(targets)} images)")
                out.update(test_protocols.dirichlet(targets, C, alpha, draws, size, args.protocol_seed))
        elif args.protocol == "missing":
            for fraction in _numbers(args.missing_fraction, "--missing_fraction"):
                out.update(test_protocols.missing_classes(targets, C, fraction, draws, args.protocol_seed))
        elif args.protocol == "dirmixe":
            if not 1 <= args.ir <= MAX_IR:
                raise UserError(f"--ir {args.ir:g}: expected an imbalance ratio from 1 to {MAX_IR}")
            if args.concentration is not None and not args.concentration > 0:
                raise UserError(f"--concentration {args.concentration:g}: expected a number > 0")
            out.update(test_protocols.dirmixe(targets, C, data.cls_num_list, args.ir, draws, args.concentration,
                                              args.protocol_seed))
        return out
    except ValueError as e:  # a count or fraction the protocol functions refuse
        raise UserError(f"--protocol {args.protocol}: {e}")


def check_sets_fit(args, draws, test_images):
    """Before any draw: the index arrays of every drawn test set (int64, up to ``--size`` or the test
    set's images each) must fit in memory."""
    settings = {"dirichlet": lambda: len(_numbers(args.alpha, "--alpha")),
                "missing": lambda: len(_numbers(args.missing_fraction, "--missing_fraction")),
                "dirmixe": lambda: 3}.get(args.protocol)
    if settings is None:
        return
    per_set = min(args.size or 2000, test_images) if args.protocol == "dirichlet" else test_images
    sets = settings() * draws
    check_fits(8 * sets * per_set, f"--draws {draws}: {sets} test sets of up to {per_set} images")


def stream_batch_sizes(args):
    sizes = _numbers(args.stream_batch, "--stream_batch", int)
    if any(b < 1 for b in sizes):
        raise UserError(f"--stream_batch {args.stream_batch!r}: batch sizes must be >= 1")
    return sizes


def group_of(name):
    """``dirichlet1_3`` -> ``dirichlet1`` (the setting of a draw); other names are their own group."""
    return re.sub(r"_\d+$", "", name)


def summarise(rows, keys=("top1", "top1_average")):
    """Mean and standard deviation over the draws of each group: ``{group: {key_mean, key_std, draws}}``."""
    groups = OrderedDict()
    for name, row in rows.items():
        groups.setdefault(group_of(name), []).append(row)
    out = OrderedDict()
    for group, members in groups.items():
        if len(members) < 2:
            continue
        entry = {"draws": len(members)}
        for key in keys:
            values = np.array([m[key] for m in members if key in m], dtype=float)
            if len(values):
                entry[f"{key}_mean"], entry[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1))
        out[group] = entry
    return out


def format_summary(summary):
    lines = []
    for group, s in summary.items():
        parts = [f"{group} ({s['draws']} draws):"]
        for key in ("top1", "top1_average"):
            if f"{key}_mean" in s:
                label = "method" if key == "top1" else "expert average"
                parts.append(f"{label} {100 * s[key + '_mean']:.1f} +- {100 * s[key + '_std']:.1f}")
        lines.append(" ".join(parts))
    return "\n".join(lines)
