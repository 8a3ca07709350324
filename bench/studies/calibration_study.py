"""Which calibration holds on small validation splits: every recorded model, splits of 10, 20, 50,
100 and all images per class, several seeded draws each, calibration families with fewer effective
parameters than a free per-class bias, each with EM and with SafePrior's two selection rules.

    python bench/studies/calibration_study.py [RECORD_DIR ...] [--sizes 10,20,50,100,all] [--draws 5]
        [--rows ESTIMATOR:FAMILY,...] [--training_images] [--data_dir PATH] [--out FILE]

RECORD_DIR: a folder of ``results/`` holding ``logits.npz`` (default: every one). The test logits
and the eleven distributions come from that file; the validation pool is the record's whole
left-over split when ``--data_dir`` is given and the record's ``model.pth`` loads (its logits from
the cache beside the checkpoint, trainer/validation_cache.py: one network pass the first time,
none after), else the validation split saved in ``logits.npz`` (a file without one is a one-line
error). A split of k per class takes, per class, k images of the pool at random (seed = the draw),
or all of a class's images where the pool holds fewer (a note names those classes); "all" is the
whole pool (one draw).

Rows (``family``: how the calibration's class bias is fitted; docs/methods.md#small-validation-splits):
- ``free``: a free per-class bias with the temperature (C + 1 parameters; the old calibration);
- ``none``: temperature only; ``prior``: z / T + g log p_train (two parameters);
- ``shrunk`` / ``shrunk_prior``: a free bias shrunk toward 0 / toward g log p_train by a ridge
  whose weight is chosen by 5-fold cross-fitting on the split;
each with EM (the full Bayes adjustment), ``SafePrior default`` (SafePrior's own defaults: the
per-test-set strength from the plain target, noise "both", the head-tail axis read against the
split's noise and the balanced move's direction), ``SafePrior old`` (one strength and gate per
model, chosen by the simulation on the split) and ``SafePrior gate`` (strength 1, the shift test
alone decides); ``SafePrior null`` / ``SafePrior null plain`` / ``SafePrior null
spread`` name the per-test-set variants by their target and noise (``SafePrior nearest`` / ``SafePrior
segment``: the shipped rule with ``null_target`` "nearest" / "segment"); ``SafePrior axis`` is the
shipped rule with the head-tail axis alone (``axis`` "train_prior": no balanced move's direction),
``SafePrior whole`` the shipped rule with one strength for every shift (``axis`` "none"),
``SafePrior axis both`` the shipped rule with the test set's own noise along the head-tail axis as
well (``axis_noise`` "both"), ``SafePrior rest floor`` the shipped rule with the rest of a shift read
along the directions moved by at least the whole rule's strength (``rest_floor`` "whole"), ``SafePrior
axis gate observed`` the shipped rule judging a shift's part along the head-tail axis as read, not
less the split's noise along it (``axis_gate`` "observed").
``Oracle prior (uses test labels)`` applies the true test prior under the same calibration: a
ceiling, never a method. Beside them the shipped prior config
(``configs/test_time_<family>_prior.json``) as it is now. ``--training_images`` adds, once per
record (not per size), EM and SafePrior calibrated on the training images instead of a validation
split (the record's training logits; the settings of bench/studies/test_time_methods.py's
training-image rows), shown under "training images".

Scores: the mean over the eleven distributions, the worst of the eleven against the plain average,
the worst Dirichlet draw against it (alpha 0.1, 1, 10; 10 draws each, 2000 images); over the draws
of the split: the mean and the lowest mean, the worst of the worsts. References: the plain average,
the self-supervised aggregation's mean (the record's ``test_time_methods.json``) and the oracle
prior (``z + log pi_test``: it reads the test labels, a ceiling, never a method). Test labels
choose nothing here: every setting is fitted or chosen on the validation split.

Output: one JSON of every record's study (``--out``, default ``calibration_study.json`` in the
current folder, rewritten after each size and after the training-image rows, so a long run keeps
what it finished). Recorded results are read-only, so the study is never written into
``results/NAME/``.

A row *holds* at a size when its worst of the eleven and its worst Dirichlet draw are >= -0.5
points against the plain average over every draw of the split, and its mean over the draws is at
least the aggregation's mean. Each draw keeps what the method calibrated on (``calibrated_on``) and
its images per class. The table is bench/records/report.py's, which renders the study files of
``docs/studies/`` (and a ``calibration_study.json`` kept in a record folder).

Timing of the label-shift methods with a warm cache (the 1.2x-one-test-pass target) is measured by
``bench/speed/speed.py label-shift --checkpoint CHECKPOINT``, not here.
"""
import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

