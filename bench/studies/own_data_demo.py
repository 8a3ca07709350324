"""Your own data, shown on real images: predictions on unlabeled shifted sets, scored against the
labels that were withheld from them.

    python bench/studies/own_data_demo.py -r RUN/model_best.pth --work DIR [-c configs/test_time_folder_prior.json]
        [--compare configs/test_time_folder_tade.json] [--distributions forward50,uniform,backward50]
        [--out FILE] [--data_dir PATH] [-d DEVICE]

For each named test distribution of the checkpoint's image folder (data_loader/image_folder.py,
built from ``test/``), its images are copied into DIR/unlabeled/NAME/ under anonymous names
(``000000.png`` ...; the class folder, the only place a label lives, is dropped) and their labels
into DIR/withheld/NAME.csv. ``test_train.py --images DIR/unlabeled/NAME`` then predicts them as a
user would, once with ``-c`` (the shipped default, SafePrior) into DIR/predictions/NAME/ and once
with ``--compare`` (TADE's self-supervised aggregation) into DIR/compare/NAME/, each writing
predictions.csv and summary.json; only afterwards are the withheld labels read, to report: the
accuracy of each predictions.csv, the plain expert average's accuracy on the same images (its
column in predictions.csv), and the total variation distance between the estimated class prior
(summary.json) and the set's true class frequencies, beside that of the training prior. The table
is written to ``--out`` (default DIR/own_data_demo.json; ``docs/studies/own_data_demo.json`` is the
one bench/records/report.py renders into docs/own_data.md and docs/results.md).

Every file goes through the write rule (utils/safe_write.py), checked before the work: a copy
folder DIR/unlabeled/NAME of an earlier demo (anonymous image names only) is replaced, any other
existing one is refused, never deleted.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT
from trainer.build import build_test_time_method, load_trained
from utils.cli import ArgumentParser, absolute_paths
from utils.errors import UserError, cli_entry
from utils.safe_write import check_target, write_json, write_text

WRITER = "bench/studies/own_data_demo.py"
COPY_NAME = re.compile(r"\d{6}\.\w+")  # what withhold() names a copy


def check_copy_folder(folder):
    """Before the work: ``folder`` is new, or an earlier demo's copies (nothing else is deleted)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"--work: {folder} is a link or not a folder; choose another --work")
    if folder.is_dir():
        other = [e.name for e in os.scandir(folder) if not (e.is_file(follow_symlinks=False)
                                                             and COPY_NAME.fullmatch(e.name))]
        if other:
            raise UserError(f"--work: {folder} holds {other[0]!r}, which this demo did not write; refusing to delete "
                            "it: choose another --work")


def withhold(data, name, indices, work):
    """Copy the images of one distribution under anonymous names; keep their labels apart."""
    folder = work / "unlabeled" / name
    check_copy_folder(folder)
    if folder.exists():
        shutil.rmtree(folder)  # an earlier demo's copies only (check_copy_folder)
    folder.mkdir(parents=True)
    rows = []
    for j, i in enumerate(indices):
        src = Path(data.test_set.path(int(i)))
        dst = folder / f"{j:06d}{src.suffix.lower()}"
        shutil.copyfile(src, dst)
        rows.append({"path": str(dst), "label": data.class_names[int(data.test_set.targets[i])]})
    labels = pd.DataFrame(rows)
    write_text(work / "withheld" / f"{name}.csv", labels.to_csv(index=False))
    return folder, labels


