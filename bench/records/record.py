"""Record a reference run: train, evaluate, run the test-time methods, and keep the evidence in
``results/NAME/`` for good (docs/results.md is generated from these folders by bench/records/report.py).

    python bench/records/record.py -c configs/config_cifar10_ir100_tade.json --data_dir DATA --epochs 30 --seed 1 \
        [--set KEY.PATH=VALUE ...] [--name NAME] [--work_dir DIR] [--results_dir results] [-d DEVICE]
        [--skip_views] [--train_only]

Steps (each skipped when its output exists, so an interrupted command is resumed by running it again):
1. train with train.py into ``WORK_DIR/NAME/train/`` (outside the repository; resumed from its
   last.pth when one exists);
2. ``test.py`` on last.pth (eleven distributions, many/medium/few, ECE, NLL, reliability) and on
   model_best.pth (chosen on the validation split), with the clean logits of the test set, the
   validation split and the training images saved as compressed float16 (``logits.npz``), and,
   unless ``--skip_views``, the logits of 5 epochs of augmented views of every test image
   (``--save_views``: self-supervised aggregation then runs from the file, docs/methods.md#shared-views);
3. ``bench/studies/test_time_methods.py`` on last.pth: every test-time method on every protocol
   (self-supervised aggregation included unless ``--skip_views``);
4. the folder: resolved config, per-epoch curve (``epochs.csv``), training log, the commits that
   trained and evaluated it, the command, the machine and precision, and the weights (float32,
   without optimiser state) where they are small (at most ``SMALL_WEIGHTS`` bytes).

A record holds no machine paths (bench/records/portable_record.py): the data folder is written ``DATA``
and described by its data module and the SHA-256 of its files, the work folder ``WORK_DIR``, and
paths inside the repository are relative; the command re-runs with ``--data_dir`` set to a copy
of the same data.

The record is assembled in ``results/.NAME.partial/`` and renamed into place at the end; an
existing ``results/NAME`` is never overwritten.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from bench.records.portable_record import apply, data_fingerprint, places, plan, portable
from bench.records.steps import command, run_step, train_or_resume, training_stats
from utils.cli import ArgumentParser, absolute_paths, nonnegative_int, positive_int
from utils.errors import UserError, cli_entry
from utils.parse_config import parse_set_expression, read_json
from utils.run_folder import check_folder_name
from utils.safe_write import check_target, write_bytes, write_json, write_text

WRITER = "bench/records/record.py"
SMALL_WEIGHTS = 8 << 20  # weights kept in a record up to this size (a CIFAR ResNet-32 with 3 experts: 5.4 MB)
DEFAULT_WORK_DIR = Path.home() / ".cache" / "tade-records"
VIEW_EPOCHS = 5  # epochs of saved views: the shipped test-time configs' (configs/test_time_*_tade.json)


def git_state():
    """(the commit checked out, whether tracked files have uncommitted changes); ("unknown", None)
    where git cannot say."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return (out.stdout.strip() or "unknown"), bool(dirty)


def git_commit():
    commit, dirty = git_state()
    return commit + ("+uncommitted changes" if dirty else "")


def machine():
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count()}
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        info["cpu"] = names[0].strip() if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def default_name(config_path, epochs, seed):
    stem = Path(config_path).stem
    return f"{stem[len('config_'):] if stem.startswith('config_') else stem}_e{epochs}_s{seed}"


def train(args, run_dir, log, command_line):
    """Train (or resume) into ``run_dir``; the commit and the command line (``command_line``: the
    tool and its arguments) that started training are kept beside it."""
    def note_start():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        write_text(run_dir.parent / "train_commit.txt", git_commit() + "\n")
        write_text(run_dir.parent / "train_command.json", json.dumps(command_line) + "\n")

    start = ["-c", args.config, "--epochs", args.epochs, "--seed", args.seed, "--save_dir", run_dir.parent.parent,
             "--name", run_dir.parent.name, "--run_id", run_dir.name]
    if args.data_dir:
        start += ["--data_dir", args.data_dir]
    for s in args.set:
        start += ["--set", s]
    return train_or_resume(run_dir, args.epochs, start, log, "record", args.device, on_start=note_start)


