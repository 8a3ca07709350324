"""Every test-time method on every protocol, from one pass of clean logits (the views of
self-supervised aggregation aside): top-1 per test set, the mean over the eleven distributions, the
worst difference from the plain expert average, and seconds per method.

    python bench/studies/test_time_methods.py CHECKPOINT [-d DEVICE] [--data_dir PATH] [--skip_views]
        [--draws 10] [--size 2000] [--stream_batch 1,16,128] [--out RESULTS.json]
    python bench/studies/test_time_methods.py --logits SAVED_LOGITS.npz [--views VIEWS.npz [--views_only]]
        [--out RESULTS.json]

``--logits``: every method from a file of ``test.py --save_logits`` (or a recorded run's
``logits.npz``), in seconds, with no network and no data; self-supervised aggregation runs from
the view logits ``--save_views`` stored (its shared views, docs/methods.md#shared-views), or those
of ``--views`` (a record's ``views.npz``, added by bench/records/add_views.py), and is left out,
with a note naming that option, from a file without them. ``--views_only``: only the methods that
need views, beside the plain average, on the eleven distributions (the rows bench/records/add_views.py
adds to a record).

Methods: the plain expert average, each single expert, self-supervised aggregation (TADE's; with a
checkpoint the network runs on augmented views, shared by the eleven distributions; ``--skip_views``
leaves it out), EM, MAP, the
safe default (``configs/test_time_<family>_prior.json``'s SafePrior), its online form on the stream,
and the oracle prior (uses the test labels: a ceiling, never a method). Protocols: the eleven
distributions, Dirichlet shift (alpha 0.1, 1, 10), missing classes (30 %), streaming, and DirMixE's
protocol (three draws each of uniform, forward 100, backward 100).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT, output_path, write_report

from trainer.adaptation import ReferenceLogits, check_method, run_method, run_stream, validation_source
from trainer.build import build_test_time_method, load_trained, resolve_config
from trainer.saved_logits import load_logits
from trainer.forward import collect_expert_logits
from trainer.protocols import add_protocol_args, stream_batch_sizes, summarise, test_sets
from utils.cli import ArgumentParser
from utils.errors import UserError, cli_entry
from utils.parse_config import ConfigParser
import trainer.test_time as methods

ABBREV = {"forward": "F", "backward": "B", "uniform": "Uni"}


def family_config(kind, dataset_type):
    """configs/test_time_<family>_<kind>.json for a data module's type (ours, the earlier names, the
    reference release's ``Imbalance*`` names, and ``folder`` for an image folder)."""
    name = dataset_type.lower()
    name = name[len("imbalance"):] if name.startswith("imbalance") else name
    for family in ("cifar100", "cifar10", "digits", "imagenet_lt", "places_lt", "inat"):
        if name.startswith(family.replace("_", "")) or (family == "inat" and name.startswith("inaturalist")):
            return ROOT / "configs" / f"test_time_{family}_{kind}.json"
    if name.startswith("imagefolder"):  # a user's own image folder (ImageFolderLTDataModule)
        return ROOT / "configs" / f"test_time_folder_{kind}.json"
    raise UserError(f"no test-time config family for data_loader.type {dataset_type}")


TRAINING_CALIBRATION = {"calibration": "training", "source_prior": "reference", "temperature": "fit", "bias": True}


def training_calibrated():
    """(name, factory) of the label-shift methods calibrated on the training images instead of a
    validation split: EM, and SafePrior at a fixed strength and gate."""
    return [("EM", lambda: methods.EMPrior(**TRAINING_CALIBRATION)),
            ("SafePrior", lambda: methods.SafePrior(**TRAINING_CALIBRATION, strength=0.75, min_divergence=0.05))]


def method_list(dataset, num_experts, skip_views):
    """(label, method) rows: the plain average, each expert, the aggregation (unless skipped, or of one expert), the
    label-shift methods calibrated on the validation split (the shipped prior config's settings)
    and, beside them, on the training images; the oracle rows last."""
    prior_cfg = ConfigParser(json.loads(family_config("prior", dataset).read_text()), "prior config")
    shared = {k: v for k, v in prior_cfg["test_time"]["args"].items()
              if k in ("calibration", "source_prior", "temperature", "bias", "tol", "max_iter")}
    out = [("expert average", methods.ExpertAverage())]
    out += [(f"expert {k + 1} alone", methods.SingleExpert(k)) for k in range(num_experts)]
    if not skip_views and num_experts > 1:  # one expert: nothing to aggregate
        out.append(("self-supervised aggregation (TADE)", build_test_time_method(family_config("tade", dataset))[0]))
    out += [("EM", methods.EMPrior(**shared)), ("MAP", methods.MAPPrior(**shared)),
            ("SafePrior (default)", prior_cfg.init_obj("test_time", methods)),
            *[(f"{name}, training-image calibration", make()) for name, make in training_calibrated()],
            ("oracle prior (uses test labels)", methods.OraclePrior()),
            ("oracle prior, calibrated (uses test labels)", methods.OraclePrior(**shared))]
    return out


def short(name):
    for word, s in ABBREV.items():
        if name.startswith(word):
            return s + name[len(word):]
    return name


