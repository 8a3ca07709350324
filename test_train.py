"""Test-time self-supervised aggregation of the experts on every test distribution (SPEC 6).

    python test_train.py -c TEST_TIME_CONFIG -r CHECKPOINT [-d DEVICE] [--data_dir PATH]
                         [--distributions all|uniform|NAME,...] [--out PATH] [--epochs N] [--bs N]
                         [--lr X] [--online] [--seed N]

For each distribution, a fresh alpha is learned on its unlabeled images (two strongly augmented
views must agree), then its clean images are classified with the learned weights. The network
config comes from the checkpoint; the test-time config holds optimiser, epochs, batch size,
augmentation and stopping rule.
"""
import argparse
import inspect
from pathlib import Path

import numpy as np
import torch

from data_loader.test_distributions import select_distributions
from trainer.evaluation import collect_expert_logits, distribution_metrics, load_trained
from trainer.test_time_aggregation import TestTimeAggregation, aggregate
from utils.cli import ArgumentParser, add_evaluation_args, data_overrides
from utils.errors import UserError, cli_entry
from utils.parse_config import ConfigParser, read_json
from utils.performance import Performance
from utils.results import format_table, write_results
from utils.runtime import parse_device

TEST_TIME_SHORTCUTS = {"epochs": "epochs", "bs": "batch_size", "lr": "optimizer.args.lr", "seed": "seed"}


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="test-time config (configs/test_time_*.json)")
    add_evaluation_args(p)
    p.add_argument("--epochs", type=int, help="test-time epochs (test_time.epochs)")
    p.add_argument("--lr", type=float, help="test_time.optimizer.args.lr")
    p.add_argument("--online", action="store_true", help="one streaming pass; classify each batch after its update")
    p.add_argument("--seed", type=int, help="test_time.seed")
    return p


def load_test_time_config(args):
    raw = read_json(args.config)
    if not isinstance(raw.get("test_time"), dict):
        raise UserError(f"config {args.config}: missing section 'test_time' (is this a training config? "
                        "test_train.py takes a configs/test_time_*.json)")
    tt = raw["test_time"]
    overrides = [(TEST_TIME_SHORTCUTS[k], getattr(args, k), f"--{k}") for k in TEST_TIME_SHORTCUTS]
    ConfigParser.apply_overrides(tt, [(p, v, o) for p, v, o in overrides if v is not None], args.config)
    for key in ("optimizer", "epochs", "batch_size"):
        if key not in tt:
            raise UserError(f"config {args.config}: missing key 'test_time.{key}'")
    return ConfigParser(tt, source=args.config)


def check_augmentation(data, tt):
    """test_time.augmentation: the keyword arguments of the data module's two-view augmentation."""
    augmentation = tt.get("augmentation", {}) or {}
    allowed = list(inspect.signature(data.two_view_transform).parameters)
    if not isinstance(augmentation, dict) or set(augmentation) - set(allowed):
        raise UserError(f"config {tt.source}: test_time.augmentation {augmentation!r}: expected an object with keys "
                        f"among {', '.join(allowed)} ({type(data).__name__})")
    return augmentation


def plot_weights(results, path):
    """Learned weight of each expert and top-1 across the distributions (forward -> backward)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    weights = np.array([results[n]["weights"] for n in names])
    fig, ax1 = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    for k in range(weights.shape[1]):
        ax1.plot(names, weights[:, k], marker="o", label=f"expert {k + 1} weight")
    ax1.set_ylabel("learned weight")
    ax1.set_ylim(0, 1)
    ax1.tick_params(axis="x", rotation=45)
    ax2 = ax1.twinx()
    ax2.plot(names, [100 * results[n]["top1"] for n in names], "k--", marker="s", label="top-1 (%)")
    ax2.set_ylabel("top-1 (%)")
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    ax1.set_title("Test-time aggregation: learned expert weights across test distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    tt = load_test_time_config(args)
    device, _ = parse_device(args.device)
    net, config, data, _ = load_trained(args.resume, None, data_overrides(args), device)
    augmentation = check_augmentation(data, tt)
    perf = Performance.from_config(config.get("trainer"), config.source)
    num_experts = net.backbone.num_experts
    available = data.test_distributions()
    names = select_distributions(list(available), args.distributions)

    # Clean (test-transform) logits of every test image, once: prediction for every distribution.
    clean_logits, targets = collect_expert_logits(net, data.test_loader(device=device), device, perf, desc="clean test images")
    seed = int(tt.get("seed", 1))
    shot_masks = data.shot_masks()
    results = {}
    for d, name in enumerate(names):
        idx = np.asarray(available[name])
        generator = torch.Generator().manual_seed(seed * 1000 + d)
        torch.manual_seed(seed * 1000 + d)  # augmentation in the main process
        loader = data.two_view_loader(idx, int(tt["batch_size"]), generator, num_workers=int(tt.get("num_workers", 0)),
                                      device=device, **augmentation)
        learner = TestTimeAggregation(net, num_experts, lambda params: tt.init_obj("optimizer", torch.optim, params),
                                      device, perf, epochs=int(tt["epochs"]), stop_weight=float(tt.get("stop_weight", 0.05)),
                                      entropy_weight=float(tt.get("entropy_weight", 0.0)))
        fit = learner.fit(loader, clean_logits=clean_logits, online=args.online, desc=name)
        w = fit["weights"]
        subset = {name: idx}
        preds = aggregate(clean_logits, w).argmax(1)
        row = distribution_metrics(preds, targets, subset, data.num_classes, shot_masks)[name]
        row["top1_average"] = distribution_metrics(clean_logits.mean(1).argmax(1), targets, subset,
                                                   data.num_classes, shot_masks)[name]["top1"]
        row["weights"] = [round(float(v), 4) for v in w]
        row["epochs_run"] = fit["epochs_run"]
        if args.online:
            order = fit["online_index"]
            row["top1_online"] = float((fit["online_preds"] == targets[order]).double().mean())
        results[name] = row
        print(f"{name}: weights {', '.join(f'{v:.2f}' for v in w)} after {fit['epochs_run']} epoch(s); "
              f"top-1 {100 * row['top1']:.1f} (expert average {100 * row['top1_average']:.1f})", flush=True)

    extra = ["top1_average", "epochs_run"] + (["top1_online"] if args.online else [])
    table = {n: dict(r, **{f"w{k + 1}": r["weights"][k] for k in range(num_experts)}) for n, r in results.items()}
    print(format_table(table, extra_rows=extra, weight_rows=[f"w{k + 1}" for k in range(num_experts)]))
    stem = Path(args.resume).stem
    out = Path(args.out) if args.out else Path(args.resume).with_name(
        f"test_time_{stem}{'_online' if args.online else ''}.json")
    payload = {"checkpoint": str(args.resume), "config": config.config, "test_time_config": tt.config,
               "online": bool(args.online), "distributions": results}
    json_path, csv_path = write_results(payload, out, extra_columns=extra + ["weights"])
    png = out.with_suffix(".png")
    plot_weights(results, png)
    print(f"wrote {json_path}, {csv_path} and {png}")


if __name__ == "__main__":
    main()