def small_weights(checkpoint, out):
    """The weights alone (float32, no optimiser state), if small: enough to re-run methods that
    need the network (self-supervised aggregation) later."""
    import torch
    from utils.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(checkpoint)
    keep = {k: ckpt[k] for k in ("format", "arch", "epoch", "config", "selected_on") if k in ckpt}
    keep["state_dict"] = ckpt["state_dict"]
    size = sum(t.numel() * t.element_size() for t in ckpt["state_dict"].values() if torch.is_tensor(t))
    if size > SMALL_WEIGHTS:
        return False
    save_checkpoint(keep, out)
    return True


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--epochs", type=positive_int, required=True)
    p.add_argument("--seed", type=nonnegative_int, required=True)
    p.add_argument("--data_dir")
    p.add_argument("--set", action="extend", nargs="+", default=[],
                   help="train.py --set overrides (the recipe at this budget)")
    p.add_argument("--name", help="record name (default: <config>_e<epochs>_s<seed>)")
    p.add_argument("--work_dir", default=str(DEFAULT_WORK_DIR), help="where training runs (outside the repository)")
    p.add_argument("--results_dir", default=str(ROOT / "results"))
    p.add_argument("-d", "--device")
    p.add_argument("--skip_views", action="store_true",
                   help="leave out self-supervised aggregation and the saved view logits (slow on a CPU)")
    p.add_argument("--train_only", action="store_true", help="stop after training (record later with the same command)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command_line = [WRITER, *argv]  # run from the repository root
    args = p.parse_args(argv)
    absolute_paths(args, "config", "data_dir", "results_dir")  # the steps run from the project root
    name = check_folder_name(args.name or default_name(args.config, args.epochs, args.seed),
                             "record: --name" if args.name else "record: the default name (give --name)")
    final = Path(args.results_dir) / name
    if final.exists():
        raise UserError(f"record: {final} is a recorded run and records are never overwritten; choose another --name")
    if not Path(args.config).is_file():
        raise UserError(f"record: -c {args.config} is not a file; expected a training config (configs/*.json)")
    read_json(args.config)  # malformed: one line now, not a failed step after the work folder is made
    for expression in args.set:
        parse_set_expression(expression)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"record: --data_dir {args.data_dir} is not a folder; expected the folder of the config's data")
    # before training (hours): the record can be assembled where it is asked for
    check_target(Path(args.results_dir) / f".{name}.partial" / "record.json", WRITER, option="--results_dir")
    work = Path(args.work_dir).expanduser().resolve() / name
    run_dir = work / "train"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"record: --work_dir {args.work_dir}: cannot create {work} ({e.strerror}); expected a "
                        "writable folder") from None
    log = work / "record.log"
    started = time.time()
    trained = train(args, run_dir, log, command_line)
    print(f"{name}: {'trained' if trained else 'already trained'} ({run_dir})", flush=True)
    if args.train_only:
        return
    stage = Path(args.results_dir) / f".{name}.partial"
    stage.mkdir(parents=True, exist_ok=True)
    where = {"device": args.device, "data_dir": args.data_dir}
    if not (stage / "eval_last.json").is_file():
        views = [] if args.skip_views else ["--save_views", "--view_epochs", VIEW_EPOCHS]
        run_step(command("test.py", "-r", run_dir / "last.pth", "--out", stage / "eval_last.json", "--save_logits",
                         "--logits_dtype", "float16", *views, **where), log, "record")
        os.replace(stage / "eval_last_logits.npz", stage / "logits.npz")
    best = run_dir / "model_best.pth"
    if best.is_file() and not (stage / "eval_best.json").is_file():
        run_step(command("test.py", "-r", best, "--out", stage / "eval_best.json", **where), log, "record")
    if not (stage / "test_time_methods.json").is_file():
        views = ["--skip_views"] if args.skip_views else []
        run_step(command("bench/studies/test_time_methods.py", run_dir / "last.pth", *views, "--stream_batch", "16,128",
                         "--out", stage / "test_time_methods.json", **where), log, "record")
    for src in ("config.json", "epochs.csv", "info.log"):
        write_bytes(stage / src, (run_dir / src).read_bytes())
    has_weights = small_weights(run_dir / "last.pth", stage / "model.pth")
    train_commit = (work / "train_commit.txt").read_text().strip() if (work / "train_commit.txt").is_file() else None
    train_command = json.loads((work / "train_command.json").read_text()) if (work / "train_command.json").is_file() \
        else None
    config = json.loads((run_dir / "config.json").read_text())
    precision = re.search(r"run folder .*\| (\S+)\s*$", (run_dir / "info.log").read_text(), re.M)
    # no machine paths: the data and work folders become placeholders, repository paths relative
    pairs = places(args.data_dir, Path(args.work_dir).expanduser(), ROOT)
    apply(stage, plan(stage, pairs))
    results_dir = Path(args.results_dir).resolve()
    results_name = str(results_dir.relative_to(ROOT)) if results_dir.is_relative_to(ROOT) else "RESULTS_DIR"

    def portable_argv(argv):
        return None if argv is None else portable([results_name if Path(a).resolve() == results_dir else a
                                                   for a in argv], pairs)
    record = {
        "name": name, "config": portable(str(args.config), pairs), "dataset": config["data_loader"]["type"],
        "loss": config.get("loss", {}).get("type"), "epochs": args.epochs, "seed": args.seed,
        "overrides": args.set, "data": data_fingerprint(args.data_dir, config["data_loader"]["type"]),
        "command": portable_argv([Path(sys.executable).name, *command_line]),
        "train_command": portable_argv(train_command),
        "commit_trained": train_commit, "commit_evaluated": git_commit(),
        "machine": machine(), "precision": precision.group(1) if precision else None,
        "training_seconds": training_stats(run_dir / "info.log")[0],
        "record_seconds_this_call": time.time() - started,
        "weights": "model.pth" if has_weights else None,
        "files": sorted(f.name for f in stage.iterdir()) + (["record.json"]),
    }
    write_json(stage / "record.json", {"written_by": WRITER, **record}, indent=1)
    os.replace(stage, final)
    print(f"recorded {final}")


if __name__ == "__main__":
    main()
