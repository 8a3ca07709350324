"""Test-time aggregation on CIFAR-10-LT: the defaults (frozen no-autograd network in the config's
precision, two views made on the device by the "tensor" pipeline) against the release's way (the
same algorithm backpropagating through the fp32 network, PIL two-view augmentation in DataLoader
workers), and the learned weights of a trained model on forward50, uniform and backward50.

    python bench/test_time_speed.py [--checkpoint RUN/last.pth] [--distribution forward50] [--epochs 1]
"""
import argparse
import copy
import time

import numpy as np
import torch

from common import DEFAULT_DATA, ROOT, load_model_and_data

import data_loader  # noqa: E402 - after common puts the repository on sys.path
from trainer.test_time_aggregation import TestTimeAggregation
from utils.parse_config import ConfigParser, read_json
from utils.performance import Performance

TT_CONFIG = "configs/test_time_cifar10_tade.json"


def run(net, data, tt, idx, device, perf, epochs, backprop, seed=0):
    torch.manual_seed(seed)
    loader = data.two_view_loader(idx, int(tt["batch_size"]), torch.Generator().manual_seed(seed),
                                  num_workers=int(tt.get("num_workers", 0)), device=device,
                                  **tt.get("augmentation", {}))
    learner = TestTimeAggregation(net, net.backbone.num_experts, lambda p: tt.init_obj("optimizer", torch.optim, p),
                                  device, perf, epochs=epochs, stop_weight=float(tt.get("stop_weight", 0.05)),
                                  backprop_through_network=backprop)
    start = time.perf_counter()
    fit = learner.fit(loader)
    return time.perf_counter() - start, fit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint")
    p.add_argument("--data_dir", default=str(DEFAULT_DATA))
    p.add_argument("--distribution", default="forward50")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("-d", "--device", default="cpu")
    args = p.parse_args()
    net, cfg, data = load_model_and_data(args.checkpoint, data_dir=args.data_dir, device=args.device)
    tt = ConfigParser(read_json(ROOT / TT_CONFIG)["test_time"], source=TT_CONFIG)
    dists = data.test_distributions()
    idx = np.asarray(dists[args.distribution])
    fast_perf = Performance.from_config(cfg.get("trainer"))
    raw = copy.deepcopy(cfg.config)
    raw["data_loader"]["args"]["pipeline"] = "pil"
    plain_data = ConfigParser(raw, source=cfg.source).init_obj("data_loader", data_loader)
    t_fast, fit_fast = run(net, data, tt, idx, args.device, fast_perf, args.epochs, backprop=False)
    t_slow, fit_slow = run(net, plain_data, tt, idx, args.device, Performance(), args.epochs, backprop=True)
    print(f"test-time aggregation, CIFAR-10-LT {args.distribution} ({len(idx)} images, {args.epochs} epoch(s), "
          f"{args.device}): frozen no-autograd ({fast_perf.precision(args.device)}, {data.pipeline} views) {t_fast:.1f} s, "
          f"backprop through the network (fp32, pil views) {t_slow:.1f} s, speed-up {t_slow / t_fast:.2f}x; weights "
          f"{np.round(fit_fast['weights'].numpy(), 3).tolist()} vs {np.round(fit_slow['weights'].numpy(), 3).tolist()}")
    if args.checkpoint:
        for name in ("forward50", "uniform", "backward50"):
            _, fit = run(net, data, tt, np.asarray(dists[name]), args.device, fast_perf, int(tt["epochs"]), False)
            w = ", ".join(f"{v:.2f}" for v in fit["weights"].tolist())
            print(f"learned weights {name}: ({w}) after {fit['epochs_run']} epoch(s)")


if __name__ == "__main__":
    main()