def table(rows, names, plain_key="expert average"):
    head = ["method", *[short(n) for n in names], "mean", "worst vs plain", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain = rows[plain_key]["results"]
    for label, entry in rows.items():
        res = entry["results"]
        acc = [100 * res[n]["top1"] for n in names]
        worst = min(100 * (res[n]["top1"] - plain[n]["top1"]) for n in names)
        lines.append(f"| {label} | " + " | ".join(f"{a:.1f}" for a in acc)
                     + f" | {sum(acc) / len(acc):.2f} | {worst:+.2f} | {entry['seconds']:.1f} |")
    return "\n".join(lines)


def summary_table(rows):
    groups = list(next(iter(rows.values()))["summary"])
    head = ["method", *[f"{g} mean +- std" for g in groups], "worst draw vs plain", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain = rows["expert average"]["results"]
    for label, entry in rows.items():
        s, res = entry["summary"], entry["results"]
        cells = [f"{100 * s[g]['top1_mean']:.1f} +- {100 * s[g]['top1_std']:.1f}" for g in groups]
        worst = min(100 * (res[n]["top1"] - plain[n]["top1"]) for n in res)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst:+.2f} | {entry['seconds']:.1f} |")
    return "\n".join(lines)


WRITER = "bench/studies/test_time_methods.py"


def checked(all_methods, trained, source):
    """``all_methods``, once each has accepted the data and the model (trainer/adaptation.check_method)."""
    for label, method in all_methods:
        check_method(method, trained, f"{source}: {label}")
    return all_methods


def _legacy(payload):
    """A report of this tool written before reports said ``written_by``."""
    return isinstance(payload.get("protocols"), dict) and "validation_info" in payload


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--logits",
                   help="saved logits (test.py --save_logits, results/*/logits.npz) instead of a checkpoint")
    p.add_argument("--views", help="with --logits: the view logits beside them (a record's views.npz)")
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--data_dir")
    p.add_argument("--skip_views", action="store_true", help="leave out self-supervised aggregation (slow)")
    p.add_argument("--views_only", action="store_true",
                   help="only the methods that need views (and the plain average), on the eleven distributions")
    p.add_argument("--out")
    add_protocol_args(p)
    p.set_defaults(distributions="all")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.logits is None):
        p.error("give a CHECKPOINT or --logits FILE (one of them)")
    if args.views and not args.logits:
        p.error("--views FILE goes with --logits FILE (the clean logits the views belong to)")
    if args.views_only and (args.skip_views or (args.logits and not args.views)):
        p.error("--views_only runs the methods that need views: give a CHECKPOINT, or --logits FILE with --views "
                "FILE, and no --skip_views")
    sizes = stream_batch_sizes(args)  # checked before any work
    out = output_path(args.out, args.checkpoint or args.logits, "test_time_methods.json", WRITER, _legacy)
    if args.logits:
        trained = load_logits(args.logits, args.views)  # .data and .net: what the methods read
        if trained.views is None and not args.skip_views:
            print(f"note: {args.logits} holds no view logits: self-supervised aggregation is left out (add them with "
                  "test.py --save_logits --save_views)", flush=True)
        skip_views = args.skip_views or trained.views is None
        all_methods = checked(method_list(trained.data.type_name, trained.net.num_experts, skip_views=skip_views),
                              trained, args.logits)
        clean, targets = trained.splits["test"]
        reference, validation = trained.source("training"), trained.source("validation")
        source = {"logits": args.logits, **({"views": args.views} if args.views else {})}
    else:
        overrides = [("data_loader.args.data_dir", args.data_dir, "--data_dir")]
        dataset = resolve_config(None, args.checkpoint)[0]["data_loader"]["type"]
        prior_tt = json.loads(family_config("prior", dataset).read_text())["test_time"]
        if "validation" in prior_tt:  # the validation split the shipped prior config calibrates on
            overrides.append(("data_loader.args.validation", prior_tt["validation"], "prior config"))
        trained = load_trained(args.checkpoint, None, overrides, args.device)
        # the methods (and their configs) are checked before the long pass
        all_methods = checked(method_list(trained.config["data_loader"]["type"], trained.net.num_experts,
                                          args.skip_views), trained, args.checkpoint)
        start = time.perf_counter()
        clean, targets = collect_expert_logits(trained.net, trained.data.test_loader(device=args.device),
                                               args.device, trained.perf)
        print(f"one pass over the test set: {time.perf_counter() - start:.1f} s", flush=True)
        reference = ReferenceLogits(trained, args.device)  # the training images' logits, computed once
        validation = validation_source(trained, args.device)
        source = {"checkpoint": args.checkpoint}
    if args.views_only:
        all_methods = [(label, method) for label, method in all_methods
                       if method.needs_views or isinstance(method, methods.ExpertAverage)]
    report = {**source, "validation_info": trained.data.validation_info, "protocols": {}}
    protocols = ("distributions",) if args.views_only else ("distributions", "dirichlet", "missing", "streaming",
                                                            "dirmixe")
    for protocol in protocols:
        args.protocol = protocol
        rows = {}
        for label, method in all_methods:
            if protocol == "streaming" and type(method).online is methods.TestTimeMethod.online:
                continue  # no online form (self-supervised aggregation)
            if protocol != "distributions" and method.needs_views:
                continue  # minutes per test set: the eleven distributions only
            t0 = time.perf_counter()
            if protocol == "streaming":
                results = run_stream(method, trained, clean, targets, sizes, args.device, args.protocol_seed,
                                     reference=reference, validation=validation)
            else:
                results = run_method(method, trained, clean, targets, test_sets(args, trained.data), args.device,
                                     reference=reference, validation=validation)
            seconds = time.perf_counter() - t0
            rows[label] = {"results": results, "summary": summarise(results), "seconds": seconds}
            print(f"  {protocol}: {label} {seconds:.1f} s", flush=True)
        names = list(rows["expert average"]["results"])
        text = summary_table(rows) if protocol in ("dirichlet", "missing", "dirmixe") else table(rows, names)
        print(f"\n{protocol} (top-1 %)\n{text}\n", flush=True)
        report["protocols"][protocol] = {k: {"results": v["results"], "summary": v["summary"],
                                             "seconds": v["seconds"]} for k, v in rows.items()}
        report["protocols"][protocol]["table"] = text
    write_report(out, report, WRITER)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
