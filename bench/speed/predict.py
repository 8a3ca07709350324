"""Predicting unlabeled images with SafePrior against a plain test.py pass over the same images.

Both commands run as a user runs them (fresh processes, wall-clock seconds, median of
``--repeats``): ``test.py -r CHECKPOINT`` (the checkpoint's test set: give the image folder's
``test/`` as ``--images`` so both pass over the same images) and ``test_train.py -c
TEST_TIME_CONFIG -r CHECKPOINT --images DIR``. One ``--images`` run first fills the
validation-logits cache beside the checkpoint and is not counted. Prints both medians and their
ratio (the target: at most 1.2). Time it on a quiet machine only.
"""
import statistics
import tempfile
from pathlib import Path

from bench.common import ROOT, timed_script
from utils.cli import positive_int
from utils.errors import UserError

WRITER = "bench/speed/speed.py predict"


def add_arguments(p):
    p.add_argument("--images", help="a folder of images (the checkpoint's test/ folder) or a list file")
    p.add_argument("--test_time_config", default=str(ROOT / "configs" / "test_time_folder_prior.json"))
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--work", help="folder for the outputs (default: a temporary folder)")


def run(args):
    if not args.checkpoint or not args.images:
        raise UserError(f"{WRITER}: --checkpoint and --images are needed (a folder-trained model and its test/ "
                        "folder)")
    for option, path in (("--checkpoint", args.checkpoint), ("--images", args.images),
                         ("--test_time_config", args.test_time_config)):
        if not Path(path).exists():  # before the first timed run
            raise UserError(f"{option} {path} does not exist")
    if args.work is not None and Path(args.work).exists() and not Path(args.work).is_dir():
        raise UserError(f"--work {args.work} is not a folder; expected a folder for the outputs")
    work = Path(args.work or tempfile.mkdtemp(prefix="predict_speed_"))
    plain = ["test.py", "-r", args.checkpoint, "--distributions", "uniform", "--out", work / "eval.json"]
    predict = ["test_train.py", "-c", args.test_time_config, "-r", args.checkpoint, "--images", args.images,
               "--out", work / "predictions"]
    timed_script(WRITER, *predict, device=args.device)  # fills the validation cache (not counted)
    t_plain, t_predict = [], []
    for _ in range(args.repeats):
        t_plain.append(timed_script(WRITER, *plain, device=args.device)[0])
        t_predict.append(timed_script(WRITER, *predict, device=args.device)[0])
    a, b = statistics.median(t_plain), statistics.median(t_predict)
    print(f"test.py (uniform): median {a:.2f} s of {[round(t, 2) for t in t_plain]}")
    print(f"test_train.py --images: median {b:.2f} s of {[round(t, 2) for t in t_predict]}")
    print(f"ratio {b / a:.3f} (target <= 1.2)")