import trainer.test_time as methods
from bench.records.addendum import read_addendum
from bench.records.report import calibration_study_table
from bench.studies.test_time_methods import family_config, training_calibrated
from trainer.adaptation import context_for
from trainer.protocols import test_sets
from trainer.saved_logits import load_logits
from trainer.test_time.prior_calibration import BIAS_FAMILIES
from utils.cli import ArgumentParser, comma_ints, positive_int
from utils.errors import UserError, cli_entry
from utils.parse_config import ConfigParser
from utils.safe_write import check_target, write_json

WRITER = "bench/studies/calibration_study.py"

MARGIN = 0.5  # points: "never below the plain average - 0.5"
AGGREGATION = "self-supervised aggregation (TADE)"
SHIPPED = "shipped config"
TRAINING = "training images"  # the split of the --training_images rows: the record's training logits
COMMON = {"calibration": "validation", "source_prior": "uniform", "temperature": "fit"}
ORACLE = "Oracle prior (uses test labels)"


def family_bias(family):
    return {"free": True, "none": False}.get(family, family)


ESTIMATORS = {
    "EM": lambda bias: methods.EMPrior(**COMMON, bias=bias),
    "SafePrior default": lambda bias: methods.SafePrior(**COMMON, bias=bias),
    "SafePrior gate": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength=1.0, min_divergence=0.0),
    # the per-test-set rule with the null measured from its target (certified or plain target), and the
    # class default: the plain target with the halves' spread as the noise
    "SafePrior null": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="certified",
                                                      noise="target"),
    "SafePrior null plain": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null",
                                                            null_target="plain", noise="target"),
    "SafePrior null spread": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null",
                                                             null_target="plain", noise="spread"),
    "SafePrior null both": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null",
                                                           null_target="plain", noise="both"),
    # the shipped rule measuring each shift from the nearer of the plain target and the certified one
    "SafePrior nearest": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="nearest",
                                                         noise="both"),
    "SafePrior segment": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="segment",
                                                         noise="both"),
    # the shipped rule with the head-tail axis alone (no balanced move's direction)
    "SafePrior axis": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="plain",
                                                      noise="both", axis="train_prior"),
    # the shipped rule with the larger of the split's and the test set's own noise along the axis
    "SafePrior axis both": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="plain",
                                                           noise="both", axis_noise="both"),
    # the shipped rule with the rest of a shift read along the directions moved by at least the whole strength
    "SafePrior rest floor": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="plain",
                                                            noise="both", rest_floor="whole"),
    # the shipped rule judging a shift's part along the head-tail axis as read (not less its noise)
    "SafePrior axis gate observed": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null",
                                                                    null_target="plain", noise="both",
                                                                    axis_gate="observed"),
    # the shipped rule without the head-tail axis: one strength for the whole shift
    "SafePrior whole": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="null", null_target="plain",
                                                       noise="both", axis="none"),
    "SafePrior old": lambda bias: methods.SafePrior(**COMMON, bias=bias, strength="auto", min_divergence="auto"),
    # a ceiling, never a method: the true test prior under the same calibration
    ORACLE: lambda bias: methods.OraclePrior(**COMMON, bias=bias),
}
# (estimator, family) rows by default: every family under SafePrior's own selection, and the full
# Bayes adjustment (EM) and the gate alone for the old (free) and the two-parameter calibration.
DEFAULT_ROWS = ("SafePrior default:free,SafePrior default:none,SafePrior default:prior,SafePrior default:shrunk,"
                "SafePrior default:shrunk_prior,SafePrior gate:prior,EM:free,EM:prior")


