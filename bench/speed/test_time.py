"""Test-time aggregation on CIFAR-10-LT: the defaults (frozen no-autograd network in the config's
precision, two views made on the device by the "tensor" pipeline) against the release's way (the
same algorithm backpropagating through the fp32 network, PIL two-view augmentation in DataLoader
workers), and the learned weights of a trained model on forward50, uniform and backward50.

Both runs are the ``SelfSupervisedAggregation`` plug-in built from the test-time config, run by the
loop test_train.py uses (``trainer.adaptation.run_method``).
"""
import copy
import time

import numpy as np

from bench.common import ROOT, load_model_and_data
from trainer.adaptation import run_method
from trainer.build import Trained, build_data, build_test_time_method
from trainer.forward import collect_expert_logits
from utils.cli import positive_int
from utils.parse_config import ConfigParser
from utils.performance import Performance

TT_CONFIG = str(ROOT / "configs" / "test_time_cifar10_tade.json")


def aggregate(trained, clean, targets, idx, device, epochs, backprop, seed=0):
    """Seconds and the results row of one aggregation run on test set ``idx`` (its own views, as
    the release draws them: one test set, so shared views would change nothing but the draws)."""
    method, _ = build_test_time_method(TT_CONFIG, [("test_time.args.epochs", epochs, "--epochs"),
                                                   ("test_time.args.views", "per_set", "bench"),
                                                   ("test_time.args.backprop_through_network", backprop, "bench")])
    start = time.perf_counter()
    row = run_method(method, trained, clean, targets, {"bench": idx}, device, seed=seed)["bench"]
    return time.perf_counter() - start, row


def add_arguments(p):
    p.add_argument("--distribution", default="forward50")
    p.add_argument("--epochs", type=positive_int, default=1)


def run(args):
    fast = load_model_and_data(args.checkpoint, data_dir=args.data_dir, device=args.device)
    clean, targets = collect_expert_logits(fast.net, fast.data.test_loader(device=args.device), args.device, fast.perf)
    raw = copy.deepcopy(fast.config.config)
    raw["data_loader"]["args"]["pipeline"] = "pil"
    plain_data = build_data(ConfigParser(raw, source=fast.config.source))
    plain = Trained(fast.net, fast.config, plain_data, Performance(), None)
    dists = fast.data.test_distributions()
    idx = np.asarray(dists[args.distribution])
    t_fast, row_fast = aggregate(fast, clean, targets, idx, args.device, args.epochs, backprop=False)
    t_slow, row_slow = aggregate(plain, clean, targets, idx, args.device, args.epochs, backprop=True)
    print(f"test-time aggregation, CIFAR-10-LT {args.distribution} ({len(idx)} images, {args.epochs} epoch(s), "
          f"{args.device}): frozen no-autograd ({fast.perf.precision(args.device)}, {fast.data.pipeline} views) "
          f"{t_fast:.1f} s, backprop through the network (fp32, pil views) {t_slow:.1f} s, speed-up "
          f"{t_slow / t_fast:.2f}x; weights {np.round(row_fast['weights'], 3).tolist()} vs "
          f"{np.round(row_slow['weights'], 3).tolist()}")
    if args.checkpoint:
        epochs = int(build_test_time_method(TT_CONFIG)[1].get("test_time.args.epochs"))
        for name in ("forward50", "uniform", "backward50"):
            _, row = aggregate(fast, clean, targets, np.asarray(dists[name]), args.device, epochs, False)
            w = ", ".join(f"{v:.2f}" for v in row["weights"])
            print(f"learned weights {name}: ({w}) after {row['epochs_run']} epoch(s)")

