"""Test-time adaptation on every test distribution, or predictions on unlabeled images, with the
method the test-time config names.

    python test_train.py -c TEST_TIME_CONFIG -r CHECKPOINT [-d DEVICE] [--data_dir PATH]
                         [--distributions all|uniform|NAME,...] [--out PATH] [--epochs N] [--bs N]
                         [--lr X] [--online] [--seed N] [--set KEY.PATH=VALUE ...]
                         [--protocol distributions|dirichlet|missing|streaming|dirmixe] [--alpha A,..] [--draws K]
                         [--size N] [--missing_fraction F,..] [--stream_batch B,..] [--protocol_seed S]
                         [--ir R] [--concentration A]
    python test_train.py -c TEST_TIME_CONFIG -r CHECKPOINT --images DIR|LIST.txt [--out FOLDER] [--online]
                         [--strict] [--bs N] [-d DEVICE]
    python test_train.py -c TEST_TIME_CONFIG --logits SAVED_LOGITS.npz [--out PATH] [--distributions ...]
                         [--epochs N] [--bs N] [--lr X] [--online] [--seed N] [--set ...] [--protocol ...]

``test_time.type`` names a class of ``trainer/test_time/`` (default: TADE's self-supervised
aggregation, ``SelfSupervisedAggregation``) built with ``test_time.args``. The clean expert logits
of the test set are computed once; the method then adapts to each distribution's unlabeled images
(a method that needs augmented views also runs the network on them) and its predictions are
scored beside the plain expert average. The network config comes from the checkpoint.

With ``--images`` no label is read: every image below DIR (or each path of LIST.txt) is predicted
by the method adapted to those images (``SafePrior`` recommended: configs/test_time_folder_prior.json),
written as FOLDER/predictions.csv (one row per image: path, predicted class and probability, the
top-5 classes and probabilities, the plain expert average's prediction) and FOLDER/summary.json
(the method and its settings, what it estimated, how many images, how long). An unreadable image is
reported and left out (``--strict``: an error before anything is written). ``--online`` scores the
images as a stream in batches of ``--bs``, each with what was learnt from the batches before it.

With ``--logits`` the method runs from a file of ``test.py --save_logits`` (or a record's
``logits.npz``), with no network and no images: the label-shift methods from the clean logits, the
self-supervised aggregation from the view logits ``--save_views`` stored (its shared views).
"""
import argparse
from pathlib import Path

import numpy as np

from base.base_model import average_experts
from base.base_test_time import TestTimeMethod
from trainer import unlabeled
from trainer.adaptation import check_method, run_method, run_stream, shared_views
from trainer.build import DEFAULT_TEST_TIME_METHOD as DEFAULT_METHOD
from trainer.build import build_test_time_method, load_trained, read_test_time_config
from trainer.unlabeled import has_online_form
from trainer.forward import collect_expert_logits
from trainer.saved_logits import load_logits
from trainer.protocols import (add_protocol_args, check_protocol_options, format_summary, stream_batch_sizes, summarise,
                                test_sets)
from utils.cli import ArgumentParser, add_evaluation_args, finite_float
from utils.errors import UserError, cli_entry
from utils.known_keys import known_arguments
from utils.path_text import path_text
from utils.result_path import check_result_path
from utils.safe_write import atomic_file, json_text
from utils.results import format_table, write_results
from utils.runtime import parse_device

def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="test-time config (configs/test_time_*.json)")
    # add_evaluation_args's --bs also sets test_time.args.batch_size where the method has one
    add_evaluation_args(p, checkpoint_required=False)
    p.add_argument("--logits", metavar="FILE.npz",
                   help="run from saved logits (test.py --save_logits; --save_views for self-supervised aggregation) "
                        "instead of a checkpoint: no network, no images")
    p.add_override("--epochs", type=int, key="test_time.args.epochs", target="test_time", help="test-time epochs")
    p.add_override("--lr", type=finite_float, key="test_time.args.optimizer.args.lr", target="test_time")
    p.add_override("--seed", type=int, key="test_time.seed", target="test_time")
    p.add_argument("--online", action="store_true",
                   help="self-supervised aggregation: one streaming pass; classify each batch after its update")
    p.add_set_option(target="test_time", what="test-time config")
    add_protocol_args(p)
    p.add_argument("--images", metavar="DIR|LIST.txt",
                   help="predict these unlabeled images (every image below DIR, or one path a line) instead of "
                        "scoring the test distributions; --out is then a folder (predictions.csv, summary.json)")
    p.add_argument("--strict", action="store_true", help="with --images: an unreadable image is an error")
    return p