def candidates(dataset, rows):
    """(label, factory, settings) rows: the shipped config, then ``rows`` ("estimator:family", ...)."""
    cfg = ConfigParser(json.loads(family_config("prior", dataset).read_text()), "prior config")
    shipped = cfg.init_obj("test_time", methods)
    out = [(SHIPPED, lambda: cfg.init_obj("test_time", methods), (type(shipped).__name__, settings_of(shipped)))]
    for spec in rows.split(","):
        estimator, _, fam = spec.partition(":")
        if estimator not in ESTIMATORS or fam not in BIAS_FAMILIES:
            raise UserError(f"--rows {spec!r}: expected ESTIMATOR:FAMILY with ESTIMATOR one of "
                            f"{', '.join(ESTIMATORS)} and FAMILY one of {', '.join(BIAS_FAMILIES)}")
        make = functools.partial(ESTIMATORS[estimator], family_bias(fam))
        probe = make()
        out.append((f"{estimator}, {fam}", make, (type(probe).__name__, settings_of(probe))))
    return out, cfg["test_time"]


def training_rows():
    """(label, factory, settings) rows of the label-shift methods calibrated on the training images."""
    return [(f"{name}, {TRAINING}", make, (type(make()).__name__, settings_of(make())))
            for name, make in training_calibrated()]


def settings_of(method):
    """The arguments that decide a label-shift method's output (to spot a row equal to the shipped one)."""
    keys = ("calibration_data", "source_prior", "temperature", "bias", "strength", "min_divergence", "significance",
            "pseudo_count", "toward", "simulation_size", "null_target", "noise", "axis", "axis_noise", "rest_floor",
            "axis_gate", "tol", "max_iter")
    return {k: getattr(method, k) for k in keys if hasattr(method, k)}


