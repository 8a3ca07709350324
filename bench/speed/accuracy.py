"""Numbers must not move: train the same short TADE recipe on real CIFAR-10-LT IR100 with the fast
path (config defaults: bf16 autocast, channels_last, device-resident tensor pipeline) and with the
plain path (fp32, NCHW, PIL transforms in DataLoader workers), same seeds, and report top-1 on all
eleven test distributions (docs/methods.md#test-distributions).

Training runs through train.py (the real code path). The short recipe is the published one
compressed: lr 0.05, warmup 1 epoch, x0.1 for the last epoch. Each trained model is evaluated in
its own mode and, for the fast one, also in plain fp32 (the effect of fast evaluation alone).
The two paths draw different augmentation (PIL draws from worker RNGs, the tensor path from a
per-epoch generator), so their gap is to be read against the seed-to-seed gap of one path
(give two seeds to measure it). A JSON of every number is written next to the printout.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import PLAIN, ROOT
from data_loader.test_distributions import generated_distributions
from model.metric import accuracy_from_confusion, confusion_matrix
from trainer.build import load_trained
from trainer.forward import predict
from utils.parse_config import parse_set_expression, set_by_path
from utils.cli import nonnegative_int, positive_int
from utils.errors import UserError
from utils.performance import Performance
from utils.safe_write import check_target, write_json, write_text

CONFIG = ROOT / "configs" / "config_cifar10_ir100_tade.json"
VARIANTS = {"fast": [], "plain": PLAIN}
WRITER = "bench/speed/speed.py accuracy"


def train(variant, seed, epochs, data_dir, save_dir, extra=(), config_path=CONFIG):
    """Run train.py on a CIFAR-10-LT IR100 config with the short schedule; extra ``KEY=VALUE``
    overrides may add keys the config lacks (smoke runs: ``data_loader.args.img_max=100``)."""
    config = json.loads(Path(config_path).read_text())
    for item in extra:
        key, value = parse_set_expression(item)
        set_by_path(config, key, value, source="--set", must_exist=False)
    written = Path(save_dir) / "config.json"
    write_text(written, json.dumps(config))
    cmd = [sys.executable, str(ROOT / "train.py"), "-c", str(written), "-d", "cpu", "--data_dir", str(data_dir),
           "--save_dir", str(save_dir), "--epochs", str(epochs), "--seed", str(seed), "--run_id", f"{variant}{seed}",
           "--set", "trainer.valid_period=0", "--set", "trainer.monitor=off", "--set", "trainer.tensorboard=false",
           "--set", "trainer.save_period=0", "--set", "lr_scheduler.args.warmup_epoch=1",
           "--set", f"lr_scheduler.args.step1={epochs - 1}", "--set", f"lr_scheduler.args.step2={epochs}"]
    for item in VARIANTS[variant]:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"{WRITER}: train.py failed ({variant}, seed {seed}, exit {proc.returncode}): {last}")
    return Path(save_dir) / config["name"] / f"{variant}{seed}" / "last.pth", time.perf_counter() - start


def evaluate(checkpoint, perf):
    """Top-1 (%) on each test distribution in precision ``perf``: one pass over the test set, then
    index subsets."""
    trained = load_trained(checkpoint)
    layout = torch.channels_last if perf.channels_last else torch.contiguous_format
    net, data = trained.net.to(memory_format=layout), trained.data
    preds, targets = predict(net, data.test_loader(batch_size=500), perf, torch.device("cpu"))
    out = {}
    for name, idx in generated_distributions(data.test_targets, data.num_classes).items():
        idx = torch.as_tensor(idx)
        cm = confusion_matrix(preds[idx], targets[idx], data.num_classes)
        out[name] = 100 * accuracy_from_confusion(cm)["top1"]
    return out


def add_arguments(p):
    p.add_argument("--epochs", type=positive_int, default=4)
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[1])
    p.add_argument("--variants", nargs="+", default=["fast", "plain"], choices=list(VARIANTS))
    p.add_argument("--out", default=None, help="JSON file for the results (default: a temporary folder)")


def run(args):
    if args.epochs < 2:
        raise UserError(f"--epochs {args.epochs}: expected at least 2 (warmup 1 epoch, x0.1 for the last)")
    out = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "speed_accuracy.json"
    check_target(out, WRITER, legacy=lambda r: "accuracy" in r and "runs" in r)  # before the training runs
    rows, meta = {}, {}
    with tempfile.TemporaryDirectory() as save_dir:
        for seed in args.seeds:
            for variant in args.variants:
                ckpt, seconds = train(variant, seed, args.epochs, args.data_dir, save_dir, args.set, args.config)
                fast_perf = Performance.from_config(json.loads(Path(args.config).read_text())["trainer"])
                modes = {"fast": fast_perf, "plain": Performance()} if variant == "fast" else {"plain": Performance()}
                for mode, perf in modes.items():
                    key = f"train {variant} / eval {mode} / seed {seed}"
                    rows[key] = evaluate(ckpt, perf)
                    print(f"{key}: " + " ".join(f"{k} {v:.2f}" for k, v in rows[key].items()), flush=True)
                meta[f"{variant} seed {seed}"] = {"train_seconds": round(seconds, 1)}
                print(f"  trained {variant} seed {seed} in {seconds:.0f} s", flush=True)
    names = list(next(iter(rows.values())))
    short = [n.replace("forward", "F").replace("backward", "B").replace("uniform", "Uni") for n in names]
    print(f"\n{Path(args.config).stem}, {args.epochs} epochs, top-1 % (no test-time aggregation)")
    print(f"| {'run':40s} | " + " | ".join(f"{s:>5s}" for s in short) + " |")
    print(f"|{'-' * 42}|" + "|".join("-" * 7 for _ in short) + "|")
    for key, acc in rows.items():
        print(f"| {key:40s} | " + " | ".join(f"{acc[n]:5.2f}" for n in names) + " |")
    write_json(out, {"written_by": WRITER, "epochs": args.epochs, "accuracy": rows, "runs": meta})
    print(f"results: {out}")

