"""Your own data, shown on real images: predictions on unlabeled shifted sets, scored against the
labels that were withheld from them.

    python bench/studies/own_data_demo.py -r RUN/model_best.pth --work DIR [-c configs/test_time_folder_prior.json]
                                  [--distributions forward50,backward50] [-d DEVICE]

For each named test distribution of the checkpoint's image folder (data_loader/image_folder.py,
built from ``test/``), its images are copied into DIR/unlabeled/NAME/ under anonymous names
(``000000.png`` ...; the class folder, the only place a label lives, is dropped) and their labels
into DIR/withheld/NAME.csv. ``test_train.py --images DIR/unlabeled/NAME`` then predicts them as a
user would, writing DIR/predictions/NAME/{predictions.csv,summary.json}; only afterwards are the
withheld labels read, to report: the accuracy of predictions.csv, the plain expert average's
accuracy on the same images (its column in predictions.csv), and the total variation distance
between the estimated class prior (summary.json) and the set's true class frequencies, beside
that of the training prior. The table is written to DIR/own_data_demo.json.

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
from trainer.build import load_trained
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
    table = pd.read_csv(folder / "predictions.csv")
    summary = json.loads((folder / "summary.json").read_text())
    truth = labels.set_index("path")["label"].reindex(table["path"])
    true_prior = truth.value_counts(normalize=True).reindex(names, fill_value=0).to_numpy()
    estimate = summary["estimate"].get("class_prior")
    row = {"images": int(len(table)),
           "accuracy": float((table["prediction"].to_numpy() == truth.to_numpy()).mean()),
           "average_accuracy": float((table["average_prediction"].to_numpy() == truth.to_numpy()).mean()),
           "shift_detected": summary["estimate"].get("shift_detected"),
           "true_prior": dict(zip(names, map(float, true_prior))),
           "tv_training_prior": total_variation(train_prior, true_prior),
           "seconds": summary["seconds"]}
    if estimate is not None:
        row["estimated_prior"] = estimate
        row["tv_estimate"] = total_variation([estimate[n] for n in names], true_prior)
    return row


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", required=True, help="checkpoint trained on an image folder with test/")
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "test_time_folder_prior.json"))
    p.add_argument("--work", required=True, help="folder for the unlabeled copies, withheld labels and predictions")
    p.add_argument("--distributions", default="forward50,backward50")
    p.add_argument("-d", "--device", default="cpu")
    args = p.parse_args(argv)
    work = Path(args.work)
    check_target(work / "own_data_demo.json", WRITER, option="--work",
                 legacy=lambda payload: {"checkpoint", "distributions"} <= set(payload))  # written before the key
    trained = load_trained(args.resume)
    data = trained.data
    if not hasattr(data, "class_names") or not hasattr(data.test_set, "path"):
        raise UserError(f"{args.resume}: expected a checkpoint trained on an image folder (ImageFolderLTDataModule)")
    dists = data.test_distributions()
    names = list(data.class_names)
    counts = np.asarray(data.cls_num_list, float)
    results = {"checkpoint": str(args.resume), "config": args.config, "validation": data.validation_info,
               "distributions": {}}
    wanted = [n.strip() for n in args.distributions.split(",") if n.strip()]
    for name in wanted:
        if name not in dists:
            raise UserError(f"--distributions: unknown {name!r}; expected names from {', '.join(dists)}")
        check_copy_folder(work / "unlabeled" / name)
    for name in wanted:
        folder, labels = withhold(data, name, dists[name], work)
        out = work / "predictions" / name
        cmd = [sys.executable, str(ROOT / "test_train.py"), "-c", args.config, "-r", args.resume, "--images",
               str(folder), "--out", str(out), "-d", args.device]
        print("$ " + " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode:
            raise UserError(f"test_train.py --images {folder} failed (exit {proc.returncode})")
        row = score(out, labels, names, counts / counts.sum())
        results["distributions"][name] = row
        tv = f"{row['tv_estimate']:.3f}" if "tv_estimate" in row else "-"
        print(f"{name}: {row['images']} images; predictions.csv {100 * row['accuracy']:.2f}% | plain average "
              f"{100 * row['average_accuracy']:.2f}% | shift detected {row['shift_detected']} | prior TV estimate "
              f"{tv} (training prior {row['tv_training_prior']:.3f})", flush=True)
    write_json(work / "own_data_demo.json", {"written_by": WRITER, **results})
    print(f"wrote {work / 'own_data_demo.json'}")


if __name__ == "__main__":
    main()