class Record:
    """A record's saved logits, its test sets, references and validation pool."""

    def __init__(self, folder, data_dir=None):
        self.folder = Path(folder)
        self.saved = load_logits(self.folder / "logits.npz")
        self.data = self.saved.data
        self.clean, self.targets = self.saved.splits["test"]
        self.plain = self.clean.mean(1).argmax(1)
        args = argparse.Namespace(protocol="distributions", distributions="all", alpha="0.1,1,10", draws=10,
                                  size=None, protocol_seed=0, missing_fraction="0.3", stream_batch="1")
        self.eleven = test_sets(args, self.data)
        args.protocol = "dirichlet"
        self.dirichlet = test_sets(args, self.data)
        self.pool, self.pool_source = self._pool(data_dir)
        self.training = self.saved.source("training")  # () -> (logits, targets), or None
        self.references = self._references()

    def _pool(self, data_dir):
        ckpt = self.folder / "model.pth"
        if data_dir and ckpt.exists():
            from trainer.build import load_trained
            from trainer.validation_cache import validation_logits
            overrides = [("data_loader.args.data_dir", str(data_dir), "--data_dir"),
                         ("data_loader.args.validation", {"per_class": "all"}, "calibration_study.py")]
            trained = load_trained(ckpt, None, overrides, "cpu")
            logits, targets = validation_logits(trained, "cpu")
            shown = ckpt.resolve().relative_to(ROOT) if ckpt.resolve().is_relative_to(ROOT) else ckpt.name
            return (logits.mean(1), targets), f"whole left-over split ({len(targets)} images, cached beside {shown})"
        if "validation" not in self.saved.splits:
            raise UserError(f"{self.folder / 'logits.npz'} holds no validation split; give --data_dir with the "
                            "record's model.pth beside it (the whole left-over split), or a logits file saved with one")
        logits, targets = self.saved.splits["validation"]
        return (logits.mean(1), targets), f"the validation split saved in logits.npz ({len(targets)} images)"

    def short_classes(self, per_class):
        """The classes whose pool holds fewer than ``per_class`` images (a split keeps all of theirs)."""
        counts = np.bincount(self.pool[1].numpy(), minlength=self.data.num_classes)
        return [int(c) for c in np.flatnonzero(counts < per_class)]

    def top1(self, scores, idx):
        return float((scores.argmax(1) == self.targets[idx]).double().mean())

    def _references(self):
        plain = {n: float((self.plain[torch.as_tensor(i)] == self.targets[torch.as_tensor(i)]).double().mean())
                 for n, i in self.eleven.items()}
        oracle = self.run(methods.OraclePrior(), None, self.eleven)
        refs = {"plain mean": 100 * np.mean(list(plain.values())), "oracle prior mean (uses test labels)":
                100 * np.mean(list(oracle["top1"].values()))}
        rows = {}
        tt = self.folder / "test_time_methods.json"
        if tt.exists():
            rows = dict(json.loads(tt.read_text())["protocols"]["distributions"])
        addendum = read_addendum(self.folder)  # the aggregation of a record made without it (add_views.py)
        if addendum is not None:
            rows.update(addendum["rows"].get("distributions", {}))
        if AGGREGATION in rows:
            res = rows[AGGREGATION]["results"]
            refs["aggregation mean"] = 100 * np.mean([r["top1"] for r in res.values()])
        return refs

    def split(self, per_class, draw):
        """(mean logits, targets) of a split of ``per_class`` images per class (seeded by ``draw``);
        None for the training images (the methods read them as their reference)."""
        z, y = self.pool
        if per_class == TRAINING:
            return None
        if per_class == "all":
            return z, y
        rng = np.random.RandomState(draw)
        keep = []
        for cls in range(self.data.num_classes):
            idx = np.flatnonzero(y.numpy() == cls)
            keep.append(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)))
        keep = torch.as_tensor(np.concatenate(keep))
        return z[keep], y[keep]

    def run(self, method, validation, sets):
        """{"top1": {set: top-1}, "diff": {set: top-1 - plain}, "calibrated_on", "images_per_class"} of
        ``method`` calibrated on ``validation`` (the training images are its reference)."""
        source = None if validation is None else (lambda: validation)
        info = dict(self.data.validation_info or {}, option="--sizes")
        out = {"top1": {}, "diff": {}}
        for d, (name, indices) in enumerate(sets.items()):
            ctx = context_for(method, self.saved, "cpu", name, indices, 1000 + d, self.targets, self.training, source)
            ctx.validation_info = info
            res = method.adapt(self.clean[ctx.indices], ctx)
            acc = self.top1(res["scores"], ctx.indices)
            out["top1"][name] = acc
            out["diff"][name] = acc - float((self.plain[ctx.indices] == self.targets[ctx.indices]).double().mean())
            out["calibrated_on"] = res.get("calibrated_on")
            out["images_per_class"] = res.get("calibration_images_per_class")
        return out