def load_method(args, parser):
    overrides = parser.overrides(args, target="test_time")
    if args.bs is not None and "batch_size" in read_test_time_config(args.config)["test_time"]["args"]:
        overrides.append(("test_time.args.batch_size", args.bs, "--bs"))
    if args.online:
        method, tt = build_test_time_method(args.config, overrides)
        if args.images and has_online_form(method):  # a stream of batches through its online form
            return method, tt
        accepted = known_arguments(type(method))  # None: cannot be known, the method checks its own arguments
        if accepted is not None and "online" not in accepted:
            raise UserError(f"--online: test_time.type {tt['test_time']['type']} (config {args.config}) has no online "
                            "switch; on the test distributions a method with an online form runs on a stream with "
                            "--protocol streaming, and on unlabeled images with --images DIR --online")
        overrides.append(("test_time.args.online", True, "--online"))
    return build_test_time_method(args.config, overrides)


def trained_for(args, parser, tt, device):
    """The checkpoint's network and data module (the test-time config's validation size applied)."""
    overrides = parser.overrides(args)
    if "validation" in tt["test_time"]:  # this method's own validation-split size (CIFAR-LT, Digits-LT)
        overrides.append(("data_loader.args.validation", tt["test_time"]["validation"],
                          f"config {args.config}: test_time.validation"))
    return load_trained(args.resume, None, overrides, device)


def saved_for(args, parser, tt):
    """--logits: the saved logits (trainer/saved_logits.py) in place of a checkpoint; options that
    need the network or the data are refused."""
    for option in ("data_dir", "no_fold_batchnorm"):
        if getattr(args, option) is not None:
            parser.error(f"--{option} applies to a checkpoint (-r); --logits runs without the network and the data")
    saved = load_logits(args.logits)
    if "validation" in tt["test_time"]:
        held = (f"{(saved.data.validation_info or {}).get('per_class', 'unknown')} per class"
                if saved.data.has_validation else "the file holds none")
        print(f"note: --logits: the validation split is the one saved in {args.logits} ({held}), not "
              "test_time.validation")
    return saved


def predict_images(args, parser, method, tt):
    """--images: predictions.csv and summary.json for unlabeled images (trainer/unlabeled.py)."""
    import time

    paths = unlabeled.image_paths(args.images)
    out = Path(args.out) if args.out else Path(args.resume).parent / f"predictions_{Path(args.images).stem}"
    inputs = paths + [args.images, args.resume, args.config]
    csv_path, summary_path = unlabeled.check_out_folder(out, inputs)  # before any work
    device, _ = parse_device(args.device)
    start = time.perf_counter()
    trained = trained_for(args, parser, tt, device)
    check_method(method, trained, f"config {args.config}: test_time.args")
    names = unlabeled.class_names(trained)
    images = unlabeled.collect_image_logits(trained, paths, device, batch_size=args.bs, strict=args.strict)
    seed = tt.get_seed("test_time.seed", 1)
    online = bool(args.online)
    scores, facts = unlabeled.run_on_images(method, trained, images, device, seed=seed, online=online,
                                            batch_size=args.bs)
    average = average_experts(images.logits)
    table = unlabeled.prediction_table(images.paths, scores, average, names)
    elapsed = time.perf_counter() - start
    summary = {"checkpoint": str(args.resume), "images": path_text(args.images),
               "method": method.label(), "test_time_config": tt["test_time"], "online": online,
               "num_images": len(paths), "num_predicted": len(images.paths), "num_unreadable": len(images.unreadable),
               "unreadable": [path_text(u) for u in images.unreadable], "class_names": names,
               "estimate": unlabeled.describe_estimate(facts, names), "facts": facts,
               "predicted_counts": unlabeled.predicted_counts(scores, names),
               "average_predicted_counts": unlabeled.predicted_counts(average, names),
               "agreement_with_average": float((scores.argmax(1) == average.argmax(1)).double().mean()),
               "seconds": {"forward": round(images.seconds, 3), "total": round(elapsed, 3)}}
    unlabeled.write_predictions(csv_path, summary_path, table, summary)
    verdict = summary["estimate"]
    shift = f"; shift detected: {verdict['shift_detected']}" if "shift_detected" in verdict else ""
    weights = f"; expert weights {verdict['expert_weights']}" if "expert_weights" in verdict else ""
    print(f"{method.label()}: {len(images.paths)} image(s) predicted, {len(images.unreadable)} unreadable{shift}"
          f"{weights}; agrees with the plain average on {100 * summary['agreement_with_average']:.1f}%; "
          f"{elapsed:.1f} s")
    print(f"wrote {csv_path} and {summary_path}")


