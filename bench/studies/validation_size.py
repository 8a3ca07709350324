"""How many validation images per class the label-shift methods need: worst and mean against the
plain expert average for validation splits of 10, 20, 50, 100 and all left-over images per class,
and beside them the same methods calibrated on the training images (CIFAR-LT, Digits-LT).

    python bench/studies/validation_size.py CHECKPOINT [--data_dir PATH] [-d DEVICE] [--sizes 10,20,50,100,all]
        [--draws 10] [--out RESULTS.json]

One pass each over the test set, the whole left-over split and the training images; every smaller
split is a subset of the whole one (the splits are nested), so each size costs no network time.
Rows: the shipped SafePrior (``configs/test_time_<family>_prior.json``) and EM with its
calibration. Columns: mean over the eleven distributions, the worst of the eleven against the plain
average, and the worst Dirichlet draw (alpha 0.1, 1, 10; ``--draws`` each, 2000 images) against it.
"""
import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.studies.test_time_methods import TRAINING_CALIBRATION, family_config
from trainer.adaptation import ReferenceLogits, run_method
from bench.common import checkpoint_parser, output_path, write_report
from trainer.build import load_trained
from trainer.validation_cache import validation_logits
from trainer.forward import collect_expert_logits
from trainer.protocols import add_protocol_args, test_sets
from utils.parse_config import ConfigParser
import trainer.test_time as methods
from utils.errors import cli_entry

WRITER = "bench/studies/validation_size.py"


def prior_methods(dataset):
    cfg = ConfigParser(json.loads(family_config("prior", dataset).read_text()), "prior config")
    shared = {k: v for k, v in cfg["test_time"]["args"].items()
              if k in ("calibration", "source_prior", "temperature", "bias", "tol", "max_iter")}
    return {"SafePrior (shipped)": lambda: cfg.init_obj("test_time", methods),
            "EM": lambda: methods.EMPrior(**shared)}


def score(method, trained, clean, targets, sets, device, reference, validation):
    res = run_method(method, trained, clean, targets, sets, device, reference=reference, validation=validation)
    diffs = [r["top1"] - r["top1_average"] for r in res.values()]
    return res, sum(r["top1"] for r in res.values()) / len(res), min(diffs)


@cli_entry
def main(argv=None):
    p = checkpoint_parser(__doc__)
    p.add_argument("--sizes", default="10,20,50,100,all")
    add_protocol_args(p)
    args = p.parse_args(argv)
    out = output_path(args.out, args.checkpoint, "validation_size.json", WRITER,
                      legacy=lambda r: isinstance(r.get("rows"), dict) and "checkpoint" in r)
    sizes = [s if s == "all" else int(s) for s in args.sizes.split(",")]
    overrides = [("data_loader.args.data_dir", args.data_dir, "--data_dir"),
                 ("data_loader.args.validation", {"per_class": "all"}, "validation_size.py")]
    trained = load_trained(args.checkpoint, None, overrides, args.device)
    data = trained.data
    dataset = trained.config["data_loader"]["type"]
    start = time.perf_counter()
    clean, targets = collect_expert_logits(trained.net, data.test_loader(device=args.device), args.device,
                                           trained.perf)
    val_logits, val_targets = validation_logits(trained, args.device)  # cached beside the checkpoint
    reference = ReferenceLogits(trained, args.device)
    print(f"passes: {time.perf_counter() - start:.1f} s", flush=True)
    args.protocol, args.distributions = "distributions", "all"
    eleven = test_sets(args, data)
    args.protocol = "dirichlet"
    draws = test_sets(args, data)
    rows, report = [], {"checkpoint": args.checkpoint, "validation_info": data.validation_info, "rows": {}}
    settings = [(f"validation, {k} per class", k) for k in sizes] + [("training images", None)]
    for label, k in settings:
        if k is None:
            validation = None
        else:
            pos = torch.as_tensor(data.validation_subset(k))
            subset = (val_logits[pos], val_targets[pos])
            validation = functools.partial(tuple, subset)  # the context calls it for (logits, targets)
        for name, make in prior_methods(dataset).items():
            if k is None:
                method = (methods.SafePrior(**TRAINING_CALIBRATION, strength=0.75, min_divergence=0.05)
                          if name.startswith("SafePrior") else methods.EMPrior(**TRAINING_CALIBRATION))
            else:
                method = make()
            t0 = time.perf_counter()
            res, mean, worst = score(method, trained, clean, targets, eleven, args.device, reference, validation)
            dres, _, worst_draw = score(method, trained, clean, targets, draws, args.device, reference, validation)
            seconds = time.perf_counter() - t0
            plain_mean = sum(r["top1_average"] for r in res.values()) / len(res)
            sel = next(iter(res.values())).get("selection", {})
            images = sum(next(iter(res.values())).get("calibration_images_per_class", []))
            rows.append(f"| {name} | {label} ({images} images) | {100 * mean:.2f} | {100 * plain_mean:.2f} | "
                        f"{100 * worst:+.2f} | {100 * worst_draw:+.2f} | {sel.get('strength', '')} | {seconds:.1f} |")
            report["rows"][f"{name}, {label}"] = {"eleven": res, "dirichlet": dres, "mean": mean,
                                                  "plain_mean": plain_mean, "worst": worst,
                                                  "worst_draw": worst_draw, "selection": sel, "seconds": seconds}
            print(rows[-1], flush=True)
    head = ("| method | calibrated on | mean of 11 | plain mean | worst of 11 vs plain | worst Dirichlet draw vs plain "
            "| strength | seconds |\n|---|---|---|---|---|---|---|---|")
    write_report(out, report, WRITER, table=head + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