def evaluate(record, rows, size, draws):
    """{row: summary over the draws of a split of ``size`` per class (``TRAINING``: the training
    images)}; a row with the shipped config's settings is computed once and shown under both names."""
    out = {}
    n_draws = 1 if size in ("all", TRAINING) else draws
    done = {}
    for label, make, settings in rows:
        key = json.dumps(settings, sort_keys=True, default=str)
        if key in done:
            out[label] = dict(out[done[key]], same_as=done[key])
            continue
        per_draw = []
        t0 = time.perf_counter()
        for draw in range(n_draws):
            split = record.split(size, draw)
            method = make()
            eleven = record.run(method, split, record.eleven)
            dirichlet = record.run(method, split, record.dirichlet)
            cal = method._calibration or {}
            sel = cal.get("selection") or {}
            per_draw.append({"mean": 100 * np.mean(list(eleven["top1"].values())),
                             "worst": 100 * min(eleven["diff"].values()),
                             "worst_dirichlet": 100 * min(dirichlet["diff"].values()),
                             "dirichlet_mean": 100 * np.mean(list(dirichlet["top1"].values())),
                             "strength": sel.get("strength"), "min_divergence": sel.get("min_divergence"),
                             "temperature": cal.get("temperature"), "shrinkage": cal.get("kappa"),
                             "calibrated_on": eleven["calibrated_on"], "images_per_class": eleven["images_per_class"],
                             "eleven": eleven["top1"]})
        means = [p["mean"] for p in per_draw]
        entry = {"mean": float(np.mean(means)), "lowest_mean": float(min(means)),
                 "worst": float(min(p["worst"] for p in per_draw)),
                 "worst_dirichlet": float(min(p["worst_dirichlet"] for p in per_draw)),
                 "draws": per_draw, "seconds": time.perf_counter() - t0}
        agg = record.references.get("aggregation mean")
        low = -MARGIN - 1e-9  # differences are multiples of 1 / n: a loss of exactly the margin holds
        entry["holds"] = bool(entry["worst"] >= low and entry["worst_dirichlet"] >= low
                              and (agg is None or entry["mean"] >= agg))
        out[label] = entry
        done[key] = label
        strengths = sorted({p["strength"] for p in per_draw if p["strength"] is not None})
        where = size if size == TRAINING else f"{size:>4} per class"
        print(f"  {where} | {label:<36} | mean {entry['mean']:.2f} (lowest {entry['lowest_mean']:.2f})"
              f" | worst {entry['worst']:+.2f} | worst Dirichlet {entry['worst_dirichlet']:+.2f}"
              f" | strengths {strengths} | {'holds' if entry['holds'] else 'fails'}", flush=True)
    return out


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="*", help="record folders (default: every results/*/ with logits.npz)")
    p.add_argument("--sizes", default="10,20,50,100,all",
                   type=comma_ints("images per class", 1, words=("all",), example="10,20,all"),
                   help="validation images per class, comma-separated integers >= 1 or all")
    p.add_argument("--draws", type=positive_int, default=5)
    p.add_argument("--rows", default=DEFAULT_ROWS, help="ESTIMATOR:FAMILY,... (estimators: "
                   + ", ".join(ESTIMATORS) + "; families: " + ", ".join(BIAS_FAMILIES) + ")")
    p.add_argument("--training_images", action="store_true",
                   help="also EM and SafePrior calibrated on the training images (once per record)")
    p.add_argument("--data_dir", help="the records' data (for the whole left-over split; cached after one pass)")
    p.add_argument("--out", default="calibration_study.json",
                   help="one JSON for all records (recorded results are read-only: never inside results/NAME/)")
    args = p.parse_args(argv)
    target = check_target(Path(args.out), WRITER)  # before any work: not a link, not in a record, ours if it exists
    folders = [Path(r) for r in args.records] or sorted(f.parent for f in (ROOT / "results").glob("*/logits.npz"))
    sizes = args.sizes
    everything = {}
    for folder in folders:
        record = Record(folder, args.data_dir)
        rows, shipped = candidates(record.data.type_name, args.rows)
        if args.training_images and record.training is None:
            raise UserError(f"--training_images: {folder / 'logits.npz'} holds no training logits (test.py "
                            "--save_logits saves them)")
        print(f"{folder.name}: pool {record.pool_source}; references "
              + ", ".join(f"{k} {v:.2f}" for k, v in record.references.items()), flush=True)
        study = {"record": folder.name, "pool": record.pool_source, "draws": args.draws,
                 "references": record.references, "shipped_config": shipped, "margin": MARGIN, "sizes": {}}
        everything[folder.name] = study
        steps = [(str(size), study["sizes"], size, rows) for size in sizes]
        if args.training_images:
            steps.append(("training_images", study, TRAINING, training_rows()))
        for key, into, size, step_rows in steps:  # written after each step: a long run keeps what it finished
            short = record.short_classes(size) if isinstance(size, int) else []
            if short:
                print(f"note: {folder.name}: the pool holds fewer than {size} images of class(es) "
                      f"{', '.join(map(str, short))}; at {size} per class their split keeps all they have", flush=True)
            into[key] = evaluate(record, step_rows, size, args.draws)
            study["table"] = calibration_study_table({"study": study})
            write_json(target, {"written_by": WRITER, **everything}, indent=1, default=float)
        print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