def plot_results(results, path, title):
    """Top-1 of the method beside the plain expert average across the distributions (forward ->
    backward), and the learned expert weights when the method has them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax1 = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    lines = []
    if all("weights" in results[n] for n in names):
        weights = np.array([results[n]["weights"] for n in names])
        for k in range(weights.shape[1]):
            lines += ax1.plot(names, weights[:, k], marker="o", label=f"expert {k + 1} weight")
        ax1.set_ylabel("learned weight")
        ax1.set_ylim(0, 1)
        acc_axis = ax1.twinx()
    else:
        acc_axis = ax1
    ax1.tick_params(axis="x", rotation=45)
    lines += acc_axis.plot(names, [100 * results[n]["top1"] for n in names], "k-", marker="s", label="method top-1 (%)")
    lines += acc_axis.plot(names, [100 * results[n]["top1_average"] for n in names], "k:", marker="x",
                           label="expert average top-1 (%)")
    acc_axis.set_ylabel("top-1 (%)")
    ax1.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    ax1.set_title(title)
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)


def default_out(checkpoint, method_type, online, protocol="distributions"):
    stem = Path(checkpoint).stem
    suffix = "" if method_type == DEFAULT_METHOD else f"_{method_type}"
    suffix += "" if protocol == "distributions" else f"_{protocol}"
    return Path(checkpoint).with_name(f"test_time_{stem}{suffix}{'_online' if online else ''}.json")


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_protocol_options(parser, args)
    method, tt = load_method(args, parser)
    if (args.resume is None) == (args.logits is None):
        parser.error("give a checkpoint with -r CHECKPOINT or saved logits with --logits FILE (one of them)")
    if args.images:
        if args.logits:
            parser.error("--images passes the images through the network; it takes -r CHECKPOINT, not --logits")
        return predict_images(args, parser, method, tt)
    if args.strict:
        raise UserError("--strict applies to --images (unreadable unlabeled images)")
    seed = tt.get_seed("test_time.seed", 1)
    online = bool(tt.get("test_time.args.online", False))
    source = args.resume or args.logits
    out = Path(args.out) if args.out else default_out(source, tt["test_time"]["type"], online, args.protocol)
    check_result_path(out, "test_train.py", [out.with_suffix(".csv"), out.with_suffix(".png")])  # before any work
    device, _ = parse_device(args.device)
    if args.logits:
        trained = saved_for(args, parser, tt)
    else:
        trained = trained_for(args, parser, tt, device)
    data = trained.data
    check_method(method, trained, f"config {args.config}: test_time.args")
    label = method.label()
    if method.uses_test_labels:
        print(f"{label}: this method reads the test labels; its figures are a ceiling, not a result")
    if args.protocol == "streaming":
        batch_sizes = stream_batch_sizes(args)
        if type(method).online is TestTimeMethod.online:  # the contract's default: no online form
            raise UserError(f"--protocol streaming: test_time.type {tt['test_time']['type']} cannot run on a stream "
                            "(it has no online form)")
    else:
        sets = test_sets(args, data)
    if args.logits:
        clean_logits, targets = trained.splits["test"]
        sources = {"reference": trained.source("training"), "validation": trained.source("validation")}
    else:
        clean_logits, targets = collect_expert_logits(trained.net, data.test_loader(device=device), device,
                                                      trained.perf, desc="clean test images")
        sources = {}
    views = None
    if method.needs_views and args.protocol != "streaming":  # one set of views for every test set of the call
        views = shared_views(trained, device, np.concatenate([np.asarray(i) for i in sets.values()]), seed)

    def report(name, row, out):
        facts = f"weights {', '.join(f'{v:.2f}' for v in row['weights'])} after {row['epochs_run']} epoch(s); " \
            if "weights" in row and "epochs_run" in row else ""
        print(f"{name}: {facts}top-1 {100 * row['top1']:.1f} (expert average {100 * row['top1_average']:.1f})",
              flush=True)

    if args.protocol == "streaming":
        results = run_stream(method, trained, clean_logits, targets, batch_sizes, device, args.protocol_seed, seed,
                             **sources)
        for name, row in results.items():
            report(name, row, None)
    else:
        results = run_method(method, trained, clean_logits, targets, sets, device, seed=seed, report=report,
                             views=views, **sources)
    summary = summarise(results)
    if summary:
        print(format_summary(summary))
    extra = ["top1_average"] + [k for k in ("epochs_run", "top1_online") if all(k in r for r in results.values())]
    num_weights = len(next(iter(results.values())).get("weights", []))
    weight_rows = [f"w{k + 1}" for k in range(num_weights)]
    table = {n: dict(r, **{f"w{k + 1}": r["weights"][k] for k in range(num_weights)}) for n, r in results.items()}
    print(format_table(table, extra_rows=extra, weight_rows=weight_rows))
    payload = {"written_by": "test_train.py", "checkpoint": str(args.resume or trained.meta.get("checkpoint")),
               "method": label, "config": trained.config.config if not args.logits else None,
               "test_time_config": tt["test_time"], "online": online, "protocol": args.protocol,
               "distributions": results, "summary": summary}
    if args.logits:
        payload["logits"] = str(args.logits)
    if views is not None and hasattr(views, "describe") and views.describe():
        payload["views"] = views.describe()  # how the shared views were made (none read: per_set)
    extra_columns = extra + [k for k in ("weights", "prior") if all(k in r for r in results.values())]
    json_text(payload, what=out)  # a NaN is refused before anything is written
    png = out.with_suffix(".png")
    plot_results(results, png, f"{label} across test distributions")
    json_path, csv_path = write_results(payload, out, extra_columns=extra_columns, beside=[png])
    print(f"wrote {json_path}, {csv_path} and {png}")


if __name__ == "__main__":
    main()
