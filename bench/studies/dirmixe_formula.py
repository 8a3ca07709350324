"""DirMixE's loss on one real batch against its authors' formula computed directly
(docs/methods.md#dirmixe): the first training batch of a DirMixE config, the network freshly
initialised, the loss's own draws for that step; both values printed, with the penalty off (first
epoch) and on (last epoch).

    python bench/studies/dirmixe_formula.py [-c configs/config_cifar10_ir100_dirmixe.json] [--data_dir DIR] [--seed 1]

The direct computation is written out as its authors' code computes it: the prior from the counts
in float32, one cross-entropy per draw in a loop, the semi-variance in a Python loop.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: the tool runs by its path
from bench.common import ROOT

from utils.cli import ArgumentParser, nonnegative_int
from utils.errors import cli_entry
from utils.parse_config import read_json


def authors_formula(logits, target, weights, experts, counts, power, lambda_var, penalty):
    """(per-draw losses [T], loss) for logits [B, 3, C], draws ``weights`` [T, C] with ``experts`` [T]."""
    prior = torch.tensor(counts).float()
    prior = prior / prior.sum()
    per_draw = []
    for w, k in zip(weights, experts.tolist()):
        ratio = w ** power / prior ** power
        per_draw.append(F.cross_entropy(logits[:, k] - torch.log(ratio + 1e-9), target))
    stacked = torch.stack(per_draw)
    mean = stacked.mean()
    var, cnt = 0.0, 0
    for value in stacked:
        if value > mean:
            var += (value - mean) ** 2
            cnt += 1
    var = var / max(cnt - 1, 1)
    return stacked, (mean + lambda_var * var if penalty else mean)


@cli_entry
def main(argv=None):
    from bench.common import DEFAULT_DATA, ensure_cifar10
    from trainer.build import build_data, build_loss, build_model, resolve_config
    from utils.seed import seed_everything

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "config_cifar10_ir100_dirmixe.json"))
    p.add_argument("--data_dir", default=str(DEFAULT_DATA))
    p.add_argument("--seed", type=nonnegative_int, default=1)
    args = p.parse_args(argv)
    read_json(args.config)  # a missing or malformed config: one line, before the data is written
    ensure_cifar10(args.data_dir)
    config, _ = resolve_config(args.config, None, [("data_loader.args.data_dir", args.data_dir, "--data_dir")])
    data = build_data(config)
    seed_everything(args.seed)
    net = build_model(config).train()
    loss = build_loss(config, data, net.num_experts)
    epochs = config["trainer"]["epochs"]
    torch.manual_seed(args.seed)
    loader = data.train_loader(0, args.seed)
    x, y = next(iter(loader))
    with torch.no_grad():
        outputs = net(x)
    loss.set_run(epochs, len(loader), args.seed)
    print(f"{args.config}: batch of {y.shape[0]}, {loss.trials} draws, power {loss.power}, "
          f"lambda_var {loss.lambda_var}, pool of {loss.pool_weights.shape[0]} draws")
    for epoch in (0, epochs - 1):
        loss.set_epoch(epoch)
        weights, experts = loss.draws()
        loss.set_epoch(epoch)  # back to the same step
        ours = float(loss(outputs, y))
        _, theirs = authors_formula(outputs["logits"].float(), y, weights, experts, data.cls_num_list, loss.power,
                                    loss.lambda_var, loss.penalty)
        theirs = float(theirs)
        print(f"epoch {epoch + 1}/{epochs} (penalty {'on' if loss.penalty else 'off'}): DirMixELoss {ours:.8f}, "
              f"authors' formula {theirs:.8f}, |difference| {abs(ours - theirs):.2e}")


if __name__ == "__main__":
    main()
