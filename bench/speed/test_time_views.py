"""Shared views and folded batch norm on a trained record (docs/methods.md#shared-views,
docs/performance.md#folded-batch-norm), in one run: the wall time of one test.py pass with batch
norm folded and as trained; of the whole test_train.py self-supervised call on the test
distributions with shared views, with per-set views (the release's sampling), and from saved
views (test.py --save_logits --save_views, float16 as records store them); the weights learned from
float16 view logits against float32 ones; and, over ``--seeds``, top-1 of shared against per-set
views per distribution and the mean of the distributions, with the seed spread of each.

Every script runs as its own process (the real entry points), in a temporary folder; the pass is
also timed in this process, the two variants alternated ``--repeats`` times (the fastest kept).
``--epochs`` and ``--distributions`` make a short check (the lead's timing run leaves them). The
report is written after each stage (``"measured"`` names the last, ``"complete"`` says whether all
ran): the timings are complete after the first seed, each further seed adds to the top-1 table.
"""
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, ensure_cifar10, output_path, timed_script, write_report
from bench.studies.test_time_methods import family_config
from trainer.build import load_trained, resolve_config
from trainer.forward import collect_expert_logits
from utils.cli import nonnegative_int, positive_int
from utils.errors import UserError

WRITER = "bench/speed/speed.py test-time-views"


def add_arguments(p):
    p.add_argument("--epochs", type=positive_int, help="test-time epochs (default: the test-time config's)")
    p.add_argument("--distributions", default="all", help="all, or names like forward50,uniform")
    p.add_argument("--seeds", type=positive_int, default=3, help="how many seeds the accuracy comparison runs")
    p.add_argument("--first_seed", type=nonnegative_int, default=1,
                   help="the first of them (seeds FIRST..FIRST+N-1; another range adds seeds to a comparison)")
    p.add_argument("--repeats", type=positive_int, default=3, help="alternated repeats of the in-process pass timing")
    p.add_argument("--out", help="JSON report (default: test_time_views.json beside the checkpoint)")


script = functools.partial(timed_script, WRITER)  # (seconds, stdout) of an entry point; a failure ends the bench


def pass_seconds(checkpoint, data_dir, device, repeats):
    """The fastest of ``repeats`` in-process passes over the test set, folded and as trained, and
    the largest logit difference between them."""
    overrides = [("data_loader.args.data_dir", str(data_dir), "--data_dir")]
    nets = {"folded": load_trained(checkpoint, None, overrides, device),
            "as trained": load_trained(checkpoint, None, overrides + [("trainer.fold_batchnorm", False, "--set")],
                                       device)}
    times, logits = {k: [] for k in nets}, {}
    for _ in range(repeats):
        for key, t in nets.items():
            start = time.perf_counter()
            logits[key] = collect_expert_logits(t.net, t.data.test_loader(device=device), device, t.perf)[0]
            times[key].append(time.perf_counter() - start)
    precision = nets["folded"].perf.precision(device)
    diff = float((logits["folded"] - logits["as trained"]).abs().max())
    return {k: min(v) for k, v in times.items()}, diff, precision


def aggregation(checkpoint, tt_config, out, common, views=None, logits=None, seed=1, **where):
    """(seconds, results rows) of one test_train.py self-supervised call."""
    source = ["--logits", logits] if logits else ["-r", checkpoint]
    extra = ["--set", f'test_time.args.views="{views}"'] if views else []
    seconds, _ = script("test_train.py", "-c", tt_config, *source, "--out", out, "--seed", seed, *common, *extra,
                        **where)
    return seconds, json.loads(Path(out).read_text())["distributions"]


def top1_table(runs):
    """{views: {distribution: [top-1 per seed]}} -> rows with mean and std per distribution and the
    mean of the distributions."""
    out = {}
    for views, per_seed in runs.items():
        names = list(per_seed[0])
        table = {n: [100 * rows[n]["top1"] for rows in per_seed] for n in names}
        table["mean"] = [float(np.mean([100 * rows[n]["top1"] for n in names])) for rows in per_seed]
        out[views] = {n: {"per_seed": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                          else 0.0} for n, v in table.items()}
    return out


