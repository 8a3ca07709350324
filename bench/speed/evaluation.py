"""Wall time of evaluating all eleven CIFAR-10-LT test distributions: one pass over the test set
(logits once, every distribution from index subsets) against one pass per distribution.
"""
import time

import numpy as np

from base.base_model import average_experts
from bench.common import load_model_and_data
from trainer.evaluation import distribution_metrics
from trainer.forward import collect_expert_logits
from utils.cli import positive_int


def add_arguments(p):
    p.add_argument("--repeats", type=positive_int, default=2)


def run(args):
    built = load_model_and_data(args.checkpoint, data_dir=args.data_dir, device=args.device, sets=args.set)
    net, data, perf = built.net, built.data, built.perf
    dists = data.test_distributions()
    masks = data.shot_masks()

    def one_pass():
        logits, targets = collect_expert_logits(net, data.test_loader(device=args.device), args.device, perf)
        return distribution_metrics(average_experts(logits).argmax(1), targets, dists, data.num_classes, masks)

    def per_distribution():
        out = {}
        for name, idx in dists.items():
            sub, sub_t = collect_expert_logits(net, data.test_loader(indices=idx, device=args.device), args.device,
                                               perf)
            out.update(distribution_metrics(average_experts(sub).argmax(1), sub_t, {name: np.arange(len(sub_t))},
                                            data.num_classes, masks))
        return out

    # Alternate the two methods (one, per-distribution, one, ...) and keep each one's fastest
    # repeat, so a busy machine penalises neither.
    times, results = {"one": [], "sep": []}, {}
    for _ in range(args.repeats):
        for key, fn in (("one", one_pass), ("sep", per_distribution)):
            start = time.perf_counter()
            results[key] = fn()
            times[key].append(time.perf_counter() - start)
    t_one, t_sep = min(times["one"]), min(times["sep"])
    same = all(abs(results["one"][n]["top1"] - results["sep"][n]["top1"]) < 1e-9 for n in dists)
    images = sum(len(i) for i in dists.values())
    print(f"eval all {len(dists)} CIFAR-10-LT distributions ({images} subset images, {len(data.test_set)} test "
          f"images, {args.device}): one pass {t_one:.1f} s, per distribution {t_sep:.1f} s, "
          f"speed-up {t_sep / t_one:.2f}x, identical figures: {same}")

