"""Reproduce rows of the published tables: train each method, evaluate on every test distribution
(and, for TADE, run test-time aggregation), and write a Markdown table beside the published rows.

    python bench/records/reproduce.py --dataset cifar10_ir100 --methods softmax,ride,tade --epochs 200 \
        [--seeds 1 2 3] [--data_dir PATH] [--out_dir runs/reproduce] [-d DEVICE] [--set KEY.PATH=VALUE ...]

``--seeds``: one run per seed (default: the config's seed); the table then gives the mean +- standard
deviation over the seeds of each distribution.

Configs are ``configs/config_<dataset>_<method>.json`` and ``configs/test_time_<family>_tade.json``.
With a reduced ``--epochs`` budget the schedule's milestones (LR steps, warmup, cosine period,
RIDE's re-weighting epoch) are scaled by budget / published epochs. Interrupted? Run the same
command again: finished steps are skipped, a partly trained run resumes from its last.pth.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from bench.records.distributions import short
from bench.records.steps import command, run_step, train_or_resume, training_stats
from utils.cli import ArgumentParser, absolute_paths, nonnegative_int, positive_int
from utils.errors import UserError, cli_entry
from utils.parse_config import parse_set_expression, read_json
from utils.safe_write import check_target, write_text

# docs/methods.md#published-results (top-1 %); missing entries are not published.
PUBLISHED = {
    "cifar100_ir100": {
        "softmax": {"forward50": 62.3, "forward10": 56.2, "forward5": 52.5, "uniform": 41.4, "backward5": 30.5,
                    "backward10": 25.8, "backward50": 17.5},
        "ride": {"forward50": 63.0, "forward10": 57.0, "forward5": 53.6, "uniform": 48.0, "backward5": 38.1,
                 "backward10": 35.4, "backward50": 29.2},
        "tade": {"forward50": 65.9, "forward10": 58.3, "forward5": 54.8, "uniform": 49.8, "backward5": 44.7,
                 "backward10": 43.9, "backward50": 42.4},
        "tade_no_tt": {"forward50": 58.4, "forward5": 53.1, "uniform": 49.4, "backward5": 42.6, "backward50": 35.0},
    },
    "cifar10_ir100": {"tade": {"uniform": 83.8}},
    "cifar10_ir10": {"tade": {"uniform": 90.8}},
    "imagenet_lt": {
        "softmax": {"forward50": 66.1, "forward10": 60.3, "uniform": 48.0, "backward10": 34.9, "backward50": 27.6},
        "ride": {"forward50": 67.6, "forward10": 64.0, "uniform": 56.3, "backward10": 48.7, "backward50": 44.0},
        "tade": {"forward50": 69.4, "forward10": 65.4, "uniform": 58.8, "backward10": 54.5, "backward50": 53.1},
    },
    "places_lt": {
        "softmax": {"forward50": 45.6, "forward10": 40.2, "uniform": 31.4, "backward10": 23.4, "backward50": 19.4},
        "ride": {"forward50": 43.1, "forward10": 41.6, "uniform": 40.3, "backward10": 38.2, "backward50": 36.9},
        "tade": {"forward50": 46.4, "forward10": 43.3, "uniform": 40.9, "backward10": 41.4, "backward50": 41.6},
    },
    "inat": {
        "softmax": {"forward3": 65.4, "forward2": 65.5, "uniform": 64.7, "backward2": 64.0, "backward3": 63.4},
        "ride": {"forward3": 71.5, "forward2": 71.9, "uniform": 71.8, "backward2": 71.9, "backward3": 71.8},
        "tade": {"forward3": 72.3, "forward2": 72.5, "uniform": 72.9, "backward2": 73.5, "backward3": 73.3},
    },
}
LABEL = {"softmax": "Softmax", "ride": "RIDE", "tade": "TADE", "tade_no_tt": "TADE, no test-time step"}
WRITER = "bench/records/reproduce.py"
TABLE_HEAD = "| method |"  # how the table this tool writes starts: the one file it replaces in --out_dir
SCALED_KEYS = ("step1", "step2", "warmup_epoch", "T_max", "step_size", "milestones")


def scaled_overrides(config, budget):
    """--set options that shrink the schedule's milestones to an epoch budget."""
    total = int(config["trainer"]["epochs"])
    if budget >= total:
        return []
    factor = budget / total
    sets = []
    for key, value in (config.get("lr_scheduler", {}).get("args") or {}).items():
        if key not in SCALED_KEYS:
            continue
        if isinstance(value, list):
            new = [max(1, round(v * factor)) for v in value]
        else:
            new = max(1 if value else 0, round(value * factor))
        sets.append(f"lr_scheduler.args.{key}={json.dumps(new)}")
    loss_args = config.get("loss", {}).get("args") or {}
    if "reweight_epoch" in loss_args and loss_args["reweight_epoch"] >= 0:
        sets.append(f"loss.args.reweight_epoch={max(1, round(loss_args['reweight_epoch'] * factor))}")
    return sets


def longest_prefix(name, candidates):
    """The longest candidate that ``name`` starts with (``inat`` for ``inat2018_resnet50``)."""
    matches = [c for c in candidates if name.startswith(c)]
    return max(matches, key=len) if matches else None


def test_time_config(dataset):
    families = [p.name[len("test_time_"):-len("_tade.json")] for p in (ROOT / "configs").glob("test_time_*_tade.json")]
    family = longest_prefix(dataset, families)
    if family is None:
        raise UserError(f"--dataset {dataset}: no configs/test_time_<family>_tade.json matches")
    return ROOT / "configs" / f"test_time_{family}_tade.json"


