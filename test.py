"""Evaluate a checkpoint on every test class distribution in one pass.

    python test.py -r CHECKPOINT [-c CONFIG] [-d DEVICE] [--data_dir PATH]
                   [--distributions all|uniform|NAME,NAME...] [--out PATH] [--bs N]
                   [--save_logits [--logits_dtype float16] [--save_views [--view_epochs N] [--view_seed S]]]
                   [--macs]
                   [--protocol distributions|dirichlet|missing|streaming|dirmixe] [--alpha A,..] [--draws K]
                   [--size N] [--missing_fraction F,..] [--stream_batch B,..] [--protocol_seed S]
                   [--ir R] [--concentration A]

Each test image's expert logits are computed once (test transform); every distribution
(forward50 ... uniform ... backward50), or every subset of another protocol, is an index subset of
the test set, scored from those logits: top-1, many/medium/few and the ensemble's calibration.

``--save_views`` adds the expert logits of ``--view_epochs`` pairs of augmented views of every test
image to the saved logits (the shared views of self-supervised aggregation, docs/methods.md#shared-views),
so ``test_train.py --logits`` runs the aggregation from the file without the network or the images.
"""
import argparse
from pathlib import Path

import numpy as np

from base.base_model import average_experts
from model.calibration import bins_as_data, distribution_calibration
from trainer.adaptation import shared_views
from trainer.build import load_trained
from trainer.evaluation import distribution_metrics
from trainer.forward import collect_expert_logits
from trainer.protocols import (add_protocol_args, check_protocol_options, format_summary, stream_batch_sizes, summarise,
                                test_sets)
from trainer.saved_logits import save_logits
from trainer.validation_cache import validation_logits
from utils.cli import ArgumentParser, add_evaluation_args, nonnegative_int, positive_int
from utils.errors import cli_entry
from utils.macs import macs_per_image
from utils.reliability_diagram import plot_reliability
from utils.result_path import check_result_path
from utils.results import format_table, write_results
from utils.safe_write import json_text
from utils.runtime import parse_device


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="training config (default: the one stored in the checkpoint)")
    add_evaluation_args(p)
    p.add_argument("--save_logits", action="store_true",
                   help="also save the per-expert logits of the test set, the validation split and the training "
                        "images (OUT_logits.npz; bench/studies/test_time_methods.py --logits runs post-hoc methods "
                        "on it)")
    p.add_argument("--logits_dtype", default="float32", choices=("float32", "float16"),
                   help="storage type of --save_logits (float16 halves the file)")
    p.add_argument("--save_views", action="store_true",
                   help="with --save_logits: also save the expert logits of augmented views of every test image, "
                        "epoch by epoch (self-supervised aggregation then runs from the file: test_train.py --logits)")
    p.add_argument("--view_epochs", type=positive_int, default=5,
                   help="--save_views: epochs of views (5: the shipped test-time configs' epochs)")
    p.add_argument("--view_seed", type=nonnegative_int, default=1,
                   help="--save_views: the seed the views are drawn from (1: the test-time configs' seed)")
    p.add_argument("--macs", action="store_true", help="print multiply-accumulates per image (G)")
    add_protocol_args(p)
    return p


CALIBRATION_KEYS = ("ece", "mce", "nll", "class_tv", "class_kl")


def default_out(checkpoint, protocol="distributions"):
    path = Path(checkpoint)
    suffix = "" if protocol == "distributions" else f"_{protocol}"
    return path.with_name(f"eval_{path.stem}{suffix}.json")


def result_files(out, save_logits=False):
    """The files written beside the results JSON: CSV, reliability plot (and the logits)."""
    files = [out.with_suffix(".csv"), out.with_name(out.stem + "_reliability.png")]
    return files + ([out.with_name(out.stem + "_logits.npz")] if save_logits else [])


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_protocol_options(parser, args)
    device, _ = parse_device(args.device)
    if args.save_views and not args.save_logits:
        parser.error("--save_views adds view logits to the saved logits; expected it with --save_logits")
    out = Path(args.out) if args.out else default_out(args.resume, args.protocol)
    check_result_path(out, "test.py", result_files(out, args.save_logits))  # before any work
    trained = load_trained(args.resume, args.config, parser.overrides(args), device)
    net, config, data = trained.net, trained.config, trained.data
    if args.macs:
        size = getattr(data, "image_size", 32)
        print(f"MACs per image ({config['arch']['type']}, {net.num_experts} expert(s), {size} px): "
              f"{macs_per_image(net, size, device):.2f} G")
    if args.protocol == "streaming":
        # The plain average has no state: a stream in any order and batch size predicts every image
        # as one pass does, so each batch size's row is the whole test set's.
        everything = np.arange(len(data.test_set))
        selected = {f"stream_b{b}": everything for b in stream_batch_sizes(args)}
    else:
        selected = test_sets(args, data)
    names = list(selected)
    logits, targets = collect_expert_logits(net, data.test_loader(device=device), device, trained.perf)
    preds = average_experts(logits).argmax(1)
    results = distribution_metrics(preds, targets, selected, data.num_classes, data.shot_masks())
    calibration = distribution_calibration(logits, targets, selected)  # the ensemble, from the same logits
    for name, row in results.items():
        row.update({k: calibration[name][k] for k in CALIBRATION_KEYS})
    print(format_table(results, extra_rows=("ece", "class_tv"), number_rows=("nll",)))
    summary = summarise(results, keys=("top1", "ece"))
    if summary:
        print(format_summary(summary))
    epoch = trained.checkpoint.get("epoch") if isinstance(trained.checkpoint, dict) else None
    payload = {"written_by": "test.py", "checkpoint": str(args.resume), "checkpoint_epoch": epoch,
               "config": config.config,
               "protocol": args.protocol, "distributions": results, "summary": summary,
               "reliability_bins": {n: bins_as_data(calibration[n]["bins"]) for n in names}}
    json_text(payload, what=out)  # a NaN is refused before anything is written
    written = []
    if args.save_logits:  # every pass first; the files are written together at the end
        splits = {"test": (logits, targets)}
        if data.has_validation:
            splits["validation"] = validation_logits(trained, device)  # cached beside the checkpoint
        splits["training"] = collect_expert_logits(net, data.reference_loader(device=device), device, trained.perf,
                                                   desc="training images")
        meta = {"checkpoint": str(args.resume), "checkpoint_epoch": epoch, "data_loader": config["data_loader"]["type"],
                "num_experts": net.num_experts, "validation_info": data.validation_info, "protocol": args.protocol}
        views = None
        if args.save_views:  # every test image's views, so any protocol's sets can read them
            made = shared_views(trained, device, np.arange(len(targets)), args.view_seed)(num_workers=data.num_workers)
            views = (made.stacked(args.view_epochs), made.meta)
        written.append(save_logits(result_files(out, True)[2], splits, data.cls_num_list, selected, meta,
                                   dtype=args.logits_dtype, views=views))
    shown = "uniform" if "uniform" in names else names[0]
    png = plot_reliability(calibration[shown], result_files(out)[1],
                           title=f"{Path(args.resume).name}, {shown}: ensemble reliability")
    json_path, csv_path = write_results(payload, out, extra_columns=CALIBRATION_KEYS, beside=[png, *written])
    print(f"wrote {json_path}, {csv_path} and {png} ({shown})")
    for path in written:
        view_note = f"; view logits of {args.view_epochs} epoch(s)" if args.save_views else ""
        print(f"wrote {path} (per-expert logits [N, E, C] and targets of {', '.join(splits)}; distribution indices"
              f"{view_note})")


if __name__ == "__main__":
    main()