def run(args):
    if not args.checkpoint:
        raise UserError(f"{WRITER}: --checkpoint is needed (a trained TADE record, e.g. results/NAME/model.pth)")
    out = output_path(args.out, args.checkpoint, "test_time_views.json", WRITER)
    dataset = resolve_config(None, args.checkpoint)[0]["data_loader"]["type"]
    data_dir = ensure_cifar10(args.data_dir) if dataset.startswith("CIFAR10") else args.data_dir
    where = {"device": args.device, "data_dir": data_dir}
    tt_config = family_config("tade", dataset)
    epochs = args.epochs or json.loads(Path(tt_config).read_text())["test_time"]["args"]["epochs"]
    common = ["--distributions", args.distributions, "--epochs", epochs]
    report = {"checkpoint": args.checkpoint, "test_time_config": str(Path(tt_config).relative_to(ROOT)),
              "epochs": epochs, "distributions": args.distributions, "device": args.device}

    def save(stage):  # the report so far, after every stage: a stopped run keeps what it measured
        report["complete"] = stage == "complete"
        report["measured"] = stage
        write_report(out, report, WRITER)

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))  # the first also draws the saved views
    passes, diff, precision = pass_seconds(args.checkpoint, data_dir, args.device, args.repeats)
    report["pass_in_process"] = {"seconds": passes, "speedup": passes["as trained"] / passes["folded"],
                                 "max_logit_difference": diff, "precision": precision}
    print(f"one pass over the test set ({precision}): folded {passes['folded']:.2f} s, as trained "
          f"{passes['as trained']:.2f} s, {passes['as trained'] / passes['folded']:.2f}x; logits differ by at most "
          f"{diff:.2g}", flush=True)
    save("the in-process pass")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t_fold, _ = script("test.py", "-r", args.checkpoint, "--out", work / "fold.json", **where)
        t_plain, _ = script("test.py", "-r", args.checkpoint, "--out", work / "plain.json", "--no_fold_batchnorm",
                            **where)
        t_views, _ = script("test.py", "-r", args.checkpoint, "--out", work / "views.json", "--save_logits",
                            "--logits_dtype", "float16", "--save_views", "--view_epochs", epochs, "--view_seed",
                            seeds[0], **where)
        report["test_py_seconds"] = {"folded": t_fold, "as trained": t_plain, "save_logits_and_views": t_views}
        print(f"test.py: folded {t_fold:.1f} s, as trained {t_plain:.1f} s ({t_plain / t_fold:.2f}x); with "
              f"--save_logits --save_views ({epochs} epochs, float16) {t_views:.1f} s", flush=True)
        save("test.py runs")
        runs, seconds = {"shared": [], "per_set": []}, {}
        report["seeds"] = seeds
        for seed in seeds:
            for views in runs:
                t, rows = aggregation(args.checkpoint, tt_config, work / f"{views}{seed}.json", common, views,
                                      seed=seed, **where)
                runs[views].append(rows)
                seconds.setdefault(views, t)  # the first seed's call is the one timed
                print(f"  seed {seed}, {views} views: {t:.1f} s", flush=True)
            if seed == seeds[0]:  # the timings are complete with the first seed
                t_file, from_file = aggregation(args.checkpoint, tt_config, work / "file.json", common,
                                                logits=work / "views_logits.npz", seed=seed, device=args.device)
                seconds["from saved views"] = t_file
                size = (work / "views_logits.npz").stat().st_size
                report["test_train_seconds"] = seconds
                report["test_train_in_test_py_passes"] = {k: v / t_fold for k, v in seconds.items()}
                report["saved_logits_with_views_bytes"] = size
                shared = runs["shared"][0]
                report["float16_views"] = {
                    "max_weight_difference": max(max(abs(a - b) for a, b in zip(shared[n]["weights"],
                                                                                  from_file[n]["weights"]))
                                                 for n in shared),
                    "max_top1_difference": max(abs(shared[n]["top1"] - from_file[n]["top1"]) for n in shared)}
                print(f"test_train.py, self-supervised aggregation: shared views {seconds['shared']:.1f} s, per-set "
                      f"views {seconds['per_set']:.1f} s, from saved views {t_file:.1f} s (test.py passes: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in report["test_train_in_test_py_passes"].items()) + ")")
                print(f"saved logits with {epochs} epochs of views: {size / 1e6:.1f} MB; weights from float16 views "
                      f"differ from float32 ones by at most {report['float16_views']['max_weight_difference']:.4f} "
                      f"(top-1 by {100 * report['float16_views']['max_top1_difference']:.2f} points)", flush=True)
            report["top1"] = top1_table(runs)
            report["seeds_done"] = seeds[: seeds.index(seed) + 1]
            save("complete" if seed == seeds[-1] else f"seeds {seeds[0]}..{seed}")
    print(f"top-1 over seeds {seeds[0]}..{seeds[-1]} (mean +- std), shared against per-set views:")
    for name in report["top1"]["shared"]:
        s, p = report["top1"]["shared"][name], report["top1"]["per_set"][name]
        print(f"  {name}: {s['mean']:.2f} +- {s['std']:.2f} vs {p['mean']:.2f} +- {p['std']:.2f} "
              f"(difference {s['mean'] - p['mean']:+.2f})")
    print(f"wrote {out}")
