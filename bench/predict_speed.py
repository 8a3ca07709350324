"""Predicting unlabeled images with SafePrior against a plain test.py pass over the same images.

    python -m bench.predict_speed -r RUN/last.pth --images DATA/test [--repeats 3] [-d DEVICE]
                                  [-c configs/test_time_folder_prior.json] [--work DIR]

Both commands run as a user runs them (fresh processes, wall-clock seconds, median of
``--repeats``): ``test.py -r CKPT`` (the checkpoint's test set: give the image folder's ``test/``
as ``--images`` so both pass over the same images) and ``test_train.py -c CONFIG -r CKPT --images
DIR``. One ``--images`` run first fills the validation-logits cache beside the checkpoint and is
not counted. Prints both medians and their ratio (the target: at most 1.2). Time it on a quiet
machine only.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[1:3])} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "test_time_folder_prior.json"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--work", help="folder for the outputs (default: a temporary folder)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="predict_speed_"))
    py = sys.executable
    plain = [py, str(ROOT / "test.py"), "-r", args.resume, "-d", args.device, "--distributions", "uniform",
             "--out", str(work / "eval.json")]
    predict = [py, str(ROOT / "test_train.py"), "-c", args.config, "-r", args.resume, "-d", args.device,
               "--images", args.images, "--out", str(work / "predictions")]
    seconds(predict)  # fills the validation cache (not counted)
    t_plain, t_predict = [], []
    for _ in range(args.repeats):
        t_plain.append(seconds(plain))
        t_predict.append(seconds(predict))
    a, b = statistics.median(t_plain), statistics.median(t_predict)
    print(f"test.py (uniform): median {a:.2f} s of {[round(t, 2) for t in t_plain]}")
    print(f"test_train.py --images: median {b:.2f} s of {[round(t, 2) for t in t_predict]}")
    print(f"ratio {b / a:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