def total_variation(p, q):
    return 0.5 * float(np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def score(folder, labels, names, train_prior):
    """What one prediction folder scores against the withheld labels."""
    table = pd.read_csv(folder / "predictions.csv")
    summary = json.loads((folder / "summary.json").read_text())
    truth = labels.set_index("path")["label"].reindex(table["path"])
    true_prior = truth.value_counts(normalize=True).reindex(names, fill_value=0).to_numpy()
    estimate = summary["estimate"].get("class_prior")
    row = {"images": int(len(table)),
           "accuracy": float((table["prediction"].to_numpy() == truth.to_numpy()).mean()),
           "average_accuracy": float((table["average_prediction"].to_numpy() == truth.to_numpy()).mean()),
           "shift_detected": summary["estimate"].get("shift_detected"),
           "p_value": summary["estimate"].get("p_value"),
           "strength": summary["estimate"].get("strength"),
           "true_prior": dict(zip(names, map(float, true_prior))),
           "tv_training_prior": total_variation(train_prior, true_prior),
           "seconds": summary["seconds"]}
    if estimate is not None:
        row["estimated_prior"] = estimate
        row["tv_estimate"] = total_variation([estimate[n] for n in names], true_prior)
    return row


def predict(args, config, folder, out):
    """``test_train.py -c config --images folder --out out``, as a user runs it."""
    cmd = [sys.executable, str(ROOT / "test_train.py"), "-c", str(config), "-r", args.resume, "--images",
           str(folder), "--out", str(out), "-d", args.device]
    if args.data_dir:
        cmd += ["--data_dir", args.data_dir]
    print("$ " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:
        raise UserError(f"test_train.py -c {config} --images {folder} failed (exit {proc.returncode})")


def without_data_dir(info, data_dir):
    """``info`` with the folder given as --data_dir written DATA (the JSON names no machine path)."""
    if not data_dir:
        return info
    return json.loads(json.dumps(info).replace(str(Path(data_dir).resolve()), "DATA"))


def shown_path(path):
    """A path as the JSON keeps it: relative to the project when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", required=True, help="checkpoint trained on an image folder with test/")
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "test_time_folder_prior.json"))
    p.add_argument("--compare", default=str(ROOT / "configs" / "test_time_folder_tade.json"),
                   help="a second test-time config run on the same images (default: TADE's step)")
    p.add_argument("--work", required=True, help="folder for the unlabeled copies, withheld labels and predictions")
    p.add_argument("--out", help="the table (JSON; default WORK/own_data_demo.json)")
    p.add_argument("--distributions", default="forward50,uniform,backward50")
    p.add_argument("--data_dir", help="the image folder, where the checkpoint's config names another place (a "
                   "recorded model)")
    p.add_argument("-d", "--device", default="cpu")
    args = p.parse_args(argv)
    absolute_paths(args, "resume", "config", "compare", "work", "out", "data_dir")  # test_train.py runs from the root
    work = Path(args.work)
    out_json = check_target(Path(args.out) if args.out else work / "own_data_demo.json", WRITER,
                            option="--out" if args.out else "--work",
                            legacy=lambda payload: {"checkpoint", "distributions"} <= set(payload))
    methods = {}  # each test-time config built before any work: a bad one is its one-line error
    for key, config in (("config", args.config), ("compare", args.compare)):
        try:
            methods[key] = type(build_test_time_method(config)[0]).__name__
        except ValueError as e:
            raise UserError(f"test-time config {config}: {e}") from None
    overrides = [("data_loader.args.data_dir", args.data_dir, "--data_dir")] if args.data_dir else []
    trained = load_trained(args.resume, None, overrides)
    data = trained.data
    if not hasattr(data, "class_names") or not hasattr(data.test_set, "path"):
        raise UserError(f"{args.resume}: expected a checkpoint trained on an image folder (ImageFolderLTDataModule)")
    dists = data.test_distributions()
    names = list(data.class_names)
    counts = np.asarray(data.cls_num_list, float)
    results = {"checkpoint": shown_path(args.resume), "config": shown_path(args.config),
               "compare": shown_path(args.compare), "methods": methods,
               "validation": without_data_dir(data.validation_info, args.data_dir), "distributions": {}}
    wanted = [n.strip() for n in args.distributions.split(",") if n.strip()]
    for name in wanted:
        if name not in dists:
            raise UserError(f"--distributions: unknown {name!r}; expected names from {', '.join(dists)}")
        check_copy_folder(work / "unlabeled" / name)
    for name in wanted:
        folder, labels = withhold(data, name, dists[name], work)
        predict(args, args.config, folder, work / "predictions" / name)
        predict(args, args.compare, folder, work / "compare" / name)
        row = score(work / "predictions" / name, labels, names, counts / counts.sum())
        other = score(work / "compare" / name, labels, names, counts / counts.sum())
        row.update(compare_accuracy=other["accuracy"], compare_seconds=other["seconds"])
        results["distributions"][name] = row
        tv = f"{row['tv_estimate']:.3f}" if "tv_estimate" in row else "-"
        print(f"{name}: {row['images']} images; {methods['config']} {100 * row['accuracy']:.2f}% | "
              f"{methods['compare']} {100 * row['compare_accuracy']:.2f}% | plain average "
              f"{100 * row['average_accuracy']:.2f}% | shift detected {row['shift_detected']} | prior TV estimate "
              f"{tv} (training prior {row['tv_training_prior']:.3f})", flush=True)
        write_json(out_json, {"written_by": WRITER, **results})  # after each set: a stopped run keeps them
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