def run_id(args, seed):
    return f"e{args.epochs}" if seed is None else f"e{args.epochs}_s{seed}"


def train_method(args, method, out_dir, log, seed=None):
    config_path = ROOT / "configs" / f"config_{args.dataset}_{method}.json"
    run_dir = out_dir / method / run_id(args, seed)
    start = ["-c", config_path, "--epochs", args.epochs, "--save_dir", out_dir, "--name", method,
             "--run_id", run_id(args, seed)]
    if seed is not None:
        start += ["--seed", seed]
    if args.data_dir:
        start += ["--data_dir", args.data_dir]
    for s in scaled_overrides(read_json(config_path), args.epochs) + args.set:
        start += ["--set", s]
    return run_dir, train_or_resume(run_dir, args.epochs, start, log, "reproduce", args.device)


def evaluate(args, method, run_dir, log):
    eval_json = run_dir / "eval_last.json"
    macs_file = run_dir / "macs.txt"
    if not eval_json.is_file() or not macs_file.is_file():
        out = run_step(command("test.py", "-r", run_dir / "last.pth", "--macs", device=args.device), log, "reproduce")
        macs = re.search(r"MACs per image .*: ([0-9.]+) G", out)
        write_text(macs_file, macs.group(1) if macs else "")
    results = {method: json.loads(eval_json.read_text())["distributions"]}
    if method == "tade":
        tt_json = run_dir / "test_time_last.json"
        if not tt_json.is_file():
            run_step(command("test_train.py", "-c", test_time_config(args.dataset), "-r", run_dir / "last.pth",
                             device=args.device), log, "reproduce")
        results = {"tade_no_tt": results["tade"], "tade": json.loads(tt_json.read_text())["distributions"]}
    return results, macs_file.read_text().strip()


def cell(per_seed, name):
    """One distribution's top-1: the value, or mean +- std over the seeds."""
    values = [100 * d[name]["top1"] for d in per_seed if name in d]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{sum(values) / len(values):.1f} +- {statistics.stdev(values):.1f}"


def markdown_table(args, rows, names):
    head = ["method", *[short(n) for n in names], "GMACs", "train time", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    published = PUBLISHED.get(longest_prefix(args.dataset, PUBLISHED), {})
    seeds = f", {len(args.seeds)} seeds" if args.seeds and len(args.seeds) > 1 else ""
    for key, (per_seed, macs, seconds, rate) in rows.items():
        measured = [cell(per_seed, n) for n in names]
        time_text = f"{seconds / 60:.1f} min" if seconds else ""
        rate_text = f"{rate:.0f}" if rate else ""
        lines.append(f"| {LABEL[key]} ({args.epochs} ep{seeds}, measured) | " + " | ".join(measured)
                     + f" | {macs} | {time_text} | {rate_text} |")
        if key in published:
            pub = [f"{published[key][n]:.1f}" if n in published[key] else "" for n in names]
            lines.append(f"| {LABEL[key]} (published) | " + " | ".join(pub) + " |  |  |  |")
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True,
                   help="configs/config_<dataset>_<method>.json, e.g. cifar100_ir100, imagenet_lt_resnext50")
    p.add_argument("--methods", default="softmax,ride,tade")
    p.add_argument("--epochs", type=positive_int, required=True, help="epoch budget per method")
    p.add_argument("--data_dir")
    p.add_argument("--out_dir", default=str(ROOT / "runs" / "reproduce"))
    p.add_argument("-d", "--device")
    p.add_argument("--set", action="extend", nargs="+", default=[], help="extra train.py --set overrides")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", help="one run per seed; the table gives mean +- std")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError(f"--methods {args.methods!r}: expected method names like softmax,ride,tade")
    for method in methods:  # every config before any work (and before the output folder is made)
        config = ROOT / "configs" / f"config_{args.dataset}_{method}.json"
        if not config.is_file():
            raise UserError(f"--dataset {args.dataset} --methods {method}: no config configs/{config.name}; expected "
                            "a dataset and methods of configs/config_<dataset>_<method>.json")
        read_json(config)
        if method == "tade":
            test_time_config(args.dataset)
    for expression in args.set:
        parse_set_expression(expression)
    absolute_paths(args, "data_dir")  # the steps run from the project root
    out_dir = Path(args.out_dir).resolve() / args.dataset
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out_dir {args.out_dir}: cannot create {out_dir} ({e.strerror}); expected a writable "
                        "folder") from None
    table_path = check_target(out_dir / f"results_e{args.epochs}.md", WRITER, option="--out_dir",
                              recognise=lambda path: path.read_text(errors="replace").startswith(TABLE_HEAD))
    log = out_dir / "reproduce.log"
    rows, names = {}, None
    for method in methods:
        for seed in args.seeds or [None]:
            run_dir, trained = train_method(args, method, out_dir, log, seed)
            print(f"{method}{'' if seed is None else f' seed {seed}'}: "
                  f"{'trained' if trained else 'already trained'} ({run_dir})", flush=True)
            results, macs = evaluate(args, method, run_dir, log)
            seconds, rate = training_stats(run_dir / "info.log")
            for key, dists in results.items():
                per_seed, _, total, _ = rows.get(key, ([], macs, 0.0, rate))
                rows[key] = (per_seed + [dists], macs, total + seconds, rate)
                names = names or list(dists)
    table = markdown_table(args, rows, names)
    write_text(table_path, table)
    print(table)
    print(f"wrote {table_path}")


if __name__ == "__main__":
    main()
